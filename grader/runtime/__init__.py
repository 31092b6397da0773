"""Inside the sandbox: `runner` (executes the student's cells, answers calls) and `wire` (the message format).

The runner imports `wire` by path; nothing here imports the rest of `grader`, `solutions` or nbgrader.
"""
