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
