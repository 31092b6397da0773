"""The one nbgrader preprocessor the course adds: `ApplyVerdicts`, which takes the place of ``Execute`` in
nbgrader's autograde pipeline.

nbgrader would execute the notebook, test cells included, in one kernel with the student's code. Here the
harness (`grader.harness.worker`) has already run the student's code in its sandbox and the test cells
outside it; this preprocessor writes the outcome into the staged notebook as outputs, and nbgrader's own
``SaveAutoGrades`` then scores each test cell as it always does (an error output: no points; otherwise full
points) and records the grades in the gradebook. Every output is plain text (a stream or an error record):
nothing a student printed can become HTML in the formgrader or the feedback.
"""

from __future__ import annotations

import json

from nbformat.v4 import new_output
from traitlets import Unicode

from nbgrader.preprocessors import NbGraderPreprocessor


def _error(name: str, message: str, where: str = ""):
    return new_output("error", ename=name, evalue=message, traceback=[f"{name}: {message}{where}"])


class ApplyVerdicts(NbGraderPreprocessor):
    """Fill each cell's outputs from the harness's result file (see the module docstring)."""

    verdicts_file = Unicode("", help="The harness's result (JSON), or empty: every code cell gets `withhold_reason`."
                            ).tag(config=True)
    withhold_reason = Unicode("", help="Why the submission was not run: every test cell fails with this reason."
                              ).tag(config=True)

    def preprocess(self, nb, resources):
        self._cells, self._tests = {}, {}
        if self.verdicts_file:
            with open(self.verdicts_file, encoding="utf-8") as handle:
                result = json.load(handle)
            self._cells = {c["id"]: c for c in result.get("cells", [])}
            self._tests = {t["cell_id"]: t for t in result.get("tests", []) if t.get("cell_id")}
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        cell.outputs = []
        cell.execution_count = None
        key = cell.get("id")
        if self.withhold_reason:
            cell.outputs.append(_error("NotGraded", self.withhold_reason))
        elif key in self._tests:
            verdict = self._tests[key]
            if verdict.get("output"):
                cell.outputs.append(new_output("stream", name="stdout", text=verdict["output"]))
            if not verdict.get("passed"):
                error = verdict.get("error") or {"name": "Failed", "message": "the test failed"}
                cell.outputs.append(_error(error["name"], error["message"]))
        elif key in self._cells:
            report = self._cells[key]
            if report.get("output"):
                cell.outputs.append(new_output("stream", name="stdout", text=report["output"]))
            if report.get("error"):
                error = report["error"]
                cell.outputs.append(_error(error["name"], error["message"], error.get("location", "")))
        else:
            cell.outputs.append(_error("NotRun", "this cell was not run"))
        return cell, resources
