#!/usr/bin/env python3
"""The team store on PostgreSQL against the SQLite store. Run by hand, not by CI.

    python benchmarks/postgres.py [--url postgresql://...] [--runs 4] [--requests 5000] [--flows 1000000]
                                  [--skip-proxy] [--skip-search]

1. Concurrent runs: ``--runs`` ``flowtap run`` processes with the proxy source, each driven
   by ``hey -c 10`` to nginx at once, all writing into one store: first one SQLite file, then
   one PostgreSQL database. Each run's requests/s, and whether every request is in the store
   (flow counts per session) when the runs end. Needs ``hey`` and ``nginx``.
2. Search over a store of ``--flows`` flows (written with SQL, in bulk: 100 hosts, 10
   sessions), on both backends: a host filter, a URL regex, ``sessions``; best of 3, in ms.

Without ``--url``, a throwaway server is started with tests/postgres.py (Debian's
``postgresql``; as root it runs as the ``postgres`` user) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from store import BODY, best  # benchmarks/store.py

import flowtap
from flowtap.store import backend_postgres as pg, db

from proxy import free_port, hey, wait_port  # benchmarks/proxy.py, beside this script

ROOT = Path(__file__).resolve().parent.parent


# -- concurrent runs -------------------------------------------------------------------------------


def start_nginx(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (tmp / "nginx").mkdir()
    conf = tmp / "nginx" / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 2; pid {tmp}/nginx/pid; error_log {tmp}/nginx/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {tmp}/nginx;
  proxy_temp_path {tmp}/nginx; fastcgi_temp_path {tmp}/nginx; uwsgi_temp_path {tmp}/nginx;
  scgi_temp_path {tmp}/nginx;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{BODY}'; }} }} }}
""")
    proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p",
                             str(tmp / "nginx")], stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def concurrent_runs(tmp: Path, upstream: int, store: list[str], label: str, runs: int,
                    requests: int) -> list[dict]:
    """``runs`` captures at once into the store ``store`` (``--set`` arguments); each one's numbers."""
    procs, ports = [], []
    for i in range(runs):
        port = free_port()
        env = dict(os.environ, FLOWTAP_DATA_DIR=str(tmp / f"data-{label}-{i}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "flowtap", "--set", f"sources.proxy.listen=127.0.0.1:{port}", *store,
             "run", "--plain", "--name", f"{label}-{i}"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL))
        ports.append(port)
    results: list[dict] = [{} for _ in range(runs)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_port(port, proc)
        url = f"http://127.0.0.1:{upstream}/json"

        def drive(i: int) -> None:
            results[i] = hey(url, requests, 10, ports[i])

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(runs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(120)
    finally:
        for proc in procs:
            proc.kill()
    location = store[1].split("=", 1)[1]
    with flowtap.open_store(location) as reader:
        for i in range(runs):
            results[i]["stored"] = reader.session(f"{label}-{i}").flows
            results[i]["exit"] = procs[i].returncode
    return results


def bench_runs(tmp: Path, url: str, runs: int, requests: int) -> None:
    if not (shutil.which("hey") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        print("concurrent runs: skipped (needs hey and nginx: apt-get install hey nginx-light)")
        return
    nginx, upstream = start_nginx(tmp)
    try:
        sqlite = concurrent_runs(tmp, upstream, ["--set", f"store.path={tmp / 'runs.db'}"], "sqlite", runs,
                                 requests)
        postgres = concurrent_runs(tmp, upstream, ["--set", f"store.url={url}"], "postgres", runs, requests)
    finally:
        nginx.terminate()
        nginx.wait(10)
    print(f"concurrent runs: {runs} runs x {requests} requests (hey -c 10 each), all at once, one store")
    for label, results in (("sqlite", sqlite), ("postgres", postgres)):
        for i, r in enumerate(results):
            print(f"  {label:8} run {i}: {r['rps']:7.0f} req/s  p99 {r['p99']:6.1f} ms  stored "
                  f"{r['stored']}/{requests}  exit {r['exit']}")
    total = {label: sum(r["rps"] for r in results) for label, results in (("sqlite", sqlite),
                                                                         ("postgres", postgres))}
    lost = sum(requests - r["stored"] for r in postgres)
    print(f"  postgres/sqlite req/s: {total['postgres'] / total['sqlite']:.2f}x (target >= 0.90); "
          f"flows lost into postgres: {lost}")


# -- search over a big store --------------------------------------------------------------------------

#: One flows row per number {n}, the same on both backends (SQL both read).
_ROW = ("'f' || {n}", "'s' || ({n} % 10)", "1700000000.0 + {n}",
        "CASE WHEN {n} % 5 = 0 THEN 'POST' ELSE 'GET' END", "'https'", "'host' || ({n} % 100) || '.test'",
        "'host' || ({n} % 100) || '.test'", "443", "'/api/items/' || {n} || '?page=2'",
        "'https://host' || ({n} % 100) || '.test/api/items/' || {n} || '?page=2'", "NULL",
        "CASE WHEN {n} % 50 = 0 THEN 500 ELSE 200 END", "''", "'application/json'", "0", "700", "12.5",
        "'proxy'", "NULL", "NULL", "0")


def fill_sql(execute, n: int, postgres: bool) -> None:
    """``n`` flows and 10 sessions, written with SQL in bulk (what a store of a team's year looks like)."""
    columns = ", ".join(c for c in db.FLOW_COLUMNS if c != "seq")
    numbers = ("SELECT n FROM generate_series(1, {n}) AS n" if postgres else
               "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {n}) "
               "SELECT n FROM g")
    for s in range(10):
        execute(f"INSERT INTO sessions (id, name, started, ended, state) VALUES ('s{s}', 'bench {s}', "
                f"{1700000000 + s}, {1700000000 + s + 1}, 'ended')")
    step = 200_000
    for start in range(0, n, step):
        count = min(step, n - start)
        rows = numbers.format(n=count)
        values = ", ".join(v.format(n=f"(n + {start})") for v in _ROW)
        execute(f"INSERT INTO flows ({columns}{'' if postgres else ', seq'}) SELECT {values}"
                f"{'' if postgres else f', n + {start}'} FROM ({rows}) AS g")
    execute("INSERT INTO contents (seq, data) SELECT seq, '{}' FROM flows")
    if postgres:  # what the writers keep (spool.insert_flows)
        execute("UPDATE sessions s SET stored = (SELECT count(*) FROM flows WHERE session = s.id)")


def bench_search(tmp: Path, url: str, n: int) -> None:
    import psycopg

    path = tmp / "search.db"
    conn = db.connect(path, write=True)
    t = time.perf_counter()
    with db.transaction(conn):
        fill_sql(conn.execute, n, postgres=False)
    conn.close()
    sqlite_fill = time.perf_counter() - t
    pg.connect(url, write=True).close()
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as pconn:
        with pconn.transaction():
            pconn.execute("DELETE FROM sessions")
            fill_sql(pconn.execute, n, postgres=True)
        pconn.execute("VACUUM ANALYZE")
    pg_fill = time.perf_counter() - t
    print(f"search: a store of {n:,} flows (written with SQL: sqlite {sqlite_fill:.1f}s, postgres "
          f"{pg_fill:.1f}s incl. indexes); best of 3")
    targets = {"host filter": 100, "URL regex": 1000, "sessions": 100}
    for label, location in (("sqlite", path), ("postgres", url)):
        with flowtap.open_store(location) as store:
            for what, run in (
                ("host filter", lambda s=store: sum(1 for _ in s.rows("~d host7.test"))),
                ("URL regex", lambda s=store: sum(1 for _ in s.rows("~u /items/4242"))),
                ("method, host, limit 50", lambda s=store: sum(
                    1 for _ in s.rows("~m POST & ~d host3", limit=50, newest_first=True))),
                ("sessions", lambda s=store: len(s.sessions())),
            ):
                ms, count = best(run)
                target = targets.get(what)
                verdict = ("" if target is None else
                           f"  (target < {target} ms: {'ok' if ms < target else 'MISSED'})")
                print(f"  {label:8} {what:24} {count:7} found  {ms:8.1f} ms{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an empty PostgreSQL database to use (default: a throwaway server)")
    parser.add_argument("--runs", type=int, default=4, help="concurrent flowtap runs")
    parser.add_argument("--requests", type=int, default=5000, help="requests through each run's proxy")
    parser.add_argument("--flows", type=int, default=1_000_000, help="flows in the search store")
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowtap-bench-pg-"))
    server = None
    try:
        if args.url:
            url = search_url = args.url
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from postgres import Server

            server = Server()
            url, search_url = server.database(), server.database()
        if not args.skip_proxy:
            bench_runs(tmp, url, args.runs, args.requests)
        if not args.skip_search:
            bench_search(tmp, search_url, args.flows)
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
