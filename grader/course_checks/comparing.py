"""Calling a student's function and comparing its output with the expected one: the half of the course's
checking engine that the student's side needs too.

This module, like the whole of `course_checks`, imports only the standard library and torch: it is shipped in
every student kit (``book/exercises/<assignment>.zip``), where neither `solutions` nor `grader` exists. The
grading side (`grader.checks.engine`) imports it, so that a visible check says the same words in a student's
kit as in the grader.

* `call_student` calls a student's function with a **time limit per call** and turns every way it can go
  wrong (an exception, a timeout, the stub's ``NotImplementedError``) into a `CheckFailed` that says so;
* `compare` finds the first `Difference` between an output and the expected one: the type, the **shape**,
  NaN and inf, the **values** within stated tolerances (printed with every failure) and then the **dtype**.

Hidden cases never show an expected value or the text of the student's exception (which could carry the
hidden inputs). nbgrader gives a test cell zero points when it writes to stderr, so the student's function
runs with warnings silenced and its stderr sent to stdout. A check raises `CheckFailed`, an
``AssertionError``, on the first failing case.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

DEFAULT_TIME_LIMIT = float(os.environ.get("GRADER_CALL_TIME_LIMIT", "10"))
"""Seconds one call of a student's function may take (the inputs are tiny: a correct function needs
milliseconds). The environment variable ``GRADER_CALL_TIME_LIMIT`` overrides it."""

FRAMES_NOT_THE_STUDENTS: list[str] = [os.path.dirname(os.path.abspath(__file__)),
                                      os.path.dirname(os.path.abspath(torch.__file__))]
"""Folders whose frames are the checks' or torch's, never the student's: a traceback is searched for the last
frame outside them to show the student the line of their code that failed. The grading side adds its own
folders (the grader's, the reference package's)."""


class CheckFailed(AssertionError):
    """A check found a difference between the student's function and the reference; the message says what.

    ``mistake`` is the name of the catalogue's `Mistake` that the message explains, or None (a string, so
    that the exception pickles to another process)."""

    def __init__(self, message: str = "", *, mistake: str | None = None):
        super().__init__(message)
        self.mistake = mistake


class CallTimeout(BaseException):
    """Raised inside a student's function when it runs past its time limit (a BaseException, so that an
    ``except Exception`` in the student's code does not swallow it)."""


@dataclass
class Case:
    """One call: positional ``args``, keyword ``kwargs``, and a ``label`` describing the inputs (shapes and
    sizes only: it is shown for hidden cases too). ``note`` explains what is special about the case."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    note: str = ""


# ----------------------------------------------------------------------------------------------------------
# Calling the student's function
# ----------------------------------------------------------------------------------------------------------


def call_with_time_limit(fn: Callable, args: Sequence = (), kwargs: dict | None = None,
                         seconds: float | None = DEFAULT_TIME_LIMIT):
    """``fn(*args, **kwargs)``, raising `CallTimeout` if it runs longer than ``seconds``.

    In the main thread (where a Jupyter kernel runs cells) a ``SIGALRM`` timer interrupts the call, and
    keeps firing every 0.25 s in case the code swallows the first one. Elsewhere a watchdog thread waits
    for the call; it cannot stop a runaway call, which then goes on in the background (the notebook's
    cell timeout is the last resort). Code stuck inside a single C call (a huge tensor operation) is
    interrupted only when that call returns.
    """
    kwargs = kwargs or {}
    if not seconds or seconds <= 0:
        return fn(*args, **kwargs)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def _alarm(signum, frame):
            raise CallTimeout()

        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def _run():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
            outcome["error"] = exc

    worker = threading.Thread(target=_run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CallTimeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def call_quietly(fn: Callable, args: Sequence = (), kwargs: dict | None = None,
                 time_limit: float | None = DEFAULT_TIME_LIMIT):
    """`call_with_time_limit` with the student's warnings silenced and stderr sent to stdout: nbgrader gives
    a test cell zero points when it writes to stderr."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(sys.stdout):
        warnings.simplefilter("ignore")
        return call_with_time_limit(fn, args, kwargs, time_limit)


def _clone(obj):
    """A copy of the tensors in ``obj`` (nested in tuples, lists and dicts), so that the reference and the
    student each get their own inputs and an in-place change is detectable."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_clone(o) for o in obj)
    if isinstance(obj, list):
        return [_clone(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _changed_argument(original: Case, passed_args: tuple, passed_kwargs: dict) -> str | None:
    """The name of the first tensor argument that the student's function modified in place, if any."""
    pairs = [(f"argument {i + 1}", a, b) for i, (a, b) in enumerate(zip(original.args, passed_args))]
    pairs += [(f"argument {k!r}", original.kwargs[k], passed_kwargs[k]) for k in original.kwargs]
    for name, before, after in pairs:
        if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
            if before.shape != after.shape or not torch.equal(torch.nan_to_num(before), torch.nan_to_num(after)):
                return name
    return None


def _student_location(exc: BaseException) -> str:
    """``" (line 3 of your code: `x1, x2 = x.chunk(2)`)"``: the last frame of the traceback in the student's
    code, i.e. outside `FRAMES_NOT_THE_STUDENTS`.

    A student's function run in another process by the grading harness raises there; the harness raises an
    exception here that carries the location, already formatted, as ``student_location`` (the traceback
    here shows only the harness)."""
    location = getattr(exc, "student_location", None)
    if isinstance(location, str):
        return location
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename) if frame.filename and not frame.filename.startswith("<") else ""
        if path and any(path.startswith(folder) for folder in FRAMES_NOT_THE_STUDENTS):
            continue
        line = (frame.line or "").strip()
        if line:
            return f" (line {frame.lineno} of your code: `{line}`)"
        return f" (line {frame.lineno} of your code)"
    return ""


NOT_IMPLEMENTED = "is not implemented yet: replace the `raise NotImplementedError()` line with your code."


def _not_implemented(exc: BaseException) -> bool:
    """Whether ``exc`` is the stub's NotImplementedError, perhaps wrapped (by Triton's interpreter, or by an
    exception raised while handling it)."""
    return isinstance(exc, NotImplementedError) or isinstance(exc.__cause__ or exc.__context__, NotImplementedError) \
        or (type(exc).__name__ == "InterpreterError" and "NotImplementedError" in str(exc))


def call_student(fn: Callable, name: str, args: tuple, kwargs: dict, label: str,
                 time_limit: float | None = None, *, hidden: bool = False):
    """Call a student's function; turn every way it can go wrong into a `CheckFailed` that says so.

    In a hidden case (``hidden``) an exception's own text is left out: a student could raise
    ``ValueError(str(x))`` to read a hidden input in the feedback. Its type, the case's label (shapes only)
    and the line of the student's code remain."""
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    try:
        return call_quietly(fn, args, kwargs, time_limit)
    except CallTimeout:
        raise CheckFailed(
            f"{name} did not return within {time_limit:g} s on {label}. Look for a loop that never ends (a "
            f"`while` whose condition never changes), or a Python loop over every element where one tensor "
            f"operation would do."
        ) from None
    except CheckFailed:
        raise
    except RecursionError:
        raise CheckFailed(f"{name} recursed without end on {label} (RecursionError).") from None
    except MemoryError:
        raise CheckFailed(f"{name} ran out of memory on {label}: the inputs are tiny, so something grows "
                          f"without bound.") from None
    except Exception as exc:  # noqa: BLE001 (every student error becomes a readable failure)
        if _not_implemented(exc):
            raise CheckFailed(f"{name} {NOT_IMPLEMENTED}") from None
        message = "" if hidden else (str(exc).strip().splitlines() or [""])[0]
        if len(message) > 300:
            message = message[:300] + " ..."
        raise CheckFailed(
            f"{name} raised {type(exc).__name__}{': ' + message if message else ''} on {label}"
            f"{_student_location(exc)}."
        ) from None


def case_label(number: int, total: int, label: str = "", *, hidden: bool = False) -> str:
    """How a failure names its case: ``case 2 (x [5, 8])``, or ``hidden case 2 of 3 (x [5, 8])``."""
    named = f"hidden case {number} of {total}" if hidden else f"case {number}"
    return f"{named} ({label})" if label else named


# ----------------------------------------------------------------------------------------------------------
# Comparing outputs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Difference:
    """What differs between an output and the expected one: ``kind`` is one of type, length, shape, nan,
    inf, value, dtype; ``text`` says it in a sentence."""

    kind: str
    text: str


def describe(obj) -> str:
    """``a tensor of shape [2, 3] and dtype torch.float32``, ``a tuple of 2 items``, ``a numpy.ndarray``."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {list(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__module__ + '.' if type(obj).__module__ not in ('builtins',) else ''}{type(obj).__name__}"


def _index(flat_index: int, shape) -> tuple:
    index = []
    for size in reversed(list(shape)):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _compare_tensor(actual, expected: torch.Tensor, *, rtol, atol, check_dtype, mask, what, show_values):
    if not isinstance(actual, torch.Tensor):
        hint = ""
        if type(actual).__module__.startswith("numpy"):
            hint = " (convert with torch.from_numpy, or stay in torch throughout)"
        elif isinstance(actual, (list, tuple)):
            hint = " (build the result with torch operations instead of a Python list)"
        return Difference("type", f"{what} should be a torch.Tensor, but it is {describe(actual)}{hint}.")
    if tuple(actual.shape) != tuple(expected.shape):
        return Difference("shape", f"{what} has shape {list(actual.shape)}, expected {list(expected.shape)}.")
    if actual.is_complex() and not expected.is_complex():
        return Difference("type", f"{what} is complex ({actual.dtype}); return the real tensor.")
    a = actual.detach().cpu()
    e = expected.detach().cpu()
    if mask is None:
        region = torch.ones(e.shape, dtype=torch.bool)
    else:
        region = mask.expand(e.shape).cpu()
    region_note = "" if mask is None else " (inside the region that is compared)"
    exact = not e.is_floating_point()
    a64 = a.to(torch.float64)
    e64 = e.to(torch.float64)
    a_nan, e_nan = torch.isnan(a64), torch.isnan(e64)
    bad_nan = a_nan & ~e_nan & region
    if bad_nan.any():
        first = _index(int(bad_nan.flatten().nonzero()[0]), e.shape)
        return Difference("nan", f"{what} contains NaN at {int(bad_nan.sum())} place(s), first at index {first}"
                                 f"{region_note}, where the reference is a number: look for 0/0, log(0) or "
                                 f"inf - inf.")
    a_inf, e_inf = torch.isinf(a64), torch.isinf(e64)
    bad_inf = ((a_inf | e_inf) & (a64 != e64) & ~(a_nan & e_nan)) & region
    if bad_inf.any():
        i = int(bad_inf.flatten().nonzero()[0])
        first = _index(i, e.shape)
        yours, ref = float(a64.flatten()[i]), float(e64.flatten()[i])
        if math.isinf(ref) and not show_values:
            detail = "where the reference is infinite" if not math.isinf(yours) else "an infinity of the wrong sign"
        elif math.isinf(ref):
            detail = f"yours is {_fmt(yours)}, the reference {_fmt(ref)}"
        else:
            detail = f"yours is {_fmt(yours)} where the reference is finite"
        return Difference("inf", f"{what} differs in its infinite entries at {int(bad_inf.sum())} place(s), first "
                                 f"at index {first}: {detail}.")
    if exact:
        close = a64 == e64
    else:
        close = torch.isclose(a64, e64, rtol=rtol, atol=atol)
    close = close | (a_nan & e_nan) | ~region
    if not bool(close.all()):
        bad = ~close
        i = int(bad.flatten().nonzero()[0])
        first = _index(i, e.shape)
        finite = bad & torch.isfinite(a64) & torch.isfinite(e64)
        max_err = float((a64 - e64).abs()[finite].max()) if finite.any() else float("nan")
        text = (f"{what} differs from the reference at {int(bad.sum())} of {int(region.sum())} values"
                f"{region_note}; the first is at index {first}, the largest absolute error is {_fmt(max_err)}")
        if show_values:
            yours, wanted = _fmt(float(a64.flatten()[i])), _fmt(float(e64.flatten()[i]))
            text += f" (at index {first} yours is {yours}, expected {wanted})"
        text += "." if exact else f" (tolerance: rtol={rtol:g}, atol={atol:g})."
        return Difference("value", text)
    if check_dtype and a.dtype != e.dtype:
        return Difference("dtype", f"{what} has the right values but dtype {a.dtype}; the reference returns "
                                   f"{e.dtype} (convert with .to({e.dtype}) at the end).")
    return None


def _compare_scalar(actual, expected, *, rtol, atol, what, show_values):
    if isinstance(actual, torch.Tensor) and actual.numel() == 1 and actual.dim() == 0:
        actual = actual.item()
    shown = f" (yours is {actual!r}, expected {expected!r})" if show_values else ""
    if isinstance(expected, bool):
        if type(actual).__name__ not in ("bool", "bool_"):
            return Difference("type", f"{what} should be a bool (True or False), but it is {describe(actual)}.")
        if bool(actual) != expected:
            return Difference("value", f"{what} is {bool(actual)}, expected {expected}.")
        return None
    if isinstance(expected, numbers.Integral):
        if isinstance(actual, numbers.Integral) and not isinstance(actual, bool):
            if int(actual) != int(expected):
                return Difference("value", f"{what} is wrong{shown}.")
            return None
        if isinstance(actual, numbers.Real) and not isinstance(actual, bool) and float(actual) == int(expected):
            return Difference("type", f"{what} has the right value but should be an int, not {describe(actual)}.")
        if isinstance(actual, numbers.Real) and not isinstance(actual, bool):
            return Difference("value", f"{what} is wrong{shown}.")
        return Difference("type", f"{what} should be an int, but it is {describe(actual)}.")
    if isinstance(expected, numbers.Real):
        if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
            return Difference("type", f"{what} should be a number, but it is {describe(actual)}.")
        if math.isnan(float(actual)) and not math.isnan(float(expected)):
            return Difference("nan", f"{what} is NaN.")
        if not math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol):
            err = abs(float(actual) - float(expected))
            return Difference("value", f"{what} is wrong{shown}: absolute error {_fmt(err)} "
                                       f"(tolerance: rtol={rtol:g}, atol={atol:g}).")
        return None
    if actual != expected:
        return Difference("value", f"{what} is wrong{shown}.")
    return None


def compare(actual, expected, *, rtol: float = 1e-5, atol: float = 1e-6, check_dtype: bool = True,
            mask: torch.Tensor | None = None, names: Sequence[str] | None = None, what: str = "your output",
            show_values: bool = True) -> Difference | None:
    """The first `Difference` between ``actual`` and ``expected`` (tensors, numbers, bools or tuples of
    them), or None when they agree. ``mask`` limits a tensor comparison to a region; ``names`` names the
    items of a tuple output (e.g. ``("cos", "sin")``)."""
    if isinstance(expected, torch.Tensor):
        return _compare_tensor(actual, expected, rtol=rtol, atol=atol, check_dtype=check_dtype, mask=mask,
                               what=what, show_values=show_values)
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)):
            return Difference("type", f"{what} should be a tuple of {len(expected)} items"
                                      f"{' (' + ', '.join(names) + ')' if names else ''}, "
                                      f"but it is {describe(actual)}.")
        if len(actual) != len(expected):
            return Difference("length", f"{what} has {len(actual)} items, expected {len(expected)}"
                                        f"{' (' + ', '.join(names) + ')' if names else ''}.")
        for i, (a, e) in enumerate(zip(actual, expected)):
            item = f"{what}[{i}]" + (f" ({names[i]})" if names and i < len(names) else "")
            diff = compare(a, e, rtol=rtol, atol=atol, check_dtype=check_dtype, mask=mask, what=item,
                           show_values=show_values)
            if diff is not None:
                return diff
        return None
    return _compare_scalar(actual, expected, rtol=rtol, atol=atol, what=what, show_values=show_values)


def _agrees(a, b, rtol, atol, mask) -> bool:
    try:
        return compare(a, b, rtol=rtol, atol=atol, check_dtype=False, mask=mask) is None
    except Exception:  # noqa: BLE001 (a candidate of another structure simply does not match)
        return False


