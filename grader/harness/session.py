"""The harness's side of one submission: start its sandbox, run its cells, call its functions.

The student's code runs in another process (`grader.runtime.runner`, inside `grader.harness.sandbox`); here
each of its functions is a `StudentFunction`, a callable that sends the arguments and receives the value as
data (`grader.runtime.wire`). So the checks, the references and the expected values stay in this process,
which the student's code cannot reach: it can only return values.

Costs are bounded per submission: one call waits at most its time limit (the checks' own, or
``call_timeout``), one cell ``cell_timeout``, and everything together ``budget`` seconds of wall time,
restarts included. A sandbox that dies, hangs or breaks the message format is killed; the next call starts a
fresh one and replays the cells (at most ``max_restarts`` times). When the budget or the restarts are spent,
every later call fails at once with `BudgetExhausted`.
"""

from __future__ import annotations

import builtins
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

from ..runtime import wire
from .sandbox import RUNTIME, RUNTIME_DIR, Sandbox


class SubmissionCrashed(Exception):
    """The submission's process ended during a call (``os._exit``, a signal, a crash or the memory limit)."""


class BudgetExhausted(Exception):
    """The submission has used up its time or its restarts: nothing more of it runs."""


class ProtocolBroken(Exception):
    """The submission's process sent something that is not a valid answer."""


_REMOTE_CLASSES: dict[tuple[str, str], type] = {}


def remote_exception(error: wire.RemoteError) -> BaseException:
    """An exception standing for one raised in the sandbox: the builtin class of that name where there is
    one (so that ``except ValueError`` in a check works), or an ``Exception`` subclass named like the
    student's. ``student_location`` says where in the student's code it was raised."""
    kind = getattr(builtins, error.type_name, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        name = re.sub(r"\W", "_", error.type_name)[:80] or "Exception"
        kind = _REMOTE_CLASSES.setdefault(("exc", name), type(name, (Exception,), {"__module__": "builtins"}))
    try:
        exc = kind(error.message)
    except Exception:  # noqa: BLE001 (a builtin with another signature, e.g. UnicodeDecodeError)
        exc = _REMOTE_CLASSES.setdefault(("exc", kind.__name__), type(kind.__name__, (Exception,),
                                                                       {"__module__": "builtins"}))(error.message)
    exc.student_location = error.location
    if error.cause:
        exc.__cause__ = remote_exception(wire.RemoteError(error.cause))
        exc.__cause__.student_location = ""
    return exc


def _opaque_value(value: wire.Opaque):
    """An object whose type is named like the student's value, so that a check's message says what it got."""
    name = re.sub(r"[^\w.]", "_", value.type_name)[:80] or "object"
    module, _, qualname = name.rpartition(".")
    kind = _REMOTE_CLASSES.get(("opaque", name))
    if kind is None:
        kind = type(qualname or name, (), {"__module__": module or "builtins", "__repr__": lambda self: f"<{name}>"})
        _REMOTE_CLASSES[("opaque", name)] = kind
    return kind()


@dataclass
class CellResult:
    path: str
    ok: bool
    output: str = ""
    error: wire.RemoteError | None = None


@dataclass
class Events:
    """What happened to the sandbox, for the report: restarts, timeouts, crashes, budget."""

    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.lines:
            self.lines.append(text)


class Session:
    def __init__(self, cells: list[tuple[str, str]], modules: dict, sandbox: Sandbox | None, *,
                 budget: float = 60.0, cell_timeout: float = 30.0, call_timeout: float = 30.0,
                 start_timeout: float = 60.0, max_restarts: int = 2, env: dict | None = None):
        self.cells, self.modules, self.sandbox = cells, modules, sandbox
        self.budget, self.cell_timeout, self.call_timeout = budget, cell_timeout, call_timeout
        self.start_timeout, self.max_restarts = start_timeout, max_restarts
        self.env = env or {}
        self.events = Events()
        self.first_run: list[CellResult] = []
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.started_at: float | None = None
        self.starts = 0  # sandboxes started
        self.restarts = 0  # of them, after a failure (a crash, a hang, a broken message)
        self._planned = False  # the last sandbox was ended on purpose (`recycle`), not by a failure
        self.tainted = False  # the student's code was handed a callable of the grader's
        self.exhausted = ""
        self.skip_cells: dict[int, str] = {}
        self._output_tail = bytearray()

    # ------------------------------------------------------------------------------------------- lifetime

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started_at) if self.started_at is not None else self.budget

    def _deadline(self, seconds: float) -> float:
        return min(seconds, self.remaining())

    def _exhaust(self, why: str) -> None:
        if not self.exhausted:
            self.exhausted = why
            self.events.add(f"stopped: {why}")
        self.stop()

    def _program(self, fd: int) -> list[str]:
        if self.sandbox is None:
            return [sys.executable, "-I", "-B", str(RUNTIME_DIR / "runner.py"), str(fd)]
        return [sys.executable, "-I", "-B", f"{RUNTIME}/runner.py", str(fd)]

    def _environment(self) -> dict:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TRITON_INTERPRET": "1",
               "TRITON_CACHE_DIR": "/tmp/triton", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp/matplotlib"}
        env.update(self.env)
        return env

    def _spawn(self) -> None:
        """Start a fresh sandbox, wait for its runner, install the stand-in modules, replay the cells."""
        if self.started_at is None:
            self.started_at = time.monotonic()
        if self.restarts > self.max_restarts:
            self._exhaust(f"the submission's process had to be restarted after a failure {self.max_restarts} times, "
                          f"the most allowed")
            raise BudgetExhausted(self.exhausted)
        if self.remaining() <= 0:
            self._exhaust(f"the submission used its whole time budget ({self.budget:g} s)")
            raise BudgetExhausted(self.exhausted)
        self.starts += 1
        parent_sock, child_sock = socket.socketpair()
        try:
            if self.sandbox is None:
                env = self._environment()
                env["HOME"] = env["TMPDIR"] = self._scratch()
                self.proc = subprocess.Popen(self._program(child_sock.fileno()), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=env["HOME"],
                                             env=env, pass_fds=(child_sock.fileno(),), start_new_session=True)
            else:
                self.proc = self.sandbox.start(self._program(child_sock.fileno()), self._environment(),
                                               pass_fds=(child_sock.fileno(),))
        finally:
            child_sock.close()
        self.sock = parent_sock
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        hello = self._receive(self._deadline(self.start_timeout))
        if not (isinstance(hello, dict) and hello.get("op") == "ready"):
            raise ProtocolBroken("the sandbox did not start its runner")
        if self.modules:
            self._request({"op": "modules", "modules": self.modules}, self._deadline(self.call_timeout))
        results = []
        for index, (path, source) in enumerate(self.cells):
            if index in self.skip_cells:
                results.append(CellResult(path, False, error=wire.RemoteError(
                    "CellStopped", self.skip_cells[index] + "; the cells after it ran in a fresh process")))
                continue
            try:
                answer = self._request({"op": "cell", "path": path, "source": source},
                                       self._deadline(self.cell_timeout))
            except BaseException as exc:
                self.skip_cells[index] = str(exc) or type(exc).__name__
                raise
            error = answer.get("error")
            results.append(CellResult(path, bool(answer.get("ok")), str(answer.get("output") or ""),
                                      error if isinstance(error, wire.RemoteError) else None))
        if not self.first_run:
            self.first_run = results

    def _scratch(self) -> str:
        import tempfile

        if not hasattr(self, "_scratch_dir"):
            self._scratch_dir = tempfile.mkdtemp(prefix="grader-nosandbox-")
        return self._scratch_dir

    def _drain(self, proc: subprocess.Popen) -> None:
        """Read what the process writes to its own stdout and stderr (so it never blocks), keeping a tail."""
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                self._output_tail += chunk
                del self._output_tail[:-8192]
        except (OSError, ValueError):
            pass

    def start(self) -> list[CellResult]:
        """Run the cells in a fresh sandbox; the results of this first run (outputs and errors per cell)."""
        try:
            self._ensure()
        except (BudgetExhausted, SubmissionCrashed, ProtocolBroken, TimeoutError) as exc:
            self.events.add(f"while running the cells: {exc}")
        done = len(self.first_run)
        results = list(self.first_run) + [CellResult(path, False, error=wire.RemoteError(
            "NotRun", "not run: the submission's process stopped before this cell"))
            for path, _ in self.cells[done:]]
        if not self.first_run:
            self.first_run = results
        return results

    def recycle(self) -> None:
        """End this sandbox on purpose; the next call starts a fresh one and replays the cells. Used after a
        test that handed the student's code a callable of the grader's: nothing the code kept while it held
        one (answers, a cached reference) survives into another test."""
        self.stop()
        self._planned = True
        self.tainted = False

    def _ensure(self) -> None:
        if self.exhausted:
            raise BudgetExhausted(self.exhausted)
        if self.proc is None or self.proc.poll() is not None or self.sock is None:
            if self.proc is not None:
                self.stop()
            if self.starts and not self._planned:
                self.restarts += 1
            self._planned = False
            try:
                self._spawn()
            except BudgetExhausted:
                raise
            except BaseException as exc:
                self.stop()
                if isinstance(exc, (SubmissionCrashed, ProtocolBroken, TimeoutError)):
                    self.events.add(f"restart: {exc}")
                    if self.remaining() <= 0:
                        self._exhaust(f"the submission used its whole time budget ({self.budget:g} s)")
                        raise BudgetExhausted(self.exhausted) from None
                    self._ensure()  # the failing cell is now skipped; try once more, within the limits
                    return
                raise

    def stop(self) -> None:
        # A check's SIGALRM time limit may fire again while the sandbox is being killed: hold it until then.
        blocked = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._stop()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})

    def _stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()  # the runner reads the end of its input and exits on its own
            except OSError:
                pass
            self.sock = None
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        if self.proc is not None:
            if self.sandbox is not None:
                stray = self.sandbox.stop(self.proc)
                if stray:
                    self.events.add(f"{stray} process(es) of the submission outlived its sandbox and were killed")
            elif self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, 9)
                except OSError:
                    pass
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        if hasattr(self, "_scratch_dir"):
            import shutil

            shutil.rmtree(self._scratch_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- messages

    def _receive(self, timeout: float):
        if timeout <= 0:
            self._exhaust(f"the submission used its whole time budget ({self.budget:g} s)")
            raise BudgetExhausted(self.exhausted)
        sock = self.sock
        end = time.monotonic() + timeout

        def read_exactly(n: int) -> bytes:
            chunks, left = [], n
            while left:
                wait = end - time.monotonic()
                if wait <= 0:
                    raise TimeoutError(f"no answer within {timeout:.0f} s")
                sock.settimeout(wait)
                try:
                    chunk = sock.recv(min(left, 1 << 20))
                except socket.timeout:
                    raise TimeoutError(f"no answer within {timeout:.0f} s") from None
                except OSError as exc:
                    raise SubmissionCrashed(f"the connection to the submission's process broke ({exc})") from None
                if not chunk:
                    raise SubmissionCrashed(self._death())
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        try:
            return wire.read_message(read_exactly)
        except wire.WireError as exc:
            raise ProtocolBroken(f"the submission's process sent a malformed message ({exc})") from None

    def _death(self) -> str:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        memory = self.sandbox.limits.memory_mb if self.sandbox else None
        return ("the submission's process ended" + (f" (exit status {code})" if code not in (None, 0) else "")
                + " (os._exit, a signal, a crash" + (f", or the {memory} MiB memory limit" if memory else "") + ")")

    def _send(self, message, handles=None) -> None:
        try:
            self.sock.sendall(wire.encode(message, handles))
        except OSError as exc:
            raise SubmissionCrashed(f"the submission's process stopped listening ({exc})") from None

    def _request(self, message, timeout: float, handles: dict | None = None) -> dict:
        """Send a request; serve callbacks until the answer comes (all within ``timeout``)."""
        end = time.monotonic() + timeout
        self._send(message, handles)
        while True:
            answer = self._receive(end - time.monotonic())
            if not isinstance(answer, dict):
                raise ProtocolBroken("the submission's process sent an answer that is not a record")
            if answer.get("op") == "callback":
                self._serve_callback(answer, handles or {})
                continue
            return answer

    def _serve_callback(self, request: dict, handles: dict) -> None:
        target = handles.get(request.get("handle"))
        if target is None:
            self._send({"ok": False, "error": wire.RemoteError("RuntimeError", "no such function of the grader")})
            return
        args = request.get("args", ())
        kwargs = request.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not all(
                isinstance(k, str) for k in kwargs):
            self._send({"ok": False, "error": wire.RemoteError("TypeError", "malformed arguments")})
            return
        try:
            with torch.no_grad():
                value = target(*_from_wire(tuple(args), handles), **_from_wire(kwargs, handles))
            self._send({"ok": True, "value": value})
        except Exception as exc:  # noqa: BLE001 (the grader's function raised: the student's code sees it)
            self._send({"ok": False, "error": wire.RemoteError(type(exc).__name__, str(exc)[:2000])})

    # ------------------------------------------------------------------------------------------ operations

    def _guarded(self, operation):
        """Run ``operation`` on a live sandbox; any failure kills it (the next use starts a fresh one)."""
        self._ensure()
        try:
            return operation()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, (SubmissionCrashed, ProtocolBroken)):
                self.events.add(str(exc))
            elif isinstance(exc, TimeoutError):
                self.events.add(f"a call was stopped: {exc}")
            if self.remaining() <= 0 and not self.exhausted:
                self._exhaust(f"the submission used its whole time budget ({self.budget:g} s)")
            raise

    def names(self) -> dict[str, str]:
        """``{name: "callable" | "data" | "module"}`` for every name the cells defined."""
        try:
            answer = self._guarded(lambda: self._request({"op": "names"}, self._deadline(self.call_timeout)))
        except Exception:  # noqa: BLE001
            return {}
        names = answer.get("names") if isinstance(answer, dict) else None
        return {k: v for k, v in names.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(
            names, dict) else {}

    def get(self, name: str):
        answer = self._guarded(lambda: self._request({"op": "get", "name": name}, self._deadline(self.call_timeout)))
        if not answer.get("ok"):
            raise remote_exception(answer.get("error") or wire.RemoteError("NameError", name))
        return _from_wire(answer.get("value"), {})

    def call(self, name: str, args: tuple, kwargs: dict):
        handles: dict = {}
        message = {"op": "call", "name": name, "args": tuple(args), "kwargs": dict(kwargs)}
        answer = self._guarded(lambda: self._request(message, self._deadline(self.call_timeout), handles))
        self.tainted = self.tainted or bool(handles)
        if not answer.get("ok"):
            error = answer.get("error")
            raise remote_exception(error if isinstance(error, wire.RemoteError) else
                                   wire.RemoteError("ProtocolError", "a failed call without an error"))
        _write_back(args, _from_wire(answer.get("args"), handles))
        _write_back(kwargs, _from_wire(answer.get("kwargs"), handles))
        return _from_wire(answer.get("value"), handles)


def _from_wire(value, handles: dict):
    """Decoded values as the checks expect them: handles back to this side's callables, opaque values as
    objects of a type named like the student's."""
    def leaf(item):
        if isinstance(item, wire.Handle):
            return handles.get(item.number, _opaque_value(wire.Opaque("function")))
        if isinstance(item, wire.Opaque):
            return _opaque_value(item)
        if isinstance(item, wire.RemoteError):
            return remote_exception(item)
        return item
    return wire.map_leaves(value, leaf)


def _write_back(sent, returned) -> None:
    """Make the arguments this side passed look as the student's function left them (a function that edits
    its input in place is then caught by the checks, as when it ran here)."""
    if isinstance(sent, dict) and isinstance(returned, dict):
        for key in sent:
            if key in returned:
                _write_back_one(sent, key, returned[key])
        return
    if isinstance(sent, (list, tuple)) and isinstance(returned, (list, tuple)) and len(sent) == len(returned):
        for index in range(len(sent)):
            _write_back_one(sent, index, returned[index])


def _write_back_one(container, key, after) -> None:
    before = container[key]
    if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
        with torch.no_grad():
            if before.shape == after.shape and before.dtype == after.dtype:
                if not torch.equal(torch.nan_to_num(before), torch.nan_to_num(after)):
                    before.copy_(after)
            else:
                before.data = after
    elif isinstance(before, list) and isinstance(after, list):
        before[:] = after
    elif isinstance(before, dict) and isinstance(after, dict):
        before.clear()
        before.update(after)
    elif isinstance(before, (list, tuple, dict)):
        _write_back(before, after)


class StudentFunction:
    """A function defined by the student's cells, called in the sandbox."""

    def __init__(self, session: Session, name: str):
        self._session, self.__name__ = session, name
        self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        return self._session.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<the student's {self.__name__}>"
