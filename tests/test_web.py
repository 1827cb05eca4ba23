"""The web UI in a real Chromium: a real `flowtap run` with [web], the proxy and a HAR sink, real
traffic through the proxy to the upstream server, then `flowtap web` over what was stored.

The tests of this module share one run and go in order: what is captured first is inspected,
filtered and downloaded; then the run is paused, resumed, marked, cleared and stopped from the
page, and the sinks' files and the store are checked for it. Screenshots go to a temporary folder
(its path is printed; pytest -s shows it).
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

import flowtap

from chromium import chromium_binary
from npmtools import POSTMAN, Judge, npm_install
from upstream import Upstream, free_port, websocket_exchange

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANH"
                       "QEDasKb6QAAAABJRU5ErkJggg==")
SCRIPT = (b"<script>window.__pwned = 1; document.title = 'pwned'</script>"
          b"<img src=x onerror=\"window.__pwned = 2\"><b id=injected>bold</b>")


class Run:
    """`flowtap run` with the proxy, [web] and a HAR sink, its output read on a thread."""

    def __init__(self, folder: Path, data: Path) -> None:
        self.folder, self.data = folder, data
        self.har = folder / "live.har"
        config = folder / "flowtap.toml"
        config.write_text(f'[session]\nname = "webtest"\n[sources.proxy]\nlisten = "127.0.0.1:0"\n'
                          f'[sinks.har]\npath = "{self.har}"\n[web]\nport = 0\n')
        self.env = {**os.environ, "FLOWTAP_DATA_DIR": str(data)}
        self.proc = subprocess.Popen([sys.executable, "-m", "flowtap", "-c", str(config), "run", "--plain"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, env=self.env, cwd=folder)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.web = self.proxy = ""
        deadline = time.monotonic() + 30
        while not (self.web and self.proxy):
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail("flowtap run did not start:\n" + "".join(self.output))
            if found := re.search(r"web UI: (http://\S+)", line):
                self.web = found.group(1)
            if found := re.search(r"export http_proxy=(http://127\.0\.0\.1:\d+)", line):
                self.proxy = found.group(1)
        self.base = self.web.split("/?")[0]
        self.client = httpx.Client(proxy=self.proxy, trust_env=False, timeout=20)

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            self.lines.put(line)

    def store(self):
        return flowtap.open_store(self.data / "flowtap.db")

    def session_id(self) -> str:
        with self.store() as store:
            return store.session("webtest").id

    def flow_id(self, path: str) -> str:
        """The id of the stored flow whose path starts with ``path`` (the last one)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.store() as store:
                found = [row.id for row in store.rows(session="webtest") if row.path.startswith(path)]
            if found:
                return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"no stored flow for {path}")

    def kill(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def upstream():
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def run(tmp_path_factory, upstream):
    data = Path(tempfile.mkdtemp(prefix="ftw-"))  # a short path: control sockets are limited to 107 bytes
    started = Run(tmp_path_factory.mktemp("web"), data)
    try:
        yield started
    finally:
        started.kill()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture
def page(browser, run):
    context = browser.new_context(viewport={"width": 1400, "height": 850}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto(run.web)  # the token, traded for the cookie
    yield opened
    context.close()
    assert not errors, errors


def open_session(page, run) -> None:
    page.goto(f"{run.base}/#/s/{run.session_id()}")
    expect(page.locator("#state")).to_be_visible()


def paths(page) -> list[str]:
    return page.locator("#flows .row.flow .path").all_inner_texts()


def wait_for_paths(page, wanted, timeout: float = 10) -> list[str]:
    """The table's paths once ``wanted(paths)`` holds (the table redraws as the store answers)."""
    deadline = time.monotonic() + timeout
    while not wanted(shown := paths(page)):
        assert time.monotonic() < deadline, f"the table shows {shown}"
        time.sleep(0.05)
    return shown


# -- safety (no browser: the server's answers to requests a browser would not make) ------------------


def test_the_token_the_host_and_the_origin_guard_every_request(run):
    with httpx.Client(base_url=run.base, trust_env=False, timeout=10) as web:
        assert web.get("/").status_code == 403
        assert web.get("/api/sessions").status_code == 403
        assert web.get("/", params={"token": "wrong"}).status_code == 403
        assert web.get("/static/app.js").status_code == 403
        token = run.web.split("token=")[1]
        port = run.base.rsplit(":", 1)[1]
        rebound = web.get("/", params={"token": token}, headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 403 and "set-cookie" not in rebound.headers
        entry = web.get("/", params={"token": token})
        assert entry.status_code == 302 and entry.headers["location"] == "/"
        cookie = entry.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token in cookie
        listing = web.get("/api/sessions")
        assert listing.status_code == 200 and listing.json()["sessions"][0]["name"] == "webtest"
        assert "default-src 'self'" in listing.headers["content-security-policy"]
        assert not any(name.lower().startswith("access-control-") for name in listing.headers)
        rebinding = web.get("/api/sessions", headers={"Host": f"evil.example:{port}"})
        assert rebinding.status_code == 403 and "Host" in rebinding.text
        assert web.get("/api/sessions", headers={"Host": f"localhost:{port}"}).status_code == 200
        sid = run.session_id()
        foreign = web.post(f"/api/sessions/{sid}/control", json={"op": "pause"},
                           headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403 and "cross-site" in foreign.text
        assert web.get(f"/api/sessions/{sid}").json()["state"] == "running"  # the pause never happened
        own = web.get("/api/sessions", headers={"Origin": run.base})
        assert own.status_code == 200


def test_head_answers_what_get_would_without_the_body(run):
    with httpx.Client(base_url=run.base, trust_env=False, timeout=10) as web:
        assert web.head("/api/sessions").status_code == 403  # guarded as GET is
        web.get("/", params={"token": run.web.split("token=")[1]})  # the cookie
        sid = run.session_id()
        for path in ("/", "/static/app.js", "/api/sessions", f"/api/sessions/{sid}/live"):
            got, head = web.get(path) if not path.endswith("/live") else None, web.head(path)
            assert head.status_code == 200 and head.content == b"", path
            if got is not None:
                assert head.headers["content-type"] == got.headers["content-type"], path
                assert int(head.headers["content-length"]) == len(got.content), path
        assert web.head("/api/sessions/no-such-session").status_code == 400
        assert web.head(f"/api/sessions/{sid}/control").status_code == 405  # POST only


# -- watching --------------------------------------------------------------------------------------


def test_flows_appear_live_in_order(page, run, upstream, shots):
    open_session(page, run)
    for i in range(6):
        assert run.client.get(f"{upstream.url}/json?n={i}").status_code == 200
    wanted = [f"/json?n={i}" for i in range(6)]
    deadline = time.monotonic() + 10
    while [p for p in paths(page) if p.startswith("/json")] != wanted:
        assert time.monotonic() < deadline, f"the table shows {paths(page)}"
        time.sleep(0.1)
    page.screenshot(path=shots / "live.png")


def test_awkward_bodies_are_shown_for_what_they_are(page, run, upstream, shots):
    client = run.client
    client.post(f"{upstream.url}/as?type=image/png", content=PNG)
    client.post(f"{upstream.url}/as?type=application/octet-stream", content=bytes(range(256)))
    client.post(f"{upstream.url}/as?type=text/html", content=SCRIPT)
    closed = free_port()
    assert client.get(f"http://127.0.0.1:{closed}/down").status_code == 502
    open_session(page, run)

    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/json')}")
    body = page.locator("#response-body")
    expect(body).to_have_attribute("data-kind", "json")
    expect(body.locator(".json .key").first).to_have_text('"ok": ')
    body.locator(".json summary").nth(1).click()  # the items array folds
    expect(body.locator(".json details.node").nth(1)).not_to_have_attribute("open", "")
    page.locator("#detail table.headers th", has_text="X-Dup").first.wait_for()
    dup = page.locator("#detail table.headers tr", has_text="X-Dup").all_inner_texts()
    assert [line.split()[-1] for line in dup] == ["one", "two"]  # duplicates kept, in order
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=run.base)
    page.click("#copy-curl")
    expect(page.locator("#toast")).to_have_text("curl command copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("curl ") and "/json?n=5" in copied
    page.screenshot(path=shots / "json.png")

    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/as?type=image/png')}")
    image = page.locator("#response-body img.preview")
    expect(image).to_be_visible()
    deadline = time.monotonic() + 5
    while image.evaluate("img => img.naturalWidth") != 2:  # decoded from the blob
        assert time.monotonic() < deadline, "the image was not shown"
        time.sleep(0.05)
    assert image.get_attribute("src").startswith("blob:")

    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/as?type=application/octet')}")
    expect(page.locator("#response-body pre.hex")).to_contain_text(
        "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f")
    page.screenshot(path=shots / "binary.png")

    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/down')}")
    expect(page.locator("#flow-error")).to_contain_text("Failed: ")
    page.screenshot(path=shots / "failed.png")

    proxy_port = int(run.proxy.rsplit(":", 1)[1])
    assert websocket_exchange(proxy_port, "127.0.0.1", upstream.server_port, ["hello", b"\x01\x02"]) == [
        "hello", b"\x01\x02"]
    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/ws')}")
    messages = page.locator("#detail .ws .message")
    expect(messages).to_have_count(4)
    expect(messages.nth(0)).to_contain_text("hello")
    expect(messages.nth(2)).to_contain_text("00000000  01 02")  # binary, as hex


def test_a_captured_script_is_shown_as_text_and_never_runs(page, run, shots):
    page.goto(f"{run.base}/#/s/{run.session_id()}/f/{run.flow_id('/as?type=text/html')}")
    expect(page.locator("#response-body pre")).to_have_text(SCRIPT.decode())
    time.sleep(0.3)  # an onerror would have fired by now
    assert page.evaluate("window.__pwned") is None
    assert page.title() == "flowtap"
    assert page.locator("#injected").count() == 0
    page.screenshot(path=shots / "script.png")


def test_filters_are_evaluated_by_the_store(page, run):
    open_session(page, run)
    expect(page.locator("#flows .row.flow").first).to_be_visible()
    page.fill("#filter", "~u /json & !~u n=0")
    page.press("#filter", "Enter")
    expect(page.locator("#flows .row.flow")).to_have_count(5)
    assert all(p.startswith("/json?n=") for p in paths(page))
    page.fill("#filter", "~zz foo")
    page.press("#filter", "Enter")
    expect(page.locator("#filter-error")).to_contain_text("unknown operator ~zz")
    page.fill("#filter", "")
    page.fill("#url", "TYPE=")  # URL contains, any case
    page.press("#url", "Enter")
    expect(page.locator("#flows .row.flow")).to_have_count(3)
    page.check("#hide-assets")
    expect(page.locator("#flows .row.flow")).to_have_count(2)  # the PNG is hidden
    page.fill("#url", "")
    page.fill("#not-url", "/json")
    page.press("#not-url", "Enter")
    page.check("input.method-filter[value=POST]")
    # The table had 2 rows before this filter too: wait for the rows it keeps, not for a count.
    posted = {"application/octet-stream", "text/html"}
    wait_for_paths(page, lambda shown: {p.partition("=")[2] for p in shown} == posted and len(shown) == 2)


# -- saving ------------------------------------------------------------------------------------------------


def download(page, tmp_path: Path, sink: str) -> Path:
    page.select_option("#sink", sink)
    with page.expect_download() as info:
        page.click("#download")
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    return target


def test_downloads_go_through_the_sinks_and_read_back(page, run, tmp_path):
    from mitmproxy.io import read_flows_from_paths

    open_session(page, run)
    page.fill("#url", "/json")
    page.press("#url", "Enter")
    expect(page.locator("#flows .row.flow")).to_have_count(6)
    har = download(page, tmp_path, "har")
    assert har.name.endswith(".har") and "webtest" in har.name
    read = list(read_flows_from_paths([str(har)]))
    assert [f.request.path for f in read] == [f"/json?n={i}" for i in range(6)]
    assert read[0].response.headers.get_all("x-dup") == ["one", "two"]

    collection = download(page, tmp_path, "collection")
    items = json.loads(collection.read_text())["item"]
    assert items and "/json" in json.dumps(items)
    if shutil.which("npm"):
        assert Judge(npm_install("postman", POSTMAN)).postman_errors(collection) == ""

    jar = http.cookiejar.MozillaCookieJar(str(download(page, tmp_path, "cookiejar")))
    jar.load(ignore_discard=True, ignore_expires=True)  # session cookies are written with expiry 0
    assert {c.name for c in jar} == {"session", "theme"}

    page.locator("#flows .row.flow input[type=checkbox]").nth(1).check()
    page.locator("#flows .row.flow input[type=checkbox]").nth(3).check()
    expect(page.locator("#scope")).to_have_value("selected")
    selected = download(page, tmp_path, "har")
    assert [f.request.path for f in read_flows_from_paths([str(selected)])] == ["/json?n=1", "/json?n=3"]
    script = download(page, tmp_path, "curl").read_text()
    assert script.count("curl ") == 2 and "/json?n=3" in script


def test_the_session_cookie_jar_per_domain(page, run):
    open_session(page, run)
    page.click("#cookies")
    expect(page.locator("#detail .domain h3")).to_have_text(["127.0.0.1"])
    expect(page.locator("#detail table.cookies")).to_contain_text("abc123")


# -- controlling the run (last: it clears and stops it) ------------------------------------------------------


def test_pause_resume_mark_clear_and_stop_from_the_page_reach_every_sink(page, run, upstream, shots):
    open_session(page, run)
    page.click("#pause")
    expect(page.locator("#state")).to_have_text("paused")
    run.client.get(f"{upstream.url}/json?while=paused")
    page.click("#resume")
    expect(page.locator("#state")).to_have_text("running")
    page.fill("#mark-text", "checkout <b>clicked</b>")
    page.click("#mark")
    expect(page.locator("#flows .row.event.mark")).to_contain_text("marker: checkout <b>clicked</b>")
    expect(page.locator("#flows .row.event.pause")).to_have_count(1)
    page.screenshot(path=shots / "controls.png")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#clear")
    expect(page.locator("#flows .row.flow")).to_have_count(0)
    run.client.get(f"{upstream.url}/json?after=clear")
    expect(page.locator("#flows .row.flow .path")).to_have_text(["/json?after=clear"])
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#stop")
    assert run.proc.wait(20) == 0, "".join(run.output)  # the UI in it ends with it

    with run.store() as store:
        session = store.session("webtest")
        events = [(e.kind, e.text) for e in store.events(session.id)]
        stored = [row.path for row in store.rows(session=session)]
    assert events == [("pause", None), ("resume", None), ("mark", "checkout <b>clicked</b>"), ("clear", None)]
    assert stored == ["/json?after=clear"] and session.paused == 1
    har = json.loads(run.har.read_text())
    assert [e["request"]["url"].split("/", 3)[3] for e in har["log"]["entries"]] == ["json?after=clear"]


# -- flowtap web over the stored sessions --------------------------------------------------------------------


def test_flowtap_web_lists_renames_and_deletes_stored_sessions(browser, run, shots):
    assert run.proc.poll() is not None  # after the run ended
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "web", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=run.env, stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("flowtap web: http://127.0.0.1:"), line + proc.stderr.read()  # type: ignore
        context = browser.new_context(viewport={"width": 1200, "height": 500})
        page = context.new_page()
        page.goto(line.split(": ", 1)[1].strip())
        row = page.locator("#sessions tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("webtest")
        expect(row).to_contain_text("ended")
        page.screenshot(path=shots / "sessions.png")
        page.once("dialog", lambda dialog: dialog.accept("checkout bug"))
        row.get_by_role("button", name="Rename").click()
        expect(row.locator("a.open")).to_have_text("checkout bug")
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)
        context.close()
        with run.store() as store:
            assert store.sessions() == []
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(10) == 0
        finally:
            proc.kill()


# -- a large stored session: keyset pages as the table scrolls, never every row -------------------


def scroll_until(page, how: str, done, timeout: float = 30) -> None:
    """Scroll the table (``how``: a function of the scroller) again and again until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, page.locator(".tfoot").inner_text()
        page.locator("#flows").evaluate(how)
        page.wait_for_timeout(100)


def test_a_large_session_scrolls_both_ways_holding_a_window_of_rows(browser, tmp_path):
    from flowtap.config import Config
    from flowtap.testing import capture, make_flow
    from flowtap_web.server import WebServer

    path = tmp_path / "flowtap.db"
    with capture(config={"store": {"path": str(path)}, "session": {"name": "large"}}, record=False) as cap:
        cap.feed(*[make_flow(url=f"https://api.example.com/items/{i}") for i in range(3500)], timeout=60)
    with flowtap.open_store(path) as store:
        sid = store.session("large").id
    server = WebServer(path, Config())
    url = server.start()
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    try:
        page = context.new_page()
        page.goto(url)
        page.goto(f"{url.split('/?')[0]}/#/s/{sid}")
        footer = page.locator(".tfoot")
        expect(footer).to_have_text("200 flows loaded · more below")
        assert paths(page)[0] == "/items/0"
        lines = page.locator("#flows .row.flow")
        scroll_until(page, "el => { el.scrollTop = el.scrollHeight; }",
                     lambda: "more below" not in footer.inner_text())
        expect(footer).to_have_text("2000 flows loaded · earlier ones above")  # a window, not 3500
        assert paths(page)[-1] == "/items/3499" and lines.count() < 100  # only what is on screen
        scroll_until(page, "el => { el.scrollTop = 0; }",
                     lambda: "earlier ones above" not in footer.inner_text())
        expect(footer).to_contain_text("2000 flows loaded · more below")
        assert paths(page)[0] == "/items/0"
    finally:
        context.close()
        server.stop()


def test_a_live_table_that_falls_behind_jumps_to_the_newest_rows(browser, tmp_path):
    """More new flows than one push carries (the proxy outran the page): the table shows the newest,
    and the ones it skipped are there when scrolling up."""
    from flowtap.config import Config
    from flowtap.testing import capture, make_flow
    from flowtap_web.server import LIVE_LIMIT, WebServer

    path = tmp_path / "flowtap.db"
    with capture(config={"store": {"path": str(path)}, "session": {"name": "busy"}}, record=False) as cap:
        cap.feed(make_flow(url="https://api.example.com/items/first"))
        with flowtap.open_store(path) as store:
            sid = store.session("busy").id
        server = WebServer(path, Config())
        url = server.start()
        context = browser.new_context(viewport={"width": 1200, "height": 700})
        try:
            page = context.new_page()
            page.goto(url)
            page.goto(f"{url.split('/?')[0]}/#/s/{sid}")
            expect(page.locator("#state")).to_have_text("running")
            expect(page.locator("#flows .row.flow .path")).to_have_text(["/items/first"])
            cap.feed(*[make_flow(url=f"https://api.example.com/items/{i}") for i in range(1200)], timeout=60)
            footer = page.locator(".tfoot")
            expect(footer).to_have_text(f"{LIVE_LIMIT} flows loaded · earlier ones above", timeout=10_000)
            # following the end (the store may have committed part of the 1,200 when the footer changed)
            wait_for_paths(page, lambda shown: shown[-1:] == ["/items/1199"])
            scroll_until(page, "el => { el.scrollTop = 0; }",
                         lambda: "earlier ones above" not in footer.inner_text())
            page.locator("#flows").evaluate("el => { el.scrollTop = 0; }")
            expect(page.locator("#flows .row.flow .path").first).to_have_text("/items/first")
            expect(footer).to_have_text("1201 flows loaded")
        finally:
            context.close()
            server.stop()
