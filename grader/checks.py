"""Checks for the course's assignments: compare a student's function with the reference in `solutions`.

Every test cell of an assignment calls one ``check_*`` function of this module. A check

* calls the student's function on each case with a **time limit per call** (``signal.setitimer`` in the
  kernel's main thread; a watchdog thread elsewhere), so that an infinite loop fails the check with a
  message instead of hanging the notebook;
* compares the result with the reference: the type, the **shape**, NaN and inf, the **values** within stated
  tolerances (``rtol``/``atol``, printed with every failure) and then the **dtype**;
* when the values differ, tries the known wrong versions of the reference (the common mistakes below): each is
  a transformation of the reference computation (the other RoPE layout, cos and sin swapped, positions
  shifted by one, ...). If the student's output matches one of them, the message names that mistake in
  words a student can act on. Otherwise it gives the numbers: the largest absolute error, the index of
  the first mismatch and how many values differ.

Recognised mistakes (each proved by ``tests/test_grader_checks.py`` with a deliberately wrong function):
the wrong RoPE layout; cos and sin swapped; a rotation in the wrong direction; positions off by one;
``inv_freq`` with the wrong exponent (i/d instead of 2i/d, a missing minus sign, i counted from 1, one
frequency per coordinate); the ALiBi bias sign, a causal bias whose future half is not masked (or masked
with 0, or with a large finite number, or including the diagonal), queries aligned to the start; PI applied
as a base change; a missing YaRN attention factor, or one applied only once (or twice); and more per task
(sin/cos columns of the sinusoidal encoding swapped or split in halves, T5's offset sign, ALiBi slopes for a
head count that is not a power of two, the MLA rope term or scale left out, a KV cache counted per head, the
NTK-aware base without its exponent d/(d-2), the YaRN paper's ramp where the released one is asked, Dynamic
NTK's paper length rule, NTK-ALiBi's blend run backwards, a passkey prompt one byte short or with its key
placed by the depth of the whole sequence, a last-window NLL that scores every position or reads the first
bytes, a learned model's ValueError not recorded as None, ...; the lab's checks are proved by
``tests/test_grader_lab_checks.py``).

Hidden cases (``hidden=True``) never show an expected value: a failure there reports only a few summary
numbers (largest absolute error, index of the first mismatch, number of differing values) and the case's
shapes, never the reference's output.

nbgrader gives a test cell zero points when it writes to stderr, so a check runs the student's function with
warnings silenced and its stderr sent to stdout. A check returns None (nbgrader would read a returned number
as partial credit) and raises `CheckFailed`, an ``AssertionError``, on the first failing case.
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

import solutions
from solutions.lab import evaluate as _lab_evaluate
from solutions.lab import passkey as _lab_passkey
from solutions.lab.model import ModelConfig as _LabModelConfig
from solutions.lab.model import TinyDecoder as _TinyDecoder
from solutions.rope_scaling import ntk_aware_base, ntk_by_parts_ramp
from solutions.t5 import relative_positions as _relative_positions

from . import references

DEFAULT_TIME_LIMIT = float(os.environ.get("GRADER_CALL_TIME_LIMIT", "10"))
"""Seconds one call of a student's function may take (the inputs are tiny: a correct function needs
milliseconds). The environment variable ``GRADER_CALL_TIME_LIMIT`` overrides it."""

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOLUTIONS_DIR = os.path.dirname(os.path.abspath(solutions.__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


GRADED_REFERENCES = {
    "check_self_attention": ["solutions.attention:reference_attention"],
    "check_sinusoidal_encoding": ["solutions.sinusoidal:sinusoidal_encoding", "solutions.sinusoidal:sinusoidal_frequencies"],
    "check_shift_matrix": ["solutions.sinusoidal:sinusoidal_shift_matrix"],
    "check_relative_positions": ["solutions.t5:relative_positions"],
    "check_t5_bucket": ["solutions.t5:t5_relative_position_bucket"],
    "check_alibi_slopes": ["solutions.alibi:alibi_slopes", "solutions.alibi:_power_of_two_slopes"],
    "check_alibi_bias": ["solutions.alibi:alibi_bias"],
    "check_relative_shift": ["solutions.transformer_xl:relative_shift"],
    "check_rope_inv_freq": ["solutions.rope:rope_inv_freq"],
    "check_rope_cos_sin": ["solutions.rope:rope_cos_sin"],
    "check_apply_rope": ["solutions.rope:apply_rope", "solutions.rope:rotate_pairs"],
    "check_permute_to_half_split": ["solutions.rope:permute_qk_weight_to_half_split", "solutions.rope:_permute_head_rows",
                                    "solutions.rope:interleaved_to_half_split_permutation"],
    "check_rope_absorbed_matrix": ["solutions.mla:rope_absorbed_score_matrix"],
    "check_decoupled_rope_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_naive_latent_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_absorbed_latent_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_kv_cache_elements": ["solutions.mla:kv_cache_elements_per_token"],
    "check_rope_scaling": ["solutions.rope_scaling:rope_scaling"],
    "check_linear_scaling": ["solutions.rope_scaling:linear_scaling"],
    "check_ntk_aware_scaling": ["solutions.rope_scaling:ntk_aware_scaling", "solutions.rope_scaling:ntk_aware_base"],
    "check_ntk_by_parts_scaling": ["solutions.rope_scaling:ntk_by_parts_scaling",
                                   "solutions.rope_scaling:ntk_by_parts_inv_freq",
                                   "solutions.rope_scaling:ntk_by_parts_ramp", "solutions.rope_scaling:correction_dim"],
    "check_dynamic_ntk_scaling": ["solutions.rope_scaling:dynamic_ntk_scaling",
                                  "solutions.rope_scaling:ntk_aware_base"],
    "check_yarn_scaling": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:ntk_by_parts_inv_freq",
                           "solutions.rope_scaling:ntk_by_parts_ramp", "solutions.rope_scaling:correction_dim"],
    "check_yarn_attention_factor": ["solutions.rope_scaling:yarn_attention_factor"],
    "check_ntk_alibi_slopes": ["solutions.alibi:ntk_alibi_slopes"],
    "check_yarn_cos_sin": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:yarn_attention_factor"],
    "check_yarn_logits": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:yarn_attention_factor"],
    "check_passkey_sequence": ["solutions.lab.passkey:passkey_sequence"],
    "check_passkey_digits_correct": ["solutions.lab.evaluate:passkey_digits_correct"],
    "check_last_window_nll": ["solutions.lab.evaluate:last_window_nll"],
    "check_perplexity_by_length": ["solutions.lab.evaluate:perplexity_by_length"],
}
"""For each check, the `solutions` code (``module:qualname``) a student's function is compared with, or that
holds the answer a student writes: the published book must not display its source, and the student versions
must not contain it (``tests/test_grader_leaks.py``). Checks without an entry compare with a property (the
permutation detector, the student-written test) or a closed form in `grader.references`."""


class CheckFailed(AssertionError):
    """A check found a difference between the student's function and the reference; the message says what."""


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


@dataclass
class Mistake:
    """A common mistake, recognised by the output it produces.

    ``candidate(reference, case)`` returns the output that the mistaken computation gives on ``case`` (or
    None where the mistake does not apply); a student's output that matches it, where it differs from the
    correct one, is explained by ``message`` (a string, or a function of the case). ``matches(actual,
    expected, case)`` is the alternative for mistakes that are a property of the output rather than one
    definite output.
    """

    name: str
    message: str | Callable[[Case], str]
    candidate: Callable[[Callable, Case], Any] | None = None
    matches: Callable[[Any, Any, Case], bool] | None = None

    def text(self, case: Case) -> str:
        return self.message(case) if callable(self.message) else self.message


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
    code, i.e. outside this package, `solutions` and torch."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename) if frame.filename and not frame.filename.startswith("<") else ""
        if path and (path.startswith(_PACKAGE_DIR) or path.startswith(_SOLUTIONS_DIR) or path.startswith(_TORCH_DIR)):
            continue
        line = (frame.line or "").strip()
        if line:
            return f" (line {frame.lineno} of your code: `{line}`)"
        return f" (line {frame.lineno} of your code)"
    return ""


def call_student(fn: Callable, name: str, args: tuple, kwargs: dict, label: str,
                 time_limit: float | None = None):
    """Call a student's function; turn every way it can go wrong into a `CheckFailed` that says so."""
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    try:
        return call_quietly(fn, args, kwargs, time_limit)
    except CallTimeout:
        raise CheckFailed(
            f"{name} did not return within {time_limit:g} s on {label}. Look for a loop that never ends (a "
            f"`while` whose condition never changes), or a Python loop over every element where one tensor "
            f"operation would do."
        ) from None
    except NotImplementedError:
        raise CheckFailed(
            f"{name} is not implemented yet: replace the `raise NotImplementedError()` line with your code."
        ) from None
    except CheckFailed:
        raise
    except RecursionError:
        raise CheckFailed(f"{name} recursed without end on {label} (RecursionError).") from None
    except MemoryError:
        raise CheckFailed(f"{name} ran out of memory on {label}: the inputs are tiny, so something grows "
                          f"without bound.") from None
    except Exception as exc:  # noqa: BLE001 (every student error becomes a readable failure)
        if isinstance(exc.__cause__ or exc.__context__, NotImplementedError) or (
                type(exc).__name__ == "InterpreterError" and "NotImplementedError" in str(exc)):
            raise CheckFailed(f"{name} is not implemented yet: replace the `raise NotImplementedError()` line "
                              f"with your code.") from None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if len(message) > 300:
            message = message[:300] + " ..."
        raise CheckFailed(
            f"{name} raised {type(exc).__name__}{': ' + message if message else ''} on {label}"
            f"{_student_location(exc)}."
        ) from None


# ----------------------------------------------------------------------------------------------------------
# Comparing outputs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Difference:
    """What differs between an output and the expected one: ``kind`` is one of type, length, shape, nan,
    inf, value, dtype; ``text`` says it in a sentence."""

    kind: str
    text: str


def _describe(obj) -> str:
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
        return Difference("type", f"{what} should be a torch.Tensor, but it is {_describe(actual)}{hint}.")
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
    a64 = a.to(torch.float64) if a.dtype != torch.bool else a.to(torch.float64)
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
            text += f" (at index {first} yours is {_fmt(float(a64.flatten()[i]))}, expected {_fmt(float(e64.flatten()[i]))})"
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
            return Difference("type", f"{what} should be a bool (True or False), but it is {_describe(actual)}.")
        if bool(actual) != expected:
            return Difference("value", f"{what} is {bool(actual)}, expected {expected}.")
        return None
    if isinstance(expected, numbers.Integral):
        if isinstance(actual, numbers.Integral) and not isinstance(actual, bool):
            if int(actual) != int(expected):
                return Difference("value", f"{what} is wrong{shown}.")
            return None
        if isinstance(actual, numbers.Real) and not isinstance(actual, bool) and float(actual) == int(expected):
            return Difference("type", f"{what} has the right value but should be an int, not {_describe(actual)}.")
        if isinstance(actual, numbers.Real) and not isinstance(actual, bool):
            return Difference("value", f"{what} is wrong{shown}.")
        return Difference("type", f"{what} should be an int, but it is {_describe(actual)}.")
    if isinstance(expected, numbers.Real):
        if isinstance(actual, bool) or not isinstance(actual, numbers.Real):
            return Difference("type", f"{what} should be a number, but it is {_describe(actual)}.")
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
                                      f"{' (' + ', '.join(names) + ')' if names else ''}, but it is {_describe(actual)}.")
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


def diagnose(actual, expected, case: Case, reference: Callable, mistakes: Sequence[Mistake], *,
             rtol: float, atol: float, mask=None) -> Mistake | None:
    """The first of ``mistakes`` that explains ``actual``: its output matches the student's and differs from
    the correct one on this case."""
    for mistake in mistakes:
        if mistake.matches is not None:
            try:
                if mistake.matches(actual, expected, case):
                    return mistake
            except Exception:  # noqa: BLE001
                pass
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrong = mistake.candidate(reference, case)
        except Exception:  # noqa: BLE001 (a mistake that cannot be formed on this case does not apply)
            continue
        if wrong is None or _agrees(wrong, expected, rtol, atol, mask):
            continue
        if _agrees(actual, wrong, rtol, atol, mask):
            return mistake
    return None


def check_function(student_fn: Callable, reference_fn: Callable, cases: Sequence[Case], *, name: str,
                   rtol: float = 1e-5, atol: float = 1e-6, mistakes: Sequence[Mistake] = (),
                   hidden: bool = False, time_limit: float | None = None, check_dtype: bool = True,
                   mask_fn: Callable[[Case], torch.Tensor] | None = None, names: Sequence[str] | None = None,
                   hint: str = "", quiet: bool = False) -> None:
    """Compare ``student_fn`` with ``reference_fn`` on every case; raise `CheckFailed` at the first failure.

    The reference and the student each get their own copy of the inputs; a student's function that
    modifies an input tensor in place fails. ``hint`` is appended to a value mismatch no mistake explains.
    ``mask_fn(case)`` restricts the comparison to a region (e.g. the causal part of a score matrix).
    """
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    if not callable(student_fn):
        raise CheckFailed(f"{name} should be a function, but it is {_describe(student_fn)}.")
    for number, case in enumerate(cases, start=1):
        if hidden:
            label = f"hidden case {number} of {len(cases)}" + (f" ({case.label})" if case.label else "")
        else:
            label = f"case {number} ({case.label})" if case.label else f"case {number}"
        expected = reference_fn(*_clone(case.args), **_clone(case.kwargs))
        args, kwargs = _clone(case.args), _clone(case.kwargs)
        actual = call_student(student_fn, name, args, kwargs, label, time_limit)
        changed = _changed_argument(case, args, kwargs)
        if changed is not None:
            raise CheckFailed(f"{name} modified its input ({changed}) in place on {label}. Compute a new tensor "
                              f"instead (e.g. `x * c` rather than `x *= c`, or clone first): callers reuse their "
                              f"inputs (a KV cache, the next layer).")
        mask = mask_fn(case) if mask_fn is not None else None
        difference = compare(actual, expected, rtol=rtol, atol=atol, check_dtype=check_dtype, mask=mask,
                             names=names, show_values=not hidden)
        if difference is None:
            continue
        lines = [f"{name} is wrong on {label}" + (f" [{case.note}]" if case.note and not hidden else "") + ":"]
        mistake = None
        if difference.kind in ("value", "shape", "inf", "length") and mistakes:
            mistake = diagnose(actual, expected, case, reference_fn, mistakes, rtol=rtol, atol=atol, mask=mask)
        if mistake is not None:
            lines.append("  " + mistake.text(case))
            lines.append("  (" + difference.text + ")")
        else:
            lines.append("  " + difference.text)
            if hint and difference.kind in ("value", "shape", "inf"):
                lines.append("  " + hint)
        raise CheckFailed("\n".join(lines))
    if not quiet:
        kind = "hidden case" if hidden else "case"
        print(f"\N{CHECK MARK} {name}: {len(cases)} {kind}{'s match' if len(cases) != 1 else ' matches'} the reference")


def check_raises(student_fn: Callable, args: tuple, kwargs: dict | None = None, *, name: str,
                 exception: type[BaseException] = ValueError, why: str, label: str = "",
                 time_limit: float | None = None) -> None:
    """The student's function must raise ``exception`` on this input (``why`` says why it is invalid)."""
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    label = label or "an invalid input"
    try:
        call_quietly(student_fn, args, kwargs, time_limit)
    except CallTimeout:
        raise CheckFailed(f"{name} did not return within {time_limit:g} s on {label}.") from None
    except NotImplementedError:
        raise CheckFailed(f"{name} is not implemented yet: replace the `raise NotImplementedError()` line with "
                          f"your code.") from None
    except exception:
        return
    except Exception as exc:  # noqa: BLE001
        raise CheckFailed(f"{name} raised {type(exc).__name__} on {label}; it should raise "
                          f"{exception.__name__} because {why}.") from None
    raise CheckFailed(f"{name} returned normally on {label}; it should raise {exception.__name__} because {why}.")


# ----------------------------------------------------------------------------------------------------------
# Input helpers
# ----------------------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _randn(shape, generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=dtype)


def _pow2_slopes(n: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n) for h in range(n)], dtype=torch.float32)


def _frequencies(dim: int, base: float, kind: str) -> torch.Tensor:
    """float64 frequencies for the correct exponent (``kind="2i/d"``) and its common wrong versions."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    exponent = {
        "2i/d": -2 * i / dim,
        "i/d": -i / dim,
        "+2i/d": 2 * i / dim,
        "2(i+1)/d": -2 * (i + 1) / dim,
    }[kind]
    return float(base) ** exponent


def _interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return torch.stack((first, second), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------------------------------------
# Mistake catalogues
# ----------------------------------------------------------------------------------------------------------

EXPONENT_MESSAGES = {
    "i/d": "Your frequencies use the exponent i/d; the formula is base^(-2i/d): each frequency serves a *pair* "
           "of coordinates, so the exponent steps by 2/d (torch.arange(0, dim, 2) / dim).",
    "+2i/d": "Your frequencies grow with i: the minus sign of the exponent is missing. The formula is "
             "theta_i = base^(-2i/d) = 1 / base^(2i/d), from 1 down to almost 1/base.",
    "2(i+1)/d": "Your frequencies are shifted by one index: the first one must be base^0 = 1 (i counts from 0).",
}


def _exponent_mistakes(candidate_for_kind: Callable[[str, Callable, Case], Any]) -> list[Mistake]:
    return [Mistake(f"exponent {kind}", EXPONENT_MESSAGES[kind],
                    candidate=(lambda reference, case, kind=kind: candidate_for_kind(kind, reference, case)))
            for kind in ("i/d", "+2i/d", "2(i+1)/d")]


def _layout_message(case: Case) -> str:
    if case.kwargs.get("interleaved", False):
        return ("Wrong RoPE layout: your output is the half-split layout (GPT-NeoX/Llama: coordinate i paired with "
                "i + d/2), but interleaved=True asks for the interleaved layout (GPT-J/Meta: coordinate 2i paired "
                "with 2i + 1). Take the pairs as x[..., 0::2] and x[..., 1::2] and interleave the result back.")
    return ("Wrong RoPE layout: your output is the interleaved layout (GPT-J/Meta: coordinate 2i paired with 2i + 1), "
            "but interleaved=False asks for the half-split layout (GPT-NeoX/Llama: coordinate i paired with "
            "i + d/2). Split the rotated part into its first and second halves, not into even and odd coordinates.")


def _apply_rope_variant(reference, case, *, swap=False, negate_sin=False, flip_layout=False):
    x, cos, sin = case.args[:3]
    interleaved = case.kwargs.get("interleaved", False)
    if swap:
        cos, sin = sin, cos
    if negate_sin:
        sin = -sin
    return reference(x, cos, sin, interleaved=(not interleaved) if flip_layout else interleaved)


APPLY_ROPE_MISTAKES = [
    Mistake("layout", _layout_message, candidate=lambda ref, case: _apply_rope_variant(ref, case, flip_layout=True)),
    Mistake("cos/sin swapped",
            "cos and sin are swapped: a pair (a, b) at angle phi becomes (a cos(phi) - b sin(phi), "
            "b cos(phi) + a sin(phi)) (RoFormer eq. 13); you multiplied by sin where cos belongs.",
            candidate=lambda ref, case: _apply_rope_variant(ref, case, swap=True)),
    Mistake("direction",
            "The rotation goes the wrong way (by -phi): you computed (a cos + b sin, b cos - a sin). RoPE rotates "
            "counter-clockwise: (a cos(phi) - b sin(phi), b cos(phi) + a sin(phi)), RoFormer eq. 13.",
            candidate=lambda ref, case: _apply_rope_variant(ref, case, negate_sin=True)),
    Mistake("layout and direction",
            "Two mistakes at once: the wrong layout (pairs (2i, 2i+1) versus (i, i + d/2)) and a rotation in the wrong "
            "direction (by -phi). Check which coordinates you pair, then the signs of (a cos - b sin, b cos + a sin).",
            candidate=lambda ref, case: _apply_rope_variant(ref, case, negate_sin=True, flip_layout=True)),
]


def _cos_sin_shifted(reference, case, shift):
    inv_freq, positions = case.args[:2]
    return reference(inv_freq, positions + shift, *case.args[2:], **case.kwargs)


COS_SIN_MISTAKES = [
    Mistake("positions +1", "Positions off by one: your angles are those of position p + 1. The first token is at "
                            "position 0 (its cos is 1 and its sin is 0: it is not rotated).",
            candidate=lambda ref, case: _cos_sin_shifted(ref, case, 1)),
    Mistake("positions -1", "Positions off by one: your angles are those of position p - 1. Use the positions you are "
                            "given, exactly (angle = position * inv_freq).",
            candidate=lambda ref, case: _cos_sin_shifted(ref, case, -1)),
    Mistake("cos/sin swapped", "cos and sin are swapped: return (cos, sin), in that order.",
            candidate=lambda ref, case: tuple(reversed(ref(*case.args, **case.kwargs)))),
    Mistake("direction", "sin has the wrong sign (a rotation by -angle): sin(position * inv_freq), not "
                         "sin(-position * inv_freq).",
            candidate=lambda ref, case: (lambda cs: (cs[0], -cs[1]))(ref(*case.args, **case.kwargs))),
    Mistake("repeated to dim", "Your cos/sin have one column per coordinate (the frequencies repeated twice, as Hugging "
                               "Face's cache stores them); here they have one column per pair: [..., dim // 2].",
            candidate=lambda ref, case: tuple(torch.cat((t, t), -1) for t in ref(*case.args, **case.kwargs))),
]


def _inv_freq_candidate(kind, reference, case):
    dim, base = case.args[0], (case.args[1] if len(case.args) > 1 else case.kwargs.get("base", 10000.0))
    return _frequencies(dim, base, kind).to(torch.float32)


def _looks_low_precision(actual, expected, case) -> bool:
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return False
    a = actual.detach().float()
    near = torch.allclose(a, expected.float(), rtol=2e-2, atol=0)
    return bool(near and (torch.equal(a.bfloat16().float(), a) or torch.equal(a.half().float(), a)))


INV_FREQ_MISTAKES = _exponent_mistakes(_inv_freq_candidate) + [
    Mistake("one per coordinate",
            "You returned one frequency per coordinate (dim values); RoPE has one frequency per *pair*: dim // 2 "
            "values, exponents 0, 2/d, 4/d, ... (torch.arange(0, dim, 2)).",
            candidate=lambda ref, case: (float(case.args[1] if len(case.args) > 1 else case.kwargs.get("base", 10000.0))
                                         ** (-torch.arange(case.args[0], dtype=torch.float64) / case.args[0])).float()),
    Mistake("low precision",
            "Your frequencies are rounded to bfloat16/float16 precision (the precision trap of the RoPE chapter): "
            "compute the exponent and the power in float32 or float64, and cast to float32 at the end.",
            matches=_looks_low_precision),
]


def _sinusoidal_from_frequencies(num_positions: int, frequencies: torch.Tensor) -> torch.Tensor:
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * frequencies
    return _interleave(torch.sin(angles), torch.cos(angles)).to(torch.float32)


def _two_args_and_base(case):
    """``(first, dim, base)`` of a call ``f(first, dim, base=10000.0)`` (the sinusoidal checks' signature)."""
    first, dim = case.args[:2]
    base = case.args[2] if len(case.args) > 2 else case.kwargs.get("base", 10000.0)
    return first, dim, base


SINUSOIDAL_MISTAKES = [
    Mistake("sin/cos swapped", "sin and cos are swapped: even columns (0, 2, 4, ...) hold sin(p * omega_i) and odd "
                               "columns hold cos(p * omega_i) (Vaswani et al. 2017, section 3.5).",
            candidate=lambda ref, case: (lambda e: e.view(e.shape[0], -1, 2).flip(-1).reshape(e.shape))(
                ref(*case.args, **case.kwargs))),
    Mistake("halves", "You put all the sines in the first half of the columns and all the cosines in the second half "
                      "(the tensor2tensor layout). This course's encoding interleaves them: column 2i is sin(p * omega_i) "
                      "and column 2i + 1 is cos(p * omega_i).",
            candidate=lambda ref, case: (lambda e: torch.cat((e[:, 0::2], e[:, 1::2]), dim=1))(
                ref(*case.args, **case.kwargs))),
    Mistake("positions +1", "Positions off by one: your first row is position 1. Rows are positions 0, 1, ..., "
                            "num_positions - 1, and row 0 is (0, 1, 0, 1, ...).",
            candidate=lambda ref, case: (lambda n, d, b: ref(n + 1, d, b)[1:])(*_two_args_and_base(case))),
] + _exponent_mistakes(lambda kind, ref, case: (lambda n, d, b: _sinusoidal_from_frequencies(
    n, _frequencies(d, b, kind)))(*_two_args_and_base(case)))


SHIFT_MATRIX_MISTAKES = [
    Mistake("transposed", "Your matrix maps PE(p) to PE(p - k): it is the transpose (the inverse rotation). In each 2x2 "
                          "block the sin(k omega) above the diagonal is positive: sin(a + b) = sin a cos b + cos a sin b.",
            candidate=lambda ref, case: (lambda k, d, b: ref(-k, d, b))(*_two_args_and_base(case))),
    Mistake("exponent i/d", EXPONENT_MESSAGES["i/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k, d, math.sqrt(b)))(*_two_args_and_base(case))),
    Mistake("exponent 2(i+1)/d", EXPONENT_MESSAGES["2(i+1)/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k * b ** (-2.0 / d), d, b))(*_two_args_and_base(case))),
]


DOT_PRODUCT_MISTAKES = [
    Mistake("d terms", "Your values are twice the reference: there are d/2 frequencies, and each (sin, cos) pair "
                       "contributes one cos(k omega_i) to the sum, not two.",
            candidate=lambda ref, case: 2 * ref(*case.args, **case.kwargs)),
    Mistake("sin instead of cos", "You summed sines; sin(a)sin(b) + cos(a)cos(b) = cos(a - b), so the sum is over "
                                  "cos(k omega_i).",
            candidate=lambda ref, case: (lambda k, d, b: torch.sin(torch.as_tensor(k, dtype=torch.float64)[..., None]
                                                                   * _frequencies(d, b, "2i/d")).sum(-1))(*_two_args_and_base(case))),
    Mistake("exponent i/d", EXPONENT_MESSAGES["i/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k, d, math.sqrt(b)))(*_two_args_and_base(case))),
]


def _attention_variant(case, *, scale=None, causal=False, softmax_dim=-1, transpose_weights=False):
    x, w_q, w_k, w_v = case.args
    if transpose_weights:
        q, k, v = x @ w_q, x @ w_k, x @ w_v
    else:
        q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    scores = q @ k.T * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal:
        scores = scores.masked_fill(~solutions.causal_mask(x.shape[0], x.shape[0]), float("-inf"))
    return torch.softmax(scores, dim=softmax_dim) @ v


SELF_ATTENTION_MISTAKES = [
    Mistake("no scale", "The scores are not scaled: divide q . k by sqrt(d_k) before the softmax (Vaswani et al. "
                        "2017, eq. 1).", candidate=lambda ref, case: _attention_variant(case, scale=1.0)),
    Mistake("softmax axis", "The softmax runs over the wrong axis: each query's weights over the keys must sum to 1, "
                            "so normalise along the last dimension of q @ k.T (dim=-1).",
            candidate=lambda ref, case: _attention_variant(case, softmax_dim=0)),
    Mistake("causal", "You applied a causal mask; this is plain (bidirectional) self-attention: every token sees every "
                      "token.", candidate=lambda ref, case: _attention_variant(case, causal=True)),
    Mistake("weights layout", "The weights are nn.Linear-style [d_out, d_model]: project with x @ w.T, not x @ w.",
            candidate=lambda ref, case: _attention_variant(case, transpose_weights=True)),
]


def _t5_kwargs(case, **change):
    kwargs = dict(case.kwargs)
    kwargs.update(change)
    return kwargs


T5_MISTAKES = [
    Mistake("sign", "The offset has the wrong sign: relative_position = key_pos - query_pos, so keys *after* the query "
                    "have positive offsets (upper half of the buckets when bidirectional; bucket 0 when causal).",
            candidate=lambda ref, case: ref(-case.args[0], *case.args[1:], **case.kwargs)),
    Mistake("bidirectional flag", lambda case: (
        "Your buckets are the " + ("causal" if case.kwargs.get("bidirectional", True) else "bidirectional") +
        " ones; bidirectional=" + str(case.kwargs.get("bidirectional", True)) + " asks for the " +
        ("bidirectional ones: half of the buckets per direction, keys after the query in the upper half."
         if case.kwargs.get("bidirectional", True) else
         "causal ones: all buckets for the past, every future offset in bucket 0.")),
        candidate=lambda ref, case: ref(case.args[0], **_t5_kwargs(
            case, bidirectional=not case.kwargs.get("bidirectional", True)))),
    Mistake("off by one", "Your buckets are those of the offset shifted by one: use the distance |key - query| "
                          "(or max(query - key, 0) when causal) as it is.",
            candidate=lambda ref, case: ref(case.args[0] + torch.sign(case.args[0]), *case.args[1:], **case.kwargs)),
]


def _relpos_sign(ref, case):
    return -ref(*case.args, **case.kwargs)


RELATIVE_POSITION_MISTAKES = [
    Mistake("sign", "The sign is flipped: entry (i, j) is key_pos - query_pos (negative for keys in the past).",
            candidate=_relpos_sign),
    Mistake("start aligned", "Your queries start at position 0. Queries are the *last* query_length positions of the "
                             "keys (query i sits at key_length - query_length + i), as in decoding with a KV cache.",
            candidate=lambda ref, case: ref(case.args[1], case.args[1])[: case.args[0]]),
]


ALIBI_SLOPES_MISTAKES = [
    Mistake("geometric for any n",
            "For a head count that is not a power of two you used the geometric sequence 2^(-8/n), 2^(-16/n), ... "
            "directly. The paper's code takes all slopes of the largest power of two p < n, then every other slope "
            "of 2p (the 1st, 3rd, 5th, ...) until n slopes are filled (Press et al. 2022, section 3).",
            candidate=lambda ref, case: _pow2_slopes(case.args[0])),
    Mistake("first n of 2p", "You took the first n slopes of the next power of two; the paper's code keeps all slopes of "
                             "the largest power of two p < n and appends every other slope of 2p.",
            candidate=lambda ref, case: _pow2_slopes(2 ** math.ceil(math.log2(case.args[0])))[: case.args[0]]),
    Mistake("starts at 1", "Your slopes start at 1 (= 2^0). The first slope is 2^(-8/n), the ratio of the sequence "
                           "itself: m_h = 2^(-8h/n) for h = 1 .. n.",
            candidate=lambda ref, case: torch.cat((torch.ones(1), ref(*case.args)[:-1])) if case.args[0] > 0 and
            (case.args[0] & (case.args[0] - 1)) == 0 else None),
    Mistake("reversed", "Your slopes are in reverse order: head 1 has the largest slope, 2^(-8/n), and they decrease.",
            candidate=lambda ref, case: ref(*case.args).flip(0)),
]


def _alibi_args(case):
    slopes, query_length = case.args[:2]
    key_length = case.args[2] if len(case.args) > 2 else case.kwargs.get("key_length")
    return slopes, query_length, (query_length if key_length is None else key_length)


def _alibi_distance(case):
    _, q, k = _alibi_args(case)
    return -_relative_positions(q, k)  # i - j


def _alibi_large_negative(actual, expected, case) -> bool:
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return False
    masked = torch.isinf(expected)
    a = actual.detach().to(torch.float64)
    return bool(masked.any() and torch.isfinite(a[masked]).all() and (a[masked] <= -1e4).all()
                and torch.allclose(a[~masked], expected[~masked].double(), rtol=1e-5, atol=1e-6))


ALIBI_BIAS_MISTAKES = [
    Mistake("sign", "The bias has the wrong sign: ALiBi *subtracts* m_h * (i - j), so the bias is 0 on the diagonal and "
                    "more negative the farther back the key is (Press et al. 2022, section 3).",
            candidate=lambda ref, case: (lambda b: torch.where(torch.isfinite(b), -b, b))(ref(*case.args, **case.kwargs))),
    Mistake("future not masked (linear)",
            "The future half is not masked: for keys after the query (j > i) your bias is -m (i - j) > 0, which "
            "*rewards* looking ahead. In a causal bias those entries must be -inf.",
            candidate=lambda ref, case: (lambda s, q, k: torch.where(_alibi_distance(case) < 0,
                                                                     -solutions.alibi_bias(s, q, k, causal=False),
                                                                     solutions.alibi_bias(s, q, k, causal=False)))(
                *_alibi_args(case))),
    Mistake("future not masked (symmetric)",
            "The future half is not masked: you used the symmetric -m |i - j| everywhere (the bidirectional variant). "
            "In the causal bias, keys after the query (j > i) must be -inf.",
            candidate=lambda ref, case: solutions.alibi_bias(*_alibi_args(case), causal=False)),
    Mistake("future set to 0", "The future half is set to 0 instead of -inf: a zero bias lets the query attend to later "
                               "keys. Fill j > i with float('-inf').",
            candidate=lambda ref, case: (lambda b: torch.where(torch.isinf(b), torch.zeros_like(b), b))(
                ref(*case.args, **case.kwargs))),
    Mistake("large finite mask", "Future keys hold a large negative number instead of -inf. It works in a softmax, but "
                                 "the causal bias of this course uses float('-inf') exactly.",
            matches=_alibi_large_negative),
    Mistake("diagonal masked", "You masked the diagonal too: a query may attend to itself (j = i, bias 0); only keys "
                               "after the query (j > i) are -inf.",
            candidate=lambda ref, case: (lambda b: torch.where(_alibi_distance(case) == 0,
                                                               torch.full_like(b, float("-inf")), b))(
                ref(*case.args, **case.kwargs))),
    Mistake("start aligned", "Your queries start at position 0. With fewer queries than keys, the queries are the *last* "
                             "query_length positions (query i sits at key_length - query_length + i), as when decoding "
                             "with a KV cache.",
            candidate=lambda ref, case: (lambda s, q, k: ref(s, k, k)[:, :q] if q < k else None)(*_alibi_args(case))),
]


def _permute_variant(case, inverse=False, one_head=False):
    weight, num_heads = case.args[:2]
    rotary_dim = case.args[2] if len(case.args) > 2 else case.kwargs.get("rotary_dim")
    heads = 1 if one_head else num_heads
    if one_head and rotary_dim is not None:
        return None
    function = solutions.permute_qk_weight_to_interleaved if inverse else solutions.permute_qk_weight_to_half_split
    return function(weight, heads, rotary_dim)


PERMUTE_MISTAKES = [
    Mistake("inverse", "You applied the inverse permutation (half-split to interleaved). Row 2i of a head (the first "
                       "coordinate of interleaved pair i) must become row i, and row 2i + 1 row i + d/2.",
            candidate=lambda ref, case: _permute_variant(case, inverse=True)),
    Mistake("whole matrix", "You permuted all output rows as one block; the permutation acts within each head "
                            "(reshape to [num_heads, head_dim, in_features] first).",
            candidate=lambda ref, case: _permute_variant(case, one_head=True)),
]


def _mla_variant(reference, case, *, drop_rope=False, drop_content=False, scale=None):
    args = list(case.args)
    if drop_rope:
        args[1] = torch.zeros_like(args[1])
    if drop_content:
        args[0] = torch.zeros_like(args[0])
    if scale is not None:
        args[-1] = scale
    return reference(*args)


MLA_SCORE_MISTAKES = [
    Mistake("no rope term", "Your scores have only the content part q^C . k^C. Add the decoupled rotary part "
                            "q^R . k^R (DeepSeek-V2 eq. 16-17: q = [q^C; q^R], k = [k^C; k^R]).",
            candidate=lambda ref, case: _mla_variant(ref, case, drop_rope=True)),
    Mistake("no content term", "Your scores have only the rotary part q^R . k^R. Add the content part q^C . k^C "
                               "(k^C = W^UK c^KV).", candidate=lambda ref, case: _mla_variant(ref, case, drop_content=True)),
    Mistake("no scale", "The scores are not multiplied by `scale` (1 / sqrt(d_h + d^R_h) in DeepSeek-V2 eq. 18): "
                        "multiply the sum of both parts by it.",
            candidate=lambda ref, case: _mla_variant(ref, case, scale=1.0)),
]


def _decoupled_variant(case, *, unrotated=False, swap_positions=False, interleaved=False):
    q_nope, q_rope, k_nope, k_rope, q_pos, k_pos, inv_freq, scale = case.args
    if unrotated:
        return (q_nope @ k_nope.T + q_rope @ k_rope.T) * scale
    if swap_positions:
        if q_pos.shape != k_pos.shape:
            return None
        q_pos, k_pos = k_pos, q_pos
    cos_q, sin_q = solutions.rope_cos_sin(inv_freq, q_pos)
    cos_k, sin_k = solutions.rope_cos_sin(inv_freq, k_pos)
    q_r = solutions.apply_rope(q_rope, cos_q, sin_q, interleaved)
    k_r = solutions.apply_rope(k_rope, cos_k, sin_k, interleaved)
    return (q_nope @ k_nope.T + q_r @ k_r.T) * scale


DECOUPLED_SCORE_MISTAKES = MLA_SCORE_MISTAKES + [
    Mistake("not rotated", "q^R and k^R are not rotated: apply RoPE to q^R at the query positions and to k^R at the key "
                           "positions before the dot product (DeepSeek-V2 eqs. 14-15).",
            candidate=lambda ref, case: _decoupled_variant(case, unrotated=True)),
    Mistake("layout", "Wrong RoPE layout: you rotated interleaved pairs (2i, 2i + 1); this task uses the half-split "
                      "layout (i paired with i + d_R/2), as `apply_rope` with interleaved=False.",
            candidate=lambda ref, case: _decoupled_variant(case, interleaved=True)),
    Mistake("positions swapped", "The query and key positions are swapped: rotate q^R by the query positions and k^R by "
                                 "the key positions.", candidate=lambda ref, case: _decoupled_variant(case, swap_positions=True)),
]


def _kv_case(case):
    return case.args[0], dict(case.kwargs)


def _kv_wrong(case, rule):
    kind, kw = _kv_case(case)
    return rule(kind, kw)


KV_CACHE_MISTAKES = [
    Mistake("mla per head", "You counted the MLA cache per head. MLA caches one latent c^KV (d_c numbers) and one rotary "
                            "key k^R (d^R_h numbers) per token, shared by all heads: d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: (kw["kv_lora_rank"] + kw["qk_rope_head_dim"])
                                                  * kw["num_heads"] if kind == "mla" and kw.get("num_heads") else None)),
    Mistake("mla keys and values", "You counted the latent twice. In MLA the same latent c^KV rebuilds both keys and "
                                   "values, so it is cached once: d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: 2 * kw["kv_lora_rank"] + kw["qk_rope_head_dim"]
                                                  if kind == "mla" else None)),
    Mistake("mla without rope key", "You left out the rotary key: MLA caches k^R (d^R_h numbers, already rotated) next to "
                                    "the latent, because RoPE cannot be absorbed. The total is d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: kw["kv_lora_rank"] if kind == "mla" else None)),
    Mistake("keys only", "You counted only the keys: a KV cache stores a key *and* a value per head (the factor 2).",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: ref(kind, **kw) // 2
                                                  if kind in ("mha", "gqa", "mqa") else None)),
    Mistake("gqa with all heads", "For GQA, count the key/value heads (num_kv_heads groups), not the query heads.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: 2 * kw["num_heads"] * kw["head_dim"]
                                                  if kind == "gqa" and kw.get("num_heads") else None)),
]


def _scaling_args(case):
    names = ("method", "dim", "base", "factor", "original_max_position_embeddings", "seq_len")
    values = dict(zip(names, case.args))
    values.update(case.kwargs)
    return values


def _pi_as_base(ref, case):
    a = _scaling_args(case)
    if a["method"] != "linear":
        return None
    return solutions.rope_inv_freq(a["dim"], a["base"] * a["factor"]), 1.0


def _pi_extrapolated(ref, case):
    a = _scaling_args(case)
    if a["method"] != "linear":
        return None
    return solutions.rope_inv_freq(a["dim"], a["base"]) * a["factor"], 1.0


def _with_factor(ref, case, power):
    a = _scaling_args(case)
    if a["method"] != "yarn":
        return None
    inv_freq, factor = ref(*case.args, **case.kwargs)
    return inv_freq, factor ** power


YARN_ONCE_MESSAGE = (
    "The YaRN attention factor is applied only once: your result carries sqrt of the reference's scaling. The factor "
    "0.1 ln(s) + 1 multiplies *both* cos and sin (so q and k are each scaled, and the logits by its square, "
    "YaRN eq. 22 with sqrt(1/t) folded into the rotation)."
)
YARN_MISSING_MESSAGE = (
    "The YaRN attention factor is missing: YaRN scales cos and sin by 0.1 ln(s) + 1 (YaRN eq. 22), which tempers the "
    "softmax at long lengths; without it the frequencies are just NTK-by-parts."
)

ROPE_SCALING_MISTAKES = [
    Mistake("PI as base change", "Position Interpolation applied as a base change: PI divides every frequency (equivalently "
                                 "every position) by the factor, theta_i / s (Chen et al. 2023, eq. 4). Multiplying the "
                                 "base by s leaves the fastest frequency untouched: that is NTK-like scaling, not PI.",
            candidate=_pi_as_base),
    Mistake("PI extrapolated", "Your PI frequencies are multiplied by the factor; PI *divides* them (positions m become "
                               "m / s, so the longest context maps into the trained range).", candidate=_pi_extrapolated),
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE, candidate=lambda ref, case: _with_factor(ref, case, 0)),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE, candidate=lambda ref, case: _with_factor(ref, case, 0.5)),
    Mistake("YaRN factor squared", "Your attention factor is the square of the reference's: the returned factor multiplies "
                                   "cos and sin, and the logits get its square automatically; do not square it yourself.",
            candidate=lambda ref, case: _with_factor(ref, case, 2)),
]


def _yarn_factor(case) -> float:
    dim, base, factor, original = case.args[:4]
    return solutions.rope_scaling("yarn", dim, base, factor, original)[1]


YARN_COS_SIN_MISTAKES = [
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE,
            candidate=lambda ref, case: tuple(t / _yarn_factor(case) for t in ref(*case.args))),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE,
            candidate=lambda ref, case: tuple(t / math.sqrt(_yarn_factor(case)) for t in ref(*case.args))),
    Mistake("YaRN factor on cos only", "The YaRN attention factor multiplies cos but not sin: scale both (it scales the "
                                       "whole rotated vector).",
            candidate=lambda ref, case: (lambda c, s: (c, s / _yarn_factor(case)))(*ref(*case.args))),
]


def _yarn_logit_factor(case) -> float:
    q = case.args[0]
    base, factor, original = case.args[4:7]
    return solutions.rope_scaling("yarn", q.shape[-1], base, factor, original)[1]


def _yarn_logits_variant(case, *, plain_frequencies=False, interleaved=False):
    """The logits with YaRN's factor on q and k but another rotation: plain RoPE frequencies, or the other layout."""
    q, k, q_positions, k_positions, base, factor, original = case.args
    dim = q.shape[-1]
    if plain_frequencies:
        inv_freq, attention_factor = solutions.rope_inv_freq(dim, base), _yarn_logit_factor(case)
    else:
        inv_freq, attention_factor = solutions.rope_scaling("yarn", dim, base, factor, original)
    cos_q, sin_q = solutions.rope_cos_sin(inv_freq, q_positions, attention_factor)
    cos_k, sin_k = solutions.rope_cos_sin(inv_freq, k_positions, attention_factor)
    return solutions.apply_rope(q, cos_q, sin_q, interleaved) @ solutions.apply_rope(k, cos_k, sin_k, interleaved).T


YARN_LOGITS_MISTAKES = [
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE,
            candidate=lambda ref, case: ref(*case.args) / _yarn_logit_factor(case) ** 2),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE,
            candidate=lambda ref, case: ref(*case.args) / _yarn_logit_factor(case)),
    Mistake("YaRN factor twice", "The YaRN attention factor is applied twice: your logits carry its fourth power. "
                                 "Scale q and k by it (or cos and sin, which is the same), *or* the logits by its "
                                 "square, not both.",
            candidate=lambda ref, case: ref(*case.args) * _yarn_logit_factor(case) ** 2),
    Mistake("plain frequencies", "Your rotation uses plain RoPE frequencies (with the right attention factor): YaRN "
                                 "rotates with the NTK-by-parts frequencies, the first item `yarn_scaling` returns.",
            candidate=lambda ref, case: _yarn_logits_variant(case, plain_frequencies=True)),
    Mistake("layout", "Wrong RoPE layout: you rotated interleaved pairs (2i, 2i + 1); this task uses the half-split "
                      "layout (coordinate i paired with i + d/2).",
            candidate=lambda ref, case: _yarn_logits_variant(case, interleaved=True)),
]


def _method_inv_freq(case, method, **params):
    """The frequencies of another ``method`` (with its own ``params``) on this case's geometry."""
    a = _scaling_args(case)
    return solutions.rope_scaling(method, a["dim"], a["base"], a["factor"], a["original_max_position_embeddings"],
                                  a.get("seq_len"), **params)[0]


def _betas(case) -> dict:
    """The case's ``beta_fast``/``beta_slow``, where it sets them."""
    return {k: v for k, v in _scaling_args(case).items() if k in ("beta_fast", "beta_slow")}


def _by_parts_inv_freq(case, **ramp_options):
    """NTK-by-parts frequencies with the case's betas and another ramp (``ramp``, ``truncate``)."""
    return _method_inv_freq(case, "ntk_by_parts", **_betas(case), **ramp_options)


def _keeping_the_factor(ref, case, inv_freq):
    """``(inv_freq, the reference's attention factor)``: a mistake in the frequencies only."""
    return inv_freq, ref(*case.args, **case.kwargs)[1]


def _ramp_reversed(case):
    """NTK-by-parts with gamma and 1 - gamma swapped: the fast pairs divided by the factor, the slow ones kept."""
    a = _scaling_args(case)
    inv_freq = solutions.rope_inv_freq(a["dim"], a["base"])
    keep = ntk_by_parts_ramp(a["dim"], a["base"], a["original_max_position_embeddings"], **_betas(case))
    return keep * inv_freq / float(a["factor"]) + (1 - keep) * inv_freq


BY_PARTS_MISTAKES = [
    Mistake("paper ramp", "Your ramp is the YaRN paper's, linear in the number of turns r = L / lambda_i (eq. 18). "
                          "This assignment uses the released code's ramp (YaRN, Hugging Face and DeepSeek), linear in "
                          "the pair index i between the two correction dimensions.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _by_parts_inv_freq(case, ramp="paper"))),
    Mistake("ramp not rounded", "Your ramp runs between the correction dimensions as computed; the released code "
                                "first rounds them outwards: low = floor(d(beta_fast)) and high = ceil(d(beta_slow)).",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _by_parts_inv_freq(case, truncate=False))),
    Mistake("ramp reversed", "Your ramp is the wrong way round: you divided the fast pairs (small i, many turns within "
                             "L) by the factor and kept the slow ones. gamma = 1 keeps a pair, and it is 1 below the "
                             "low correction dimension.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _ramp_reversed(case))),
    Mistake("PI everywhere", "Every pair is divided by the factor: that is Position Interpolation. NTK-by-parts keeps "
                             "the fast pairs (gamma = 1) and divides only the slow ones.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _method_inv_freq(case, "linear"))),
    Mistake("no pair divided", "Your frequencies are plain RoPE: no pair is divided by the factor. The slow pairs "
                               "(gamma = 0, i above the high correction dimension) must become theta_i / s.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, solutions.rope_inv_freq(
                _scaling_args(case)["dim"], _scaling_args(case)["base"]))),
]


def _ntk_with_base(case, new_base):
    """``(plain RoPE frequencies of new_base(base, s, d), 1.0)``: an NTK-aware base computed the wrong way."""
    a = _scaling_args(case)
    return solutions.rope_inv_freq(a["dim"], new_base(float(a["base"]), float(a["factor"]), a["dim"])), 1.0


NTK_AWARE_MISTAKES = [
    Mistake("base times s", "You multiplied the base by s. The NTK-aware base is base * s^(d / (d - 2)): the exponent "
                            "makes the slowest pair, theta_{d/2-1} = base^(-(d-2)/d), come out divided by exactly s.",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b * s)),
    Mistake("exponent inverted", "Your base is base * s^((d - 2) / d); the exponent is d / (d - 2), so that "
                                 "(base')^(-(d-2)/d) = base^(-(d-2)/d) / s.",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b * s ** ((d - 2) / d))),
    Mistake("PI", "Every pair is divided by s: that is Position Interpolation. NTK-aware scaling changes the base "
                  "instead, so the fastest pair (theta_0 = 1) is untouched and only the slowest is divided by s.",
            candidate=lambda ref, case: (_method_inv_freq(case, "linear"), 1.0)),
    Mistake("base divided", "Your base got smaller. A larger base means slower rotations, which is what fitting a "
                            "longer context needs: base' = base * s^(d / (d - 2)).",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b / s ** (d / (d - 2)))),
]


def _dynamic_below_training_length(case):
    """The released Dynamic NTK formula applied below the training length too (where it is defined, s' > 0)."""
    a = _scaling_args(case)
    length, original, factor = a["seq_len"], a["original_max_position_embeddings"], float(a["factor"])
    effective = factor * length / original - (factor - 1)
    if length >= original or effective <= 0:
        return None
    return solutions.rope_inv_freq(a["dim"], ntk_aware_base(a["dim"], a["base"], effective)), 1.0


DYNAMIC_NTK_MISTAKES = [
    Mistake("paper length rule", "You used the YaRN paper's length rule, s' = l / L (eq. 24). This assignment follows "
                                 "the released code: s' = s * l / L - (s - 1), which reaches s' = s^2 - s + 1 at "
                                 "l = s L.",
            candidate=lambda ref, case: (_method_inv_freq(case, "dynamic", length_rule="paper"), 1.0)
            if _scaling_args(case)["seq_len"] > _scaling_args(case)["original_max_position_embeddings"] else None),
    Mistake("static factor", "Your frequencies ignore the current length: that is static NTK-aware scaling with the "
                             "factor s. Dynamic NTK computes its factor from seq_len at every call.",
            candidate=lambda ref, case: (_method_inv_freq(case, "ntk"), 1.0)),
    Mistake("not plain below L", "Up to the training length (seq_len <= L) Dynamic NTK is plain RoPE: the released "
                                 "formula is only applied once the sequence is longer than L.",
            candidate=lambda ref, case: _dynamic_below_training_length(case)),
]


def _ntk_alibi_variant(case, *, exponents=None, slopes=None, multiply=False):
    """NTK-ALiBi slopes ``m_h / factor^e_h`` with other exponents ``e``, other base slopes, or multiplied."""
    num_heads, factor = case.args[:2]
    base_slopes = (solutions.alibi_slopes(num_heads) if slopes is None else slopes).double()
    if exponents is None:
        exponents = torch.arange(num_heads, dtype=torch.float64) / max(num_heads - 1, 1)
    divisor = float(factor) ** exponents
    return (base_slopes * divisor if multiply else base_slopes / divisor).to(torch.float32)


def _slope_ranks(num_heads):
    """Each head's rank among ALiBi's slopes, steepest first, as (rank) / (H - 1): NTK-ALiBi's exponents by rank."""
    order = solutions.alibi_slopes(num_heads).argsort(descending=True)  # steepest first
    ranks = torch.empty(num_heads, dtype=torch.float64)
    ranks[order] = torch.arange(num_heads, dtype=torch.float64)
    return ranks / max(num_heads - 1, 1)


NTK_ALIBI_MISTAKES = [
    Mistake("every head divided", "You divided every slope by the factor: that is position interpolation for ALiBi. "
                                  "NTK-ALiBi keeps the first head as trained and divides only the last by the factor, "
                                  "with factor^((h-1)/(H-1)) in between.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.ones(case.args[0], dtype=torch.float64))),
    Mistake("reversed", "The blend runs the wrong way: your first head is divided by the factor and your last is "
                        "unchanged. Head 1 (the steepest, most local) keeps its slope; head H is divided by the "
                        "factor.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.arange(case.args[0], dtype=torch.float64).flip(0) / max(case.args[0] - 1, 1))),
    Mistake("exponent h/H", "Your exponents are h/H for h = 1 .. H; they are (h - 1)/(H - 1), from 0 for the first "
                            "head to 1 for the last.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.arange(1, case.args[0] + 1, dtype=torch.float64) / case.args[0])),
    Mistake("multiplied", "Your slopes are multiplied by the factor's powers; NTK-ALiBi *divides* them, so the gentle "
                          "heads reach farther.", candidate=lambda ref, case: _ntk_alibi_variant(case, multiply=True)),
    Mistake("by slope rank", "You applied the divisors in the order of the slopes (steepest first). The formula "
                             "follows the head index h, and for a head count that is not a power of two ALiBi's "
                             "slopes are not sorted by index.",
            candidate=lambda ref, case: _ntk_alibi_variant(case, exponents=_slope_ranks(case.args[0]))),
    Mistake("geometric for any n", ALIBI_SLOPES_MISTAKES[0].message,
            candidate=lambda ref, case: _ntk_alibi_variant(case, slopes=_pow2_slopes(case.args[0]))),
]


def _yarn_factor_variant(case, rule):
    """``rule(factor, mscale)`` on the case's arguments: the attention factor computed another way."""
    factor = float(case.args[0])
    mscale = float(case.args[1]) if len(case.args) > 1 else float(case.kwargs.get("mscale", 1.0))
    return rule(factor, mscale)


YARN_FACTOR_MISTAKES = [
    Mistake("log10", "You used log10; YaRN's ln is the natural logarithm (math.log).",
            candidate=lambda ref, case: _yarn_factor_variant(
                case, lambda s, m: 0.1 * m * math.log10(s) + 1.0 if s > 1 else 1.0)),
    Mistake("no +1", "The + 1 is missing: sqrt(1/t) = 0.1 ln(s) + 1, which is 1 (no change) at s = 1.",
            candidate=lambda ref, case: _yarn_factor_variant(
                case, lambda s, m: 0.1 * m * math.log(s) if s > 1 else 0.0)),
    Mistake("squared", "You returned (0.1 ln(s) + 1)^2 = 1/t, the factor of the logits. yarn_attention_factor is its "
                       "square root, sqrt(1/t): it multiplies cos and sin (q and k), so the logits get its square.",
            candidate=lambda ref, case: ref(*case.args, **case.kwargs) ** 2),
    Mistake("inverted", "Your factor is below 1: it would flatten the softmax. YaRN *sharpens* it at long lengths: "
                        "sqrt(1/t) = 0.1 ln(s) + 1 >= 1.",
            candidate=lambda ref, case: 1.0 / ref(*case.args, **case.kwargs)),
    Mistake("no guard below 1", "For s <= 1 there is no extension and the factor is exactly 1; your formula gives less "
                                "than 1 there.",
            candidate=lambda ref, case: _yarn_factor_variant(case, lambda s, m: 0.1 * m * math.log(s) + 1.0)
            if 0 < float(case.args[0]) < 1 else None),
    Mistake("mscale ignored", "mscale is ignored: it multiplies the 0.1, sqrt(1/t) = 0.1 * mscale * ln(s) + 1 "
                              "(DeepSeek's coefficient).",
            candidate=lambda ref, case: ref(case.args[0])),
]


# ----------------------------------------------------------------------------------------------------------
# Part 1: foundations
# ----------------------------------------------------------------------------------------------------------


def check_self_attention(student_fn, *, shapes=((5, 8, 4),), seed=0, hidden=False) -> None:
    """``self_attention(x, w_q, w_k, w_v)``: one head, no positions. ``shapes`` are (seq, d_model, d_head)."""
    g = _generator(seed)
    cases = []
    for seq, d_model, d_head in shapes:
        args = (_randn((seq, d_model), g), _randn((d_head, d_model), g), _randn((d_head, d_model), g),
                _randn((d_head, d_model), g))
        cases.append(Case(args, label=f"x [{seq}, {d_model}], weights [{d_head}, {d_model}]"))
    check_function(student_fn, references.self_attention, cases, name="self_attention", rtol=1e-4, atol=1e-5,
                   mistakes=SELF_ATTENTION_MISTAKES, hidden=hidden,
                   hint="Compute softmax(q k^T / sqrt(d_k)) v with q = x W_q^T, k = x W_k^T, v = x W_v^T.")


def _attention_fn(g, d):
    w = [_randn((d, d), g) / math.sqrt(d) for _ in range(3)]
    return lambda x: references.self_attention(x, *w)


def _subject_functions(g, d):
    attention = _attention_fn(g, d)
    w_mlp = _randn((d, d), g) / math.sqrt(d)
    weights = [_randn((d, d), g) / math.sqrt(d) for _ in range(3)]
    return {
        "plain self-attention": (attention, True,
                                 "self-attention without positions treats the tokens as a set"),
        "a row-wise MLP, tanh(x W)": (lambda x: torch.tanh(x @ w_mlp), True, "it acts on each row separately"),
        "self-attention after adding the sinusoidal encoding": (
            lambda x: attention(x + solutions.sinusoidal_encoding(x.shape[0], x.shape[1])), False,
            "the encoding added to row p depends on p, not on the token"),
        "causal self-attention": (
            lambda x: solutions.reference_attention(x @ weights[0].T, x @ weights[1].T, x @ weights[2].T, causal=True),
            False, "the causal mask depends on the positions"),
        "a cumulative sum over the sequence": (lambda x: torch.cumsum(x, dim=0), False,
                                               "the sum up to row p depends on the order"),
    }


def check_permutation_detector(student_fn, *, seq=6, dim=8, seed=0, hidden=False, identity=False) -> None:
    """``is_permutation_equivariant(f, x, perm) -> bool`` on functions that are and are not equivariant."""
    g = _generator(seed)
    subjects = _subject_functions(g, dim)
    x = _randn((seq, dim), g)
    if identity:
        perm = torch.arange(seq)
    else:
        perm = torch.randperm(seq, generator=g)
        while bool((perm == torch.arange(seq)).any()) and seq > 1:
            perm = torch.randperm(seq, generator=g)  # a derangement: every row moves
    cases = []
    for description, (f, _, why) in subjects.items():
        note = (f"{description} with the identity permutation: nothing moves, so every function passes"
                if identity else f"{description}: {why}")
        cases.append(Case((f, x, perm), label=f"{description}, x [{seq}, {dim}]", note=note))
    for number, case in enumerate(cases, start=1):
        f, x_, perm_ = case.args
        expected = references.is_permutation_equivariant(f, x_.clone(), perm_.clone())
        label = (f"hidden case {number} of {len(cases)} ({case.label})" if hidden else case.label)
        actual = call_student(student_fn, "is_permutation_equivariant", (f, x_.clone(), perm_.clone()), {}, label)
        difference = compare(actual, expected, what="the answer")
        if difference is None:
            continue
        if difference.kind == "type":
            raise CheckFailed(f"is_permutation_equivariant on {label}: {difference.text}")
        if expected:
            raise CheckFailed(
                f"is_permutation_equivariant returned False for {label}, which is permutation-equivariant "
                f"({case.note}). Compare f(x[perm]) with f(x)[perm] (permute the rows of the output too), with "
                f"torch.allclose and a small tolerance (floating-point sums in another order differ in the last bits).")
        raise CheckFailed(
            f"is_permutation_equivariant returned True for {label}, which is NOT permutation-equivariant "
            f"({case.note}). Make sure you call f on the permuted input, f(x[perm]), and compare it with the "
            f"permuted output f(x)[perm].")
    print(f"\N{CHECK MARK} is_permutation_equivariant: {len(cases)} {'hidden ' if hidden else ''}cases answered correctly")


def check_sinusoidal_encoding(student_fn, *, cases=((6, 8), (1, 2), (4, 6, 100.0)), hidden=False) -> None:
    """``sinusoidal_encoding(num_positions, dim, base=10000.0)``; ``cases`` are (num_positions, dim[, base])."""
    built = [Case(tuple(c), label=f"num_positions={c[0]}, dim={c[1]}" + (f", base={c[2]:g}" if len(c) > 2 else ""))
             for c in cases]
    check_function(student_fn, solutions.sinusoidal_encoding, built, name="sinusoidal_encoding", rtol=1e-4, atol=1e-4,
                   mistakes=SINUSOIDAL_MISTAKES, hidden=hidden,
                   hint="Row p, column 2i is sin(p * base^(-2i/dim)) and column 2i + 1 is cos of the same angle.")


def check_shift_matrix(student_fn, *, cases=((1, 4), (3, 8), (-2, 6, 100.0)), hidden=False) -> None:
    """``sinusoidal_shift_matrix(offset, dim, base=10000.0)`` (float64); ``cases`` are (offset, dim[, base])."""
    built = [Case(tuple(c), label=f"offset={c[0]}, dim={c[1]}" + (f", base={c[2]:g}" if len(c) > 2 else ""))
             for c in cases]
    check_function(student_fn, solutions.sinusoidal_shift_matrix, built, name="sinusoidal_shift_matrix", rtol=1e-6,
                   atol=1e-9, mistakes=SHIFT_MATRIX_MISTAKES, hidden=hidden,
                   hint="M_k is block-diagonal with one 2x2 block [[cos(k w_i), sin(k w_i)], [-sin(k w_i), cos(k w_i)]] "
                        "per frequency, acting on the (sin, cos) pair of columns 2i, 2i + 1.")


def check_position_dot_product(student_fn, *, cases=(((0, 1, 2, 5), 8), ((3, -3), 16, 100.0)), hidden=False) -> None:
    """``position_dot_product(offsets, dim, base=10000.0)`` (float64); ``cases`` are (offsets, dim[, base])."""
    built = []
    for c in cases:
        offsets = torch.tensor(c[0], dtype=torch.float64)
        built.append(Case((offsets,) + tuple(c[1:]), label=f"{offsets.numel()} offsets, dim={c[1]}"
                          + (f", base={c[2]:g}" if len(c) > 2 else "")))
    check_function(student_fn, references.position_dot_product, built, name="position_dot_product", rtol=1e-6,
                   atol=1e-9, mistakes=DOT_PRODUCT_MISTAKES, hidden=hidden,
                   hint="PE(p) . PE(p + k) = sum over the d/2 frequencies of cos(k * omega_i).")


# ----------------------------------------------------------------------------------------------------------
# Part 2: relative position
# ----------------------------------------------------------------------------------------------------------


def check_relative_positions(student_fn, *, cases=((4, 4), (2, 5), (1, 3)), hidden=False) -> None:
    """``relative_positions(query_length, key_length)``: the int64 ``[q, k]`` matrix key_pos - query_pos."""
    built = [Case(tuple(c), label=f"query_length={c[0]}, key_length={c[1]}") for c in cases]
    check_function(student_fn, _relative_positions, built, name="relative_positions", mistakes=RELATIVE_POSITION_MISTAKES,
                   hidden=hidden, hint="Entry (i, j) is j - (key_length - query_length + i).")


def check_t5_bucket(student_fn, *, bidirectional: bool, offsets=None, num_buckets=32, max_distance=128, seed=0,
                    hidden=False) -> None:
    """``t5_relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance)``."""
    if offsets is None:
        offsets = torch.arange(-200, 201)
    elif not isinstance(offsets, torch.Tensor):
        offsets = torch.tensor(offsets)
    g = _generator(seed)
    random = torch.randint(-4 * max_distance, 4 * max_distance + 1, (3, 7), generator=g)
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    cases = [Case((offsets.long(),), dict(kwargs), label=f"{offsets.numel()} offsets from {int(offsets.min())} to "
                                                         f"{int(offsets.max())}, num_buckets={num_buckets}, "
                                                         f"max_distance={max_distance}, bidirectional={bidirectional}"),
             Case((random,), dict(kwargs), label=f"random offsets of shape [3, 7], bidirectional={bidirectional}")]
    check_function(student_fn, solutions.t5_relative_position_bucket, cases, name="t5_relative_position_bucket",
                   mistakes=T5_MISTAKES, hidden=hidden,
                   hint="Exact buckets for distances below max_exact = buckets_per_direction // 2, then "
                        "max_exact + floor(log(d / max_exact) / log(max_distance / max_exact) * (buckets_per_direction "
                        "- max_exact)), clamped to the last bucket of the direction.")


def check_alibi_slopes(student_fn, *, head_counts=(8, 4, 1), hidden=False) -> None:
    """``alibi_slopes(num_heads)``: float32 ``[num_heads]``."""
    cases = [Case((n,), label=f"num_heads={n}") for n in head_counts]
    check_function(student_fn, solutions.alibi_slopes, cases, name="alibi_slopes", rtol=1e-6, atol=1e-7,
                   mistakes=ALIBI_SLOPES_MISTAKES, hidden=hidden,
                   hint="For a power of two n the slopes are 2^(-8/n), 2^(-16/n), ..., 2^(-8).")


def check_alibi_bias(student_fn, *, cases=((4, 5, 5), (2, 3, 6), (1, 1, 4)), hidden=False) -> None:
    """``alibi_bias(slopes, query_length, key_length)``: the causal ``[heads, q, k]`` bias with -inf above."""
    built = []
    for num_heads, q, k in cases:
        slopes = solutions.alibi_slopes(num_heads)
        built.append(Case((slopes, q, k), label=f"{num_heads} heads, query_length={q}, key_length={k}"))
    check_function(student_fn, lambda s, q, k: solutions.alibi_bias(s, q, k, causal=True), built, name="alibi_bias",
                   rtol=1e-6, atol=1e-6, mistakes=ALIBI_BIAS_MISTAKES, hidden=hidden,
                   hint="Entry (h, i, j) is -m_h * (i - j) for keys at or before the query, -inf after it.")


def check_relative_shift(student_fn, *, shapes=((4, 4), (3, 5), (2, 2, 6)), seed=0, hidden=False) -> None:
    """``relative_shift(x)`` of Transformer-XL, compared on the causal region only (the rest is garbage)."""
    g = _generator(seed)
    cases = [Case((_randn(shape, g),), label=f"x {list(shape)}") for shape in shapes]

    def causal_region(case):
        q, k = case.args[0].shape[-2:]
        return solutions.causal_mask(q, k)

    check_function(student_fn, solutions.relative_shift, cases, name="relative_shift", rtol=0, atol=0,
                   mask_fn=causal_region, hidden=hidden,
                   hint="Output (i, j) must be x[..., i, j + q_len - 1 - i] wherever j <= k_len - q_len + i: pad a "
                        "zero column on the left, view as [k_len + 1, q_len], drop the first row, view back.")


# ----------------------------------------------------------------------------------------------------------
# Part 3: RoPE
# ----------------------------------------------------------------------------------------------------------


def check_rope_inv_freq(student_fn, *, cases=((8,), (2,), (16, 500.0)), hidden=False) -> None:
    """``rope_inv_freq(dim, base=10000.0)``: float32 ``[dim // 2]``."""
    built = [Case(tuple(c), label=f"dim={c[0]}" + (f", base={c[1]:g}" if len(c) > 1 else "")) for c in cases]
    check_function(student_fn, solutions.rope_inv_freq, built, name="rope_inv_freq", rtol=1e-5, atol=1e-7,
                   mistakes=INV_FREQ_MISTAKES, hidden=hidden,
                   hint="theta_i = base^(-2i/dim) for i = 0 .. dim/2 - 1 (RoFormer eq. 15).")


def check_rope_cos_sin(student_fn, *, cases=((8, (0, 1, 2, 3, 4)), (4, (7,)), (6, ((0, 1), (5, 9)))), hidden=False) -> None:
    """``rope_cos_sin(inv_freq, positions) -> (cos, sin)``; ``cases`` are (dim, positions)."""
    for dim, positions in cases:
        positions = torch.tensor(positions)
        case = Case((solutions.rope_inv_freq(dim), positions),
                    label=f"inv_freq of dim {dim}, positions of shape {list(positions.shape)}")
        # float32 angles p * theta carry an error of about p * 6e-8: the tolerance grows with the position, so
        # that computing the angles in float32 (as the reference does) or in float64 both pass.
        atol = max(1e-5, 2.5e-7 * float(positions.abs().max()))
        check_function(student_fn, solutions.rope_cos_sin, [case], name="rope_cos_sin", rtol=1e-5, atol=atol,
                       mistakes=COS_SIN_MISTAKES, names=("cos", "sin"), hidden=hidden, quiet=True,
                       hint="angles = positions[..., None] * inv_freq; return (cos(angles), sin(angles)).")
    print(f"\N{CHECK MARK} rope_cos_sin: {len(cases)} {'hidden ' if hidden else ''}"
          f"case{'s match' if len(cases) != 1 else ' matches'} the reference")


def check_apply_rope(student_fn, *, interleaved: bool, shapes=((5, 8), (2, 3, 4, 6)), rotary_dims=None,
                     position_offset=0, seed=0, hidden=False) -> None:
    """``apply_rope(x, cos, sin, interleaved)``. ``shapes`` are x's shapes ``[..., seq, dim]``; ``rotary_dims``
    (one per shape, default the full dim) makes cos/sin cover only the first coordinates (partial rotary)."""
    g = _generator(seed)
    rotary_dims = rotary_dims or [None] * len(shapes)
    cases = []
    for shape, rotary_dim in zip(shapes, rotary_dims):
        seq, dim = shape[-2], shape[-1]
        rotary_dim = rotary_dim or dim
        positions = torch.arange(position_offset, position_offset + seq)
        cos, sin = solutions.rope_cos_sin(solutions.rope_inv_freq(rotary_dim), positions)
        label = (f"x {list(shape)}, positions {position_offset}..{position_offset + seq - 1}, interleaved={interleaved}"
                 + (f", rotary_dim={rotary_dim}" if rotary_dim != dim else ""))
        cases.append(Case((_randn(shape, g), cos, sin), {"interleaved": interleaved}, label=label))
    layout = "interleaved" if interleaved else "half-split"
    check_function(student_fn, solutions.apply_rope, cases, name=f"apply_rope ({layout})", rtol=1e-5, atol=1e-5,
                   mistakes=APPLY_ROPE_MISTAKES, hidden=hidden,
                   hint="Each pair (a, b) becomes (a cos - b sin, b cos + a sin); coordinates beyond 2 * cos.shape[-1] "
                        "pass through unchanged.")


def check_permute_to_half_split(student_fn, *, cases=((2, 4, 3), (1, 8, 5)), seed=0, hidden=False) -> None:
    """``permute_qk_weight_to_half_split(weight, num_heads)``; ``cases`` are (num_heads, head_dim, in_features)."""
    g = _generator(seed)
    built = []
    for num_heads, head_dim, in_features in cases:
        weight = _randn((num_heads * head_dim, in_features), g)
        built.append(Case((weight, num_heads), label=f"weight [{num_heads * head_dim}, {in_features}], "
                                                     f"num_heads={num_heads}"))
    check_function(student_fn, lambda w, h: solutions.permute_qk_weight_to_half_split(w, h), built,
                   name="permute_qk_weight_to_half_split", rtol=0, atol=0, mistakes=PERMUTE_MISTAKES, hidden=hidden,
                   hint="Within each head, the new rows are the old rows 0, 2, 4, ..., then 1, 3, 5, ...")


def _kernel_reference(x, inv_freq, position_offset=0, *, interleaved=False, swap=False, sign=1.0, shift=0):
    positions = torch.arange(x.shape[0]) + position_offset + shift
    cos, sin = solutions.rope_cos_sin(inv_freq, positions)
    if swap:
        cos, sin = sin, cos
    return solutions.apply_rope(x, cos, sign * sin, interleaved)


KERNEL_MISTAKES = [
    Mistake("layout", "Wrong RoPE layout: your kernel pairs x[row, 2i] with x[row, 2i + 1] (interleaved); this kernel "
                      "uses the half-split layout, x[row, i] with x[row, i + HALF].",
            candidate=lambda ref, case: _kernel_reference(*case.args, interleaved=True)),
    Mistake("cos/sin swapped", APPLY_ROPE_MISTAKES[1].message,
            candidate=lambda ref, case: _kernel_reference(*case.args, swap=True)),
    Mistake("direction", APPLY_ROPE_MISTAKES[2].message,
            candidate=lambda ref, case: _kernel_reference(*case.args, sign=-1.0)),
    Mistake("positions +1", "Positions off by one: your angles are those of position p + 1. Row r of x is position "
                            "r + position_offset.", candidate=lambda ref, case: _kernel_reference(*case.args, shift=1)),
    Mistake("offset ignored", "The position offset is ignored: row r is at position r + position_offset (the rows "
                              "continue a sequence already in the KV cache).",
            candidate=lambda ref, case: _kernel_reference(case.args[0], case.args[1], 0)
            if case.args[2] else None),
]


def check_rope_kernel(student_launcher, *, shapes=((4, 8), (1, 2), (6, 32)), position_offset=5, seed=0,
                      hidden=False) -> None:
    """A Triton RoPE kernel that computes its own angles, called as ``student_launcher(x, inv_freq,
    position_offset)`` on ``[seq, dim]`` float32 inputs (dim a power of two) and run by Triton's interpreter on
    the CPU; compared with `solutions.apply_rope` at positions ``position_offset + arange(seq)``."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        raise CheckFailed("Triton is not installed in this environment (there is no Triton wheel for macOS or "
                          "Windows), so the kernel cannot run here. Write it anyway: it is graded on the course "
                          "machines, or run this notebook on Linux (pip install triton).")
    g = _generator(seed)
    cases = []
    for seq, dim in shapes:
        cases.append(Case((_randn((seq, dim), g), solutions.rope_inv_freq(dim), position_offset), {},
                          label=f"x [{seq}, {dim}], positions {position_offset}..{position_offset + seq - 1}"))
    check_function(student_launcher, _kernel_reference, cases, name="rope_kernel", rtol=1e-5, atol=1e-5,
                   mistakes=KERNEL_MISTAKES, hidden=hidden,
                   hint="Row r: angles (r + position_offset) * inv_freq; load the halves x[r, :HALF] and x[r, HALF:]; "
                        "store x1 * cos - x2 * sin and x2 * cos + x1 * sin to the same places of OUT.")


def _correct_rotations():
    return {
        "RoPE, half-split, base 10000": lambda x, p: references.rope_rotate_at(x, p),
        "RoPE, interleaved, base 500": lambda x, p: references.rope_rotate_at(x, p, base=500.0, interleaved=True),
    }


def _broken_rotations():
    def quadratic(x, p):  # the angle grows with p^2: rotations, but not of a relative kind
        return references.rope_rotate_at(x, p * p)

    def additive(x, p):  # an absolute encoding added to the vector
        angles = float(p) * _frequencies(x.shape[-1], 10000.0, "2i/d")
        return x + _interleave(torch.sin(angles), torch.cos(angles)).to(x.dtype)

    def growing(x, p):  # a rotation whose length grows with the position
        return references.rope_rotate_at(x, p) * (1.0 + 0.1 * p)

    def cos_only(x, p):  # multiplies by cos and forgets the sin term: not a rotation
        cos, _ = solutions.rope_cos_sin(solutions.rope_inv_freq(x.shape[-1]).double(), torch.tensor([p]))
        return (x.double() * torch.cat((cos, cos), -1).reshape(x.shape[-1])).to(x.dtype)

    return {
        "angles growing with position^2": quadratic,
        "an absolute sinusoidal encoding added to the vector": additive,
        "a rotation scaled by (1 + 0.1 p)": growing,
        "cos only, no sin term": cos_only,
    }


def check_relative_property_test(student_test, *, broken=None, hidden=False) -> None:
    """Grade a test the student wrote: ``student_test(rotate)`` must pass for correct RoPE rotations and raise
    ``AssertionError`` for each broken one. ``rotate(x, position)`` rotates a ``[..., dim]`` tensor at an
    integer position. ``broken`` selects (by description) which broken implementations to use."""
    name = "test_relative_property"
    if not callable(student_test):
        raise CheckFailed(f"{name} should be a function, but it is {_describe(student_test)}.")
    for description, rotate in _correct_rotations().items():
        label = f"a correct implementation ({description})"
        try:
            call_quietly(student_test, (rotate,))
        except CallTimeout:
            raise CheckFailed(f"{name} did not finish within {DEFAULT_TIME_LIMIT:g} s on {label}.") from None
        except NotImplementedError:
            raise CheckFailed(f"{name} is not implemented yet: replace the `raise NotImplementedError()` line with "
                              f"your test.") from None
        except AssertionError as exc:
            raise CheckFailed(
                f"{name} rejected {label}: your test must pass for every correct RoPE. Is the tolerance too tight "
                f"for float32 (use float64 inputs, or atol around 1e-4)? Do you compare scores at the *same offset* "
                f"n - m? (Your assertion said: {str(exc)[:200] or 'nothing'})") from None
        except Exception as exc:  # noqa: BLE001
            raise CheckFailed(f"{name} crashed on {label} with {type(exc).__name__}: {str(exc)[:200]}"
                              f"{_student_location(exc)}. It should call rotate(x, position) with a tensor x whose "
                              f"last dimension is even, and an int position.") from None
    implementations = _broken_rotations()
    if broken is not None:
        implementations = {k: v for k, v in implementations.items() if k in broken}
    for number, (description, rotate) in enumerate(implementations.items(), start=1):
        label = (f"hidden broken implementation {number} of {len(implementations)}" if hidden
                 else f"a broken implementation ({description})")
        try:
            call_quietly(student_test, (rotate,))
        except CallTimeout:
            raise CheckFailed(f"{name} did not finish within {DEFAULT_TIME_LIMIT:g} s on {label}.") from None
        except AssertionError:
            continue
        except Exception as exc:  # noqa: BLE001
            raise CheckFailed(f"{name} crashed on {label} with {type(exc).__name__}{_student_location(exc)}; it should "
                              f"fail with an AssertionError (use assert) when the property does not hold.") from None
        raise CheckFailed(
            f"{name} passed {label}, which does not have the relative property. A strong test compares "
            f"<rotate(q, m), rotate(k, n)> with <rotate(q, m + t), rotate(k, n + t)> for several m, n and shifts t "
            f"(including shifts that move both far from 0), on random q and k.")
    print(f"\N{CHECK MARK} {name}: passes the correct implementations and catches "
          f"{len(implementations)} {'hidden ' if hidden else ''}broken one{'s' if len(implementations) != 1 else ''}")


# ----------------------------------------------------------------------------------------------------------
# Part 4: MLA
# ----------------------------------------------------------------------------------------------------------


def _mla_latent_cases(shapes, seed):
    g = _generator(seed)
    cases = []
    for q_len, k_len, d_h, d_r, d_c in shapes:
        args = (_randn((q_len, d_h), g), _randn((q_len, d_r), g), _randn((k_len, d_c), g), _randn((k_len, d_r), g),
                _randn((d_h, d_c), g) / math.sqrt(d_c), 1.0 / math.sqrt(d_h + d_r))
        cases.append(Case(args, label=f"q_len={q_len}, k_len={k_len}, d_h={d_h}, d_R={d_r}, d_c={d_c}"))
    return cases


_MLA_SHAPES = ((2, 5, 4, 2, 6), (1, 3, 8, 4, 16))


def check_naive_latent_scores(student_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """``naive_latent_scores(q_nope, q_rope, latent, k_rope, w_uk, scale)`` ``[q_len, k_len]``."""
    check_function(student_fn, references.naive_latent_scores, _mla_latent_cases(shapes, seed),
                   name="naive_latent_scores", rtol=1e-4, atol=1e-5, mistakes=MLA_SCORE_MISTAKES, hidden=hidden,
                   hint="k^C = latent @ w_uk.T; scores = (q_nope @ k^C.T + q_rope @ k_rope.T) * scale.")


def check_absorbed_latent_scores(student_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """``absorbed_latent_scores(...)``: the same numbers, with W^UK absorbed into the query."""
    check_function(student_fn, references.absorbed_latent_scores, _mla_latent_cases(shapes, seed),
                   name="absorbed_latent_scores", rtol=1e-4, atol=1e-5, mistakes=MLA_SCORE_MISTAKES, hidden=hidden,
                   hint="q_latent = q_nope @ w_uk (one d_c-wide query); scores = (q_latent @ latent.T + "
                        "q_rope @ k_rope.T) * scale.")


def check_absorbed_equals_naive(naive_fn, absorbed_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """The student's two paths agree with each other, and the absorbed one never builds per-head keys."""
    for case in _mla_latent_cases(shapes, seed):
        label = case.label if not hidden else f"hidden inputs ({case.label})"
        naive = call_student(naive_fn, "naive_latent_scores", _clone(case.args), {}, label)
        absorbed = call_student(absorbed_fn, "absorbed_latent_scores", _clone(case.args), {}, label)
        difference = compare(absorbed, naive, rtol=1e-4, atol=1e-5, check_dtype=False,
                             what="absorbed_latent_scores (compared with your naive_latent_scores)",
                             show_values=not hidden)
        if difference is not None:
            raise CheckFailed(f"Your absorbed and naive scores disagree on {label}: {difference.text} Absorption is "
                              f"only a re-association: q^C . (W^UK c) = (W^UK^T q^C) . c.")
    print(f"\N{CHECK MARK} absorbed == naive on {len(shapes)} {'hidden ' if hidden else ''}input set(s)")


def check_decoupled_rope_scores(student_fn, *, shapes=((3, 5, 4, 4), (1, 6, 2, 8)), seed=0, hidden=False) -> None:
    """``decoupled_rope_scores(q_nope, q_rope, k_nope, k_rope, q_positions, k_positions, inv_freq, scale)``;
    ``shapes`` are (q_len, k_len, d_h, d_R); queries sit at the last positions of the keys."""
    g = _generator(seed)
    cases = []
    for q_len, k_len, d_h, d_r in shapes:
        k_positions = torch.arange(k_len)
        q_positions = torch.arange(k_len - q_len, k_len)
        args = (_randn((q_len, d_h), g), _randn((q_len, d_r), g), _randn((k_len, d_h), g), _randn((k_len, d_r), g),
                q_positions, k_positions, solutions.rope_inv_freq(d_r), 1.0 / math.sqrt(d_h + d_r))
        cases.append(Case(args, label=f"q_len={q_len}, k_len={k_len}, d_h={d_h}, d_R={d_r}"))
    check_function(student_fn, references.decoupled_rope_scores, cases, name="decoupled_rope_scores", rtol=1e-4,
                   atol=1e-5, mistakes=DECOUPLED_SCORE_MISTAKES, hidden=hidden,
                   hint="Rotate q_rope at q_positions and k_rope at k_positions (half-split), then "
                        "(q_nope @ k_nope.T + q_rope_rot @ k_rope_rot.T) * scale.")


def check_kv_cache_elements(student_fn, *, cases=None, hidden=False) -> None:
    """``kv_cache_elements_per_token(kind, *, num_heads, head_dim, num_kv_heads, kv_lora_rank, qk_rope_head_dim)``."""
    if cases is None:
        cases = [("mha", dict(num_heads=4, head_dim=8)), ("gqa", dict(num_heads=8, num_kv_heads=2, head_dim=16)),
                 ("mqa", dict(num_heads=8, head_dim=16)),
                 ("mla", dict(num_heads=8, kv_lora_rank=32, qk_rope_head_dim=8))]
    built = [Case((kind,), dict(kw), label=f"kind={kind!r}, " + ", ".join(f"{k}={v}" for k, v in kw.items()))
             for kind, kw in cases]
    check_function(student_fn, solutions.kv_cache_elements_per_token, built, name="kv_cache_elements_per_token",
                   mistakes=KV_CACHE_MISTAKES, hidden=hidden,
                   hint="MHA 2 n_h d_h, GQA 2 n_g d_h, MQA 2 d_h, MLA d_c + d^R_h (DeepSeek-V2 Table 1).")


def check_rope_absorbed_matrix(student_fn, *, cases=((4, 3, 5, 2, 7), (8, 6, 6, 0, 0)), seed=0, hidden=False) -> None:
    """``rope_absorbed_matrix(w_q, w_k, query_position, key_position, inv_freq)`` ``[d_x, d_y]``; ``cases`` are
    (d, d_x, d_y, m, n)."""
    g = _generator(seed)
    built = []
    for d, d_x, d_y, m, n in cases:
        args = (_randn((d, d_x), g), _randn((d, d_y), g), m, n, solutions.rope_inv_freq(d))
        built.append(Case(args, label=f"w_q [{d}, {d_x}], w_k [{d}, {d_y}], m={m}, n={n}"))
    mistakes = [Mistake("positions swapped", "The rotations are swapped: q is rotated by R(m) (query position) and k "
                                             "by R(n) (key position); M = W_q^T R(m)^T R(n) W_k = W_q^T R(n - m) W_k.",
                        candidate=lambda ref, case: ref(case.args[0], case.args[1], case.args[3], case.args[2],
                                                        case.args[4])),
                Mistake("no rotation", "You left out the rotations: with RoPE, M = W_q^T R(n - m) W_k, not W_q^T W_k.",
                        candidate=lambda ref, case: case.args[0].T @ case.args[1])]
    check_function(student_fn, lambda wq, wk, m, n, f: solutions.rope_absorbed_score_matrix(wq, wk, m, n, f), built,
                   name="rope_absorbed_matrix", rtol=1e-4, atol=1e-4, mistakes=mistakes, hidden=hidden,
                   hint="Rotate the columns of W_q by R(m) and of W_k by R(n): M = (R(m) W_q)^T (R(n) W_k).")


# ----------------------------------------------------------------------------------------------------------
# Part 5: length extrapolation
# ----------------------------------------------------------------------------------------------------------


def _scaling_method_cases(method: str, cases) -> list[Case]:
    """Cases given as ``(dim, base, factor, L[, seq_len][, {option: value}])``, built in the registry's argument
    order, ``(method, dim, base, factor, L[, seq_len])``, so that `solutions.rope_scaling` is the reference and
    the mistakes read the arguments by name (`_scaling_args`)."""
    built = []
    for spec in cases:
        spec = tuple(spec)
        options = dict(spec[-1]) if spec and isinstance(spec[-1], dict) else {}
        values = spec[:-1] if spec and isinstance(spec[-1], dict) else spec
        dim, base, factor, original = values[:4]
        seq_len = values[4] if len(values) > 4 else None
        label = (f"dim={dim}, base={base:g}, factor={factor:g}, L={original}"
                 + (f", seq_len={seq_len}" if seq_len is not None else "")
                 + "".join(f", {k}={v:g}" for k, v in options.items()))
        args = (method, dim, base, factor, original) + (() if seq_len is None else (seq_len,))
        built.append(Case(args, options, label=label))
    return built


def _check_scaling_method(student_fn, method: str, cases, *, name: str, mistakes, hint: str, hidden: bool) -> None:
    """One method's own function, ``student_fn(dim, base, factor, original_max_position_embeddings[, seq_len],
    **options) -> (inv_freq, attention_factor)`` (the signature of the registry's entries), against
    ``solutions.rope_scaling(method, ...)``."""
    if not callable(student_fn):
        raise CheckFailed(f"{name} should be a function, but it is {_describe(student_fn)}.")

    def without_the_method(method, *args, **kwargs):  # a method's own function does not take its name
        return student_fn(*args, **kwargs)

    check_function(without_the_method, solutions.rope_scaling, _scaling_method_cases(method, cases), name=name,
                   rtol=1e-5, atol=1e-7, mistakes=mistakes, names=("inv_freq", "attention_factor"), hidden=hidden,
                   hint=hint)


def check_linear_scaling(student_fn, *, cases=((16, 10000.0, 4.0, 64), (8, 500.0, 2.5, 128)), hidden=False) -> None:
    """``linear_scaling(dim, base, factor, original_max_position_embeddings)``: Position Interpolation."""
    _check_scaling_method(student_fn, "linear", cases, name="linear_scaling", mistakes=ROPE_SCALING_MISTAKES,
                          hidden=hidden, hint="PI divides every frequency by the factor, theta_i / s, and has no "
                                              "attention factor (1.0) (Chen et al. 2023, eq. 4).")


def check_ntk_aware_scaling(student_fn, *, cases=((16, 10000.0, 4.0, 64), (64, 10000.0, 8.0, 4096)),
                            hidden=False) -> None:
    """``ntk_aware_scaling(dim, base, factor, original_max_position_embeddings)``."""
    _check_scaling_method(student_fn, "ntk", cases, name="ntk_aware_scaling", mistakes=NTK_AWARE_MISTAKES,
                          hidden=hidden, hint="Plain RoPE frequencies of the base base * s^(d / (d - 2)), and "
                                              "attention factor 1.0.")


def check_ntk_by_parts_scaling(student_fn, *, cases=((64, 10000.0, 8.0, 4096), (32, 10000.0, 4.0, 256)),
                               hidden=False) -> None:
    """``ntk_by_parts_scaling(dim, base, factor, original_max_position_embeddings, beta_fast=32, beta_slow=1)``
    with the released ramp (`solutions.rope_scaling.ntk_by_parts_ramp`'s default)."""
    _check_scaling_method(student_fn, "ntk_by_parts", cases, name="ntk_by_parts_scaling",
                          mistakes=BY_PARTS_MISTAKES, hidden=hidden,
                          hint="theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i, with gamma from your "
                               "ntk_by_parts_ramp, and attention factor 1.0 (YaRN, Definition 2).")


def check_dynamic_ntk_scaling(student_fn, *, cases=((64, 10000.0, 4.0, 4096, 8192), (16, 10000.0, 2.0, 64, 48)),
                              hidden=False) -> None:
    """``dynamic_ntk_scaling(dim, base, factor, original_max_position_embeddings, seq_len)``, the released
    length rule."""
    _check_scaling_method(student_fn, "dynamic", cases, name="dynamic_ntk_scaling", mistakes=DYNAMIC_NTK_MISTAKES,
                          hidden=hidden, hint="seq_len <= L: plain RoPE. Beyond: NTK-aware scaling with the factor "
                                              "s * seq_len / L - (s - 1). Attention factor 1.0.")


def check_yarn_scaling(student_fn, *, cases=((64, 10000.0, 8.0, 4096),), hidden=False) -> None:
    """``yarn_scaling(dim, base, factor, original_max_position_embeddings, beta_fast=32, beta_slow=1)``."""
    _check_scaling_method(student_fn, "yarn", cases, name="yarn_scaling",
                          mistakes=ROPE_SCALING_MISTAKES + BY_PARTS_MISTAKES, hidden=hidden,
                          hint="The NTK-by-parts frequencies, and the attention factor yarn_attention_factor(s) = "
                               "0.1 ln(s) + 1 (YaRN eq. 22).")


def check_yarn_attention_factor(student_fn, *, cases=((8.0,), (2.0,), (1.0,)), hidden=False) -> None:
    """``yarn_attention_factor(factor, mscale=1.0)``, a float; ``cases`` are (factor[, mscale])."""
    built = [Case(tuple(c), label=f"factor={c[0]:g}" + (f", mscale={c[1]:g}" if len(c) > 1 else "")) for c in cases]
    check_function(student_fn, solutions.yarn_attention_factor, built, name="yarn_attention_factor", rtol=1e-6,
                   atol=1e-9, mistakes=YARN_FACTOR_MISTAKES, hidden=hidden,
                   hint="sqrt(1/t) = 0.1 * mscale * ln(s) + 1 for s > 1, and 1 for s <= 1 (YaRN eq. 22).")


def check_ntk_alibi_slopes(student_fn, *, cases=((8, 4.0), (4, 2.0)), hidden=False) -> None:
    """``ntk_alibi_slopes(num_heads, factor)``: float32 ``[num_heads]``; ``cases`` are (num_heads, factor)."""
    built = [Case((n, float(factor)), label=f"num_heads={n}, factor={factor:g}") for n, factor in cases]
    check_function(student_fn, solutions.ntk_alibi_slopes, built, name="ntk_alibi_slopes", rtol=1e-5, atol=1e-9,
                   mistakes=NTK_ALIBI_MISTAKES, hidden=hidden,
                   hint="m'_h = m_h / factor^((h - 1) / (H - 1)) for h = 1 .. H, with m_h ALiBi's slopes; one head "
                        "keeps its slope.")


def check_rope_scaling(student_fn, method: str, *, cases=((16, 10000.0, 4.0, 64),), hidden=False) -> None:
    """``student_fn(method, dim, base, factor, original_max_position_embeddings)`` returning
    ``(inv_freq, attention_factor)``, against `solutions.rope_scaling`."""
    built = [Case((method,) + tuple(c), label=f"method={method!r}, dim={c[0]}, base={c[1]:g}, factor={c[2]:g}, "
                                              f"L={c[3]}") for c in cases]
    check_function(student_fn, solutions.rope_scaling, built, name=f"rope_scaling({method!r})", rtol=1e-5, atol=1e-7,
                   mistakes=ROPE_SCALING_MISTAKES, names=("inv_freq", "attention_factor"), hidden=hidden)


def check_yarn_cos_sin(student_fn, *, cases=((16, 10000.0, 8.0, 64, (0, 5, 100)),), hidden=False) -> None:
    """``yarn_cos_sin(dim, base, factor, original_max_position_embeddings, positions) -> (cos, sin)``."""
    built = [Case(tuple(c[:4]) + (torch.tensor(c[4]),), label=f"dim={c[0]}, factor={c[2]:g}, L={c[3]}") for c in cases]
    check_function(student_fn, references.yarn_cos_sin, built, name="yarn_cos_sin", rtol=1e-5, atol=1e-5,
                   mistakes=YARN_COS_SIN_MISTAKES, names=("cos", "sin"), hidden=hidden)


def check_yarn_logits(student_fn, *, cases=((3, 4, 16, 10000.0, 8.0, 64), (2, 150, 16, 10000.0, 4.0, 64)), seed=0,
                      hidden=False) -> None:
    """``yarn_logits(q, k, q_positions, k_positions, base, factor, original_max_position_embeddings)``; ``cases``
    are (q_len, k_len, dim, base, factor, L), with the queries at the last k_len positions."""
    g = _generator(seed)
    for q_len, k_len, dim, base, factor, original in cases:
        args = (_randn((q_len, dim), g), _randn((k_len, dim), g), torch.arange(k_len - q_len, k_len),
                torch.arange(k_len), base, factor, original)
        case = Case(args, label=f"q [{q_len}, {dim}], k [{k_len}, {dim}], positions up to {k_len - 1}, "
                                f"factor={factor:g}, L={original}")
        # float32 angles p * theta are off by about p * 6e-8 rad, and a logit sums dim / 2 such pairs: the tolerance
        # grows with the last position, so that angles in float32 (as the reference) or in float64 both pass.
        atol = max(1e-5, 1e-7 * (k_len - 1) * math.sqrt(dim))
        check_function(student_fn, references.yarn_logits, [case], name="yarn_logits", rtol=1e-4, atol=atol,
                       mistakes=YARN_LOGITS_MISTAKES, hidden=hidden, quiet=True,
                       hint="Rotate q and k (half-split) with yarn_scaling's frequencies, cos and sin both "
                            "multiplied by its attention factor; then q_rot @ k_rot.T.")
    print(f"\N{CHECK MARK} yarn_logits: {len(cases)} {'hidden ' if hidden else ''}"
          f"case{'s match' if len(cases) != 1 else ' matches'} the reference")


# ----------------------------------------------------------------------------------------------------------
# The evaluation lab (Part 6): passkey prompts and perplexity by length
# ----------------------------------------------------------------------------------------------------------
# The student's evaluation functions call a model; the checks pass them small `solutions.lab.TinyDecoder`s
# with random weights (scaled up so that their predictions depend visibly on the context), and a learned-
# position model that, like any learned table, cannot run past its training length.

FILLER = _lab_passkey.FILLER
STATEMENT = _lab_passkey.STATEMENT
QUESTION = _lab_passkey.QUESTION
KEY_DIGITS = _lab_passkey.KEY_DIGITS


def lab_model(encoding: str = "rope", train_length: int = 16, seed: int = 0) -> torch.nn.Module:
    """A tiny `TinyDecoder` (1 layer, d = 16) whose weights are drawn from ``seed`` with unit-scale
    embeddings, so that its next-byte predictions change with every byte of context it reads."""
    config = _LabModelConfig(encoding=encoding, train_length=train_length, d_model=16, n_layers=1, n_heads=2,
                             d_ff=32, t5_num_buckets=8)
    model = _TinyDecoder(config)
    g = _generator(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=g) / math.sqrt(parameter.shape[-1]))
        model.embed.weight.mul_(1.5)  # larger inputs, and (tied) sharper predictions
    return model.eval()


def _report_pass(name: str, count: int, hidden: bool) -> None:
    kind = "hidden case" if hidden else "case"
    print(f"\N{CHECK MARK} {name}: {count} {kind}{'s match' if count != 1 else ' matches'} the reference")


def _byte_windows(count: int, size: int, seed: int) -> torch.Tensor:
    """``[count, size]`` int64 random bytes drawn from a small alphabet (so that bigrams repeat)."""
    alphabet = torch.tensor(list(b"abcdefgh ()=:\n"), dtype=torch.long)
    return alphabet[torch.randint(len(alphabet), (count, size), generator=_generator(seed))]


def _passkey_layout(sequence: bytes, length: int, depth: float, key: str):
    """What a student's sequence gets wrong, in words, or None if nothing is recognisably wrong."""
    statement = STATEMENT.format(key=key)
    filler_length = length + 1 - len(statement) - len(QUESTION) - len(key)
    if len(sequence) == length:
        return (f"your sequence has {length} bytes; it needs length + 1 = {length + 1}. The model *reads* the "
                f"first `length` bytes and is scored on its predictions of the last {len(key)}, which are the "
                f"key after the question: the answer is part of the sequence.")
    if len(sequence) != length + 1:
        return f"your sequence has {len(sequence)} bytes; it needs length + 1 = {length + 1}."
    text = sequence.decode("ascii", errors="replace")
    if not text.endswith(QUESTION + key):
        return (f"your sequence should end with the question and its answer, {QUESTION + key!r}: the model "
                f"reads up to {QUESTION!r} and is scored on the key's digits after it.")
    if text.count(statement) != 1:
        return (f"the key statement {statement!r} should appear exactly once (it appears "
                f"{text.count(statement)} times).")
    start, wanted = text.index(statement), round(depth * filler_length)
    if start != wanted:
        near = round(depth * (length + 1 - len(statement)))
        why = (" It looks as if depth was taken as a fraction of the whole sequence; it is a fraction of "
               "the filler alone." if start == near else "")
        return (f"the key statement starts at byte {start}, but at depth {depth:g} it belongs at byte "
                f"round(depth * filler_length) = {wanted}, with filler_length = length + 1 - "
                f"len(statement) - len(question) - len(key) = {filler_length}.{why}")
    return None


def check_passkey_sequence(student_fn, *, cases=((64, 0.5, "48213", 0), (48, 0.0, "10000", 7),
                                                   (48, 1.0, "99999", 0)), hidden=False) -> None:
    """``passkey_sequence(length, depth, key, filler_offset) -> (sequence, key_start)``, against
    `solutions.lab.passkey.passkey_sequence`; a wrong layout is explained in words."""
    built = [Case((length, depth, key, offset), label=f"length={length}, depth={depth:g}, filler_offset={offset}")
             for length, depth, key, offset in cases]
    try:
        check_function(student_fn, _lab_passkey.passkey_sequence, built, name="passkey_sequence",
                       names=("sequence", "key_start"), hidden=hidden, quiet=True)
    except CheckFailed as failure:
        # Say what is wrong with the layout rather than "the bytes differ" where that is recognisable.
        for number, case in enumerate(built, start=1):
            try:
                actual = call_quietly(student_fn, case.args)
            except BaseException:  # noqa: BLE001 (the failure above already says it)
                break
            expected = _lab_passkey.passkey_sequence(*case.args)
            if not isinstance(actual, tuple) or len(actual) != 2 or not isinstance(actual[0], (bytes, bytearray)):
                break
            if bytes(actual[0]) == expected[0] and actual[1] == expected[1]:
                continue
            label = f"hidden case {number} of {len(built)}" if hidden else f"case {number}"
            length, depth, key, offset = case.args
            layout = _passkey_layout(bytes(actual[0]), length, depth, key)
            if layout is not None:
                raise CheckFailed(f"passkey_sequence is wrong on {label} ({case.label}):\n  {layout}") from None
            if bytes(actual[0]) != expected[0]:
                raise CheckFailed(
                    f"passkey_sequence is wrong on {label} ({case.label}): the statement and the question are "
                    f"in the right places but the filler differs. It is FILLER repeated, starting at its "
                    f"character filler_offset % len(FILLER) = {offset % len(FILLER)}, and cut to the bytes "
                    f"that the statement, the question and the key leave.") from None
            raise CheckFailed(
                f"passkey_sequence is wrong on {label} ({case.label}): the sequence is right but key_start "
                f"is {actual[1]!r}. It is the index in the sequence of the key's first digit in the statement "
                f"(not of the statement's first byte, and not of the answer at the end).") from None
        raise
    _report_pass("passkey_sequence", len(built), hidden)


def _digits_shifted(reference, case):
    logits, targets, digits = case.args
    return logits[:, -digits - 1:-1].argmax(-1) == targets[:, -digits:]


def _digits_any_position(reference, case):
    logits, targets, digits = case.args
    return reference(logits, targets, digits).all(-1)


PASSKEY_DIGITS_MISTAKES = [
    Mistake("shifted", "the prediction of target t is the model's output at position t (the output at "
                       "position t predicts the *next* byte, which is targets[t]); you compared the outputs "
                       "one position too early.", candidate=_digits_shifted),
    Mistake("reduced", "return one bool per digit, [batch, digits]: whether *all* digits are right is the "
                       "caller's decision (the lab reports both).", candidate=_digits_any_position),
]


def check_passkey_digits_correct(student_fn, *, cases=((3, 12, 5), (1, 6, 2), (4, 9, 5)), seed=0,
                                 hidden=False) -> None:
    """``passkey_digits_correct(logits, targets, digits) -> [batch, digits]`` bool."""
    g = _generator(seed)
    built = []
    for batch, length, digits in cases:
        targets = torch.randint(48, 58, (batch, length), generator=g)
        logits = torch.randn(batch, length, 256, generator=g)
        # Make the model right on about half the digits, so that both answers occur.
        right = torch.rand(batch, length, generator=g) < 0.6
        logits[right, targets[right]] += 10.0
        built.append(Case((logits, targets, digits), label=f"logits [{batch}, {length}, 256], digits={digits}"))
    check_function(student_fn, _lab_evaluate.passkey_digits_correct, built, name="passkey_digits_correct",
                   mistakes=PASSKEY_DIGITS_MISTAKES, hidden=hidden,
                   hint="Digit i is right when logits[:, -digits + i].argmax() equals targets[:, -digits + i].")


def _nll_all_positions(reference, case):
    model, windows, length, scored = case.args
    return reference(model, windows, length, length)


def _nll_first_bytes(reference, case):
    model, windows, length, scored = case.args
    return reference(model, windows[:, : length + 1], length, scored)


def _nll_as_perplexity(reference, case):
    return math.exp(reference(*case.args))


def _nll_in_bits(reference, case):
    return reference(*case.args) / math.log(2)


NLL_MISTAKES = [
    Mistake("all positions", "you scored every prediction of the window. Score only the last `scored` bytes: "
                             "then every length scores the same bytes, and a longer context can only help "
                             "if the model uses it.", candidate=_nll_all_positions),
    Mistake("first bytes", "the model should read the *last* `length` bytes of each window "
                           "(windows[:, -(length + 1):-1]), not the first: every length then ends at the "
                           "same scored bytes.", candidate=_nll_first_bytes),
    Mistake("perplexity", "you returned the perplexity, exp(NLL); return the mean negative log-likelihood "
                          "in nats per byte.", candidate=_nll_as_perplexity),
    Mistake("bits", "you returned the NLL in bits; use the natural logarithm (nats per byte), as "
                    "torch.nn.functional.cross_entropy does.", candidate=_nll_in_bits),
]


def check_last_window_nll(student_fn, *, cases=((32, 16, 4), (16, 16, 3), (40, 8, 2)), seed=0,
                          hidden=False) -> None:
    """``last_window_nll(model, windows, length, scored) -> float``: NLL of the last ``scored`` bytes."""
    built = []
    for number, (length, scored, count) in enumerate(cases):
        windows = _byte_windows(count, 48 + 1, seed + number)
        model = lab_model("rope", seed=seed + number)
        built.append(Case((model, windows, length, scored), label=f"windows [{count}, 49], length={length}, "
                                                                  f"scored={scored}"))
    check_function(student_fn, _lab_evaluate.last_window_nll, built, name="last_window_nll", rtol=1e-4,
                   atol=1e-5, mistakes=NLL_MISTAKES, hidden=hidden,
                   hint="Read inputs = windows[:, -(length + 1):-1]; score the model's last `scored` outputs "
                        "against windows[:, -scored:], with the mean cross-entropy over every scored byte.")


def _perplexities(model, windows, train_length, lengths):
    return _lab_evaluate.perplexity_by_length(model, windows, train_length, lengths)[0]


def _compare_perplexities(actual, expected, *, hidden: bool):
    if not isinstance(actual, dict):
        return f"return a dict {{length: perplexity or None}}, not {_describe(actual)}."
    if sorted(actual, key=str) != sorted(expected, key=str):
        return f"the dict's keys are {sorted(actual, key=str)}; they should be the lengths, {sorted(expected)}."
    for length in sorted(expected):
        mine, ref = actual[length], expected[length]
        if ref is None and mine is not None:
            return (f"at length {length} the model cannot run (a learned table raises ValueError past its rows), "
                    f"so the value is None; you returned {mine!r}.")
        if ref is not None and mine is None:
            return f"at length {length} the model runs; you returned None."
        if ref is not None:
            difference = compare(mine, ref, rtol=1e-4, atol=1e-5, what=f"the perplexity at length {length}",
                                 show_values=not hidden)
            if difference is not None:
                return difference.text
    return None


def check_perplexity_by_length(student_fn, *, cases=(("rope", (16, 32, 48)), ("learned", (16, 32, 48))), seed=0,
                               hidden=False) -> None:
    """``perplexity_by_length(model, windows, train_length, lengths) -> {length: perplexity or None}``.

    The learned-position model raises ``ValueError`` past its 16 rows: the student records None there (and
    at every longer length) instead of crashing.
    """
    for number, (encoding, lengths) in enumerate(cases, start=1):
        label = (f"hidden case {number} of {len(cases)}" if hidden else f"case {number}") + \
            f" ({encoding} model trained on 16 bytes, lengths {list(lengths)})"
        windows = _byte_windows(3, max(lengths) + 1, seed + number)
        model = lab_model(encoding, seed=seed + number)
        args = (model, windows, 16, list(lengths))
        expected = _perplexities(*args)
        try:
            actual = call_student(student_fn, "perplexity_by_length", _clone(args), {}, label)
        except CheckFailed as failure:
            if "raised ValueError" in str(failure) and None in expected.values():
                raise CheckFailed(f"{failure}\n  The {encoding} model cannot run past its table: catch the "
                                  f"ValueError and record None for that length and every longer one.") from None
            raise
        problem = _compare_perplexities(actual, expected, hidden=hidden)
        if problem is None:
            continue
        as_nll = {length: None if value is None else math.log(value) for length, value in expected.items()}
        if _compare_perplexities(actual, as_nll, hidden=True) is None:
            problem = "you returned the mean NLL; the perplexity is exp(NLL)."
        raise CheckFailed(f"perplexity_by_length is wrong on {label}:\n  {problem}")
    _report_pass("perplexity_by_length", len(cases), hidden)
