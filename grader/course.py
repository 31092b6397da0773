"""The nbgrader course directory: its configuration, its folders, and what the gradebook knows about it.

Shared by the CLI's commands (`grader.generate`, `grader.autograde`, `grader.report`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# nbgrader runs the `alembic` executable when it creates a gradebook: make this interpreter's scripts (a
# virtualenv's bin/) findable even when the virtualenv is not activated.
_SCRIPTS = os.path.dirname(sys.executable)
if _SCRIPTS not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _SCRIPTS + os.pathsep + os.environ.get("PATH", "")

from traitlets.config import Config  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
"""The checkout whose `grader` and `solutions` the notebooks import (put on the kernel's PYTHONPATH)."""

STAGING = ".grader/staging"
"""Where the CLI puts the staged notebook of each submission (`grader.intake.stage`) for nbgrader to record
(nbgrader's ``submitted_directory`` while autograding), relative to the course directory. ``submitted/``
itself is never modified."""


@dataclass
class Course:
    """An nbgrader course directory (``root``) and the gradebook URL it is graded into (``db_url``)."""

    root: Path
    db_url: str

    @classmethod
    def open(cls, course_dir: str | os.PathLike | None = None, db: str | None = None) -> "Course":
        root = Path(course_dir or PACKAGE_DIR).resolve()
        if not (root / "nbgrader_config.py").is_file():
            raise SystemExit(f"error: {root} is not a course directory (it has no nbgrader_config.py)")
        return cls(root, db or f"sqlite:///{root / 'gradebook.db'}")

    # -------------------------------------------------------------------------------------------- folders

    @property
    def state_dir(self) -> Path:
        return self.root / ".grader"

    def source_notebook(self, assignment: str) -> Path:
        return self.root / "source" / assignment / f"{assignment}.ipynb"

    def release_notebook(self, assignment: str) -> Path:
        return self.root / "release" / assignment / f"{assignment}.ipynb"

    def assignments(self) -> list[str]:
        """Every assignment with a source notebook named after its folder."""
        source = self.root / "source"
        if not source.is_dir():
            return []
        return sorted(p.name for p in source.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").is_file())

    def assignment_digest(self, assignment: str) -> str:
        """Changes when anything that decides a grade changes: the assignment's source notebook (its tests),
        the checks it calls and the `solutions` code they compare with (`grader.checks.digest_paths`), and the
        harness and sandbox runtime. Then its grades are redone."""
        from .checks import digest_paths

        checks = list(digest_paths(assignment))
        digest = hashlib.sha256(self.source_notebook(assignment).read_bytes())
        harness = sorted((PACKAGE_DIR / "harness").glob("*.py")) + sorted((PACKAGE_DIR / "runtime").glob("*.py"))
        for path in checks + harness + [PACKAGE_DIR / "nbgrader_ext.py"]:
            digest.update(str(Path(path).relative_to(REPO_ROOT)).encode() + b"\0")
            digest.update(Path(path).read_bytes())
        return digest.hexdigest()

    # --------------------------------------------------------------------------------------------- config

    def config(self, **overrides) -> Config:
        """The course's ``nbgrader_config.py``, with the root and database pinned, plus ``overrides``
        (``{"Section.option": value}``)."""
        cfg = PyFileConfigLoader("nbgrader_config.py", path=str(self.root)).load_config()
        cfg.CourseDirectory.root = str(self.root)
        cfg.CourseDirectory.db_url = self.db_url
        for key, value in overrides.items():
            section, option = key.rsplit(".", 1)
            setattr(getattr(cfg, section), option, value)
        return cfg

    @property
    def course_id(self) -> str:
        return str(self.config().CourseDirectory.get("course_id", "default_course"))

    def api(self, **overrides):
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        cfg = self.config(**overrides)
        return NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, self.course_id)

    # ------------------------------------------------------------------------------------- ledger (state)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.json"

    def read_ledger(self) -> dict:
        try:
            return json.loads(self.ledger_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_ledger(self, ledger: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
        os.replace(tmp, self.ledger_path)
