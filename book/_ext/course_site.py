"""Sphinx extension for the course's book: a site that stands on its own.

Loaded from ``_config.yml`` (``sphinx.local_extensions``). It

* turns on the repository button and the Colab and Binder launch buttons when ``repository.url`` is set in
  ``_config.yml``, and leaves them off while it is empty (jupyter-book refuses the buttons without a URL);
  the same URL fills the ``{{ course_repository }}`` substitution (a noun phrase: "the course repository,
  <URL>") that the intro and the exercises page use;
* serves each chapter's notebook for download *with its outputs*: the download button points at
  ``_sources/<page>.ipynb``, which Sphinx fills with the stored notebook (no outputs); after the build this
  copies over it the notebook that myst-nb executed (``_build/jupyter_execute``);
* removes the second copy of each inline ``<script>`` that extensions register once the HTML builder exists
  (sphinx-thebe's ``const THEBE_JS_URL``, which a browser refuses to declare twice, and sphinx-togglebutton's
  selector). Sphinx 7.4 hands such a script to the builder with the file name ``None`` and, when it starts
  writing, adds the registry's copy again under the name ``''``; the two do not compare equal, so both reach
  ``<head>``. Renaming the first to ``''`` lets the builder see they are the same.
"""

from __future__ import annotations

import pathlib
import shutil

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

COLAB_URL = "https://colab.research.google.com"
BINDER_URL = "https://mybinder.org"


def repository_links(app: Sphinx, config) -> None:
    """Switch the repository and launch buttons on or off from the one repository URL in ``_config.yml``."""
    theme_options = config.html_theme_options
    url = (theme_options.get("repository_url") or "").strip().rstrip("/")
    launch = dict(theme_options.get("launch_buttons") or {})
    if url:
        theme_options["repository_url"] = url
        theme_options["use_repository_button"] = True
        on_github = url.startswith("https://github.com/")
        # Colab and Binder open a notebook from a GitHub repository; elsewhere only the repository link works.
        launch["colab_url"] = COLAB_URL if on_github else ""
        launch["binderhub_url"] = BINDER_URL if on_github else ""
        link = f"the course repository, [{url}]({url})"
    else:
        theme_options["use_repository_button"] = False
        launch["colab_url"] = launch["binderhub_url"] = ""
        link = "the course repository (ask your instructor where it is published)"
    theme_options["launch_buttons"] = launch
    config.myst_substitutions = {**(config.myst_substitutions or {}), "course_repository": link}


def unify_inline_scripts(app: Sphinx, env) -> None:
    """Name every inline script ``''`` so that Sphinx's de-duplication recognises the registry's copy."""
    builder = app.builder
    scripts = getattr(builder, "_js_files", None)
    if scripts is None:  # not an HTML builder
        return
    from sphinx.builders.html._assets import _JavaScript

    for index, script in enumerate(scripts):
        if script.filename is None:
            scripts[index] = _JavaScript("", priority=script.priority, **script.attributes)
    # The same script may already be there twice: keep the first of each.
    unique = list(dict.fromkeys(scripts))
    scripts[:] = unique


def offer_executed_notebooks(app: Sphinx, exception: Exception | None) -> None:
    """Replace each downloadable ``_sources/<page>.ipynb`` by the notebook as executed for the page."""
    if exception is not None or app.builder.format != "html":
        return
    executed_root = pathlib.Path(app.outdir).parent / "jupyter_execute"
    sources_root = pathlib.Path(app.outdir) / "_sources"
    replaced = 0
    for docname in sorted(app.env.found_docs):
        offered = sources_root / f"{docname}.ipynb"
        executed = executed_root / f"{docname}.ipynb"
        if offered.is_file() and executed.is_file():
            shutil.copyfile(executed, offered)
            replaced += 1
        elif offered.is_file():
            logger.warning(f"{docname}: no executed notebook in {executed_root}; the download has no outputs",
                           type="course_site")
    logger.info(f"[course_site] {replaced} notebooks offered for download with their outputs")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", repository_links)
    app.connect("env-updated", unify_inline_scripts)
    app.connect("build-finished", offer_executed_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
