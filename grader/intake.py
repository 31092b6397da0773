"""Everything done to a submission before any of its code runs: import it, find and read its notebook, and
stage what the harness runs and what nbgrader records. Nothing here executes student code.

Intake is hardened against files that are not what they claim:

* a symbolic link, a hard link, a FIFO, a device or any other non-regular file is refused, with the reason,
  wherever it is (in the inbox, in a student's folder, in ``submitted/``); files are opened with
  ``O_NOFOLLOW``;
* a notebook of more than `MAX_CELLS` cells, or `MAX_NOTEBOOK_BYTES` bytes, is refused before staging;
* a name that is not a safe student id (letters, digits, ``. _ @ + -``, starting with a letter or digit) is
  listed and not imported;
* several notebooks for one student and assignment: the newest (by modification time) is graded and the
  report lists the others.

Staging (`stage`) builds the notebook nbgrader records from the assignment's own cells: every read-only
cell and every test cell comes from the gradebook (the source version), a solution cell keeps the student's
code under the release's metadata, and any other cell of the student's loses its nbgrader metadata (so points,
grade ids and cell kinds cannot be claimed by editing a notebook's JSON). The student's markdown becomes a
raw cell: it is kept for the instructor but never rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_CELLS = 1000
"""More cells than any real submission has (the assignments have about 50): past it, the notebook is refused
before it is staged, so that a notebook of thousands of empty cells costs no more than a normal one."""
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")
SETUP_CELL = "setup"
"""The grade id of the assignment's set-up cell: it runs in the harness (for the checks) and in the sandbox."""


# ------------------------------------------------------------------------------------------------- files


def refusal(path: Path) -> str | None:
    """Why ``path`` is not taken as a submitted file, or None for a regular file (links are not followed)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link (refused: submissions must be plain files)"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (refused)"
    if info.st_nlink > 1:
        return "is a hard link to another file (refused: submissions must be files of their own)"
    return None


def read_regular(path: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of a regular file, never through a link; `OSError` otherwise or past ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if info.st_size > limit:
            raise OSError(f"{path.name} is {info.st_size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB "
                          f"allowed")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1)
    finally:
        os.close(fd)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _notebooks(folder: Path, problems: list[str], where: str) -> list[Path]:
    """Regular ``*.ipynb`` files under ``folder`` (checkpoints left out); refusals, and folders that are
    symbolic links (never followed), noted in ``problems``."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        problems += [f"{where}/{Path(root, d).relative_to(folder)} is a symbolic link (refused)" for d in links]
        dirs[:] = sorted(d for d in dirs if d not in links)
        if ".ipynb_checkpoints" in Path(root).relative_to(folder).parts:
            continue
        for name in sorted(files):
            path = Path(root) / name
            if not name.endswith(".ipynb"):
                continue
            why = refusal(path)
            if why:
                problems.append(f"{where}/{path.relative_to(folder)} {why}")
            else:
                found.append(path)
    return found


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and bytes of the regular files of a submission folder."""
    digest = hashlib.sha256()
    if _real_dir(folder):
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
            for name in sorted(files):
                path = Path(root) / name
                if refusal(path):
                    continue
                digest.update(str(path.relative_to(folder)).encode() + b"\0")
                digest.update(hashlib.sha256(read_regular(path, 2**31)).digest())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ import


def flat_name(stem: str, assignments: list[str]) -> tuple[str, str] | None:
    """``(student, assignment)`` from ``alice_part1`` or ``part1_alice`` (a browser's `` (1)`` dropped)."""
    stem = re.sub(r"\s*\(\d+\)$", "", stem.strip())
    for assignment in sorted(assignments, key=len, reverse=True):
        for student in (stem[: -len(assignment) - 1] if stem.endswith(assignment) else None,
                        stem[len(assignment) + 1:] if stem.startswith(assignment) else None):
            if student and STUDENT_ID.match(student) and student != assignment:
                return student, assignment
    return None


def _newest(paths: list[Path]) -> tuple[Path, list[Path]]:
    ordered = sorted(paths, key=lambda p: (os.lstat(p).st_mtime_ns, p.name), reverse=True)
    return ordered[0], ordered[1:]


def import_submissions(submitted: Path, inbox: Path, assignments: list[str]) -> tuple[list[str], list[str]]:
    """Copy an inbox into ``submitted/<student>/<assignment>/<assignment>.ipynb``; ``(imported, problems)``.

    The inbox is nbgrader's layout (``<student>/<assignment>/...``) or a flat folder of
    ``<student>_<assignment>.ipynb`` files (``<assignment>_<student>.ipynb`` works too), or both. Only one
    notebook per student and assignment is imported, the newest. A ``timestamp.txt`` in the inbox is ignored:
    it is the student's file (nbgrader's own exchange writes the trusted one straight into ``submitted/``).
    """
    problems: list[str] = []
    chosen: dict[tuple[str, str], list[Path]] = {}
    for entry in sorted(inbox.iterdir()):
        if entry.is_symlink():
            problems.append(f"{entry.name} is a symbolic link (refused)")
            continue
        if _real_dir(entry):
            if not any(_real_dir(entry / a) for a in assignments):
                for a in assignments:
                    if (entry / a).is_symlink():
                        problems.append(f"{entry.name}/{a} is a symbolic link (refused)")
                continue
            if not STUDENT_ID.match(entry.name):
                problems.append(f"{entry.name}: not a usable student id (letters, digits, . _ @ + -); not imported")
                continue
            for assignment in assignments:
                folder = entry / assignment
                if (folder).is_symlink():
                    problems.append(f"{entry.name}/{assignment} is a symbolic link (refused)")
                    continue
                if not _real_dir(folder):
                    continue
                notebooks = _notebooks(folder, problems, f"{entry.name}/{assignment}")
                if notebooks:
                    chosen.setdefault((entry.name, assignment), []).extend(notebooks)
                elif not any("refused" in p and p.startswith(f"{entry.name}/{assignment}") for p in problems):
                    problems.append(f"{entry.name}/{assignment}: no notebook in the folder; not imported")
                if (folder / "timestamp.txt").exists() or (folder / "timestamp.txt").is_symlink():
                    problems.append(f"{entry.name}/{assignment}/timestamp.txt: ignored (a file in the inbox is the "
                                    f"student's; submission times come from nbgrader's exchange)")
            continue
        why = refusal(entry)
        if why:
            problems.append(f"{entry.name} {why}")
            continue
        if entry.suffix != ".ipynb":
            problems.append(f"{entry.name}: not a notebook; skipped")
            continue
        parsed = flat_name(entry.stem, assignments)
        if parsed is None:
            problems.append(f"{entry.name}: cannot tell the student and the assignment from the name; name it "
                            f"<student>_<assignment>.ipynb with one of: {', '.join(assignments)}")
            continue
        chosen.setdefault(parsed, []).append(entry)
    imported = []
    for (student, assignment), candidates in sorted(chosen.items()):
        newest, others = _newest(candidates)
        if others:
            problems.append(f"{student}/{assignment}: {len(candidates)} notebooks; imported the newest, "
                            f"{newest.name}; not graded: {', '.join(p.name for p in others)}")
        try:
            data = read_regular(newest)
        except OSError as exc:
            problems.append(f"{student}/{assignment}: {newest.name} could not be read ({exc}); not imported")
            continue
        dest = submitted / student / assignment
        target = dest / f"{assignment}.ipynb"
        if _real_dir(dest) and refusal(target) is None and read_regular(target) == data and \
                sorted(p.name for p in dest.iterdir()) == [target.name]:
            continue
        if dest.is_symlink() or dest.exists():
            if dest.is_symlink() or not _real_dir(dest):
                dest.unlink()
            else:
                shutil.rmtree(dest)
        dest.mkdir(parents=True)
        target.write_bytes(data)
        imported.append(f"{assignment}/{student}")
    return imported, problems


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Located:
    """The notebook found in a submission folder, with the notes about how it was found."""

    path: Path | None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None


def _grade_id_overlap(path: Path, ids: set[str]) -> int:
    try:
        nb = json.loads(read_regular(path).decode("utf-8"))
        return sum(1 for c in nb.get("cells", []) if nbgrader_meta(c).get("grade_id") in ids)
    except Exception:  # noqa: BLE001
        return -1


def locate_notebook(folder: Path, notebook_name: str, known_ids: set[str]) -> Located:
    """Find ``<notebook_name>.ipynb`` in a submission folder, or the notebook the student renamed (the one
    with the most of the assignment's cells, then the newest)."""
    if not _real_dir(folder):
        return Located(None, problem="the submission folder is not a folder (a symbolic link?); refused")
    problems: list[str] = []
    expected = folder / f"{notebook_name}.ipynb"
    if expected.exists() or expected.is_symlink():
        why = refusal(expected)
        if why is None:
            return Located(expected)
        return Located(None, problem=f"{expected.name} {why}")
    candidates = _notebooks(folder, problems, folder.name)
    if not candidates:
        others = sorted(p.name for p in folder.rglob("*"))
        return Located(None, problem=f"no notebook in the submission (expected {notebook_name}.ipynb"
                                     f"{'; found ' + ', '.join(others[:5]) if others else ''})"
                                     + (f"; {problems[0]}" if problems else ""))
    chosen = max(candidates, key=lambda p: (_grade_id_overlap(p, known_ids), os.lstat(p).st_mtime_ns))
    return Located(chosen, notes=problems + [f"renamed notebook: graded {chosen.relative_to(folder)} as "
                                             f"{notebook_name}.ipynb" + (f" (chosen among {len(candidates)} "
                                                                         f"notebooks)" if len(candidates) > 1 else "")])


def read_notebook(path: Path) -> tuple[NotebookNode | None, str | None]:
    """Read and validate a notebook; ``(None, reason)`` when it cannot be graded."""
    try:
        raw = read_regular(path)
    except OSError as exc:
        return None, f"cannot read the notebook ({exc.strerror or exc})"
    if len(raw) > MAX_NOTEBOOK_BYTES:
        return None, f"the notebook is more than the {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB allowed"
    if not raw:
        return None, "the notebook file is empty (0 bytes)"
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
    if isinstance(data["cells"], list) and len(data["cells"]) > MAX_CELLS:
        return None, f"the notebook has {len(data['cells'])} cells, more than the {MAX_CELLS} allowed"
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # noqa: BLE001
        return None, f"the notebook cannot be read by nbformat ({type(exc).__name__}: {str(exc)[:120]})"
    if not nb.cells:
        return None, "the notebook has no cells"
    return nb, None


# ---------------------------------------------------------------------------------------------- staging


@dataclass
class SourceCell:
    """A cell of the assignment as the gradebook holds it (locked cells: the source version, hidden tests
    included), with the checksums of the versions a student may legitimately hold."""

    grade_id: str
    cell_type: str
    source: str
    checksums: tuple[str, ...]
    is_grade: bool
    points: float | None
    locked: bool = True
    metadata: dict | None = None


@dataclass
class Staged:
    """A submission ready to grade: the notebook for nbgrader, and what the harness runs."""

    notebook: NotebookNode
    setup: str
    cells: list[tuple[str, str]]  # (cell id, source): the code the sandbox runs, in order
    tests: list[tuple[str, str]]  # (grade id, source): the test cells the harness runs, in order
    test_cell_ids: dict[str, str]  # grade id -> cell id in the staged notebook
    notes: list[str]


def nbgrader_meta(cell) -> dict:
    """A cell's nbgrader metadata (``{}`` where it has none, or something that is not a record)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def stage(nb: NotebookNode | None, order: list[str], cells: dict[str, SourceCell], release: NotebookNode) -> Staged:
    """The staged notebook (see the module docstring) for a submission ``nb`` (None: the release, unchanged,
    for a submission that cannot be read). ``order`` lists the source notebook's grade ids in order, ``cells``
    the assignment's cells by grade id (every locked cell, and the solution cells with their release metadata).
    """
    notes: list[str] = []
    if nb is None:
        nb = nbformat.from_dict(json.loads(json.dumps(release)))
    seen: set[str] = set()
    kept: list[NotebookNode] = []
    for cell in nb.cells:
        grade_id = nbgrader_meta(cell).get("grade_id")
        known = cells.get(grade_id) if isinstance(grade_id, str) and grade_id not in seen else None
        if known is not None and known.cell_type == cell.get("cell_type"):
            seen.add(grade_id)
            if known.locked:
                from nbgrader.utils import compute_checksum

                try:
                    edited = bool(known.checksums) and compute_checksum(cell) not in known.checksums
                except Exception:  # noqa: BLE001
                    edited = True
                if edited:
                    notes.append(f"edited {'test' if known.is_grade else 'read-only'} cell {grade_id}: restored "
                                 f"from the gradebook")
                kept.append(_trusted_cell(known))
            else:
                fresh = nbformat.v4.new_code_cell(str(cell.get("source", "")), metadata=json.loads(json.dumps(
                    known.metadata or {})))
                kept.append(fresh)
            continue
        if cell.get("cell_type") == "code":
            kept.append(nbformat.v4.new_code_cell(str(cell.get("source", ""))))
        elif cell.get("cell_type") in ("markdown", "raw"):
            kept.append(nbformat.v4.new_raw_cell(str(cell.get("source", ""))))
    # Locked cells the student deleted go back after the nearest earlier cell of the source that is present.
    missing = [gid for gid in order if gid in cells and cells[gid].locked and gid not in seen]
    for grade_id in missing:
        position = order.index(grade_id)
        anchor = next((g for g in reversed(order[:position]) if g in seen), None)
        index = 0
        if anchor is not None:
            index = next(i for i, c in enumerate(kept) if nbgrader_meta(c).get("grade_id") == anchor) + 1
            while index < len(kept) and nbgrader_meta(kept[index]).get("grade_id") in missing:
                index += 1
        elif not seen:
            index = len(kept)  # nothing of the assignment is left: every test after the student's code
        kept.insert(index, _trusted_cell(cells[grade_id]))
        seen.add(grade_id)
        notes.append(f"deleted {'test' if cells[grade_id].is_grade else 'read-only'} cell {grade_id}: restored "
                     f"from the gradebook")
    staged = nbformat.v4.new_notebook(metadata=json.loads(json.dumps(release.get("metadata", {}))))
    staged.cells = kept
    for number, cell in enumerate(staged.cells, start=1):
        cell["id"] = f"cell-{number:03d}"
    run, again, tests, test_ids = [], [], [], {}
    setup = cells[SETUP_CELL].source if SETUP_CELL in cells else ""
    for cell in staged.cells:
        if cell.cell_type != "code":
            continue
        meta = nbgrader_meta(cell)
        if meta.get("grade") and not meta.get("solution"):
            tests.append((meta["grade_id"], cell.source))
            test_ids[meta["grade_id"]] = cell["id"]
        else:
            run.append((cell["id"], cell.source))
            if meta.get("locked"):
                again.append((cell["id"] + "-again", cell.source))
    # The read-only cells run once more after the student's: the names they define (a launcher, say) are the
    # course's when the tests run, whatever a later cell of the student's rebound them to.
    return Staged(staged, setup, run + again, tests, test_ids, notes)


def _trusted_cell(known: SourceCell) -> NotebookNode:
    metadata = {"deletable": False, "editable": False,
                "nbgrader": {"grade": known.is_grade, "grade_id": known.grade_id, "locked": True,
                             "schema_version": 3, "solution": False, "task": False}}
    if known.is_grade:
        metadata["nbgrader"]["points"] = known.points
    if known.cell_type == "code":
        return nbformat.v4.new_code_cell(known.source, metadata=metadata)
    return nbformat.v4.new_markdown_cell(known.source, metadata=metadata)


def note_cell(lines: list[str]) -> NotebookNode:
    """A raw cell at the top of the autograded notebook listing the grader's notes. Raw, not markdown: the
    notes quote file names and messages that a student chose, and a raw cell is never rendered."""
    return nbformat.v4.new_raw_cell("Grader notes (added when grading; not part of the submission):\n"
                                    + "\n".join(f"- {line}" for line in lines))
