"""Open pages of the built book in headless Chromium, offline, and report what a reader sees.

For each page and window width the check records:

* the console errors and warnings, uncaught exceptions, and every request that failed or left the machine
  (Chromium resolves no host name but the loopback address, as for a reader without a network);
* whether MathJax typeset every formula: no ``$$``, ``\\(`` or ``\\[`` left in the rendered text outside code,
  no MathJax error box;
* every figure: that it loaded, that a click opens it full size (a link to the image itself), and for the
  SVG figures that matplotlib draws, the smallest label on screen in CSS pixels. A label's size is its font
  size in the SVG (matplotlib writes each text as glyphs scaled by ``scale(s -s)``, ``s`` = points / 100)
  times the displayed width over the SVG's width.

It talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so it needs nothing
beyond the standard library and a Chromium binary. Run it on a built book::

    python tests/browser_check.py _build/html book/intro.html book/extrapolation/direct.html

``tests/test_site.py`` runs it in the suite when Chromium is installed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree

# The legibility floor: the smallest label, in CSS pixels, that a reader should see at page width.
MIN_LABEL_PX = 9.0
DESKTOP = (1400, 900)
PHONE = (420, 860)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Runs in the page once it has loaded: waits for MathJax, then describes the math and the figures.
PAGE_PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const skipped = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'MJX-CONTAINER']);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {acceptNode(node) {
    for (let e = node.parentElement; e; e = e.parentElement) {
      if (skipped.has(e.tagName)) { return NodeFilter.FILTER_REJECT; }
    }
    return NodeFilter.FILTER_ACCEPT;
  }});
  const rawTex = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.nodeValue;
    if (['$$', '\\(', '\\[', '\\begin{'].some(d => text.includes(d))) { rawTex.push(text.trim().slice(0, 80)); }
  }
  const math = [...document.querySelectorAll('.math')];
  const images = [...document.querySelectorAll('.bd-article img')].map(img => {
    const box = img.getBoundingClientRect();
    const style = getComputedStyle(img);
    const extra = ['paddingLeft', 'paddingRight', 'borderLeftWidth', 'borderRightWidth']
      .reduce((sum, key) => sum + parseFloat(style[key] || '0'), 0);
    const link = img.closest('a');
    return {src: img.currentSrc || img.src, complete: img.complete, naturalWidth: img.naturalWidth,
            shownWidth: box.width - extra, link: link ? link.href : null, isFigure: !img.closest('.navbar-brand')};
  });
  return {title: document.title, theme: document.documentElement.dataset.theme,
          mathCount: math.length, mathTypeset: math.filter(m => m.querySelector('mjx-container')).length,
          mathErrors: document.querySelectorAll('mjx-merror').length, rawTex, images,
          favicon: [...document.querySelectorAll('link[rel~="icon"]')].map(l => l.href)};
})()
"""


def find_chromium() -> str | None:
    """The Chromium binary to use: ``$CHROMIUM`` if set (``None`` when that is not a program), else the first
    of the usual names on ``PATH``."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def svg_label_sizes(svg_path: pathlib.Path) -> tuple[float, list[float]]:
    """``(width in pt, font size in pt of each text)`` of a matplotlib SVG drawn with text as paths.

    Each ``<g id="text_N">`` holds one text (a tick label, a legend entry, a title); its size is the largest
    ``scale(s -s)`` inside it times 100, so that sub- and superscripts of math text count at their base size.
    """
    root = ElementTree.parse(svg_path).getroot()
    width = float(re.match(r"[\d.]+", root.get("width", "0")).group(0))
    unit = re.sub(r"[\d.]+", "", root.get("width", ""))
    if unit not in ("pt", ""):
        raise ValueError(f"{svg_path}: width in {unit!r}, expected pt")
    sizes = []
    for group in root.iter("{http://www.w3.org/2000/svg}g"):
        if not (group.get("id") or "").startswith("text_"):
            continue
        scales = [float(a) for g in group.iter("{http://www.w3.org/2000/svg}g")
                  for a, b in re.findall(r"scale\(([\d.]+) -([\d.]+)\)", g.get("transform", "")) if a == b]
        if scales:
            sizes.append(100 * max(scales))
    return width, sizes


def above_four(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more (close-on-exec); ``fd`` itself is closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="course-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # The child's ends move above 4, so that wiring them to fds 3 and 4 never overwrites one of them.
        to_browser_read, from_browser_write = (above_four(fd) for fd in (to_browser_read, from_browser_write))
        flags = [
            "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
            "--no-sandbox",  # the suite may run as root, where Chromium's sandbox refuses to start
            "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
            # An offline reader: no host name resolves except the loopback server the check starts.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "about:blank",
        ]
        # The protocol reads commands on fd 3 and writes on fd 4: a small Python shim puts the pipes there
        # (os.dup2 makes them inheritable) and becomes Chromium.
        wiring = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                 "os.execv(sys.argv[3], sys.argv[3:])"
        self._stderr = tempfile.TemporaryFile()  # read only to explain a failure; a pipe could fill and block
        self.process = subprocess.Popen(
            [sys.executable, "-c", wiring, str(to_browser_read), str(from_browser_write), binary, *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(to_browser_read, from_browser_write))
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self.events: list[dict] = []
        self._lock = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._lock:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self.events.append(message)
                self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout=30.0):
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._lock:
            while message_id not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise TimeoutError(f"Chromium did not answer {method} within {timeout} s{self.stderr_tail()}")
                self._lock.wait(left)
            response = self._responses.pop(message_id)
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result", {})

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")[-2000:]
        return f"; its stderr ends: {text}" if text else ""

    def session_events(self, session: str, since: int = 0) -> list[dict]:
        with self._lock:
            return [e for e in self.events[since:] if e.get("sessionId") == session]

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def serve(root: pathlib.Path):
    """Serve ``root`` over HTTP on the loopback address, as a web host would serve ``_build/html``."""
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the check reports failed requests itself
        pass


def visit(browser: Chromium, url: str, width: int, height: int, dark: bool, timeout=60.0,
          screenshot: pathlib.Path | None = None) -> dict:
    """Load ``url`` in a fresh tab at ``width`` x ``height`` and return the page probe plus the events.

    With ``screenshot``, also save a PNG of the window scrolled to the page's first figure.
    """
    # A fresh browser context per visit: no stored theme mode or cache carries over from the last page.
    context = browser.send("Target.createBrowserContext")["browserContextId"]
    target = browser.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}, session=session)
        browser.send("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]}, session=session)
        start = len(browser.events)
        browser.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in browser.session_events(session, start)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            time.sleep(0.05)
        probe = browser.send("Runtime.evaluate", {
            "expression": PAGE_PROBE, "awaitPromise": True, "returnByValue": True}, session=session, timeout=timeout)
        if "exceptionDetails" in probe:
            raise RuntimeError(f"the page probe failed on {url}: {probe['exceptionDetails']}")
        wait_for_quiet_network(browser, session, start, deadline)
        page = probe["result"]["value"]
        page.update(problems_from_events(browser.session_events(session, start)))
        if screenshot is not None:
            browser.send("Runtime.evaluate", {"expression": "document.querySelector('.bd-article .cell_output img')"
                                              "?.scrollIntoView({block: 'center'})"}, session=session)
            time.sleep(0.3)
            image = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
            screenshot.write_bytes(base64.b64decode(image))
        return page
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
        browser.send("Target.disposeBrowserContext", {"browserContextId": context})


def wait_for_quiet_network(browser: Chromium, session: str, start: int, deadline: float, quiet=0.5):
    """Wait until no request has been pending for ``quiet`` seconds (MathJax fetches its fonts late)."""
    settled_since = None
    while time.monotonic() < deadline:
        pending = set()
        for event in browser.session_events(session, start):
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                pending.add(params["requestId"])
            elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                pending.discard(params["requestId"])
        if pending:
            settled_since = None
        elif settled_since is None:
            settled_since = time.monotonic()
        elif time.monotonic() - settled_since >= quiet:
            return
        time.sleep(0.05)


def problems_from_events(events: list[dict]) -> dict:
    """Console messages, exceptions, failed requests and requests to other hosts, from DevTools events."""
    console = {"error": [], "warning": []}
    failed, external = [], []
    urls = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            console["warning" if params["type"] == "warning" else "error"].append(text[:300])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            console["error"].append((details.get("exception", {}).get("description") or details["text"])[:300])
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            console[entry["level"]].append(f"{entry['text']} {entry.get('url', '')}"[:300])
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            host = urllib.parse.urlsplit(url).hostname
            if url.startswith(("http:", "https:", "ws:", "wss:")) and host != "127.0.0.1":
                external.append(url)
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            failed.append(f"{params['response']['status']} {params['response']['url']}")
        elif method == "Network.loadingFailed":
            failed.append(f"{params['errorText']} {urls.get(params['requestId'], '?')}")
    # A failed request is also logged to the console; keep it once, under failed requests.
    console["error"] = [m for m in console["error"] if not m.startswith("Failed to load resource")]
    return {"console_errors": console["error"], "console_warnings": console["warning"],
            "failed_requests": sorted(set(failed)), "external_requests": sorted(set(external))}


def measure_figures(page: dict, site_root: pathlib.Path) -> list[dict]:
    """Each figure of a probed page: its file, whether it loaded and links to itself, its smallest label."""
    figures = []
    for image in page["images"]:
        if not image["isFigure"]:
            continue
        path = urllib.parse.unquote(urllib.parse.urlsplit(image["src"]).path).lstrip("/")
        figure = {"file": path, "loaded": image["complete"] and image["naturalWidth"] > 0,
                  "opens_full_size": image["link"] is not None
                  and urllib.parse.urlsplit(image["link"]).path == urllib.parse.urlsplit(image["src"]).path,
                  "shown_px": round(image["shownWidth"], 1), "smallest_label_px": None}
        file = site_root / path
        if file.suffix == ".svg" and file.is_file():
            width_pt, sizes = svg_label_sizes(file)
            if sizes and width_pt:
                figure["natural_px"] = round(width_pt * 4 / 3, 1)
                figure["shown_fraction"] = round(image["shownWidth"] / (width_pt * 4 / 3), 3)
                # font px on screen = size in pt * (4/3 px per pt) * shown / natural = size_pt * shown / width_pt
                figure["smallest_label_px"] = round(min(sizes) * image["shownWidth"] / width_pt, 2)
        figures.append(figure)
    return figures


def check_site(site_root: pathlib.Path, pages: list[str], binary: str | None = None,
               windows=((DESKTOP, False), (PHONE, False), (DESKTOP, True)),
               screenshots: pathlib.Path | None = None) -> list[dict]:
    """Visit each page in each window (size, dark) and return one report per visit.

    With ``screenshots``, a folder, each visit also saves ``<page>-<width>[-dark].png`` there.
    """
    binary = binary or find_chromium()
    if screenshots is not None:
        pathlib.Path(screenshots).mkdir(parents=True, exist_ok=True)
    if binary is None:
        raise FileNotFoundError("no Chromium binary found (apt-get install chromium, or set $CHROMIUM)")
    site_root = pathlib.Path(site_root).resolve()
    reports = []
    with serve(site_root) as base_url:
        browser = Chromium(binary)
        try:
            for page_path in pages:
                for (width, height), dark in windows:
                    shot = None
                    if screenshots is not None:
                        name = f"{page_path.replace('/', '_').removesuffix('.html')}-{width}{'-dark' if dark else ''}"
                        shot = pathlib.Path(screenshots) / f"{name}.png"
                    page = visit(browser, base_url + page_path, width, height, dark, screenshot=shot)
                    page["figures"] = measure_figures(page, site_root)
                    del page["images"]
                    page.update(page=page_path, window=f"{width}x{height}", dark=dark)
                    reports.append(page)
        finally:
            browser.close()
    return reports


def failures(report: dict, min_label_px: float = MIN_LABEL_PX, legibility: bool = True) -> list[str]:
    """What is wrong with one visit, in words; empty when the page is as a reader should see it.

    The label floor applies to the desktop window (the page width the figures are drawn for); on a phone a
    reader opens a figure full size instead, and the sizes there are reported, not asserted.
    """
    where = f"{report['page']} at {report['window']}{' dark' if report['dark'] else ''}"
    problems = [f"{where}: console error: {m}" for m in report["console_errors"]]
    problems += [f"{where}: console warning: {m}" for m in report["console_warnings"]]
    problems += [f"{where}: failed request: {r}" for r in report["failed_requests"]]
    problems += [f"{where}: request to another host: {r}" for r in report["external_requests"]]
    if report["rawTex"]:
        problems.append(f"{where}: raw TeX left in {len(report['rawTex'])} places, first {report['rawTex'][:3]}")
    if report["mathTypeset"] != report["mathCount"]:
        problems.append(f"{where}: {report['mathCount'] - report['mathTypeset']} of {report['mathCount']} "
                        "formulas not typeset")
    if report["mathErrors"]:
        problems.append(f"{where}: {report['mathErrors']} MathJax errors")
    for figure in report["figures"]:
        if not figure["loaded"]:
            problems.append(f"{where}: figure {figure['file']} did not load")
        if not figure["opens_full_size"]:
            problems.append(f"{where}: figure {figure['file']} does not open full size on a click")
        smallest = figure["smallest_label_px"]
        if legibility and not report["window"].startswith(str(PHONE[0])) and smallest is not None \
                and smallest < min_label_px:
            problems.append(f"{where}: figure {figure['file']} has labels of {smallest:.1f} px "
                            f"(shown at {figure['shown_fraction']:.0%} of its natural width), "
                            f"below {min_label_px} px")
    return problems


def summary(report: dict) -> str:
    """One line per visit, and one per figure: what an offline reader sees."""
    lines = [f"{report['page']} {report['window']}{' dark' if report['dark'] else ''}: "
             f"{report['mathTypeset']}/{report['mathCount']} formulas typeset, {report['mathErrors']} math errors, "
             f"{len(report['console_errors'])} console errors, {len(report['console_warnings'])} warnings, "
             f"{len(report['failed_requests'])} failed requests, {len(report['external_requests'])} external, "
             f"{len(report['figures'])} figures"]
    for figure in report["figures"]:
        size = ("" if figure["smallest_label_px"] is None else
                f", smallest label {figure['smallest_label_px']:.1f} px at {figure['shown_fraction']:.0%} size")
        lines.append(f"    {pathlib.PurePosixPath(figure['file']).name}: "
                     f"{'loaded' if figure['loaded'] else 'NOT LOADED'}, "
                     f"{'opens full size' if figure['opens_full_size'] else 'no full-size link'}, "
                     f"shown {figure['shown_px']:.0f} px wide{size}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=pathlib.Path, help="the built book, e.g. _build/html")
    parser.add_argument("pages", nargs="+", help="pages relative to the site, e.g. book/intro.html")
    parser.add_argument("--json", type=pathlib.Path, help="also write the full reports here")
    parser.add_argument("--screenshots", type=pathlib.Path, help="a folder for a screenshot of each visit")
    args = parser.parse_args(argv)
    reports = check_site(args.site, args.pages, screenshots=args.screenshots)
    problems = []
    for report in reports:
        print(summary(report))
        problems += failures(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    print("\n".join(problems) if problems else "no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
