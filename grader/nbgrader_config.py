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
# Output kept per cell in autograded notebooks.
c.LimitOutput.max_lines = 1000
c.LimitOutput.max_traceback = 100
# A test cell the student deleted is put back from the gradebook when recording grades.
c.OverwriteCells.add_missing_cells = True

# Grading goes through `python -m grader autograde` (see README.md in this folder): it runs each submission's
# code in a sandbox and the test cells outside it, then records the verdicts with nbgrader's own pipeline.
# Plain `nbgrader autograde` (or the formgrader's autograde button) would run the tests inside the student's
# kernel, where the student's code can fake them, read them and reach the gradebook: here it refuses.
from nbgrader.preprocessors import NbGraderPreprocessor  # noqa: E402


class UseTheCourseGrader(NbGraderPreprocessor):
    """Stands in for nbgrader's execution step: this course's grades come from its sandboxed harness."""

    def preprocess(self, nb, resources):
        raise RuntimeError("this course does not grade with plain `nbgrader autograde`, which would run the tests "
                           "inside the student's kernel; run `python -m grader autograde` from the repository")


c.Autograde.autograde_preprocessors = [UseTheCourseGrader]
