"""The visible checks of an assignment, as a student kit carries them: ``from course_checks import check_apply_rope``.

A student kit (``book/exercises/<assignment>.zip``, made by ``python -m grader generate --book``) is a folder with
the assignment's notebook and this package. The package holds

* the code that calls a student's function and compares its output (`course_checks.comparing`), and the steps
  a check runs (`course_checks.steps`): the same code the grader runs, so a visible check says the same words;
* the stand-ins that the visible checks hand to a student's function (`course_checks.subjects`);
* ``<assignment>.checks``: what the visible checks compare with, recorded by the grader from the course's
  reference functions. For each visible case: its inputs, the expected output, and the output of each named
  mistake, so that a failing check still says *what* is wrong. It is stored in the course's data-only format
  (`course_checks.wire`, the message format of the grading harness): reading it builds tensors, numbers and
  strings, and never runs code.

It holds no reference function, no hidden case and nothing of the course's `solutions` or `grader`, and needs
only torch (and Triton for the kernel exercise). In the course repository this package is
`grader.course_checks`, the half of the checking engine that both sides share; there the notebooks'
``course_checks`` is the grader's own `grader.checks` (see `grader.checks.serve_as_student_package`).
"""

from __future__ import annotations

from pathlib import Path

from .comparing import CheckFailed  # noqa: F401 (what a failing check raises)


def _load_kit() -> dict:
    """The names recorded in this folder's ``*.checks`` file, if it has one (a kit); nothing otherwise."""
    found = sorted(Path(__file__).resolve().parent.glob("*.checks"))
    if not found:
        return {}
    if len(found) > 1:
        raise ImportError(f"course_checks holds the data of several assignments ({', '.join(p.name for p in found)}): "
                          f"unzip each kit into a folder of its own")
    from . import steps, wire

    try:
        data = wire.decode(found[0].read_bytes())
    except wire.WireError as exc:
        raise ImportError(f"{found[0].name} is damaged ({exc}): download the kit again") from None
    return steps.load_kit(data)


_KIT = _load_kit()
globals().update(_KIT)
__all__ = ["CheckFailed", *sorted(_KIT)]
