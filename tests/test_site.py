"""The published book stands on its own: nothing loaded from other hosts, math typeset offline, figures that
open full size and stay legible, chapter notebooks that download with their outputs and say what they need.

The suite runs on a clean clone, where no book has been built. So a small book is built here, in a temporary
folder, with the real ``_config.yml``, theme, static files and extension: a markdown page and one notebook
with math and a wide three-panel figure. Every page of the real book loads the same assets, so a clean scan
of the small book covers them. When the real book has been built (``_build/html``), its pages are scanned and
browsed too. The browser checks need Chromium (README says how to install it) and are skipped without it.
"""

from __future__ import annotations

import html.parser
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types
import warnings

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import browser_check

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILT_BOOK = ROOT / "_build" / "html"
# One page per part of the real book, plus the intro and the exercises page.
BOOK_PAGES = [
    "book/intro.html", "book/foundations/sinusoidal.html", "book/relative/alibi.html", "book/rotary/rope.html",
    "book/mla/mla.html", "book/extrapolation/direct.html", "book/lab/lab.html", "book/multimodal/mrope.html",
    "book/exercises.html",
]


def load_module(name: str, path: pathlib.Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chapter_setup = load_module("chapter_setup", ROOT / "book" / "_ext" / "chapter_setup.py")
course_site = load_module("course_site", ROOT / "book" / "_ext" / "course_site.py")
CHROMIUM = browser_check.find_chromium()
NO_CHROMIUM = ("no Chromium binary: the browser check is skipped (apt-get install chromium, see README, "
               "or set $CHROMIUM)")


def require_chromium():
    """Skip without Chromium, and say so in the warnings summary, which pytest prints without ``-rs``."""
    if CHROMIUM is None:
        warnings.warn(NO_CHROMIUM, pytest.PytestWarning, stacklevel=2)
        pytest.skip(NO_CHROMIUM)


# ---------------------------------------------------------------------------------------------------------------
# The chapters' set-up cell


def test_every_chapter_starts_with_the_setup_cell():
    chapters = chapter_setup.chapter_notebooks()
    assert len(chapters) >= 20, chapters
    wrong = [str(path.relative_to(ROOT)) for path in chapter_setup.differing(chapters)]
    assert not wrong, (f"the first code cell of {wrong} is not the set-up cell of book/_ext/chapter_setup.py; "
                       "run `python book/_ext/chapter_setup.py`")
    for path in chapters:
        cell = chapter_setup.first_code_cell(json.loads(path.read_text()))
        assert "remove-cell" in cell["metadata"].get("tags", []), f"{path}: the set-up cell shows in the book"


def test_setup_script_inserts_the_cell_into_a_chapter_that_lacks_it(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# A chapter"), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "new_chapter.ipynb"
    chapter_setup.write_notebook(path, notebook)
    assert chapter_setup.differing([path]) == [path]
    assert chapter_setup.apply(path) and not chapter_setup.apply(path), "a second run changes nothing"
    cells = json.loads(path.read_text())["cells"]
    assert [chapter_setup.source_text(cell) for cell in cells[1:]] == [chapter_setup.SETUP_CELL, "x = 1"]
    assert chapter_setup.differing([path]) == []


def run_setup_cell(directory: pathlib.Path) -> nbformat.NotebookNode:
    """Run the set-up cell alone in a fresh kernel whose working directory is ``directory``."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(chapter_setup.SETUP_CELL)]
    NotebookClient(notebook, timeout=120, resources={"metadata": {"path": str(directory)}}).execute()
    return notebook


def test_setup_cell_outside_the_repository_says_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # a reader's machine: `solutions` nowhere on the path
    with pytest.raises(CellExecutionError) as failure:
        run_setup_cell(tmp_path)
    message = str(failure.value)
    assert "ModuleNotFoundError" in message
    for needed in ("package `solutions`", "Clone the course repository", "requirements.txt", "Colab"):
        assert needed in message, f"the message does not say {needed!r}: {message[-600:]}"


# ---------------------------------------------------------------------------------------------------------------
# The repository URL: held once in _config.yml, and the buttons stay off while it is empty


def theme_config(url: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        html_theme_options={"repository_url": url, "launch_buttons": {"colab_url": "", "binderhub_url": ""}},
        myst_substitutions={})


def test_without_a_repository_url_no_button_or_launch_link_appears():
    config = theme_config("")
    course_site.repository_links(None, config)
    options = config.html_theme_options
    assert options["use_repository_button"] is False
    assert options["launch_buttons"]["colab_url"] == options["launch_buttons"]["binderhub_url"] == ""
    assert "http" not in config.myst_substitutions["course_repository"]


def test_a_github_repository_url_turns_on_the_repository_button_and_launch_links():
    config = theme_config("https://github.com/example/positional-encoding/")
    course_site.repository_links(None, config)
    options = config.html_theme_options
    assert options["use_repository_button"] is True
    assert options["repository_url"] == "https://github.com/example/positional-encoding"
    assert options["launch_buttons"]["colab_url"].startswith("https://colab")
    assert options["launch_buttons"]["binderhub_url"].startswith("https://mybinder")
    assert "https://github.com/example/positional-encoding" in config.myst_substitutions["course_repository"]


def test_the_repository_url_is_set_in_one_place():
    config_text = (ROOT / "_config.yml").read_text()
    assert len(re.findall(r"^\s+url:", config_text, flags=re.M)) == 1
    for page in ("book/intro.md", "book/exercises.md"):
        assert "{{ course_repository }}" in (ROOT / page).read_text(), f"{page} does not say where the code is"


# ---------------------------------------------------------------------------------------------------------------
# The browser check's label measurement


def test_label_sizes_are_read_from_a_matplotlib_svg(tmp_path):
    from matplotlib.figure import Figure  # no pyplot: the suite's backend stays as it is

    figure = Figure(figsize=(4, 3))
    axes = figure.subplots()
    axes.plot([0, 1], label="a line")
    axes.legend(fontsize=7)
    axes.tick_params(labelsize=8)
    axes.set_title(r"$x^2_i$ at twelve points", fontsize=12)  # a superscript counts at the title's size
    path = tmp_path / "figure.svg"
    figure.savefig(path, format="svg", bbox_inches="tight")
    width_pt, sizes = browser_check.svg_label_sizes(path)
    assert 200 < width_pt < 4 * 72 + 20
    assert min(sizes) == pytest.approx(7) and max(sizes) == pytest.approx(12)
    assert sorted(set(round(size, 3) for size in sizes)) == [7, 8, 12]


# ---------------------------------------------------------------------------------------------------------------
# A small book built with the real configuration

TINY_INTRO = r"""# A small book

Inline math $\theta_i = b^{-2i/d}$ and a display:

$$
\operatorname{Attn}(PX) = P\,\operatorname{Attn}(X)
$$

The code: {{ course_repository }}.
"""

TINY_FIGURE = """\
import numpy as np
positions = np.arange(64)
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained")
for panel, axes_ in enumerate(axes):
    for i in range(3):
        axes_.plot(positions, np.sin(positions / 10 ** (panel + i / 3)), label=f"frequency {i}")
    axes_.set_title(f"panel {panel}", fontsize=8)
    axes_.set_xlabel("position $m$")
    axes_.tick_params(labelsize=7)
    axes_.legend(fontsize=7)
zoom = axes[0].inset_axes([0.55, 0.55, 0.4, 0.4])  # an inset's axes are not in fig.axes
zoom.plot(positions[:8], np.sin(positions[:8]))
zoom.tick_params(labelsize=6)
plt.show()
"""


def tiny_chapter() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell(chapter_setup.SETUP_CELL, metadata={"tags": ["remove-cell"]})
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# A chapter\n\nThe angle $m\\theta_i$ grows with $m$:\n\n"
                                      "$$\n\\cos(m\\theta_i), \\quad \\sin(m\\theta_i)\n$$"),
        setup,
        nbformat.v4.new_code_cell(TINY_FIGURE),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory) -> pathlib.Path:
    """Build the small book with jupyter-book, as README's build command does, and return its HTML folder."""
    book = tmp_path_factory.mktemp("tiny_book")
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")
    shutil.copy(ROOT / "references.bib", book / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", book / "book" / "_static")
    shutil.copytree(ROOT / "book" / "_ext", book / "book" / "_ext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/chapter\n")
    (book / "book" / "intro.md").write_text(TINY_INTRO)
    nbformat.write(tiny_chapter(), book / "book" / "chapter.ipynb")
    jupyter_book = pathlib.Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book",
               "build", "--warningiserror", "--keep-going", str(book)]
    # The set-up cell finds `solutions` on the path, as it would in a reader's clone.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=book, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"the small book did not build:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return book / "_build" / "html"


class ExternalResources(html.parser.HTMLParser):
    """Every URL of another host that a page loads: a ``src``, or the ``href`` of a stylesheet, icon or preload."""

    LOADING_LINKS = {"stylesheet", "icon", "shortcut", "preload", "modulepreload", "manifest", "apple-touch-icon"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        candidates = [attrs.get("src"), attrs.get("data-src")]
        if tag == "link" and self.LOADING_LINKS & set((attrs.get("rel") or "").lower().split()):
            candidates.append(attrs.get("href"))
        self.urls += [url for url in candidates if url and is_external(url)]


def is_external(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), flags=re.I))


def external_resources(site: pathlib.Path) -> list[str]:
    """``file: url`` for every resource of another host that a page or a stylesheet of ``site`` loads."""
    found = []
    for page in sorted(site.rglob("*.html")):
        parser = ExternalResources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        found += [f"{page.relative_to(site)}: {url}" for url in parser.urls]
    for stylesheet in sorted(site.rglob("*.css")):
        text = stylesheet.read_text(encoding="utf-8", errors="replace")
        for url in re.findall(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", text):
            url = next(part for part in url if part)
            if is_external(url):
                found.append(f"{stylesheet.relative_to(site)}: {url}")
    return found


def test_the_small_book_loads_nothing_from_another_host(tiny_book):
    assert list(tiny_book.rglob("*.html")), "nothing was built"
    assert external_resources(tiny_book) == []
    mathjax = tiny_book / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.is_file(), "MathJax is not served from the book"
    assert 'src="../_static/mathjax/tex-chtml.js' in (tiny_book / "book" / "chapter.html").read_text()


@pytest.mark.skipif(not BUILT_BOOK.is_dir(), reason="the book is not built here (_build/html); README's first "
                                                    "command builds it")
def test_the_built_book_loads_nothing_from_another_host():
    found = external_resources(BUILT_BOOK)
    assert found == [], (f"{len(found)} external resources in _build/html (rebuild the book if it predates "
                         f"the current _config.yml), first: {found[:10]}")


def test_each_inline_script_appears_once(tiny_book):
    head = (tiny_book / "book" / "chapter.html").read_text().split("</head>")[0]
    scripts = re.findall(r"<script>(.*?)</script>", head, flags=re.S)
    assert scripts, "no inline script in <head>: the test looks in the wrong place"
    assert head.count("const THEBE_JS_URL") == 1
    repeated = {script for script in scripts if scripts.count(script) > 1}
    assert not repeated, f"inline scripts in <head> twice: {repeated}"


def test_pages_have_a_favicon_and_a_theme_mode(tiny_book):
    page = (tiny_book / "book" / "intro.html").read_text()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', page)
    assert icon, "no favicon link"
    assert (tiny_book / "book" / icon.group(1)).resolve().is_file()
    assert 'localStorage.getItem("mode") || "auto"' in page, "the theme's default mode is not set"


def test_the_chapter_downloads_with_its_outputs(tiny_book):
    offered = json.loads((tiny_book / "_sources" / "book" / "chapter.ipynb").read_text())
    code = [cell for cell in offered["cells"] if cell["cell_type"] == "code"]
    assert chapter_setup.source_text(code[0]) == chapter_setup.SETUP_CELL, "the download lacks the set-up cell"
    outputs = [output for cell in code for output in cell["outputs"]]
    assert any("image/svg+xml" in output.get("data", {}) for output in outputs), "the figure is not in it"
    page = (tiny_book / "book" / "chapter.html").read_text()
    assert "_sources/book/chapter.ipynb" in page, "the page offers no notebook download"


def test_a_reader_without_network_sees_the_small_book_whole(tiny_book):
    require_chromium()
    reports = browser_check.check_site(tiny_book, ["book/intro.html", "book/chapter.html"], CHROMIUM)
    print("\n".join(browser_check.summary(report) for report in reports))
    problems = [problem for report in reports for problem in browser_check.failures(report)]
    assert not problems, "\n".join(problems)
    chapter = [r for r in reports if r["page"] == "book/chapter.html" and r["window"] == "1400x900"][0]
    assert chapter["mathCount"] >= 3 and len(chapter["figures"]) == 1, chapter
    figure = chapter["figures"][0]
    # Drawn with 7-pt labels at 11 inches wide, shown at about 70 % size: the set-up cell enlarged them.
    assert figure["shown_fraction"] < 0.8 and figure["smallest_label_px"] >= browser_check.MIN_LABEL_PX, figure


@pytest.mark.skipif(not BUILT_BOOK.is_dir(), reason="the book is not built here (_build/html); README's first "
                                                    "command builds it")
def test_a_reader_without_network_sees_the_built_book_whole():
    require_chromium()
    # Every page of the book on the desktop, light and dark (a figure anywhere may be too small or broken);
    # one page per part on the phone as well.
    every_page = sorted(str(page.relative_to(BUILT_BOOK)) for page in (BUILT_BOOK / "book").rglob("*.html"))
    assert set(BOOK_PAGES) <= set(every_page), sorted(set(BOOK_PAGES) - set(every_page))
    desktop = ((browser_check.DESKTOP, False), (browser_check.DESKTOP, True))
    reports = (browser_check.check_site(BUILT_BOOK, every_page, CHROMIUM, windows=desktop)
               + browser_check.check_site(BUILT_BOOK, BOOK_PAGES, CHROMIUM, windows=((browser_check.PHONE, False),)))
    print("\n".join(browser_check.summary(report) for report in reports))
    problems = [problem for report in reports for problem in browser_check.failures(report)]
    assert not problems, ("rebuild the book if _build/html predates the current sources:\n"
                          + "\n".join(problems[:40]))
