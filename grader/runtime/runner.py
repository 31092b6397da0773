"""The submission's side of grading: runs inside the sandbox, executes the student's cells, then answers calls.

``python -I -B runner.py FD``: FD is a socket to the grading harness, which sends one request at a time
(`grader.runtime.wire` messages) and reads one answer:

* ``{"op": "modules", "modules": {name: {"constants": {...}, "stubs": [...]}}}``: install stand-ins for the
  course modules the notebook's set-up cell imports (the real ones, and the reference package behind them,
  are not in the sandbox): the constants the notebook uses, and for each check a stub that only says that
  the checks run outside while grading.
* ``{"op": "cell", "path": ..., "source": ...}``: write the cell's code into the scratch folder and execute it
  in the notebook's namespace; answer with its printed output and its error, if any.
* ``{"op": "names"}``: which names the namespace defines, and whether each is callable.
* ``{"op": "get", "name": ...}``: a data value of the namespace (a callable is sent as an `Opaque`).
* ``{"op": "call", "name": ..., "args": [...], "kwargs": {...}}``: call a function of the namespace; the
  answer holds its value and the arguments as they are after the call (so the harness sees a function that
  edits its input in place). While the call runs, the function may call back the harness's callables that
  came in the arguments (`wire.Handle`); such a callback works only during the call that handed it over.

This file is part of the sandbox, beside the student's code: it holds no test, no expected value and no
reference. The harness trusts nothing it sends back; everything it does here, the student's code could do too.
"""

from __future__ import annotations

import builtins
import io
import os
import socket
import sys
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves the script's folder out
import wire  # noqa: E402

SCRATCH = os.getcwd()
OUTPUT_LIMIT = 100_000
TOTAL_OUTPUT_LIMIT = 1_000_000
"""Characters of printed output kept per cell, and for the whole submission (all cells and calls together)."""
_printed = [0]  # characters kept so far, for the whole submission


class _Channel:
    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)

    def read_exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("the harness closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self):
        return wire.read_message(self.read_exactly)

    def send(self, obj) -> None:
        self.sock.sendall(wire.encode(obj))


class _Capture(io.TextIOBase):
    """What the student's code prints, up to `OUTPUT_LIMIT` characters."""

    def __init__(self):
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = min(OUTPUT_LIMIT - self.size, TOTAL_OUTPUT_LIMIT - _printed[0])
        if room > 0:
            kept = text[:room]
            self.parts.append(kept)
            self.size += len(kept)
            _printed[0] += len(kept)
        if len(text) > max(room, 0):
            self.truncated = True
        return len(text)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + ("\n[grader] output truncated\n" if self.truncated else "")


def _location(exc: BaseException) -> str:
    """`` (line 3 of your code: `...`)``: the last frame of the traceback in a cell file."""
    try:
        frames = traceback.extract_tb(exc.__traceback__)
    except Exception:  # noqa: BLE001 (a hostile traceback; no location then)
        return ""
    for frame in reversed(frames):
        if str(frame.filename).startswith(SCRATCH + os.sep):
            line = (frame.line or "").strip()
            quoted = f": `{line[:200]}`" if line else ""
            return f" (line {frame.lineno} of your code{quoted})"
    return ""


def _error(exc: BaseException) -> wire.RemoteError:
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 (a __str__ that raises)
        message = ""
    cause = exc.__cause__ or exc.__context__
    return wire.RemoteError(type(exc).__name__, message[:20000], _location(exc),
                            type(cause).__name__ if cause is not None else "")


class _Magics:
    """``get_ipython()`` for cells that use %magics or !commands: they do nothing while grading."""

    def __getattr__(self, name):
        def ignored(*args, **kwargs):
            print(f"[grader] IPython's {name} is not available while grading; skipped")
        return ignored


class GraderCallable:
    """A callable of the harness (a function or a model): calling it asks the harness, during the current call."""

    def __init__(self, runner: "Runner", handle: wire.Handle, call_number: int):
        self._runner, self._handle, self._call_number = runner, handle, call_number

    def __call__(self, *args, **kwargs):
        return self._runner.callback(self, args, kwargs)

    def __getattr__(self, name):
        raise AttributeError(f"{self._handle.description} can only be called while grading (no attribute {name!r})")

    def __repr__(self) -> str:
        return f"<{self._handle.description}>"


def _rebuild_exception(error: wire.RemoteError) -> BaseException:
    kind = getattr(builtins, error.type_name, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    try:
        return kind(error.message)
    except Exception:  # noqa: BLE001 (an exception class with another signature)
        return RuntimeError(error.message)


class Runner:
    def __init__(self, channel: _Channel):
        self.channel = channel
        self.namespace: dict = {"__name__": "__main__", "__builtins__": builtins, "get_ipython": _Magics,
                                "display": print}
        self.call_number = 0
        self.active_call = None

    # ------------------------------------------------------------------------------------------- requests

    def serve(self) -> None:
        self.channel.send({"op": "ready", "pid": os.getpid()})
        while True:
            request = self.channel.receive()
            op = request.get("op") if isinstance(request, dict) else None
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                self.channel.send({"ok": False, "error": wire.RemoteError("ProtocolError", f"unknown request {op!r}")})
                continue
            self.channel.send(handler(request))

    def op_modules(self, request) -> dict:
        for name, spec in request["modules"].items():
            module = types.ModuleType(name, "A stand-in while grading: the course's checks run outside this process.")
            module.__dict__.update(spec.get("constants", {}))
            for stub in spec.get("stubs", []):
                module.__dict__[stub] = _stub(stub)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            while parent:
                holder = sys.modules.setdefault(parent, types.ModuleType(parent))
                setattr(holder, child, sys.modules[f"{parent}.{child}" if parent else child])
                parent, _, child = parent.rpartition(".")
        return {"ok": True}

    def op_cell(self, request) -> dict:
        path = os.path.join(SCRATCH, os.path.basename(str(request["path"])))
        source = str(request["source"])
        capture = _Capture()
        error = None
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(source)
            code = compile(source, path, "exec")
            with _redirected(capture):
                exec(code, self.namespace)  # noqa: S102 (the student's cell, inside the sandbox)
        except BaseException as exc:  # noqa: BLE001 (SystemExit and KeyboardInterrupt too: reported, not obeyed)
            error = _error(exc)
        return {"ok": error is None, "output": capture.text(), "error": error}

    def op_names(self, request) -> dict:
        names = {}
        for name, value in list(self.namespace.items()):
            if isinstance(name, str) and not name.startswith("__"):
                names[name] = "module" if isinstance(value, types.ModuleType) else (
                    "callable" if callable(value) else "data")
        return {"ok": True, "names": names}

    def op_get(self, request) -> dict:
        name = str(request["name"])
        if name not in self.namespace:
            return {"ok": False, "error": wire.RemoteError("NameError", f"name {name!r} is not defined")}
        return {"ok": True, "value": self.namespace[name]}

    def op_call(self, request) -> dict:
        name = str(request["name"])
        self.call_number += 1
        number = self.call_number
        if name not in self.namespace:
            return {"ok": False, "error": wire.RemoteError("NameError", f"name {name!r} is not defined")}
        def to_proxy(leaf):
            return GraderCallable(self, leaf, number) if isinstance(leaf, wire.Handle) else leaf
        args = wire.map_leaves(tuple(request.get("args", ())), to_proxy)
        kwargs = wire.map_leaves(dict(request.get("kwargs", {})), to_proxy)
        capture = _Capture()
        self.active_call = number
        try:
            with _redirected(capture):
                value = self.namespace[name](*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            return {"ok": False, "error": _error(exc)}
        finally:
            self.active_call = None
        to_handle = lambda leaf: leaf._handle if isinstance(leaf, GraderCallable) else leaf  # noqa: E731
        value = wire.map_leaves(value, to_handle) if isinstance(value, (list, tuple, dict)) else value
        return {"ok": True, "value": value, "args": wire.map_leaves(args, to_handle),
                "kwargs": wire.map_leaves(kwargs, to_handle)}

    # ------------------------------------------------------------------------------------------ callbacks

    def callback(self, proxy: GraderCallable, args, kwargs):
        if self.active_call != proxy._call_number:
            raise RuntimeError(f"{proxy._handle.description} was handed over for one call only; that call is over")
        self.channel.send({"op": "callback", "handle": proxy._handle.number, "args": args, "kwargs": kwargs})
        answer = self.channel.receive()
        if answer.get("ok"):
            return answer.get("value")
        raise _rebuild_exception(answer.get("error") or wire.RemoteError("RuntimeError", "the callback failed"))


def _stub(name: str):
    def check_stub(*args, **kwargs):
        print(f"[grader] {name}: while grading, the checks run outside your code; skipped here")
    check_stub.__name__ = name
    return check_stub


class _redirected:
    def __init__(self, capture: _Capture):
        self.capture = capture

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.capture

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved
        return False


def main(argv: list[str]) -> int:
    channel = _Channel(int(argv[0]))
    try:
        Runner(channel).serve()
    except (EOFError, ConnectionError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
