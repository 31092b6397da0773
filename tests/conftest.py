"""Shared test set-up."""

import pytest
import torch

from grader import checks

checks.serve_as_student_package()  # the source notebooks' `from course_checks import ...` gets the grader's checks


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Run the suite's tensor code on one thread.

    The tests use tiny tensors, for which a second thread only adds synchronisation; on a busy 2-core machine
    that made small matmuls and the Triton interpreter several times slower (measured: 6 ms instead of 8 us
    per tiny matmul under load). Notebooks run in their own kernels and are not affected.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_launch(monkeypatch):
    """Any kernel launch fails the test: argument checks must raise before the dispatcher launches."""
    from solutions.kernels import dispatch

    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel was launched before the arguments were checked")
    monkeypatch.setattr(dispatch, "launcher", forbidden)
    monkeypatch.setattr(dispatch, "select_backend", forbidden)
