"""Student kits (``book/exercises/<assignment>.zip``) work away from the course repository, and say what the
grader says.

* Unzipped into an empty folder and run by a Python that cannot import `solutions` or `grader`: the source
  solutions pass every visible check, with the very lines the grader prints; the untouched notebook fails every
  visible check with "not implemented".
* Every named mistake whose example shows on the visible cases gets, from the kit, the grader's message.
* A kit refuses a check call it has no data for, and a damaged data file, with a message that says so.
* The stand-ins the visible checks hand to the student's code have the properties the checks rely on.
"""

import ast
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from grader import checks
from grader.checks import CheckFailed
from grader.course_checks import subjects
from grader.generate import BOOK_EXERCISES

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "grader" / "source"
DRIVER = Path(__file__).resolve().parent / "kit_driver.py"
ASSIGNMENTS = sorted(p.stem for p in BOOK_EXERCISES.glob("*.zip"))
HIDDEN = "### BEGIN HIDDEN TESTS"


def unzip(assignment, folder: Path) -> Path:
    zipfile.ZipFile(BOOK_EXERCISES / f"{assignment}.zip").extractall(folder)
    return folder / assignment


def code_cells(notebook):
    return [[c.metadata.get("nbgrader", {}).get("grade_id", f"cell {i}"), c.source]
            for i, c in enumerate(notebook.cells) if c.cell_type == "code"]


def visible_tests(notebook):
    """The test cells that run code in the student's notebook (a release keeps hidden test cells, emptied)."""
    return {c.metadata["nbgrader"]["grade_id"] for c in notebook.cells
            if c.metadata.get("nbgrader", {}).get("grade") and HIDDEN not in c.source and ast.parse(c.source).body}


def solved(kit_notebook, source_notebook):
    """The kit's notebook with each solution cell replaced by the source's (what a student who solved it has)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source_notebook.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    return [[cell_id, answers.get(cell_id, source)] for cell_id, source in code_cells(kit_notebook)]


def drive(mode, kit: Path, runs, tmp_path):
    runs_file = tmp_path / f"runs-{mode}.json"
    runs_file.write_text(json.dumps(runs))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PE_COURSE_ROOT")}
    env.update(REPO=str(REPO), TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-I", str(DRIVER), mode, str(kit), str(runs_file)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [{cell_id: (status, text) for cell_id, status, text in rows} for rows in json.loads(done.stdout)]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_a_kit_works_away_from_the_repository_and_says_what_the_grader_says(assignment, tmp_path):
    kit = unzip(assignment, tmp_path)
    kit_notebook = nbformat.read(kit / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(SOURCE / assignment / f"{assignment}.ipynb", as_version=4)
    tests = visible_tests(kit_notebook)
    assert tests == visible_tests(source) and len(tests) >= 4

    solved_run, untouched_run = drive("kit", kit, [solved(kit_notebook, source), code_cells(kit_notebook)], tmp_path)
    (grader_run,) = drive("grader", kit, [solved(kit_notebook, source)], tmp_path)

    for test in sorted(tests):
        status, output = solved_run[test]
        assert status == "ok" and "\N{CHECK MARK}" in output, (test, status, output)
        assert solved_run[test] == grader_run[test], test  # the same lines as the grader's visible check
        status, message = untouched_run[test]
        assert status == "failed" and "not implemented" in message, (test, status, message)
    assert untouched_run["setup"][0] == "ok"


def load_kit_package(assignment, folder: Path):
    """The kit's ``course_checks``, imported under a name of its own (the tests' ``course_checks`` is the grader's)."""
    package = unzip(assignment, folder) / "course_checks"
    name = f"kit_{assignment}"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def failure(check, *args, **options):
    try:
        check(*args, **options)
    except CheckFailed as failed:
        return str(failed)
    except AssertionError as failed:  # the kit's own CheckFailed class
        return str(failed)
    return None


@pytest.fixture(scope="module")
def kit_packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kits")
    return {assignment: load_kit_package(assignment, folder / assignment) for assignment in ASSIGNMENTS}


def test_each_mistake_that_shows_on_the_visible_cases_gets_the_graders_message_from_the_kit(kit_packages,
                                                                                          monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    compared = 0
    for assignment, module in checks.ASSIGNMENTS.items():
        kit = kit_packages[assignment]
        for catalogue in module.CATALOGUES:
            for mistake in catalogue.mistakes:
                options = {**catalogue.options, **mistake.example_options}
                replayed = getattr(kit, catalogue.check.__name__, None)
                if replayed is None or not any(call["options"] == options for call in replayed.calls):
                    continue  # the mistake shows on hidden cases only
                expected = failure(catalogue.check, mistake.example, **options)
                assert expected is not None and mistake.text  # the grader names it (tests/test_grader_mistakes.py)
                assert failure(getattr(kit, catalogue.check.__name__), mistake.example, **options) == expected, (
                    assignment, mistake.name)
                compared += 1
    assert compared >= 60, compared


def test_a_kit_refuses_a_call_it_has_no_data_for(kit_packages):
    kit = kit_packages["part1_foundations"]
    message = failure(kit.check_self_attention, lambda *a: None, shapes=[(2, 3, 4)], seed=5, hidden=True)
    assert "visible checks only" in message and "check_self_attention(self_attention)" in message


def test_a_damaged_kit_says_so(tmp_path):
    kit = unzip("part2_relative", tmp_path)
    data = kit / "course_checks" / "part2_relative.checks"
    data.write_bytes(data.read_bytes()[:-100])
    done = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import course_checks",
                           str(kit)], capture_output=True, text=True)
    assert done.returncode != 0 and "part2_relative.checks is damaged" in done.stderr and "download the kit again" in \
        done.stderr


# ------------------------------------------------------------------------------------------ the stand-ins


def test_a_table_answers_its_inputs_only():
    x = torch.randn(4, 3, dtype=torch.float64)
    table = subjects.Table.of(torch.tanh, [x, x.flip(0)], description="f")
    assert torch.equal(table(x.clone()), torch.tanh(x)) and torch.equal(table(x.flip(0)), torch.tanh(x.flip(0)))
    with pytest.raises(ValueError, match="only by its outputs"):
        table(x + 1)
    with pytest.raises(ValueError, match="only by its outputs"):
        table(x.float())
    assert torch.equal(subjects.Table.from_state(table.to_state())(x), table(x))


@pytest.mark.parametrize("dim", [2, 6, 16])
def test_the_stand_in_rotation_has_the_relative_property_and_its_broken_variants_do_not(dim):
    g = torch.Generator().manual_seed(dim)
    q, k = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)

    def score(rotate, m, n):
        return float(rotate(q, m) @ rotate(k, n))

    relative = subjects.Rotation(1)
    for m, n, shift in [(0, 3, 5), (7, 2, 100), (-4, 9, 1000)]:
        assert score(relative, m, n) == pytest.approx(score(relative, m + shift, n + shift), abs=1e-9)
        assert float(relative(q, m).norm()) == pytest.approx(float(q.norm()))
    for variant in ("quadratic", "growing"):
        broken = subjects.Rotation(1, variant)
        assert abs(score(broken, 1, 4) - score(broken, 11, 14)) > 1e-3
    assert not torch.allclose(subjects.Rotation(1)(q, 3), subjects.Rotation(2)(q, 3))
    assert relative(q.float(), 2).dtype == torch.float32


def test_the_stand_in_model_is_causal_reads_its_context_and_its_learned_table_ends():
    model = subjects.StandInLM.random(3)
    ids = torch.randint(256, (2, 10), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (2, 10, 256)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 256
    after = model(changed)
    assert torch.equal(after[:, :6], logits[:, :6])  # causal: a later byte changes nothing before it
    assert not torch.allclose(after[:, 7:], logits[:, 7:])  # and every later prediction reads it
    learned = subjects.StandInLM.random(3, learned_rows=16)
    learned(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="16 rows"):
        learned(torch.zeros(1, 17, dtype=torch.long))
    rebuilt = subjects.StandInLM.from_state(learned.to_state())
    assert torch.equal(rebuilt(ids), learned(ids))


def test_the_kit_package_imports_only_the_standard_library_and_torch():
    package = REPO / "grader" / "course_checks"
    allowed = set(sys.stdlib_module_names) | {"torch", "triton", "numpy"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
