"""What the CLI does to a submission before any of its code runs: import, find, read, stage. No sandbox here."""

import json
import os
import time

import nbformat
import pytest

from grader import intake

SOLUTION_META = {"grade": False, "grade_id": "f", "locked": False, "schema_version": 3, "solution": True,
                 "task": False}


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


def write(path, nb):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


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
    nb, problem = intake.read_notebook(path)
    assert nb is None and words in problem


def test_a_symlink_or_a_fifo_is_never_read(tmp_path):
    secret = write(tmp_path / "secret.ipynb", notebook(code("hidden = 1")))
    link = tmp_path / "a.ipynb"
    link.symlink_to(secret)
    assert intake.read_notebook(link) == (None, intake.read_notebook(link)[1])
    assert "symbolic link" in intake.refusal(link)
    fifo = tmp_path / "b.ipynb"
    os.mkfifo(fifo)
    assert "not a regular file" in intake.refusal(fifo)
    nb, problem = intake.read_notebook(fifo)  # returns at once: O_NONBLOCK, then not a regular file
    assert nb is None and problem


def test_a_hard_link_and_a_notebook_of_too_many_cells_are_refused(tmp_path):
    source = write(tmp_path / "source.ipynb", notebook(code("solution")))
    os.link(source, tmp_path / "a.ipynb")
    assert "hard link" in intake.refusal(tmp_path / "a.ipynb")
    many = write(tmp_path / "many.ipynb", notebook(*[nbformat.v4.new_markdown_cell("") for _ in range(1500)]))
    nb, problem = intake.read_notebook(many)
    assert nb is None and "1500 cells, more than the 1000 allowed" in problem


def test_a_renamed_notebook_is_found_and_noted(tmp_path):
    folder = tmp_path / "sub"
    write(folder / "part1_foundations (1).ipynb", notebook(code("x = 1", "setup")))
    located = intake.locate_notebook(folder, "part1_foundations", {"setup"})
    assert located.path.name == "part1_foundations (1).ipynb"
    assert "renamed notebook" in located.notes[-1]
    (folder / "part1_foundations (1).ipynb").unlink()
    (folder / "notes.txt").write_text("hi")
    located = intake.locate_notebook(folder, "part1_foundations", {"setup"})
    assert located.path is None and "no notebook in the submission" in located.problem and "notes.txt" in located.problem


def test_the_expected_name_as_a_symlink_is_refused(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    source = write(tmp_path / "source.ipynb", notebook(code("def f(): pass", "f")))
    (folder / "part3_rope.ipynb").symlink_to(source)
    located = intake.locate_notebook(folder, "part3_rope", {"f"})
    assert located.path is None and "symbolic link" in located.problem


def test_among_several_notebooks_the_one_with_the_assignment_cells_wins(tmp_path):
    write(tmp_path / "scratch.ipynb", notebook(code("scratch")))
    write(tmp_path / "mine.ipynb", notebook(code("x", "f"), code("t", "test_f")))
    located = intake.locate_notebook(tmp_path, "part1_foundations", {"f", "test_f"})
    assert located.path.name == "mine.ipynb" and "chosen among 2" in located.notes[-1]


# -------------------------------------------------------------------------------------------- importing


def test_flat_file_names_are_parsed():
    assignments = ["part1_foundations", "part3_rope"]
    assert intake.flat_name("alice_part3_rope", assignments) == ("alice", "part3_rope")
    assert intake.flat_name("part1_foundations_bob.smith", assignments) == ("bob.smith", "part1_foundations")
    assert intake.flat_name("carol_part3_rope (2)", assignments) == ("carol", "part3_rope")
    assert intake.flat_name("part3_rope", assignments) is None
    assert intake.flat_name("homework", assignments) is None
    assert intake.flat_name("../x_part3_rope", assignments) is None


def test_import_takes_both_layouts_and_reports_unknown_files(tmp_path):
    inbox, submitted = tmp_path / "inbox", tmp_path / "submitted"
    write(inbox / "alice" / "part3_rope" / "part3_rope.ipynb", notebook(code("a")))
    write(inbox / "bob_part3_rope.ipynb", notebook(code("b")))
    write(inbox / "homework.ipynb", notebook(code("c")))
    imported, problems = intake.import_submissions(submitted, inbox, ["part3_rope"])
    assert sorted(imported) == ["part3_rope/alice", "part3_rope/bob"]
    assert (submitted / "bob" / "part3_rope" / "part3_rope.ipynb").is_file()
    assert len(problems) == 1 and "homework.ipynb" in problems[0]
    assert intake.import_submissions(submitted, inbox, ["part3_rope"])[0] == []  # unchanged: nothing re-imported


def test_import_refuses_links_fifos_and_unsafe_ids(tmp_path):
    inbox, submitted = tmp_path / "inbox", tmp_path / "submitted"
    secret = write(tmp_path / "course" / "source.ipynb", notebook(code("solution")))
    inbox.mkdir()
    (inbox / "mallory_part3_rope.ipynb").symlink_to(secret)
    write(inbox / "trent" / "elsewhere.ipynb", notebook(code("x")))
    (inbox / "trent" / "part3_rope").symlink_to(secret.parent)
    write(inbox / "oscar" / "part3_rope" / "real.ipynb", notebook(code("x")))
    (inbox / "oscar" / "part3_rope" / "part3_rope.ipynb").symlink_to(secret)
    os.mkfifo(inbox / "peggy_part3_rope.ipynb")
    write(inbox / "bad id!" / "part3_rope" / "part3_rope.ipynb", notebook(code("x")))
    imported, problems = intake.import_submissions(submitted, inbox, ["part3_rope"])
    assert imported == ["part3_rope/oscar"]  # only oscar's real notebook
    text = "\n".join(problems)
    for words in ("mallory_part3_rope.ipynb is a symbolic link", "trent/part3_rope is a symbolic link",
                  "oscar/part3_rope/part3_rope.ipynb is a symbolic link", "peggy_part3_rope.ipynb is not a regular file",
                  "bad id!: not a usable student id"):
        assert words in text, text
    copied = (submitted / "oscar" / "part3_rope" / "part3_rope.ipynb")
    assert not copied.is_symlink() and "solution" not in copied.read_text()


def test_a_timestamp_in_the_inbox_is_the_students_and_is_ignored(tmp_path):
    inbox, submitted = tmp_path / "inbox", tmp_path / "submitted"
    write(inbox / "alice" / "part3_rope" / "part3_rope.ipynb", notebook(code("a")))
    (inbox / "alice" / "part3_rope" / "timestamp.txt").write_text("2099-01-01 00:00:00")
    imported, problems = intake.import_submissions(submitted, inbox, ["part3_rope"])
    assert imported == ["part3_rope/alice"] and not (submitted / "alice" / "part3_rope" / "timestamp.txt").exists()
    assert any("timestamp.txt: ignored" in p for p in problems)


def test_of_several_notebooks_the_newest_is_graded_and_the_others_are_listed(tmp_path):
    inbox, submitted = tmp_path / "inbox", tmp_path / "submitted"
    old = write(inbox / "alice_part3_rope.ipynb", notebook(code("old = 1")))
    new = write(inbox / "alice_part3_rope (1).ipynb", notebook(code("new = 1")))
    os.utime(old, (time.time() - 100, time.time() - 100))
    imported, problems = intake.import_submissions(submitted, inbox, ["part3_rope"])
    assert imported == ["part3_rope/alice"]
    assert "new = 1" in (submitted / "alice" / "part3_rope" / "part3_rope.ipynb").read_text()
    assert any("2 notebooks; imported the newest, alice_part3_rope (1).ipynb; not graded: alice_part3_rope.ipynb" in p
               for p in problems), problems


# -------------------------------------------------------------------------------------------- staging


def cells():
    return {
        "setup": intake.SourceCell("setup", "code", "import torch", ("sum-setup",), False, None),
        "f": intake.SourceCell("f", "code", "def f(): raise NotImplementedError()", (), False, None, locked=False,
                               metadata={"nbgrader": dict(SOLUTION_META)}),
        "test_f": intake.SourceCell("test_f", "code", "check(f)\n### BEGIN HIDDEN TESTS\ncheck(f, 2)\n### END HIDDEN "
                                    "TESTS", ("sum-f",), True, 2.0),
        "g": intake.SourceCell("g", "code", "def g(): raise NotImplementedError()", (), False, None, locked=False,
                               metadata={"nbgrader": dict(SOLUTION_META, grade_id="g")}),
        "test_g": intake.SourceCell("test_g", "code", "check(g)", ("sum-g",), True, 1.0),
    }


ORDER = ["setup", "f", "test_f", "g", "test_g"]


def ids(nb):
    return [c.metadata.get("nbgrader", {}).get("grade_id", c.source) for c in nb.cells]


def test_deleted_test_cells_go_back_after_their_function_and_run_outside():
    nb = notebook(code("import torch", "setup"), code("def f(): return 1", "f", solution=True),
                  code("def g(): return 2", "g", solution=True))
    staged = intake.stage(nb, ORDER, cells(), notebook())
    assert ids(staged.notebook) == ["setup", "f", "test_f", "g", "test_g"]
    assert "deleted test cell test_f: restored from the gradebook" in staged.notes
    assert staged.tests == [("test_f", cells()["test_f"].source), ("test_g", "check(g)")]
    assert [source for _, source in staged.cells] == ["import torch", "def f(): return 1", "def g(): return 2",
                                                      "import torch"]  # read-only cells run again, last
    assert staged.cells[-1][0].endswith("-again")
    nbformat.validate(staged.notebook)


def test_metadata_tampering_is_undone():
    """Points, grade flags and grade ids come from the gradebook; a student's own cell loses its metadata."""
    greedy = code("def f(): return 1", "f", solution=True, grade=True, points=100.0)
    fake_test = code("pass", "test_f", grade=True, points=50.0, locked=False)  # a test cell rewritten
    mine = code("x = 1", "bonus", grade=True, points=1000.0)
    twin = code("def g(): return 'twin'", "f", solution=True)  # a duplicate grade id
    staged = intake.stage(notebook(greedy, fake_test, mine, twin), ORDER, cells(), notebook())
    meta = [c.metadata.get("nbgrader", {}) for c in staged.notebook.cells]
    f_cell = next(m for m in meta if m.get("grade_id") == "f")
    assert f_cell == SOLUTION_META  # the release's metadata, not the student's
    test_cell = next(c for c in staged.notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_f")
    assert test_cell.source == cells()["test_f"].source and test_cell.metadata["nbgrader"]["points"] == 2.0
    assert not any(m.get("grade_id") == "bonus" for m in meta)
    assert sum(1 for m in meta if m.get("grade_id") == "f") == 1
    assert "edited test cell test_f: restored from the gradebook" in staged.notes
    assert "def g(): return 'twin'" in [source for _, source in staged.cells]  # still run, as the student's code


def test_student_markdown_is_never_rendered():
    nb = notebook(nbformat.v4.new_markdown_cell("<script>alert(1)</script>"), code("def f(): return 1", "f"))
    staged = intake.stage(nb, ORDER, cells(), notebook())
    script = next(c for c in staged.notebook.cells if "<script>" in c.source)
    assert script.cell_type == "raw"
    assert not [c for c in staged.notebook.cells if c.cell_type == "markdown"]


def test_a_notebook_rebuilt_without_metadata_gets_every_locked_cell_after_the_student_code():
    staged = intake.stage(notebook(code("def f(): ..."), code("def g(): ...")), ORDER, cells(), notebook())
    assert ids(staged.notebook) == ["def f(): ...", "def g(): ...", "setup", "test_f", "test_g"]
