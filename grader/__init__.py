"""The course's nbgrader tooling: the checking library, the instructor CLI and nbgrader extensions.

* `grader.checks`: what the assignments' test cells call. It compares a student's function with its
  counterpart in `solutions` and explains a mismatch in words (``from grader.checks import ...``).
* `grader.references`: small reference functions composed from `solutions` for the tasks that have no
  single package-level counterpart (an MLA score for one head, a dot product by offset, ...).
* ``python -m grader``: the instructor CLI (`grader.cli`): generate, autograde, feedback, export.
* `grader.nbgrader_ext`, `grader.submissions`: the safety net around nbgrader used by the CLI.

This package imports `solutions`; `solutions` never imports it. Importing `grader` itself is cheap: the
submodules load torch or nbgrader only when they are imported.
"""
