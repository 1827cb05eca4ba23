"""A real headless Chromium with the flowtap extension loaded, for the browser tests.

The extension is loaded from a copy of its folder holding a ``pairing.json``
(the key, the bridge address, and the user's choices), the extension's
documented way to pair without the popup. The browser starts with no URL;
pages are opened through the DevTools HTTP endpoint (``PUT /json/new?URL``),
as a page given on the command line may never load with a webRequest
extension. :meth:`Browser.evaluate` runs JavaScript in a tab or in the
extension's service worker through a minimal DevTools protocol client.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from flowtap_interceptor import protocol


def chromium_binary() -> str | None:
    """The browser binary itself (Debian's ``chromium`` command is a wrapper script adding flags)."""
    candidates = ["/usr/lib/chromium/chromium"]
    try:
        listing = subprocess.run(["dpkg", "-L", "chromium"], capture_output=True, text=True,
                                 timeout=10).stdout
        candidates += [line for line in listing.splitlines() if line.endswith("/chromium")]
    except (OSError, subprocess.SubprocessError):
        pass
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class Browser:
    """A headless Chromium with the extension (copied to ``folder``, paired by ``pairing``; another
    extension folder with ``source``)."""

    def __init__(self, binary: str, folder: Path, pairing: dict[str, Any] | None,
                 source: Path = protocol.EXTENSION_DIR) -> None:
        self.folder = folder
        self.extension = folder / "extension"
        shutil.copytree(source, self.extension)
        if pairing is not None:
            (self.extension / "pairing.json").write_text(json.dumps(pairing))
        self.profile = folder / "profile"
        self.log = open(folder / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
             # The browser's own background requests resolve to nothing: no lookup leaves the machine.
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
             f"--user-data-dir={self.profile}", f"--load-extension={self.extension}"],
            env={**os.environ, "TMPDIR": str(folder)}, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def devtools_port(self, timeout: float = 20) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Chromium exited with {self.process.returncode}; see {self.log.name}")
            if port_file.is_file() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            time.sleep(0.05)
        raise AssertionError(f"Chromium wrote no DevToolsActivePort in {timeout}s")

    def targets(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.devtools_port()}/json/list"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)

    def service_worker(self, timeout: float = 20) -> str:
        """The DevTools WebSocket URL of the extension's service worker (once it runs, its APIs bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for target in self.targets():
                if target["type"] == "service_worker" and target["url"].startswith("chrome-extension://"):
                    url = target["webSocketDebuggerUrl"]
                    if self.evaluate(url, "typeof chrome") == "object":
                        return url
            time.sleep(0.1)
        raise AssertionError(f"the extension's service worker did not start in {timeout}s; "
                             f"see {self.log.name}")

    def extension_id(self) -> str:
        """The ID Chromium gave the extension (from its service worker's URL)."""
        self.service_worker()
        (url,) = {t["url"] for t in self.targets() if t["type"] == "service_worker"
                  and t["url"].startswith("chrome-extension://")}
        return url.split("/")[2]

    def stop_service_worker(self) -> None:
        """Stop the extension's service worker, as Chromium does to an idle one (the next event starts it
        again)."""
        (target,) = [t["id"] for t in self.targets() if t["type"] == "service_worker"
                     and t["url"].startswith("chrome-extension://")]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.devtools_port()}/json/close/{target}",
                                    timeout=10) as response:
            response.read()

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab; returns the tab's DevTools WebSocket URL."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.devtools_port()}/json/new?{url}",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["webSocketDebuggerUrl"]

    @staticmethod
    def evaluate(target: str, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if a promise) in a tab or a worker."""
        with connect(target, open_timeout=5, max_size=None) as cdp:
            cdp.send(json.dumps({"id": 1, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True,
                                            "awaitPromise": True}}))
            while True:
                reply = json.loads(cdp.recv(timeout=10))
                if reply.get("id") == 1:
                    result = reply["result"]
                    if "exceptionDetails" in result:
                        raise AssertionError(f"{expression}: {result['exceptionDetails']}")
                    return result["result"].get("value")

    def close(self) -> None:
        """Let Chromium shut down (it reaps its own helpers), then kill whatever of its group is left."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def wait_until(predicate, timeout: float, what: str, browser: Browser):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if browser.process.poll() is not None:
            raise AssertionError(f"Chromium exited while waiting for {what}; see {browser.log.name}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; see {browser.log.name}")
