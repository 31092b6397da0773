"""The student kits of the assignments (``<assignment>.zip``), kept here for the book to offer as downloads.

A kit's notebook is not a chapter: its checks fail until a student fills in the functions, so `pytest book
--nbval-lax` must not execute one unzipped here. `tests/test_grader_leaks.py` checks the kits instead (no
solution, no hidden test, and the same as `python -m grader generate --book` regenerates), and
`tests/test_grader_kits.py` runs them away from the repository.
"""

collect_ignore_glob = ["*.ipynb", "*/*.ipynb"]
