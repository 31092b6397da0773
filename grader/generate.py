"""``python -m grader generate``: the student versions of the assignments, for a class or for the book.

``generate`` runs nbgrader's ``generate_assignment`` (solutions and hidden tests removed, cells locked and
checksummed, the assignment entered in the gradebook) into ``release/``, and packs each student version with
its visible checks into a student kit, ``kits/<assignment>.zip`` (`grader.kits`). ``generate --book`` writes
the kits into ``book/exercises/`` from a temporary copy of the course, leaving ``release/``, ``kits/`` and the
gradebook alone.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import nbformat

from . import kits
from .course import REPO_ROOT, Course


def say(*parts) -> None:
    print(*parts, flush=True)


BOOK_EXERCISES = REPO_ROOT / "book" / "exercises"
"""Where ``generate --book`` writes the student kits that the book's Exercise sections offer for download."""

GENERATED = ("__pycache__", "release", "kits", "submitted", "autograded", "feedback", ".grader", "gradebook.db",
             "*.csv")
"""What nbgrader or this CLI writes into a course directory: left out when the course is copied."""

_MARKDOWN_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def book_copy(release_notebook: Path, assignment: str) -> str:
    """The text of ``book/exercises/<assignment>.ipynb``: the release notebook, as nbformat writes it.

    One change: the relative links of its markdown cells, written relative to ``grader/source/<assignment>/``
    (``../../../book/mla/mla.ipynb``), are re-based to ``book/exercises/`` (``../mla/mla.ipynb``), so that they
    work in the book's copy too. Everything else (cells, ids, nbgrader metadata and checksums) is the release's.
    """
    nb = nbformat.read(release_notebook, as_version=4)
    authored_in = REPO_ROOT / "grader" / "source" / assignment

    def rebase(match):
        target = match.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target, re.I):  # a URL, an anchor or an absolute path
            return match.group(0)
        path, _, anchor = target.partition("#")
        moved = os.path.relpath(os.path.normpath(authored_in / path), BOOK_EXERCISES)
        return match.group(1) + Path(moved).as_posix() + ("#" + anchor if anchor else "") + match.group(3)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _MARKDOWN_LINK.sub(rebase, cell.source)
    return nbformat.writes(nb) + "\n"


def _generate(course: Course, assignment: str) -> tuple[int, float] | None:
    """Generate one assignment's release; its number of test cells and points, or None (said why) if it failed."""
    if not course.source_notebook(assignment).is_file():
        say(f"{assignment}: error: no {course.source_notebook(assignment)}")
        return None
    result = course.api().generate_assignment(assignment, force=True, create=True)
    if not result.get("success"):
        say(f"{assignment}: FAILED\n{result.get('error') or result.get('log')}")
        return None
    with course.gradebook() as gb:
        record = gb.find_assignment(assignment)
        return sum(len(nb.grade_cells) for nb in record.notebooks), record.max_score


def cmd_generate(course: Course, args) -> int:
    assignments = args.assignments or course.assignments()
    if not assignments:
        say(f"error: no assignments in {course.root / 'source'}")
        return 2
    if args.book:
        return generate_book_copies(course, assignments)
    failed = 0
    for assignment in assignments:
        generated = _generate(course, assignment)
        if generated is None:
            failed += 1
            continue
        tests, points = generated
        kit = course.root / "kits" / f"{assignment}.zip"
        kit.parent.mkdir(exist_ok=True)
        release = course.release_notebook(assignment)
        kit.write_bytes(kits.build_kit(course.source_notebook(assignment), release.read_text(encoding="utf-8")))
        say(f"{assignment}: {tests} test cells, {points:g} points -> {release.relative_to(course.root)}, "
            f"student kit {kit.relative_to(course.root)}")
    return 1 if failed else 0


def book_kit(course: Course, assignment: str) -> bytes:
    """The kit the book offers for ``assignment``: `book_copy` of its release in ``course``, with its checks."""
    notebook = book_copy(course.release_notebook(assignment), assignment)
    return kits.build_kit(course.source_notebook(assignment), notebook)


def generate_book_copies(course: Course, assignments: list[str]) -> int:
    """Write the kit of each assignment (`book_kit`) into `BOOK_EXERCISES`.

    The releases are generated in a temporary copy of the course, with a temporary gradebook, so that the
    course's own ``release/`` and gradebook are left as they are (a maintainer's step, not an instructor's).
    ``tests/test_grader_leaks.py`` regenerates them the same way and fails when the committed copies drift.
    """
    failed = 0
    with tempfile.TemporaryDirectory(prefix="grader-book-") as scratch:
        copy = Path(scratch) / "course"
        shutil.copytree(course.root, copy, ignore=shutil.ignore_patterns(*GENERATED))
        scratch_course = Course(copy, f"sqlite:///{Path(scratch) / 'gradebook.db'}")
        BOOK_EXERCISES.mkdir(parents=True, exist_ok=True)
        for assignment in assignments:
            generated = _generate(scratch_course, assignment)
            if generated is None:
                failed += 1
                continue
            target = BOOK_EXERCISES / f"{assignment}.zip"
            target.write_bytes(book_kit(scratch_course, assignment))
            tests, points = generated
            say(f"{assignment}: {tests} test cells, {points:g} points -> {target.relative_to(REPO_ROOT)}")
    return 1 if failed else 0
