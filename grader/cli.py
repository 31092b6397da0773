"""``python -m grader``: the instructor's command line around nbgrader.

    python -m grader generate  [ASSIGNMENT ...]                       student versions into release/
    python -m grader generate  --book [ASSIGNMENT ...]                the book's copies, book/exercises/*.ipynb
    python -m grader autograde [ASSIGNMENT ...] [--submissions PATH]  grade a class, one process per submission
    python -m grader feedback  [ASSIGNMENT ...]                       feedback HTML into feedback/
    python -m grader export    [--to grades.csv]                      grades CSV (+ grading_report.csv)
    python -m grader status                                           what has been graded, and how

Common options: ``--course-dir`` (default: this package's folder, the course root) and ``--db`` (any SQLAlchemy
URL; default the course's ``gradebook.db``). See grader/README.md for the workflow.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import submissions as subs
from .course import REPO_ROOT, STAGING, Course

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")


def say(*parts) -> None:
    print(*parts, flush=True)


# -------------------------------------------------------------------------------------------------- generate


BOOK_EXERCISES = REPO_ROOT / "book" / "exercises"
"""Where ``generate --book`` writes the student versions that the book's Exercise sections offer for download."""

GENERATED = ("__pycache__", "release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv")
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
        say(f"{assignment}: {tests} test cells, {points:g} points -> "
            f"{course.release_notebook(assignment).relative_to(course.root)}")
    return 1 if failed else 0


def generate_book_copies(course: Course, assignments: list[str]) -> int:
    """Write `book_copy` of each assignment's student version into `BOOK_EXERCISES`.

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
            target = BOOK_EXERCISES / f"{assignment}.ipynb"
            target.write_text(book_copy(scratch_course.release_notebook(assignment), assignment), encoding="utf-8")
            tests, points = generated
            say(f"{assignment}: {tests} test cells, {points:g} points -> {target.relative_to(REPO_ROOT)}")
    return 1 if failed else 0


def ensure_generated(course: Course, assignment: str) -> None:
    """Autograding needs the assignment in the gradebook and its release notebook; make both if missing."""
    from nbgrader.api import MissingEntry

    with course.gradebook() as gb:
        try:
            gb.find_assignment(assignment)
            known = True
        except MissingEntry:
            known = False
    if not known or not course.release_notebook(assignment).is_file():
        say(f"{assignment}: not generated yet (or not in this gradebook); generating it first")
        result = course.api().generate_assignment(assignment, force=True, create=True)
        if not result.get("success"):
            raise SystemExit(f"error: could not generate {assignment}:\n{result.get('error') or result.get('log')}")


# ------------------------------------------------------------------------------------------ import submissions


def _flat_name(stem: str, assignments: list[str]) -> tuple[str, str] | None:
    stem = re.sub(r"\s*\(\d+\)$", "", stem.strip())  # "alice_part1 (1)": a browser's duplicate download
    for assignment in sorted(assignments, key=len, reverse=True):
        for student in (stem[: -len(assignment) - 1] if stem.endswith(assignment) else None,
                        stem[len(assignment) + 1:] if stem.startswith(assignment) else None):
            if student and STUDENT_ID.match(student) and student != assignment:
                return student, assignment
    return None


def import_submissions(course: Course, path: Path, assignments: list[str]) -> tuple[list[str], list[str]]:
    """Copy submissions into ``submitted/<student>/<assignment>/``. ``path`` is either nbgrader's layout
    (``<student>/<assignment>/<files>``) or a flat folder of ``<student>_<assignment>.ipynb`` files (as a
    zip-collect or an LMS download gives; ``<assignment>_<student>.ipynb`` works too)."""
    imported, problems = [], []
    submitted = course.root / "submitted"
    nested = [d for d in path.iterdir() if d.is_dir() and any((d / a).is_dir() for a in assignments)]
    pairs: list[tuple[str, str, list[Path], Path | None]] = []
    if nested:
        for student_dir in sorted(nested):
            if not STUDENT_ID.match(student_dir.name):
                problems.append(f"{student_dir.name}: not a usable student id (letters, digits, . _ @ + -)")
                continue
            for assignment in assignments:
                if (student_dir / assignment).is_dir():
                    pairs.append((student_dir.name, assignment, [], student_dir / assignment))
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if file.suffix != ".ipynb":
            if not nested:
                problems.append(f"{file.name}: not a notebook; skipped")
            continue
        parsed = _flat_name(file.stem, assignments)
        if parsed is None:
            problems.append(f"{file.name}: cannot tell the student and the assignment from the name; name it "
                            f"<student>_<assignment>.ipynb with one of: {', '.join(assignments)}")
            continue
        pairs.append((parsed[0], parsed[1], [file], None))
    for student, assignment, files, folder in pairs:
        dest = submitted / student / assignment
        incoming = subs.folder_digest(folder) if folder else None
        if folder is not None:
            if dest.exists() and subs.folder_digest(dest) == incoming:
                continue
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(folder, dest)
        else:
            data = files[0].read_bytes()
            target = dest / f"{assignment}.ipynb"
            if target.is_file() and target.read_bytes() == data and len(list(dest.iterdir())) == 1:
                continue
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            target.write_bytes(data)
        imported.append(f"{assignment}/{student}")
    return imported, problems


# -------------------------------------------------------------------------------------------------- autograde


@dataclass
class Outcome:
    assignment: str
    student: str
    status: str  # graded | zeroed | failed | skipped
    score: float | None = None
    max_score: float | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _locked_cells(course: Course, assignment: str) -> tuple[list[str], dict[str, subs.SourceCell]]:
    """The source notebook's grade_ids in order, and every locked cell as the gradebook holds it (with the
    checksum of the version students received, from the release notebook, to tell edited cells)."""
    source = nbformat.read(course.source_notebook(assignment), as_version=4)
    order = [c.metadata["nbgrader"]["grade_id"] for c in source.cells
             if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")]
    released = {}
    if course.release_notebook(assignment).is_file():
        for cell in nbformat.read(course.release_notebook(assignment), as_version=4).cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade_id") and meta.get("checksum"):
                released[meta["grade_id"]] = meta["checksum"]
    locked = {}
    with course.gradebook() as gb:
        notebook = gb.find_notebook(assignment, assignment)
        grade_cells = {c.name: c for c in notebook.grade_cells}
        for cell in notebook.source_cells:
            if cell.locked:
                grade = grade_cells.get(cell.name)
                checksums = tuple(c for c in (released.get(cell.name), cell.checksum) if c)
                locked[cell.name] = subs.SourceCell(cell.name, cell.cell_type, cell.source, checksums,
                                                    grade is not None, grade.max_score if grade else None)
    return order, locked


def _kill_tree(pid: int) -> None:
    try:
        import psutil

        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
        for proc in family:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(family, timeout=5)
    except Exception:  # noqa: BLE001 (psutil missing or the process already gone)
        try:
            os.killpg(pid, 9)
        except OSError:
            pass


def _sweep(run_id: str) -> None:
    """Kill what a grading process left behind (its kernel, if the process itself was killed): every process
    whose environment carries this run's ``GRADER_RUN_ID``. Only processes this run started carry it."""
    try:
        import psutil
    except ImportError:
        return
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("GRADER_RUN_ID") == run_id:
                proc.kill()
        except (psutil.Error, OSError):
            continue


def _memory_limit(megabytes: int):
    def apply():
        import resource

        if megabytes:
            limit = int(megabytes) * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _run_worker(course: Course, assignment: str, student: str, *, withhold: str, cell_timeout: int,
                timeout: float, memory_mb: int, run_dir: Path) -> tuple[dict, list[dict], str]:
    """Run `grader._worker` in its own process; returns (result, events, failure reason or "")."""
    run_dir.mkdir(parents=True, exist_ok=True)
    events_file, result_file, log_file = run_dir / "events.jsonl", run_dir / "result.json", run_dir / "worker.log"
    for stale in (events_file, result_file):
        stale.unlink(missing_ok=True)
    spec = dict(course_dir=str(course.root), db_url=course.db_url, assignment=assignment, student=student,
                staging=STAGING, cell_timeout=cell_timeout, withhold_reason=withhold, events_file=str(events_file),
                result_file=str(result_file))
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYTHONHASHSEED", "0")
    run_id = env["GRADER_RUN_ID"] = uuid.uuid4().hex
    # The inputs are tiny: one thread per process grades faster than competing thread pools on a shared machine.
    for threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(threads, "1")
    failure = ""
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "grader._worker", str(spec_file)], cwd=str(course.root),
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_memory_limit(0 if withhold else memory_mb))
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            failure = f"grading took longer than {timeout:g} s for the whole notebook and was stopped"
        _sweep(run_id)
    events = []
    if events_file.is_file():
        for line in events_file.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    result = {}
    if result_file.is_file():
        try:
            result = json.loads(result_file.read_text())
        except ValueError:
            result = {}
    if not failure and not result:
        if proc.returncode < 0:
            failure = (f"the grading process was killed by signal {-proc.returncode} (by the submission's code, or "
                       f"by the operating system at the memory limit)")
        else:
            failure = f"the grading process died (exit status {proc.returncode})"
    elif not failure and not result.get("success"):
        error = (result.get("error") or result.get("log") or "").strip().splitlines()
        tail = next((line for line in reversed(error) if line.strip() and not line.startswith(" ")), "unknown error")
        failure = f"nbgrader could not grade it: {tail.strip()[:300]}"
    return result, events, failure


def _event_note(event: dict) -> str:
    kind = event.get("kind", "event").replace("_", " ")
    where = f" in {event['cell']}" if event.get("cell") else ""
    return f"{kind}{where}: {event.get('detail', '')}"


def _read_grades(course: Course, assignment: str, student: str):
    from nbgrader.api import MissingEntry

    with course.gradebook() as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        grades = [(g.name, g.score, g.max_score, g.auto_score) for nb in submission.notebooks for g in nb.grades]
        return submission.score, submission.max_score, grades


def grade_submission(course: Course, assignment: str, student: str, opts, order, locked) -> Outcome:
    started = time.monotonic()
    folder = course.root / "submitted" / student / assignment
    outcome = Outcome(assignment, student, "failed")
    notes: list[str] = []
    withhold = ""
    located = subs.locate_notebook(folder, assignment, set(order))
    nb = None
    if located.problem:
        withhold = located.problem
    else:
        notes += located.notes
        nb, problem = subs.read_notebook(located.path)
        if problem:
            withhold = problem
    if nb is not None:
        findings = subs.scan_student_code(nb, set(locked))
        blocking = [f for f in findings if f.severity == "withhold"]
        for finding in findings:
            notes.append(("flagged: " if finding.severity == "withhold" else "warning: ") + str(finding))
        if blocking and not opts.allow_flagged:
            withhold = ("flagged by the static scan (" + "; ".join(str(f) for f in blocking[:3])
                        + (f"; and {len(blocking) - 3} more" if len(blocking) > 3 else "") + ")")
        try:
            notes += subs.restore_locked_cells(nb, order, locked)
        except Exception as exc:  # noqa: BLE001
            withhold = withhold or f"its cells could not be matched with the assignment ({type(exc).__name__}: {exc})"
    if nb is None:
        nb = nbformat.read(course.release_notebook(assignment), as_version=4)
    staging = course.root / STAGING / student / assignment
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    lines = notes + ([f"not executed, every test scores 0: {withhold}"] if withhold else [])
    if lines:
        nb.cells.insert(0, subs.note_cell(lines))
    nbformat.write(nb, staging / f"{assignment}.ipynb")
    if (folder / "timestamp.txt").is_file():
        shutil.copy(folder / "timestamp.txt", staging / "timestamp.txt")
    run_dir = course.state_dir / "runs" / assignment / student
    result, events, failure = _run_worker(course, assignment, student, withhold=withhold,
                                          cell_timeout=opts.cell_timeout, timeout=opts.submission_timeout,
                                          memory_mb=opts.memory_mb, run_dir=run_dir)
    notes += [_event_note(e) for e in events if e.get("kind") != "withheld"]
    if failure and not withhold:
        # The fallback: record a complete zero grade, without running the student's code again.
        withhold = failure
        nb.cells.insert(0, subs.note_cell([f"not graded, every test scores 0: {failure}"]))
        nbformat.write(nb, staging / f"{assignment}.ipynb")
        result, _, failure = _run_worker(course, assignment, student, withhold=withhold, cell_timeout=opts.cell_timeout,
                                         timeout=opts.submission_timeout, memory_mb=0, run_dir=run_dir)
    grades = _read_grades(course, assignment, student)
    outcome.notes = notes
    outcome.reason = withhold
    outcome.seconds = time.monotonic() - started
    if failure or grades is None or any(auto is None and score is None for _, score, _, auto in grades[2]):
        outcome.status = "failed"
        outcome.reason = failure or "no grade was recorded in the gradebook"
    else:
        outcome.status = "zeroed" if withhold else "graded"
        outcome.score, outcome.max_score = grades[0], grades[1]
    return outcome


def _discover(course: Course, assignments: list[str], students: list[str] | None) -> list[tuple[str, str]]:
    submitted = course.root / "submitted"
    found = []
    if submitted.is_dir():
        for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir()):
            if students and student_dir.name not in students:
                continue
            for assignment in assignments:
                if (student_dir / assignment).is_dir():
                    found.append((assignment, student_dir.name))
    return sorted(found)


def cmd_autograde(course: Course, args) -> int:
    known = course.assignments()
    unknown = [a for a in args.assignments if a not in known]
    if unknown:
        say(f"error: unknown assignment(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    if args.submissions:
        path = Path(args.submissions)
        if not path.is_dir():
            say(f"error: {path} is not a folder")
            return 2
        imported, problems = import_submissions(course, path, args.assignments or known)
        say(f"imported {len(imported)} new or changed submission(s) from {path} into "
            f"{(course.root / 'submitted').relative_to(course.root)}/")
        for problem in problems:
            say(f"  not imported: {problem}")
    todo = _discover(course, args.assignments or known, args.student)
    if not todo:
        say("nothing to grade: no submissions found in " + str(course.root / "submitted"))
        return 0
    ledger = course.read_ledger()
    outcomes: list[Outcome] = []
    prepared: dict[str, tuple] = {}
    batch_started = time.monotonic()
    width = len(str(len(todo)))
    for number, (assignment, student) in enumerate(todo, start=1):
        key = f"{assignment}/{student}"
        digest = subs.folder_digest(course.root / "submitted" / student / assignment)
        assignment_digest = course.assignment_digest(assignment)
        previous = ledger.get(key)
        prefix = f"[{number:>{width}}/{len(todo)}] {assignment} / {student}:"
        if (not args.force and previous and previous.get("digest") == digest
                and previous.get("assignment_digest") == assignment_digest
                and previous.get("status") in ("graded", "zeroed")
                and (course.root / "autograded" / student / assignment).is_dir()
                and _read_grades(course, assignment, student) is not None):
            say(f"{prefix} skipped (already graded, unchanged): {previous['score']:g}/{previous['max_score']:g}")
            outcomes.append(Outcome(assignment, student, "skipped", previous["score"], previous["max_score"]))
            continue
        if assignment not in prepared:
            ensure_generated(course, assignment)
            prepared[assignment] = _locked_cells(course, assignment)
        try:
            outcome = grade_submission(course, assignment, student, args, *prepared[assignment])
        except Exception as exc:  # noqa: BLE001 (the batch goes on; the reason is recorded)
            outcome = Outcome(assignment, student, "failed", reason=f"grader error: {type(exc).__name__}: {exc}")
        outcomes.append(outcome)
        ledger[key] = dict(status=outcome.status, score=outcome.score, max_score=outcome.max_score,
                           reason=outcome.reason, notes=outcome.notes, digest=digest,
                           assignment_digest=assignment_digest, seconds=round(outcome.seconds, 2),
                           graded_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        course.write_ledger(ledger)
        line = f"{prefix} {outcome.status}"
        if outcome.score is not None:
            line += f" {outcome.score:g}/{outcome.max_score:g}"
        line += f" ({outcome.seconds:.1f} s)"
        if outcome.reason:
            line += f" - {outcome.reason[:160]}"
        elif outcome.notes:
            line += f" - {len(outcome.notes)} note(s): {outcome.notes[0][:120]}"
        say(line)
    elapsed = time.monotonic() - batch_started
    done = [o for o in outcomes if o.status != "skipped"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("graded", "zeroed", "failed", "skipped")}
    say("")
    say(f"Summary: {len(outcomes)} submission(s): {counts['graded']} graded, {counts['zeroed']} zeroed (not run, "
        f"score 0), {counts['failed']} failed, {counts['skipped']} skipped (unchanged)")
    if done:
        say(f"  {len(done)} graded in {elapsed:.0f} s: {60 * len(done) / max(elapsed, 1e-9):.1f} submissions per minute")
    for o in outcomes:
        if o.status in ("zeroed", "failed"):
            say(f"  {o.status:7} {o.assignment}/{o.student}: {o.reason}")
    for o in outcomes:
        if o.status == "graded" and o.notes:
            say(f"  notes   {o.assignment}/{o.student}:")
            for note in o.notes:
                say(f"            {note}")
    return 1 if counts["failed"] else 0


# --------------------------------------------------------------------------------------------- feedback, export


def cmd_feedback(course: Course, args) -> int:
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    from .nbgrader_ext import SanitizeFeedback

    assignments = args.assignments or course.assignments()
    api = course.api(**{"GenerateFeedback.preprocessors": [GetGrades, SanitizeFeedback, CSSHTMLHeaderPreprocessor]})
    failed = 0
    for assignment in assignments:
        graded = sorted(p.parent.name for p in (course.root / "autograded").glob(f"*/{assignment}"))
        graded = [s for s in graded if not args.student or s in args.student]
        if not graded:
            say(f"{assignment}: no autograded submissions")
            continue
        for student in graded:
            result = api.generate_feedback(assignment, student, force=True)
            html = course.root / "feedback" / student / assignment / f"{assignment}.html"
            if result.get("success") and html.is_file():
                say(f"{assignment} / {student}: {html.relative_to(course.root)}")
            else:
                failed += 1
                say(f"{assignment} / {student}: FAILED {(result.get('error') or '').strip().splitlines()[-1:]}")
    return 1 if failed else 0


def cmd_export(course: Course, args) -> int:
    from nbgrader.plugins.export import CsvExportPlugin

    to = Path(args.to) if args.to else course.root / "grades.csv"
    to.parent.mkdir(parents=True, exist_ok=True)
    plugin = CsvExportPlugin(config=course.config())
    plugin.to = str(to)
    with course.gradebook() as gb:
        plugin.export(gb)
    report = to.with_name("grading_report.csv")
    ledger = course.read_ledger()
    with open(report, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["assignment", "student", "status", "score", "max_score", "reason", "notes"])
        for key in sorted(ledger):
            entry = ledger[key]
            assignment, student = key.split("/", 1)
            writer.writerow([assignment, student, entry.get("status"), entry.get("score"), entry.get("max_score"),
                             entry.get("reason", ""), " | ".join(entry.get("notes", []))])
    rows = max(sum(1 for _ in open(to)) - 1, 0)
    say(f"grades: {to} ({rows} rows, nbgrader's CSV format)")
    say(f"report: {report} (status, reason and notes of every graded submission)")
    return 0


def cmd_status(course: Course, args) -> int:
    ledger = course.read_ledger()
    if not ledger:
        say("nothing graded yet")
        return 0
    for key in sorted(ledger):
        entry = ledger[key]
        score = "" if entry.get("score") is None else f"{entry['score']:g}/{entry['max_score']:g}"
        say(f"{key:40} {entry.get('status', '?'):8} {score:>9}  {entry.get('reason', '')[:100]}")
    return 0


# ------------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run 'python -m grader COMMAND --help' for the options of a command.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--course-dir", default=None,
                        help="the nbgrader course root (default: the grader/ folder of this checkout)")
    common.add_argument("--db", default=None,
                        help="gradebook database, any SQLAlchemy URL (default: sqlite:///<course-dir>/gradebook.db)")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", parents=[common], help="write the student versions into release/")
    generate.add_argument("assignments", nargs="*", help="default: every assignment in source/")
    generate.add_argument("--book", action="store_true",
                          help="write the student versions into the book instead (book/exercises/<assignment>.ipynb, "
                               "the notebooks the chapters' Exercise sections link), generated in a temporary copy "
                               "of the course: release/ and the gradebook are not touched")
    generate.set_defaults(run=cmd_generate)

    autograde = commands.add_parser("autograde", parents=[common], help="grade submitted/ (or a folder of submissions)",
                                    description="Grade every submission in submitted/<student>/<assignment>/, each in "
                                                "its own process. Unchanged, already graded submissions are skipped.")
    autograde.add_argument("assignments", nargs="*", help="default: every assignment")
    autograde.add_argument("--submissions", metavar="PATH",
                           help="first import PATH: nbgrader's <student>/<assignment>/ layout, or a flat folder of "
                                "<student>_<assignment>.ipynb files")
    autograde.add_argument("--student", action="append", help="grade only this student (repeatable)")
    autograde.add_argument("--force", action="store_true", help="re-grade even unchanged, already graded submissions")
    autograde.add_argument("--allow-flagged", action="store_true",
                           help="grade submissions the static scan flags instead of withholding them (notes are kept)")
    autograde.add_argument("--cell-timeout", type=int, default=None,
                           help="seconds per cell (default: the course config's ExecutePreprocessor.timeout)")
    autograde.add_argument("--submission-timeout", type=float, default=600.0,
                           help="seconds for a whole notebook before its process is killed (default 600)")
    autograde.add_argument("--memory-mb", type=int, default=4096,
                           help="address-space limit of the grading process and its kernel, MiB (default 4096; "
                                "0 = none)")
    autograde.set_defaults(run=cmd_autograde)

    feedback = commands.add_parser("feedback", parents=[common], help="write feedback HTML into feedback/")
    feedback.add_argument("assignments", nargs="*", help="default: every assignment")
    feedback.add_argument("--student", action="append", help="only this student (repeatable)")
    feedback.set_defaults(run=cmd_feedback)

    export = commands.add_parser("export", parents=[common], help="write the grades CSV")
    export.add_argument("--to", help="CSV path (default: <course-dir>/grades.csv); grading_report.csv goes beside it")
    export.set_defaults(run=cmd_export)

    status = commands.add_parser("status", parents=[common], help="list graded submissions and their status")
    status.set_defaults(run=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    course = Course.open(args.course_dir, args.db)
    return args.run(course, args)
