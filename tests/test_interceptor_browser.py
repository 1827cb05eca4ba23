"""End to end: a real headless Chromium with the flowtap extension, paired with the bridge, visiting our page.

The extension's ``pairing.json`` holds the key, the bridge's address, and what the user allows it
to share: cookies of 127.0.0.1, and response bodies (flowtap's config asks for them, or not).
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time

import pytest

import flowtap
import flowtap.testing
from flowtap_interceptor import pairing

from chromium import Browser, chromium_binary, wait_until

pytestmark = pytest.mark.timeout(90)

KEY = "browser-test-key-0123456789"


PAGE = b"""<!doctype html><html><body><img src="/pixel.png"><script>
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
(async () => {
  await fetch("/api/items?x=1");
  await fetch("/api/items", {method: "POST", headers: {"Content-Type": "application/json"},
                             body: JSON.stringify({name: "widget"})});
  await fetch("/api/form", {method: "POST", body: new URLSearchParams({a: "1", b: "two words"})});
  await fetch("/api/login", {method: "POST"});
  await fetch("/api/me");
  // Changes further apart than the extension's 250 ms debounce arrive one by one.
  document.cookie = "theme=dark; path=/";
  await pause(1000);
  document.cookie = "theme=light; path=/";
  await pause(1000);
  document.cookie = "theme=; path=/; max-age=0";
  await pause(600);
  await fetch("/api/done");
})();
</script></body></html>"""

BODIES_PAGE = b"""<!doctype html><html><body><script>
(async () => {
  await fetch("/api/items?x=2");
  await fetch("/api/items", {method: "POST", headers: {"Content-Type": "application/json"}, body: "[1,2,3]"});
  const form = new URLSearchParams([["user", "alice"], ["pass", "p w"]]);
  await fetch("/api/order", {method: "POST", body: form});
  await fetch("/api/done");
})();
</script></body></html>"""

RESTART_PAGE = b"""<!doctype html><html><body><script>
fetch("/api/slow").then(() => fetch("/api/done?after=slow"));
</script></body></html>"""


class Site(http.server.ThreadingHTTPServer):
    """Our page and its API on 127.0.0.1; remembers the request bodies it received."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: dict[str, bytes] = {}
        self.slow_started = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, body: bytes, content_type: str, status: int = 200, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/":
            return self._send(PAGE, "text/html")
        if self.path == "/bodies":
            return self._send(BODIES_PAGE, "text/html")
        if self.path == "/pixel.png":
            return self._send(b"\x89PNG\r\n", "image/png")
        if self.path == "/api/slow":  # long enough to restart the extension's worker meanwhile
            self.server.slow_started.set()
            time.sleep(3)
            return self._send(b'{"slow": true}', "application/json")
        if self.path == "/restart":
            return self._send(RESTART_PAGE, "text/html")
        if self.path == "/remember":
            return self._send(b"ok", "text/plain",
                              headers=[("Set-Cookie", "pref=kept; Path=/; Max-Age=3600")])
        self._send(json.dumps({"path": self.path}).encode(), "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.bodies[self.path] = body
        headers = [("Set-Cookie", "session=abc123; Path=/; HttpOnly")] if self.path == "/api/login" else []
        self._send(json.dumps({"path": self.path, "got": len(body)}).encode(), "application/json", 201,
                   headers)


class CookieJarRecorder:
    """Cookie events a source reports outside flows, in order, as a cookie jar receives them."""

    def __init__(self) -> None:
        self.events: list[list[flowtap.Cookie]] = []

    @flowtap.hookimpl
    def flowtap_cookies_seen(self, cookies, flow, source):
        if flow is None and source == "interceptor":
            self.events.append(list(cookies))


@pytest.fixture(scope="module")
def site():
    server = Site()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def bridge_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory, bridge_port):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium here: install Debian's chromium package "
                    "(apt-get install chromium; .ci/run does)")
    pairing_file = {"key": KEY, "bridge": f"ws://127.0.0.1:{bridge_port}", "cookieDomains": ["127.0.0.1"],
                    "captureBodies": True}
    instance = Browser(binary, tmp_path_factory.mktemp("chromium"), pairing_file)
    yield instance
    instance.close()


@pytest.fixture
def start_capture(tmp_path, bridge_port):
    key_file = tmp_path / "interceptor.key"
    pairing.write_key(key_file, KEY)
    opened = []

    def start(**options):
        recorder = CookieJarRecorder()
        table = {"listen": f"127.0.0.1:{bridge_port}", "key_file": str(key_file), **options}
        manager = flowtap.testing.capture("interceptor", recorder, config={"sources": {"interceptor": table}})
        harness = manager.__enter__()
        opened.append(manager)
        return harness, recorder

    yield start
    for manager in reversed(opened):
        manager.__exit__(None, None, None)


def connected(harness) -> bool:
    return bool(harness.capture.sources["interceptor"].bridge.clients)


def flows_until(harness, path: str, browser: Browser) -> dict[tuple[str, str], flowtap.Flow]:
    def done():
        harness.capture.sync(5)
        return any(f.request.path == path for f in harness.recorded.flows)

    wait_until(done, 20, f"the flow of {path}", browser)
    return {(f.request.method, f.request.path): f for f in harness.recorded.flows}


def test_the_browser_sends_requests_with_bodies_and_cookies(browser, site, start_capture, bridge_port):
    harness, jar = start_capture(cookie_domains=["127.0.0.1"])
    wait_until(lambda: connected(harness), 30, "the extension to connect", browser)
    browser.open(site.url + "/")
    flows = flows_until(harness, "/api/done", browser)

    assert set(flows) == {("GET", "/"), ("GET", "/api/items?x=1"), ("POST", "/api/items"),
                          ("POST", "/api/form"),
                          ("POST", "/api/login"), ("GET", "/api/me"), ("GET", "/api/done")}, \
        "documents and XHR/fetch only (no image), and never the extension's own bridge traffic"
    for flow in flows.values():
        assert flow.source == "interceptor" and flow.error is None
        assert flow.metadata["timings"] == "browser" and flow.metadata["body_unavailable"] is True
        assert flow.timings.start <= flow.timings.end
        assert flow.request.headers.get("user-agent")

    page = flows[("GET", "/")]
    assert page.metadata["resource_type"] == "main_frame" and page.response.status_code == 200
    assert page.response.headers.get("content-type") == "text/html"

    posted = flows[("POST", "/api/items")]
    assert posted.request.body == site.bodies["/api/items"] == b'{"name":"widget"}'
    assert posted.request.headers.get("content-type") == "application/json"
    assert posted.request.headers.get("origin") == site.url  # extraHeaders
    assert posted.response.status_code == 201

    form = flows[("POST", "/api/form")]
    assert form.request.body == site.bodies["/api/form"] == b"a=1&b=two+words"
    assert form.request.headers.get("content-type").startswith("application/x-www-form-urlencoded")

    login = flows[("POST", "/api/login")]
    assert login.response.headers.get("set-cookie") == "session=abc123; Path=/; HttpOnly"
    assert [(c.name, c.value, c.httponly) for c in login.response_cookies] == [("session", "abc123", True)]
    assert flows[("GET", "/api/me")].request_cookies == [("session", "abc123")]

    # The browser's cookie store, as the extension reported it (debounced; the removal that
    # precedes an overwrite is not a deletion).
    wait_until(lambda: any(c.name == "theme" and c.is_expired() for e in jar.events for c in e), 10,
               "the cookie deletion", browser)
    changes = [(c.name, c.value, c.is_expired()) for event in jar.events for c in event]
    assert [c for c in changes if c[0] == "theme"] == [("theme", "dark", False), ("theme", "light", False),
                                                       ("theme", "light", True)]
    assert ("session", "abc123", False) in changes
    session = next(c for event in jar.events for c in event if c.name == "session")
    assert (session.domain, session.host_only, session.httponly, session.path) == ("127.0.0.1", True, True,
                                                                                   "/")

    # The popup shows the connection and the counts.
    (client,) = harness.capture.sources["interceptor"].bridge.clients
    popup = browser.open(client.origin + "/popup.html")

    def shown():  # None until the popup has loaded and heard from the service worker
        return browser.evaluate(popup, """(() => {
            const state = document.getElementById("state"), counts = document.getElementById("counts");
            return state && counts && counts.textContent ? [state.textContent, counts.textContent] : null;
        })()""")

    state, counts = wait_until(shown, 10, "the popup's status", browser)
    assert state == "Connected to flowtap"
    assert int(re.match(r"(\d+) requests", counts).group(1)) >= len(flows)


def test_the_extension_reconnects_and_reads_response_bodies_when_asked(browser, site, start_capture):
    first, first_jar = start_capture(cookie_domains=["127.0.0.1"])
    wait_until(lambda: connected(first), 30, "the extension to connect", browser)
    browser.open(site.url + "/remember")
    wait_until(lambda: any(c.name == "pref" for e in first_jar.events for c in e), 10, "the pref cookie",
               browser)
    first.capture.stop()  # the bridge goes away; the extension retries with backoff
    time.sleep(1)
    harness, jar = start_capture(capture_bodies=True, cookie_domains=["127.0.0.1"])
    wait_until(lambda: connected(harness), 20, "the extension to reconnect", browser)
    browser.open(site.url + "/bodies")
    flows = flows_until(harness, "/api/done", browser)

    got = flows[("GET", "/api/items?x=2")]
    assert json.loads(got.response.body) == {"path": "/api/items?x=2"}
    assert got.metadata["body_source"] == "debugger" and "body_unavailable" not in got.metadata
    assert not got.response.truncated
    posted = flows[("POST", "/api/items")]
    assert posted.request.body == b"[1,2,3]"
    assert json.loads(posted.response.body) == {"path": "/api/items", "got": 7}
    # Form fields in the page's order: the browser's formData has them sorted; the debugger has the bytes.
    ordered = flows[("POST", "/api/order")]
    assert ordered.request.body == site.bodies["/api/order"] == b"user=alice&pass=p+w"
    assert ordered.metadata["request_body_source"] == "debugger"
    assert "request_body_rebuilt" not in ordered.metadata
    # On connecting, the extension sent every cookie of the synced domains it holds.
    harness.capture.sync(5)
    assert jar.events and ("pref", "kept") in [(c.name, c.value) for c in jar.events[0]]
    pref = next(c for c in jar.events[0] if c.name == "pref")
    assert pref.expires and pref.expires > time.time() + 3000


def test_a_request_in_flight_while_the_worker_restarts_is_one_whole_flow(browser, site, start_capture):
    harness, _ = start_capture()
    wait_until(lambda: connected(harness), 30, "the extension to connect", browser)
    source = harness.capture.sources["interceptor"]
    (before,) = source.bridge.clients
    site.slow_started.clear()
    browser.open(site.url + "/restart")
    assert site.slow_started.wait(10), "the page did not ask for /api/slow"
    browser.stop_service_worker()
    wait_until(lambda: before not in source.bridge.clients, 10, "the worker's connection to end", browser)
    flows = flows_until(harness, "/api/done?after=slow", browser)
    (after,) = source.bridge.clients
    assert after is not before and after.instance == before.instance != ""
    slow = [f for f in harness.recorded.flows if f.request.path == "/api/slow"]
    assert len(slow) == 1, [(f.request.path, f.error) for f in slow]
    assert slow[0].error is None and slow[0].response.status_code == 200
    assert slow[0].request.headers.get("user-agent"), "the request's half, sent before the restart"
    assert slow[0].timings.end - slow[0].timings.start >= 2.5
    assert ("GET", "/restart") in flows
