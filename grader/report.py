"""``python -m grader feedback | export | status``: what goes back to students and to the registrar.

Feedback is built from an allow-list, not by rendering the autograded notebook: the page is this module's
template, into which go only

* the student's own code, cell by cell, as escaped text;
* each test's name, points and the harness's message (which, for a hidden test, names the mistake and never
  its inputs or expected values), as escaped text;
* the visible part of each test cell, taken from the *release* notebook (which nbgrader generated without the
  hidden tests), never from the autograded one.

What the student's code printed, and any markdown, HTML or JavaScript of theirs, is left out: nothing of the
student's is ever rendered. The page loads nothing from anywhere.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

import nbformat

from .course import Course
from .intake import nbgrader_meta


def say(*parts) -> None:
    print(*parts, flush=True)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
pre { background: #f6f8fa; padding: .75rem; overflow-x: auto; white-space: pre-wrap; border-radius: 4px; }
.test { border-left: 4px solid #999; padding-left: .75rem; margin: 1rem 0; }
.pass { border-color: #2a7; } .fail { border-color: #c33; }
table { border-collapse: collapse; } td, th { padding: .2rem .6rem; border-bottom: 1px solid #ddd; text-align: left; }
.note { color: #555; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _message(cell) -> tuple[bool, str]:
    """(passed, message) of a test cell of the autograded notebook, from the outputs the grader wrote."""
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        return False, "\n".join(f"{o.get('ename', 'Error')}: {o.get('evalue', '')}" for o in errors)
    printed = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    return True, printed.strip()


def feedback_html(course: Course, assignment: str, student: str) -> str:
    autograded = nbformat.read(course.root / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    release = nbformat.read(course.release_notebook(assignment), as_version=4)
    visible = {nbgrader_meta(c).get("grade_id"): c.source for c in release.cells if nbgrader_meta(c).get("grade_id")}
    with course.gradebook() as gb:
        submission = gb.find_submission(assignment, student)
        total, maximum = submission.score, submission.max_score
        scores = {g.name: (g.score, g.max_score) for nb in submission.notebooks for g in nb.grades}
    rows, body = [], []
    entry = course.read_ledger().get(f"{assignment}/{student}", {})
    notes = ([f"not graded, every test scores 0: {entry['reason']}"] if entry.get("reason") else []) + entry.get(
        "notes", [])
    if notes:  # from the CLI's own record: a cell of the student's cannot pose as one
        body.append('<h3>Grader notes</h3><pre class="note">' + _e("\n".join(f"- {n}" for n in notes)) + "</pre>")
    for cell in autograded.cells:
        meta = nbgrader_meta(cell)
        grade_id = meta.get("grade_id")
        if cell.cell_type != "code":
            continue
        if grade_id in scores and meta.get("grade") and not meta.get("solution"):
            score, points = scores[grade_id]
            passed, message = _message(cell)
            verdict = "passed" if passed else "failed"
            rows.append(f"<tr><td>{_e(grade_id)}</td><td>{_e(f'{score:g}')}/{_e(f'{points:g}')}</td>"
                        f"<td>{verdict}</td></tr>")
            shown = visible.get(grade_id, "")
            body.append(f'<div class="test {"pass" if passed else "fail"}"><h3>Test {_e(grade_id)}: '
                        f'{_e(f"{score:g}")} of {_e(f"{points:g}")} point(s), {verdict}</h3>'
                        + (f"<pre>{_e(shown)}</pre>" if shown.strip() else "")
                        + (f"<pre>{_e(message)}</pre>" if message else "") + "</div>")
        elif not meta.get("locked"):
            title = f"Your code: {grade_id}" if grade_id else "Your code"
            body.append(f"<h4>{_e(title)}</h4><pre>{_e(cell.source)}</pre>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_e(assignment)}: feedback for {_e(student)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{_e(assignment)}</h1><p>Feedback for <b>{_e(student)}</b>: <b>{_e(f'{total:g}')}</b> of "
            f"{_e(f'{maximum:g}')} points.</p>"
            "<p class=\"note\">What your code printed is not shown here; hidden tests show only what went wrong.</p>"
            f"<table><tr><th>test</th><th>points</th><th>result</th></tr>{''.join(rows)}</table>"
            + "".join(body) + "</body></html>\n")


def cmd_feedback(course: Course, args) -> int:
    assignments = args.assignments or course.assignments()
    failed = 0
    for assignment in assignments:
        graded = sorted(p.parent.name for p in (course.root / "autograded").glob(f"*/{assignment}"))
        graded = [s for s in graded if not args.student or s in args.student]
        if not graded:
            say(f"{assignment}: no autograded submissions")
            continue
        for student in graded:
            target = course.root / "feedback" / student / assignment / f"{assignment}.html"
            try:
                page = feedback_html(course, assignment, student)
            except Exception as exc:  # noqa: BLE001 (one bad record does not stop the others)
                failed += 1
                say(f"{assignment} / {student}: FAILED ({type(exc).__name__}: {exc})")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(page, encoding="utf-8")
            say(f"{assignment} / {student}: {target.relative_to(course.root)}")
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
        writer.writerow(["assignment", "student", "status", "score", "max_score", "sandbox", "reason", "notes"])
        for key in sorted(ledger):
            entry = ledger[key]
            assignment, student = key.split("/", 1)
            writer.writerow([assignment, student, entry.get("status"), entry.get("score"), entry.get("max_score"),
                             "yes" if entry.get("sandbox", True) else "NO (--no-sandbox)", entry.get("reason", ""),
                             " | ".join(entry.get("notes", []))])
    rows = max(sum(1 for _ in open(to)) - 1, 0)
    say(f"grades: {to} ({rows} rows, nbgrader's CSV format)")
    say(f"report: {report} (status, sandbox, reason and notes of every graded submission)")
    return 0


def cmd_status(course: Course, args) -> int:
    ledger = course.read_ledger()
    if not ledger:
        say("nothing graded yet")
        return 0
    for key in sorted(ledger):
        entry = ledger[key]
        score = "" if entry.get("score") is None else f"{entry['score']:g}/{entry['max_score']:g}"
        mark = "" if entry.get("sandbox", True) else " [no sandbox]"
        say(f"{key:40} {entry.get('status', '?'):8} {score:>9}{mark}  {entry.get('reason', '')[:100]}")
    return 0
