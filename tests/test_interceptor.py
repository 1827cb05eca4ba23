"""The interceptor bridge: protocol, pairing, conversion, and the CLI, against a scripted WebSocket client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import shutil
import socket
import stat
import sys
import time
import zipfile
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

import flowtap
import flowtap.testing
import flowtap_interceptor
from flowtap_interceptor import (
    bridge as bridge_module,
    commands,
    convert,
    pairing,
    protocol,
    source as interceptor_source,
)
from flowtap_interceptor.bridge import RefusalLog
from flowtap_interceptor.protocol import ProtocolError

from clirun import flowtap as run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ORIGIN = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"


# -- helpers ------------------------------------------------------------------------------


def msg(kind, **fields):
    return {"v": protocol.VERSION, "type": kind, **fields}


def event(kind, rid="1", url="http://127.0.0.1:8000/api/items?page=2", method="GET", t=1_700_000_000_000.0,
          **fields):
    return msg("capture", event=kind, id=rid, url=url, method=method, timeStamp=t, tabId=7, frameId=0,
               resourceType="xmlhttprequest", **fields)


class Client:
    """A scripted extension: connects, pairs as the extension does, and records what the bridge sends.

    With ``key`` (or a forged ``proof``) it says hello, reads the challenge (``bridge_proved`` tells
    whether the bridge's proof checks out for ``key``) and answers with auth; without, it only says
    hello (``hello=False``: not even that). What the bridge sends next is left for :meth:`recv`.
    """

    def __init__(self, port, key=None, origin=ORIGIN, proof=None, hello=True, nonce=None, instance=None):
        # Entered like a context manager (websockets' direct use is deprecated); closed by close().
        self.ws = connect(f"ws://127.0.0.1:{port}", origin=origin, open_timeout=5,
                          close_timeout=2).__enter__()
        self.received = []
        self._unread = []
        self.nonce = nonce or pairing.new_nonce()
        self.challenge = None
        self.bridge_proved = False
        if hello:
            self.send(msg("hello", nonce=self.nonce))
        if key is None and proof is None:
            return
        reply = self.recv()
        if reply["type"] != "challenge":
            self._unread.append(reply)
            return
        self.challenge = reply
        if key is not None:
            expected = pairing.bridge_proof(key, self.nonce, reply["nonce"])
            self.bridge_proved = pairing.matches(expected, reply["proof"])
        self.auth = msg("auth", proof=proof or pairing.extension_proof(key, reply["nonce"], self.nonce),
                        client="test", **({"instance": instance} if instance else {}))
        self.send(self.auth)

    def send(self, message):
        self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    def recv(self, timeout=5):
        if self._unread:
            return self._unread.pop(0)
        message = json.loads(self.ws.recv(timeout=timeout))
        problem = protocol.validate(message, protocol.schema())
        assert problem is None, f"the bridge sent a message its own schema refuses: {problem}: {message}"
        self.received.append(message)
        return message

    def closed_with(self, timeout=5):
        """The close code the bridge ended the connection with (reading what it still sent)."""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                self.ws.recv(timeout=timeout)
        return info.value.rcvd.code if info.value.rcvd else None

    def ask(self, message):
        """Send, then return the bridge's reply (an error, or the pong to a ping sent after)."""
        self.send(message)
        self.send(msg("ping", time=1))
        reply = self.recv()
        if reply["type"] == "error":
            assert self.recv()["type"] == "pong"  # the connection goes on
        return reply

    def close(self):
        self.ws.close()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys" / "interceptor.key"
    pairing.write_key(path, "s3cret-test-key")
    return path


class CookieRecorder:
    """Records the cookie events sources report outside any flow, as a cookie jar sees them."""

    def __init__(self):
        self.events = []

    @flowtap.hookimpl
    def flowtap_cookies_seen(self, cookies, flow, source):
        if flow is None:
            self.events.append((source, cookies))


@pytest.fixture
def bridge(key_file, caplog):
    """A running capture with the interceptor source on a free port; yields (harness, port, recorder)."""
    caplog.set_level(logging.INFO, logger="flowtap")
    started = []

    def start(**options):
        recorder = CookieRecorder()
        table = {"listen": "127.0.0.1:0", "key_file": str(key_file), **options}
        cm = flowtap.testing.capture("interceptor", recorder, config={"sources": {"interceptor": table}})
        harness = cm.__enter__()
        started.append(cm)
        return harness, harness.capture.sources["interceptor"].port, recorder

    yield start
    for cm in reversed(started):
        cm.__exit__(None, None, None)


def wait_flows(harness, count, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        harness.capture.sync(5)
        if len(harness.recorded.flows) >= count:
            return harness.recorded.flows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} flows, got {len(harness.recorded.flows)}")


# -- the schema and its validator --------------------------------------------------------------


def test_schema_defines_each_message_type_once_and_uses_only_supported_keywords():
    types = protocol.message_types()
    assert sorted(types) == sorted(protocol.schema()["$defs"].keys() - {"version", "text", "url", "headers",
                                                                        "settings", "nonce", "proof"})
    for kind in types:
        assert protocol.schema()["$defs"][kind]["properties"]["type"] == {"const": kind}
    with pytest.raises(ValueError, match="pattern"):
        protocol._check_keywords({"type": "string", "pattern": "^a"}, "#/x")


@pytest.mark.parametrize("message, problem", [
    (msg("hello"), "missing 'nonce'"),
    (msg("hello", nonce=12), "$.nonce: expected string, got number"),
    (msg("hello", nonce="ab"), "$.nonce: shorter than 64 characters"),
    (msg("hello", nonce="0" * 64, client="x"), "unexpected key 'client'"),  # nothing but the nonce
    (msg("auth", proof="0" * 64, extra=1), "unexpected key 'extra'"),
    (msg("cookies", reason="later", cookies=[]), 'expected one of "dump", "change"'),
    (msg("cookies", reason="dump", cookies=[{"name": "a", "value": "b", "domain": "x"}]),
     "cookies[0]: missing 'path'"),
    (event("completed", statusCode=True), "statusCode: expected integer, got boolean"),
    (event("completed", statusCode=1000), "more than 999"),
    (event("request", requestBody={"formData": {"a": "b"}}), "formData.a: expected array"),
    (msg("ping", time=float("nan")), "expected number"),
])
def test_validator_names_the_first_problem(message, problem):
    found = protocol.validate(message, protocol.schema())
    assert found is not None and problem in found
    assert found.startswith("$")


def test_every_message_type_the_extension_sends_is_in_the_schema():
    source = (protocol.EXTENSION_DIR / "background.js").read_text()
    sent = set(re.findall(r'\btype: "(\w+)"', source))
    assert {"hello", "capture", "body", "cookies", "ping", "pong", "log", "error"} <= sent
    assert sent <= set(protocol.message_types())
    codes = set(re.findall(r'code: "(\w+)"', source))
    assert codes <= set(protocol.schema()["$defs"]["error"]["properties"]["code"]["enum"])


@pytest.mark.parametrize("raw, code", [
    (b"\x00\x01", "malformed"),
    ("{not json", "malformed"),
    ("[1, 2]", "malformed"),
    ('{"type": "ping"}', "unsupported_version"),
    ('{"v": 1, "type": "ping"}', "unsupported_version"),
    ('{"v": 2, "type": "teleport"}', "unknown_type"),
    ('{"v": 2, "type": "welcome", "config": {}}', "unknown_type"),  # only the bridge sends it
    ('{"v": 2, "type": "hello", "nonce": "%s"}' % ("0" * 64), "unknown_type"),  # only while pairing
    ('{"v": 2, "type": "capture", "event": "request"}', "invalid"),
])
def test_parse_refuses_with_the_error_code(raw, code):
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw)
    assert info.value.code == code


def test_manifest_is_mv3_with_the_permissions_capture_needs():
    manifest = json.loads((protocol.EXTENSION_DIR / "manifest.json").read_text())
    assert manifest["manifest_version"] == 3
    assert manifest["version"] == flowtap.__version__
    assert {"webRequest", "cookies", "storage", "debugger"} <= set(manifest["permissions"])
    assert manifest["host_permissions"] == ["<all_urls>"]
    for name in (manifest["background"]["service_worker"], manifest["action"]["default_popup"], "popup.js"):
        assert (protocol.EXTENSION_DIR / name).is_file()
    assert not (protocol.EXTENSION_DIR / "pairing.json").exists(), "never ship a pairing key"


# -- pairing and the handshake --------------------------------------------------------------------


def test_paired_extension_is_welcomed_with_the_configured_settings(bridge, caplog):
    harness, port, _ = bridge(cookie_domains=[".Example.com"], methods=["get", "post"], url_filter="api",
                              resource_types=["all"], capture_bodies=True, max_body_size="2kb")
    client = Client(port, key="s3cret-test-key")
    welcome = client.recv()
    assert welcome["type"] == "welcome"
    assert welcome["config"] == {
        "capture": True, "paused": False, "urlFilter": "api", "methods": ["GET", "POST"],
        "resourceTypes": ["all"], "cookieDomains": ["example.com"], "captureBodies": True,
        "maxBodySize": 2048,
    }
    assert client.ask(msg("ping", time=5))["type"] == "pong"
    assert "extension connected: test" in caplog.text
    client.close()


def test_the_bridge_proves_the_key_first_over_both_nonces(bridge):
    _, port, _ = bridge()
    first, second = Client(port, key="s3cret-test-key"), Client(port, key="s3cret-test-key")
    for client in (first, second):
        assert client.bridge_proved and client.recv()["type"] == "welcome"
        assert set(client.challenge) == {"v", "type", "nonce", "proof"}
        assert client.challenge["proof"] == pairing.bridge_proof("s3cret-test-key", client.nonce,
                                                                 client.challenge["nonce"])
    assert first.challenge["nonce"] != second.challenge["nonce"], "a fresh nonce for every connection"
    # The bridge's proof is no extension's proof, nor the other way round: the labels differ.
    reflected = pairing.bridge_proof("s3cret-test-key", first.challenge["nonce"], first.nonce)
    assert first.auth["proof"] != reflected


def test_wrong_key_is_refused_closed_and_logged(bridge, caplog):
    _, port, _ = bridge()
    client = Client(port, key="not-the-key")
    assert not client.bridge_proved, "the extension would have stopped here, sending nothing more"
    reply = client.recv()
    assert reply["type"] == "error" and reply["code"] == "auth_failed"
    assert client.closed_with() == 4401
    assert "wrong pairing key" in caplog.text and "refused a connection" in caplog.text


@pytest.mark.parametrize("forged, code", [
    ("s3cret-test-key", "auth_required"),  # the key itself: not even the shape of a proof
    ("reflected", "auth_failed"),  # the bridge's own proof sent back
    ("version 1", "auth_failed"),  # HMAC of the bridge's nonce alone, as protocol version 1 had it
])
def test_only_the_extensions_proof_over_both_nonces_is_accepted(bridge, forged, code):
    _, port, _ = bridge()
    client = Client(port, hello=True)
    challenge = client.recv()
    key, theirs = "s3cret-test-key", challenge["nonce"]
    version_1 = hmac.new(key.encode(), theirs.encode(), hashlib.sha256).hexdigest()
    proof = {"reflected": challenge["proof"], "version 1": version_1}.get(forged, forged)
    client.send(msg("auth", proof=proof))
    assert client.recv()["code"] == code
    assert client.closed_with() == 4401


def test_a_replayed_exchange_is_refused(bridge, caplog):
    _, port, _ = bridge()
    recorded = Client(port, key="s3cret-test-key")
    assert recorded.recv()["type"] == "welcome"
    recorded.close()
    # The same hello again: its nonce was used.
    replay = Client(port, nonce=recorded.nonce)
    assert replay.recv()["code"] == "auth_failed" and replay.closed_with() == 4401
    assert "a hello replayed (its nonce was used before)" in caplog.text
    # A fresh hello, then the recorded auth: it answered another challenge.
    replay = Client(port)
    assert replay.recv()["type"] == "challenge"
    replay.send(recorded.auth)
    assert replay.recv()["code"] == "auth_failed" and replay.closed_with() == 4401


def test_a_connection_must_start_with_hello(bridge, caplog):
    _, port, _ = bridge()
    client = Client(port, hello=False)
    client.send(msg("ping"))
    assert client.recv()["code"] == "auth_required"
    assert client.closed_with() == 4401
    assert "expected a hello message" in caplog.text


def test_a_hello_nonce_must_be_64_hex_digits(bridge):
    _, port, _ = bridge()
    client = Client(port, nonce="Z" * 64)
    assert client.recv()["code"] == "auth_required"


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8000", "https://evil.example", None, "chrome-extension://"])
def test_web_pages_and_clients_without_an_extension_origin_are_refused(bridge, caplog, origin):
    _, port, _ = bridge()
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{port}", origin=origin, open_timeout=5)
    assert info.value.response.status_code == 403
    assert "is not a browser extension" in caplog.text


def test_firefox_extension_origin_is_accepted(bridge):
    _, port, _ = bridge()
    client = Client(port, key="s3cret-test-key", origin="moz-extension://1234-5678")
    assert client.recv()["type"] == "welcome"


def test_a_rotated_key_takes_effect_without_a_restart(bridge, key_file):
    _, port, _ = bridge()
    pairing.write_key(key_file, "the-new-key")
    assert Client(port, key="s3cret-test-key").recv()["code"] == "auth_failed"
    assert Client(port, key="the-new-key").recv()["type"] == "welcome"


def test_pair_new_cuts_off_the_extensions_holding_the_old_key(bridge, key_file, caplog):
    _, port, _ = bridge()
    old = Client(port, key="s3cret-test-key")
    assert old.recv()["type"] == "welcome"
    rotated = run_cli("interceptor", "pair", "--new", "-q",
                      "--set", f"sources.interceptor.key_file={key_file}")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    reply = old.recv(timeout=5)  # the bridge reads the key file every second
    assert reply["type"] == "error" and reply["code"] == "auth_failed" and "replaced" in reply["message"]
    assert old.closed_with() == 4401
    assert "the pairing key changed: closing 1 extension connection paired with the old key" in caplog.text
    assert Client(port, key="s3cret-test-key").recv()["code"] == "auth_failed"
    fresh = Client(port, key=new_key)
    assert fresh.bridge_proved and fresh.recv()["type"] == "welcome"


def test_no_key_file_means_unpaired(bridge, key_file, caplog):
    _, port, _ = bridge()
    key_file.unlink()
    client = Client(port, key="s3cret-test-key")
    reply = client.recv()
    assert client.challenge is None, "a bridge without a key cannot prove one"
    assert reply["code"] == "unpaired" and "flowtap interceptor pair" in reply["message"]


def test_the_source_creates_an_owner_only_key_when_there_is_none(bridge, tmp_path, caplog):
    path = tmp_path / "fresh" / "k.key"
    bridge(key_file=str(path))
    assert pairing.read_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "created a pairing key" in caplog.text


def test_port_in_use_is_a_plain_startup_error(key_file):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = {"sources": {"interceptor": {"listen": f"127.0.0.1:{port}", "key_file": str(key_file)}}}
        with pytest.raises(flowtap.StartupError,
                           match=r"source 'interceptor': cannot listen on .*the port is in use"):
            with flowtap.testing.capture("interceptor", config=config):
                pass


# -- before pairing: cheap to refuse, quiet in the log ------------------------------------------------


def test_refusals_are_logged_at_once_then_counted_once_per_interval(caplog):
    caplog.set_level(logging.WARNING, logger="flowtap")
    now = [100.0]
    refusals = RefusalLog(logging.getLogger("flowtap.test-refusals"), interval=10, clock=lambda: now[0])
    for i in range(500):
        refusals.refused(f"127.0.0.1:{i}", "wrong pairing key")
    now[0] = 105
    refusals.tick()
    first = "refused a connection from 127.0.0.1:0: wrong pairing key"
    assert [r.getMessage() for r in caplog.records] == [first]
    now[0] = 110
    refusals.tick()
    assert caplog.records[-1].getMessage() == (
        "refused 499 more connections (logged once per 10s); the last: "
        "refused a connection from 127.0.0.1:499: wrong pairing key")
    now[0] = 111
    refusals.refused("127.0.0.1:1", "no hello")  # within the next interval: counted
    now[0] = 140
    refusals.refused("127.0.0.1:2", "no hello")  # a quiet period later: the summary, then this at once
    assert [r.getMessage() for r in caplog.records[2:]] == [
        "refused 1 more connection (logged once per 10s); the last: "
        "refused a connection from 127.0.0.1:1: no hello",
        "refused a connection from 127.0.0.1:2: no hello"]
    assert refusals.total == 502


def test_clients_that_close_or_speak_no_websocket_are_counted_refusals_not_tracebacks(bridge, caplog):
    harness, port, _ = bridge()
    for i in range(6):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if i % 2:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x")  # then closed mid-request
    source = harness.capture.sources["interceptor"]
    deadline = time.monotonic() + 5
    while source.bridge.refusals.total < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.bridge.refusals.total == 6
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no error, no traceback per client"
    (first,) = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert "no WebSocket handshake: did not receive a valid HTTP request" in first
    client = Client(port, key="s3cret-test-key")  # the bridge pairs as before
    assert client.recv()["type"] == "welcome"
    client.close()


def test_a_frame_over_a_few_kb_before_pairing_closes_the_connection_unread(bridge):
    _, port, _ = bridge()
    client = Client(port, hello=False)
    client.send(json.dumps(msg("hello", nonce="0" * 64)) + " " * bridge_module.PENDING_FRAME_SIZE)
    assert client.closed_with() == 1009
    assert Client(port, key="s3cret-test-key").recv()["type"] == "welcome"


def test_a_connection_that_does_not_pair_in_time_is_refused(bridge, monkeypatch, caplog):
    monkeypatch.setattr(bridge_module, "AUTH_TIMEOUT", 0.3)
    _, port, _ = bridge()
    client = Client(port, hello=False)
    reply = client.recv()
    assert reply["code"] == "auth_required" and "did not pair within 0.3s" in reply["message"]
    assert client.closed_with() == 4401  # not 1011, the code of a handler that crashed
    assert "Traceback" not in caplog.text


def test_pending_connections_are_capped_and_the_log_stays_short(bridge, caplog):
    _, port, _ = bridge()
    pending = [Client(port, hello=False) for _ in range(bridge_module.MAX_PENDING)]
    dropped = (OSError, InvalidMessage, ConnectionClosed)  # as the client notices the reset
    for _ in range(20):  # dropped as they arrive: no handshake
        with pytest.raises(dropped):
            connect(f"ws://127.0.0.1:{port}", origin=ORIGIN, open_timeout=5).close()
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].endswith(
        f": {bridge_module.MAX_PENDING} connections are already waiting to pair; try again in a few seconds")
    pending.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the bridge sees the close a moment later
        try:
            paired = Client(port, key="s3cret-test-key")
            break
        except dropped:
            assert time.monotonic() < deadline, "a slot did not come free"
            time.sleep(0.05)
    assert paired.recv()["type"] == "welcome"
    Client(port, hello=False).close()  # a paired extension no longer counts as pending
    for client in pending:
        client.close()


def test_a_pending_connection_sending_too_much_is_dropped(bridge, caplog):
    _, port, _ = bridge()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        head = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Origin: {ORIGIN}\r\nSec-WebSocket-Version: 13\r\n").encode()
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 4000) for i in range(40))  # 160 KB of headers
        with pytest.raises(OSError):
            raw.sendall(head + filler)
            while raw.recv(65536):
                pass
            raise ConnectionResetError("closed")
    assert f"sent more than {bridge_module.PENDING_BYTES} bytes before pairing" in caplog.text


# -- bad messages: an error reply, and the connection goes on -------------------------------------------


def test_bad_messages_get_an_error_reply_and_the_connection_goes_on(bridge, caplog):
    harness, port, _ = bridge(max_body_size=1000, max_message_size=70000)
    client = Client(port, key="s3cret-test-key")
    client.recv()
    replies = {
        "malformed": client.ask("{nope"),
        "binary": client.ask(b"\x01\x02"),
        "version": client.ask(msg("ping") | {"v": 9}),
        "unknown": client.ask(msg("teleport")),
        "invalid": client.ask(event("completed", statusCode="200")),
        "too_large": client.ask(msg("log", level="info", message="x" * 200) | {"pad": "y" * 80000}),
        "hello again": client.ask(msg("hello", nonce="0" * 64)),
    }
    assert {k: r["code"] for k, r in replies.items()} == {
        "malformed": "malformed", "binary": "malformed", "version": "unsupported_version",
        "unknown": "unknown_type", "invalid": "invalid", "too_large": "too_large",
        "hello again": "unknown_type",
    }
    assert replies["invalid"]["ref"] == "capture" and "statusCode" in replies["invalid"]["message"]
    assert "over max_message_size (70000 bytes)" in replies["too_large"]["message"]
    assert caplog.text.count("refused a message from test") == 7
    # Still connected, still capturing.
    client.send(event("request"))
    client.send(event("completed", statusCode=200, statusLine="HTTP/1.1 200 OK"))
    (flow,) = wait_flows(harness, 1)
    assert flow.request.url.endswith("/api/items?page=2")
    # Far past the limit the connection is closed unread (code 1009), and the bridge serves the next one.
    client.send("x" * 300_000)
    with pytest.raises(ConnectionClosed):
        for _ in range(3):
            client.recv()
    again = Client(port, key="s3cret-test-key")
    assert again.recv()["type"] == "welcome"


def test_extension_log_messages_reach_flowtaps_log(bridge, caplog):
    _, port, _ = bridge()
    client = Client(port, key="s3cret-test-key")
    client.recv()
    client.ask(msg("log", level="warning", message="the URL filter is not a valid regular expression"))
    assert "the URL filter is not a valid regular expression" in caplog.text


# -- capture events to flows, cookie events to sinks -----------------------------------------------


def test_capture_events_become_one_flow_with_what_the_browser_gave(bridge):
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key")
    client.recv()
    url = "http://127.0.0.1:8000/api/items"
    body = base64.b64encode(b'{"name": "widget"}').decode()
    client.send(event("request", rid="42", url=url, method="POST", t=1_700_000_000_000.0,
                      initiator="http://127.0.0.1:8000", requestBody={"raw": body}))
    client.send(event("headers", rid="42", url=url, method="POST", t=1_700_000_000_010.0,
                      requestHeaders=[{"name": "Content-Type", "value": "application/json"},
                                      {"name": "Cookie", "value": "sid=1; theme=dark"}]))
    client.send(event("completed", rid="42", url=url, method="POST", t=1_700_000_000_250.0, statusCode=201,
                      statusLine="HTTP/1.1 201 Created", ip="127.0.0.1",
                      responseHeaders=[{"name": "Content-Type", "value": "application/json"},
                                       {"name": "Set-Cookie", "value": "sid=2; Path=/"}]))
    (flow,) = wait_flows(harness, 1)
    assert flow.source == "interceptor"
    assert (flow.request.method, flow.request.url, flow.request.body) == ("POST", url, b'{"name": "widget"}')
    assert flow.request.headers.get("content-type") == "application/json"
    assert flow.request_cookies == [("sid", "1"), ("theme", "dark")]
    assert (flow.response.status_code, flow.response.reason,
            flow.response.http_version) == (201, "Created", "HTTP/1.1")
    assert [c.value for c in flow.response_cookies] == ["2"]
    assert flow.response.body == b"" and flow.response.truncated
    assert (flow.timings.start, flow.timings.end) == (1_700_000_000.0, 1_700_000_000.25)
    assert flow.timings.wait is None and flow.timings.send is None
    assert (flow.server_ip, flow.server_address) == ("127.0.0.1", ("127.0.0.1", 8000))
    assert flow.metadata["body_unavailable"] is True and flow.metadata["timings"] == "browser"
    assert flow.metadata["resource_type"] == "xmlhttprequest" and flow.metadata["tab_id"] == 7


def test_cookie_events_reach_the_sinks_with_removals_as_deletions(bridge):
    harness, port, recorder = bridge()
    client = Client(port, key="s3cret-test-key")
    client.recv()
    cookie = {"name": "sid", "value": "1", "domain": "api.example.com", "path": "/", "hostOnly": True,
              "secure": True, "httpOnly": True, "sameSite": "lax", "session": True}
    client.send(msg("cookies", reason="dump", cookies=[cookie]))
    client.send(msg("cookies", reason="change", cookies=[
        {**cookie, "removed": True, "cause": "overwrite"},  # followed by the set: not a deletion
        {**cookie, "value": "2", "session": False, "expirationDate": 4_000_000_000.5},
    ]))
    removal = {**cookie, "value": "2", "removed": True, "cause": "explicit"}
    client.send(msg("cookies", reason="change", cookies=[removal]))
    client.ask(msg("ping"))
    harness.capture.sync(5)
    events = [cookies for source, cookies in recorder.events]
    assert {source for source, _ in recorder.events} == {"interceptor"}
    assert [[(c.value, c.expires) for c in cookies] for cookies in events] == [
        [("1", None)], [("2", 4_000_000_000.5)], [("2", 0.0)],
    ]
    first = events[0][0]
    assert (first.domain, first.host_only, first.secure, first.httponly, first.samesite) == (
        "api.example.com", True, True, True, "Lax")
    assert events[2][0].is_expired()


def test_pause_and_resume_are_pushed_to_the_extension(bridge):
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key")
    assert client.recv()["config"]["paused"] is False
    harness.session.pause()
    assert client.recv() == msg("config", config={"paused": True})
    late = Client(port, key="s3cret-test-key")
    assert late.recv()["config"]["paused"] is True
    harness.session.resume()
    assert client.recv() == msg("config", config={"paused": False})
    assert late.recv() == msg("config", config={"paused": False})


def test_unfinished_requests_are_recorded_when_the_extension_disconnects(bridge):
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key")
    client.recv()
    client.send(event("request", rid="9", url="http://127.0.0.1:1/slow"))
    client.ask(msg("ping"))
    client.close()
    (flow,) = wait_flows(harness, 1)
    assert flow.response is None and "disconnected before the request finished" in flow.error


def test_a_request_in_flight_across_a_worker_restart_is_one_flow(bridge):
    """The extension's service worker restarted mid-request: it began on one connection, ends on the next."""
    harness, port, _ = bridge()
    instance = "0123456789abcdef0123456789abcdef"
    url = "http://127.0.0.1:8000/api/slow"
    before = Client(port, key="s3cret-test-key", instance=instance)
    before.recv()
    before.send(event("request", rid="77", url=url, t=1_700_000_000_000.0))
    before.send(event("headers", rid="77", url=url, t=1_700_000_000_005.0,
                      requestHeaders=[{"name": "Accept", "value": "application/json"}]))
    before.ask(msg("ping"))
    before.close()
    time.sleep(1.5)  # past a tick of the bridge: nothing may be recorded while the browser can come back
    harness.capture.sync(5)
    assert harness.recorded.flows == []
    after = Client(port, key="s3cret-test-key", instance=instance)
    after.recv()
    after.send(event("completed", rid="77", url=url, t=1_700_000_002_000.0, statusCode=200,
                     statusLine="HTTP/1.1 200 OK", responseHeaders=[]))
    (flow,) = wait_flows(harness, 1)
    assert flow.error is None and flow.response.status_code == 200
    assert flow.request.headers.get("accept") == "application/json"
    assert (flow.timings.start, flow.timings.end) == (1_700_000_000.0, 1_700_000_002.0)
    after.close()


def test_a_browser_that_does_not_come_back_has_its_requests_recorded_unfinished(bridge, monkeypatch):
    monkeypatch.setattr(interceptor_source, "RECONNECT_WAIT", 0.5)
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key", instance="fedcba9876543210fedcba9876543210")
    client.recv()
    client.send(event("request", rid="5", url="http://127.0.0.1:1/slow"))
    client.ask(msg("ping"))
    client.close()
    (flow,) = wait_flows(harness, 1, timeout=5)
    assert flow.response is None and "disconnected before the request finished" in flow.error


def test_requests_waiting_for_their_browser_are_recorded_when_the_capture_stops(bridge):
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key", instance="00000000000000000000000000000001")
    client.recv()
    client.send(event("request", rid="6", url="http://127.0.0.1:1/slow"))
    client.ask(msg("ping"))
    client.close()
    time.sleep(0.3)
    harness.capture.sources["interceptor"].stop()
    (flow,) = wait_flows(harness, 1)
    assert flow.response is None and "disconnected before the request finished" in flow.error


def test_a_client_reconnects_after_the_bridge_restarts_on_the_same_port(bridge, key_file):
    harness, port, _ = bridge()
    client = Client(port, key="s3cret-test-key")
    client.recv()
    harness.capture.stop()
    with pytest.raises(ConnectionClosed):
        client.ws.recv(timeout=5)
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{port}", origin=ORIGIN, open_timeout=2)
    again, port2, _ = bridge(listen=f"127.0.0.1:{port}")
    assert port2 == port
    client = Client(port, key="s3cret-test-key")
    assert client.recv()["type"] == "welcome"
    client.send(event("request"))
    client.send(event("error", error="net::ERR_CONNECTION_REFUSED"))
    (flow,) = wait_flows(again, 1)
    assert flow.error == "net::ERR_CONNECTION_REFUSED" and flow.response is None


# -- the assembler (no sockets) -------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_redirects_end_one_flow_and_start_the_next_with_the_same_id():
    assembler = convert.Assembler()
    assert assembler.capture(event("request", url="http://a.test/old")) == []
    (first,) = assembler.capture(event("redirect", url="http://a.test/old", statusCode=302,
                                       statusLine="HTTP/1.1 302 Found", redirectUrl="http://a.test/new",
                                       responseHeaders=[{"name": "Location", "value": "/new"}]))
    assembler.capture(event("request", url="http://a.test/new"))
    (second,) = assembler.capture(event("completed", url="http://a.test/new", statusCode=204,
                                        statusLine="HTTP/1.1 204 No Content"))
    assert (first.response.status_code, first.metadata["redirect_url"]) == (302, "http://a.test/new")
    assert first.metadata["request_headers_unavailable"] is True
    assert second.request.url == "http://a.test/new"
    assert not second.response.truncated and "body_unavailable" not in second.metadata  # 204: nothing to miss
    assert assembler.pending == {}


def test_bodies_from_the_debugger_join_their_flow_in_either_order():
    clock = Clock()
    assembler = convert.Assembler(clock=clock)
    url = "http://a.test/x"
    done = event("completed", url=url, statusCode=200, statusLine="HTTP/1.1 200 OK", bodyPending=True)
    body = msg("body", tabId=7, url=url, method="GET", data=base64.b64encode(b"hello").decode(), size=5)
    # The flow first: it waits for its body.
    assembler.capture(event("request", url=url))
    assert assembler.capture(done) == []
    (flow,) = assembler.body(body)
    assert flow.response.body == b"hello" and not flow.response.truncated
    assert "body_unavailable" not in flow.metadata and flow.metadata["body_source"] == "debugger"
    # The body first: the flow takes it at once.
    cut = body | {"data": base64.b64encode(b"0123456789").decode(), "size": 20, "truncated": True}
    assert assembler.body(cut) == []
    (flow,) = assembler.capture(done)
    assert (flow.response.body, flow.response.body_size, flow.response.truncated) == (b"0123456789", 20, True)
    # No body within the wait: the flow goes without.
    assembler.capture(done)
    assert assembler.expire() == []
    clock.now += convert.BODY_WAIT + 0.1
    (flow,) = assembler.expire()
    assert flow.metadata["body_unavailable"] is True


def test_too_many_requests_in_flight_records_the_oldest_as_unfinished():
    assembler = convert.Assembler(max_pending=2)
    assembler.capture(event("request", rid="1"))
    assembler.capture(event("request", rid="2"))
    (oldest,) = assembler.capture(event("request", rid="3"))
    assert oldest.metadata["request_id"] == "1" and "no end of this request" in oldest.error


@pytest.mark.parametrize("content_type, expected", [
    ("application/x-www-form-urlencoded", b"a=1&b=two+words&b=3"),
    ("multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="b"\r\n\r\ntwo words\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="b"\r\n\r\n3\r\n--XyZ--\r\n'),
])
def test_form_bodies_the_browser_shows_parsed_are_rebuilt(content_type, expected):
    assembler = convert.Assembler()
    assembler.capture(event("request", method="POST",
                            requestBody={"formData": {"a": ["1"], "b": ["two words", "3"]}}))
    assembler.capture(event("headers", method="POST",
                            requestHeaders=[{"name": "Content-Type", "value": content_type}]))
    (flow,) = assembler.capture(event("completed", method="POST", statusCode=200))
    assert flow.request.body == expected and flow.metadata["request_body_rebuilt"] == "form-data"


def test_a_cut_request_body_keeps_its_full_size():
    assembler = convert.Assembler()
    raw = base64.b64encode(b"abc").decode()
    assembler.capture(event("request", method="PUT",
                            requestBody={"raw": raw, "truncated": True, "size": 9000}))
    (flow,) = assembler.capture(event("error", method="PUT", error="net::ERR_ABORTED"))
    assert (flow.request.body, flow.request.body_size, flow.request.truncated) == (b"abc", 9000, True)


def test_domain_cookies_and_samesite_are_converted():
    (cookie,) = convert.cookies(msg("cookies", reason="dump", cookies=[
        {"name": "a", "value": "1", "domain": ".Example.com", "path": "", "hostOnly": False,
         "sameSite": "no_restriction", "expirationDate": 1.9e9}]))
    assert (cookie.domain, cookie.host_only, cookie.samesite, cookie.path, cookie.expires) == (
        "example.com", False, "None", "/", 1.9e9)


# -- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, problem", [
    ({"listen": "5005"}, "listen: expected \"HOST:PORT\""),
    ({"resource_types": ["xhr"]}, "'xhr' is not a resource type"),
    ({"cookie_domains": ["https://example.com"]}, "expected domain names"),
    ({"methods": ["GET POST"]}, "expected HTTP methods"),
    ({"max_message_size": "100kb", "max_body_size": "1MB"}, "max_message_size: must be at least"),
])
def test_bad_options_are_plain_config_errors(table, problem):
    with pytest.raises(flowtap.ConfigError) as info:
        _validate({"sources": {"interceptor": table}})
    assert problem in str(info.value) and "[sources.interceptor]" in str(info.value)


def _validate(config):
    capture = flowtap.Capture(config, load_entrypoints=False)
    capture.register(flowtap_interceptor, name="interceptor")
    capture.validate()


# -- the command line ------------------------------------------------------------------------------------


def test_pair_shows_a_key_stored_owner_only_and_new_rotates_it(tmp_path):
    first = run_cli("interceptor", "pair")
    assert first.returncode == 0, first.stderr
    key = re.search(r"Pairing key: (\S+)", first.stdout).group(1)
    path = pairing.default_key_path()
    assert str(path) in first.stdout and pairing.read_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run_cli("interceptor", "pair", "-q").stdout.strip() == key
    rotated = run_cli("interceptor", "pair", "--new", "-q").stdout.strip()
    assert rotated != key and pairing.read_key(path) == rotated and len(rotated) >= 32


def test_pair_uses_the_configured_key_file(tmp_path):
    target = tmp_path / "elsewhere.key"
    result = run_cli("interceptor", "pair", "--set", f"sources.interceptor.key_file={target}")
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and target.exists()


def test_extension_prints_its_folder_and_zips_it(tmp_path):
    shown = run_cli("interceptor", "extension")
    assert shown.returncode == 0 and shown.stdout.strip() == str(protocol.EXTENSION_DIR)
    assert "Load unpacked" in shown.stderr
    out = tmp_path / "flowtap-interceptor.zip"
    zipped = run_cli("interceptor", "extension", "--zip", str(out))
    assert zipped.returncode == 0, zipped.stderr
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
    assert {"manifest.json", "background.js", "popup.html", "popup.js", "protocol.json"} <= names
    assert manifest["background"]["service_worker"] in names
    bad = run_cli("interceptor", "extension", "--zip", str(tmp_path / "no" / "such" / "dir.zip"))
    assert bad.returncode == 1 and "no/such/dir.zip" in bad.stderr and "Traceback" not in bad.stderr


def test_a_pairing_file_is_never_packed(tmp_path, monkeypatch):
    copy = tmp_path / "ext"
    shutil.copytree(protocol.EXTENSION_DIR, copy)
    (copy / "pairing.json").write_text('{"key": "secret"}')
    monkeypatch.setattr(commands, "EXTENSION_DIR", copy)
    names = {p.name for p in commands.extension_files()}
    assert "pairing.json" not in names and "manifest.json" in names


def test_the_example_configs_interceptor_section_is_valid_once_uncommented():
    text = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    block = text.split("# [sources.interceptor]\n", 1)[1].split("\n\n", 1)[0]
    uncommented = "[sources.interceptor]\n" + "\n".join(line[2:] for line in block.splitlines())
    table = tomllib.loads(uncommented)["sources"]["interceptor"]
    declared = {}
    flowtap_interceptor.flowtap_config_options(
        lambda name, *options: declared.update({o.name: o for o in options}))
    assert set(table) == set(declared)
    for name, value in table.items():
        assert value == declared[name].default, name
    _validate({"sources": {"interceptor": table}})
