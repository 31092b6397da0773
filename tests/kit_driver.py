"""Run notebooks' code cells in a student kit's folder, as a student's Python would: ``python -I kit_driver.py
MODE KIT_FOLDER RUNS.json``.

``MODE`` is ``kit``: `solutions` and `grader` cannot be imported (the kit must not need them), and only the kit's
folder is on the path; or ``grader``: the course repository (``REPO`` in the environment) is on the path and
``course_checks`` is the grader's own checks, to run the same cells against the grading side.

RUNS.json is ``[[cell id, source], ...]`` per run; each run starts from a fresh namespace. Prints, as JSON, per
run ``[[cell id, "ok" | "failed" | "error", output or message], ...]``.
"""

import contextlib
import io
import json
import linecache
import os
import sys

mode, kit, runs_file = sys.argv[1:4]
if mode == "kit":
    for blocked in ("solutions", "grader"):
        sys.modules[blocked] = None  # `import solutions` now raises ImportError
    sys.path.insert(0, kit)
else:
    sys.path.insert(0, os.environ["REPO"])
    from grader import checks

    checks.serve_as_student_package()
os.chdir(kit)
results = []
for cells in json.load(open(runs_file)):
    namespace, rows = {"__name__": "__main__"}, []
    for cell_id, source in cells:
        out = io.StringIO()
        try:
            filename = f"<cell {cell_id}>"
            # as Jupyter does, so that inspect.getsource (which @triton.jit needs) finds the cell's code
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            with contextlib.redirect_stdout(out):
                exec(compile(source, filename, "exec"), namespace)  # noqa: S102 (the course's notebook)
            rows.append([cell_id, "ok", out.getvalue()])
        except AssertionError as exc:
            rows.append([cell_id, "failed", str(exc)])
        except BaseException as exc:  # noqa: BLE001 (reported to the test)
            rows.append([cell_id, "error", f"{type(exc).__name__}: {exc}"])
    results.append(rows)
print(json.dumps(results))
