#!/usr/bin/env python3
"""The session store: insert rate, search time, export time. Run by hand, not by CI.

    python benchmarks/store.py [--flows 100000] [--export 10000] [--requests 5000] [--skip-proxy]

1. Insert: flows/s and CPU µs per flow into the store sink alone (write + flush in
   batches of 256, as the dispatcher calls it) and through a Capture (the dispatcher
   thread and its queue).
2. While the proxy runs: ``flowtap run`` with the proxy source, ``hey -c 20`` through
   it to nginx, with the store off and on: requests/s, the proxy process's CPU per
   request, and whether every request is in the store when the run ends (needs
   ``hey`` and ``nginx``; skipped without them).
3. Search over a store of ``--flows`` flows: a host filter, a status, a method and
   host, a body regex, a header regex; best of 3, in ms.
4. Export of ``--export`` flows to HAR through ``flowtap export`` (in-process).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flowtap
from flowtap.session import Session
from flowtap.store.sink import StoreSink
from flowtap.testing import make_flow

from proxy import cpu_seconds, free_port, wait_port  # benchmarks/proxy.py, beside this script

BODY = json.dumps({"items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(15)]})


def flows(n: int, start: int = 0) -> list[flowtap.Flow]:
    """Realistic small JSON API flows over 100 hosts; one in 1,000 bodies holds "needle"."""
    out = []
    for i in range(start, start + n):
        host = f"host{i % 100}.test"
        body = BODY if i % 1000 else BODY.replace("item 3", "needle 3")
        out.append(make_flow(
            url=f"https://{host}/api/items/{i}?page=2", method="POST" if i % 5 == 0 else "GET",
            status=500 if i % 50 == 0 else 200, response_body=body,
            request_headers=[("Host", host), ("User-Agent", "bench/1.0"), ("Accept", "application/json"),
                             ("X-Request-Id", str(i)), ("Cookie", "session=abc123; theme=dark")],
            response_headers=[("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("Server", "bench"), ("Set-Cookie", "x=1; Path=/")]))
    return out


def fill(path: Path, n: int, name: str = "bench") -> tuple[float, float]:
    """Write ``n`` flows through the store sink; (wall seconds, CPU seconds)."""
    sink = StoreSink({"path": str(path), "body_file_threshold": 256 * 1024, "batch_interval": 0})
    session = Session(name=name)
    sink.open(session)
    sink.flowtap_session_start(session)
    wall = cpu = 0.0
    for chunk in range(0, n, 10_000):
        batch = flows(min(10_000, n - chunk), chunk)
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(batch), 256):
            for flow in batch[i:i + 256]:
                sink.write(flow)
                session.counts.recorded += 1
                session.counts.received += 1
            sink.flush()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    session.end(wait=False)
    sink.close()
    return wall, cpu


def bench_insert(tmp: Path, n: int = 20_000) -> None:
    wall, cpu = fill(tmp / "insert.db", n)
    print(f"insert, sink alone:        {n / wall:8.0f} flows/s  {cpu / n * 1e6:6.1f} µs CPU/flow")
    batch = flows(n)
    with flowtap.testing.capture(config={"store": {"path": str(tmp / "capture.db")}}, record=False) as cap:
        t, c = time.perf_counter(), time.process_time()
        cap.feed(*batch, timeout=300)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"insert, through a Capture: {n / wall:8.0f} flows/s  "
          f"{cpu / n * 1e6:6.1f} µs CPU/flow (whole process)")


# -- the proxy under load ---------------------------------------------------------------------


def bench_proxy(tmp: Path, requests: int) -> None:
    if not (shutil.which("hey") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        print("proxy: skipped (needs hey and nginx: apt-get install hey nginx-light)")
        return
    port = free_port()
    (tmp / "nginx").mkdir()
    conf = tmp / "nginx" / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {tmp}/nginx/pid; error_log {tmp}/nginx/error.log;
events {{}}
http {{ access_log off; client_body_temp_path {tmp}/nginx; proxy_temp_path {tmp}/nginx;
  fastcgi_temp_path {tmp}/nginx; uwsgi_temp_path {tmp}/nginx; scgi_temp_path {tmp}/nginx;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{BODY}'; }} }} }}
""")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p",
                              str(tmp / "nginx")],
                             stderr=subprocess.DEVNULL)
    try:
        wait_port(port, nginx)
        results = {}
        for label, overrides in (("store off", ["--set", "store.enabled=false"]), ("store on", [])):
            results[label] = run_proxy(tmp, port, requests, label, overrides)
    finally:
        nginx.terminate()
        nginx.wait(10)
    off, on = results["store off"], results["store on"]
    for label, r in results.items():
        print(f"proxy, {label:9}: {r['rps']:7.0f} req/s  {r['cpu_ms']:5.2f} ms CPU/request  "
              f"stored {r['stored']}/{requests}  exit after SIGINT {r['exit_s']:.2f}s")
    print(f"proxy, store on/off: {on['rps'] / off['rps']:.2f}x req/s, "
          f"{on['cpu_ms'] / off['cpu_ms']:.2f}x CPU/request")


def run_proxy(tmp: Path, upstream: int, requests: int, label: str, overrides: list[str]) -> dict:
    listen = free_port()
    db = tmp / f"proxy-{label.replace(' ', '-')}.db"
    cmd = [sys.executable, "-m", "flowtap", "--set", f"sources.proxy.listen=127.0.0.1:{listen}",
           "--set", f"store.path={db}", *overrides, "run", "--plain", "--name", label]
    env = dict(os.environ, FLOWTAP_DATA_DIR=str(tmp / "data"))
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        wait_port(listen, proc)
        url = f"http://127.0.0.1:{upstream}/json"
        subprocess.run(["hey", "-n", "200", "-c", "20", "-x", f"http://127.0.0.1:{listen}", url],
                       capture_output=True, check=True)  # warm up
        cpu = cpu_seconds(proc.pid)
        out = subprocess.run(["hey", "-n", str(requests), "-c", "20", "-x", f"http://127.0.0.1:{listen}",
                              url],
                             capture_output=True, text=True, check=True).stdout
        cpu = cpu_seconds(proc.pid) - cpu
        rps = float(next(line.split()[-1] for line in out.splitlines() if "Requests/sec" in line))
        t = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        exit_s = time.perf_counter() - t
    finally:
        proc.kill()
    stored = 0
    if db.exists():
        with flowtap.open_store(db) as store:
            stored = store.count(store.session(label).id) - 200
    return {"rps": rps, "cpu_ms": cpu / requests * 1000, "stored": stored, "exit_s": exit_s}


# -- search and export ---------------------------------------------------------------------------


def best(fn, reps: int = 3) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000, result


def bench_search(tmp: Path, n: int) -> None:
    path = tmp / "search.db"
    wall, _ = fill(path, n)
    print(f"search: a store of {n} flows ({path.stat().st_size / 1e6:.0f} MB, written in {wall:.1f}s)")
    with flowtap.open_store(path) as store:
        for expression, what in [
            ("~d host7.test", "host filter"),
            ("~c 500", "status"),
            ("~m POST & ~d host3", "method and host"),
            ("~u /items/4242", "URL regex"),
            ("~b needle", "body regex"),
            (r"~h 'X-Request-Id: 4242\r'", "header regex"),
        ]:
            ms, count = best(lambda expression=expression: sum(1 for _ in store.rows(expression)))
            print(f"  {what:24} {expression!r:30} {count:6} flows  {ms:7.1f} ms")
        ms, count = best(lambda: sum(1 for _ in store.flows("~d host7.test")))
        print(f"  {'host filter, whole flows':24} {'~d host7.test':30} {count:6} flows  {ms:7.1f} ms")


def bench_export(tmp: Path, n: int) -> None:
    from flowtap.cli import main

    path = tmp / "export.db"
    fill(path, n, name="export")
    capture = flowtap.Capture()
    if "har" not in capture.sink_factories:
        print("export: pending (the har sink is not installed)")
        return
    out = tmp / "export.har"
    t = time.perf_counter()
    code = main(["--set", f"store.path={path}", "export", "export", "--sink", "har", "-o", str(out)])
    seconds = time.perf_counter() - t
    entries = len(json.loads(out.read_text())["log"]["entries"]) if code == 0 else 0
    print(f"export: {entries} flows to HAR in {seconds:.2f}s ({entries / seconds:.0f} flows/s, "
          f"{out.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000, help="flows in the search store")
    parser.add_argument("--export", type=int, default=10_000, help="flows to export to HAR")
    parser.add_argument("--requests", type=int, default=5000, help="requests through the proxy")
    parser.add_argument("--skip-proxy", action="store_true", help="skip the proxy under load")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowtap-bench-"))
    os.environ["FLOWTAP_DATA_DIR"] = str(tmp / "data")
    try:
        bench_insert(tmp)
        if not args.skip_proxy:
            bench_proxy(tmp, args.requests)
        bench_search(tmp, args.flows)
        bench_export(tmp, args.export)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
