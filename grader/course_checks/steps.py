"""The steps a check runs, the same code on both sides: the grader computes what a step compares with from the
course's reference functions as it goes; a student kit reads it from the data that the grader recorded.

A check (``check_apply_rope(apply_rope, interleaved=True)``) is a short sequence of steps:

* `function_check`: call the student's function on each case, compare its output with the expected one, and
  when they differ, name the mistake whose output the student's matches (the `Oracle` answers "what is
  expected on case i" and "what does mistake j give on case i");
* `permutation_check`, `property_test_check`, `agreement_check`, `perplexity_check`: the checks whose
  question is not "does the output equal the reference's" (a yes/no about a function, a test the student
  wrote, two student functions that must agree, a dict with ``None`` where a model cannot run);
* `require_module`, `report_pass`: a check that needs a package, the line a passing check prints.

While `recording` is active (``python -m grader generate`` building a kit), a step runs nothing of the
student's: it evaluates everything its oracle knows (every expected output, every mistake's output on every
case) and appends it to the recording as data. `replay` runs a recorded check in the kit with a `StoredOracle`.
The data holds tensors, numbers, strings and the stand-ins of `course_checks.subjects`, never code, and is
stored in the course's data-only format (`course_checks.wire`, the message format of the grading harness).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
from typing import Any, Callable, Sequence

from . import comparing, subjects
from .comparing import (CallTimeout, Case, CheckFailed, _agrees, _changed_argument, _clone,
                        _student_location, call_quietly, call_student, case_label, compare, describe)

# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------

_RECORDING: list | None = None


class StudentSlot:
    """Stands for the student's n-th function while a check is recorded: nothing calls it."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, *args, **kwargs):
        raise RuntimeError("a check called the student's function while it was being recorded")


@contextlib.contextmanager
def recording():
    """Record the steps of the checks run inside, instead of running them; yields the list of steps."""
    global _RECORDING
    previous, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = previous


def _slot(fn) -> int:
    if not isinstance(fn, StudentSlot):
        raise TypeError("only the student's functions (StudentSlot) can be recorded")
    return fn.index


_STAND_IN_TAG = "course_checks.stand_in"


def to_data(obj):
    """``obj`` with each stand-in replaced by ``(tag, kind, state)``; anything else callable is refused."""
    if isinstance(obj, (list, tuple)):
        items = [to_data(o) for o in obj]
        return items if type(obj) is list else tuple(items)
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    kind = getattr(obj, "kind", None)
    if kind in subjects.STAND_INS and isinstance(obj, subjects.STAND_INS[kind]):
        return (_STAND_IN_TAG, kind, to_data(obj.to_state()))
    if callable(obj) and not isinstance(obj, type):
        raise TypeError(f"a visible check passes {obj!r} to the student's code: a kit can hold only data and the "
                        f"stand-ins of course_checks.subjects")
    return obj


def from_data(obj):
    """The inverse of `to_data`."""
    if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == _STAND_IN_TAG:
        return subjects.STAND_INS[obj[1]].from_state(from_data(obj[2]))
    if isinstance(obj, (list, tuple)):
        items = [from_data(o) for o in obj]
        return items if type(obj) is list else tuple(items)
    if isinstance(obj, dict):
        return {k: from_data(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------------
# Small steps
# ----------------------------------------------------------------------------------------------------------


def report_pass(name: str, count: int, hidden: bool, what: str = "case") -> None:
    """The line a passing check prints: ``✓ rope_inv_freq: 3 cases match the reference``."""
    if _RECORDING is not None:
        _RECORDING.append({"kind": "report_pass", "name": name, "count": count, "hidden": hidden, "what": what})
        return
    kind = f"hidden {what}" if hidden else what
    print(f"\N{CHECK MARK} {name}: {count} {kind}{'s match' if count != 1 else ' matches'} the reference")


def require_module(module: str, message: str) -> None:
    """Fail with ``message`` where ``module`` is not installed (Triton has no wheel for macOS or Windows), and
    say why where it is installed but does not import (Triton's CPU interpreter needs numpy)."""
    if _RECORDING is not None:
        _RECORDING.append({"kind": "require_module", "module": module, "message": message})
        return
    if importlib.util.find_spec(module) is None:
        raise CheckFailed(message)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 (said to the student)
        raise CheckFailed(f"{module} is installed but cannot be imported here ({type(exc).__name__}: {exc}).") from None


# ----------------------------------------------------------------------------------------------------------
# Comparing a function with the expected outputs
# ----------------------------------------------------------------------------------------------------------

NOT_APPLICABLE = object()
"""A mistake's output on a case where the mistake cannot be formed, or gives the correct output."""


class Oracle:
    """What a `function_check` compares with: per case its expected output and comparison mask, and per known
    mistake its name, its message on a case, its output on a case (or `NOT_APPLICABLE`), or instead a
    predicate on the student's output (a name of `course_checks.subjects.PREDICATES`)."""

    def expected(self, i: int):
        raise NotImplementedError

    def mask(self, i: int):
        return None

    def mistake_names(self) -> list[str]:
        return []

    def mistake_text(self, i: int, j: int) -> str:
        raise NotImplementedError

    def mistake_predicate(self, j: int) -> str | None:
        return None

    def mistake_output(self, i: int, j: int):
        return NOT_APPLICABLE


class StoredOracle(Oracle):
    """An `Oracle` read from a recorded step."""

    def __init__(self, step: dict):
        self.step = step

    def expected(self, i):
        return self.step["cases"][i]["expected"]

    def mask(self, i):
        return self.step["cases"][i]["mask"]

    def mistake_names(self):
        return [m["name"] for m in self.step["mistakes"]]

    def mistake_text(self, i, j):
        return self.step["mistakes"][j]["texts"][i]

    def mistake_predicate(self, j):
        return self.step["mistakes"][j]["predicate"]

    def mistake_output(self, i, j):
        applies, output = self.step["cases"][i]["mistakes"][j]
        return output if applies else NOT_APPLICABLE


def _record_function(student_fn, oracle: Oracle, cases: Sequence[Case], options: dict) -> dict:
    names = oracle.mistake_names()
    mistakes = [{"name": name, "predicate": oracle.mistake_predicate(j),
                 "texts": [oracle.mistake_text(i, j) for i in range(len(cases))]} for j, name in enumerate(names)]
    recorded_cases = []
    for i, case in enumerate(cases):
        outputs = []
        for j in range(len(names)):
            output = NOT_APPLICABLE if oracle.mistake_predicate(j) else oracle.mistake_output(i, j)
            outputs.append([False, None] if output is NOT_APPLICABLE else [True, output])
        recorded_cases.append({"args": to_data(case.args), "kwargs": to_data(case.kwargs), "label": case.label,
                               "note": case.note, "expected": oracle.expected(i), "mask": oracle.mask(i),
                               "mistakes": outputs})
    return {"kind": "function", "student": _slot(student_fn), "options": options, "cases": recorded_cases,
            "mistakes": mistakes}


def diagnose(actual, expected, i: int, case: Case, oracle: Oracle, *, rtol: float, atol: float, mask=None):
    """The index of the first known mistake that explains ``actual`` on case ``i`` (its output matches the
    student's and differs from the correct one), or None."""
    for j in range(len(oracle.mistake_names())):
        predicate = oracle.mistake_predicate(j)
        if predicate is not None:
            try:
                if subjects.PREDICATES[predicate](actual, expected, case):
                    return j
            except Exception:  # noqa: BLE001 (a property that cannot be evaluated does not hold)
                pass
            continue
        wrong = oracle.mistake_output(i, j)
        if wrong is not NOT_APPLICABLE and _agrees(actual, wrong, rtol, atol, mask):
            return j
    return None


def function_check(student_fn: Callable, oracle: Oracle, cases: Sequence[Case], *, name: str, rtol: float = 1e-5,
                   atol: float = 1e-6, hidden: bool = False, time_limit: float | None = None,
                   check_dtype: bool = True, names: Sequence[str] | None = None, hint: str = "",
                   quiet: bool = False, skip_args: int = 0, explain: str | None = None,
                   explain_options: dict | None = None) -> None:
    """Compare ``student_fn`` with the oracle's expected outputs on every case; raise `CheckFailed` at the first
    failure, naming the mistake that explains it where one does (see `grader.checks.engine.check_function`).

    The first ``skip_args`` arguments of each case are the reference's alone (the method name of a registry),
    not passed to the student. ``explain`` names a function of `course_checks.subjects.EXPLAINERS` that says
    in words what is wrong with an output of the right form."""
    options = dict(name=name, rtol=rtol, atol=atol, hidden=hidden, time_limit=time_limit, check_dtype=check_dtype,
                   names=None if names is None else list(names), hint=hint, quiet=quiet, skip_args=skip_args,
                   explain=explain, explain_options=explain_options or {})
    if _RECORDING is not None:
        _RECORDING.append(_record_function(student_fn, oracle, cases, options))
        return
    if not callable(student_fn):
        raise CheckFailed(f"{name} should be a function, but it is {describe(student_fn)}.")
    for i, case in enumerate(cases):
        label = case_label(i + 1, len(cases), case.label, hidden=hidden)
        mine = Case(case.args[skip_args:], case.kwargs)
        args, kwargs = _clone(mine.args), _clone(mine.kwargs)
        actual = call_student(student_fn, name, args, kwargs, label, time_limit, hidden=hidden)
        changed = _changed_argument(mine, args, kwargs)
        if changed is not None:
            raise CheckFailed(f"{name} modified its input ({changed}) in place on {label}. Compute a new tensor "
                              f"instead (e.g. `x * c` rather than `x *= c`, or clone first): callers reuse their "
                              f"inputs (a KV cache, the next layer).")
        expected, mask = oracle.expected(i), oracle.mask(i)
        difference = compare(actual, expected, rtol=rtol, atol=atol, check_dtype=check_dtype, mask=mask,
                             names=names, show_values=not hidden)
        if difference is None:
            continue
        heading = f"{name} is wrong on {label}" + (f" [{case.note}]" if case.note and not hidden else "") + ":"
        if explain is not None:
            words = subjects.EXPLAINERS[explain](actual, expected, case, **(explain_options or {}))
            if words is not None:
                raise CheckFailed(f"{heading}\n  {words}")
        lines = [heading]
        j = None
        if difference.kind in ("value", "shape", "inf", "length"):
            j = diagnose(actual, expected, i, case, oracle, rtol=rtol, atol=atol, mask=mask)
        if j is not None:
            lines.append("  " + oracle.mistake_text(i, j))
            lines.append("  (" + difference.text + ")")
        else:
            lines.append("  " + difference.text)
            if hint and difference.kind in ("value", "shape", "inf"):
                lines.append("  " + hint)
        raise CheckFailed("\n".join(lines), mistake=None if j is None else oracle.mistake_names()[j])
    if not quiet:
        report_pass(name, len(cases), hidden)


# ----------------------------------------------------------------------------------------------------------
# Checks of another kind
# ----------------------------------------------------------------------------------------------------------


def permutation_check(student_fn: Callable, cases: Sequence[tuple[Case, bool]], *, hidden: bool = False) -> None:
    """``is_permutation_equivariant(f, x, perm) -> bool`` on cases ``(Case((f, x, perm)), whether f is
    equivariant)``. Recorded, each ``f`` becomes a `subjects.Table` of its outputs on ``x`` and ``x[perm]``."""
    if _RECORDING is not None:
        recorded = []
        for case, expected in cases:
            f, x, perm = case.args
            table = subjects.Table.of(f, [x, x[perm]], description="the check's function f")
            recorded.append({"args": to_data((table, x, perm)), "label": case.label, "note": case.note,
                             "expected": bool(expected)})
        _RECORDING.append({"kind": "permutation", "student": _slot(student_fn), "hidden": hidden, "cases": recorded})
        return
    for number, (case, expected) in enumerate(cases, start=1):
        f, x, perm = case.args
        label = f"hidden case {number} of {len(cases)} ({case.label})" if hidden else case.label
        actual = call_student(student_fn, "is_permutation_equivariant", (f, x.clone(), perm.clone()), {}, label,
                              hidden=hidden)
        difference = compare(actual, expected, what="the answer")
        if difference is None:
            continue
        if difference.kind == "type":
            raise CheckFailed(f"is_permutation_equivariant on {label}: {difference.text}")
        if expected:
            raise CheckFailed(
                f"is_permutation_equivariant returned False for {label}, which is permutation-equivariant "
                f"({case.note}). Compare f(x[perm]) with f(x)[perm] (permute the rows of the output too), with "
                f"torch.allclose and a small tolerance (floating-point sums in another order differ in the last "
                f"bits).")
        raise CheckFailed(
            f"is_permutation_equivariant returned True for {label}, which is NOT permutation-equivariant "
            f"({case.note}). Make sure you call f on the permuted input, f(x[perm]), and compare it with the "
            f"permuted output f(x)[perm].")
    print(f"\N{CHECK MARK} is_permutation_equivariant: {len(cases)} {'hidden ' if hidden else ''}cases answered "
          f"correctly")


def property_test_check(student_test: Callable, pool: Sequence[tuple[bool, str, Callable]], broken_count: int, *,
                        hidden: bool = False) -> None:
    """Grade a test the student wrote: ``student_test(rotate)`` must pass for each correct rotation of ``pool``
    (``(True, description, rotate)``) and raise ``AssertionError`` for each broken one (``(False, ...)``).

    In a hidden run the student's assertion and exception texts are left out of the messages, as in
    `call_student`: the rotations it is run on are the grader's."""
    if _RECORDING is not None:
        _RECORDING.append({"kind": "property_test", "student": _slot(student_test), "hidden": hidden,
                           "broken_count": broken_count, "pool": [[c, d, to_data(r)] for c, d, r in pool]})
        return
    name = "test_relative_property"
    if not callable(student_test):
        raise CheckFailed(f"{name} should be a function, but it is {describe(student_test)}.")
    limit = comparing.DEFAULT_TIME_LIMIT  # read at every call: a test may lower it
    broken = [d for c, d, _ in pool if not c]
    for correct, description, rotate in pool:
        if correct:
            label = f"a correct implementation ({description})"
        else:
            label = (f"hidden broken implementation {broken.index(description) + 1} of {broken_count}" if hidden
                     else f"a broken implementation ({description})")
        try:
            call_quietly(student_test, (rotate,), time_limit=limit)
        except CallTimeout:
            raise CheckFailed(f"{name} did not finish within {limit:g} s on {label}.") from None
        except NotImplementedError:
            raise CheckFailed(f"{name} is not implemented yet: replace the `raise NotImplementedError()` line with "
                              f"your test.") from None
        except AssertionError as exc:
            if not correct:
                continue
            said = "" if hidden else f" (Your assertion said: {str(exc)[:200] or 'nothing'})"
            raise CheckFailed(
                f"{name} rejected {label}: your test must pass for every correct rotation with the relative property. Is the tolerance too tight "
                f"for float32 (use float64 inputs, or atol around 1e-4)? Do you compare scores at the *same offset* "
                f"n - m?{said}") from None
        except Exception as exc:  # noqa: BLE001
            if correct:
                said = "" if hidden else f": {str(exc)[:200]}"
                raise CheckFailed(f"{name} crashed on {label} with {type(exc).__name__}{said}"
                                  f"{_student_location(exc)}. It should call rotate(x, position) with a tensor x whose "
                                  f"last dimension is even, and an int position.") from None
            raise CheckFailed(f"{name} crashed on {label} with {type(exc).__name__}{_student_location(exc)}; it should "
                              f"fail with an AssertionError (use assert) when the property does not hold.") from None
        if not correct:
            raise CheckFailed(
                f"{name} passed {label}, which does not have the relative property. A strong test compares "
                f"<rotate(q, m), rotate(k, n)> with <rotate(q, m + t), rotate(k, n + t)> for several m, n and "
                f"shifts t (including shifts that move both far from 0), on random q and k.")
    print(f"\N{CHECK MARK} {name}: passes the correct implementations and catches "
          f"{broken_count} {'hidden ' if hidden else ''}broken one{'s' if broken_count != 1 else ''}")


def agreement_check(naive_fn: Callable, absorbed_fn: Callable, cases: Sequence[Case], *, hidden: bool = False) -> None:
    """The student's naive and absorbed MLA scores agree with each other on every case."""
    if _RECORDING is not None:
        _RECORDING.append({"kind": "agreement", "student": [_slot(naive_fn), _slot(absorbed_fn)], "hidden": hidden,
                           "cases": [{"args": to_data(c.args), "label": c.label} for c in cases]})
        return
    for number, case in enumerate(cases, start=1):
        label = case_label(number, len(cases), case.label, hidden=hidden)
        naive = call_student(naive_fn, "naive_latent_scores", _clone(case.args), {}, label, hidden=hidden)
        absorbed = call_student(absorbed_fn, "absorbed_latent_scores", _clone(case.args), {}, label, hidden=hidden)
        difference = compare(absorbed, naive, rtol=1e-4, atol=1e-5, check_dtype=False,
                             what="absorbed_latent_scores (compared with your naive_latent_scores)",
                             show_values=not hidden)
        if difference is not None:
            raise CheckFailed(f"Your absorbed and naive scores disagree on {label}: {difference.text} Absorption is "
                              f"only a re-association: q^C . (W^UK c) = (W^UK^T q^C) . c.")
    print(f"\N{CHECK MARK} absorbed == naive on {len(cases)} {'hidden ' if hidden else ''}input set(s)")


def _compare_perplexities(actual, expected, *, hidden: bool):
    if not isinstance(actual, dict):
        return f"return a dict {{length: perplexity or None}}, not {describe(actual)}."
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


def perplexity_check(student_fn: Callable, cases: Sequence[tuple[Case, dict, str]], *, hidden: bool = False) -> None:
    """``perplexity_by_length(model, windows, train_length, lengths) -> {length: perplexity or None}`` on cases
    ``(Case, expected dict, the model's encoding)``: None where the model raises ``ValueError`` (a learned
    table past its rows) and at every longer length."""
    if _RECORDING is not None:
        _RECORDING.append({"kind": "perplexity", "student": _slot(student_fn), "hidden": hidden,
                           "cases": [{"args": to_data(c.args), "label": c.label, "expected": e, "encoding": enc}
                                     for c, e, enc in cases]})
        return
    for number, (case, expected, encoding) in enumerate(cases, start=1):
        label = case_label(number, len(cases), case.label, hidden=hidden)
        try:
            actual = call_student(student_fn, "perplexity_by_length", _clone(case.args), {}, label, hidden=hidden)
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
    report_pass("perplexity_by_length", len(cases), hidden)


# ----------------------------------------------------------------------------------------------------------
# Replaying a recorded check (the kit's side)
# ----------------------------------------------------------------------------------------------------------


def _case(record: dict) -> Case:
    return Case(from_data(record["args"]), from_data(record.get("kwargs", {})), record.get("label", ""),
                record.get("note", ""))


def run_recorded(step: dict, students: Sequence[Callable]) -> None:
    """Run one recorded step against the student's functions."""
    kind = step["kind"]
    if kind == "report_pass":
        report_pass(step["name"], step["count"], step["hidden"], step["what"])
    elif kind == "require_module":
        require_module(step["module"], step["message"])
    elif kind == "function":
        function_check(students[step["student"]], StoredOracle(step), [_case(c) for c in step["cases"]],
                       **step["options"])
    elif kind == "permutation":
        permutation_check(students[step["student"]], [(_case(c), c["expected"]) for c in step["cases"]],
                          hidden=step["hidden"])
    elif kind == "property_test":
        pool = [(correct, description, from_data(rotate)) for correct, description, rotate in step["pool"]]
        property_test_check(students[step["student"]], pool, step["broken_count"], hidden=step["hidden"])
    elif kind == "agreement":
        naive, absorbed = (students[i] for i in step["student"])
        agreement_check(naive, absorbed, [_case(c) for c in step["cases"]], hidden=step["hidden"])
    elif kind == "perplexity":
        perplexity_check(students[step["student"]], [(_case(c), c["expected"], c["encoding"]) for c in step["cases"]],
                         hidden=step["hidden"])
    else:
        raise ValueError(f"this kit's data has a step of an unknown kind, {kind!r}: the kit and its course_checks "
                         f"come from different versions of the course")


def replayed_check(check: str, calls: list[dict]) -> Callable:
    """The kit's ``check_...`` function: it runs the recorded steps of the visible check called with the same
    options, and says which calls it knows otherwise."""

    def run(*students: Any, **options: Any) -> None:
        for call in calls:
            if call["students"] == len(students) and call["options"] == options:
                for step in call["steps"]:
                    run_recorded(step, students)
                return None
        known = "; ".join(call["source"] for call in calls)
        raise CheckFailed(f"The student kit holds the data of this assignment's visible checks only, as the "
                          f"notebook calls them: {known}. Run the check cells as they are.")

    run.__name__ = run.__qualname__ = check
    run.calls = calls  # what it knows: the recorded calls, each with its options and steps
    run.__doc__ = f"The visible check {check}, replayed from the data this kit was made with."
    return run


def load_kit(data: dict) -> dict[str, Any]:
    """The names a kit's ``course_checks`` exports: a replayed function per recorded check, and the constants
    the notebook imports."""
    if data.get("format") != 1:
        raise ValueError("this kit's data has an unknown format: the kit and its course_checks come from "
                         "different versions of the course")
    names = dict(data["constants"])
    for check, calls in data["checks"].items():
        names[check] = replayed_check(check, calls)
    return names
