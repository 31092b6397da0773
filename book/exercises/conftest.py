"""The student versions of the assignments, kept here for the book to offer as downloads.

They are not chapters: their checks fail until a student fills in the functions, so `pytest book --nbval-lax`
must not execute them. `tests/test_grader_leaks.py` checks them instead (no solution, no hidden test, and the
same as `python -m grader generate --book` regenerates).
"""

collect_ignore_glob = ["*.ipynb"]
