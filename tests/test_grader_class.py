"""A simulated class graded end to end through the instructor CLI (``python -m grader``).

One session builds a temporary copy of the course, generates every assignment, and autogrades one batch, one
submission at a time (``--workers 1``):

* ``ada`` submits the source solutions of every assignment (full marks expected);
* ``bo`` submits the untouched release of every assignment (0 expected, graded without error);
* on ``part3_rope`` only, the bad-submission zoo, as a flat zip-collect folder of ``<student>_part3_rope.ipynb``:
  ``carol`` swaps the RoPE layouts, ``dave`` loops forever in a cell, ``erin`` ends its own process, ``frank``
  deletes a test cell, ``grace`` hands in corrupt JSON, ``heidi`` imports ``solutions`` (which is not in the
  sandbox), and ``ivan`` runs past the memory limit and floods the output.

Each submission starts a sandbox and imports torch there, so grading is the slow part of the suite: the zoo
runs on one assignment only, and every test below reads the results of that one batch. The attacks of a
hostile class are in ``tests/test_grader_adversarial.py``. The same class is graded once more with three
workers, and its part on a Dask cluster: both must give exactly the serial batch's grades. The repository tree is never
written to: the course is a copy, and the gradebook is a separate SQLite file given with ``--db``.
"""

import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ["part1_foundations", "part2_relative", "part3_rope", "part4_mla", "part5_extrapolation", "part6_lab",
               "part7_multimodal"]
ZOO = "part3_rope"
ZOO_SIZE = 7  # carol .. ivan
SUBMISSIONS = 2 * len(ASSIGNMENTS) + ZOO_SIZE  # ada and bo hand in every assignment
CELL_TIMEOUT = 10
MEMORY_MB = 3000
LAYOUT_TESTS = {f"test_apply_rope_{kind}_{part}" for kind in ("half_split", "interleaved", "partial")
                for part in ("visible", "hidden")}


def run_cli(course, *args, timeout=1200):
    command = [sys.executable, "-m", "grader", *map(str, args), "--course-dir", str(course.dir), "--db", course.db]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


GENERATED = ("release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "grades.csv",
             "grading_report.csv")


def grader_tree():
    """What nbgrader or the CLI could have written into the repository's course folder."""
    return sorted(name for name in GENERATED if (REPO / "grader" / name).exists())


def cell(nb, grade_id):
    return next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id)


def points(assignment):
    nb = nbformat.read(REPO / "grader" / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in nb.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade")}


def zoo(source):
    """The bad submissions, each made from the source solutions with one thing wrong."""
    def edited(grade_id, change):
        nb = nbformat.from_dict(json.loads(json.dumps(source)))
        target = cell(nb, grade_id)
        target.source = change(target.source)
        return nb

    def swap_layouts(src):
        return (src.replace("if interleaved:\n        first", "if not interleaved:\n        first")
                   .replace("if interleaved:\n        rotated", "if not interleaved:\n        rotated"))

    deleted = nbformat.from_dict(json.loads(json.dumps(source)))
    deleted.cells = [c for c in deleted.cells
                     if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_apply_rope_half_split_visible"]
    chaos = edited("rope_inv_freq", lambda s: s + "\n\n_big = torch.empty(2 ** 30)  # 4 GiB: past the memory limit\n")
    cell(chaos, "permute_qk_weight_to_half_split").source += "\n\nfor _ in range(20000):\n    print('x' * 100)\n"
    return {
        "carol": edited("apply_rope", swap_layouts),
        "dave": edited("rope_cos_sin", lambda s: "import time\nwhile True:\n    time.sleep(0.05)\n\n" + s),
        "erin": edited("permute_qk_weight_to_half_split", lambda s: "import os\nos._exit(1)\n\n" + s),
        "frank": deleted,
        "grace": '{"cells": [{"cell_type": "code", "source": "def apply_rope(',
        "heidi": edited("rope_inv_freq", lambda s: "from solutions import rope_inv_freq\n"),
        "ivan": chaos,
    }


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    course_dir = root / "course"
    shutil.copytree(REPO / "grader", course_dir, ignore=shutil.ignore_patterns(
        "__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv"))
    course = SimpleNamespace(dir=course_dir, db=f"sqlite:///{root / 'class_gradebook.db'}", root=root,
                             repo_tree=grader_tree())
    generated = run_cli(course, "generate")
    assert generated.returncode == 0, generated.stdout + generated.stderr
    course.generate_output = generated.stdout
    course.generated = root / "generated"  # the course as generated, before any grading: for other batches
    shutil.copytree(course_dir, course.generated / "course")
    shutil.copy(root / "class_gradebook.db", course.generated / "gradebook.db")
    return course


def fresh_copy(course, name):
    """A copy of the generated course (and its gradebook), not graded yet, as a course for `run_cli`."""
    folder = course.root / name
    shutil.copytree(course.generated, folder)
    return SimpleNamespace(dir=folder / "course", db=f"sqlite:///{folder / 'gradebook.db'}", root=folder)


def read_gradebook(course):
    from grader.course import Course

    scores = {}
    with Course(course.dir, course.db).gradebook() as gb:
        for assignment in ASSIGNMENTS:
            for submission in gb.assignment_submissions(assignment):
                scores[(assignment, submission.student_id)] = {
                    g.name: g.score for nb in submission.notebooks for g in nb.grades}
    return scores


@pytest.fixture(scope="session")
def graded(course):
    incoming = course.root / "incoming"
    for assignment in ASSIGNMENTS:
        for student, kind in (("ada", "source"), ("bo", "release")):
            folder = incoming / student / assignment
            folder.mkdir(parents=True)
            shutil.copy(course.dir / kind / assignment / f"{assignment}.ipynb", folder)
    source = nbformat.read(course.dir / "source" / ZOO / f"{ZOO}.ipynb", as_version=4)
    for student, nb in zoo(source).items():
        path = incoming / f"{student}_{ZOO}.ipynb"
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            nbformat.write(nb, path)
    shutil.copytree(incoming, course.root / "incoming-as-handed-in")  # a later test edits the inbox
    started = time.monotonic()
    result = run_cli(course, "autograde", "--submissions", incoming, "--cell-timeout", CELL_TIMEOUT,
                     "--memory-mb", MEMORY_MB, "--workers", 1)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    feedback = run_cli(course, "feedback", ZOO)
    assert feedback.returncode == 0, feedback.stdout + feedback.stderr
    export = run_cli(course, "export", "--to", course.root / "export" / "grades.csv")
    assert export.returncode == 0, export.stdout + export.stderr

    gradebook = read_gradebook(course)
    ledger = json.loads((course.dir / ".grader" / "ledger.json").read_text())
    return SimpleNamespace(stdout=result.stdout, seconds=seconds, gradebook=gradebook, ledger=ledger,
                           incoming=incoming, feedback=feedback.stdout, export=export.stdout)


def entry(graded, assignment, student):
    return graded.ledger[f"{assignment}/{student}"]


def lost(graded, assignment, student):
    """The test cells that scored less than their points."""
    scores = graded.gradebook[(assignment, student)]
    return {name for name, full in points(assignment).items() if scores[name] < full}


def feedback_text(course, student):
    page = (course.dir / "feedback" / student / ZOO / f"{ZOO}.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", page))


# ---------------------------------------------------------------------------------------------------------


def test_generate_reports_every_assignment(course):
    for assignment in ASSIGNMENTS:
        assert re.search(rf"^{assignment}: \d+ test cells, \d+ points", course.generate_output, re.M)
        assert (course.dir / "release" / assignment / f"{assignment}.ipynb").is_file()


def test_the_batch_completes_with_a_line_per_submission_and_a_summary(graded):
    lines = re.findall(r"^\[\s*(\d+)/(\d+)\] (\S+) / (\S+): (\w+)", graded.stdout, re.M)
    assert len(lines) == SUBMISSIONS
    assert {status for *_, status in lines} <= {"graded", "zeroed"}
    summary = re.search(r"Summary: (\d+) submission\(s\): (\d+) graded, (\d+) zeroed .*?, (\d+) failed", graded.stdout)
    assert summary and summary.groups() == (str(SUBMISSIONS), str(SUBMISSIONS - 1), "1", "0")  # grace zeroed
    assert re.search(r"submissions per minute", graded.stdout)
    print(f"\nsimulated class: {SUBMISSIONS} submissions graded in {graded.seconds:.0f} s "
          f"({60 * SUBMISSIONS / graded.seconds:.1f} per minute)")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_source_solutions_score_full_marks(graded, assignment):
    record = entry(graded, assignment, "ada")
    assert record["status"] == "graded" and record["score"] == record["max_score"] == sum(points(assignment).values())
    assert not lost(graded, assignment, "ada")


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_untouched_release_scores_zero_without_error(course, graded, assignment):
    record = entry(graded, assignment, "bo")
    assert record["status"] == "graded" and record["score"] == 0 and record["max_score"] > 0
    assert not record["notes"], record["notes"]  # nothing deleted, edited, flagged, timed out or killed
    autograded = nbformat.read(course.dir / "autograded" / "bo" / assignment / f"{assignment}.ipynb", as_version=4)
    setup = cell(autograded, "setup")
    assert not [o for o in setup.outputs if o.output_type == "error"], "the checks could not be imported"
    errors = [o.evalue for c in autograded.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade")
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and all("not implemented yet" in e for e in errors)


def test_a_wrong_layout_loses_exactly_the_layout_tests_and_the_feedback_says_so(course, graded):
    assert lost(graded, ZOO, "carol") == LAYOUT_TESTS
    record = entry(graded, ZOO, "carol")
    assert record["score"] == record["max_score"] - sum(points(ZOO)[name] for name in LAYOUT_TESTS)
    text = feedback_text(course, "carol")
    assert "Wrong RoPE layout" in text and "half-split layout" in text and "interleaved layout" in text


def test_an_infinite_loop_is_stopped_by_the_cell_timeout_and_costs_only_its_function(graded):
    record = entry(graded, ZOO, "dave")
    assert record["status"] == "graded"
    assert any(note.startswith("cell stopped in rope_cos_sin: no answer within") for note in record["notes"]), \
        record["notes"]
    assert lost(graded, ZOO, "dave") == {"test_rope_cos_sin_visible", "test_rope_cos_sin_hidden"}


def test_a_process_that_ends_itself_is_restarted_and_costs_only_its_function(graded):
    record = entry(graded, ZOO, "erin")
    assert record["status"] == "graded"
    assert any(note.startswith("cell stopped in permute_qk_weight_to_half_split: the submission's process ended")
               for note in record["notes"]), record["notes"]
    assert lost(graded, ZOO, "erin") == {"test_permute_visible", "test_permute_hidden"}


def test_a_deleted_test_cell_is_restored_and_graded(graded):
    record = entry(graded, ZOO, "frank")
    assert "deleted test cell test_apply_rope_half_split_visible: restored from the gradebook" in record["notes"]
    assert record["score"] == record["max_score"]
    assert graded.gradebook[(ZOO, "frank")]["test_apply_rope_half_split_visible"] == 1


def test_a_corrupt_notebook_is_zeroed_with_a_reason(course, graded):
    grace = entry(graded, ZOO, "grace")
    assert grace["status"] == "zeroed" and grace["score"] == 0 and "not valid JSON" in grace["reason"]
    assert "not valid JSON" in feedback_text(course, "grace")
    assert set(graded.gradebook[(ZOO, "grace")]) == set(points(ZOO))  # zero, but a complete grade
    summary = graded.stdout.split("Summary:")[1]
    assert "zeroed  part3_rope/grace: the notebook is not valid JSON" in summary


def test_importing_the_reference_finds_nothing_and_costs_that_function(course, graded):
    assert lost(graded, ZOO, "heidi") == {"test_rope_inv_freq_visible", "test_rope_inv_freq_hidden"}
    autograded = nbformat.read(course.dir / "autograded" / "heidi" / ZOO / f"{ZOO}.ipynb", as_version=4)
    errors = [o.evalue for o in cell(autograded, "rope_inv_freq").outputs if o.output_type == "error"]
    assert errors == ["No module named 'solutions'"]


def test_runaway_memory_and_output_are_contained_and_recorded(course, graded):
    record = entry(graded, ZOO, "ivan")
    assert record["score"] == record["max_score"]
    assert any(note.startswith("memory in rope_inv_freq") for note in record["notes"]), record["notes"]
    assert any(note.startswith("output truncated in permute_qk_weight_to_half_split") for note in record["notes"])
    autograded = (course.dir / "autograded" / "ivan" / ZOO / f"{ZOO}.ipynb").stat().st_size
    assert autograded < 1_000_000  # 2 MB were printed


def test_feedback_never_shows_hidden_tests(course, graded):
    source = nbformat.read(course.dir / "source" / ZOO / f"{ZOO}.ipynb", as_version=4)
    hidden_lines = set()
    for c in source.cells:
        if "### BEGIN HIDDEN TESTS" in c.source:
            block = c.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0]
            hidden_lines |= {line.strip() for line in block.splitlines() if len(line.strip()) > 20}
    assert hidden_lines
    for student in ("ada", "carol", "grace"):
        text = feedback_text(course, student)
        assert "BEGIN HIDDEN TESTS" not in text
        assert not [line for line in hidden_lines if line in text]


def test_grades_are_exported(course, graded):
    with open(course.root / "export" / "grades.csv") as handle:
        rows = {(r["assignment"], r["student_id"]): r for r in csv.DictReader(handle)}
    for assignment in ASSIGNMENTS:
        assert float(rows[(assignment, "ada")]["score"]) == sum(points(assignment).values())
        assert float(rows[(assignment, "bo")]["score"]) == 0
    assert float(rows[(ZOO, "carol")]["score"]) == entry(graded, ZOO, "carol")["score"]
    with open(course.root / "export" / "grading_report.csv") as handle:
        report = {(r["assignment"], r["student"]): r for r in csv.DictReader(handle)}
    assert report[(ZOO, "grace")]["status"] == "zeroed" and "not valid JSON" in report[(ZOO, "grace")]["reason"]


def test_rerunning_grades_nothing_twice_and_regrades_a_changed_submission(course, graded):
    again = run_cli(course, "autograde", "--submissions", graded.incoming, "--cell-timeout", CELL_TIMEOUT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "imported 0 new or changed submission(s)" in again.stdout
    assert re.search(rf"{SUBMISSIONS} submission\(s\): 0 graded, 0 zeroed .*, 0 failed, {SUBMISSIONS} skipped",
                     again.stdout)
    heidi = graded.incoming / f"heidi_{ZOO}.ipynb"
    nb = nbformat.read(heidi, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("a second attempt"))
    nbformat.write(nb, heidi)
    third = run_cli(course, "autograde", ZOO, "--submissions", graded.incoming, "--cell-timeout", CELL_TIMEOUT)
    assert "imported 1 new or changed submission(s)" in third.stdout
    assert re.search(r"part3_rope / heidi: graded 19/21", third.stdout)
    assert re.search(r"9 submission\(s\): 1 graded, 0 zeroed .*, 0 failed, 8 skipped", third.stdout)


def test_a_student_runs_the_kit_in_jupyter_away_from_the_repository(course, tmp_path, monkeypatch):
    """`generate` packs a kit that runs in a Jupyter kernel from any folder: its `course_checks` is the kit's own,
    and the untouched notebook's visible check says "not implemented"."""
    from nbclient import NotebookClient

    zipfile.ZipFile(course.dir / "kits" / "part1_foundations.zip").extractall(tmp_path)
    folder = tmp_path / "part1_foundations"
    notebook = nbformat.read(folder / "part1_foundations.ipynb", as_version=4)
    probe = nbformat.v4.new_code_cell("import course_checks, sys\nprint(course_checks.__file__)\n"
                                      "print('solutions' in sys.modules or 'grader' in sys.modules)")
    notebook.cells = [cell(notebook, "setup"), probe, cell(notebook, "sinusoidal_encoding"),
                      cell(notebook, "test_sinusoidal_encoding_visible")]
    for name in ("PYTHONPATH", "PE_COURSE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    NotebookClient(notebook, timeout=300, allow_errors=True, resources={"metadata": {"path": str(folder)}}).execute()
    setup, probe, _, test = notebook.cells
    assert not [o for o in setup.outputs if o.output_type == "error"]
    where, imported_the_course = probe.outputs[0].text.split()
    assert where.startswith(str(folder / "course_checks")) and imported_the_course == "False"
    assert test.outputs[0].ename == "CheckFailed" and "not implemented yet" in test.outputs[0].evalue


def test_the_repository_tree_is_untouched(course, graded):
    assert grader_tree() == course.repo_tree
    assert not (course.dir / "gradebook.db").exists()  # everything went to the --db database


# ------------------------------------------------------------------------------------- parallel and Dask


PARALLEL_WORKERS = 3  # more than the 2 cores of the course machines: the batch must not depend on the cores


@pytest.fixture(scope="session")
def graded_in_parallel(course, graded):
    """The same class, handed in the same way, graded into a fresh copy of the generated course by
    ``PARALLEL_WORKERS`` workers (the zoo's hang, crash and memory blow-up among them)."""
    parallel = fresh_copy(course, "parallel")
    started = time.monotonic()
    result = run_cli(parallel, "autograde", "--submissions", course.root / "incoming-as-handed-in",
                     "--cell-timeout", CELL_TIMEOUT, "--memory-mb", MEMORY_MB, "--workers", PARALLEL_WORKERS)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    ledger = json.loads((parallel.dir / ".grader" / "ledger.json").read_text())
    return SimpleNamespace(stdout=result.stdout, seconds=seconds, gradebook=read_gradebook(parallel), ledger=ledger)


def ledger_outcome(entry):
    return {key: entry.get(key) for key in ("status", "score", "max_score", "reason", "notes", "sandbox")}


def test_parallel_grading_gives_the_serial_grades(graded, graded_in_parallel):
    assert graded_in_parallel.gradebook == graded.gradebook  # every test cell of every submission
    assert set(graded_in_parallel.ledger) == set(graded.ledger)
    for key, entry in graded.ledger.items():
        assert ledger_outcome(graded_in_parallel.ledger[key]) == ledger_outcome(entry), key
    print(f"\nsimulated class: {SUBMISSIONS} submissions in {graded.seconds:.0f} s with one worker, "
          f"{graded_in_parallel.seconds:.0f} s with {PARALLEL_WORKERS}")


def test_a_parallel_batch_numbers_each_submission_once_and_sums_up_the_same(graded, graded_in_parallel):
    assert f"grading {SUBMISSIONS} submission(s) with {PARALLEL_WORKERS} worker(s)" in graded_in_parallel.stdout
    def numbered(stdout):  # lines come in the order the submissions finish
        lines = re.findall(r"^\[\s*(\d+)/(\d+)\] (\S+) / (\S+): (\w+)", stdout, re.M)
        return sorted(lines, key=lambda line: int(line[0]))
    lines = numbered(graded_in_parallel.stdout)
    assert [int(number) for number, *_ in lines] == list(range(1, SUBMISSIONS + 1))
    assert lines == numbered(graded.stdout)  # the same number, and status, for the same submission

    def summary(stdout):
        return stdout.split("Summary:")[1].split("\n")[0]
    assert summary(graded_in_parallel.stdout) == summary(graded.stdout)


def test_a_dask_cluster_grades_like_the_local_run(course, graded, monkeypatch):
    """A local Dask cluster of two worker processes grades part of the class (an honest and an empty
    submission, and carol's wrong layout): the grades are the serial batch's, and the CLI recorded them."""
    distributed = pytest.importorskip("distributed")
    cluster_course = fresh_copy(course, "dask")
    handed_in = course.root / "incoming-as-handed-in"
    inbox = course.root / "dask-inbox"
    for student in ("ada", "bo"):
        shutil.copytree(handed_in / student / "part2_relative", inbox / student / "part2_relative")
    shutil.copy(handed_in / f"carol_{ZOO}.ipynb", inbox)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p]))  # the workers import the course's grader from this checkout
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        result = run_cli(cluster_course, "autograde", "--submissions", inbox, "--cell-timeout", CELL_TIMEOUT,
                         "--memory-mb", MEMORY_MB, "--scheduler", cluster.scheduler_address)
        workers = set(cluster.scheduler_info["workers"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"grading 3 submission(s) on the Dask cluster at {cluster.scheduler_address} (2 worker(s))" in result.stdout
    gradebook = read_gradebook(cluster_course)
    expected = {("part2_relative", "ada"), ("part2_relative", "bo"), (ZOO, "carol")}
    assert set(gradebook) == expected
    for key in expected:
        assert gradebook[key] == graded.gradebook[key], key
    ledger = json.loads((cluster_course.dir / ".grader" / "ledger.json").read_text())
    for assignment, student in expected:
        entry = ledger[f"{assignment}/{student}"]
        assert ledger_outcome(entry) == ledger_outcome(graded.ledger[f"{assignment}/{student}"])
        assert entry["graded_on"] in workers
