"""Where the harness runs during ``python -m grader autograde``: a pool of local workers (``--workers N``) or
the workers of a Dask cluster (``--scheduler ADDRESS``).

Either way a pool only runs the harness (`grader.harness.worker`, one fresh process and one fresh sandbox per
submission) and hands back its result as data. Staging, the ledger and the gradebook stay in the CLI's main
thread (`grader.autograde`), which records each result as it arrives: one writer, whatever the pool.

* `LocalPool`: N threads, each waiting on one harness child of one `grader.harness.forkserver.ForkServer`.
* `DaskPool`: each submission is a Dask task, `grade_on_dask_worker`, which receives the staged spec as data,
  grades it with that worker's own fork server in a private temporary folder, and returns the result. Dask
  moves tasks and results with pickle between its own processes: the scheduler's network must be private
  (see grader/README.md).

This module imports neither torch nor nbgrader: a Dask worker imports it to run a task.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import queue
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .harness.forkserver import REPO_ROOT, ForkServer, run_harness

CONNECT_TIMEOUT = float(os.environ.get("GRADER_SCHEDULER_TIMEOUT", 10))
"""Seconds to reach the scheduler, and then to wait for a first worker, before giving up."""


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class Job:
    """One staged submission for the harness: ``spec`` is what `grader.harness.worker` reads (without its
    ``result_file``); ``run_dir`` the CLI's folder for it (spec, result and log, never seen by the sandbox)."""

    number: int
    assignment: str
    student: str
    spec: dict
    run_dir: Path
    memory_mb: int
    wall: float


@dataclass
class Ran:
    """What the harness gave back for one job: its result (the worker's result file, as data), the reason it
    failed ("" when it did not), its wall time and where it ran ("" here, else the Dask worker)."""

    job: Job
    result: dict
    failure: str
    seconds: float
    where: str = ""


class LocalPool:
    """Runs up to ``workers`` harness children at a time on this machine, all forked by one fork server."""

    def __init__(self, workers: int, log_file: Path | None = None):
        self.workers = workers
        self.server = ForkServer(log_file)
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harness")

    def describe(self) -> str:
        return f"with {self.workers} worker(s)"

    def start(self) -> None:
        """Start the fork server now: it imports while this process stages the first submissions."""
        self.server.start()

    def capacity(self) -> int:
        """How many jobs to keep submitted: one waiting per worker, so none idles while results are recorded."""
        return 2 * self.workers

    def submit(self, job: Job, done: "queue.Queue") -> None:
        """Start ``job`` when a worker is free; when it ends, put a callable returning its `Ran` in ``done``."""
        def work() -> None:
            started = time.monotonic()
            try:
                result, failure = run_harness(self.server, job.spec, job.run_dir, job.memory_mb, job.wall)
            except Exception as exc:  # noqa: BLE001 (the batch goes on; the reason is recorded)
                result, failure = {}, f"grader error: {type(exc).__name__}: {exc}"
            ran = Ran(job, result, failure, time.monotonic() - started)
            done.put(lambda: ran)
        self._threads.submit(work)

    def close(self) -> None:
        """Stop the fork server (and with it any harness still running), then the threads."""
        self.server.close()
        self._threads.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------------------ Dask


class SchedulerError(RuntimeError):
    """The Dask cluster cannot be used; the message says why and what to do."""


GRADING_CODE = ("grader/checks/*.py", "grader/references.py", "grader/harness/*.py", "grader/runtime/*.py",
                "solutions/**/*.py")


def checkout_digest(root: Path = REPO_ROOT) -> str:
    """A digest of the code that decides a grade in a checkout: the checks, the references, the harness, the
    sandbox's runtime and `solutions`. A Dask worker whose digest differs from the CLI's would grade with other
    checks than the ones the ledger records, so it refuses."""
    digest = hashlib.sha256()
    paths = sorted({p for pattern in GRADING_CODE for p in root.glob(pattern) if p.is_file()})
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


_WORKER_SERVER: ForkServer | None = None
_WORKER_SERVER_LOCK = threading.Lock()


def _worker_server() -> ForkServer:
    """This Dask worker process's fork server, started on its first task and ended with the process."""
    global _WORKER_SERVER
    with _WORKER_SERVER_LOCK:
        if _WORKER_SERVER is None:
            log = Path(tempfile.gettempdir()) / f"grader-forkserver-{os.getpid()}.log"
            _WORKER_SERVER = ForkServer(log)
            atexit.register(_close_worker_server, _WORKER_SERVER, log)
        return _WORKER_SERVER


def _close_worker_server(server: ForkServer, log: Path) -> None:
    server.close()
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()  # nothing went wrong: leave no file behind


def _where() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return socket.gethostname()


def dask_worker_check(sandbox: bool) -> dict:
    """Run on every Dask worker before a batch: its checkout's digest, and why its sandbox cannot run ("" if
    it can, or if the batch runs without one)."""
    problem = ""
    if sandbox:
        from .harness.sandbox import SandboxUnavailable, open_sandbox

        try:
            open_sandbox().release()
        except SandboxUnavailable as exc:
            problem = str(exc)
    return {"digest": checkout_digest(), "sandbox": problem, "host": socket.gethostname()}


def grade_on_dask_worker(spec: dict, memory_mb: int, wall: float, expected_digest: str) -> dict:
    """A Dask task: grade one staged submission on this worker and return ``{result, failure, seconds, where,
    log}``. The spec arrives as data and is written to a private temporary folder of this worker, which the
    sandbox does not see; the folder is removed afterwards. Nothing is written to the gradebook here."""
    started = time.monotonic()
    where = _where()
    if checkout_digest() != expected_digest:
        return {"result": {}, "failure": f"the Dask worker {where} has other grading code (checks, references, "
                                         f"harness or solutions) than the grader's checkout: update its checkout",
                "seconds": 0.0, "where": where, "log": ""}
    with tempfile.TemporaryDirectory(prefix="grader-run-") as folder:
        run_dir = Path(folder)
        result, failure = run_harness(_worker_server(), spec, run_dir, memory_mb, wall)
        log_file = run_dir / "worker.log"
        log = log_file.read_text(errors="replace")[-5000:] if log_file.is_file() else ""
    return {"result": result, "failure": failure, "seconds": time.monotonic() - started, "where": where, "log": log}


def connect(address: str, timeout: float = CONNECT_TIMEOUT):
    """A `distributed.Client` of the scheduler at ``address`` with at least one worker, or `SchedulerError`."""
    try:
        from distributed import Client
    except ImportError:
        raise SchedulerError("--scheduler needs Dask's distributed package, which is not installed in this "
                             "environment: pip install 'dask[distributed]' (requirements.txt lists it)") from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                             f"({type(exc).__name__}: {str(exc)[:200]}); start one with 'dask scheduler' and "
                             f"pass the address it prints") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise SchedulerError(f"no Dask worker joined the scheduler at {address} within {timeout:g} s ({exc}); "
                             f"start workers with 'dask worker {address}'") from None
    return client


class DaskPool:
    """Sends each job to a Dask cluster as a `grade_on_dask_worker` task (see grader/README.md)."""

    def __init__(self, address: str, sandbox: bool = True, timeout: float = CONNECT_TIMEOUT):
        self.address = address
        self.client = connect(address, timeout)
        self.digest = checkout_digest()
        try:
            checks = self.client.run(dask_worker_check, sandbox)
        except Exception as exc:  # noqa: BLE001 (a worker that cannot even import the course)
            self.client.close()
            raise SchedulerError(f"the Dask workers could not run the grader's check ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}): they need this checkout on their PYTHONPATH") from None
        problems = []
        for worker, check in sorted(checks.items()):
            if check["digest"] != self.digest:
                problems.append(f"{worker} ({check['host']}): its grading code differs from this checkout's")
            if check["sandbox"]:
                problems.append(f"{worker} ({check['host']}): no sandbox: {check['sandbox']}")
        if problems:
            self.client.close()
            raise SchedulerError("these Dask workers cannot grade:\n  " + "\n  ".join(problems))
        self.workers = len(checks)

    def describe(self) -> str:
        return f"on the Dask cluster at {self.address} ({self.workers} worker(s))"

    def start(self) -> None:
        """Nothing to start: each Dask worker starts its own fork server on its first task."""

    def capacity(self) -> int:
        """Jobs to keep submitted: two per worker thread of the cluster as it is now (workers may join)."""
        return max(2, 2 * sum(self.client.nthreads().values()))

    def submit(self, job: Job, done: "queue.Queue") -> None:
        future = self.client.submit(grade_on_dask_worker, job.spec, job.memory_mb, job.wall, self.digest,
                                    key=f"grade-{job.assignment}-{job.student}-{os.urandom(4).hex()}", pure=False)

        def collect() -> Ran:
            try:
                answer = future.result()
            except Exception as exc:  # noqa: BLE001 (a lost worker, a cancelled task: recorded as failed)
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                return Ran(job, {}, f"the Dask task failed: {type(exc).__name__}: {first_line}", 0.0)
            if answer.get("log"):
                job.run_dir.mkdir(parents=True, exist_ok=True)
                (job.run_dir / "worker.log").write_text(answer["log"])
            return Ran(job, answer["result"], answer["failure"], answer["seconds"], answer["where"])
        future.add_done_callback(lambda _: done.put(collect))

    def close(self) -> None:
        self.client.close()
