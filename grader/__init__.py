"""The course's grading: the checking library, the sandboxed harness and the instructor CLI around nbgrader.

* `grader.checks`: what the assignments' test cells call, one module per assignment on one engine. A check
  compares a student's function with its counterpart in `solutions` and explains a mismatch in words.
* `grader.references`: small reference functions composed from `solutions` for the tasks that have no
  single package-level counterpart (an MLA score for one head, a dot product by offset, ...).
* ``python -m grader`` (`grader.cli`): generate (`grader.generate`), autograde (`grader.intake`,
  `grader.autograde`), feedback, export and status (`grader.report`).
* `grader.harness`: the trusted side of grading. Each submission's code runs in a bubblewrap sandbox
  (`grader.harness.sandbox`); the test cells run in `grader.harness.worker`, which calls the student's
  functions through `grader.harness.session`.
* `grader.runtime`: the only part of the course inside the sandbox: the runner that executes the student's
  cells and answers calls, and the data-only message format both sides speak.

This package imports `solutions`; `solutions` never imports it. Importing `grader` itself is cheap: the
submodules load torch or nbgrader only when they are imported.
"""
