"""``python -m grader``: the instructor's command line around nbgrader.

    python -m grader generate  [ASSIGNMENT ...]                       student versions into release/
    python -m grader generate  --book [ASSIGNMENT ...]                the book's copies, book/exercises/*.ipynb
    python -m grader autograde [ASSIGNMENT ...] [--submissions PATH]  grade a class, each submission sandboxed
                               [--workers N | --scheduler ADDRESS]    (N at a time, or on a Dask cluster)
    python -m grader bench     [--students K] [--workers N]           measure grading throughput
    python -m grader feedback  [ASSIGNMENT ...]                       feedback HTML into feedback/
    python -m grader export    [--to grades.csv]                      grades CSV (+ grading_report.csv)
    python -m grader status                                           what has been graded, and how

Common options: ``--course-dir`` (default: this package's folder, the course root) and ``--db`` (any SQLAlchemy
URL; default the course's ``gradebook.db``). See grader/README.md for the workflow. The commands live along
nbgrader's own lines: `grader.generate`, `grader.intake` and `grader.autograde`, `grader.report`.
"""

from __future__ import annotations

import argparse

from . import autograde as autograde_step
from . import bench as bench_step
from . import generate as generate_step
from . import report
from .course import Course
from .parallel import default_workers


def whole_number(what: str, why: str):
    """An argparse type: a whole number of ``what``, 1 or more (``why`` says why 0 makes no sense)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number of {what}, 1 or more (got {text!r})") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be 1 or more: {why} (got {value})")
        return value
    return parse


worker_count = whole_number("workers", "one worker grades one submission at a time")


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

    generate = commands.add_parser("generate", parents=[common], help="write the student versions into release/ and their kits into kits/")
    generate.add_argument("assignments", nargs="*", help="default: every assignment in source/")
    generate.add_argument("--book", action="store_true",
                          help="write the student kits into the book instead (book/exercises/<assignment>.zip, "
                               "the kits the chapters' Exercise sections link), generated in a temporary copy "
                               "of the course: release/, kits/ and the gradebook are not touched")
    generate.set_defaults(run=generate_step.cmd_generate)

    autograde = commands.add_parser("autograde", parents=[common], help="grade submitted/ (or a folder of submissions)",
                                    description="Grade every submission in submitted/<student>/<assignment>/, each in "
                                                "its own process and sandbox, several at a time (--workers) or on a "
                                                "Dask cluster (--scheduler). Unchanged, already graded submissions "
                                                "are skipped.")
    autograde.add_argument("assignments", nargs="*", help="default: every assignment")
    autograde.add_argument("--submissions", metavar="PATH",
                           help="first import PATH: nbgrader's <student>/<assignment>/ layout, or a flat folder of "
                                "<student>_<assignment>.ipynb files")
    autograde.add_argument("--student", action="append", help="grade only this student (repeatable)")
    autograde.add_argument("--force", action="store_true", help="re-grade even unchanged, already graded submissions")
    autograde.add_argument("--cell-timeout", type=float, default=30.0,
                           help="seconds one cell of the student's may run (default 30)")
    autograde.add_argument("--submission-timeout", type=float, default=60.0,
                           help="seconds of wall time one submission's code may use in all, cells, calls and "
                                "restarts together (default 60); then its remaining tests score 0")
    autograde.add_argument("--memory-mb", type=int, default=4096,
                           help="address-space limit of the submission's sandbox, MiB (default 4096)")
    autograde.add_argument("--no-sandbox", action="store_true",
                           help="run student code without the sandbox (where bubblewrap cannot run, e.g. macOS); "
                                "only for code you trust: the report marks every grade made so")
    where = autograde.add_mutually_exclusive_group()
    where.add_argument("--workers", type=worker_count, default=None, metavar="N",
                           help="submissions graded at the same time, each in its own process and sandbox "
                                f"(default: the number of cores, here {default_workers()})")
    where.add_argument("--scheduler", metavar="ADDRESS",
                           help="grade on a Dask cluster instead: the address of its scheduler, e.g. "
                                "tcp://10.0.0.5:8786 (it and its workers need this checkout and its virtualenv, "
                                "the workers bubblewrap; see grader/README.md). This process still records every "
                                "grade")
    autograde.set_defaults(run=autograde_step.cmd_autograde)

    bench = commands.add_parser("bench", help="measure grading throughput, one worker against --workers N",
                                description="Grade a class of honest submissions (the source solutions) in a "
                                            "temporary copy of the course, with one worker and with --workers N, "
                                            "and print both throughputs, their ratio, the cores, the load average "
                                            "and where a submission's seconds go. Exit status 1 if any submission "
                                            "misses full marks or the two runs' grades differ.")
    bench.add_argument("assignments", nargs="*", help="default: every assignment")
    bench.add_argument("--course-dir", default=None,
                       help="the course to copy (default: the grader/ folder of this checkout); it is not written")
    bench.add_argument("--students", type=whole_number("students", "the class needs a student"), default=4,
                       help="students in the class, each handing in every assignment (default 4)")
    bench.add_argument("--workers", type=worker_count, default=None, metavar="N",
                       help=f"workers of the parallel run (default: the number of cores, here {default_workers()})")
    bench.add_argument("--json", metavar="PATH", help="also write the figures and every submission's timings here")
    bench.add_argument("--keep", action="store_true", help="keep the temporary course copies (their ledgers, logs)")
    bench.set_defaults(run=bench_step.cmd_bench, db=None)

    feedback = commands.add_parser("feedback", parents=[common], help="write feedback HTML into feedback/")
    feedback.add_argument("assignments", nargs="*", help="default: every assignment")
    feedback.add_argument("--student", action="append", help="only this student (repeatable)")
    feedback.set_defaults(run=report.cmd_feedback)

    export = commands.add_parser("export", parents=[common], help="write the grades CSV")
    export.add_argument("--to", help="CSV path (default: <course-dir>/grades.csv); grading_report.csv goes beside it")
    export.set_defaults(run=report.cmd_export)

    status = commands.add_parser("status", parents=[common], help="list graded submissions and their status")
    status.set_defaults(run=report.cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    course = Course.open(args.course_dir, args.db)
    return args.run(course, args)
