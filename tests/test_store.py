"""The session store: sessions and flows written by the sink, read back by the Python API, searched
with the same results as the filter predicate, bodies in files, schema versions, damaged databases."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time

import pytest

import flowtap
import flowtap.store
from flowtap import TLSInfo, WebSocketMessage, serialize
from flowtap.filters import compile_expression
from flowtap.store import StoreError, db
from flowtap.testing import capture, make_flow

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def store_config(path, **options):
    return {"store": {"path": str(path), **options}}


def corpus() -> list[flowtap.Flow]:
    """Flows of every shape a search must tell apart."""
    big = b'{"blob": "' + b"x" * 3000 + b' needle"}'
    return [
        make_flow(url="https://api.example.com/users?page=1"),
        make_flow(url="https://api.example.com/users", method="POST", request_body='{"name": "ann"}',
                  status=201),
        make_flow(url="http://shop.test:8080/cart", method="DELETE", status=404, response_body="not found",
                  response_headers=[("Content-Type", "text/plain; charset=utf-8")]),
        # The Host header names another host than the URL (a reverse proxy, say).
        make_flow(url="http://10.0.0.5/health", request_headers=[("Host", "internal.example.org:8443")],
                  response_body=b"ok", response_headers=[("Content-Type", "text/plain")]),
        make_flow(url="https://cdn.test/logo.png", response_body=PNG,
                  response_headers=[("Content-Type", "image/png")]),
        make_flow(url="https://cdn.test/app.js", response_body=b"console.log('needle')",
                  response_headers=[("Content-Type", "application/javascript")]),
        make_flow(url="https://api.example.com/fail", status=None, error="connection refused"),
        make_flow(url="https://api.example.com/slow", status=None),  # no response, no error
        make_flow(url="https://api.example.com/upload", method="PUT", request_body=big, status=500,
                  response_body=b'{"error": "boom"}'),
        make_flow(url="https://api.example.com/big", response_body=big),
        make_flow(url="https://api.example.com/two-types", response_headers=[
            ("Content-Type", "text/html"), ("Content-Type", "application/json")]),
        make_flow(url="wss://ws.example.com/socket", status=101, response_body=b"",
                  websocket=[WebSocketMessage(True, b"hello needle"),
                             WebSocketMessage(False, b"\x00\x01", False)]),
        make_flow(url="https://api.example.com/meta", metadata={"comment": "looked at"},
                  request_headers=[("Host", "api.example.com"), ("Authorization", "Bearer t0k3n")],
                  client_address=("127.0.0.1", 50123), server_address=("93.184.216.34", 443),
                  tls=TLSInfo(version="TLSv1.3", sni="api.example.com", alpn="h2")),
        make_flow(url="https://api.example.com/ümlaut?q=é", method="PATCH", request_body=b"\xff\xfe binary"),
        make_flow(url="https://API.Example.com:443/Mixed", method="get"),  # default port, upper case
    ]


EXPRESSIONS = [
    "~d api.example.com", "~d internal", "~d 10.0.0", "!~d example", "~m POST", "~m p", "~c 404", "!~c 200",
    "~q", "~s", "~e", "!~e", "~u /users", "~u internal.example.org:8443/health", "~u 'shop.test:8080'",
    "~t json", "~tq json", "~ts text", "~t html", "~a", "!~a", "~websocket", "~b needle", "~bq needle",
    "~bs needle", "!~b needle", "~b '^$'", "~h Authorization", "~hq 'Bearer'", "!~h Authorization",
    "~comment looked", "~src 127.0.0.1", "~dst 93.184", "~all", "~tcp", "!~tcp",
    "~d example & (~c 200 | ~c 201)", "~b needle | ~m PUT", "!(~b needle & ~d api)", "!(~s & ~h Host)",
    "!~h Host | ~q",
    "~d api & !~b boom & !~h Authorization", "cdn.test", "~u ümlaut", "~u '^https://api.example.com/mixed$'",
    "~u ':443'", "~m '^GET$'", "~d '^API'",
]


def test_sql_alone_decides_all_but_bodies_in_files_and_unsupported_operators():
    from flowtap.store import query

    for expression in ("~d api & ~m POST", "~h Authorization", "!~hs 'Set-Cookie: a'", "~u x | ~c 500"):
        assert query.plan(expression).exact, expression
    assert not query.plan("~b needle").exact and not query.plan("~src 127.0.0.1").exact


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stored(request, tmp_path_factory):
    """The corpus in a store on each backend (SQLite: bodies over 1 KB in files), and the flows as fed."""
    from postgres import store_at

    where = store_at(request, tmp_path_factory.mktemp("store"))
    flows = corpus()
    with capture(config={"store": where.table(body_file_threshold="1kb")}) as cap:
        cap.feed(*flows)
    return where.location, flows


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_search_finds_exactly_what_the_filter_matches(stored, expression):
    path, flows = stored
    predicate = compile_expression(expression)
    expected = [f.id for f in flows if predicate(f)]
    with flowtap.open_store(path) as store:
        assert [r.id for r in store.rows(expression)] == expected
        assert [f.id for f in store.flows(expression)] == expected
        assert [r.id for r in store.rows(expression, newest_first=True, limit=2)] == expected[::-1][:2]


def test_flows_come_back_whole(stored):
    path, flows = stored
    with flowtap.open_store(path) as store:
        back = list(store.flows())
    assert back == flows  # every field, bodies and all, including those kept in files
    if isinstance(path, str):  # PostgreSQL keeps every body in its rows
        return
    files = list(db.bodies_dir(path).rglob("*.*"))
    assert len(files) == 2 and all(f.stat().st_mode & 0o077 == 0 for f in files)


def test_rows_hold_the_searchable_fields(stored):
    path, flows = stored
    with flowtap.open_store(path) as store:
        rows = {r.id: r for r in store.rows()}
    health, failed, twotypes = rows[flows[3].id], rows[flows[6].id], rows[flows[10].id]
    assert (health.method, health.scheme, health.host, health.host_header, health.port, health.path) == (
        "GET", "http", "10.0.0.5", "internal.example.org:8443", 80, "/health")
    assert (health.status, health.response_type, health.response_size) == (200, "text/plain", 2)
    assert (failed.status, failed.error, failed.response_size) == (None, "connection refused", None)
    assert twotypes.response_type == "text/html\napplication/json"
    if not isinstance(path, str):  # PostgreSQL keeps every body in its rows
        assert rows[flows[8].id].files == db.REQUEST_FILE and rows[flows[9].id].files == db.RESPONSE_FILE
    assert round(health.duration) == 50 and health.source == "test"


def test_the_port_column_is_the_scheme_default_when_the_url_has_none_or_a_bad_one():
    port = db.FLOW_COLUMNS.index("port") - 2  # flow_columns leaves out seq and session, both before it
    ports = [db.flow_columns(make_flow(url=url))[port]
             for url in ("https://a.test:8443/x", "https://a.test/x", "http://a.test:99999/x", "ws://a.test:x/")]
    assert ports == [8443, 443, 80, 80]


def test_serialize_round_trips_every_field():
    for flow in corpus():
        assert serialize.loads(serialize.dumps(flow)) == flow
    with pytest.raises(ValueError, match="unknown flow format"):
        serialize.loads('{"format": "something/9"}')


def test_json_encoders_agree_with_the_standard_library_and_keep_odd_text():
    plain = {"ü": ["café", 1.5, -2, None, True, (1, 2)], "n": 2 ** 40}
    assert json.loads(serialize.json_bytes(plain)) == json.loads(json.dumps(plain))
    assert serialize.json_bytes({"big": 2 ** 70}) == b'{"big":1180591620717411303424}'  # beyond orjson
    # Bytes that were not UTF-8 (lone surrogates): Latin-1 in files for other tools, exact in the store.
    assert json.loads(serialize.json_bytes({"h": "caf\udce9"})) == {"h": "café"}
    odd = {"h": "caf\udce9", "meta": {1}, "t": (1,)}  # a set: metadata JSON cannot hold as it is
    assert json.loads(serialize.to_json(odd)) == {"h": "caf\udce9", "meta": [1], "t": [1]}


def test_sessions_pause_resume_clear_and_marks_are_kept(tmp_path):
    path = tmp_path / "s.db"
    with capture(config={**store_config(path), "session": {"name": "first"}}) as cap:
        cap.feed(make_flow(url="https://a.test/1"), make_flow(url="https://a.test/2"))
        cap.session.clear()  # Postman's clear: forget what was captured so far
        cap.feed(make_flow(url="https://a.test/3"))
        cap.session.pause()
        cap.feed(make_flow(url="https://a.test/dropped"))
        cap.session.resume()
        assert cap.session.mark("logged in")
        cap.feed(make_flow(url="https://a.test/4", status=500))
        first = cap.session.id
        with flowtap.open_store(path) as live:  # readable while the capture writes
            assert live.session("first").state == "running"
            deadline = time.monotonic() + 5  # committed within batch_interval (100 ms)
            while len(list(live.rows(session="first"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [r.path for r in live.rows(session="first")] == ["/3", "/4"]
        cap.capture.begin(name="second")
        cap.feed(make_flow(url="https://b.test/1"))
    with flowtap.open_store(path) as store:
        sessions = store.sessions()
        assert [s.name for s in sessions] == ["second", "first"]
        s = store.session(first)
        assert (s.state, s.flows, s.recorded, s.paused, s.received, s.ended is not None) == (
            "ended", 2, 2, 1, 5, True)
        assert [(e.kind, e.text) for e in store.events(first)] == [
            ("clear", None), ("pause", None), ("resume", None), ("mark", "logged in")]
        assert [r.path for r in store.rows(session=first)] == ["/3", "/4"]
        assert [r.path for r in store.rows("~c 500", session="first")] == ["/4"]
        assert [r.host for r in store.rows(session="last")] == ["b.test"]
        assert store.session("last").name == "second" and store.session(first[:6]).id == first
        with pytest.raises(StoreError, match="no session 'nope'"):
            store.session("nope")


def test_flows_are_committed_in_batches_and_at_once_with_no_interval(tmp_path):
    path = tmp_path / "s.db"
    with capture(config=store_config(path, batch_interval="1h")) as cap:
        cap.feed(make_flow(url="https://a.test/1"))  # the first flush commits at once
        cap.feed(*(make_flow(url=f"https://a.test/{i}") for i in range(2, 5)))
        with flowtap.open_store(path) as store:
            assert store.count() == 1  # held back for up to an hour...
            cap.session.pause()
            cap.capture.sync()
            assert store.count() == 4  # ...unless an event comes first
    with capture(config=store_config(path, batch_interval="200ms")) as cap:
        cap.feed(make_flow(url="https://c.test/1"))
        cap.feed(*(make_flow(url=f"https://c.test/{i}") for i in range(2, 5)))
        with flowtap.open_store(path) as store:
            deadline = time.monotonic() + 10
            while store.count(cap.session.id) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.count(cap.session.id) == 4  # committed when the interval was up (call_later)
    with capture(config=store_config(path, batch_interval=0)) as cap:
        for i in range(3):
            cap.feed(make_flow(url=f"https://b.test/{i}"))
            with flowtap.open_store(path) as store:
                assert store.count(cap.session.id) == i + 1


def test_a_session_in_which_nothing_happened_is_not_kept(tmp_path):
    path = tmp_path / "s.db"
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow())
        cap.capture.begin(name="empty")
    with flowtap.open_store(path) as store:
        assert len(store.sessions()) == 1 and store.sessions()[0].name != "empty"


def test_the_store_runs_by_default_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWTAP_DATA_DIR", str(tmp_path / "data"))
    cap = flowtap.Capture(load_entrypoints=False)  # no config at all
    cap.start()
    cap.emit(make_flow())
    cap.stop()
    with flowtap.open_store() as store:
        assert store.path == tmp_path / "data" / "flowtap.db" and store.count() == 1
    with capture(config={"store": {"enabled": False, "path": str(tmp_path / "off.db")}}) as cap:
        cap.feed(make_flow())
        assert [w.sink.name for w in cap.capture.workers] == ["recorded"]
    assert not (tmp_path / "off.db").exists()


def test_the_session_keeps_the_config_it_ran_with(tmp_path):
    path = tmp_path / "s.db"
    config = {**store_config(path), "filters": {"methods": ["GET"]}}
    with capture(config=config) as cap:
        cap.feed(make_flow(), make_flow(method="POST"))
    with flowtap.open_store(path) as store:
        s = store.session("last")
    assert s.config["tables"]["filters"] == {"methods": ["GET"]}
    assert (s.recorded, s.filtered, s.flows) == (1, 1, 1)


def test_reading_never_changes_the_database(stored):
    path, _ = stored
    if isinstance(path, str):  # PostgreSQL: a reader's session is read-only
        import psycopg

        with flowtap.open_store(path) as store:
            before = store.count()
            list(store.flows("~b needle | ~d api"))
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                store._db.conn.execute("DELETE FROM flows")
            assert store.count() == before
        return
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with flowtap.open_store(path) as store:
        list(store.flows("~b needle | ~d api"))
        store.sessions()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store._db.conn.execute("DELETE FROM flows")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_the_package_exports_what_it_lists_and_loads_it_on_first_use():
    # __all__ is spelled out for linters; the lazy table must name the same things.
    assert sorted(flowtap.store.__all__) == sorted(flowtap.store._WHERE)
    for name in flowtap.store.__all__:
        assert getattr(flowtap.store, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flowtap.store.nope  # noqa: B018 -- the attribute access is what raises


def test_flows_are_found_by_id_or_unique_prefix(tmp_path):
    path = tmp_path / "s.db"
    with capture(config=store_config(path)) as cap:
        cap.feed(*(make_flow(url=f"https://a.test/{n}", id=n) for n in ("ab12", "ab1234", "cd55", "cd66")))
    with flowtap.open_store(path) as store:
        assert store.flow("ab12").request.url == "https://a.test/ab12"  # exact, though a longer id shares it
        assert store.flow("ab123").id == "ab1234" and store.flow("cd5").id == "cd55"
        with pytest.raises(StoreError, match="'cd' is ambiguous"):
            store.flow("cd")
        with pytest.raises(StoreError, match="no flow ''"):
            store.flow("")


def test_a_store_of_schema_version_1_is_read_as_it_is_and_upgraded_by_a_writer(tmp_path):
    path = tmp_path / "v1.db"
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow(url="https://old.test/", id="0ld"))
    conn = sqlite3.connect(path)
    # What version 1 had that version 2 dropped, without what versions 3 and 4 added.
    conn.executescript("CREATE INDEX flows_id ON flows(id); CREATE INDEX flows_time ON flows(time);"
                       "ALTER TABLE sessions DROP COLUMN machine; ALTER TABLE sessions DROP COLUMN user_name;"
                       "ALTER TABLE sessions DROP COLUMN seen; PRAGMA user_version = 1;")
    conn.close()
    with flowtap.open_store(path) as store:
        assert store.flow("0ld").request.host == "old.test"
        old = store.session("last")
        assert (old.machine, old.user, old.seen, old.state) == ("", "", None, "ended")
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow(url="https://new.test/"))
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION == 4
    assert "flows_id" not in indexes and "flows_time" not in indexes and "flows_host" in indexes
    columns = {r[1] for r in conn.execute("PRAGMA table_info(sessions)")}
    assert {"machine", "user_name", "seen"} <= columns


def test_bad_input_is_a_clear_error(stored, tmp_path):
    path, _ = stored
    with flowtap.open_store(path) as store:
        with pytest.raises(flowtap.filters.FilterError, match="column"):
            list(store.rows("~d ("))
        with pytest.raises(StoreError, match="no flow 'zzz'"):
            store.flow("zzz")
    with pytest.raises(StoreError, match="no session store here"):
        flowtap.open_store(tmp_path / "missing.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="garbage.db: not a readable flowtap session store"):
        flowtap.open_store(garbage)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a flowtap session store"):
        flowtap.open_store(other)


def test_a_newer_store_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "new.db"
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow())
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {db.VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer flowtap"):
        flowtap.open_store(path)
    cap = flowtap.Capture(store_config(path), load_entrypoints=False)
    with pytest.raises(flowtap.StartupError,
                       match=r"sink 'store': .*newer flowtap.*upgrade flowtap, or set \[store\] path"):
        cap.start()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == db.VERSION + 1


def test_migrations_run_in_order_when_writing(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow(url="https://old.test/"))
    migrations = {**db.MIGRATIONS, db.VERSION + 1: "ALTER TABLE flows ADD COLUMN note TEXT; -- a comment\n"
                                                   "UPDATE flows SET note = 'migrated';"}
    monkeypatch.setattr(db, "MIGRATIONS", migrations)
    monkeypatch.setattr(db, "VERSION", db.VERSION + 1)
    monkeypatch.setattr(db, "READS_FROM", db.VERSION)  # a new column: readers must wait for it
    with pytest.raises(StoreError, match="older than this flowtap's"):  # reads never migrate
        flowtap.open_store(path)
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow(url="https://new.test/"))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.VERSION
    assert conn.execute("SELECT host, note FROM flows ORDER BY seq").fetchall() == [
        ("old.test", "migrated"), ("new.test", None)]


def test_a_test_suite_asserts_on_traffic_captured_by_the_real_proxy(tmp_path):
    httpx = pytest.importorskip("httpx")
    from upstream import Upstream

    path = tmp_path / "flows.db"
    config = {"store": {"path": str(path)}, "sources": {"proxy": {"listen": "127.0.0.1:0"}}}
    with Upstream() as upstream, capture("proxy", config=config) as cap:
        proxy = f"http://127.0.0.1:{cap.capture.sources['proxy'].port}"
        with httpx.Client(proxy=proxy, timeout=10) as client:
            assert client.get(f"{upstream.url}/json").status_code == 200
            assert client.post(f"{upstream.url}/echo", content=b'{"order": 7}').status_code == 200
    with flowtap.open_store(path) as store:
        (echo,) = store.flows("~m POST & ~u /echo")
        assert echo.request.body == b'{"order": 7}' and echo.response.body == b'{"order": 7}'
        assert [r.path for r in store.rows(session="last")] == ["/json", "/echo"]
        assert store.session("last").state == "ended"


def test_flows_the_proxy_can_produce_are_stored_exactly(tmp_path):
    """A body of unknown size and header bytes that are not UTF-8 (lone surrogates after decoding)."""
    path = tmp_path / "s.db"
    odd = make_flow(url="https://a.test/odd",
                    response_headers=[("X-Raw", "caf\udce9"), ("Content-Type", "text/plain")])
    odd.response.truncated, odd.response.body, odd.response.body_size = True, b"", None
    with capture(config=store_config(path)) as cap:
        cap.feed(odd, make_flow(url="https://a.test/plain"))
    with flowtap.open_store(path) as store:
        stored = {f.request.path: f for f in store.flows()}
        matched = []  # the header's bytes, as the filter reads them: b"X-Raw: caf\xe9\r\n"
        for expression in ("~hs 'X-Raw: caf\xe9'", r"~h 'caf.\r'", "!~hq Raw", "~hq Raw"):
            found = [r.path for r in store.rows(expression) if r.path == "/odd"]
            assert found == (["/odd"] if compile_expression(expression)(odd) else []), expression
            matched += [expression] if found else []
        assert matched == [r"~h 'caf.\r'", "!~hq Raw"]
    assert stored["/odd"].response.headers.get("x-raw") == "caf\udce9"
    assert stored["/odd"].response.body_size is None and stored["/odd"].response.truncated
    assert "/plain" in stored


def test_a_row_the_database_refuses_is_left_out_alone(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    columns = db.flow_columns

    def refuse_one(flow):
        row = columns(flow)
        if flow.request.path == "/bad":
            row[4] = None  # host: NOT NULL
        return row

    monkeypatch.setattr(db, "flow_columns", refuse_one)
    with capture(config=store_config(path)) as cap:
        cap.feed(*(make_flow(url=f"https://a.test/{name}") for name in ("one", "bad", "two")))
        cap.feed(make_flow(url="https://a.test/three"))
        (health,) = [h for h in cap.capture.health() if h.name == "store"]
    with flowtap.open_store(path) as store:
        assert sorted(f.request.path for f in store.flows()) == ["/one", "/three", "/two"]
    assert (health.written, health.missed, health.errors) == (4, 1, 1)  # lost, and counted
    assert health.last_error == (f"flush: {path}: a flow (GET https://a.test/bad) not stored: "
                                 "NOT NULL constraint failed: flows.host")


def test_a_running_session_of_another_machine_reads_as_interrupted_once_its_run_falls_silent(tmp_path):
    """Another machine's process cannot be asked whether it lives: its run's heartbeat (seen) tells."""
    import os
    import socket
    import subprocess
    import sys

    path = tmp_path / "s.db"
    with capture(config=store_config(path, batch_interval=0)) as cap:
        cap.feed(make_flow())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid no process has any more

    def state(machine, pid, seen):
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE sessions SET state = 'running', ended = NULL, machine = ?, pid = ?, "
                         "seen = ?", (machine, pid, seen))
        with flowtap.open_store(path) as store:
            return store.sessions()[0].state

    now = time.time()
    assert state("elsewhere", gone, now - 5) == "running"  # heard from lately; its pid means nothing here
    assert state("elsewhere", os.getpid(), now - db.STALE - 5) == "interrupted"  # silent too long
    assert state("elsewhere", gone, None) == "running"  # written before seen was: cannot tell
    assert state(socket.gethostname(), gone, now) == "interrupted"  # here the process itself is asked
    assert state(socket.gethostname(), os.getpid(), now - db.STALE - 5) == "running"


def test_a_run_keeps_writing_seen_while_nothing_else_is_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "HEARTBEAT", 0.2)
    path = tmp_path / "s.db"

    def seen():
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT seen FROM sessions").fetchone()[0]

    started = time.time()
    with capture(config=store_config(path)) as cap:
        cap.feed(make_flow())  # the first flow is committed at once
        first = seen()
        assert started <= first <= time.time()
        time.sleep(1.0)  # idle: no flow, no event, no count changes
        assert seen() >= first + 0.5
