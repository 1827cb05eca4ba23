"""The har sink: HAR 1.2 judged by har-schema and mitmproxy's HAR reader; journal, clear, crash, bad input."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from mitmproxy.io import read_flows_from_paths

import flowtap
from flowtap import Headers, TLSInfo, WebSocketMessage
from flowtap.testing import capture, make_flow
from flowtap_har.sink import HarSink

from clirun import flowtap as run_cli
from npmtools import HAR_SCHEMA, Judge, load_json, npm_install

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


@pytest.fixture(scope="session")
def judge():
    return Judge(npm_install("har", HAR_SCHEMA))


def har_config(path, **options):
    return {"sinks": {"har": {"path": str(path), **options}}, "session": {"name": "demo"}}


def run_har(tmp_path, *flows, **options) -> dict:
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out, **options)) as cap:
        cap.feed(*flows)
    return load_json(out)


def mitmdump(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).with_name("mitmdump")
    return subprocess.run([str(binary), "-n", "-r", str(path), "--set", f"confdir={tmp_path / 'mitm'}"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def variety() -> list[flowtap.Flow]:
    """Flows of every shape the sink must handle."""
    form = make_flow(url="http://127.0.0.1:8080/login?next=%2Fhome", method="POST",
                     request_body=b"user=ann&pass=s%26cret&empty=",
                     request_headers=[("Host", "127.0.0.1:8080"),
                                      ("Content-Type", "application/x-www-form-urlencoded"),
                                      ("Cookie", "sid=abc; theme=dark")],
                     status=302, response_body=b"",
                     response_headers=[("Location", "/home"),
                                       ("Set-Cookie", "sid=new; Path=/; HttpOnly; Secure; SameSite=Lax; "
                                                      "Expires=Wed, 21 Oct 2037 07:28:00 GMT")],
                     client_address=("127.0.0.1", 50123), server_ip="127.0.0.1",
                     tls=TLSInfo(version="TLSv1.3"))
    form.timings.dns, form.timings.connect, form.timings.tls = 2.0, 3.0, 4.0
    image = make_flow(url="https://cdn.example.com/logo.png", response_body=PNG,
                      response_headers=[("Content-Type", "image/png")])
    latin = make_flow(url="https://api.example.com/fr", response_body="café".encode("latin-1"),
                      response_headers=[("Content-Type", "text/plain; charset=iso-8859-1")])
    undecodable = make_flow(url="https://api.example.com/blob", response_body=b"\xff\xfe\x00bad",
                            response_headers=[("Content-Type", "text/plain")])
    failed = make_flow(url="https://down.example.com/x", status=None, error="connection refused")
    gzip = make_flow(url="https://api.example.com/big", response_body=b"x" * 1000,
                     response_headers=[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")])
    gzip.response.encoded_size = 40
    ws = make_flow(url="https://api.example.com/socket", status=101, response_body=b"",
                   websocket=[WebSocketMessage(True, b"hello"),
                              WebSocketMessage(False, b"\x00\x01", is_text=False)])
    utf16 = make_flow(url="https://api.example.com/utf16", response_body="hé\n".encode("utf-16"),
                      response_headers=[("Content-Type", "text/plain; charset=utf-16")])
    return [make_flow(), form, image, latin, undecodable, failed, gzip, ws, utf16]


def test_har_is_valid_and_mitmproxy_reads_it_back(tmp_path, judge):
    flows = variety()
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(*flows)
    assert judge.har_errors(out) == ""
    proc = mitmdump(out, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "POST http://127.0.0.1:8080/login" in proc.stdout and "logo.png" in proc.stdout

    read = list(read_flows_from_paths([str(out)]))
    assert [f.request.url for f in read] == [f.request.url for f in flows]
    by_url = {f.request.url: f for f in read}
    assert by_url["https://cdn.example.com/logo.png"].response.content == PNG
    assert by_url["https://api.example.com/fr"].response.text == "café"
    assert by_url["https://api.example.com/blob"].response.content == b"\xff\xfe\x00bad"
    assert by_url["https://api.example.com/utf16"].response.content == "hé\n".encode("utf-16")
    login = by_url["http://127.0.0.1:8080/login?next=%2Fhome"]
    assert login.request.content == b"user=ann&pass=s%26cret&empty="
    assert (login.response.status_code, login.response.headers["location"]) == (302, "/home")
    assert by_url["https://down.example.com/x"].response.status_code == 0


def test_entry_fields_follow_the_spec(tmp_path):
    har = run_har(tmp_path, *variety())
    log = har["log"]
    assert log["version"] == "1.2"
    assert log["creator"] == {"name": "flowtap", "version": flowtap.__version__}
    plain, form, image, latin, undecodable, failed, gzip, ws, utf16 = log["entries"]

    assert plain["startedDateTime"].endswith("Z") and len(plain["startedDateTime"]) == 24
    assert plain["time"] == pytest.approx(sum(v for k, v in plain["timings"].items() if k != "ssl" and v > 0))
    assert plain["timings"]["dns"] == -1 and plain["timings"]["blocked"] == -1
    assert plain["response"]["content"] == {"size": 12, "mimeType": "application/json",
                                            "text": '{"ok": true}'}

    req, resp = form["request"], form["response"]
    assert form["timings"]["connect"] == 7.0 and form["timings"]["ssl"] == 4.0  # connect includes TLS
    assert (form["serverIPAddress"], form["connection"]) == ("127.0.0.1", "50123")
    assert req["cookies"] == [{"name": "sid", "value": "abc"}, {"name": "theme", "value": "dark"}]
    assert req["queryString"] == [{"name": "next", "value": "/home"}]
    assert req["postData"]["params"] == [{"name": "user", "value": "ann"},
                                         {"name": "pass", "value": "s&cret"},
                                         {"name": "empty", "value": ""}]
    assert req["bodySize"] == 29 and req["headersSize"] == -1
    assert resp["redirectURL"] == "/home" and resp["statusText"] == "Found"
    cookie = resp["cookies"][0]
    assert (cookie["name"], cookie["value"], cookie["httpOnly"], cookie["secure"]) == ("sid", "new", True,
                                                                                       True)
    assert cookie["expires"] == "2037-10-21T07:28:00.000Z" and cookie["sameSite"] == "Lax"

    assert image["response"]["content"]["encoding"] == "base64"
    assert base64.b64decode(image["response"]["content"]["text"]) == PNG
    assert latin["response"]["content"]["text"] == "café" and "encoding" not in latin["response"]["content"]
    assert undecodable["response"]["content"]["encoding"] == "base64"
    assert utf16["response"]["content"]["text"] == "hé\n" and "encoding" not in utf16["response"]["content"]

    assert failed["response"]["status"] == 0 and failed["response"]["_error"] == "connection refused"
    assert "connection refused" in failed["comment"]
    assert gzip["response"]["content"]["compression"] == 960 and gzip["response"]["bodySize"] == 40
    assert ws["_resourceType"] == "websocket"
    assert [m["data"] for m in ws["_webSocketMessages"]] == ["hello", "AAE="]


def test_bodies_are_cut_and_marked(tmp_path):
    big = make_flow(url="https://api.example.com/big", method="PUT", request_body="é" * 40,
                    response_body=b"0123456789" * 10)
    partial = make_flow(url="https://api.example.com/partial", response_body=b"abc")
    partial.response.body_size, partial.response.truncated = 3000, True
    entries = run_har(tmp_path, big, partial, max_body_size="25b")["log"]["entries"]

    content = entries[0]["response"]["content"]
    assert content["text"] == "0123456789012345678901234"
    assert content["_flowtap"] == {"truncated": True, "bodySize": 100, "kept": 25, "reason": "max_body_size"}
    assert "25 of 100 bytes" in content["comment"]
    post = entries[0]["request"]["postData"]
    assert post["text"] == "é" * 12 and post["_flowtap"]["bodySize"] == 80  # no half character
    source = entries[1]["response"]["content"]
    assert source["text"] == "abc" and source["_flowtap"]["reason"] == "source" and source["size"] == 3000


@pytest.mark.parametrize("content", ["headers", "none"])
def test_content_setting_leaves_out_bodies_or_headers(tmp_path, content, judge):
    flow = make_flow(method="POST", request_body=b'{"secret": 1}', response_body=b'{"token": "t"}',
                     response_headers=[("Content-Type", "application/json"), ("Set-Cookie", "a=b")])
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out, content=content)) as cap:
        cap.feed(flow)
    assert judge.har_errors(out) == ""
    text = out.read_text()
    assert "token" not in text and "secret" not in text
    entry = load_json(out)["log"]["entries"][0]
    assert entry["response"]["content"]["_flowtap"]["reason"] == "content"
    assert entry["request"]["postData"]["text"] == ""
    if content == "headers":
        assert {"name": "Set-Cookie", "value": "a=b"} in entry["response"]["headers"]
    else:
        assert entry["request"]["headers"] == []
        assert entry["response"]["headers"] == entry["response"]["cookies"] == []
    assert mitmdump(out, tmp_path).returncode == 0


def test_entries_go_to_the_journal_as_they_come_and_clear_empties_it(tmp_path):
    out = tmp_path / "caps" / "{session}" / "{date}.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(make_flow(url="https://a.example/1"), make_flow(url="https://a.example/2"))
        sink = cap.sink("har")
        path = sink.path
        assert path.parent == tmp_path / "caps" / "demo" and path.name.startswith("20")
        assert not path.exists()
        lines = sink.journal_path.read_bytes().splitlines()
        assert len(lines) == 3 and b"https://a.example/2" in lines[2]  # header + 2 entries, on disk
        cap.session.clear()
        cap.feed(make_flow(url="https://a.example/3"))
        assert b"https://a.example/1" not in sink.journal_path.read_bytes()
    urls = [e["request"]["url"] for e in load_json(path)["log"]["entries"]]
    assert urls == ["https://a.example/3"]
    assert not sink.journal_path.exists()
    assert load_json(path)["log"]["comment"] == "flowtap session demo"


def test_the_journal_is_fsynced_throttled_and_soon_after_the_last_flush(tmp_path, monkeypatch):
    """Many flushes in a row: at most one fsync of the journal per FSYNC_INTERVAL, and one within
    FSYNC_INTERVAL of the last flush (a machine crash loses at most that much)."""
    import os
    import threading
    import time

    import flowtap_har.sink as module

    synced = []  # (when, journal bytes on disk) at each fsync of the journal
    happened = threading.Event()
    real = os.fsync

    def fsync(fd):
        real(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".journal"):
            synced.append((time.monotonic(), os.fstat(fd).st_size))
            happened.set()

    monkeypatch.setattr(os, "fsync", fsync)
    with capture("har", config=har_config(tmp_path / "out.har")) as cap:
        began = time.monotonic()
        for number in range(20):
            cap.feed(make_flow(url=f"https://a.example/{number}"))  # a flush each
        fed, size = time.monotonic(), cap.sink("har").journal_path.stat().st_size
        deadline = fed + 5
        while not any(written >= size for _, written in synced) and time.monotonic() < deadline:
            happened.clear()
            happened.wait(0.05)
        assert any(written >= size for _, written in synced), "the last flush was never fsynced"
        when = min(t for t, written in synced if written >= size)
        assert when - fed < module.FSYNC_INTERVAL + 0.5  # soon after the last flush (margin: load)
        during = [t for t, _ in synced if began <= t <= fed]
        assert len(during) <= (fed - began) / module.FSYNC_INTERVAL + 2, (len(during), fed - began)


def crashed_journal(tmp_path) -> Path:
    """A journal as a crashed run leaves it: never closed, its last line torn."""
    sink = HarSink({"path": str(tmp_path / "crash.har"), "content": "full", "max_body_size": 1 << 20})
    sink.open(SimpleNamespace(name="crashy", id="abc", started=0.0))
    sink.write(make_flow(url="https://a.example/1"))
    sink.write(make_flow(url="https://a.example/2", response_body=PNG,
                         response_headers=[("Content-Type", "image/png")]))
    sink.flush()
    with open(sink.journal_path, "ab") as fh:
        fh.write(b'{"startedDateTime":"2024-')
    return sink.journal_path


def test_finalize_command_rebuilds_the_har_after_a_crash(tmp_path, judge):
    journal = crashed_journal(tmp_path)
    proc = run_cli("har", "finalize", str(journal))
    assert proc.returncode == 0, proc.stderr
    assert "2 entries, 1 damaged line(s) skipped" in proc.stdout
    out = tmp_path / "crash.har"
    assert not journal.exists()
    assert judge.har_errors(out) == ""
    assert [f.request.url for f in read_flows_from_paths([str(out)])] == ["https://a.example/1",
                                                                            "https://a.example/2"]
    again = run_cli("har", "finalize", str(tmp_path / "nope.journal"))
    assert again.returncode == 2 and "nope.journal: no such journal file" in again.stderr


def test_finalize_refuses_to_overwrite_and_honours_output(tmp_path):
    journal = crashed_journal(tmp_path)
    (tmp_path / "crash.har").write_text("keep me")
    proc = run_cli("har", "finalize", str(journal))
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (tmp_path / "crash.har").read_text() == "keep me" and journal.exists()
    proc = run_cli("har", "finalize", str(journal), "-o", str(tmp_path / "other.har"), "--keep")
    assert proc.returncode == 0 and journal.exists()
    assert len(load_json(tmp_path / "other.har")["log"]["entries"]) == 2


def test_a_left_over_journal_is_never_overwritten(tmp_path, caplog):
    journal = crashed_journal(tmp_path)
    before = journal.read_bytes()
    with capture("har", config=har_config(tmp_path / "crash.har")) as cap:
        cap.feed(make_flow(url="https://b.example/new"))
        assert cap.sink("har").journal_path.name == "crash-2.har.journal"
    assert journal.read_bytes() == before
    assert "flowtap har finalize" in caplog.text
    # The crashed session keeps its HAR's name: the rerun never takes it (issue 11, item 10)
    assert not (tmp_path / "crash.har").exists()
    assert [e["request"]["url"] for e in load_json(tmp_path / "crash-2.har")["log"]["entries"]] == [
        "https://b.example/new"]
    assert run_cli("har", "finalize", str(journal)).returncode == 0
    assert [e["request"]["url"] for e in load_json(tmp_path / "crash.har")["log"]["entries"]] == [
        "https://a.example/1", "https://a.example/2"]


def test_a_har_that_cannot_be_written_at_the_end_keeps_the_journal(tmp_path, caplog):
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(make_flow(url="https://a.example/kept"))
        journal = cap.sink("har").journal_path
        out.mkdir()  # something takes the HAR's place during the session
    assert not cap.capture.clean  # the run's exit code says so
    assert journal.exists() and b"https://a.example/kept" in journal.read_bytes()
    assert f"flowtap har finalize {journal}" in caplog.text
    assert run_cli("har", "finalize", str(journal), "-o", str(tmp_path / "saved.har")).returncode == 0
    assert load_json(tmp_path / "saved.har")["log"]["entries"][0]["request"]["url"] == "https://a.example/kept"


def test_unwritable_path_fails_at_start_up(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(flowtap.StartupError) as info:
        with capture("har", config=har_config(blocker / "sub" / "out.har")):
            pass
    message = str(info.value)
    assert "sink 'har'" in message and str(blocker / "sub") in message
    assert f"{blocker} is not a directory" in message

    (tmp_path / "adir.har").mkdir()
    with pytest.raises(flowtap.StartupError, match="adir.har: is a directory"):
        with capture("har", config=har_config(tmp_path / "adir.har")):
            pass


def test_weird_flows_never_stop_the_sink(tmp_path, judge, caplog):
    weird_header = make_flow(url="https://w.example/bytes",
                             request_headers=Headers([("X-Raw", "caf\udce9 \udcff"), ("Host", "w.example")]))
    huge_header = make_flow(url="https://w.example/huge", response_headers=[("X-Big", "v" * 2_000_000)])
    no_response = make_flow(url="https://w.example/none", status=None)
    bad_cookie = make_flow(url="https://w.example/cookie", response_headers=[
        ("Set-Cookie", "a=1; Expires=Fri, 31 Dec 9999 23:59:59 GMT"), ("Set-Cookie", "=novalue"),
        ("Set-Cookie", "b=2; Max-Age=99999999999999999999")])
    bad_charset = make_flow(url="https://w.example/charset", response_body=b"ok",
                            response_headers=[("Content-Type", "text/plain; charset=no-such-charset")])
    flows = [make_flow(url="https://ok.example/1"), weird_header, huge_header, no_response, bad_cookie,
             bad_charset, make_flow(url="https://ok.example/2")]
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(*flows)
    assert "sink 'har'" not in caplog.text  # nothing raised
    assert judge.har_errors(out) == ""
    entries = load_json(out)["log"]["entries"]
    assert [e["request"]["url"] for e in entries] == [f.request.url for f in flows]
    assert entries[1]["request"]["headers"][0]["value"] == "café ÿ"  # bytes read as Latin-1
    assert entries[3]["response"]["status"] == 0 and entries[3]["comment"] == "flowtap: no response"
    assert entries[5]["response"]["content"]["text"] == "ok"
    assert mitmdump(out, tmp_path).returncode == 0


# -- issue 11, items 5 and 6: every body in any charset keeps its entry and reads back exactly ----------

CHARSETS = ["utf-8", "utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32be", "latin-1", "cp1252", "shift_jis",
            "gbk", "gb2312", "koi8-r", "utf-7", "x-no-such-charset", "base64", "rot13", "zlib", "undefined",
            "idna", "unicode_escape", '"utf-8"', ""]
BODIES = {
    "ascii": b"hello, world\n",
    "text": "héllo wörld €".encode(),
    "utf16-no-bom": "hé\n".encode("utf-16-le"),
    "utf32-no-bom": "hé\n".encode("utf-32-be"),
    "utf16-bom": "hé\n".encode("utf-16"),
    "invalid": b"\xff\xfe\x00\xc3(\x80 bad",
    "binary": bytes(range(256)),
    "odd": b"\x00a\x00",
}


def charset_flows() -> list[flowtap.Flow]:
    flows = []
    for charset in CHARSETS:
        for name, body in BODIES.items():
            kind = f"text/plain; charset={charset}" if charset else "text/plain"
            flows.append(make_flow(url=f"https://cs.example/{name}?charset={quote(charset)}", method="POST",
                                   request_body=body,
                                   request_headers=[("Content-Type", "application/octet-stream")],
                                   response_body=body, response_headers=[("Content-Type", kind)]))
    return flows


def test_no_body_in_any_charset_costs_an_entry_and_mitmproxy_reads_every_one_back(tmp_path, judge, caplog):
    flows = charset_flows()
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(*flows)
    assert "sink 'har'" not in caplog.text
    entries = load_json(out)["log"]["entries"]
    assert len(entries) == len(flows)
    assert judge.har_errors(out) == ""
    read = list(read_flows_from_paths([str(out)]))
    assert len(read) == len(flows)
    for mine, theirs in zip(flows, read, strict=True):
        assert (theirs.request.method, theirs.request.url) == (mine.request.method, mine.request.url)
        assert theirs.response.status_code == mine.response.status_code
        assert theirs.response.content == mine.response.body, mine.request.url
        assert theirs.request.content == mine.request.body, mine.request.url  # binary: ISO-8859-1 text


def request_flow(body: bytes, content_type: str, path: str) -> flowtap.Flow:
    return make_flow(url=f"https://up.example/{path}", method="PUT", request_body=body,
                     request_headers=[("Host", "up.example"), ("Content-Type", content_type)])


def test_request_bodies_read_back_byte_for_byte_where_har_can_carry_them(tmp_path, judge):
    """HAR 1.2's postData has no encoding field: mitmproxy encodes ``text`` with the request's
    charset (UTF-8 for JSON, ISO-8859-1 when none is declared). Binary bodies are that text."""
    exact = [
        request_flow(PNG, "image/png", "png"),
        request_flow(bytes(range(256)) * 4, "application/octet-stream", "octets"),
        request_flow(b"\x08\x96\x01\x12\x04bin\x00", "application/x-protobuf", "proto"),
        request_flow("café".encode(), "text/plain", "undeclared-utf8"),
        request_flow("café".encode("latin-1"), "text/plain; charset=iso-8859-1", "latin1"),
        request_flow('{"név": "€"}'.encode(), "application/json", "json"),
        request_flow("hé".encode("utf-16"), "text/plain; charset=utf-16", "utf16-bom"),
        request_flow(b"ok", "text/plain; charset=x-unknown", "unknown"),
        request_flow(b"a=1&b=%C3%A9", "application/x-www-form-urlencoded", "form"),
    ]
    lossy = [
        request_flow(b'{"a": "\xff"}', "application/json", "bad-json"),
        request_flow("hé".encode("utf-16-le"), "text/plain; charset=utf-16", "utf16-no-bom"),
    ]
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(*exact, *lossy)
    assert judge.har_errors(out) == ""
    entries = load_json(out)["log"]["entries"]
    for entry in entries:
        assert "_encoding" not in entry["request"]["postData"]  # readers took that text as the body
    png = entries[0]["request"]["postData"]
    assert "ISO-8859-1" in png["comment"] and png["text"].encode("latin-1") == PNG
    for flow, entry in zip(lossy, entries[len(exact):], strict=True):
        post = entry["request"]["postData"]
        assert base64.b64decode(post["_base64"]) == flow.request.body and "lossy" in post["comment"]
    read = list(read_flows_from_paths([str(out)]))
    for mine, theirs in zip(exact, read[:len(exact)], strict=True):
        assert theirs.request.content == mine.request.body, mine.request.url
        if not mine.request.url.endswith("/unknown"):  # mitmproxy says charset=utf-8 for one it lacks
            assert theirs.request.headers["content-type"] == mine.request.headers["content-type"]


def test_a_failed_connect_reads_back_as_mitmproxy_reads_a_connect(tmp_path, judge):
    """mitmproxy shows a CONNECT's URL in authority form: ``host:port``, as on the request line."""
    flows = [make_flow(url=url, method="CONNECT", status=None, request_headers=[("Host", authority)],
                       error="client does not trust flowtap's CA")
             for url, authority in (("https://bank.example:8443/", "bank.example:8443"),
                                    ("https://bank.example/", "bank.example:443"),
                                    ("https://[::1]:9443/", "[::1]:9443"))]
    out = tmp_path / "out.har"
    with capture("har", config=har_config(out)) as cap:
        cap.feed(*flows)
    assert judge.har_errors(out) == ""
    proc = mitmdump(out, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    read = list(read_flows_from_paths([str(out)]))
    assert [(f.request.method, f.request.url, f.response.status_code) for f in read[:2]] == [
        ("CONNECT", "bank.example:8443", 0), ("CONNECT", "bank.example:443", 0)]
    # mitmproxy writes an IPv6 authority without brackets; host and port are read right
    assert (read[2].request.method, read[2].request.host, read[2].request.port) == ("CONNECT", "::1", 9443)


def test_a_rerun_never_overwrites_another_sessions_har(tmp_path):
    out = tmp_path / "api.har"
    for n in (1, 2, 3):
        with capture("har", config=har_config(out)) as cap:
            cap.feed(*(make_flow(url=f"https://a.example/{n}/{i}") for i in range(n)))
    names = ("api.har", "api-2.har", "api-3.har")
    assert [len(load_json(tmp_path / name)["log"]["entries"]) for name in names] == [1, 2, 3]
