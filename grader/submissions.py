"""Everything the CLI does to a submission *before* any of its code runs: find and read the notebook, scan the
student's code, restore deleted test cells, and stage a clean copy for nbgrader.

Nothing in this module executes student code.

The static scan (`scan_student_code`)
-------------------------------------
It reads the student's code cells with ``ast`` (after IPython's own translation of ``%magics`` and ``!shell``
lines) and flags a submission that

* imports or refers to ``solutions`` (the reference implementation) or ``grader`` (the checks and the
  references they compare with), including through a string passed to a call (``importlib.import_module
  ("solutions")``);
* imports or executes code dynamically (``__import__``, ``importlib``, ``exec``, ``eval``, ``compile``,
  ``sys.modules``, ``builtins``), which could hide such an import;
* reads or writes files outside its own folder: a file function (``open``, ``Path``, ``os.listdir``,
  ``glob``, ``shutil``, ``torch.load``, ...) given a literal path that is absolute, starts with ``~`` or
  contains ``..``; any ``os.chdir``; a path naming the gradebook, the course config or the ``source``,
  ``autograded`` or ``feedback`` folders;
* runs other programs or opens the network (``subprocess``, ``os.system``, ``!shell`` lines, ``%run``,
  ``ctypes``, ``socket``, ``urllib``, ...).

A flagged submission is **withheld**: it is not executed, every test scores 0, and the reason (cell and line)
is recorded; the instructor can re-grade it with ``--allow-flagged`` after reading it. A file function given
a path that is not a literal is recorded as a warning only.

Limits, honestly: a static scan is a tripwire, not a sandbox. It cannot follow values computed at run time
(``open(os.path.join(*parts))``, ``getattr(os, name)``, a path built from ``chr`` codes), code hidden in
data and decoded later without ``exec``/``eval``, or attribute chains on objects the checks hand to the
student. What actually contains a submission is the rest of the pipeline: each one is graded in its own
process with a wall-clock limit and a memory limit, only the notebook itself (no other submitted file) is
staged, the checks are imported before any student cell runs, and feedback never shows hidden tests. A
determined student with arbitrary code execution can still read files the grading user can read; run the
grader as a user that can read nothing else if that matters.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024

REFERENCE_PACKAGES = {"solutions": "the reference implementation `solutions`",
                      "grader": "the grader (its checks and references)"}
DYNAMIC_NAMES = {"__import__", "exec", "eval", "compile", "importlib", "__builtins__", "builtins", "__loader__",
                 "__spec__"}
DYNAMIC_ATTRIBUTES = {"__import__", "__builtins__", "__loader__", "__spec__", "__globals__", "__code__",
                      "__subclasses__", "import_module", "reload"}
FORBIDDEN_MODULES = {"subprocess": "runs other programs", "ctypes": "calls C code directly", "socket": "opens the network",
                     "urllib": "opens the network", "requests": "opens the network", "http": "opens the network",
                     "pty": "runs other programs", "importlib": "imports modules dynamically", "shutil": "copies or "
                     "deletes files", "multiprocessing": "starts other processes"}
FILE_FUNCTIONS = {"open", "Path", "PurePath", "PosixPath", "listdir", "scandir", "walk", "glob", "iglob", "read_text",
                  "read_bytes", "write_text", "write_bytes", "loadtxt", "genfromtxt", "read_csv", "fromfile",
                  "copyfile", "copytree", "rmtree", "unlink", "makedirs", "mkdir", "chmod", "symlink", "readlink",
                  "FileIO", "read_notebook", "iterdir", "rglob"}
# Names too common to flag on their own: only as functions of a file-handling module.
FILE_MODULE_FUNCTIONS = {"load", "read", "reads", "replace", "copy", "remove", "exists", "isfile", "isdir", "stat",
                         "rename", "save"}
FILE_MODULE_PREFIXES = ("os.", "os.path.", "shutil.", "pathlib.", "io.", "torch.", "np.", "numpy.", "json.",
                        "nbformat.", "pickle.", "Path(", "glob.")
PROCESS_FUNCTIONS = {"system", "popen", "spawnl", "spawnv", "spawnlp", "spawnvp", "execv", "execl", "execve",
                     "execvp", "execlp", "fork", "forkpty", "chdir", "chroot", "setuid"}
SHELL_MAGICS = {"system", "sx", "run", "load", "loadpy", "cd", "bash", "sh", "script", "writefile", "pycat", "env",
                "bookmark", "pushd", "popd", "dhist", "perl", "ruby", "sc", "save", "store", "macro", "edit"}
SENSITIVE_PATH = re.compile(r"(gradebook|nbgrader_config|(^|[/\\])(source|autograded|feedback|submitted|release)"
                            r"([/\\]|$)|\.grader)")


@dataclass
class Finding:
    """One thing the scan found: ``severity`` is "withhold" or "warning"."""

    severity: str
    cell: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.cell}, line {self.line}: {self.what}"


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_dotted(node.func) + "()")
    return ".".join(reversed(parts))


def _outside_path(text: str) -> bool:
    stripped = text.strip()
    return (stripped.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", stripped) is not None
            or ".." in re.split(r"[\\/]", stripped) or bool(SENSITIVE_PATH.search(stripped)))


class _Scanner(ast.NodeVisitor):
    def __init__(self, cell: str):
        self.cell = cell
        self.findings: list[Finding] = []

    def flag(self, node, what, severity="withhold"):
        self.findings.append(Finding(severity, self.cell, getattr(node, "lineno", 0), what))

    def _module(self, node, name: str):
        top = name.split(".")[0]
        if top in REFERENCE_PACKAGES:
            self.flag(node, f"imports {REFERENCE_PACKAGES[top]}" + (f" (`{name}`)" if name != top else ""))
        elif top in FORBIDDEN_MODULES:
            self.flag(node, f"imports `{name}`, which {FORBIDDEN_MODULES[top]}")

    def visit_Import(self, node):
        for alias in node.names:
            self._module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        if node.level:
            self.flag(node, "uses a relative import")
        self._module(node, node.module or "")
        for alias in node.names:
            if alias.name in REFERENCE_PACKAGES or alias.name in DYNAMIC_NAMES:
                self.flag(node, f"imports `{alias.name}`")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in REFERENCE_PACKAGES:
            self.flag(node, f"refers to `{node.id}`, {REFERENCE_PACKAGES[node.id]}")
        elif node.id in DYNAMIC_NAMES:
            self.flag(node, f"uses `{node.id}` (dynamic import or code execution)")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        dotted = _dotted(node)
        if node.attr in REFERENCE_PACKAGES:
            self.flag(node, f"refers to `{dotted}`")
        elif node.attr in ("modules", "meta_path", "path_hooks") and dotted.startswith("sys."):
            self.flag(node, f"uses `{dotted}` (it can reach or replace imported modules)")
        elif node.attr in DYNAMIC_ATTRIBUTES:
            self.flag(node, f"uses `{dotted}` (dynamic import or code execution)")
        self.generic_visit(node)

    def visit_Call(self, node):
        dotted = _dotted(node.func)
        last = dotted.split(".")[-1] if dotted else ""
        literals = [a.value for a in list(node.args) + [k.value for k in node.keywords]
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        for text in literals:
            if re.fullmatch(r"\s*(solutions|grader)(\.\w+)*\s*", text):
                self.flag(node, f"passes the module name {text.strip()!r} to `{dotted or 'a call'}`")
        is_file_call = last in FILE_FUNCTIONS or (last in FILE_MODULE_FUNCTIONS and dotted.startswith(FILE_MODULE_PREFIXES))
        if dotted.startswith("get_ipython()"):
            magic = literals[0].split()[0] if literals and literals[0].split() else ""
            if last in ("system", "getoutput") or magic in SHELL_MAGICS:
                self.flag(node, f"runs a shell command or file magic ({magic or last})")
        elif last in PROCESS_FUNCTIONS and (dotted.startswith(("os.", "posix.")) or dotted == last):
            self.flag(node, f"calls `{dotted}` (runs programs or leaves its folder)")
        elif is_file_call:
            outside = [t for t in literals if _outside_path(t) or re.search(r"(^|[/\\])(solutions|grader)([/\\.]|$)", t)]
            if outside:
                self.flag(node, f"accesses a path outside its folder or in the course's code: "
                                f"`{dotted}({outside[0][:80]!r})`")
            elif node.args and not literals and last in ("open", "Path", "listdir", "glob", "iglob", "scandir",
                                                          "walk", "read_text", "read_bytes"):
                self.flag(node, f"accesses a file whose path is computed at run time (`{dotted}(...)`); not "
                                f"verified", severity="warning")
        self.generic_visit(node)


def student_code_cells(nb: NotebookNode, protected_ids: set[str]) -> list[tuple[str, str]]:
    """``(cell name, source)`` of every code cell whose source the student controls: all code cells except
    those that nbgrader will overwrite from the gradebook (locked cells, matched by grade_id)."""
    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in protected_ids:
            continue
        cells.append((grade_id or f"cell {index + 1}", cell.get("source", "")))
    return cells


def scan_student_code(nb: NotebookNode, protected_ids: set[str]) -> list[Finding]:
    """Scan the student's code cells (see the module docstring for what is flagged and the limits)."""
    from IPython.core.inputtransformer2 import TransformerManager

    transformer = TransformerManager()
    findings: list[Finding] = []
    for name, source in student_code_cells(nb, protected_ids):
        try:
            python = transformer.transform_cell(source)
        except Exception:  # noqa: BLE001
            python = source
        try:
            tree = ast.parse(python)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            findings.append(Finding("warning", name, getattr(exc, "lineno", 0) or 0,
                                    f"cannot be parsed ({type(exc).__name__}); it will fail when run"))
            continue
        scanner = _Scanner(name)
        try:
            scanner.visit(tree)
        except RecursionError:
            findings.append(Finding("withhold", name, 0, "is nested too deeply to scan"))
        findings.extend(scanner.findings)
    return findings


# ---------------------------------------------------------------------------------------------------------
# Reading a submission
# ---------------------------------------------------------------------------------------------------------


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and bytes of every file in a submission folder (checkpoints excluded)."""
    digest = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class Located:
    """The notebook found in a submission folder, with the notes about how it was found."""

    path: Path | None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None


def _grade_id_overlap(path: Path, ids: set[str]) -> int:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return sum(1 for c in nb.get("cells", []) if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") in ids)
    except Exception:  # noqa: BLE001
        return -1


def locate_notebook(folder: Path, notebook_name: str, known_ids: set[str]) -> Located:
    """Find ``<notebook_name>.ipynb`` in a submission folder, or the notebook the student renamed."""
    expected = folder / f"{notebook_name}.ipynb"
    if expected.is_file():
        return Located(expected)
    candidates = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not candidates:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())
        return Located(None, problem=f"no notebook in the submission (expected {notebook_name}.ipynb"
                                     f"{'; found ' + ', '.join(others[:5]) if others else ''})")
    if len(candidates) == 1:
        chosen = candidates[0]
    else:
        chosen = max(candidates, key=lambda p: (_grade_id_overlap(p, known_ids), -len(str(p))))
    return Located(chosen, notes=[f"renamed notebook: graded {chosen.relative_to(folder)} as {notebook_name}.ipynb"
                                  + (f" (chosen among {len(candidates)} notebooks)" if len(candidates) > 1 else "")])


def read_notebook(path: Path) -> tuple[NotebookNode | None, str | None]:
    """Read and validate a notebook; ``(None, reason)`` when it cannot be graded."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"cannot read the notebook ({exc})"
    if size == 0:
        return None, "the notebook file is empty (0 bytes)"
    if size > MAX_NOTEBOOK_BYTES:
        return None, f"the notebook is {size / 2**20:.0f} MiB, more than the {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB allowed"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the notebook is not UTF-8 text (a binary or corrupted file)"
    if not text.strip():
        return None, "the notebook file is empty (only whitespace)"
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        return None, f"the notebook is not valid JSON{where}: corrupted, or not saved as a notebook"
    if not isinstance(data, dict) or "cells" not in data or "nbformat" not in data:
        return None, "the file is JSON but not a Jupyter notebook (no 'cells' or 'nbformat')"
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # noqa: BLE001
        return None, f"the notebook cannot be read by nbformat ({type(exc).__name__}: {str(exc)[:120]})"
    if not nb.cells:
        return None, "the notebook has no cells"
    return nb, None


# ---------------------------------------------------------------------------------------------------------
# Restoring deleted cells
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SourceCell:
    """A locked cell of the assignment as the gradebook holds it, with its place in the source notebook."""

    grade_id: str
    cell_type: str
    source: str
    checksums: tuple[str, ...]  # the versions a student may legitimately hold (release; source, with hidden tests)
    is_grade: bool
    points: float | None


def restore_locked_cells(nb: NotebookNode, order: list[str], locked: dict[str, SourceCell]) -> list[str]:
    """Insert every locked cell (test cells and read-only cells) missing from ``nb``, and note edited ones.

    ``order`` lists the grade_ids of the source notebook in order; each missing cell goes right after the
    nearest earlier source cell present in the submission (after the cells already restored there), so a
    test lands after the function it tests. If the submission has none of the source cells (a notebook
    rebuilt by hand), the missing cells are appended at the end, in order: the student's code then runs
    before every test. nbgrader's OverwriteCells then replaces the source of every locked cell with the
    gradebook's, and checks its metadata.
    """
    from nbgrader.utils import compute_checksum

    notes = []
    present = {}
    for index, cell in enumerate(nb.cells):
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id and grade_id not in present:
            present[grade_id] = index
    for grade_id, index in present.items():
        cell = nb.cells[index]
        if grade_id in locked and locked[grade_id].checksums:
            try:
                changed = compute_checksum(cell) not in locked[grade_id].checksums
            except Exception:  # noqa: BLE001
                changed = True
            if changed:
                kind = "test cell" if locked[grade_id].is_grade else "read-only cell"
                notes.append(f"edited {kind} {grade_id}: restored from the gradebook")
    missing = [gid for gid in order if gid in locked and gid not in present]
    if not missing:
        return notes
    with_ids = nb.nbformat == 4 and nb.nbformat_minor >= 5
    after: dict[str | None, list[NotebookNode]] = {}
    for grade_id in missing:
        source = locked[grade_id]
        metadata = {"deletable": False, "editable": False,
                    "nbgrader": {"grade": source.is_grade, "grade_id": grade_id, "locked": True,
                                 "schema_version": 3, "solution": False, "task": False}}
        if source.is_grade:
            metadata["nbgrader"]["points"] = source.points
        if source.cell_type == "code":
            cell = nbformat.v4.new_code_cell(source.source, metadata=metadata)
        else:
            cell = nbformat.v4.new_markdown_cell(source.source, metadata=metadata)
        if not with_ids:
            cell.pop("id", None)
        anchor = next((earlier for earlier in reversed(order[: order.index(grade_id)]) if earlier in present), None)
        after.setdefault(anchor, []).append(cell)
        kind = "test cell" if source.is_grade else "read-only cell"
        notes.append(f"deleted {kind} {grade_id}: restored from the gradebook")
    if not present.keys() & set(order):
        nb.cells = list(nb.cells) + after.pop(None, [])  # nothing to anchor to: every test after the student's code
    cells = list(after.pop(None, []))
    for index, cell in enumerate(nb.cells):
        cells.append(cell)
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in after and present.get(grade_id) == index:
            cells.extend(after.pop(grade_id))
    nb.cells = cells
    return notes


def note_cell(lines: list[str]) -> NotebookNode:
    """A markdown cell, shown at the top of the autograded notebook and the feedback, listing grader notes."""
    text = "**Grader notes** (added when grading; not part of your submission):\n\n" + "\n".join(
        f"* {line}" for line in lines)
    cell = nbformat.v4.new_markdown_cell(text)
    return cell
