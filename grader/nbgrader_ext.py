"""nbgrader preprocessors that make autograding safe on bad submissions, and feedback safe to hand out.

`GraderExecute` replaces nbgrader's ``Execute`` in the autograde pipeline (the CLI wires it in):

* **cell timeout**: nbgrader interrupts a cell that runs past ``timeout``. If the kernel answers again, grading
  goes on with its state (functions defined before the loop remain); if it does not, the kernel is killed,
  restarted, and the earlier non-test cells are replayed, skipping the cell that hung.
* **crashed or killed kernel** (``os._exit``, ``SIGKILL``, a segfault, the out-of-memory killer): the cell gets
  an error output that says so, the kernel is restarted and the earlier non-test cells replayed, and grading
  continues with the next cell. So a test whose call kills the kernel loses its own points, not everyone's.
  After ``max_restarts`` restarts the remaining cells are marked as not run (an error output each: nbgrader
  would otherwise give an unexecuted test cell full marks).
* **runaway output**: each cell keeps at most ``max_output_chars`` characters of output, then one notice.
* **runaway memory**: a ``MemoryError`` (the CLI sets an address-space limit on the grading process and its
  kernel) is an ordinary error in the cell; it is recorded.
* **withheld submissions** (``withhold_reason``): no kernel is started and every code cell gets an error output
  with the reason, so every test scores 0 and the gradebook still gets a complete, zero grade.

Every such event is appended as a JSON line to ``events_file`` (the CLI reads it for its report).

`SanitizeFeedback` runs before the feedback HTML is written: it removes the hidden-test regions from the test
cells (nbgrader's feedback shows the autograded notebook, which has them) and shortens the tracebacks of test
cells to their last line, so that neither the source of a hidden test nor a hidden input reaches a student.
"""

from __future__ import annotations

import copy
import json
import time
from queue import Empty

from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output
from traitlets import Integer, Unicode

from nbgrader import utils as nbgrader_utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

MEMORY_ERROR_MARKERS = ("MemoryError", "can't allocate memory", "not enough memory", "DefaultCPUAllocator",
                        "std::bad_alloc", "Cannot allocate memory", "ran out of memory")


def _cell_name(cell, index: int) -> str:
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    return grade_id or (f"cell {cell['id']}" if cell.get("id") else f"cell {index + 1}")


def _error(ename: str, evalue: str):
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GraderExecute(Execute):
    """nbgrader's ``Execute`` with timeouts, kernel deaths and output floods turned into recorded, per-cell
    failures (see the module docstring)."""

    max_restarts = Integer(3, help="Kernel restarts allowed per notebook before the rest is marked not run.").tag(
        config=True)
    max_output_chars = Integer(100_000, help="Characters of output kept per cell.").tag(config=True)
    responsive_timeout = Integer(10, help="Seconds a kernel has to answer after a timed-out cell was interrupted.").tag(
        config=True)
    withhold_reason = Unicode("", help="If set, do not execute: every code cell fails with this reason.").tag(
        config=True)
    events_file = Unicode("", help="Append one JSON line per event (timeout, kernel death, ...) to this file.").tag(
        config=True)

    setup_timeout = Integer(300, help="Seconds allowed to read-only (instructor) code cells, such as the setup "
                                      "cell that imports torch: at least the cell timeout.").tag(config=True)

    def _get_timeout(self, cell):
        timeout = super()._get_timeout(cell)
        meta = (cell or {}).get("metadata", {}).get("nbgrader", {}) if cell is not None else {}
        if timeout and meta.get("locked") and not meta.get("grade") and not meta.get("solution"):
            return max(timeout, self.setup_timeout)
        return timeout

    # ---------------------------------------------------------------------------------------------- events

    def _event(self, kind: str, cell_name: str | None, detail: str) -> None:
        event = {"kind": kind, "cell": cell_name, "detail": detail, "time": time.time()}
        self.log.warning("grader event: %s", event)
        if self.events_file:
            with open(self.events_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event) + "\n")

    # ------------------------------------------------------------------------------------------- pipeline

    def preprocess(self, nb, resources=None, km=None):
        self._restarts = 0
        self._gave_up = False
        self._bad_cells: set[int] = set()
        self._output_chars: dict[int, int] = {}
        self._truncated: set[int] = set()
        self._timed_out = False
        if self.withhold_reason:
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs = [_error("NotGraded", self.withhold_reason)]
                    cell.execution_count = None
            self._event("withheld", None, self.withhold_reason)
            return nb, resources
        return super().preprocess(nb, resources, km)

    async def _async_handle_timeout(self, timeout, cell=None):
        self._timed_out = True
        return await super()._async_handle_timeout(timeout, cell)

    def preprocess_cell(self, cell, resources, index):
        if self._gave_up:
            if cell.cell_type == "code":
                cell.outputs = [_error("NotRun", f"not run: the kernel had to be restarted {self._restarts - 1} "
                                                 f"times in this notebook, the most allowed")]
            return cell, resources
        self._timed_out = False
        name = _cell_name(cell, index)
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._event("kernel_died", name, "the kernel died (os._exit, a kill signal, a crash or the memory "
                                             "limit); restarted")
            cell.outputs.append(_error("KernelDied", "the kernel died while running this cell; it was restarted "
                                                     "and grading went on with the next cell"))
            self._bad_cells.add(index)
            self._restart_and_replay(index)
            return cell, resources
        except CellTimeoutError:
            self._event("cell_timeout", name, f"ran past {self.timeout} s and did not stop when interrupted; "
                                              f"the kernel was killed")
            cell.outputs.append(_error("CellTimeoutError", f"this cell ran past the {self.timeout} s limit and "
                                                           f"could not be interrupted; the kernel was restarted"))
            self._bad_cells.add(index)
            self._restart_and_replay(index)
            return cell, resources
        if self._timed_out:
            self._bad_cells.add(index)
            if self._kernel_responsive():
                self._event("cell_timeout", name, f"ran past {self.timeout} s and was interrupted")
            else:
                self._event("cell_timeout", name, f"ran past {self.timeout} s; the kernel did not answer after "
                                                  f"the interrupt and was restarted")
                self._restart_and_replay(index)
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
                if any(marker in text for marker in MEMORY_ERROR_MARKERS):
                    self._event("memory", name, "ran out of memory (the grading memory limit)")
                    break
        if index in self._truncated:
            self._event("output_truncated", name, f"printed more than {self.max_output_chars} characters")
        return cell, resources

    # ---------------------------------------------------------------------------------- kernel handling

    async def _async_kernel_responsive(self, seconds: float) -> bool:
        try:
            msg_id = await ensure_async(self.kc.execute("", store_history=False, silent=True))
        except Exception:  # noqa: BLE001
            return False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=max(0.1, deadline - time.monotonic())))
            except Empty:
                return False
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False

    def _kernel_responsive(self) -> bool:
        try:
            return bool(run_sync(self._async_kernel_responsive)(self.responsive_timeout))
        except Exception:  # noqa: BLE001
            return False

    def _restart_and_replay(self, upto: int) -> None:
        """Kill the kernel, start a new one, and re-run the non-test code cells before ``upto``."""
        while True:
            self._restarts += 1
            if self._restarts > self.max_restarts:
                self._gave_up = True
                self._event("gave_up", None, f"the kernel was restarted {self.max_restarts} times; the remaining "
                                             f"cells were not run")
                return
            self.shutdown_kernel = "immediate"
            try:
                self._cleanup_kernel()
            except Exception:  # noqa: BLE001 (a dead kernel may fail to clean up; a new one is started anyway)
                self.km = None
                self.kc = None
            self.km = self.create_kernel_manager()
            self.start_new_kernel()
            self.start_new_kernel_client()
            if self._replay(upto):
                return

    def _replay(self, upto: int) -> bool:
        for j in range(upto):
            original = self.nb.cells[j]
            if original.cell_type != "code" or j in self._bad_cells or nbgrader_utils.is_grade(original):
                continue
            replay = copy.deepcopy(original)
            self._timed_out = False
            try:
                self.execute_cell(replay, j, store_history=False)
            except (DeadKernelError, CellTimeoutError):
                self._bad_cells.add(j)
                self.nb.cells[j] = original
                self._event("replay_failed", _cell_name(original, j), "this cell killed or hung the kernel when "
                                                                       "replayed; it is skipped from now on")
                return False
            finally:
                self.nb.cells[j] = original
            if self._timed_out:
                self._bad_cells.add(j)
        return True

    # -------------------------------------------------------------------------------------------- output

    def output(self, outs, msg, display_id, cell_index):
        if msg.get("msg_type") != "error":
            content = msg.get("content", {})
            size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in content.get("data", {}).values())
            used = self._output_chars.get(cell_index, 0) + size
            self._output_chars[cell_index] = used
            if used > self.max_output_chars:
                if cell_index not in self._truncated:
                    self._truncated.add(cell_index)
                    outs.append(new_output("stream", name="stdout",
                                           text=f"\n[grader] output truncated: this cell printed more than "
                                                f"{self.max_output_chars} characters\n"))
                return None
        return super().output(outs, msg, display_id, cell_index)


class SanitizeFeedback(NbGraderPreprocessor):
    """Remove hidden-test regions and shorten test-cell tracebacks before feedback is rendered."""

    begin_test_delimeter = Unicode("BEGIN HIDDEN TESTS").tag(config=True)
    end_test_delimeter = Unicode("END HIDDEN TESTS").tag(config=True)

    def _strip_hidden(self, source: str) -> str:
        kept, hidden = [], False
        for line in source.split("\n"):
            if self.begin_test_delimeter in line:
                hidden = True
                kept.append(line.split("#")[0] + "# (hidden tests: not shown)" if "#" in line else
                            "# (hidden tests: not shown)")
                continue
            if self.end_test_delimeter in line:
                hidden = False
                continue
            if not hidden:
                kept.append(line)
        return "\n".join(kept)

    def preprocess_cell(self, cell, resources, index):
        if self.begin_test_delimeter in cell.get("source", ""):
            cell.source = self._strip_hidden(cell.source)
        if cell.cell_type == "code" and nbgrader_utils.is_grade(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources
