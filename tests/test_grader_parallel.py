"""Parallel grading: the pre-imported harness (`grader.harness.forkserver`), the local pool of workers and the
Dask pool (`grader.parallel`), and the command line's ``--workers`` and ``--scheduler``.

The tests here grade tiny hand-made specs, not notebooks, so that a hang, a crash or a memory blow-up in the
harness itself takes seconds. That a parallel batch of the simulated class gets the serial batch's grades,
and that a Dask cluster gets them too, is tested on that class in ``tests/test_grader_class.py``.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grader.cli import build_parser
from grader.parallel import Job, LocalPool, SchedulerError, connect, default_workers, grade_on_dask_worker

REPO = Path(__file__).resolve().parents[1]


def spec(setup="", cells=(), tests=(), sandbox=True):
    """A harness spec as `grader.autograde.harness_job` makes one, from a few sources."""
    return dict(assignment="tiny", student="someone", setup=setup,
                cells=[[f"cell-{n}", source] for n, source in enumerate(cells)],
                tests=[[f"test-{n}", source] for n, source in enumerate(tests)], sandbox=sandbox,
                limits=dict(memory_mb=1024, budget=60, cell_timeout=30, call_timeout=30, max_restarts=2))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_all(pool, jobs):
    """Submit every job to the pool at once; ``{job number: Ran}`` once all have ended."""
    import queue

    done = queue.Queue()
    for job in jobs:
        pool.submit(job, done)
    ran = {}
    for _ in jobs:
        item = done.get(timeout=300)()
        ran[item.job.number] = item
    return ran


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three local workers, for the tests whose specs run cells in a sandbox."""
    from grader.harness.sandbox import SandboxUnavailable, open_sandbox

    try:
        open_sandbox().release()
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")
    pool = LocalPool(3, tmp_path_factory.mktemp("forkserver") / "forkserver.log")
    yield pool
    pool.close()


def job(tmp_path, number, the_spec, wall=120, memory_mb=1024):
    return Job(number, "tiny", f"student{number}", the_spec, tmp_path / f"run{number}", memory_mb, wall)


HONEST = spec(cells=["def add_one(a):\n    return a + 1"], tests=["assert add_one(1) == 2", "assert add_one(2) == 4"])


def test_a_hanging_a_crashing_and_a_bloated_harness_leave_the_others_graded(pool, tmp_path):
    """Three harness failures in one parallel batch: the hang is killed at the wall-clock limit (its process
    is gone), the crash and the memory limit are reported; the two honest submissions are graded."""
    pid_file = tmp_path / "hanging.pid"
    hanging = spec(setup=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)")
    crashing = spec(setup="import os\nos._exit(3)")
    bloated = spec(setup="hoard = bytearray(8 * 2**30)")  # past 1024 + 2048 MiB of address space
    started = time.monotonic()
    ran = run_all(pool, [job(tmp_path, 1, hanging, wall=6), job(tmp_path, 2, crashing), job(tmp_path, 3, HONEST),
                         job(tmp_path, 4, bloated), job(tmp_path, 5, HONEST)])
    assert time.monotonic() - started < 120
    assert ran[1].failure == "grading took longer than 6 s and was stopped" and ran[1].result == {}
    pid = int(pid_file.read_text())
    assert not alive(pid), "the hanging harness outlived its wall-clock limit"
    assert ran[2].failure == "the grading process ended without a result (exit status 3)"
    assert ran[4].failure.startswith("the grader failed: MemoryError")
    for honest in (ran[3], ran[5]):
        assert honest.failure == ""
        assert [t["passed"] for t in honest.result["tests"]] == [True, False]


def test_each_submission_gets_a_fresh_process_forked_from_the_pre_imported_server(pool, tmp_path):
    """What one submission's harness changes (a module of the checks) is not in the next one's: each is a new
    child of the server, not a reused worker; and the modules the checks need are already imported."""
    REPORT = "print(os.getpid(), 'torch.fx.experimental.symbolic_shapes' in sys.modules)"  # preloaded only
    meddling = spec(setup="import os, sys, grader.checks.engine as engine\nengine.LEFT_BEHIND = os.getpid()",
                    tests=[REPORT])
    looking = spec(setup="import os, sys, grader.checks.engine as engine",
                   tests=[REPORT, "assert not hasattr(engine, 'LEFT_BEHIND')"])
    first = run_all(pool, [job(tmp_path, 1, meddling)])[1]
    second = run_all(pool, [job(tmp_path, 2, looking)])[2]
    assert first.failure == second.failure == ""
    pid_one, preloaded_one = first.result["tests"][0]["output"].split()
    pid_two, preloaded_two = second.result["tests"][0]["output"].split()
    assert pid_one != pid_two and str(pool.server.ready_info["pid"]) not in (pid_one, pid_two)
    assert preloaded_one == preloaded_two == "True"
    assert second.result["tests"][1]["passed"]
    assert pool.server.ready_info["threads"] == 1  # nothing but the main thread when it forks


def test_concurrent_sandboxes_get_distinct_uids(pool, tmp_path):
    """Three submissions' sandboxes alive at the same moment (each test cell waits for the other two) run as
    three different uids: the slot locks hold across the harness processes of one batch."""
    if os.geteuid() != 0:
        pytest.skip("only a grader running as root gives each sandbox a uid of its own")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    waiting = (f"import os, time\nopen(os.path.join({str(barrier)!r}, str(os.getpid())), 'w').close()\n"
               f"deadline = time.monotonic() + 60\n"
               f"while len(os.listdir({str(barrier)!r})) < 3 and time.monotonic() < deadline:\n"
               f"    time.sleep(0.05)\n"
               f"print(len(os.listdir({str(barrier)!r})), MY_UID)")
    the_spec = spec(cells=["import os\nMY_UID = os.getuid()"], tests=[waiting])
    ran = run_all(pool, [job(tmp_path, n, the_spec) for n in (1, 2, 3)])
    seen = [ran[n].result["tests"][0]["output"].split() for n in (1, 2, 3)]
    assert [count for count, _ in seen] == ["3", "3", "3"], "the three sandboxes were not alive together"
    uids = {int(uid) for _, uid in seen}
    assert len(uids) == 3 and all(uid >= 61000 for uid in uids), seen


def test_a_dead_server_fails_its_running_job_and_is_restarted_and_a_closed_one_takes_its_children(tmp_path):
    """The server killed (as the kernel's OOM killer would): the job it was running fails with the reason, its
    harness dies with it, and the next job gets a new server. Closing the pool ends the server and the
    harness it was running."""
    import queue
    import signal

    pool = LocalPool(1, tmp_path / "forkserver.log")
    done = queue.Queue()

    def start_hanging(number):
        pid_file = tmp_path / f"hanging{number}.pid"
        pool.submit(job(tmp_path, number, spec(
            setup=f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)")), done)
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(pid_file.read_text())

    try:
        first_child, first_server = start_hanging(1), pool.server._proc
        os.kill(first_server.pid, signal.SIGKILL)
        ran = done.get(timeout=30)()
        assert ran.failure.startswith("the grading process ended without a result (the harness's fork server ended")
        deadline = time.monotonic() + 5
        while alive(first_child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(first_child), "the harness outlived its server"

        pool.submit(job(tmp_path, 2, spec(setup="x = 1", tests=["assert x == 1"], sandbox=False)), done)
        ran = done.get(timeout=300)()
        assert ran.failure == "" and ran.result["tests"][0]["passed"]
        assert pool.server._proc is not first_server

        second_child, second_server = start_hanging(3), pool.server._proc
    finally:
        pool.close()
    assert second_server.poll() is not None
    ran = done.get(timeout=30)()
    assert ran.failure.startswith("the grading process ended without a result")
    assert not alive(second_child)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("value, words", [("0", "must be 1 or more"), ("-2", "must be 1 or more"),
                                          ("two", "must be a whole number of workers")])
def test_workers_must_be_a_whole_number_of_at_least_one(value, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["autograde", "--workers", value])
    assert stopped.value.code == 2
    assert f"argument --workers: {words}" in capsys.readouterr().err


def test_workers_default_to_the_cores_and_exclude_a_scheduler(capsys):
    assert build_parser().parse_args(["autograde"]).workers is None  # LocalPool then takes default_workers()
    assert default_workers() == len(os.sched_getaffinity(0))
    assert build_parser().parse_args(["autograde", "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["autograde", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "not allowed with argument" in capsys.readouterr().err
    text = build_parser()._subparsers._group_actions[0].choices["autograde"].format_help()
    assert "--workers N" in text and "--scheduler ADDRESS" in text


def test_a_scheduler_that_cannot_be_reached_is_a_clear_error(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(REPO / "grader", course, ignore=shutil.ignore_patterns(
        "__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "grader", "autograde", "--scheduler", "tcp://127.0.0.1:1",
                             "--course-dir", str(course), "--db", f"sqlite:///{tmp_path / 'gb.db'}"], cwd=REPO,
                            env=dict(os.environ, GRADER_SCHEDULER_TIMEOUT="2"), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: cannot reach the Dask scheduler at tcp://127.0.0.1:1 within 2 s" in result.stdout
    assert time.monotonic() - started < 60
    assert not (course / ".grader").exists() and not (tmp_path / "gb.db").exists()  # nothing was started


def test_without_distributed_the_scheduler_option_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(SchedulerError, match=r"needs Dask's distributed package.*pip install 'dask\[distributed\]'"):
        connect("tcp://127.0.0.1:8786")


def test_a_dask_worker_with_other_grading_code_refuses_to_grade():
    answer = grade_on_dask_worker(HONEST, 1024, 60, expected_digest="the grader's checkout")
    assert answer["result"] == {} and "has other grading code" in answer["failure"]
