"""Grade one submission: ``python -m grader.harness.worker SPEC.json`` (started by ``python -m grader
autograde``, one process per submission, with a wall-clock and a memory limit).

This process is the trusted side. It

1. runs the assignment's set-up cell (``setup``, from the course's source notebook) here, for the names the
   test cells use: the checks, torch, math;
2. starts the submission's sandbox (`grader.harness.session`) and runs the notebook's code cells there, in
   the submission's order: the student's cells as written and the read-only cells from the course's source.
   The set-up cell runs there too, against stand-ins of the course modules it imports: their constants, and
   a stub for each check;
3. runs every test cell of the source notebook here, in order, with each name that the test cell reads and
   that the student's code defined bound to a `StudentFunction` (a call into the sandbox) or, for data, to
   its value. Names this process defines come first, so a student's ``check_apply_rope = lambda f: None``
   changes nothing here. Checks whose answers come from a small public set draw their cases in a secret
   order (`grader.checks.engine.grade_in_secret_order`; ``GRADER_ORDER_SEED`` fixes it, to reproduce a run),
   and after a test that handed the student's code a callable of the grader's, the sandbox is recycled:
   what the code kept while holding it does not reach the next test;
4. writes the verdicts (per test: passed, and the check's message) and the cells' outputs to the result file.
   It never writes the gradebook: the CLI does, from this file.

SPEC.json: assignment, student, setup (source), cells ([[cell id, source], ...]), tests ([[grade id,
source], ...]), sandbox (bool), limits ({memory_mb, processes, budget, cell_timeout, call_timeout,
max_restarts}), result_file.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import importlib
import io
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.modules.setdefault("rfc3987_syntax", None)  # see grader/__main__.py

COURSE_PACKAGES = ("grader", "solutions", "course_checks")
"""Modules the set-up cell may import from the course: the sandbox gets stand-ins of them, never the code.
``course_checks``, the student kit's checks, is the grader's own `grader.checks` here."""


@functools.lru_cache(maxsize=1)
def _transformer():
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def python_source(source: str) -> str:
    """A cell's source as Python (IPython's own translation of %magics and !commands into calls)."""
    try:
        return _transformer().transform_cell(source)
    except Exception:  # noqa: BLE001 (left as it is: it fails when run, in the sandbox)
        return source


def stand_in_modules(setup_source: str) -> dict:
    """``{module: {"constants": {...}, "stubs": [...]}}`` for each course module the set-up cell imports:
    its data names as values, its callables as stubs. Data that the message format cannot carry is left out."""
    from ..runtime import wire

    modules: dict[str, dict] = {}
    try:
        tree = ast.parse(python_source(setup_source))
    except SyntaxError:
        return modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in COURSE_PACKAGES:
                    modules.setdefault(alias.name, {"constants": {}, "stubs": []})
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in COURSE_PACKAGES:
            entry = modules.setdefault(node.module, {"constants": {}, "stubs": []})
            real = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(real, alias.name, None)
                if callable(value):
                    entry["stubs"].append(alias.name)
                else:
                    try:
                        wire.encode(value)
                    except (wire.WireError, TypeError, ValueError):
                        continue
                    entry["constants"][alias.name] = value
    return modules


def _read_names(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)})


def _failure_text(exc: BaseException) -> tuple[str, str]:
    from ..checks import CheckFailed

    if isinstance(exc, CheckFailed):
        return "CheckFailed", str(exc)
    if isinstance(exc, AssertionError):
        return "AssertionError", str(exc) or "a check failed"
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return type(exc).__name__, message


def run_test(grade_id: str, source: str, base: dict, session, sandbox_names: dict) -> dict:
    from .session import StudentFunction

    namespace = dict(base)
    for name in _read_names(source):
        if name in namespace or hasattr(builtins, name):
            continue
        kind = sandbox_names.get(name)
        if kind == "callable":
            namespace[name] = StudentFunction(session, name)
        elif kind == "data":
            try:
                namespace[name] = session.get(name)
            except Exception:  # noqa: BLE001 (left undefined: the test then fails with a NameError)
                pass
    printed = io.StringIO()
    started = time.monotonic()
    verdict = {"grade_id": grade_id, "passed": False, "output": "", "error": None}
    try:
        code = compile(source, f"<test cell {grade_id}>", "exec")
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            exec(code, namespace)  # noqa: S102 (the course's own test cell, from the source notebook)
        verdict["passed"] = True
    except BaseException as exc:  # noqa: BLE001 (every failure is a verdict)
        if isinstance(exc, KeyboardInterrupt):
            raise
        name, message = _failure_text(exc)
        verdict["error"] = {"name": name, "message": message}
    verdict["output"] = printed.getvalue()[-20000:]
    verdict["seconds"] = round(time.monotonic() - started, 3)
    return verdict


def grade(spec: dict) -> dict:
    from .. import checks
    from ..checks import engine
    from .sandbox import Limits, open_sandbox
    from .session import Session

    checks.serve_as_student_package()

    limits = spec.get("limits", {})
    timings = {}
    started = time.monotonic()
    base: dict = {"__name__": "__grader__", "__builtins__": builtins}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(python_source(spec["setup"]), "<setup>", "exec"), base)  # noqa: S102 (the course's cell)
    modules = stand_in_modules(spec["setup"])
    timings["setup"] = time.monotonic() - started
    sandbox = None
    if spec.get("sandbox", True):
        sandbox = open_sandbox(Limits(memory_mb=int(limits.get("memory_mb", 4096)),
                                      processes=int(limits.get("processes", 256))))
    cells = [(f"cell_{number:02d}.py", python_source(source)) for number, (_, source) in
             enumerate(spec["cells"], start=1)]
    session = Session(cells, modules, sandbox, budget=float(limits.get("budget", 60)),
                      cell_timeout=float(limits.get("cell_timeout", 30)),
                      call_timeout=float(limits.get("call_timeout", 30)),
                      max_restarts=int(limits.get("max_restarts", 2)))
    try:
        mark = time.monotonic()
        results = session.start()
        timings["cells"] = time.monotonic() - mark
        mark = time.monotonic()
        names = session.names() if not session.exhausted else {}
        engine.grade_in_secret_order(int(os.environ.get("GRADER_ORDER_SEED") or secrets.randbits(64)))
        tests = []
        for grade_id, source in spec["tests"]:
            tests.append(run_test(grade_id, source, base, session, names))
            if session.tainted:
                session.recycle()
        timings["tests"] = time.monotonic() - mark
    finally:
        session.close()
        if sandbox is not None:
            sandbox.release()
    cell_reports = []
    for (cell_id, _), result in zip(spec["cells"], results):
        error = None
        if result.error is not None:
            error = {"name": result.error.type_name, "message": result.error.message[:2000],
                     "location": result.error.location}
        cell_reports.append({"id": cell_id, "ok": result.ok, "output": result.output, "error": error})
    timings["total"] = time.monotonic() - started
    return {"cells": cell_reports, "tests": tests, "events": session.events.lines, "starts": session.starts,
            "seconds": {k: round(v, 3) for k, v in timings.items()}}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = {"ok": True, **grade(spec)}
    except BaseException as exc:  # noqa: BLE001 (reported to the CLI, which records the reason)
        import traceback

        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": "".join(traceback.format_exception(exc))[-5000:]}
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
