"""Leak safety: neither the student versions nor the published book show what students are asked to write.

* The release of every assignment (generated into a temporary copy of the course) contains no solution body,
  no hidden test, no output, and no line of the `solutions` code its checks compare with; so do the student
  kits that the book offers for download (``book/exercises/<assignment>.zip``): their notebook, their
  ``course_checks`` code and the strings of their data. A kit's data records the visible test cells' calls and
  nothing hidden, and the committed kits are byte for byte what ``python -m grader generate --book`` makes
  today.
* The book's notebooks and markdown pages display no source of a graded `solutions` function: no
  ``inspect.getsource`` (directly or through a helper) of one, no ``literalinclude`` that reaches into one, no
  ``%psource``/``??``/``%pycat``/``%load`` of one, no cell that prints a solutions file.

The graded functions are `grader.checks.GRADED_REFERENCES` of the checks the assignments call.
"""

import ast
import io
import re
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path

import nbformat
import pytest

from grader.checks import GRADED_REFERENCES

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "grader" / "source"
ASSIGNMENTS = sorted(p.name for p in SOURCE.iterdir() if (p / f"{p.name}.ipynb").is_file())


def read(path):
    return nbformat.read(path, as_version=4)


def source_notebook(assignment):
    return read(SOURCE / assignment / f"{assignment}.ipynb")


def checks_used(nb):
    return sorted({name for c in nb.cells for name in re.findall(r"\b(check_\w+)\(", c.source)})


def graded_objects():
    """``{"module:qualname"}`` of every graded solutions object, over all assignments."""
    return sorted({ref for a in ASSIGNMENTS for check in checks_used(source_notebook(a))
                   for ref in GRADED_REFERENCES.get(check, [])})


@lru_cache(maxsize=None)
def module_tree(module):
    path = REPO / (module.replace(".", "/") + ".py")
    text = path.read_text()
    return path, text.splitlines(), ast.parse(text)


def find_object(tree, qualname):
    scope = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return None
        scope = node.body
    return node


def code_lines(ref):
    """The file and the line numbers of the code (not the docstring, blanks or comments) of a graded object."""
    module, qualname = ref.split(":")
    path, lines, tree = module_tree(module)
    node = find_object(tree, qualname)
    assert node is not None, f"{ref} not found: GRADED_REFERENCES is out of date"
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    numbers = set()
    for statement in body:
        for number in range(statement.lineno, statement.end_lineno + 1):
            text = lines[number - 1].strip()
            if text and not text.startswith("#"):
                numbers.add(number)
    return path, numbers


# ------------------------------------------------------------------------------------------ the release


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from grader.course import Course

    course_dir = tmp_path_factory.mktemp("leaks") / "course"
    shutil.copytree(REPO / "grader", course_dir, ignore=shutil.ignore_patterns(
        "__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv"))
    course = Course.open(course_dir, f"sqlite:///{course_dir.parent / 'leaks.db'}")
    api = course.api()
    for assignment in ASSIGNMENTS:
        result = api.generate_assignment(assignment, force=True, create=True)
        assert result["success"], result.get("error") or result.get("log")
    return course_dir / "release"


def test_every_assignment_has_graded_functions_and_hidden_tests():
    assert ASSIGNMENTS == ["part1_foundations", "part2_relative", "part3_rope", "part4_mla", "part5_extrapolation",
                           "part6_lab", "part7_multimodal"]
    for assignment in ASSIGNMENTS:
        nb = source_notebook(assignment)
        meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
        tests = [m for m in meta if m.get("grade")]
        test_code = "\n".join(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade"))
        # A graded function is a solution cell that a test cell calls; helpers (a solution cell no test calls,
        # such as Part 5's rope_inv_freq) are graded through the functions that use them.
        graded = [m for m in meta if m.get("solution") and re.search(rf"\b{m['grade_id']}\b", test_code)]
        assert 4 <= len(graded) <= 8, assignment
        assert all(m.get("points", 0) > 0 for m in tests)
        assert sum("### BEGIN HIDDEN TESTS" in c.source for c in nb.cells) >= len(graded) - 1
        assert not [c for c in nb.cells if c.cell_type == "code" and c.outputs], "store notebooks without outputs"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_release_has_no_solution_body_no_hidden_test_and_no_reference_source(release, assignment):
    folder = release / assignment
    assert sorted(p.name for p in folder.iterdir()) == [f"{assignment}.ipynb"]
    assert_a_clean_student_version(folder / f"{assignment}.ipynb", assignment)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_books_kits_are_clean_and_regenerate_identically(release, assignment, tmp_path):
    from grader import kits
    from grader.generate import BOOK_EXERCISES, book_copy
    from grader.runtime import wire

    committed = BOOK_EXERCISES / f"{assignment}.zip"
    assert committed.is_file(), f"{committed.relative_to(REPO)} is missing: run `python -m grader generate --book`"
    regenerated = kits.build_kit(SOURCE / assignment / f"{assignment}.ipynb",
                                 book_copy(release / assignment / f"{assignment}.ipynb", assignment))
    assert committed.read_bytes() == regenerated, (
        f"{committed.relative_to(REPO)} differs from the kit of grader/source/{assignment}: "
        f"run `python -m grader generate --book` and commit the result")

    files = {info.filename: zipfile.ZipFile(io.BytesIO(regenerated)).read(info)
             for info in zipfile.ZipFile(io.BytesIO(regenerated)).infolist()}
    folder = f"{assignment}/"
    assert sorted(files) == sorted([folder + f"{assignment}.ipynb", folder + "README.md",
                                    folder + f"course_checks/{assignment}.checks", folder + "course_checks/wire.py"]
                                   + [folder + "course_checks/" + name for name in kits.KIT_MODULES])
    notebook = tmp_path / f"{assignment}.ipynb"
    notebook.write_bytes(files[folder + f"{assignment}.ipynb"])
    assert_a_clean_student_version(notebook, assignment)

    # The kit's code and texts, and every string of its data, hold no solution line, no hidden test line and no
    # line of the reference code its checks compare with.
    data = wire.decode(files[folder + f"course_checks/{assignment}.checks"])
    strings = set()
    wire.map_leaves(data, lambda leaf: strings.add(leaf) if isinstance(leaf, str) else None)
    lines = {line.strip() for path, content in files.items() if not path.endswith((".ipynb", ".checks"))
             for line in content.decode("utf-8").splitlines()}
    lines |= {line.strip() for text in strings for line in text.splitlines()}
    secret = secret_lines(source_notebook(assignment))
    assert not secret & lines, sorted(secret & lines)
    for ref in {r for check in checks_used(source_notebook(assignment)) for r in GRADED_REFERENCES.get(check, [])}:
        assert not reference_lines(ref) & lines, ref

    # What the data records: the visible test cells' calls, no hidden step, and no check of another assignment.
    visible = [c.source for c in source_notebook(assignment).cells
               if c.metadata.get("nbgrader", {}).get("grade") and "BEGIN HIDDEN TESTS" not in c.source]
    recorded = [call for calls in data["checks"].values() for call in calls]
    assert sorted(call["source"] for call in recorded) == sorted(
        ast.unparse(statement) for source in visible for statement in ast.parse(source).body)
    for call in recorded:
        for step in call["steps"]:
            assert not step.get("hidden") and not step.get("options", {}).get("hidden"), call["source"]


def test_the_book_offers_exactly_the_assignments():
    from grader.generate import BOOK_EXERCISES

    assert sorted(p.stem for p in BOOK_EXERCISES.iterdir() if p.name != "conftest.py") == ASSIGNMENTS
    assert all(p.suffix == ".zip" for p in BOOK_EXERCISES.iterdir() if p.name != "conftest.py")


def assert_a_clean_student_version(notebook, assignment):
    """No solution body, no hidden test, no output, and no line of the reference code the checks compare with."""
    text = notebook.read_text(encoding="utf-8")
    released = read(notebook)
    lines = {line.strip() for c in released.cells for line in c.source.splitlines()}
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    assert not [c for c in released.cells if c.cell_type == "code" and c.outputs]

    source = source_notebook(assignment)
    secret = secret_lines(source)
    assert secret
    assert not secret & lines, sorted(secret & lines)

    for ref in {r for check in checks_used(source) for r in GRADED_REFERENCES.get(check, [])}:
        assert not reference_lines(ref) & lines, f"{ref}: {sorted(reference_lines(ref) & lines)}"


def secret_lines(source):
    """The lines of a source notebook's solutions and hidden tests that it shows nowhere else."""
    secret, public = set(), set()
    for c in source.cells:
        outside = c.source
        for begin, end in (("### BEGIN SOLUTION", "### END SOLUTION"), ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")):
            for block in outside.split(begin)[1:]:
                secret |= {line.strip() for line in block.split(end)[0].splitlines() if len(line.strip()) > 12}
            outside = re.sub(rf"{begin}.*?{end}", "", outside, flags=re.S)
        public |= {line.strip() for line in outside.splitlines()}
    return secret - public  # a line the notebook also shows outside a solution (a demo's seed) gives nothing away


def reference_lines(ref):
    """The code lines (over 20 characters) of a graded `solutions` object."""
    path, numbers = code_lines(ref)
    return {line for line in (path.read_text().splitlines()[n - 1].strip() for n in numbers) if len(line) > 20}


# ------------------------------------------------------------------------------------------ the book

DIRECTIVE = re.compile(r"(?:`{3,}|:{3,})\{literalinclude\}\s+(\S+)[^\n]*\n((?:\s*:[\w-]+:[^\n]*\n)*)")
RST_DIRECTIVE = re.compile(r"\.\.\s+literalinclude::\s+(\S+)[^\n]*\n((?:[ \t]+:[\w-]+:[^\n]*\n)*)")
OPTION = re.compile(r"^\s*:([\w-]+):\s*(.*?)\s*$")


def displayed_lines(document, target, options):
    """The lines of ``target`` that a literalinclude with ``options`` displays (Sphinx's filter order)."""
    path = (REPO / target.lstrip("/")) if target.startswith("/") else (document.parent / target)
    path = path.resolve()
    if not path.is_file() or path.suffix != ".py":
        return path, set()
    lines = path.read_text().splitlines()
    start, end = 1, len(lines)
    if "pyobject" in options:
        node = find_object(ast.parse(path.read_text()), options["pyobject"])
        if node is None:
            return path, set()
        start, end = node.lineno, node.end_lineno
    for key in ("start-at", "start-after"):
        if key in options:
            needle = options[key].strip('"').strip("'")
            hit = next((n for n in range(start, end + 1) if needle in lines[n - 1]), None)
            if hit is not None:
                start = hit if key == "start-at" else hit + 1
    for key in ("end-at", "end-before"):
        if key in options:
            needle = options[key].strip('"').strip("'")
            hit = next((n for n in range(start, end + 1) if needle in lines[n - 1]), None)
            if hit is not None:
                end = hit if key == "end-at" else hit - 1
    shown = set(range(start, end + 1))
    if "lines" in options:
        selected = set()
        for part in options["lines"].split(","):
            a, _, b = part.strip().partition("-")
            first = int(a) if a else 1
            last = (int(b) if b else len(lines)) if _ else first
            selected |= {start + n - 1 for n in range(first, last + 1)}
        shown &= selected
    return path, shown


def book_cells():
    for path in sorted((REPO / "book").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts or "_build" in path.parts:
            continue
        for index, c in enumerate(read(path).cells):
            yield path, c.get("id") or f"#{index + 1}", c.cell_type, c.source
    for path in sorted((REPO / "book").rglob("*.md")):
        if "_build" not in path.parts:
            yield path, "(page)", "markdown", path.read_text()


def graded_names():
    """Each graded object by the names code would use for it: ``apply_rope``, ``MultiHeadLatentAttention.forward``."""
    return {ref.split(":")[1]: ref for ref in graded_objects()}


def refers_to_graded(dotted):
    names = graded_names()
    for qualname, ref in names.items():
        if dotted == qualname or dotted.endswith("." + qualname):
            return ref
    modules = {ref.split(":")[0] for ref in names.values()}
    for module in modules:  # a whole module that holds a graded object
        if dotted in (module, module.split(".")[-1]) and dotted != "solutions":
            return f"{module} (the whole module)"
    return None


def dotted_name(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def code_cell_findings(source):
    from IPython.core.inputtransformer2 import TransformerManager

    findings = []
    for line in source.splitlines():
        match = re.match(r"^\s*%(psource|pfile|pycat|load|loadpy)\s+(\S+)", line) or re.match(r"^\s*(\S+?)\?\?\s*$", line)
        if match:
            target = match.group(match.lastindex)
            ref = refers_to_graded(target) or (("solutions/" in target) and target)
            if ref:
                findings.append(f"shows the source of {ref} ({line.strip()})")
    try:
        tree = ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return findings
    source_calls = {"getsource", "getsourcelines", "getsourcefile"}
    helpers = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and any(isinstance(n, ast.Call) and dotted_name(n.func).split(".")[-1] in source_calls
                       for n in ast.walk(node))}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        called = dotted_name(node.func).split(".")[-1]
        if called in source_calls or called in helpers:
            ref = refers_to_graded(dotted_name(node.args[0]))
            if ref:
                findings.append(f"shows the source of {ref} via {called}({dotted_name(node.args[0])})")
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and re.search(r"solutions/\w+\.py", arg.value):
                findings.append(f"reads {arg.value} in {dotted_name(node.func) or 'a call'}(...)")
    return findings


def helper_names_per_notebook():
    """A helper defined in one cell (``show_source``) is called in another: collect them per notebook."""
    helpers = {}
    for path, _, kind, source in book_cells():
        if kind != "code":
            continue
        try:
            from IPython.core.inputtransformer2 import TransformerManager

            tree = ast.parse(TransformerManager().transform_cell(source))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(n, ast.Call) and dotted_name(n.func).split(".")[-1] in ("getsource", "getsourcelines")
                    for n in ast.walk(node)):
                helpers.setdefault(path, set()).add(node.name)
    return helpers


def book_findings():
    graded_code = {}
    for ref in graded_objects():
        path, numbers = code_lines(ref)
        graded_code.setdefault(path.resolve(), []).append((ref, numbers))
    helpers = helper_names_per_notebook()
    findings = []
    for path, cell_id, kind, source in book_cells():
        where = f"{path.relative_to(REPO)} cell {cell_id}"
        if kind == "markdown":
            for pattern in (DIRECTIVE, RST_DIRECTIVE):
                for match in pattern.finditer(source):
                    options = dict(OPTION.match(line).groups() for line in match.group(2).splitlines()
                                   if OPTION.match(line))
                    target, shown = displayed_lines(path, match.group(1), options)
                    for ref, numbers in graded_code.get(target, []):
                        if shown & numbers:
                            findings.append(f"{where}: literalinclude of {match.group(1)} shows "
                                            f"{len(shown & numbers)} code lines of {ref}")
        elif kind == "code":
            extra = helpers.get(path, set())
            cell_source = source
            for helper in extra:  # treat calls of a notebook's source-printing helper like getsource
                cell_source = re.sub(rf"\b{helper}\(", "getsource(", cell_source)
            findings += [f"{where}: {finding}" for finding in code_cell_findings(cell_source)]
    return sorted(set(findings))


def test_the_leak_scanner_catches_each_way_of_showing_source(tmp_path):
    fake = tmp_path / "chapter.md"
    fake.write_text("x")
    _, shown = displayed_lines(REPO / "book" / "rotary" / "x.ipynb", "../../solutions/rope.py",
                               {"pyobject": "apply_rope", "start-at": "rotary_dim = "})
    _, numbers = code_lines("solutions.rope:apply_rope")
    assert shown & numbers
    _, doc_only = displayed_lines(REPO / "book" / "rotary" / "x.ipynb", "../../solutions/rope.py",
                                  {"pyobject": "apply_rope", "end-before": "rotary_dim = "})
    assert not doc_only & numbers
    assert code_cell_findings("import inspect\nprint(inspect.getsource(solutions.apply_rope))")
    assert code_cell_findings("apply_rope??")
    assert code_cell_findings("%psource solutions.rope.rotate_pairs")
    assert code_cell_findings("print(open('../../solutions/rope.py').read())")
    assert code_cell_findings("def show(f):\n    print(inspect.getsource(f))\nshow(alibi_bias)")
    assert not code_cell_findings("print(inspect.getsource(solutions.learned.LearnedPositionalEmbedding))")
    assert not code_cell_findings("x = apply_rope(q, cos, sin)")


def test_the_book_shows_no_source_of_a_graded_function():
    findings = book_findings()
    assert not findings, ("The book displays the source of functions that students are graded on. Show the idea "
                          "in words, maths or pseudo-code instead, or drop the exercise:\n  " + "\n  ".join(findings))
