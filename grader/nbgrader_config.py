"""nbgrader configuration for the course; this folder is the nbgrader course root.

Assignment sources live in ``source/<assignment>/``; nbgrader writes ``release/``, ``submitted/``,
``autograded/`` and ``feedback/`` beside them. Solution regions use ``### BEGIN SOLUTION`` /
``### END SOLUTION`` and hidden tests ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` (nbgrader's
defaults, spelled out here so that a change of default cannot leak a solution).
"""

import os

c = get_config()  # noqa: F821 (injected by traitlets when nbgrader loads this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "positional-encodings"
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearHiddenTests.begin_test_delimeter = "BEGIN HIDDEN TESTS"
c.ClearHiddenTests.end_test_delimeter = "END HIDDEN TESTS"
# Student code is untrusted: every cell gets a time limit when autograding.
c.ExecutePreprocessor.timeout = 120

# --- Added with the assignments and the CLI (`python -m grader`, see README.md in this folder). ---
# A test cell the student deleted is put back from the gradebook when autograding (the CLI restores deleted
# cells itself before nbgrader runs, and records each one; this is the same protection for plain `nbgrader`).
c.OverwriteCells.add_missing_cells = True
# Output kept per cell in autograded notebooks and in feedback.
c.LimitOutput.max_lines = 1000
c.LimitOutput.max_traceback = 100
# The CLI also swaps in `grader.nbgrader_ext.GraderExecute` (kernel deaths, hung kernels, output floods) and
# `grader.nbgrader_ext.SanitizeFeedback` (no hidden tests in feedback). Prefer `python -m grader feedback` to
# plain `nbgrader generate_feedback`, whose HTML shows the hidden tests of the autograded notebook.
