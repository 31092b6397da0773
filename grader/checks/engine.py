"""The checking engine that every assignment's checks share: cases, mistakes, calling a student's function,
comparing outputs and naming mistakes.

An assignment's ``check_*`` function builds its `Case`\\ s and its catalogue of `Mistake`\\ s, and hands them
to `check_function`, which

* calls the student's function on each case with a **time limit per call** (``signal.setitimer`` in the
  kernel's main thread; a watchdog thread elsewhere), so that an infinite loop fails the check with a
  message instead of hanging the notebook (`call_student`);
* compares the result with the reference (`compare`): the type, the **shape**, NaN and inf, the **values**
  within stated tolerances (``rtol``/``atol``, printed with every failure) and then the **dtype**;
* when the values differ, tries the catalogue's known wrong versions of the reference (`course_checks.steps.diagnose`): each is
  a transformation of the reference computation (the other RoPE layout, cos and sin swapped, positions
  shifted by one, ...). If the student's output matches one of them, the message names that mistake in
  words a student can act on. Otherwise it gives the numbers: the largest absolute error, the index of the
  first mismatch and how many values differ.

Every `Mistake` carries an ``example``: a wrong function written the way a student writes the bug. The
assignment modules declare which check recognises each catalogue (`Catalogue`), and
``tests/test_grader_mistakes.py`` runs every example through its check and proves that the failure names
that mistake, and no earlier one of the catalogue.

Hidden cases (``hidden=True``) never show an expected value: a failure there reports only a few summary
numbers (largest absolute error, index of the first mismatch, number of differing values) and the case's
shapes, never the reference's output, nor the text of an exception the student's code raised (which could
carry the hidden inputs).

nbgrader gives a test cell zero points when it writes to stderr, so a check runs the student's function with
warnings silenced and its stderr sent to stdout. A check returns None (nbgrader would read a returned number
as partial credit) and raises `CheckFailed`, an ``AssertionError``, on the first failing case.

Calling the student and comparing outputs (`call_student`, `compare`) and running a check's steps
(`course_checks.steps`) live in `grader.course_checks`, the package a student kit ships, so that a visible check
says the same words in the kit as here. This module adds what only the grading side has: the references, the
catalogues of mistakes with their example wrong functions, and the secret case order.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

import solutions

from ..course_checks import comparing, steps
from ..course_checks.comparing import (DEFAULT_TIME_LIMIT, NOT_IMPLEMENTED, CallTimeout, Case, CheckFailed,  # noqa: F401
                                       Difference, _agrees, _changed_argument, _clone, _not_implemented,
                                       _student_location, call_quietly, call_student, call_with_time_limit,
                                       case_label, compare, describe)
from ..course_checks.steps import NOT_APPLICABLE, Oracle, report_pass  # noqa: F401


_GRADING_DRAW: "random.Random | None" = None


def grade_in_secret_order(seed: int | None) -> None:
    """Called by the grading harness (``None``: the notebook's own, fixed order). Checks whose answers come
    from a small public set (a yes/no per subject function, pass/fail per implementation) then draw their cases
    in an order, and with repeats, that the student's code cannot predict: a function that replays the
    answers in the order of the check's source, or counts its calls, gets them wrong."""
    global _GRADING_DRAW
    _GRADING_DRAW = None if seed is None else random.Random(seed)


def draw_cases(pool: Sequence, count: int) -> list:
    """``pool`` in order, or, while grading, ``count`` cases drawn with repeats from it (each at least once
    when ``count`` allows), shuffled by the harness's secret order."""
    if _GRADING_DRAW is None:
        return list(pool)
    drawn = list(pool) if count >= len(pool) else []
    drawn += [pool[_GRADING_DRAW.randrange(len(pool))] for _ in range(count - len(drawn))]
    _GRADING_DRAW.shuffle(drawn)
    return drawn

# Frames in these folders are the grader's, the reference's or torch's, never the student's: a traceback is

# Frames in the grader's and the reference's folders are not the student's either (see `_student_location`).
comparing.FRAMES_NOT_THE_STUDENTS += [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     os.path.dirname(os.path.abspath(solutions.__file__))]

@dataclass
class Mistake:
    """A common mistake, recognised by the output it produces.

    ``candidate(reference, case)`` returns the output that the mistaken computation gives on ``case`` (or
    None where the mistake does not apply); a student's output that matches it, where it differs from the
    correct one, is explained by ``message`` (a string, or a function of the case). ``matches(actual,
    expected, case)`` is the alternative for mistakes that are a property of the output rather than one
    definite output.

    ``example`` is a wrong function with the signature of the student's function that the check grades,
    written the way a student writes this bug (never by calling ``candidate``); ``example_options`` are the
    keyword arguments of the check under which it shows (a case set where the mistake applies; empty for
    the visible cases). A mistake used by checks of different signatures is one `Mistake` per check, made
    by `with_example`.
    """

    name: str
    message: str | Callable[[Case], str]
    candidate: Callable[[Callable, Case], Any] | None = None
    matches: Callable[[Any, Any, Case], bool] | None = None
    example: Callable | None = None
    example_options: dict = field(default_factory=dict)

    def text(self, case: Case) -> str:
        return self.message(case) if callable(self.message) else self.message

    def with_example(self, example: Callable, **example_options) -> "Mistake":
        """The same mistake (name, message, recognition) with the example of another check's signature."""
        return replace(self, example=example, example_options=example_options)


@dataclass
class Catalogue:
    """The mistakes that one check recognises: ``check(mistake.example, **options, **mistake.example_options)``
    fails with each mistake's message. ``options`` are the check's keyword arguments for every example (the
    layout of `check_apply_rope`, the direction of `check_t5_bucket`, ...)."""

    check: Callable
    mistakes: Sequence[Mistake]
    options: dict = field(default_factory=dict)




class LiveOracle(Oracle):
    """The `Oracle` of a check on the grading side: the reference's output on each case, and each mistake's
    output formed from the reference (computed when first asked, and kept)."""

    def __init__(self, reference: Callable, cases: Sequence[Case], mistakes: Sequence[Mistake],
                 mask_fn: Callable[[Case], torch.Tensor] | None = None, rtol: float = 1e-5, atol: float = 1e-6):
        self.reference, self.cases, self.mistakes, self.mask_fn = reference, cases, list(mistakes), mask_fn
        self.rtol, self.atol = rtol, atol
        self._expected: dict[int, Any] = {}
        self._outputs: dict[tuple[int, int], Any] = {}

    def expected(self, i):
        if i not in self._expected:
            case = self.cases[i]
            self._expected[i] = self.reference(*_clone(case.args), **_clone(case.kwargs))
        return self._expected[i]

    def mask(self, i):
        return None if self.mask_fn is None else self.mask_fn(self.cases[i])

    def mistake_names(self):
        return [m.name for m in self.mistakes]

    def mistake_text(self, i, j):
        return self.mistakes[j].text(self.cases[i])

    def mistake_predicate(self, j):
        matches = self.mistakes[j].matches
        if matches is None:
            return None
        names = [name for name, fn in steps.subjects.PREDICATES.items() if fn is matches]
        if not names:
            raise ValueError(f"mistake {self.mistakes[j].name!r}: a property mistake's `matches` must be one of "
                             f"course_checks.subjects.PREDICATES, so that a student kit can recognise it too")
        return names[0]

    def mistake_output(self, i, j):
        if (i, j) not in self._outputs:
            case, mistake = self.cases[i], self.mistakes[j]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    wrong = mistake.candidate(self.reference, case)
            except Exception:  # noqa: BLE001 (a mistake that cannot be formed on this case does not apply)
                wrong = None
            if wrong is None or _agrees(wrong, self.expected(i), self.rtol, self.atol, self.mask(i)):
                wrong = NOT_APPLICABLE
            self._outputs[i, j] = wrong
        return self._outputs[i, j]


def check_function(student_fn: Callable, reference_fn: Callable, cases: Sequence[Case], *, name: str,
                   rtol: float = 1e-5, atol: float = 1e-6, mistakes: Sequence[Mistake] = (),
                   hidden: bool = False, time_limit: float | None = None, check_dtype: bool = True,
                   mask_fn: Callable[[Case], torch.Tensor] | None = None, names: Sequence[str] | None = None,
                   hint: str = "", quiet: bool = False, skip_args: int = 0, explain: str | None = None,
                   explain_options: dict | None = None) -> None:
    """Compare ``student_fn`` with ``reference_fn`` on every case; raise `CheckFailed` at the first failure.

    The reference and the student each get their own copy of the inputs; a student's function that
    modifies an input tensor in place fails. ``hint`` is appended to a value mismatch no mistake explains.
    ``mask_fn(case)`` restricts the comparison to a region (e.g. the causal part of a score matrix). The first
    ``skip_args`` arguments of a case go to the reference only; ``explain`` names an explanation in words of
    `course_checks.subjects.EXPLAINERS` (see `course_checks.steps.function_check`).
    """
    oracle = LiveOracle(reference_fn, cases, mistakes, mask_fn, rtol, atol)
    steps.function_check(student_fn, oracle, cases, name=name, rtol=rtol, atol=atol, hidden=hidden,
                         time_limit=time_limit, check_dtype=check_dtype, names=names, hint=hint, quiet=quiet,
                         skip_args=skip_args, explain=explain, explain_options=explain_options)


def check_raises(student_fn: Callable, args: tuple, kwargs: dict | None = None, *, name: str,
                 exception: type[BaseException] = ValueError, why: str, label: str = "",
                 time_limit: float | None = None) -> None:
    """The student's function must raise ``exception`` on this input (``why`` says why it is invalid)."""
    time_limit = comparing.DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    label = label or "an invalid input"
    try:
        call_quietly(student_fn, args, kwargs, time_limit)
    except CallTimeout:
        raise CheckFailed(f"{name} did not return within {time_limit:g} s on {label}.") from None
    except NotImplementedError:
        raise CheckFailed(f"{name} {NOT_IMPLEMENTED}") from None
    except exception:
        return
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed(f"{name} raised {type(exc).__name__} on {label}; it should raise "
                          f"{exception.__name__} because {why}.") from None
    raise CheckFailed(f"{name} returned normally on {label}; it should raise {exception.__name__} because {why}.")


# ----------------------------------------------------------------------------------------------------------
# Input helpers
# ----------------------------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: every check draws its inputs from one, so cases are fixed."""
    return torch.Generator().manual_seed(int(seed))


def randn(shape, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype)

