"""``python -m grader bench``: how many submissions per minute this machine grades, one at a time and with
``--workers N``, measured on the same honest class in one run.

It copies the course into a temporary folder, generates it, makes a class of ``--students`` students who each
hand in the source solutions of every assignment (4 x 6 = 24 submissions by default), and grades that class
twice through ``autograde``, into two copies of the generated course: with ``--workers 1``, then with
``--workers N``. It prints both throughputs, their ratio, the cores and the load average, and where a
submission's seconds went (from the ledger's timings). Every submission must score full marks, and both runs
must give the same grade to every test cell: otherwise it says which and exits with status 1. Nothing of the
course it was given is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .course import Course

GENERATED = ("release", "submitted", "autograded", "feedback", ".grader", "gradebook.db", "*.csv", "__pycache__")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def make_class(course: Path, inbox: Path, students: int, assignments: list[str]) -> list[str]:
    """``students`` honest students, each handing in every assignment's source notebook (its solutions)."""
    names = [f"bench{number:02d}" for number in range(1, students + 1)]
    for name in names:
        for assignment in assignments:
            folder = inbox / name / assignment
            folder.mkdir(parents=True)
            shutil.copy(course / "source" / assignment / f"{assignment}.ipynb", folder)
    return names


def gradebook_scores(course: Course, assignments: list[str]) -> dict:
    """``{(assignment, student): {test cell: score}}``, as the gradebook holds them."""
    scores = {}
    with course.gradebook() as gb:
        for assignment in assignments:
            for submission in gb.assignment_submissions(assignment):
                scores[(assignment, submission.student_id)] = {
                    g.name: g.score for nb in submission.notebooks for g in nb.grades}
    return scores


PARTS = (("harness start", lambda t: t["worker_process"] - t["worker_total"]),
         ("set-up cell", lambda t: t.get("worker_setup", 0.0)),
         ("sandbox start and cells", lambda t: t.get("worker_cells", 0.0)),
         ("tests (with sandbox recycling)", lambda t: t.get("worker_tests", 0.0)),
         ("recording (nbgrader)", lambda t: t["record"]))


def grade(folder: Path, inbox: Path, workers: int) -> dict:
    """Autograde the class in ``folder`` with ``workers`` workers; its figures and what the ledger says."""
    from .autograde import cmd_autograde
    from .cli import build_parser

    course = Course.open(folder / "course", f"sqlite:///{folder / 'gradebook.db'}")
    args = build_parser().parse_args(["autograde", "--course-dir", str(course.root), "--db", course.db_url,
                                      "--submissions", str(inbox), "--workers", str(workers)])
    load_before = load_average()
    printed = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(printed):
        status = cmd_autograde(course, args)
    seconds = time.monotonic() - started
    ledger = course.read_ledger()
    return dict(workers=workers, status=status, seconds=seconds, load_before=load_before, load_after=load_average(),
                ledger=ledger, output=printed.getvalue(), course=course)


def describe(run: dict, count: int) -> str:
    rate = 60 * count / run["seconds"]
    return (f"--workers {run['workers']}: {count} submissions in {run['seconds']:.1f} s = {rate:.1f} submissions per "
            f"minute (load average {run['load_before']:.2f} before, {run['load_after']:.2f} after)")


def breakdown(run: dict) -> list[str]:
    timings = [entry["timings"] for entry in run["ledger"].values() if entry.get("status") == "graded"]
    if not timings:
        return []
    lines = [f"  where a submission's seconds went, --workers {run['workers']} (mean / median per submission):"]
    for name, part in PARTS:
        values = [part(t) for t in timings]
        lines.append(f"    {name:32} {statistics.mean(values):6.2f} s / {statistics.median(values):5.2f} s")
    total = [entry["seconds"] for entry in run["ledger"].values() if entry.get("status") == "graded"]
    lines.append(f"    {'total (staging to recorded)':32} {statistics.mean(total):6.2f} s / "
                 f"{statistics.median(total):5.2f} s")
    return lines


def problems_of(run: dict, expected: set, full_marks: dict) -> list[str]:
    problems = []
    if run["status"] != 0:
        problems.append(f"--workers {run['workers']}: autograde ended with status {run['status']}")
    for key in sorted(expected):
        entry = run["ledger"].get(key)
        assignment = key.split("/")[0]
        if entry is None or entry.get("status") != "graded" or entry.get("score") != full_marks[assignment]:
            got = "nothing" if entry is None else f"{entry.get('status')} {entry.get('score')}: {entry.get('reason')}"
            problems.append(f"--workers {run['workers']}: {key} expected full marks ({full_marks[assignment]:g}), "
                            f"got {got}")
    return problems


def cmd_bench(course: Course, args) -> int:
    from .autograde import say
    from .cli import main
    from .parallel import default_workers

    workers = args.workers or default_workers()
    assignments = args.assignments or course.assignments()
    unknown = sorted(set(assignments) - set(course.assignments()))
    if unknown:
        say(f"error: unknown assignment(s) {', '.join(unknown)}")
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="grader-bench-"))
    try:
        serial, parallel = scratch / "serial", scratch / "parallel"
        shutil.copytree(course.root, serial / "course", ignore=shutil.ignore_patterns(*GENERATED))
        generated = Course.open(serial / "course", f"sqlite:///{serial / 'gradebook.db'}")
        say(f"bench: generating {len(assignments)} assignment(s) in {scratch}")
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["generate", *assignments, "--course-dir", str(generated.root), "--db", generated.db_url])
        if status:
            say("error: generating the assignments failed")
            return 1
        shutil.copytree(serial, parallel)
        inbox = scratch / "inbox"
        students = make_class(generated.root, inbox, args.students, assignments)
        count = len(students) * len(assignments)
        with generated.gradebook() as gb:
            full_marks = {a: gb.find_assignment(a).max_score for a in assignments}
        expected = {f"{a}/{s}" for a in assignments for s in students}
        cores = default_workers()
        say(f"bench: {count} honest submissions ({len(students)} students x {len(assignments)} assignments), "
            f"{cores} core(s), load average {load_average():.2f}")
        runs = []
        for folder, count_workers in ((serial, 1), (parallel, workers)):
            run = grade(folder, inbox, count_workers)
            say("  " + describe(run, count))
            runs.append(run)
        one, many = runs
        ratio = one["seconds"] / many["seconds"]
        say(f"  ratio: {ratio:.2f}x the throughput of one worker, with {workers} worker(s) on {cores} core(s)")
        for run in runs:
            for line in breakdown(run):
                say(line)
        problems = problems_of(one, expected, full_marks) + problems_of(many, expected, full_marks)
        first = gradebook_scores(one["course"], assignments)
        second = gradebook_scores(many["course"], assignments)
        for key in sorted(set(first) | set(second)):
            if first.get(key) != second.get(key):
                problems.append(f"{key[0]}/{key[1]}: the grades differ between the runs: {first.get(key)} "
                                f"and {second.get(key)}")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "submissions": count, "cores": cores, "workers": workers, "ratio": ratio,
                "runs": [{k: run[k] for k in ("workers", "seconds", "load_before", "load_after")} |
                         {"per_minute": 60 * count / run["seconds"],
                          "timings": {key: entry["timings"] for key, entry in run["ledger"].items()}}
                         for run in runs]}, indent=1))
        if problems:
            say("bench: FAILED:\n  " + "\n  ".join(problems))
            for run in runs:
                say(f"--- autograde output, --workers {run['workers']}:\n{run['output']}")
            return 1
        return 0
    finally:
        if args.keep:
            say(f"bench: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
