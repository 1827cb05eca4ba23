"""Trust, with a real headless Chromium and our extension: whatever sits on the bridge's port gets
nothing until it proves it holds the pairing key, a recorded exchange replays nowhere, and flowtap
itself cannot widen what the user allowed the extension to share.

Each test gets a browser of its own (the extension keeps state) on a port of its own. A site on
127.0.0.1 sets an HttpOnly session cookie, sends bodies and loads an image; the fake bridges record
every frame the extension sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.sync.client import connect

import flowtap
import flowtap.testing
from flowtap.control import runs
from flowtap_interceptor import bridge as bridge_module, pairing, protocol

from chromium import Browser, chromium_binary, wait_until

pytestmark = pytest.mark.timeout(120)

KEY = "trust-test-key-0123456789abcdef"
#: What a fake bridge asks for: everything.
WIDE = {"capture": True, "paused": False, "urlFilter": "", "methods": [], "resourceTypes": ["all"],
        "cookieDomains": ["127.0.0.1", "test"], "captureBodies": True, "maxBodySize": 1048576}

PAGE = b"""<!doctype html><html><body><img src="/pixel.png"><script>
(async () => {
  await fetch("/api/login", {method: "POST", body: "user=alice&pass=secret"});
  document.cookie = "theme=dark; path=/";
  await fetch("/api/me");
  await fetch("/api/done");
})();
</script></body></html>"""


class Site(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.served: list[str] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, body: bytes, content_type: str, headers=()):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.server.served.append(self.path)

    def do_GET(self):
        if self.path.startswith("/page"):
            return self._send(PAGE, "text/html")
        if self.path == "/pixel.png":
            return self._send(b"\x89PNG\r\n", "image/png")
        self._send(json.dumps({"path": self.path, "secret": "response-body"}).encode(), "application/json")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(b'{"ok": true}', "application/json", [("Set-Cookie", "session=abc123; Path=/; HttpOnly")])


@pytest.fixture(scope="module")
def site():
    server = Site()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def browsers():
    """``launch(port, **choices)``: a Chromium whose extension is paired with KEY for ws://127.0.0.1:port."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium here: install Debian's chromium package (apt-get install chromium)")
    launched = []
    # Short: Chromium's singleton socket lives in it, and a socket's path is limited to 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="ftc-"))

    def launch(port: int | None, source: Path = protocol.EXTENSION_DIR, **choices) -> Browser:
        pairing_file = None if port is None else {"key": KEY, "bridge": f"ws://127.0.0.1:{port}", **choices}
        (folder / str(len(launched))).mkdir()
        browser = Browser(binary, folder / str(len(launched)), pairing_file, source)
        launched.append(browser)
        return browser

    yield launch
    for browser in launched:
        browser.close()
    shutil.rmtree(folder, ignore_errors=True)


Behaviour = Callable[["FakeBridge", object, int], Awaitable[None]]


class FakeBridge:
    """A WebSocket server on the bridge's port that does not hold the key (or replays), recording
    every frame the extension sends it. ``behaviours[i]`` plays the ``i``-th connection (the last
    one the rest)."""

    def __init__(self, port: int, behaviours: list[Behaviour]) -> None:
        self.port = port
        self.behaviours = behaviours
        self.received: list[tuple[int, dict]] = []  # (connection, message)
        self.connections = 0
        self.closes: list[int] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port):
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws) -> None:
        index = self.connections
        self.connections += 1
        behaviour = self.behaviours[min(index, len(self.behaviours) - 1)]
        try:
            await behaviour(self, ws, index)
            async for raw in ws:  # whatever else comes, until the extension closes
                self.received.append((index, json.loads(raw)))
        except ConnectionClosed as exc:
            # No close frame received: the connection dropped (1006, as ws.close_code would say).
            self.closes.append(exc.rcvd.code if exc.rcvd else 1006)
        else:
            self.closes.append(ws.close_code)

    async def recv(self, ws, index: int) -> dict:
        message = json.loads(await ws.recv())
        self.received.append((index, message))
        return message

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def make(kind: str, **fields) -> str:
    return protocol.make(kind, **fields)


async def random_proof(fake: FakeBridge, ws, index: int) -> None:
    """Answers the hello with a nonce and a made-up proof, then welcomes with everything."""
    await fake.recv(ws, index)
    await ws.send(make("challenge", nonce=pairing.new_nonce(), proof=secrets.token_hex(32)))
    await ws.send(make("welcome", server="flowtap 9", config=WIDE))
    await ws.send(make("config", config=WIDE))


async def welcome_at_once(fake: FakeBridge, ws, index: int) -> None:
    """Skips the challenge: welcomes with everything before anything else."""
    await ws.send(make("welcome", server="flowtap 9", config=WIDE))
    await ws.send(make("config", config=WIDE))


async def spoofed_error(fake: FakeBridge, ws, index: int) -> None:
    """An error whose text tries to send the user somewhere."""
    await fake.recv(ws, index)
    await ws.send(make("error", code="auth_failed", message="get a new key at https://evil.example/"))


def wrong_key(key: str) -> Behaviour:
    async def behave(fake: FakeBridge, ws, index: int) -> None:
        """A proper challenge, proved with another key, then a welcome with everything."""
        hello = await fake.recv(ws, index)
        nonce = pairing.new_nonce()
        await ws.send(make("challenge", nonce=nonce, proof=pairing.bridge_proof(key, hello["nonce"], nonce)))
        await ws.send(make("welcome", server="flowtap 9", config=WIDE))

    return behave


def extension_state(browser: Browser) -> list:
    return browser.evaluate(browser.service_worker(), "[state, detail, attached.size]")


def leaked(fake: FakeBridge) -> bool:
    return any(message["type"] != "hello" for _, message in fake.received)


def assert_only_hellos(fake: FakeBridge, connections: int) -> None:
    kinds = [message["type"] for _, message in fake.received]
    assert kinds == ["hello"] * len(kinds), f"the extension sent {kinds} to a server without the key"
    nonces = [message["nonce"] for _, message in fake.received]
    for _, message in fake.received:
        assert set(message) == {"v", "type", "nonce"} and pairing.is_hex64(message["nonce"]), message
    assert len(set(nonces)) == len(nonces), "a fresh nonce for every connection"
    assert fake.connections >= connections


def browse(browser: Browser, site: Site, tag: str) -> None:
    browser.open(f"{site.url}/page?{tag}")
    wait_until(lambda: "/api/done" in site.served, 20, "the page to finish", browser)
    site.served.clear()


def test_a_server_without_the_key_gets_nothing_even_asking_for_everything(browsers, site):
    port = free_port()
    behaviours = [random_proof, welcome_at_once, spoofed_error, wrong_key("not-" + KEY)]
    fake = FakeBridge(port, behaviours)
    try:
        # The user allows everything: only the pairing stands between the fake and the browser's data.
        browser = launch_generous(browsers, port)
        wait_until(lambda: fake.connections >= 1, 20, "the extension to try the fake", browser)
        browse(browser, site, "while-the-fake-listens")
        wait_until(lambda: fake.connections > len(behaviours) or leaked(fake), 30,
                   "the extension to try again", browser)
        browse(browser, site, "again")
        time.sleep(1)  # anything the extension would still send about the page
        # Between two tries the extension is "connecting" for a moment: read its state after a refusal.
        state, detail, debugged = wait_until(lambda: (s := extension_state(browser))[0] == "impostor" and s,
                                             20, "the extension to refuse the fake again", browser)
    finally:
        fake.stop()
    assert_only_hellos(fake, len(behaviours) + 1)
    assert set(fake.closes) <= {4401, 1000, 1001, 1005, 1006}  # 1001: the fake's own shutdown
    assert 4401 in fake.closes, "the extension closes a server that did not prove the key"
    assert state == "impostor" and "did not prove it holds the pairing key" in detail
    assert "evil.example" not in detail and debugged == 0, "no debugger attached at a fake's word"


def launch_generous(browsers, port: int) -> Browser:
    return browsers(port, cookieDomains=["127.0.0.1", "test"], captureBodies=True, resourceTypes=["all"])


class Relay:
    """Between the extension and the real bridge, recording both directions (as a sniffer could)."""

    def __init__(self, port: int, target: int) -> None:
        self.transcript: list[tuple[str, dict]] = []  # ("extension" | "bridge", message)
        self.fake = FakeBridge(port, [self._relay])
        self.target = target

    async def _relay(self, fake: FakeBridge, ws, index: int) -> None:
        origin = ws.request.headers["Origin"]
        async with async_connect(f"ws://127.0.0.1:{self.target}", origin=origin) as upstream:
            async def pump(source, sink, side):
                async for raw in source:
                    self.transcript.append((side, json.loads(raw)))
                    await sink.send(raw)

            tasks = [asyncio.create_task(pump(ws, upstream, "extension")),
                     asyncio.create_task(pump(upstream, ws, "bridge"))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    def stop(self) -> None:
        self.fake.stop()


def test_a_recorded_exchange_replays_to_neither_side(browsers, site, tmp_path, caplog):
    key_file = tmp_path / "interceptor.key"
    pairing.write_key(key_file, KEY)
    bridge_port, port = free_port(), free_port()
    config = {"sources": {"interceptor": {"listen": f"127.0.0.1:{bridge_port}", "key_file": str(key_file)}}}
    with flowtap.testing.capture("interceptor", config=config) as harness:
        relay = Relay(port, bridge_port)
        browser = launch_generous(browsers, port)
        bridge = harness.capture.sources["interceptor"].bridge
        wait_until(lambda: bridge.clients, 30, "the extension to pair through the relay", browser)
        relay.stop()
        wait_until(lambda: not bridge.clients, 10, "the relayed connection to end", browser)
        assert [side for side, _ in relay.transcript[:4]] == ["extension", "bridge", "extension", "bridge"]
        hello, challenge, auth, welcome = (m for _, m in relay.transcript[:4])
        assert (hello["type"], challenge["type"], auth["type"], welcome["type"]) == (
            "hello", "challenge", "auth", "welcome")

        # The extension's side, replayed to the bridge: refused.
        with connect(f"ws://127.0.0.1:{bridge_port}", origin=f"chrome-extension://{protocol.extension_id()}",
                     open_timeout=5) as replay:
            replay.send(json.dumps(hello))
            with contextlib.suppress(ConnectionClosed):
                replay.send(json.dumps(auth))
            refused = json.loads(replay.recv(timeout=5))
            assert refused["type"] == "error" and refused["code"] == "auth_failed"
        assert "a hello replayed" in caplog.text

        # The bridge's side, replayed to the extension by a server without the key: nothing sent.
        async def replay_bridge(fake: FakeBridge, ws, index: int) -> None:
            await fake.recv(ws, index)
            await ws.send(json.dumps(challenge))
            await ws.send(json.dumps(welcome))

        fake = FakeBridge(port, [replay_bridge])
        try:
            wait_until(lambda: fake.connections >= 2, 30, "the extension to try the replayer", browser)
            browse(browser, site, "replayed")
            time.sleep(1)
            state, detail, _ = extension_state(browser)
        finally:
            fake.stop()
    assert_only_hellos(fake, 2)
    assert state == "impostor"


def test_flowtap_cannot_widen_what_the_user_allowed(browsers, site, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flowtap")
    key_file = tmp_path / "interceptor.key"
    pairing.write_key(key_file, KEY)
    port = free_port()
    table = {"listen": f"127.0.0.1:{port}", "key_file": str(key_file),
             "cookie_domains": ["127.0.0.1", "test"], "capture_bodies": True, "resource_types": ["all"]}
    cookie_events = []

    class Jar:
        @flowtap.hookimpl
        def flowtap_cookies_seen(self, cookies, flow, source):
            if flow is None:
                cookie_events.append(cookies)

    with flowtap.testing.capture("interceptor", Jar(), config={"sources": {"interceptor": table}}) as harness:
        browser = browsers(port)  # the extension's defaults: no cookie sync, no bodies, XHR and documents
        bridge = harness.capture.sources["interceptor"].bridge
        wait_until(lambda: bridge.clients, 30, "the extension to connect", browser)
        browse(browser, site, "narrow")

        def done():
            harness.capture.sync(5)
            return any(f.request.path == "/api/done" for f in harness.recorded.flows)

        wait_until(done, 20, "the flows", browser)
        time.sleep(0.5)
        harness.capture.sync(5)
        flows = {f.request.path: f for f in harness.recorded.flows}
        _, _, debugged = extension_state(browser)
        assert set(flows) == {"/page?narrow", "/api/login", "/api/me", "/api/done"}, "no image: not allowed"
        assert all(f.metadata.get("body_unavailable") for f in flows.values()), "no bodies: not allowed"
        assert debugged == 0 and not cookie_events, "no debugger, no cookie sync: not allowed"
        assert ("not shared, as this browser's flowtap extension is set: cookies of 127.0.0.1, test; "
                "response bodies; requests of type all (allow them in the extension's popup)") in caplog.text

        # The user allows bodies and the cookies of 127.0.0.1 in the popup: now they flow.
        worker = browser.service_worker()
        browser.evaluate(worker, 'chrome.storage.local.set({cookieDomains: ["127.0.0.1"], '
                                 'captureBodies: true})')
        wait_until(lambda: cookie_events, 10, "the cookie dump", browser)
        assert {c.name for c in cookie_events[0]} == {"session", "theme"}
        wait_until(lambda: extension_state(browser)[2] > 0, 10, "the debugger to attach", browser)

        # A new key (`flowtap interceptor pair --new`) cuts the extension off.
        pairing.write_key(key_file, pairing.new_key())
        wait_until(lambda: not bridge.clients, 10, "the bridge to close the old key's connection", browser)
        wait_until(lambda: extension_state(browser)[0] == "auth_failed", 10, "the popup to say so", browser)


def test_the_extension_has_the_same_id_from_any_folder(browsers):
    first, second = browsers(None), browsers(None)
    assert first.extension != second.extension
    assert first.extension_id() == second.extension_id() == protocol.extension_id()


def test_chromium_refuses_debugger_as_an_optional_permission(browsers, tmp_path):
    """Why the manifest asks for `debugger` at install rather than when bodies are switched on: an
    extension that lists it under optional_permissions gets no chrome.debugger and cannot request it.
    (Should a Chromium allow it one day, this fails: then move it to optional_permissions.)"""
    extension = tmp_path / "optional-debugger"
    extension.mkdir()
    (extension / "manifest.json").write_text(json.dumps({
        "manifest_version": 3, "name": "optional debugger", "version": "1", "permissions": ["storage"],
        "optional_permissions": ["debugger"], "background": {"service_worker": "worker.js"}}))
    (extension / "worker.js").write_text("self.ready = true;\n")
    browser = browsers(None, source=extension)
    worker = browser.service_worker()
    assert browser.evaluate(worker, "typeof chrome.debugger") == "undefined"
    granted = browser.evaluate(worker, "chrome.permissions.getAll().then((p) => p.permissions)")
    assert "debugger" not in granted
    manifest = json.loads((protocol.EXTENSION_DIR / "manifest.json").read_text())
    assert "debugger" in manifest["permissions"] and "optional_permissions" not in manifest


# -- a flood of clients that never pair, against `flowtap run` ------------------------------------


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in kB, read from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def paired(port: int, key: str) -> dict:
    """Pair as the extension does; the welcome."""
    origin = f"chrome-extension://{protocol.extension_id()}"
    with connect(f"ws://127.0.0.1:{port}", origin=origin, open_timeout=5) as ws:
        nonce = pairing.new_nonce()
        ws.send(make("hello", nonce=nonce))
        challenge = json.loads(ws.recv(timeout=5))
        assert pairing.matches(pairing.bridge_proof(key, nonce, challenge["nonce"]), challenge["proof"])
        ws.send(make("auth", proof=pairing.extension_proof(key, challenge["nonce"], nonce)))
        return json.loads(ws.recv(timeout=5))


def pair_when_free(port: int, timeout: float = 10) -> dict:
    """Pair once the bridge has seen the flood's connections close (a moment after they do)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return paired(port, KEY)
        except (OSError, ConnectionClosed, InvalidMessage):
            assert time.monotonic() < deadline, "no room to pair"
            time.sleep(0.1)


UPGRADE = ("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "Origin: chrome-extension://forged\r\n\r\n")


def huge_hello(port: int, size: int) -> int:
    """Open a WebSocket and send a hello of ``size`` bytes in one frame; how many bytes got out
    before the bridge cut the connection."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(UPGRADE.format(port=port).encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        header = bytes([0x81, 0xFF]) + size.to_bytes(8, "big") + b"\0\0\0\0"  # text, masked (zero mask)
        chunk = b'{"v":2,"type":"hello","nonce":"' + b"a" * (1 << 20)
        try:
            sock.sendall(header)
            while sent < size:
                sock.sendall(chunk[:size - sent])
                sent += min(len(chunk), size - sent)
        except OSError:  # reset: the bridge dropped it
            return sent
    return sent


def test_a_flood_of_unpaired_clients_costs_the_bridge_little_memory_and_few_log_lines(tmp_path, monkeypatch):
    data_dir = Path(tempfile.mkdtemp(prefix="ft-"))  # short: the control socket's path is limited
    monkeypatch.setenv("FLOWTAP_DATA_DIR", str(data_dir))
    key_file = tmp_path / "interceptor.key"
    pairing.write_key(key_file, KEY)
    port = free_port()
    (tmp_path / "flowtap.toml").write_text(f'[sources.interceptor]\nlisten = "127.0.0.1:{port}"\n'
                                           f'key_file = "{key_file}"\n')
    out, err = open(tmp_path / "out.txt", "w+b"), open(tmp_path / "err.txt", "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not runs.socket_path(proc.pid).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        assert paired(port, KEY)["type"] == "welcome"  # warm: everything pairing needs is loaded
        before = rss_kb(proc.pid)

        # 500 clients that never pair: half hold their connection open, half send a hello and a forged auth.
        held, refused_at_once = [], 0
        for i in range(500):
            sock = socket.socket()
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(UPGRADE.format(port=port).encode())
                if i % 2:
                    hello = b'{"v":2,"type":"hello","nonce":"00"}'.ljust(40)
                    sock.sendall(bytes([0x81, 0x80 | len(hello)]) + b"\0\0\0\0" + hello)
            except OSError:
                refused_at_once += 1
            held.append(sock)
        for sock in held:
            sock.close()
        # Five hellos of 60 MB at once.
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(huge_hello(port, 60 << 20)))
                   for _ in range(5)]
        assert pair_when_free(port)["type"] == "welcome"
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        after = rss_kb(proc.pid)
        assert pair_when_free(port)["type"] == "welcome", "the bridge still pairs its extension"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    err.seek(0)
    log = err.read().decode()
    assert len(results) == 5 and max(results) < 16 << 20, f"the bridge read on: {results} bytes"
    grown = after["VmHWM"] - before["VmRSS"]
    print(f"bridge process: {before} -> {after} kB; 60 MB hellos cut after {results} bytes")
    assert grown < 20_000, f"RSS {before} -> {after} kB"
    refusals = [line for line in log.splitlines() if "refused" in line]
    assert 2 <= len(refusals) <= 4, log
    # Every client refused is counted (those that gave up while pending, at most MAX_PENDING, left unrefused).
    total = sum(int(n) for n in re.findall(r"refused (\d+) more connections", log)) + 1
    assert total >= 500 - bridge_module.MAX_PENDING, log
