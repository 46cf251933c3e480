"""Drive headless Chromium over the DevTools protocol: load a page from file://, let its scripts
run, and report what happened (DOM text, console errors, uncaught exceptions, network requests,
and the value of JavaScript expressions). Used by the browser tests and by docs/screenshots.py.

Only the standard library and ``websocket-client`` (a test dependency) are needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

# Flags for an isolated, offline-by-default browser: no first-run UI, no background traffic, and a
# resolver that fails every host name, so an attempted request cannot reach anything.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-port=0", "--window-size=1200,900",
]

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")


def find_browser() -> str | None:
    """Path of a Chromium/Chrome executable (``$MOELENS_CHROMIUM`` first), or None."""
    env = os.environ.get("MOELENS_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class PageReport:
    """What happened while a page loaded."""

    url: str
    text: str = ""  # document.body.innerText after scripts ran
    console_errors: list[str] = field(default_factory=list)  # console.error/assert, log errors, exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    values: dict[str, object] = field(default_factory=dict)  # results of the expressions asked for
    screenshot: bytes | None = None

    @property
    def network_requests(self) -> list[str]:
        """Requests that would leave the machine (anything but file:, data:, blob:, ...)."""
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


class _Session:
    def __init__(self, ws_url: str):
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        import websocket

        self.ws.settimeout(0.1)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:  # nothing arrived in this slice
                pass
        self.ws.settimeout(30)


def load(path: str | Path, expressions: dict[str, str] | None = None, wait_for: str = "true",
         timeout: float = 20.0, screenshot: bool = False, full_page: bool = False, browser: str | None = None) -> PageReport:
    """Open ``path`` from file:// in headless Chromium, wait until the JS expression ``wait_for`` is
    true (or ``timeout``), then evaluate ``expressions`` and collect errors and requests."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium/Chrome found (apt-get install chromium, or set MOELENS_CHROMIUM)")
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="moelens-chromium-")
    process = subprocess.Popen(
        [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = _devtools_port(process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        session = _Session(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            session.call(f"{domain}.enable")
        session.call("Page.navigate", url=url)
        report = PageReport(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            session.pump(0.25)
            ready = session.call("Runtime.evaluate", expression=f"document.readyState === 'complete' && !!({wait_for})", returnByValue=True)
            if ready.get("result", {}).get("value") is True:
                break
        session.pump(0.5)  # late errors and requests
        for name, expression in (expressions or {}).items():
            result = session.call("Runtime.evaluate", expression=expression, returnByValue=True)
            report.values[name] = result.get("result", {}).get("value")
        report.text = session.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                                   returnByValue=True)["result"].get("value", "")
        if screenshot:
            shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
            report.screenshot = base64.b64decode(shot["data"])
        _collect(session.events, report)
        session.ws.close()
        return report
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    raise RuntimeError("Chromium did not start its DevTools endpoint")


def _collect(events: list[dict], report: PageReport) -> None:
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            report.console_errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            report.console_errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            report.console_errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            report.requests.append(params.get("request", {}).get("url", ""))
