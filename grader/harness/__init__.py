"""The trusted side of grading: the sandbox, a session with one submission's process, and the worker."""
