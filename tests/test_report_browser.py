"""The built report in a real browser: headless Chromium opens every page with no console
errors, no failed or network requests and no broken images, shows a hostile optimizer name as
text, and takes a screenshot; the asv pages copied into a report render from a local server
without a request leaving the machine.

The browser is driven through the Chrome DevTools protocol over ``--remote-debugging-pipe``
(null-separated JSON on file descriptors 3 and 4), so the test needs no websocket client.
Skipped only where no Chromium executable is installed.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from curvebench.reports.build import build_site
from curvebench.reports.study import Study
from tests.report_fixtures import HOSTILE, synthetic_records

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                 "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium executable on PATH (Debian: apt-get install chromium)")

#: The only host a page may request from: the test's own server of the site.
_LOCAL = "http://127.0.0.1:"
#: Where screenshots go when set (CI artifacts, manual inspection); else the test's tmp dir.
SCREENSHOT_DIR = os.environ.get("CURVEBENCH_SCREENSHOT_DIR")


class DevTools:
    """Minimal Chrome DevTools protocol client over a pipe pair."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def remap() -> None:  # the browser reads commands on fd 3, writes replies on fd 4
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=remap, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._ids = itertools.count(1)
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe: "
                                       + self.process.stderr.read().decode()[-2000:])
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and wait for its result (events meanwhile are kept)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for an event (already received or arriving)."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                self.events.remove(event)
                return event
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            if event.get("method") == "Page.javascriptDialogOpening":  # e.g. an injected alert
                raise AssertionError(f"the page opened a dialog: {event['params']}")
            self.events.append(event)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.process.stderr.close()


def _problems(events: list[dict[str, Any]], page: str) -> list[str]:
    """Console errors, uncaught exceptions, failed requests and any non-file request."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"{page}: console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"{page}: exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(f"{page}: log error: {params['entry'].get('text')} "
                         f"{params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"{page}: request failed: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file://", "data:", "about:", _LOCAL)):
                found.append(f"{page}: network request to {url}")
        elif method == "Network.responseReceived" and params["response"].get("status", 200) \
                >= 400:
            found.append(f"{page}: HTTP {params['response']['status']} for "
                         f"{params['response']['url']}")
    return found


def _visit(tools: DevTools, session: str, path: Path | str, screenshot: Path, *,
           settle: str | None = None) -> dict[str, Any]:
    """Load ``path`` (a file, or a URL); return what the page shows, after saving a full-page
    screenshot. ``settle``: a JavaScript condition to wait for after the load event (pages
    that draw from data they request)."""
    tools.events.clear()
    url = path if isinstance(path, str) else path.resolve().as_uri()
    tools.send("Page.navigate", {"url": url}, session=session)
    tools.wait_for("Page.loadEventFired")
    if settle:
        tools.send("Runtime.evaluate", {"awaitPromise": True, "expression": f"""
            new Promise(done => {{ const t = setInterval(() => {{
                if ({settle}) {{ clearInterval(t); done(true); }} }}, 50); }})"""},
            session=session, timeout=30)
    state = tools.send("Runtime.evaluate", {"returnByValue": True, "expression": """({
        text: document.body.innerText,
        scripts: document.querySelectorAll('script').length,
        images: document.images.length,
        broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
                     .map(i => i.getAttribute('src')),
        links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    })"""}, session=session)["result"]["value"]
    metrics = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    shot = tools.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": metrics["width"],
                 "height": min(metrics["height"], 12000), "scale": 1}}, session=session)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    state["problems"] = _problems(tools.events, url.rsplit("/", 1)[-1])
    return state


def _screenshots(tmp_path: Path) -> Path:
    shots = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _open_tab(tools: DevTools) -> str:
    """A 1280×900 tab logging page, console and network events; returns its session."""
    target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = tools.send("Target.attachToTarget",
                         {"targetId": target, "flatten": True})["sessionId"]
    tools.send("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session)
    for domain in ("Page", "Runtime", "Log", "Network"):
        tools.send(f"{domain}.enable", session=session)
    return session


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    records = synthetic_records(problems=("synth-mlp",), seeds=(0, 1), hostile=True)
    build_site(Study.from_records(records), out=out, n_bootstrap=100)
    return out


def test_report_opens_in_chromium_without_errors(site: Path, tmp_path: Path) -> None:
    shots = _screenshots(tmp_path)
    tools = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        session = _open_tab(tools)
        pages = sorted(site.glob("*.html"))
        assert len(pages) >= 2  # index and a problem
        seen_hostile = False
        for page in pages:
            shot = shots / f"{page.stem}.png"
            state = _visit(tools, session, page, shot)
            assert state["problems"] == []
            assert state["scripts"] == 0, f"{page.name} contains a script element"
            assert state["broken"] == [], f"{page.name}: images not loaded: {state['broken']}"
            assert shot.stat().st_size > 10_000
            assert all(link.startswith("file://") for link in state["links"]), state["links"]
            for link in state["links"]:  # every local link points at a file of the site
                target_path = Path(unquote(urlparse(link).path))
                assert target_path.is_file(), f"{page.name}: dead link {link}"
            if page.name != "index.html":
                assert state["images"] >= 2, f"{page.name} shows no figures"
            seen_hostile |= HOSTILE in state["text"]
        assert seen_hostile, "the hostile optimizer name is not shown as text"
    finally:
        tools.close()


def _asv_html(folder: Path) -> Path:
    """asv's HTML output for one benchmark: asv's own page files and the data ``asv publish``
    writes for one run of one benchmark on one machine."""
    asv = pytest.importorskip("asv")
    shutil.copytree(Path(asv.__file__).parent / "www", folder)
    graph = folder / "graphs" / "branch-main" / "machine-m1" / "python-3.11"
    graph.mkdir(parents=True)
    (folder / "graphs" / "summary").mkdir(parents=True)
    point = [[0, 2.2e-06]]
    for path in (graph / "bench.time_x.json", folder / "graphs" / "summary" / "bench.time_x.json"):
        path.write_text(json.dumps(point))
    (graph / "summary.json").write_text(json.dumps([{
        "name": "bench.time_x", "idx": None, "pretty_name": "bench.time_x", "last_rev": 0,
        "last_value": 2.2e-06, "last_err": 0.0, "prev_value": None, "change_rev": None}]))
    (folder / "info.json").write_text(json.dumps({"asv-version": "0.6.6",
                                                  "timestamp": 1796059277080}))
    (folder / "regressions.json").write_text(json.dumps({"regressions": []}))
    params = {"machine": ["m1"], "python": ["3.11"], "branch": ["main"]}
    (folder / "index.json").write_text(json.dumps({
        "project": "demo", "project_url": "", "show_commit_url": "#", "hash_length": 8,
        "revision_to_hash": {"0": "6484870a51a52f941bcc493ed2c0f274d1601f93"},
        "revision_to_date": {"0": 1796059271000}, "params": params,
        "graph_param_list": [{k: v[0] for k, v in params.items()}],
        "benchmarks": {"bench.time_x": {
            "code": "def time_x():\n    sum(range(10))", "min_run_count": 2,
            "name": "bench.time_x", "number": 0, "param_names": [], "params": [], "repeat": 0,
            "rounds": 2, "sample_time": 0.01, "type": "time", "unit": "seconds",
            "version": "0", "warmup_time": -1}},
        "machines": {"m1": {"machine": "m1", "version": 1}}, "tags": {},
        "pages": [["", "Grid view", "Display as a agrid"],
                  ["summarylist", "List view", "Display as a list"],
                  ["regressions", "Show regressions", "Display information about recent "
                                                      "regressions"]]}))
    return folder


@contextlib.contextmanager
def _served(folder: Path):
    """``http://127.0.0.1:PORT/`` serving ``folder`` from a thread, closed on exit."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{_LOCAL}{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_asv_pages_in_the_report_work_offline(tmp_path: Path) -> None:
    from curvebench.reports.asv_offline import external_urls

    asv = _asv_html(tmp_path / "asv-html")
    assert external_urls((asv / "index.html").read_text())  # asv's own page uses CDNs
    site = tmp_path / "site"
    build_site(Study.from_records(synthetic_records(problems=("p",), seeds=(0,),
                                                    batch_sizes=(128,))),
               out=site, asv_html=asv, n_bootstrap=20)
    for page in (site / "asv").rglob("*.html"):
        assert external_urls(page.read_text(encoding="utf-8")) == [], page.name
    shots = _screenshots(tmp_path)
    tools = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        session = _open_tab(tools)
        with _served(site) as root:
            state = _visit(tools, session, f"{root}asv/index.html", shots / "asv.png",
                           settle="document.body.innerText.includes('time_x')")
        assert state["problems"] == []  # no request left the machine, none failed
        assert "error" not in tools.send("Runtime.evaluate", {
            "expression": "location.pathname", "returnByValue": True},
            session=session)["result"]["value"]  # asv did not fall back to its error page
        assert "airspeed velocity" in state["text"] and state["broken"] == []
    finally:
        tools.close()
