#!/usr/bin/env python3
"""The OpenAPI sink: export time and memory against flow count, and its CPU cost live. Run by hand.

    python benchmarks/openapi.py [--flows 10000 100000] [--requests 3000] [--reps 3] [--skip-proxy]

1. Export: for each count, a store holding that many flows over 50 endpoints (10
   resources: list, get by id, create, delete, nested events with a query; JSON bodies
   whose values vary) is exported with ``flowtap export --sink openapi`` in a fresh
   process: wall time, CPU time and the process's peak RSS; "(no sink)" is the CPU time of the
   same export through the cookie jar sink, which does next to nothing per flow: what reading
   the store and feeding a sink cost, whatever the sink. Then the sink alone, fed the
   same flows in this process: µs of CPU per flow, and the memory it holds (tracemalloc)
   after half of the flows and after all of them, which must be about the same once
   flowtap's bounded caches (segment kinds: 4,096; split URLs and query strings: 1,024 each) have
   filled, in the first few thousand flows.
2. Live (needs ``hey`` and ``nginx``): ``flowtap run`` with the proxy and no store, with
   and without ``[sinks.openapi]``, ``hey -c 20`` through it to nginx (small JSON); the
   flowtap process's CPU per request, best of ``--reps`` alternated runs each. The issue
   asks for at most 5% more.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import flowtap
from flowtap.session import Session
from flowtap.store.sink import StoreSink
from flowtap.testing import make_flow

# benchmarks/proxy.py, beside this script
from proxy import BIN, BODY, cpu_seconds, flowtap_env, free_port, hey, start_nginx, wait_port

RESOURCES = ("users", "orders", "products", "invoices", "carts", "reviews", "shipments", "coupons", "teams",
             "projects")
STATES = ("open", "paid", "shipped", "closed")
#: ``flowtap ARGS`` in a process that prints its peak RSS (KiB) last.
EXPORT = ("import resource, sys\nfrom flowtap.cli import main\ncode = main(sys.argv[1:])\n"
          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)")


def flows(count: int, seed: int = 7) -> Iterator[flowtap.Flow]:
    """``count`` flows over 50 endpoints (5 per resource), bodies whose values vary."""
    rng = random.Random(seed)
    for i in range(count):
        resource_name = RESOURCES[i % len(RESOURCES)]
        n = rng.randrange(1, 10**6)
        item = {"id": n, "name": f"{resource_name} {n}", "state": STATES[n % 4], "total": n / 100,
                "created": "2024-05-01T10:00:00Z", "owner": {"id": n % 97, "email": f"u{n % 97}@example.com"},
                "tags": [f"t{k}" for k in range(n % 4)], "note": None if n % 3 else "fragile"}
        kind = (i // len(RESOURCES)) % 5
        base = f"https://api.example.com/v1/{resource_name}"
        if kind == 0:
            flow = make_flow(url=f"{base}?page={n % 9}", response_body=json.dumps({"items": [item] * 3}))
        elif kind == 1:
            flow = make_flow(url=f"{base}/{n}", response_body=json.dumps(item),
                             status=404 if n % 20 == 0 else 200)
        elif kind == 2:
            flow = make_flow(url=base, method="POST", status=201, response_body=json.dumps(item),
                             request_body=json.dumps({"name": item["name"]}))
        elif kind == 3:
            flow = make_flow(url=f"{base}/{n}", method="DELETE", status=204, response_body=b"",
                             response_headers=[("Content-Length", "0")])
        else:
            events = [{"at": "2024-05-01T10:00:00Z", "what": STATES[n % 4]}]
            flow = make_flow(url=f"{base}/{n}/events?since=2024-05-0{n % 9 + 1}",
                             response_body=json.dumps(events))
        flow.request.headers = flowtap.Headers([*flow.request.headers, ("Authorization", f"Bearer tok{n}")])
        yield flow


def fill(path: Path, count: int) -> None:
    """A store at ``path`` with one session, "bench", of ``count`` flows."""
    sink = StoreSink({"path": str(path), "body_file_threshold": 256 * 1024, "batch_interval": 0})
    session = Session(name="bench")
    sink.open(session)
    sink.flowtap_session_start(session)
    for number, flow in enumerate(flows(count), 1):
        sink.write(flow)
        session.counts.recorded += 1
        session.counts.received += 1
        if number % 256 == 0:
            sink.flush()
    session.end(wait=False)
    sink.close()


def export(tmp: Path, count: int) -> dict[str, float]:
    """``flowtap export`` of a store of ``count`` flows in a fresh process: seconds, CPU, peak RSS; and
    the CPU of the same export through the cookie jar sink, which does next to nothing per flow
    (what reading the store and feeding a sink cost)."""
    store = tmp / f"store-{count}.db"
    fill(store, count)
    out = tmp / f"export-{count}.yaml"
    done = run_export(tmp, store, "openapi", out)
    done["paths"] = out.read_text().count("\n  /v1/")
    done["baseline"] = run_export(tmp, store, "cookiejar", tmp / f"cookies-{count}.txt")["cpu"]
    return done


def run_export(tmp: Path, store: Path, sink: str, out: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", EXPORT, "--set", f"store.path={store}", "export", "bench",
                           "--sink", sink, "-o", str(out)],
                          check=True, capture_output=True, text=True, env=flowtap_env(tmp))
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "rss": int(done.stdout.split()[-1]) / 1024}


def sink_alone(tmp: Path, count: int) -> dict[str, float]:
    """The sink fed ``count`` flows on this thread: µs CPU per flow, and the KiB it holds (tracemalloc)
    after half of them and after all: the second must not be larger than the first."""
    from flowtap_openapi.sink import OpenAPISink

    options = {"path": str(tmp / f"alone-{count}.yaml"), "title": "", "origins": [], "assets": False}
    sink = OpenAPISink(options)
    sink.open(Session(name="alone"))
    batch = list(flows(min(count, 20_000)))
    began = time.process_time()
    for number in range(count):
        sink.write(batch[number % len(batch)])
    cpu = time.process_time() - began
    del batch
    sink = OpenAPISink(options)
    sink.open(Session(name="alone"))
    held = []
    tracemalloc.start()
    for number, flow in enumerate(flows(count), 1):
        sink.write(flow)
        if number in (count // 2, count):
            held.append(tracemalloc.get_traced_memory()[0] / 1024)  # the sink's state (and one flow)
    tracemalloc.stop()
    sink.close()
    return {"us": cpu / count * 1e6, "half": held[0], "kib": held[-1]}


def live(tmp: Path, requests: int, reps: int) -> None:
    if not (shutil.which("hey") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        print("live: skipped (needs hey and nginx: apt-get install hey nginx-light)")
        return
    http_port = free_port()
    nginx = start_nginx(tmp, http_port, free_port())
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    try:
        for rep in range(reps):
            for label in cpu:
                cpu[label].append(run_proxy(tmp, http_port, requests, label == "with", f"{label}-{rep}"))
    finally:
        nginx.terminate()
        nginx.wait(10)
    without, with_ = min(cpu["without"]), min(cpu["with"])
    for label, values in cpu.items():
        print(f"live, {label:7} the sink: {min(values):5.2f} ms CPU/request (best of {reps}; all: "
              f"{', '.join(f'{v:.2f}' for v in values)})")
    print(f"live: the sink adds {100 * (with_ / without - 1):+.1f}% CPU per request (target: at most +5%)")
    alone = live_flow_cost(tmp)
    print(f"live, the sink alone on the same flow: {alone:.1f} µs CPU per flow = {alone / 10 / without:.1f}% "
          f"of the proxy's CPU per request without it (steadier than the difference above on a busy machine)")


def live_flow_cost(tmp: Path, count: int = 20_000) -> float:
    """µs of CPU the sink spends on the flow the live runs make (nginx's small JSON), on this thread."""
    from flowtap_openapi.sink import OpenAPISink

    sink = OpenAPISink({"path": str(tmp / "small.yaml"), "title": "", "origins": [], "assets": False})
    sink.open(Session(name="small"))
    batch = [make_flow(url="http://127.0.0.1:8080/v1/users/42", response_body=BODY,
                       request_headers=[("Host", "127.0.0.1:8080"), ("User-Agent", "hey/0.0.1")],
                       response_headers=[("Content-Type", "application/json"),
                                         ("Set-Cookie", "visit=1; Path=/")])
             for _ in range(count)]
    began = time.process_time()
    for flow in batch:
        sink.write(flow)
    return (time.process_time() - began) / count * 1e6


def run_proxy(tmp: Path, upstream: int, requests: int, with_sink: bool, tag: str) -> float:
    """One ``flowtap run`` under ``hey``: the flowtap process's ms of CPU per request."""
    listen = free_port()
    config = tmp / f"live-{tag}.toml"
    config.write_text(f'[sources.proxy]\nlisten = "127.0.0.1:{listen}"\n[store]\nenabled = false\n'
                      + (f'[sinks.openapi]\npath = "{tmp}/live-{tag}.yaml"\n' if with_sink else ""))
    proc = subprocess.Popen([str(BIN / "flowtap"), "-c", str(config), "run", "--quiet"], cwd=tmp,
                            env=flowtap_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        wait_port(listen, proc)
        url = f"http://127.0.0.1:{upstream}/v1/users/42"
        hey(url, 200, 20, listen)  # warm up
        before = cpu_seconds(proc.pid)
        hey(url, requests, 20, listen)
        return (cpu_seconds(proc.pid) - before) / requests * 1000
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[10_000, 100_000],
                        help="flow counts to export")
    parser.add_argument("--requests", type=int, default=3000, help="requests per live measurement")
    parser.add_argument("--reps", type=int, default=3, help="alternated live runs with and without the sink")
    parser.add_argument("--skip-proxy", action="store_true", help="skip the live measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowtap-bench-openapi-") as name:
        tmp = Path(name)
        print(f"{'flows':>8} {'export s':>9} {'CPU s':>7} {'(no sink)':>9} {'peak RSS MiB':>13} {'paths':>6} "
              f"{'sink µs/flow':>13} {'sink KiB at 50%':>16} {'at 100%':>8}")
        for count in args.flows:
            done, alone = export(tmp, count), sink_alone(tmp, count)
            print(f"{count:8} {done['wall']:9.2f} {done['cpu']:7.2f} {done['baseline']:9.2f}"
                  f" {done['rss']:13.0f} {done['paths']:6.0f} "
                  f"{alone['us']:13.1f} {alone['half']:16.0f} {alone['kib']:8.0f}")
        if not args.skip_proxy:
            live(tmp, args.requests, args.reps)


if __name__ == "__main__":
    sys.exit(main())
