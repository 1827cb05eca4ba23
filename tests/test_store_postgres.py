"""The team store on PostgreSQL, against a real server (tests/postgres.py): the database stopped and
restarted mid-capture, runs that end while it is down, several `flowtap run` processes at once,
machine and user, migrations (from empty, from the previous schema, several machines at once),
`flowtap store copy` both ways, and the errors a user sees.

The store commands on both backends are in test_store.py and test_store_cli.py (the same tests)."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from postgres import server, wait_for

import flowtap
from flowtap.cli import main
from flowtap.store import StoreError, backend_postgres as pg, db, spool
from flowtap.testing import capture, make_flow

from clirun import flowtap as flowtap_cli
from fakedist import stream_source

pytestmark = pytest.mark.timeout(180)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def stored_paths(url: str, session: str | None = None) -> list[str]:
    """The paths of the flows in the store, in the order recorded ([] before anything was delivered)."""
    try:
        store = flowtap.open_store(url)
    except db.EmptyStore:
        return []
    with store:
        return [row.path for row in store.rows(session=session)]


def test_the_database_killed_and_restarted_mid_capture_gets_every_flow_once(tmp_path):
    """Real proxy, real client: flows captured while PostgreSQL is down wait in the spool, then arrive
    in order, each once; the sink says what happened while it happened."""
    httpx = pytest.importorskip("httpx")
    from upstream import Upstream

    with server() as database:
        url = database.database()
        config = {"store": {"url": url, "batch_interval": "50ms"}, "session": {"name": "outage"},
                  "sources": {"proxy": {"listen": "127.0.0.1:0"}}}
        with Upstream() as upstream, capture("proxy", config=config) as cap:
            proxy = f"http://127.0.0.1:{cap.capture.sources['proxy'].port}"
            with httpx.Client(proxy=proxy, timeout=10) as client:
                def send(numbers):
                    for n in numbers:
                        assert client.get(f"{upstream.url}/json?n={n}").status_code == 200

                send(range(20))
                wait_for(lambda: len(stored_paths(url)) == 20)
                database.stop("immediate")  # killed, as a crash would
                send(range(20, 60))  # the proxy does not wait for the database
                wait_for(lambda: "flows wait in the spool" in next(
                    h for h in cap.capture.health() if h.name == "store").note)
                spooled = list(spool.spool_dir(url).glob("*.db"))
                assert len(spooled) == 1
                database.start()
                send(range(60, 80))
                wait_for(lambda: len(stored_paths(url)) == 80)
                wait_for(lambda: not next(h for h in cap.capture.health() if h.name == "store").note)
        (store,) = [h for h in cap.capture.health() if h.name == "store"]
        assert (store.written, store.missed, store.errors) == (80, 0, 0)
        assert store.clean and cap.capture.clean  # an outage that lost nothing is no failure
        assert stored_paths(url) == [f"/json?n={n}" for n in range(80)]  # in order, each once
        with flowtap.open_store(url) as reader:
            assert reader.session("outage").state == "ended"
            assert len({row.id for row in reader.rows()}) == 80
        assert not list(spool.spool_dir(url).glob("*.db"))  # delivered: the spool is gone


def test_flows_streaming_in_while_the_database_is_killed_and_restarted_arrive_once_each(tmp_path):
    """`flowtap run` recording all along; the server killed mid-delivery, then back: every flow once."""
    site = stream_source(tmp_path / "site")
    with server() as database:
        url = database.database()
        (tmp_path / "flowtap.toml").write_text(
            f'[store]\nurl = "{url}"\nbatch_interval = "20ms"\n[sources.stream]\ninterval = 0.002\n'
            'count = 1500\n[session]\nduration = "8s"\n')
        env = dict(os.environ, PYTHONPATH=str(site), FLOWTAP_DATA_DIR=str(tmp_path / "data"))
        run = subprocess.Popen([sys.executable, "-m", "flowtap", "run", "--plain", "--name", "stream"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(stored_paths(url)) >= 100)
            database.stop("immediate")
            time.sleep(1.0)  # flows keep coming meanwhile
            database.start()
            out, err = run.communicate(timeout=60)
        finally:
            run.kill()
        # The outage and its end were reported; nothing was lost, so the run ends clean.
        assert run.returncode == 0 and "capture goes on" in err and "is back" in err, (out, err)
        assert stored_paths(url) == [f"/stream/{n}" for n in range(1500)]
        with flowtap.open_store(url) as reader:
            assert reader.session("stream").flows == 1500


def test_a_run_that_ends_while_the_database_is_down_leaves_its_spool_for_store_sync(capsys):
    with server() as database:
        url = database.database()
        database.stop()
        with capture(config={"store": {"url": url, "body_file_threshold": "1kb"},
                             "session": {"name": "offline"}}) as cap:
            cap.feed(*[make_flow(url=f"https://api.test/{n}", response_body=b"x" * (5000 if n == 3 else 10))
                       for n in range(50)])
            cap.session.mark("while down")
        (store,) = [h for h in cap.capture.health() if h.name == "store"]
        assert store.missed == 0 and "`flowtap store sync`" in store.last_error
        (left,) = spool.spool_dir(url).glob("*.db")
        code, out, err = cli(capsys, "store", "sync", "--set", f"store.url={url}")
        assert code == 2 and "cannot reach the store" in err and left.exists()
        database.start()
        code, out, err = cli(capsys, "store", "sync", "--set", f"store.url={url}")
        assert code == 0 and "delivered 50 flows from 1 spools" in out, err
        assert not left.exists() and not db.bodies_dir(left).exists()
        with flowtap.open_store(url) as reader:
            session = reader.session("offline")
            assert session.state == "ended" and session.flows == 50
            assert [e.text for e in reader.events(session.id)] == ["while down"]
            flows = list(reader.flows())
        assert [f.request.path for f in flows] == [f"/{n}" for n in range(50)]
        assert flows[3].response.body == b"x" * 5000  # a body that was in a spool file, now in the row
        code, out, _ = cli(capsys, "store", "sync", "--set", f"store.url={url}")
        assert code == 0 and "nothing waits" in out


def test_a_damaged_leftover_spool_is_named_in_the_log_and_left_alone(pg_url, caplog):
    bad = spool.spool_dir(pg_url) / "0123456789ab.db"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a database" * 100)
    with capture(config={"store": {"url": pg_url}}) as cap:
        cap.feed(make_flow(url="https://api.test/ok"))
        wait_for(lambda: stored_paths(pg_url) == ["/ok"])
        wait_for(lambda: f"cannot deliver the spool {bad}" in caplog.text)
    assert bad.read_bytes() == b"not a database" * 100
    assert cap.capture.clean  # the run's own flows were not held up


def test_a_clear_forgets_the_flows_delivered_before_it(pg_url):
    config = {"store": {"url": pg_url, "batch_interval": "20ms"}, "session": {"name": "c"}}
    with capture(config=config) as cap:
        cap.feed(*[make_flow(url=f"https://api.test/before/{n}") for n in range(3)])
        wait_for(lambda: len(stored_paths(pg_url)) == 3)  # delivered before the clear
        cap.session.clear()
        cap.feed(*[make_flow(url=f"https://api.test/after/{n}") for n in range(2)])
    assert stored_paths(pg_url) == ["/after/0", "/after/1"]
    with flowtap.open_store(pg_url) as store:
        session = store.session("c")
        assert session.flows == store.count(session.id) == 2
        assert [e.kind for e in store.events(session.id)] == ["clear"]


def test_text_postgresql_cannot_hold_is_kept_whole_in_the_flow(pg_url):
    """PostgreSQL's text holds no NUL: the search columns get U+FFFD, the stored flow stays exact."""
    odd = make_flow(url="https://api.test/odd", request_headers=[("Host", "api.test\x00evil")])
    with capture(config={"store": {"url": pg_url}}) as cap:
        cap.feed(odd, make_flow(url="https://api.test/plain"))
    with flowtap.open_store(pg_url) as store:
        rows = list(store.rows())
        assert [r.host_header for r in rows] == ["api.test\ufffdevil", "api.test"]
        assert store.flow(odd.id) == odd
        assert cap.capture.clean


def test_a_slow_database_holds_up_neither_the_capture_nor_the_spool(pg_url):
    """While the flows table is locked (every insert waits), flows are spooled as fast as ever; they
    arrive when the lock goes."""
    import psycopg

    with capture(config={"store": {"url": pg_url, "batch_interval": "20ms"}}) as cap:
        cap.feed(make_flow(url="https://api.test/first"))
        wait_for(lambda: stored_paths(pg_url) == ["/first"])
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE flows IN ACCESS EXCLUSIVE MODE")  # until this transaction ends
            time.sleep(0.3)  # the delivery is waiting on the lock now
            cap.feed(*[make_flow(url=f"https://api.test/{n}") for n in range(500)], timeout=5)
            (store,) = [h for h in cap.capture.health() if h.name == "store"]
            assert (store.written, store.missed, store.backlog) == (501, 0, 0)
            (path,) = spool.spool_dir(pg_url).glob("*.db")

            def spooled():  # committed a batch at a time, the last within batch_interval
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                    return conn.execute("SELECT count(*) FROM flows").fetchone()[0]

            wait_for(lambda: spooled() == 500)
        wait_for(lambda: len(stored_paths(pg_url)) == 501)
    assert stored_paths(pg_url) == ["/first", *(f"/{n}" for n in range(500))]
    assert cap.capture.clean  # slow is not down: nothing to report


def test_several_runs_write_into_one_database_at_once(tmp_path, pg_url, capsys, data_dir):
    """Three `flowtap run` processes at once: every flow of each, in order, no id collides."""
    site = stream_source(tmp_path / "site")
    (tmp_path / "flowtap.toml").write_text(
        f'[store]\nurl = "{pg_url}"\n[sources.stream]\ninterval = 0.002\ncount = 300\n'
        '[session]\nduration = "4s"\n')
    env = dict(os.environ, PYTHONPATH=str(site))  # FLOWTAP_DATA_DIR: data_dir, short for the sockets
    runs = [subprocess.Popen([sys.executable, "-m", "flowtap", "run", "--name", f"run{i}"], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL) for i in range(3)]
    try:
        # `flowtap ctl status` names the database (without its password), not the spool.
        def status():
            done = flowtap_cli("ctl", "status", "--json", "--pid", str(runs[0].pid), env=env)
            assert runs[0].poll() is None, "the run ended before it answered"
            return done.returncode == 0 and json.loads(done.stdout)

        assert wait_for(status)["store"] == pg.redact(pg_url) and ":***@" in pg.redact(pg_url)
        errors = [run.communicate(timeout=60)[1] for run in runs]
    finally:
        for run in runs:
            run.kill()
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    with flowtap.open_store(pg_url) as store:
        sessions = store.sessions()
        assert sorted(s.name for s in sessions) == ["run0", "run1", "run2"]
        for session in sessions:
            assert session.flows == 300 and session.state == "ended"
            assert (session.machine, session.user) == (socket.gethostname(), getpass.getuser())
            assert [r.path for r in store.rows(session=session)] == [f"/stream/{n}" for n in range(300)]
        assert store.count() == len({r.id for r in store.rows()}) == 900
    code, out, _ = cli(capsys, "sessions", "--machine", socket.gethostname(), "--set", f"store.url={pg_url}")
    assert code == 0 and len(out.splitlines()) == 4  # a header and the three runs
    code, out, _ = cli(capsys, "sessions", "show", "run0", "--set", f"store.url={pg_url}")
    assert code == 0 and f"  recorded: on {socket.gethostname()} by {getpass.getuser()}\n" in out
    code, out, _ = cli(capsys, "sessions", "--machine", "elsewhere", "--set", f"store.url={pg_url}")
    assert code == 0 and out.strip() == "no sessions recorded on 'elsewhere'"
    code, out, _ = cli(capsys, "search", "--json", "--user", getpass.getuser(), "--session", "run1",
                       "--set", f"store.url={pg_url}")
    assert code == 0 and len(out.splitlines()) == 300
    code, out, _ = cli(capsys, "search", "--json", "--user", "nobody-else", "--set", f"store.url={pg_url}")
    assert code == 0 and out == ""


def test_sessions_record_machine_and_user_on_sqlite_too(tmp_path):
    path = tmp_path / "s.db"
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow())
    with flowtap.open_store(path) as store:
        session = store.session("last")
        assert (session.machine, session.user) == (socket.gethostname(), getpass.getuser())
        assert store.sessions(machine="elsewhere") == [] and len(store.sessions(user=session.user)) == 1
        assert list(store.rows(machine="elsewhere")) == []
        assert len(list(store.rows(machine=session.machine))) == 1


def test_migrations_from_empty_from_the_previous_schema_and_by_several_machines_at_once(pg_server):
    import psycopg

    # The previous schema, with a session recorded in it.
    url = pg_server.database()
    with psycopg.connect(url, autocommit=True) as conn:
        pg.migrate(conn, url, upto=2)
        conn.execute("INSERT INTO sessions (id, name, started, state) VALUES ('old', 'old', 1, 'ended')")
    pg.connect(url, write=True).close()
    with flowtap.open_store(url) as store:
        old = store.session("old")
        assert (old.name, old.machine, old.user) == ("old", "", "")
    # An empty database, upgraded by eight writers at once: each step is applied once.
    url = pg_server.database()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            pg.connect(url, write=True).close()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM flowtap_schema ORDER BY version").fetchall() == [
            (v,) for v in range(1, db.VERSION + 1)]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'flows'")}
    assert {"flows_uid", "flows_host", "flows_method", "flows_status", "flows_time"} <= indexes
    # A database written by a newer flowtap is refused, not changed.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO flowtap_schema (version) VALUES (99)")
    with pytest.raises(StoreError, match="newer flowtap"):
        flowtap.open_store(url)


def test_store_copy_moves_sessions_either_way_and_resumes(tmp_path, pg_url, capsys):
    local = tmp_path / "mine.db"
    with capture(config={"store": {"path": str(local), "body_file_threshold": "1kb"},
                         "session": {"name": "laptop"}}) as cap:
        cap.feed(make_flow(url="https://api.test/a"),
                 make_flow(url="https://api.test/big", response_body=b"y" * 4000))
        cap.session.mark("halfway")
        cap.feed(make_flow(url="https://api.test/c", method="POST", request_body=b"\x00\xff"))
    with flowtap.open_store(local) as store:
        originals = list(store.flows())
    code, out, err = cli(capsys, "store", "copy", "--from", str(local), "--to", pg_url)
    assert code == 0 and "copied 1 sessions (3 flows)" in out, err
    code, out, err = cli(capsys, "store", "copy", "--from", str(local), "--to", pg_url)
    assert code == 0  # again: nothing doubles (checked below)
    with flowtap.open_store(pg_url) as store:
        assert list(store.flows()) == originals
        (session,) = store.sessions()
        assert session.name == "laptop" and [e.text for e in store.events(session.id)] == ["halfway"]
    back = tmp_path / "back.db"
    code, out, err = cli(capsys, "store", "copy", "--from", pg_url, "--to", str(back))
    assert code == 0, err
    cli(capsys, "store", "copy", "--from", pg_url, "--to", str(back))
    with flowtap.open_store(back) as store:
        assert list(store.flows()) == originals and store.session("laptop").flows == 3
    code, _, err = cli(capsys, "store", "copy", "--from", str(local), "--to", str(local))
    assert code == 2 and "the same store" in err


def test_errors_name_the_database_and_what_to_do(tmp_path, capsys, monkeypatch):
    code, _, err = cli(capsys, "sessions", "--set", "store.url=mysql://x/y")
    assert code == 2 and "expected a PostgreSQL URL" in err and err.count("\n") == 1
    unreachable = "postgresql://app:secret@127.0.0.1:1/none?connect_timeout=2"
    code, _, err = cli(capsys, "sessions", "--set", f"store.url={unreachable}")
    assert code == 2 and "cannot reach the store" in err and "secret" not in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    code, _, err = cli(capsys, "search", "--set", f"store.url={unreachable}")
    assert code == 2 and "pip install 'flowtap[postgres]'" in err
    with pytest.raises(flowtap.StartupError, match=r"sink 'store': .*pip install 'flowtap\[postgres\]'"):
        with capture(config={"store": {"url": unreachable}}):
            pass


def test_an_empty_database_has_no_sessions_yet(pg_url, capsys):
    code, out, _ = cli(capsys, "sessions", "--set", f"store.url={pg_url}")
    assert code == 0 and "no sessions recorded yet" in out and "app:app" not in out


def test_the_web_ui_reads_and_manages_a_postgresql_store(pg_url):
    """The web UI's API over a team store: sessions (none yet, then one), filtered keyset pages, a
    flow, rename, delete; the database's password never reaches the page."""
    httpx = pytest.importorskip("httpx")
    from flowtap.config import Config
    from flowtap_web import service

    server = service.make_server({"host": "127.0.0.1", "port": 0, "allowed_hosts": []},
                                 Config.from_dict({"store": {"url": pg_url}}))
    url = server.start()
    base = url.split("/?", 1)[0]
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=10, headers={"Origin": base}) as web:
            assert web.get("/", params={"token": url.split("token=")[1]}).status_code == 302
            listing = web.get("/api/sessions").json()
            assert listing == {"sessions": [], "store": pg.redact(pg_url)} and "app:app" not in str(listing)
            with capture(config={"store": {"url": pg_url}, "session": {"name": "web-pg"}}) as cap:
                cap.feed(make_flow(url="https://api.test/a"),
                         make_flow(url="https://api.test/b", method="POST"), make_flow(url="https://api.test/c"))
            (session,) = web.get("/api/sessions").json()["sessions"]
            assert session["name"] == "web-pg" and session["flows"] == 3
            sid = session["id"]
            posts = web.get(f"/api/sessions/{sid}/flows", params={"filter": "~m POST"}).json()["rows"]
            assert [row["path"] for row in posts] == ["/b"]
            first = web.get(f"/api/sessions/{sid}/flows", params={"methods": "GET", "limit": "1"}).json()
            assert [row["path"] for row in first["rows"]] == ["/a"] and first["more"]
            after = web.get(f"/api/sessions/{sid}/flows",
                            params={"methods": "GET", "after": str(first["rows"][0]["seq"])}).json()
            assert [row["path"] for row in after["rows"]] == ["/c"] and not after["more"]
            assert web.get(f"/api/flows/{posts[0]['id']}").status_code == 200
            live = web.get(f"/api/sessions/{sid}/live", params={"after": "0"})  # ended: one event, then done
            news = [json.loads(line[6:]) for line in live.text.splitlines() if line.startswith("data: ")]
            assert [row["path"] for row in news[0]["rows"]] == ["/a", "/b", "/c"]
            assert web.patch(f"/api/sessions/{sid}", json={"name": "renamed"}).status_code == 200
            assert web.get("/api/sessions").json()["sessions"][0]["name"] == "renamed"
            assert web.delete(f"/api/sessions/{sid}").status_code == 200
            assert web.get("/api/sessions").json()["sessions"] == []
    finally:
        server.stop()


def test_another_machines_run_that_fell_silent_reads_as_interrupted(pg_url, capsys):
    """Its process cannot be asked: the heartbeat (seen) the spool delivers tells everyone else."""
    import psycopg

    config = {"store": {"url": pg_url, "batch_interval": "20ms"}, "session": {"name": "far"}}
    started = time.time()
    with capture(config=config) as cap:
        cap.feed(make_flow())
        wait_for(lambda: len(stored_paths(pg_url)) == 1)
    with flowtap.open_store(pg_url) as store:
        assert started <= store.session("far").seen <= time.time()  # delivered with the session

    def listed(seen: float) -> str:
        with psycopg.connect(pg_url, autocommit=True) as conn:  # as a run on another machine left it
            conn.execute("UPDATE sessions SET state = 'running', ended = NULL, machine = 'elsewhere', "
                         "seen = %s WHERE name = 'far'", (seen,))
        code, out, _ = cli(capsys, "sessions", "--set", f"store.url={pg_url}")
        assert code == 0
        return next(line for line in out.splitlines() if "far" in line)

    assert " running " in listed(time.time())
    code, _, err = cli(capsys, "sessions", "delete", "far", "--set", f"store.url={pg_url}")
    assert code != 0 and "is being recorded by pid" in err and "on elsewhere" in err
    assert " interrupted " in listed(time.time() - db.STALE - 5)
    code, out, _ = cli(capsys, "sessions", "show", "far", "--set", f"store.url={pg_url}")
    assert code == 0 and "  state:    interrupted\n" in out
    assert "ago), its run's last sign of life\n" in out
    code, _, err = cli(capsys, "sessions", "delete", "far", "--set", f"store.url={pg_url}")
    assert code == 0, err  # a dead run's session no longer waits forever for its end
    with flowtap.open_store(pg_url) as store:
        assert store.sessions() == []
