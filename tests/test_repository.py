"""Repository-level promises: README's commands, CI running the same one, the DESIGN API importing."""

import inspect
import pathlib
import re

import solutions

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    readme = (ROOT / "README.md").read_text()
    top = readme.split("\n## ", 1)[0]  # the two commands sit above the first section heading
    return re.findall(r"```bash\n(.+?)\n```", top, flags=re.S)


def test_readme_starts_with_exactly_two_commands_build_then_test():
    commands = readme_commands()
    assert len(commands) == 2, commands
    build, test = commands
    assert "\n" not in build and "\n" not in test, "each is one command line"
    assert "pip install torch==2.13.0" in build and "pip install torch==2.13.0" in test
    assert "jupyter-book build" in build and "--warningiserror" in build
    assert "pytest" in test and "--nbval-lax" in test and " book" in test


def test_ci_runs_the_readme_test_command_exactly():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_every_design_name_is_exported_and_documented():
    design_names = [
        "sinusoidal_encoding", "t5_relative_position_bucket", "alibi_slopes", "ntk_alibi_slopes",
        "rope_inv_freq", "apply_rope", "rope_scaling", "mrope_cos_sin", "mrope_position_ids",
        "llama4_attention_scale", "deberta_log_bucket_position",
    ]
    for name in design_names + list(solutions.__all__):
        obj = getattr(solutions, name)
        if callable(obj):
            doc = inspect.getdoc(obj) or ""
            assert len(doc) > 40, f"{name} needs a docstring that cites its source"


def test_solutions_imports_neither_book_nor_grader():
    for path in (ROOT / "solutions").rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(grader|book)\b", source, flags=re.M), path


def test_the_bibliography_parses_and_holds_every_cited_key():
    # A broken entry fails the book build at its first step; a missing key only at the page that cites it.
    from pybtex.database import parse_file

    keys = set(parse_file(str(ROOT / "references.bib")).entries)
    cited = set()
    for page in [*ROOT.glob("book/**/*.ipynb"), *ROOT.glob("book/**/*.md")]:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited.update(key.strip() for key in group.split(","))
    assert cited, "no citation found: the pattern no longer matches the book's {cite} roles"
    assert sorted(cited - keys) == []
