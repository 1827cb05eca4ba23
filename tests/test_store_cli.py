"""The store from the command line: sessions, search, show, export (through bundled and third-party
sinks, and as curl commands run against a real server), errors, and what survives `kill -9`."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.cookiejar import MozillaCookieJar

import pytest

import flowtap
import flowtap.store
from flowtap import serialize
from flowtap.cli import main
from flowtap.paths import DATE_FORMAT
from flowtap.store import db
from flowtap.testing import capture, make_flow

from fakedist import make_distribution, stream_source

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def recorded(tmp_path, store_at):
    """Two sessions, "morning" (with a marker, a big body in a file) and "evening", in a store on each
    backend (tests/postgres.py's StoreAt)."""
    config = {"store": store_at.table(body_file_threshold="1kb"), "session": {"name": "morning"},
              "sinks": {"har": {"path": str(tmp_path / "live-{session}.har")}}}
    with capture("har", config=config) as cap:
        cap.feed(make_flow(url="https://api.example.com/users", method="POST", status=201,
                           request_body='{"name":"ann","tags":["a","b"]}', response_body='{"id":7}'),
                 make_flow(url="https://api.example.com/users/7", response_body=b'{"id":7,"name":"ann"}'))
        cap.session.mark("logged in")
        cap.feed(make_flow(url="https://cdn.example.com/logo.png", response_body=PNG,
                           response_headers=[("Content-Type", "image/png")]),
                 make_flow(url="https://api.example.com/report", response_body=b"x" * 5000,
                           response_headers=[("Content-Type", "text/plain")]),
                 make_flow(url="https://api.example.com/down", status=None, error="connection refused"))
        morning = cap.session.id
        cap.capture.begin(name="evening")
        cap.feed(make_flow(url="https://shop.test/cart", method="DELETE", status=404))
        evening = cap.session.id
    return store_at, morning, evening


def test_sessions_lists_newest_first_and_shows_one(recorded, capsys):
    where, morning, evening = recorded
    code, out, _ = cli(capsys, *where.args, "sessions")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "NAME", "STARTED", "DURATION", "STATE", "FLOWS"]
    assert [line.split()[:2] for line in lines[1:]] == [[evening, "evening"], [morning, "morning"]]
    assert lines[1].split()[-2:] == ["ended", "1"] and lines[2].split()[-2:] == ["ended", "5"]
    code, out, _ = cli(capsys, "sessions", "show", "morning", *where.args)
    assert code == 0 and f"session 'morning' ({morning})" in out
    assert "5 stored; 5 received: 5 recorded, 0 filtered out, 0 while paused" in out
    assert "api.example.com (4), cdn.example.com (1)" in out and "mark  'logged in'" in out
    code, out, _ = cli(capsys, "sessions", "show", "last", "--json", *where.args)
    assert json.loads(out)["id"] == evening


def test_search_prints_a_table_or_json_lines(recorded, capsys):
    where, morning, _ = recorded
    store = where.args
    code, out, _ = cli(capsys, "search", "~d api.example.com & !~e", "--session", "morning", *store)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "TIME", "METHOD", "STATUS", "SIZE", "DURATION", "HOST",
                                              "PATH"]
    assert [line.split()[-1] for line in lines[1:]] == ["/report", "/users/7", "/users"]  # newest first
    assert lines[-1].split()[3:6] == ["POST", "201", "8B"]
    code, out, _ = cli(capsys, "search", "--json", "--limit", "2", *store)
    found = [json.loads(line) for line in out.splitlines()]
    assert [f["path"] for f in found] == ["/cart", "/down"]
    assert found[1]["status"] is None and found[1]["error"] == "connection refused"
    code, out, err = cli(capsys, "search", "~c 999", *store)
    assert code == 0 and out == "" and "no flows in the store match '~c 999'" in err


def test_search_shows_the_port_where_it_is_not_the_default(tmp_path, capsys):
    path = tmp_path / "store.db"
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow(url="http://api.test:8080/a"), make_flow(url="https://api.test/b"),
                 make_flow(url="http://api.test:80/c"), make_flow(url="https://[::1]:9443/d"),
                 make_flow(url="https://api.test:80/e"))
    code, out, _ = cli(capsys, "search", "--set", f"store.path={path}")
    assert code == 0
    assert [line.split()[-2:] for line in out.splitlines()[1:]] == [
        ["api.test:80", "/e"], ["[::1]:9443", "/d"], ["api.test", "/c"], ["api.test", "/b"],
        ["api.test:8080", "/a"]]


def test_show_pretty_prints_text_and_keeps_raw_bytes(recorded, capsys):
    where, morning, _ = recorded
    store, path = where.args, where.location
    with flowtap.open_store(path) as s:
        post, png = next(s.rows("~m POST")), next(s.rows("~t png"))
    code, out, _ = cli(capsys, "show", post.id[:10], *store)
    assert code == 0 and f"flow {post.id}  session 'morning' ({morning})" in out
    assert "POST https://api.example.com/users HTTP/1.1\nHost: api.example.com\n" in out
    assert '{\n  "name": "ann",\n  "tags": [\n    "a",\n    "b"\n  ]\n}' in out
    assert "HTTP/1.1 201" in out and '{\n  "id": 7\n}' in out
    code, out, _ = cli(capsys, "show", png.id, *store)
    assert f"[{len(PNG)} bytes of image/png; `flowtap show --raw` prints them as they are]" in out
    raw = subprocess.run([sys.executable, "-m", "flowtap", "show", png.id, "--raw", *store],
                         capture_output=True, timeout=30)
    assert raw.returncode == 0 and PNG in raw.stdout
    code, out, _ = cli(capsys, "show", post.id, "--json", *store)
    data = json.loads(out)
    assert data["session"] == morning and serialize.flow_from_dict(data) == next(
        flowtap.open_store(path).flows("~m POST"))


def test_export_through_a_bundled_sink_is_what_live_capture_wrote(recorded, tmp_path, capsys):
    where, morning, _ = recorded
    out_path = tmp_path / "exported.har"
    code, out, err = cli(capsys, "export", "morning", "--sink", "har", "-o", str(out_path), *where.args)
    assert code == 0, err
    assert f"exported 5 flows of session 'morning' ({morning}) through 'har' to {out_path}" in out
    live, exported = (json.loads((tmp_path / name).read_text())
                      for name in ("live-morning.har", "exported.har"))
    assert len(exported["log"]["entries"]) == 5
    assert exported["log"]["entries"] == live["log"]["entries"]
    code, out, _ = cli(capsys, "export", morning, "--sink", "har", "-o", str(out_path), "--filter", "~t png",
                       *where.args)
    entries = json.loads(out_path.read_text())["log"]["entries"]
    assert code == 0 and [e["request"]["url"] for e in entries] == ["https://cdn.example.com/logo.png"]
    with flowtap.open_store(where.location) as s:  # the export did not record itself into the store
        assert len(s.sessions()) == 2


def test_export_keeps_the_session_start_for_date_placeholders(recorded, tmp_path, capsys):
    where, morning, _ = recorded
    path = where.location
    where.execute("UPDATE sessions SET started = started - 86400 WHERE id = ?", (morning,))  # yesterday
    with flowtap.open_store(path) as store:
        started = store.session(morning).started
    code, _, err = cli(capsys, "export", morning, "--sink", "har", "-o",
                       str(tmp_path / "{session}-{date}.har"), *where.args)
    assert code == 0, err
    stamp = time.strftime(DATE_FORMAT, time.localtime(started))
    assert (tmp_path / f"morning-{stamp}.har").is_file()


JSONL_SINK = '''
import time

import flowtap
from flowtap import serialize


class Jsonl(flowtap.Sink):
    def __init__(self, options):
        self.template = options["path"]
        self.delay = options["delay"]

    def open(self, session):
        from flowtap.paths import expand_path
        self.file = open(expand_path(self.template, session), "w")
        self.file.write(session.name + "\\n")

    def write(self, flow):
        time.sleep(self.delay)
        self.file.write(serialize.dumps(flow) + "\\n")

    def close(self):
        self.file.close()


class Pathless(flowtap.Sink):
    def __init__(self, options):
        pass

    def write(self, flow):
        pass


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare("sinks.jsonl", flowtap.Option("path", str, "flows.jsonl", "Where."),
            flowtap.Option("delay", float, 0.0, "Seconds each write takes."))


@flowtap.hookimpl
def flowtap_register_sinks(register):
    register("jsonl", Jsonl)
    register("pathless", Pathless)
'''


def test_export_through_a_third_party_sink(recorded, tmp_path, capsys, monkeypatch):
    where, morning, _ = recorded
    path = where.location
    site = make_distribution(tmp_path / "site", "flowtap-jsonl", {"jsonl": "flowtap_jsonl"},
                             {"flowtap_jsonl": JSONL_SINK})
    monkeypatch.syspath_prepend(str(site))
    out_path = tmp_path / "x.jsonl"
    code, _, err = cli(capsys, "export", "morning", "--sink", "jsonl", "-o", str(out_path), *where.args)
    assert code == 0, err
    name, *lines = out_path.read_text().splitlines()
    with flowtap.open_store(path) as s:
        assert name == "morning"
        assert [serialize.loads(line) for line in lines] == list(s.flows(session=morning))
    code, _, err = cli(capsys, "export", "morning", "--sink", "pathless", "-o", "x", *where.args)
    assert code == 2 and err.strip() == (
        "flowtap: error: sink 'pathless' has no path option in [sinks.pathless]: "
        "it does not write a file to export to")


def test_export_waits_for_a_slow_sink_and_loses_nothing(tmp_path, capsys, monkeypatch):
    """The store reads faster than this sink writes, and its backlog is small: a capture would make it
    miss flows, an export must not."""
    site = make_distribution(tmp_path / "site", "flowtap-jsonl", {"jsonl": "flowtap_jsonl"},
                             {"flowtap_jsonl": JSONL_SINK})
    monkeypatch.syspath_prepend(str(site))
    db_path = tmp_path / "store.db"
    with capture(config={"store": {"path": str(db_path)}, "session": {"name": "many"}}) as cap:
        cap.feed(*[make_flow(url=f"https://api.test/{n}") for n in range(300)])
    out_path = tmp_path / "many.jsonl"
    code, _, err = cli(capsys, "export", "many", "--sink", "jsonl", "-o", str(out_path),
                       "--set", f"store.path={db_path}", "--set", "dispatch.backlog=20",
                       "--set", "sinks.jsonl.delay=0.001")
    assert code == 0, err
    name, *lines = out_path.read_text().splitlines()
    assert [serialize.loads(line).request.path for line in lines] == [f"/{n}" for n in range(300)]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_any

    def log_message(self, *args):
        pass


def test_export_as_curl_sends_the_same_requests(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    path = tmp_path / "s.db"
    binary = bytes(range(256))
    pdf = b"%PDF-1.4 \xe2\xe3\xcf\xd3 it's\n\\x41"  # binary without NUL
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow(url=f"{base}/items?q=a%20b&x='quote'", method="PUT",
                           request_body="it's {\"a\": 1}\n",
                           request_headers=[("Host", f"127.0.0.1:{server.server_port}"), ("X-Trace", "t 1"),
                                            ("Content-Type", "application/json")]),
                 make_flow(url=f"{base}/upload", method="POST", request_body=binary,
                           request_headers=[("Content-Type", "application/octet-stream")]),
                 make_flow(url=f"{base}/gone", method="DELETE"),
                 make_flow(url=f"{base}/doc", method="POST", request_body=pdf,
                           request_headers=[("Content-Type", "application/pdf")]))
    try:
        code, out, _ = cli(capsys, "export", "last", "--format", "curl", "--set", f"store.path={path}")
        assert code == 0 and len(out.splitlines()) == 4
        for command in out.splitlines():
            subprocess.run(["bash", "-c", command + " --silent --show-error --max-time 10"], check=True,
                           timeout=30, capture_output=True)
    finally:
        server.shutdown()
    (m1, p1, h1, b1), (m2, p2, h2, b2), (m3, p3, _, b3), (_, _, _, b4) = _Recorder.seen
    assert (m1, p1, h1["X-Trace"], h1["Content-Type"], b1) == (
        "PUT", "/items?q=a%20b&x='quote'", "t 1", "application/json", b"it's {\"a\": 1}\n")
    assert (m2, p2, h2["Content-Type"], b2) == ("POST", "/upload", "application/octet-stream", binary)
    assert (m3, p3, b3) == ("DELETE", "/gone", b"")
    assert b4 == pdf


def test_rename_and_delete(recorded, capsys):
    where, morning, evening = recorded
    store, path = where.args, where.location
    assert where.url or db.bodies_dir(path).joinpath(morning).is_dir()
    code, out, _ = cli(capsys, "sessions", "rename", "morning", "breakfast", *store)
    assert code == 0 and f"session {morning}: renamed 'morning' to 'breakfast'" in out
    code, out, _ = cli(capsys, "sessions", "delete", "breakfast", *store)
    assert code == 0 and f"deleted session 'breakfast' ({morning}) and its 5 flows" in out
    with flowtap.open_store(path) as s:
        assert [x.id for x in s.sessions()] == [evening] and s.count() == 1
    assert where.execute("SELECT count(*) FROM contents") == [(1,)]
    assert where.execute("SELECT count(*) FROM events") == [(0,)]
    assert where.url or not db.bodies_dir(path).joinpath(morning).exists()


def test_a_session_being_recorded_cannot_be_deleted(tmp_path, capsys):
    path = tmp_path / "s.db"
    with capture(config={"store": {"path": str(path)}, "session": {"name": "live"}}) as cap:
        cap.feed(make_flow())
        code, _, err = cli(capsys, "sessions", "delete", "live", "--set", f"store.path={path}")
        assert code == 2 and f"is being recorded by pid {os.getpid()}" in err


def test_errors_are_one_line_exit_2_and_reads_change_nothing(recorded, tmp_path, capsys):
    where, morning, _ = recorded
    store = where.args

    def state():
        if where.url:  # the rows, for PostgreSQL
            return where.execute("SELECT f.id, c.data FROM flows f JOIN contents c ON c.seq = f.seq "
                                 "ORDER BY 1")
        return hashlib.sha256(where.path.read_bytes()).hexdigest()

    before = state()
    for args, message in [
        (("sessions", "show", "nope"), "no session 'nope'"),
        (("show", "0123456789"), "no flow '0123456789'"),
        (("search", "~d ("), "invalid filter expression '~d (': error at column"),
        (("export", "morning", "--sink", "har", "-o", "x.har", "--filter", "~x"),
         "invalid filter expression"),
        (("export", "nope", "--format", "curl"), "no session 'nope'"),
        (("export", "morning"), "give --sink NAME (with -o PATH) or --format curl"),
        (("export", "morning", "--sink", "nope", "-o", "x"), "no sink named 'nope'"),
        (("search", "--limit", "-1"), "--limit -1: expected 0 or more"),
    ]:
        code, out, err = cli(capsys, *args, *store)
        assert (code, err.count("\n"), out) == (2, 1, ""), (args, err)
        assert err.startswith("flowtap: error: ") and message in err, (args, err)
    for args in (("sessions",), ("sessions", "show", "last"), ("search", "~b ann"), ("show", "0"),
                 ("export", "last", "--format", "curl")):
        cli(capsys, *args, *store)
    assert state() == before

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite" * 500)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    for target, message in [(garbage, "not a readable flowtap session store"), (newer, "newer flowtap")]:
        for args in (("sessions",), ("search",), ("sessions", "delete", "x")):
            code, out, err = cli(capsys, *args, "--set", f"store.path={target}")
            assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
    assert garbage.read_bytes() == b"not sqlite" * 500
    code, out, _ = cli(capsys, "sessions", "--set", f"store.path={tmp_path / 'none.db'}")
    assert code == 0 and "no sessions recorded yet" in out and not (tmp_path / "none.db").exists()


def test_kill_9_keeps_every_flow_recorded_a_second_before(tmp_path):
    site = stream_source(tmp_path / "site")
    data = tmp_path / "data"
    (tmp_path / "flowtap.toml").write_text("[sources.stream]\ninterval = 0.002\n")
    env = dict(os.environ, PYTHONPATH=str(site), FLOWTAP_DATA_DIR=str(data))
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run", "--name", "doomed"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "api.test/stream/300 " not in proc.stdout.readline() and time.monotonic() < deadline:
            pass
        time.sleep(1.5)  # it keeps capturing, and committing
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    path = data / "flowtap.db"
    with flowtap.open_store(path) as store:
        assert store._db.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        session = store.session("doomed")
        assert session.state == "interrupted"  # its process is gone
        stored = list(store.rows(session=session))
    numbers = [int(row.path.rsplit("/", 1)[1]) for row in stored]
    assert numbers == list(range(len(numbers)))  # nothing missing in between
    assert len(numbers) > 300
    assert stored[-1].time > killed_at - 1.0  # every flow older than a second is there
    # The next run closes the interrupted session's books, and carries on in the same store.
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow())
    with flowtap.open_store(path) as store:
        doomed = store.session("doomed")
        assert (doomed.state, doomed.ended) == ("interrupted", stored[-1].time)


def test_curl_export_leaves_out_the_headers_meant_for_the_proxy(tmp_path, capsys):
    """Issue 11, item 9: ``Proxy-Connection: Keep-Alive`` and friends were replayed to the server."""
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    path = tmp_path / "s.db"
    sent = [("Host", f"127.0.0.1:{server.server_port}"), ("Proxy-Connection", "Keep-Alive"),
            ("Proxy-Authorization", "Basic cHJveHk6cHc="), ("Connection", "keep-alive, X-Hop"),
            ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("X-Hop", "1"), ("X-Kept", "yes")]
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow(url=f"{base}/hop", request_headers=sent))
    try:
        code, out, _ = cli(capsys, "export", "last", "--format", "curl", "--set", f"store.path={path}")
        assert code == 0
        for name in ("Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "TE", "X-Hop"):
            assert name not in out
        subprocess.run(["bash", "-c", out.strip() + " --silent --show-error --max-time 10"], check=True,
                       timeout=30, capture_output=True)
    finally:
        server.shutdown()
    ((_, _, headers, _),) = _Recorder.seen
    assert headers["X-Kept"] == "yes"
    assert not {"Proxy-Connection", "Proxy-Authorization", "Keep-Alive", "TE", "X-Hop"} & set(headers)


def test_export_uses_the_sink_options_the_session_was_recorded_with(tmp_path, capsys):
    """Issue 11 item 9: a session captured with organize = "domain+endpoint" exports in folders by default."""
    path = tmp_path / "store.db"
    config = {"store": {"path": str(path)}, "session": {"name": "shop"},
              "sinks": {"collection": {"path": str(tmp_path / "live.json"), "organize": "domain+endpoint"}}}
    with capture("collection", config=config) as cap:
        cap.feed(make_flow(url="https://api.example.com/users/42"), make_flow(url="https://cdn.example.com/a"))
    out_path = tmp_path / "exported.postman_collection.json"
    code, out, err = cli(capsys, "export", "shop", "--sink", "collection", "-o", str(out_path),
                         "--set", f"store.path={path}")
    assert code == 0, err
    assert "with the options it was recorded with for [sinks.collection]" in out
    exported = json.loads(out_path.read_text())
    assert [f["name"] for f in exported["item"]] == ["api.example.com", "cdn.example.com"]
    assert exported["item"][0]["item"][0]["name"] == "GET /users/:userId"
    assert exported["item"] == json.loads((tmp_path / "live.json").read_text())["item"]
    code, out, err = cli(capsys, "export", "shop", "--sink", "collection", "-o", str(out_path),
                         "--current-config", "--set", f"store.path={path}")
    assert code == 0, err
    assert "with this config's options" in out
    assert [i["name"] for i in json.loads(out_path.read_text())["item"]] == [
        "GET api.example.com/users/42", "GET cdn.example.com/a"]


def test_header_bytes_that_are_not_utf8_stay_bytes_in_curl_show_and_the_cookie_jar(tmp_path, capsys):
    """Issue 11 item 7: the proxy keeps a non-UTF-8 header byte as a lone surrogate (surrogateescape)."""
    from flowtap_cookiejar.formats import load_json
    from flowtap_proxy.convert import _fields

    ((_, value),) = _fields(((b"X-Name", b"caf\xe9"),))
    assert value == "caf\udce9" and value.encode("utf-8", "surrogateescape") == b"caf\xe9"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    path, jar, jar_json = tmp_path / "s.db", tmp_path / "cookies.txt", tmp_path / "cookies.json"
    flow = make_flow(url=f"{base}/latin",
                     request_headers=[("X-Name", "caf\udce9"), ("Cookie", "n=caf\udce9")],
                     response_headers=[("Set-Cookie", "n=caf\udce9; Path=/"), ("Set-Cookie", "ok=1; Path=/")])
    with capture("cookiejar", config={"store": {"path": str(path)},
                                      "sinks": {"cookiejar": {"path": str(jar)}}}) as cap:
        cap.feed(flow)
    as_json = {"path": str(jar_json), "format": "json"}
    with capture("cookiejar", config={"store": {"enabled": False}, "sinks": {"cookiejar": as_json}}) as cap:
        cap.feed(flow)
    # cookies.txt cannot hold it (MozillaCookieJar refuses a file that is not UTF-8): left out, never
    # mojibake; the JSON jar keeps it exactly.
    assert b"caf" not in jar.read_bytes() and b"ok\t1" in jar.read_bytes()
    assert {c.name: c.value for c in load_json(jar_json.read_text())}["n"] == "caf\udce9"
    MozillaCookieJar(str(jar)).load()
    try:
        code, out, err = cli(capsys, "export", "last", "--format", "curl", "--set", f"store.path={path}")
        assert code == 0, err
        assert "X-Name: caf\\xe9" in out  # $'...' bytes, not the two UTF-8 bytes of é
        subprocess.run(["bash", "-c", out.strip() + " --silent --show-error --max-time 10"], check=True,
                       timeout=30, capture_output=True)
    finally:
        server.shutdown()
    _, got_path, headers, _ = _Recorder.seen[-1]
    assert got_path == "/latin"
    assert headers["X-Name"] == "caf\xe9"  # http.server reads header bytes as Latin-1: the byte 0xE9
    with flowtap.open_store(path) as s:
        flow_id = next(s.rows()).id
    shown = subprocess.run([sys.executable, "-m", "flowtap", "show", flow_id, "--set", f"store.path={path}"],
                           capture_output=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert b"X-Name: caf\\xe9" in shown.stdout  # flowtap.terminal_safe shows the byte


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "live"])
@pytest.mark.parametrize("sink, name", [("collection", "c.postman_collection.json"), ("openapi", "api.yaml")])
def test_a_replayed_session_writes_the_file_once_at_its_end(tmp_path, sink, name, replay):
    """An export replays flows as fast as the store reads them: the rewrites that keep a live
    session's file current would only cost time (Session.replay). A live session rewrites within
    a second of a flush."""
    out = tmp_path / name
    cap = flowtap.Capture({"sinks": {sink: {"path": str(out)}}, "store": {"enabled": False}},
                          load_entrypoints=False)
    cap.host.load_entrypoints(only=[sink])
    cap.start(replay=replay)
    try:
        assert cap.session.replay is replay
        for number in range(20):
            cap.emit(make_flow(url=f"https://api.example.com/items/{number}", response_body=b'{"id": 1}',
                               response_headers=[("Content-Type", "application/json")]))
        assert cap.sync(10)
        time.sleep(1.5)  # past a live rewrite's interval (1 s)
        assert out.exists() is not replay
    finally:
        cap.stop()
    text = out.read_text()
    assert (len(json.loads(text)["item"]) == 20) if sink == "collection" else "/items/{" in text
