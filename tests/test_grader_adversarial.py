"""A hostile class, graded end to end through the instructor CLI (``python -m grader autograde``).

Every attacker starts from the *release* of ``part1_foundations`` (no solutions) and tries to get points
without implementing anything, to read what it must not (hidden tests, expected values, other students,
the gradebook), to write what it must not, to outlive the batch, to stop the grader, or to put HTML into
the feedback. Each attack belongs to a class; the defence is the design, not a pattern: the student's code
runs in a sandbox that holds nothing of the course, the test cells run in another process, and the feedback
is built from an allow-list. Two honest students, one graded first and one last, keep full marks.

Expected: every attack scores 0 or is refused with a reason, the batch completes, no process of the class is
left, the honest grades are untouched, and no feedback page holds a hidden-test line or a student's tag.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "part1_foundations"
ROPE = "part3_rope"  # the attacks on the callables the grader hands over, and on the read-only launcher
MAX_SCORE = {ASSIGNMENT: 13, ROPE: 21}
BUDGET, CELL_TIMEOUT = 20, 5
ORDER_SEED = "20261203"  # the harness's secret case order, fixed here so that the run is reproducible
MARKER = "4711.25"  # a process started by an attacker carries it on its command line

FUNCTIONS = ["self_attention", "is_permutation_equivariant", "sinusoidal_encoding", "sinusoidal_shift_matrix",
             "position_dot_product"]


def appended(*sources):
    """The release with extra cells at the end (the student's own code)."""
    def make(release):
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
        nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
        return nb
    return make


def every_function(body):
    """The release with each graded function defined as ``body`` (same signature for all: ``*args``)."""
    return appended("\n".join(f"def {name}(*args, **kwargs):\n{body}\n" for name in FUNCTIONS))


def edited_metadata(release):
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for c in nb.cells:
        meta = c.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            meta.update(grade=True, points=100.0)
            c.source = c.source.replace("raise NotImplementedError()", "return None")
        elif meta.get("grade"):
            meta.update(solution=True, locked=False, points=0.0)
            c.source = "pass"
    nb.cells.append(nbformat.v4.new_code_cell("bonus = 1", metadata={"nbgrader": {
        "grade": True, "grade_id": "bonus", "locked": False, "points": 1000.0, "schema_version": 3,
        "solution": False, "task": False}}))
    nb.metadata["kernelspec"] = {"name": "evil", "display_name": "evil", "language": "python"}
    return nb


SECRETS_WALK = r'''
import os, sys
needle = "seed=" + "101, hidden=True"  # a line of a hidden test; built here so this cell does not hold it
found = []
installed = ("/usr", sys.prefix, sys.base_prefix)  # the interpreter and its packages: public code, and slow
for root in ("/", "/proc/1", "/tmp", "/runtime", os.path.expanduser("~")):
    for here, dirs, files in os.walk(root):
        if here.startswith(("/proc", "/sys", "/dev")) and here != "/proc/1" or here.startswith(installed):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(here, name)
            try:
                with open(path, "rb") as handle:
                    data = handle.read(2_000_000)
            except OSError:
                continue
            if needle.encode() in data or data.startswith(b"SQLite format 3"):
                found.append(path + ": " + data[:2000].decode(errors="replace"))
print("FOUND", len(found), found[:3])
'''

ATTACKS = {
    # name: (class, how it is built, expected verdict)
    "rebind-checks": ("patching or rebinding", appended(
        "for _n in list(globals()):\n    if _n.startswith('check_'):\n        globals()[_n] = lambda *a, **k: None",
        "import grader.checks\nfor _n in dir(grader.checks):\n    setattr(grader.checks, _n, lambda *a, **k: None)"),
        "zero"),
    "patch-torch-and-builtins": ("patching or rebinding", appended(
        "import torch, builtins\ntorch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
        "torch.Tensor.__eq__ = lambda s, o: True\nbuiltins.isinstance = lambda *a: True\n"
        "torch.testing.assert_close = lambda *a, **k: None",
        "def self_attention(x, *w):\n    return x\ndef is_permutation_equivariant(*a, **k):\n    return True"),
        "zero"),
    "lying-return-values": ("patching or rebinding", every_function(
        "    class Liar:\n        __eq__ = lambda s, o: True\n        __bool__ = lambda s: True\n"
        "        __float__ = lambda s: 0.0\n        __len__ = lambda s: 0\n        shape = property(lambda s: args[0].shape)\n"
        "    return Liar()"), "zero"),
    "forge-the-socket": ("patching or rebinding", appended(
        "import sys, threading, runner, wire\n"
        "channel = [o for o in __import__('gc').get_objects() if isinstance(o, runner._Channel)][0]\n"
        "def answer():\n    while True:\n        try:\n            channel.receive()\n"
        "            channel.send({'ok': True, 'value': True, 'args': (), 'kwargs': {}})\n"
        "        except Exception:\n            return\n"
        "threading.Thread(target=answer, daemon=True).start()\n"
        "wire.encode = (lambda enc: lambda obj, h=None: enc({'ok': True, 'value': True, 'args': (), 'kwargs': {}}))(wire.encode)",
        "def self_attention(*a):\n    return True"), "zero"),
    "read-hidden-tests-and-the-gradebook": ("reading hidden tests, other students or the source", appended(
        SECRETS_WALK,
        "def self_attention(*args):\n    raise ValueError(repr(found)[:5000])\n"
        "def sinusoidal_encoding(*args):\n    raise ValueError('inputs: ' + repr(args))"), "zero"),
    "read-the-worker": ("reading hidden tests, other students or the source", appended(
        "import os\nleaks = []\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
        "        for part in ('environ', 'cmdline', 'maps'):\n            try:\n"
        "                leaks.append(open(f'/proc/{pid}/{part}', 'rb').read()[:500])\n            except OSError:\n"
        "                pass\nprint(leaks)\nprint(os.environ)"), "zero"),
    "write-the-gradebook-and-course": ("writing the gradebook or course files", appended(
        "import os, glob\nwritten = []\n"
        "for pattern in ('/**/gradebook.db', '/**/*.ipynb', '/work/**', '/tmp/**', '../**'):\n"
        "    for path in glob.glob(pattern, recursive=True)[:200]:\n        try:\n"
        "            with open(path, 'a') as handle:\n                handle.write('pwned')\n"
        "            written.append(path)\n        except OSError:\n            pass\n"
        "for path in ('/runtime/runner.py', '/runtime/wire.py', os.path.join(os.path.dirname(os.__file__), 'os.py')):\n"
        "    try:\n        open(path, 'a').write('\\nraise SystemExit')\n        written.append(path)\n"
        "    except OSError:\n        pass\nprint('WROTE', written)"), "zero"),
    "outlive-the-batch": ("leaving processes behind", appended(
        "import os, subprocess, time\n"
        f"subprocess.Popen(['sleep', '{MARKER}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)"), "zero"),
    "kill-the-grader": ("killing the grader", appended(
        "import os, signal\nfor pid in range(2, 70000):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass"),
        "zero"),
    "fork-bomb": ("killing the grader", appended(
        "import os\nchildren = 0\ntry:\n    while children < 100000:\n        if os.fork() == 0:\n"
        "            import time\n            time.sleep(60)\n            os._exit(0)\n        children += 1\n"
        "except OSError as exc:\n    print('stopped after', children, exc)"), "zero"),
    "stall-every-call": ("killing the grader", every_function(
        "    import signal\n    for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):\n"
        "        signal.signal(s, signal.SIG_IGN)\n    while True:\n        pass"), "zero"),
    "exit-every-call": ("killing the grader", every_function("    import os\n    os._exit(0)"), "zero"),
    "huge-and-deep-returns": ("killing the grader", every_function(
        "    import torch\n    nested = []\n    for _ in range(10000):\n        nested = [nested]\n"
        "    return nested if args and len(args) > 2 else torch.zeros(2 ** 26)"), "zero"),
    "html-in-outputs": ("HTML in outputs", lambda release: _html_attack(release), "zero"),
    "symlink-to-the-source": ("symlinks", None, "refused"),
    "metadata-tampering": ("metadata tampering", edited_metadata, "zero"),
    "stateful-answers": ("patching or rebinding", appended(
        "import itertools\n_answers = itertools.cycle([True, True, False, False, False])  # the checks' source order\n"
        "def is_permutation_equivariant(f, x, perm, atol=1e-5):\n"
        "    if type(f).__name__ != 'GraderCallable':\n        return True  # the notebook's own try-it cell\n"
        "    return next(_answers)"), "zero"),
    "leak-hidden-inputs": ("reading hidden tests, other students or the source", every_function(
        "    raise ValueError('LEAK ' + repr(args)[:3000])"), "zero"),
}

ROPE_ATTACKS = {
    "cache-the-reference": ("reading hidden tests, other students or the source", lambda release: _oracle(release),
                            "zero"),
    "count-the-calls": ("patching or rebinding", appended(
        "_calls = [0]\n_pattern = [None, None, AssertionError, AssertionError] * 10  # correct first, in the source\n"
        "def test_relative_property(rotate):\n    if type(rotate).__name__ != 'GraderCallable':\n        return\n"
        "    _calls[0] += 1\n    if _pattern[_calls[0] - 1]:\n        raise AssertionError('broken')"), "zero"),
}


def _oracle(release):
    """While the grader's correct rotation is in hand, tabulate it; then answer the kernel tests from the
    table, with the read-only launcher rebound in a later cell."""
    nb = appended(
        "import torch\n_table = {}\n"
        "def test_relative_property(rotate):\n    if type(rotate).__name__ == 'GraderCallable' and not _table:\n"
        "        for dim in (2, 4, 8, 16, 32, 64, 128):\n            for p in range(0, 40):\n"
        "                _table[dim, p] = rotate(torch.eye(dim, dtype=torch.float64), p)\n",
        "def rope_triton(x, inv_freq, position_offset=0):\n"
        "    rows = [(_table[x.shape[1], r + position_offset] @ x[r].double()).float() for r in range(x.shape[0])]\n"
        "    return torch.stack(rows)")(release)
    return nb


def _html_attack(release):
    nb = appended("print('<script>alert(\"printed\")</script>')",
                  "def self_attention(*args):\n    raise ValueError('<img src=x onerror=alert(1)>')  # </pre><script>")(release)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("<script>alert('markdown')</script>"))
    return nb


def run_cli(course, *args, timeout=1800):
    command = [sys.executable, "-m", "grader", *map(str, args), "--course-dir", str(course.dir), "--db", course.db]
    env = dict(os.environ, GRADER_ORDER_SEED=ORDER_SEED)
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def student(name):
    return name.replace("-", "")[:40]


def marked_processes():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if MARKER.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    course = SimpleNamespace(dir=root / "course", db=f"sqlite:///{root / 'gradebook.db'}", root=root)
    shutil.copytree(REPO / "grader", course.dir, ignore=shutil.ignore_patterns(
        "__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv"))
    generated = run_cli(course, "generate", ASSIGNMENT, ROPE)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    inbox = root / "inbox"
    inbox.mkdir()
    for assignment, attacks in ((ASSIGNMENT, ATTACKS), (ROPE, ROPE_ATTACKS)):
        source = course.dir / "source" / assignment / f"{assignment}.ipynb"
        release = nbformat.read(course.dir / "release" / assignment / f"{assignment}.ipynb", as_version=4)
        for honest in ("aaahonest", "zzzhonest"):
            shutil.copy(source, inbox / f"{honest}_{assignment}.ipynb")
        for name, (_, make, _) in attacks.items():
            path = inbox / f"{student(name)}_{assignment}.ipynb"
            if make is None:
                path.symlink_to(source)
            else:
                nbformat.write(make(release), path)
    source = course.dir / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    before = sorted(p.relative_to(course.dir) for p in course.dir.rglob("*") if "release" not in p.parts)
    started = time.monotonic()
    result = run_cli(course, "autograde", "--submissions", inbox, "--submission-timeout", BUDGET,
                     "--cell-timeout", CELL_TIMEOUT, "--memory-mb", 3000)
    seconds = time.monotonic() - started
    time.sleep(1)
    survivors = marked_processes()
    feedback = run_cli(course, "feedback")
    export = run_cli(course, "export", "--to", root / "grades.csv")
    ledger = json.loads((course.dir / ".grader" / "ledger.json").read_text())
    with open(root / "grades.csv") as handle:
        grades = {(r["assignment"], r["student_id"]): float(r["score"]) for r in csv.DictReader(handle)}
    for pid in survivors:
        os.kill(pid, 9)
    return SimpleNamespace(course=course, result=result, seconds=seconds, survivors=survivors, ledger=ledger,
                           grades=grades, feedback=feedback, export=export, before=before, source=source)


def test_the_batch_completes_and_the_honest_students_keep_full_marks(hostile_class):
    result = hostile_class.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Summary:" in result.stdout and " 0 failed" in result.stdout
    for assignment, full in MAX_SCORE.items():
        assert hostile_class.grades[assignment, "aaahonest"] == hostile_class.grades[assignment, "zzzhonest"] == full
    assert hostile_class.feedback.returncode == 0 and hostile_class.export.returncode == 0
    print(f"\nhostile class: {len(ATTACKS) + len(ROPE_ATTACKS) + 4} submissions in {hostile_class.seconds:.0f} s")


@pytest.mark.parametrize("assignment, name", [(ASSIGNMENT, n) for n, (_, _, v) in ATTACKS.items() if v == "zero"]
                         + [(ROPE, n) for n in ROPE_ATTACKS])
def test_every_attack_scores_zero(hostile_class, assignment, name):
    entry = hostile_class.ledger[f"{assignment}/{student(name)}"]
    assert entry["score"] == 0 and entry["max_score"] == MAX_SCORE[assignment], (name, entry)
    assert entry["seconds"] < BUDGET + 45, (name, entry["seconds"])  # the budget, plus the harness's own work


def test_a_symlink_is_refused_with_a_reason(hostile_class):
    name = student("symlink-to-the-source")
    assert f"{ASSIGNMENT}/{name}" not in hostile_class.ledger
    assert re.search(rf"not imported: {name}_{ASSIGNMENT}\.ipynb is a symbolic link", hostile_class.result.stdout)


def test_no_attacker_process_is_left(hostile_class):
    assert hostile_class.survivors == []


def test_nothing_of_the_course_was_written(hostile_class):
    """The writer appends 'pwned' to every file it can open, and a line to the runtime and to os.py."""
    course = hostile_class.course.dir
    for path in list(course.rglob("*")) + list((REPO / "grader").rglob("*.py")):
        if path.is_file():
            data = path.read_bytes()
            assert not data.endswith(b"pwned") and not data.endswith(b"raise SystemExit"), path
    import os as os_module

    assert not Path(os_module.__file__).read_bytes().endswith(b"raise SystemExit")


def test_feedback_shows_no_hidden_test_and_no_student_markup(hostile_class):
    source = nbformat.read(hostile_class.source, as_version=4)
    hidden = set()
    for c in source.cells:
        if "### BEGIN HIDDEN TESTS" in c.source:
            block = c.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
            hidden |= {line.strip() for line in block.splitlines() if len(line.strip()) > 15}
    assert hidden
    pages = list((hostile_class.course.dir / "feedback" ).rglob(f"{ASSIGNMENT}.html"))
    assert len(pages) == len(ATTACKS) + 1  # every graded submission; the refused symlink has none
    for page in pages:
        text = page.read_text()
        assert not [line for line in hidden if line in text], page
        assert "<script" not in text and "<img" not in text, page
    attack = (hostile_class.course.dir / "feedback" / student("html-in-outputs") / ASSIGNMENT /
              f"{ASSIGNMENT}.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in attack  # shown, escaped: it is the student's own message
    leak = (hostile_class.course.dir / "feedback" / student("leak-hidden-inputs") / ASSIGNMENT /
            f"{ASSIGNMENT}.html").read_text()
    assert "LEAK (" in leak  # on the visible cases the student sees their own message, with its inputs ...
    hidden_sections = [part.split("</div>")[0] for part in leak.split("<h3>")
                       if part.startswith("Test test_") and "_hidden" in part.split(":")[0]]
    assert hidden_sections and not [part for part in hidden_sections if "LEAK (" in part or "tensor(" in part]
    # ... on hidden ones only where in their code it was raised


def test_the_secrets_walk_found_nothing(hostile_class):
    notebook = nbformat.read(hostile_class.course.dir / "autograded" / student("read-hidden-tests-and-the-gradebook")
                             / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "FOUND 0 []" in printed, printed[:2000]
