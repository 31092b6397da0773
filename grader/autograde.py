"""``python -m grader autograde``: grade a class, each submission in its own harness process and sandbox,
several at a time (``--workers N``, default: one per core) or on a Dask cluster (``--scheduler ADDRESS``).

For each submission the CLI (this process, the only one that writes the gradebook and the ledger)

1. reads and stages it (`grader.intake`): nothing of the student's runs here;
2. hands the staged cells and tests to a pool (`grader.parallel`), which runs `grader.harness.worker` on them
   in a process of its own, with a memory limit and a wall-clock limit: the worker runs the student's code in
   a bubblewrap sandbox and the test cells outside it, and returns its verdicts as data (locally through a
   file in the course's state folder, which the sandbox cannot see);
3. records the verdicts, in this process's main thread, as each submission's harness ends, through
   nbgrader's own autograde pipeline with `grader.nbgrader_ext.ApplyVerdicts` in place of execution: nbgrader
   writes ``autograded/`` and the gradebook as usual.

A submission that cannot be read, or whose worker fails, still gets a complete grade of zero with the reason,
and the batch goes on. Unchanged submissions already graded with the same tests, checks, references and
harness are skipped.
"""

from __future__ import annotations

import json
import os
import queue
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import intake
from .course import STAGING, Course
from .parallel import Job, LocalPool, Ran, default_workers


def say(*parts) -> None:
    print(*parts, flush=True)


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
    timings: dict = field(default_factory=dict)


@dataclass
class Assignment:
    """What grading one assignment needs from the gradebook and the release, read once per batch."""

    name: str
    order: list[str]
    cells: dict[str, intake.SourceCell]
    release: nbformat.NotebookNode


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


def load_assignment(course: Course, assignment: str) -> Assignment:
    """The source notebook's grade ids in order; every locked cell as the gradebook holds it (the source
    version, with hidden tests), and every solution cell with its release metadata."""
    source = nbformat.read(course.source_notebook(assignment), as_version=4)
    order = [intake.nbgrader_meta(c)["grade_id"] for c in source.cells if intake.nbgrader_meta(c).get("grade_id")]
    release = nbformat.read(course.release_notebook(assignment), as_version=4)
    released = {}
    for cell in release.cells:
        meta = intake.nbgrader_meta(cell)
        if meta.get("grade_id"):
            released[meta["grade_id"]] = cell
    cells: dict[str, intake.SourceCell] = {}
    with course.gradebook() as gb:
        notebook = gb.find_notebook(assignment, assignment)
        grade_cells = {c.name: c for c in notebook.grade_cells}
        for cell in notebook.source_cells:
            grade = grade_cells.get(cell.name)
            if cell.locked:
                release_cell = released.get(cell.name)
                checksums = tuple(c for c in (release_cell.metadata["nbgrader"].get("checksum") if release_cell
                                              else None, cell.checksum) if c)
                cells[cell.name] = intake.SourceCell(cell.name, cell.cell_type, cell.source, checksums,
                                                     grade is not None, grade.max_score if grade else None)
    for grade_id, cell in released.items():
        if grade_id not in cells and cell.metadata["nbgrader"].get("solution"):
            cells[grade_id] = intake.SourceCell(grade_id, cell.cell_type, cell.source, (), False, None, locked=False,
                                                metadata=json.loads(json.dumps(cell.metadata)))
    return Assignment(assignment, order, cells, release)


# ------------------------------------------------------------------------------------------------ recording


def record(course: Course, assignment: str, student: str, staged: intake.Staged, result: dict, withhold: str,
           run_dir: Path) -> str:
    """Write the staged notebook and let nbgrader autograde it with the verdicts; "" or the failure."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    from .nbgrader_ext import ApplyVerdicts

    verdicts_file = run_dir / "verdicts.json"
    tests = [dict(t, cell_id=staged.test_cell_ids.get(t["grade_id"])) for t in result.get("tests", [])]
    verdicts_file.write_text(json.dumps({"cells": result.get("cells", []), "tests": tests}))
    folder = course.root / STAGING / student / assignment
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    nbformat.write(staged.notebook, folder / f"{assignment}.ipynb")
    stamp = course.root / "submitted" / student / assignment / "timestamp.txt"
    if intake.refusal(stamp) is None:
        (folder / "timestamp.txt").write_bytes(intake.read_regular(stamp, 4096))
    defaults = Autograde.class_traits()["autograde_preprocessors"].default()
    pipeline = [ApplyVerdicts if p is Execute else p for p in defaults]
    api = course.api(**{"CourseDirectory.submitted_directory": STAGING,
                        "Autograde.autograde_preprocessors": pipeline,
                        "OverwriteCells.add_missing_cells": True,
                        "ApplyVerdicts.verdicts_file": "" if withhold else str(verdicts_file),
                        "ApplyVerdicts.withhold_reason": withhold})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush warnings while nbgrader creates a submission
        outcome = api.autograde(assignment, student, force=True, create=True)
    if not outcome.get("success"):
        log = (outcome.get("error") or outcome.get("log") or "").strip().splitlines()
        return "nbgrader could not record it: " + (log[-1][:300] if log else "unknown error")
    return ""


def read_grades(course: Course, assignment: str, student: str):
    from nbgrader.api import MissingEntry

    with course.gradebook() as gb:
        try:
            submission = gb.find_submission(assignment, student)
        except MissingEntry:
            return None
        grades = [(g.name, g.score, g.max_score, g.auto_score) for nb in submission.notebooks for g in nb.grades]
        return submission.score, submission.max_score, grades


MEMORY_ERROR_MARKERS = ("MemoryError", "can't allocate memory", "not enough memory", "DefaultCPUAllocator",
                        "std::bad_alloc", "Cannot allocate memory", "ran out of memory")


def cell_notes(staged: intake.Staged, reports: list[dict], memory_mb: int) -> list[str]:
    """The instructor's notes about the student's cells: stopped (a hang or a crash), out of memory, too
    much output. Each names the cell by its grade id where it has one."""
    names = {}
    for number, cell in enumerate(staged.notebook.cells, start=1):
        names[cell.get("id")] = intake.nbgrader_meta(cell).get("grade_id") or f"cell {number}"
    notes = []
    for report in reports:
        name = names.get(report.get("id"), "a cell")
        error = report.get("error") or {}
        text = f"{error.get('name', '')}: {error.get('message', '')}"
        if error.get("name") == "CellStopped":
            notes.append(f"cell stopped in {name}: {error.get('message', '')}")
        elif any(marker in text for marker in MEMORY_ERROR_MARKERS):
            notes.append(f"memory in {name}: ran out of memory (the sandbox's {memory_mb} MiB limit)")
        if str(report.get("output", "")).endswith("[grader] output truncated\n"):
            notes.append(f"output truncated in {name}: it printed more than the runner keeps")
    return notes


@dataclass
class Submission:
    """One submission between staging and recording: what the harness is given, and what the record needs."""

    number: int
    assignment: str
    student: str
    staged: intake.Staged
    notes: list[str]
    withhold: str  # why it is not run (every test then scores 0), or ""
    run_dir: Path
    digest: str
    assignment_digest: str
    stage_seconds: float


def stage_submission(course: Course, spec: Assignment, number: int, student: str, digest: str,
                     assignment_digest: str) -> Submission:
    """Read and stage one submission (`grader.intake`: nothing of the student's runs)."""
    started = time.monotonic()
    assignment = spec.name
    folder = course.root / "submitted" / student / assignment
    notes: list[str] = []
    withhold = ""
    located = intake.locate_notebook(folder, assignment, set(spec.order))
    nb = None
    if located.problem:
        withhold = located.problem
    else:
        notes += located.notes
        nb, problem = intake.read_notebook(located.path)
        withhold = problem or ""
    staged = intake.stage(nb, spec.order, spec.cells, spec.release)
    notes += staged.notes
    run_dir = course.state_dir / "runs" / assignment / student
    run_dir.mkdir(parents=True, exist_ok=True)
    return Submission(number, assignment, student, staged, notes, withhold, run_dir, digest, assignment_digest,
                      time.monotonic() - started)


def harness_job(submission: Submission, opts) -> Job:
    """The harness's part of a submission, as data: the staged cells and tests, and the limits."""
    staged = submission.staged
    limits = dict(memory_mb=opts.memory_mb, budget=opts.submission_timeout, cell_timeout=opts.cell_timeout,
                  call_timeout=min(30.0, opts.submission_timeout), max_restarts=2)
    spec = dict(assignment=submission.assignment, student=submission.student, setup=staged.setup,
                cells=staged.cells, tests=staged.tests, sandbox=not opts.no_sandbox, limits=limits)
    wall = opts.submission_timeout + 120  # the student's budget, plus the checks' own work and the imports
    return Job(submission.number, submission.assignment, submission.student, spec, submission.run_dir,
               opts.memory_mb, wall)


def finish_submission(course: Course, submission: Submission, ran: Ran | None, opts) -> Outcome:
    """Record one submission in the gradebook (this process only): with the harness's verdicts, or as zero
    with the reason when it was not run (``ran`` is None) or its harness failed."""
    staged, notes = submission.staged, list(submission.notes)
    result, failure = (ran.result, ran.failure) if ran else ({}, "")
    if ran is not None:
        notes += cell_notes(staged, result.get("cells", []), opts.memory_mb)
        notes += [f"sandbox: {line}" for line in result.get("events", [])]
    if opts.no_sandbox:
        notes.append("graded WITHOUT a sandbox (--no-sandbox): the student's code ran with the grader's rights")
    withhold = submission.withhold
    reason = withhold or (f"not graded, every test scores 0: {failure}" if failure else "")
    lines = notes + ([f"not run, every test scores 0: {withhold}"] if withhold else [])
    if lines:
        staged.notebook.cells.insert(0, intake.note_cell(lines))
    mark = time.monotonic()
    record_failure = record(course, submission.assignment, submission.student, staged, result, reason,
                            submission.run_dir)
    grades = read_grades(course, submission.assignment, submission.student)
    timings = {f"worker_{k}": v for k, v in result.get("seconds", {}).items()}
    timings.update(worker_process=round(ran.seconds if ran else 0.0, 3), record=round(time.monotonic() - mark, 3))
    outcome = Outcome(submission.assignment, submission.student, "failed", notes=notes, reason=withhold or failure,
                      timings=timings)
    outcome.seconds = submission.stage_seconds + (ran.seconds if ran else 0.0) + time.monotonic() - mark
    if record_failure or grades is None:
        outcome.reason = record_failure or "no grade was recorded in the gradebook"
    elif failure:
        outcome.status, outcome.score, outcome.max_score = "failed", grades[0], grades[1]
    else:
        outcome.status = "zeroed" if withhold else "graded"
        outcome.score, outcome.max_score = grades[0], grades[1]
    return outcome


# ---------------------------------------------------------------------------------------------------- batch


def discover(course: Course, assignments: list[str], students: list[str] | None) -> list[tuple[str, str]]:
    submitted = course.root / "submitted"
    found = []
    if submitted.is_dir():
        for student_dir in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.is_symlink()):
            if students and student_dir.name not in students:
                continue
            if not intake.STUDENT_ID.match(student_dir.name):
                continue
            for assignment in assignments:
                if (student_dir / assignment).is_dir() or (student_dir / assignment).is_symlink():
                    found.append((assignment, student_dir.name))
    return sorted(found)


def open_pool(course: Course, args):
    """Where the harness runs: the Dask cluster of ``--scheduler``, else ``--workers`` local workers."""
    if getattr(args, "scheduler", None):
        from .parallel import DaskPool

        return DaskPool(args.scheduler, sandbox=not args.no_sandbox)
    return LocalPool(args.workers or default_workers(), course.state_dir / "forkserver.log")


def cmd_autograde(course: Course, args) -> int:
    from .harness.sandbox import SandboxUnavailable, open_sandbox
    from .parallel import SchedulerError

    known = course.assignments()
    unknown = [a for a in args.assignments if a not in known]
    if unknown:
        say(f"error: unknown assignment(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    if args.no_sandbox:
        say("warning: --no-sandbox: student code runs with your rights; the report marks these grades")
    elif not getattr(args, "scheduler", None):  # with a cluster, its workers check their own sandboxes
        try:
            open_sandbox().release()
        except SandboxUnavailable as exc:
            say(f"error: cannot grade safely here: {exc}.\n  Student code must run in a sandbox. To grade anyway "
                f"(only code you trust, e.g. your own tests), pass --no-sandbox: the report marks every such grade.")
            return 2
    try:
        pool = open_pool(course, args)
    except SchedulerError as exc:
        say(f"error: {exc}")
        return 2
    try:
        return grade_batch(course, args, pool, known)
    finally:
        pool.close()


def grade_batch(course: Course, args, pool, known: list[str]) -> int:
    """Grade every submission found: the harness runs in ``pool``; this thread stages, records each result as
    it comes (one line per submission, numbered in the batch's order), and writes the ledger."""
    if args.submissions:
        path = Path(args.submissions)
        if not path.is_dir():
            say(f"error: {path} is not a folder")
            return 2
        imported, problems = intake.import_submissions(course.root / "submitted", path, args.assignments or known)
        say(f"imported {len(imported)} new or changed submission(s) from {path} into submitted/")
        for problem in problems:
            say(f"  not imported: {problem}")
    todo = discover(course, args.assignments or known, args.student)
    if not todo:
        say("nothing to grade: no submissions found in " + str(course.root / "submitted"))
        return 0
    pool.start()
    say(f"grading {len(todo)} submission(s) {pool.describe()}")
    ledger = course.read_ledger()
    outcomes: dict[int, Outcome] = {}
    prepared: dict[str, Assignment] = {}
    running: dict[int, Submission] = {}
    done: queue.Queue = queue.Queue()
    batch_started = time.monotonic()
    width = len(str(len(todo)))

    def conclude(number: int, outcome: Outcome, digests: tuple[str, str] | None = None, where: str = "") -> None:
        """Print the submission's line and, unless it was skipped, put it in the ledger (``digests``: of its
        files and of its assignment)."""
        assignment, student = todo[number - 1]
        outcomes[number] = outcome
        if digests is not None:
            entry = dict(status=outcome.status, score=outcome.score, max_score=outcome.max_score,
                         reason=outcome.reason, notes=outcome.notes, digest=digests[0],
                         assignment_digest=digests[1], seconds=round(outcome.seconds, 2),
                         timings=outcome.timings, sandbox=not args.no_sandbox,
                         graded_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            if where:
                entry["graded_on"] = where
            ledger[f"{assignment}/{student}"] = entry
            course.write_ledger(ledger)
        line = f"[{number:>{width}}/{len(todo)}] {assignment} / {student}: {outcome.status}"
        if outcome.status == "skipped":
            line += f" (already graded, unchanged): {outcome.score:g}/{outcome.max_score:g}"
            say(line)
            return
        if outcome.score is not None:
            line += f" {outcome.score:g}/{outcome.max_score:g}"
        line += f" ({outcome.seconds:.1f} s)"
        if outcome.reason:
            line += f" - {outcome.reason[:160]}"
        elif outcome.notes:
            line += f" - {len(outcome.notes)} note(s): {outcome.notes[0][:120]}"
        say(line)

    def finish(number: int, submission: Submission, ran: Ran | None) -> None:
        try:
            outcome = finish_submission(course, submission, ran, args)
        except Exception as exc:  # noqa: BLE001 (the batch goes on; the reason is recorded)
            outcome = Outcome(submission.assignment, submission.student, "failed",
                              reason=f"grader error: {type(exc).__name__}: {exc}")
        conclude(number, outcome, (submission.digest, submission.assignment_digest), ran.where if ran else "")

    def record_next() -> None:
        ran = done.get()()
        finish(ran.job.number, running.pop(ran.job.number), ran)

    assignment_digests: dict[str, str] = {}
    for number, (assignment, student) in enumerate(todo, start=1):
        digest = intake.folder_digest(course.root / "submitted" / student / assignment)
        if assignment not in assignment_digests:
            assignment_digests[assignment] = course.assignment_digest(assignment)
        previous = ledger.get(f"{assignment}/{student}")
        if (not args.force and previous and previous.get("digest") == digest
                and previous.get("assignment_digest") == assignment_digests[assignment]
                and previous.get("status") in ("graded", "zeroed")
                and previous.get("sandbox", True) == (not args.no_sandbox)
                and (course.root / "autograded" / student / assignment).is_dir()
                and read_grades(course, assignment, student) is not None):
            conclude(number, Outcome(assignment, student, "skipped", previous["score"], previous["max_score"]))
            continue
        try:
            if assignment not in prepared:
                ensure_generated(course, assignment)
                prepared[assignment] = load_assignment(course, assignment)
            submission = stage_submission(course, prepared[assignment], number, student, digest,
                                          assignment_digests[assignment])
        except Exception as exc:  # noqa: BLE001 (the batch goes on; the reason is recorded)
            reason = f"grader error: {type(exc).__name__}: {exc}"
            conclude(number, Outcome(assignment, student, "failed", reason=reason),
                     (digest, assignment_digests[assignment]))
            continue
        if submission.withhold:  # not run: recorded as zero at once
            finish(number, submission, None)
            continue
        while len(running) >= pool.capacity():
            record_next()
        running[number] = submission
        pool.submit(harness_job(submission, args), done)
    while running:
        record_next()
    return summarise([outcomes[n] for n in sorted(outcomes)], time.monotonic() - batch_started, pool.describe())


def summarise(outcomes: list[Outcome], elapsed: float, where: str = "") -> int:
    done = [o for o in outcomes if o.status != "skipped"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("graded", "zeroed", "failed", "skipped")}
    say("")
    say(f"Summary: {len(outcomes)} submission(s): {counts['graded']} graded, {counts['zeroed']} zeroed (not run, "
        f"score 0), {counts['failed']} failed, {counts['skipped']} skipped (unchanged)")
    if done:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        rate = 60 * len(done) / max(elapsed, 1e-9)
        say(f"  {len(done)} graded in {elapsed:.0f} s: {rate:.1f} submissions per minute "
            f"({where + ', ' if where else ''}{os.cpu_count()} cores here, load average {load:.1f})")
    for o in outcomes:
        if o.status in ("zeroed", "failed"):
            say(f"  {o.status:7} {o.assignment}/{o.student}: {o.reason}")
    for o in outcomes:
        if o.status == "graded" and o.notes:
            say(f"  notes   {o.assignment}/{o.student}:")
            for note in o.notes:
                say(f"            {note}")
    return 1 if counts["failed"] else 0
