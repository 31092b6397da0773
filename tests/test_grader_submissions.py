"""What the CLI does to a submission before running it: find, read, scan, restore, import. No kernels here."""

import json

import nbformat
import pytest

from grader import cli
from grader import submissions as subs
from grader.course import Course

REPO_GRADER = cli.REPO_ROOT / "grader"


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def code(source, grade_id=None, **nbgrader):
    cell = nbformat.v4.new_code_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3, "grade": False, "solution": False,
                                     "locked": False, "task": False, **nbgrader}
    return cell


# -------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("content, words", [
    (b"", "empty (0 bytes)"),
    (b"   \n", "only whitespace"),
    (b'{"cells": [ this is not json', "not valid JSON (line 1, column 13)"),
    (b'{"hello": 1}', "not a Jupyter notebook"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode(), "has no cells"),
])
def test_unreadable_notebooks_get_a_reason(tmp_path, content, words):
    path = tmp_path / "a.ipynb"
    path.write_bytes(content)
    nb, problem = subs.read_notebook(path)
    assert nb is None and words in problem


def test_a_renamed_notebook_is_found_and_noted(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    nbformat.write(notebook(code("x = 1", "setup")), folder / "part1_foundations (1).ipynb")
    located = subs.locate_notebook(folder, "part1_foundations", {"setup"})
    assert located.path.name == "part1_foundations (1).ipynb"
    assert "renamed notebook" in located.notes[0]
    (folder / "part1_foundations (1).ipynb").unlink()
    (folder / "notes.txt").write_text("hi")
    located = subs.locate_notebook(folder, "part1_foundations", {"setup"})
    assert located.path is None and "no notebook in the submission" in located.problem and "notes.txt" in located.problem


def test_among_several_notebooks_the_one_with_the_assignment_cells_wins(tmp_path):
    nbformat.write(notebook(code("scratch")), tmp_path / "scratch.ipynb")
    nbformat.write(notebook(code("x", "f"), code("t", "test_f")), tmp_path / "mine.ipynb")
    located = subs.locate_notebook(tmp_path, "part1_foundations", {"f", "test_f"})
    assert located.path.name == "mine.ipynb" and "chosen among 2" in located.notes[0]


# -------------------------------------------------------------------------------------------- scanning


@pytest.mark.parametrize("source, words", [
    ("import solutions", "imports the reference implementation"),
    ("from solutions.rope import apply_rope", "imports the reference implementation"),
    ("from grader import references", "imports the grader"),
    ("f = check_apply_rope.__globals__", "__globals__"),
    ("__import__('sol' + 'utions')", "__import__"),
    ("import importlib\nm = importlib.import_module('solutions')", "importlib"),
    ("exec(open('x').read())", "exec"),
    ("text = open('../../source/part3_rope/part3_rope.ipynb').read()", "outside its folder"),
    ("import pathlib\npathlib.Path('/etc/passwd').read_text()", "outside its folder"),
    ("open('gradebook.db', 'rb')", "outside its folder"),
    ("import torch\ntorch.load('~/weights.pt')", "outside its folder"),
    ("import os\nos.chdir('..')", "os.chdir"),
    ("import os\nos.system('ls')", "os.system"),
    ("!cat ../../source/*/*.ipynb", "shell command"),
    ("%run ../helper.py", "shell command or file magic"),
    ("import subprocess", "runs other programs"),
    ("import sys\nsys.modules['torch']", "sys.modules"),
])
def test_the_static_scan_flags(source, words):
    findings = subs.scan_student_code(notebook(code(source, "f", solution=True)), set())
    blocking = [f for f in findings if f.severity == "withhold"]
    assert blocking and any(words in f.what for f in blocking), findings
    assert blocking[0].cell == "f" and blocking[0].line >= 1


@pytest.mark.parametrize("source", [
    "import torch, math\ndef f(x):\n    return torch.cos(x) * math.pi",
    "model.eval()\ny = torch.compile",
    "print('my solutions are here')",
    "import os\nos.kill(os.getpid(), 9)",  # sabotage is contained by the grading process, not flagged
    "os._exit(1)",
    "while True:\n    pass",
    "with open('notes.txt', 'w') as f:\n    f.write('inside my folder')",
])
def test_the_static_scan_leaves_ordinary_code_alone(source):
    findings = subs.scan_student_code(notebook(code(source)), set())
    assert not [f for f in findings if f.severity == "withhold"], findings


def test_the_scan_skips_locked_cells_and_warns_on_computed_paths_and_syntax_errors():
    nb = notebook(code("import solutions", "test_f", grade=True, locked=True), code("open(name)"), code("def f(:"))
    findings = subs.scan_student_code(nb, {"test_f"})
    assert [f.severity for f in findings] == ["warning", "warning"]
    assert "computed at run time" in findings[0].what and "cannot be parsed" in findings[1].what


# -------------------------------------------------------------------------------------------- restoring


def locked_cells():
    return {
        "setup": subs.SourceCell("setup", "code", "import torch", ("sum-setup",), False, None),
        "test_f": subs.SourceCell("test_f", "code", "check(f)", ("sum-f",), True, 2.0),
        "test_g": subs.SourceCell("test_g", "code", "check(g)", ("sum-g",), True, 1.0),
    }


ORDER = ["setup", "f", "test_f", "g", "test_g"]


def ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id", c.source) for c in nb.cells]


def test_deleted_test_cells_go_back_after_their_function():
    nb = notebook(code("import torch", "setup"), code("def f(): ...", "f"), code("def g(): ...", "g"))
    notes = subs.restore_locked_cells(nb, ORDER, locked_cells())
    assert ids(nb) == ["setup", "f", "test_f", "g", "test_g"]
    assert notes[-2:] == ["deleted test cell test_f: restored from the gradebook",
                          "deleted test cell test_g: restored from the gradebook"]
    restored = nb.cells[2]
    assert restored.metadata["nbgrader"]["points"] == 2.0 and restored.metadata["nbgrader"]["locked"]
    nbformat.validate(nb)


def test_a_notebook_rebuilt_without_metadata_gets_every_locked_cell_after_the_student_code():
    nb = notebook(code("def f(): ..."), code("def g(): ..."))
    subs.restore_locked_cells(nb, ORDER, locked_cells())
    assert ids(nb) == ["def f(): ...", "def g(): ...", "setup", "test_f", "test_g"]


def test_edited_locked_cells_are_noted():
    nb = notebook(code("import torch", "setup"), code("def f(): ...", "f"), code("pass  # edited", "test_f"),
                  code("def g(): ...", "g"), code("check(g)", "test_g"))
    from nbgrader.utils import compute_checksum

    cells = locked_cells()
    for gid in ("setup", "test_g"):
        index = ids(nb).index(gid)
        nb.cells[index].metadata["nbgrader"].update(grade=gid.startswith("test"), locked=True)
        if gid.startswith("test"):
            nb.cells[index].metadata["nbgrader"]["points"] = 1.0
        cells[gid].checksums = (compute_checksum(nb.cells[index]),)
    nb.cells[2].metadata["nbgrader"].update(grade=True, locked=True, points=2.0)
    notes = subs.restore_locked_cells(nb, ORDER, cells)
    assert notes == ["edited test cell test_f: restored from the gradebook"]


# -------------------------------------------------------------------------------------------- importing


def test_flat_file_names_are_parsed():
    assignments = ["part1_foundations", "part3_rope"]
    assert cli._flat_name("alice_part3_rope", assignments) == ("alice", "part3_rope")
    assert cli._flat_name("part1_foundations_bob.smith", assignments) == ("bob.smith", "part1_foundations")
    assert cli._flat_name("carol_part3_rope (2)", assignments) == ("carol", "part3_rope")
    assert cli._flat_name("part3_rope", assignments) is None
    assert cli._flat_name("homework", assignments) is None


def test_import_takes_both_layouts_and_reports_unknown_files(tmp_path):
    course_dir = tmp_path / "course"
    course_dir.mkdir()
    (course_dir / "nbgrader_config.py").write_text((REPO_GRADER / "nbgrader_config.py").read_text())
    incoming = tmp_path / "incoming"
    (incoming / "alice" / "part3_rope").mkdir(parents=True)
    (incoming / "alice" / "part3_rope" / "part3_rope.ipynb").write_text("{}")
    (incoming / "bob_part3_rope.ipynb").write_text("{}")
    (incoming / "homework.ipynb").write_text("{}")
    course = Course.open(course_dir)
    imported, problems = cli.import_submissions(course, incoming, ["part3_rope"])
    assert sorted(imported) == ["part3_rope/alice", "part3_rope/bob"]
    assert (course_dir / "submitted" / "bob" / "part3_rope" / "part3_rope.ipynb").is_file()
    assert len(problems) == 1 and "homework.ipynb" in problems[0]
    assert cli.import_submissions(course, incoming, ["part3_rope"])[0] == []  # unchanged: nothing re-imported
