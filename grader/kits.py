"""Student kits: an assignment a student can take anywhere (``book/exercises/<assignment>.zip``).

A kit is one folder, ``<assignment>/``, holding

* ``<assignment>.ipynb``: the student version (`grader.generate`);
* ``course_checks/``: the package `grader.course_checks` (the code that calls a student's function, compares
  and names mistakes, shared with the grader), the message format `grader.runtime.wire`, and
  ``<assignment>.checks``, the data of the notebook's visible checks;
* ``README.md``: how to set it up.

`record_visible_checks` makes the data: it runs each visible test cell of the source notebook with the grader's
checks while `course_checks.steps.recording` is active, so that each check evaluates, from the course's
reference functions, everything its visible cases compare with (the expected outputs, and each named
mistake's output) without calling any student code. Hidden test cells are never run here, and nothing in a kit
is code of `solutions` or `grader.checks`.

The zip is reproducible byte for byte: sorted entries, fixed timestamps and permissions, and data whose
encoding depends only on its values.
"""

from __future__ import annotations

import ast
import io
import zipfile
from pathlib import Path

import nbformat

from . import checks
from .course_checks import steps
from .runtime import wire

KIT_PACKAGE = Path(__file__).resolve().parent / "course_checks"
WIRE_MODULE = Path(wire.__file__).resolve()
KIT_MODULES = ("__init__.py", "comparing.py", "steps.py", "subjects.py")
"""The files of `grader.course_checks` a kit carries (with ``wire.py``)."""

HIDDEN_MARK = "### BEGIN HIDDEN TESTS"
FORMAT = 1

README = """# {assignment}: the student kit

This folder is one assignment of the course *Positional Encoding in Transformers*. It holds

* `{assignment}.ipynb`, the notebook you fill in and submit;
* `course_checks/`, the notebook's visible checks: the expected outputs of the visible cases, and what each
  common mistake would output on them, so that a failing check says what is wrong. It holds no reference
  solution and no hidden test; its data file is plain data (no pickle), read without running any code.

## Set-up

You need Python 3.10 or newer and PyTorch; a CPU build is enough (numpy only keeps torch from warning that it
is missing):

    pip install torch numpy jupyterlab
{triton}
Then open the notebook from this folder (`jupyter lab {assignment}.ipynb`), run its first cell, and work
through it. Keep `course_checks/` beside the notebook.

In Colab: upload the zip into the notebook's files, run `!unzip -q {assignment}.zip` and
`%cd {assignment}` in a cell of its own, and delete that cell before you submit.

## Submitting

Submit `{assignment}.ipynb` only, under that name. The grader runs the visible checks again, and hidden tests
on other inputs.
"""

TRITON_NOTE = """
The kernel exercise also needs Triton (Linux only; elsewhere its check says so and the rest runs). Its CPU
interpreter, which runs the kernel here, needs numpy:

    pip install triton
"""

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class KitError(ValueError):
    """A source notebook whose visible checks cannot be recorded into a kit."""


def _setup_imports(setup_source: str) -> list[str]:
    """The names the set-up cell imports from the checks (``from course_checks import ...``)."""
    names = []
    for node in ast.walk(ast.parse(setup_source)):
        if isinstance(node, ast.ImportFrom) and node.module == checks.STUDENT_PACKAGE:
            names += [alias.asname or alias.name for alias in node.names]
    return names


def _visible_calls(source: str, cell_id: str) -> list[tuple[str, int, dict, str]]:
    """``(check, number of student functions, options, source)`` for each statement of a visible test cell: a
    call of a check on the student's functions (names) with literal keyword options."""
    calls = []
    for statement in ast.parse(source).body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and all(isinstance(arg, ast.Name) for arg in call.args)):
            raise KitError(f"test cell {cell_id}: each statement of a visible test cell must call a check on the "
                           f"student's functions, `check_x(f, option=literal)`: {ast.unparse(statement)!r}")
        try:
            options = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except ValueError:
            raise KitError(f"test cell {cell_id}: a visible check's options must be literals: "
                           f"{ast.unparse(call)!r}") from None
        calls.append((call.func.id, len(call.args), options, ast.unparse(call)))
    return calls


def record_visible_checks(source_notebook: Path) -> dict:
    """The data of a kit's ``course_checks`` for the assignment whose source notebook this is."""
    nb = nbformat.read(source_notebook, as_version=4)
    assignment = source_notebook.stem
    setup = next((c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup"), None)
    if setup is None:
        raise KitError(f"{source_notebook}: no set-up cell (grade_id 'setup')")
    imported = _setup_imports(setup)
    constants, check_names = {}, set()
    for name in imported:
        value = getattr(checks, name)
        if callable(value):
            check_names.add(name)
        elif isinstance(value, (str, int, float, bool)):
            constants[name] = value
        else:
            raise KitError(f"{assignment}: the set-up cell imports {name}, which a kit cannot carry")
    recorded: dict[str, list] = {name: [] for name in sorted(check_names)}
    previous_draw = checks.engine._GRADING_DRAW
    checks.engine.grade_in_secret_order(None)  # the notebook's own, fixed order
    try:
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code" or not meta.get("grade") or HIDDEN_MARK in cell.source:
                continue
            for check, students, options, source in _visible_calls(cell.source, meta["grade_id"]):
                if check not in recorded:
                    raise KitError(f"test cell {meta['grade_id']} calls {check}, which the set-up cell does not "
                                   f"import from {checks.STUDENT_PACKAGE}")
                slots = [steps.StudentSlot(i) for i in range(students)]
                with steps.recording() as recorded_steps:
                    getattr(checks, check)(*slots, **options)
                if any(step.get("hidden") or step.get("options", {}).get("hidden") for step in recorded_steps):
                    raise KitError(f"test cell {meta['grade_id']}: a visible cell runs a hidden check")
                recorded[check].append({"students": students, "options": options, "source": source,
                                        "steps": recorded_steps})
    finally:
        checks.engine._GRADING_DRAW = previous_draw
    return {"format": FORMAT, "assignment": assignment, "constants": constants,
            "checks": {name: calls for name, calls in recorded.items() if calls}}


def _needs_triton(data: dict) -> bool:
    return any(step["kind"] == "require_module" and step["module"] == "triton"
               for calls in data["checks"].values() for call in calls for step in call["steps"])


def kit_files(assignment: str, student_notebook: str, data: dict) -> dict[str, bytes]:
    """The kit's files, by their path in the zip."""
    folder = f"{assignment}/"
    files = {folder + f"{assignment}.ipynb": student_notebook.encode("utf-8"),
             folder + "README.md": README.format(assignment=assignment,
                                                 triton=TRITON_NOTE if _needs_triton(data) else "").encode("utf-8"),
             folder + "course_checks/wire.py": WIRE_MODULE.read_bytes(),
             folder + f"course_checks/{assignment}.checks": wire.encode(data)[8:]}
    for name in KIT_MODULES:
        files[folder + "course_checks/" + name] = (KIT_PACKAGE / name).read_bytes()
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip of ``files`` that depends only on their paths and contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever this machine is: the attributes above are Unix ones
            archive.writestr(info, files[path], compresslevel=9)
    return buffer.getvalue()


def build_kit(source_notebook: Path, student_notebook: str) -> bytes:
    """The kit of the assignment of ``source_notebook``, whose student version is ``student_notebook``."""
    data = record_visible_checks(source_notebook)
    return zip_bytes(kit_files(source_notebook.stem, student_notebook, data))
