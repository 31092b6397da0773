"""Autograde one staged submission with nbgrader; run by the CLI in its own process (``python -m grader._worker
SPEC.json``), under a wall-clock and a memory limit, so that a bad submission cannot take the batch down.

SPEC.json holds: course_dir, db_url, assignment, student, cell_timeout, withhold_reason, events_file,
result_file. The result file gets ``{"success": bool, "error": str, "log": str}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# jsonschema (under nbformat) imports the optional `rfc3987_syntax` when it is installed, which compiles a grammar
# at import time (2 s of CPU) for the "iri" string formats that nbformat's schemas never use. This process only
# reads and writes notebooks: skip it.
sys.modules.setdefault("rfc3987_syntax", None)


def autograde_config(spec: dict) -> dict:
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    from .nbgrader_ext import GraderExecute

    pipeline = [GraderExecute if p is Execute else p for p in Autograde.class_traits()["autograde_preprocessors"].default()]
    overrides = {
        "CourseDirectory.submitted_directory": spec["staging"],
        "Autograde.autograde_preprocessors": pipeline,
        "OverwriteCells.add_missing_cells": True,
        "GraderExecute.withhold_reason": spec.get("withhold_reason") or "",
        "GraderExecute.events_file": spec.get("events_file") or "",
    }
    if spec.get("cell_timeout"):
        overrides["GraderExecute.timeout"] = int(spec["cell_timeout"])
    return overrides


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = {"success": False, "error": "", "log": ""}
    try:
        from .course import Course

        course = Course(Path(spec["course_dir"]), spec["db_url"])
        api = course.api(**autograde_config(spec))
        outcome = api.autograde(spec["assignment"], spec["student"], force=True, create=True)
        result.update(success=bool(outcome.get("success")), error=outcome.get("error") or "",
                      log=(outcome.get("log") or "")[-20000:])
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which records the reason)
        import traceback

        result["error"] = "".join(traceback.format_exception(exc))[-5000:]
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
