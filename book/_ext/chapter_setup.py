"""The first code cell of every chapter notebook: one text, written into every chapter by this script.

Every chapter starts with the same hidden set-up cell. It finds the course repository and imports the
reference package ``solutions`` from it (saying in words what is missing when the notebook runs elsewhere),
and it makes the figures legible where the book shows them. ``tests/test_site.py`` fails when a chapter's
first code cell differs from ``SETUP_CELL``.

After changing ``SETUP_CELL``, or after adding a chapter, run from the repository root::

    python book/_ext/chapter_setup.py            # rewrite the first code cell of every chapter
    python book/_ext/chapter_setup.py --check    # only list the chapters that differ (exit status 1 if any)

Only that cell's ``source`` changes (its id, its tags and the rest of the notebook stay as they are), and the
notebook is written back in nbformat's layout (one-space indent, sorted keys), so the diff is that cell alone.
A notebook whose first code cell is not the set-up cell (a new chapter that lacks one) gets it inserted
before its first code cell.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

SETUP_CELL = '''\
# Set-up, hidden in the book: every chapter starts with this cell.
# The chapter needs the course repository: its package `solutions` (the reference implementation), and
# torch and matplotlib (the repository's requirements.txt). Open the notebook from inside a clone.
import pathlib, sys
here = pathlib.Path.cwd().resolve()
roots = [p for p in (here, *here.parents) if (p / "solutions" / "__init__.py").is_file()]
sys.path[:0] = [str(roots[0])] if roots else []
try:
    import solutions
except ModuleNotFoundError as missing:
    if missing.name != "solutions":
        raise  # the repository is there, one of its requirements is not installed
    raise ModuleNotFoundError(
        "This chapter needs the course's package `solutions`, which is not on this machine. Clone the course "
        "repository (the book's pages link it), install its requirements.txt, and open this notebook from "
        "inside the clone. In Colab, run `!git clone <repository URL>` and `%cd` into the clone first."
    ) from None
roots = [pathlib.Path(solutions.__file__).resolve().parents[1]]  # the repository root

# Figures: SVG, and no text below about 9 px on the page. The book shows a figure at most as wide as its
# text column (about 750 px on a desktop), so text in a wider figure is enlarged where it would shrink
# below that; a constrained layout makes room for it.
import matplotlib.axes, matplotlib.figure, matplotlib.text, matplotlib.pyplot as plt
%matplotlib inline
%config InlineBackend.figure_format = "svg"

def legible(figure, column_px=750, floor_px=9.5):
    width_pt = figure.get_figwidth() * 72  # shown px = pt * min(4/3, column_px / width_pt)
    floor_pt = floor_px * max(width_pt / column_px, 0.75)
    for axes in figure.findobj(matplotlib.axes.Axes):  # insets too, which figure.axes omits
        for axis in (axes.xaxis, axes.yaxis):
            labels = axis.get_ticklabels(which="both")
            if labels and min(label.get_fontsize() for label in labels) < floor_pt:
                axis.set_tick_params(which="both", labelsize=floor_pt)
    for text in figure.findobj(matplotlib.text.Text):
        if text.get_text() and text.get_fontsize() < floor_pt:
            text.set_fontsize(floor_pt)
    return figure

svg_formatter = get_ipython().display_formatter.formatters["image/svg+xml"]
def draw_legible_svg(figure, draw_svg=svg_formatter.lookup_by_type(matplotlib.figure.Figure)):
    return draw_svg(legible(figure))
svg_formatter.for_type(matplotlib.figure.Figure, draw_legible_svg)'''


def chapter_notebooks(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Every chapter notebook under ``book/``: not the student kits' folder, not checkpoints or build output."""
    return sorted(
        path for path in (root / "book").rglob("*.ipynb")
        if not {"exercises", "_build", ".ipynb_checkpoints", "_ext", "_static"} & set(path.relative_to(root).parts)
    )


def first_code_cell(notebook: dict) -> dict | None:
    return next((cell for cell in notebook["cells"] if cell["cell_type"] == "code"), None)


def source_text(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def as_source_lines(text: str) -> list[str]:
    """A cell source as nbformat stores it: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def is_setup_cell(cell: dict) -> bool:
    """Whether a cell is some version of the set-up cell (so that it is replaced, not pushed down)."""
    return source_text(cell).lstrip().startswith(("# Set-up", "# Hidden in the book"))


def write_notebook(path: pathlib.Path, notebook: dict) -> None:
    # nbformat's own layout: one-space indent, sorted keys, non-ASCII kept, a final newline.
    path.write_text(json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def apply(path: pathlib.Path) -> bool:
    """Make the first code cell of ``path`` the set-up cell; return whether the file changed."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cell = first_code_cell(notebook)
    if cell is not None and source_text(cell) == SETUP_CELL:
        return False
    if cell is not None and is_setup_cell(cell):
        cell["source"] = as_source_lines(SETUP_CELL)
    else:
        new_cell = {"cell_type": "code", "execution_count": None, "id": f"{path.stem.replace('_', '-')}-setup",
                    "metadata": {"tags": ["remove-cell"]}, "outputs": [], "source": as_source_lines(SETUP_CELL)}
        position = notebook["cells"].index(cell) if cell is not None else len(notebook["cells"])
        notebook["cells"].insert(position, new_cell)
    write_notebook(path, notebook)
    return True


def differing(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    """The notebooks whose first code cell is not exactly the set-up cell."""
    wrong = []
    for path in paths:
        cell = first_code_cell(json.loads(path.read_text(encoding="utf-8")))
        if cell is None or source_text(cell) != SETUP_CELL:
            wrong.append(path)
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the set-up cell into every chapter notebook.")
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path,
                        help="notebooks to update (default: every chapter under book/)")
    parser.add_argument("--check", action="store_true", help="change nothing; list the notebooks that differ")
    args = parser.parse_args(argv)
    paths = [path.resolve() for path in args.notebooks] or chapter_notebooks()
    if args.check:
        wrong = differing(paths)
        for path in wrong:
            print(f"differs: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        print(f"{len(paths) - len(wrong)} of {len(paths)} chapters start with the set-up cell")
        return 1 if wrong else 0
    changed = [path for path in paths if apply(path)]
    for path in changed:
        print(f"updated: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"{len(changed)} of {len(paths)} chapters updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
