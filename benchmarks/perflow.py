#!/usr/bin/env python3
"""CPU per flow of flowtap's own work, without the network: convert + every sink + the store.

    python benchmarks/perflow.py [--flows 20000] [--profile out.prof]

Builds mitmproxy flows shaped like those ``benchmarks/proxy.py`` drives (a
small JSON GET through a proxy, ``Set-Cookie`` in the response), converts
each with the proxy addon's converter, and hands it to a started capture's
dispatcher the way its thread does (``_on_flow`` per flow, the batch handed
to the sinks every ``--batch``), but on this thread so that ``--profile``
(cProfile) sees the dispatching. Prints microseconds of CPU per flow:
converting, dispatching (filters, cookies, handing over), the threads that
run the sinks (their writes and flushes; named after the sink when one has a
thread alone), and the whole process.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import tempfile
import time
from pathlib import Path

from flowtap.dispatch import BATCH

BODY = b'{"id": 1, "name": "flowtap", "tags": ["a", "b"], "ok": true}'


def mitm_flows(count: int):
    from mitmproxy import http
    from mitmproxy.test import tflow

    now = time.time()
    for _ in range(count):
        f = tflow.tflow()
        f.request = http.Request.make("GET", "http://127.0.0.1:8080/api/items", b"",
                                      [(b"Host", b"127.0.0.1:8080"), (b"User-Agent", b"hey/0.0.1"),
                                       (b"Content-Type", b"text/html"), (b"Accept-Encoding", b"gzip")])
        f.request.timestamp_start, f.request.timestamp_end = now, now + 0.0001
        f.response = http.Response.make(200, BODY, [
            (b"Server", b"nginx/1.22.1"), (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"Content-Type", b"application/json"), (b"Content-Length", str(len(BODY)).encode()),
            (b"Connection", b"keep-alive"), (b"Set-Cookie", b"visit=1; Path=/")])
        f.response.timestamp_start, f.response.timestamp_end = now + 0.0003, now + 0.0004
        yield f


def runner_cpu(dispatcher) -> dict[int, tuple[str, float]]:
    """Each thread running the sinks: its name and the seconds of CPU it has used, by thread id."""
    threads = {w.runner.thread for w in dispatcher.workers if w.runner is not None}
    return {t.ident: (t.name, time.clock_gettime(time.pthread_getcpuclockid(t.ident)))
            for t in threads if t.ident}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=20000)
    parser.add_argument("--profile", help="write cProfile stats of the dispatching here (and print the top)")
    parser.add_argument("--no-sinks", action="store_true", help="no sink and no store")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"flush after this many flows (default {BATCH}, a full batch; "
                             "1 is what c=1 load gives)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    import flowtap
    from flowtap_proxy.convert import Converter

    with tempfile.TemporaryDirectory(prefix="flowtap-perflow-") as tmp:
        out = Path(tmp)
        config = {"store": {"enabled": False}} if args.no_sinks else {
            "sinks": {"har": {"path": str(out / "c.har")},
                      "collection": {"path": str(out / "c.postman_collection.json")},
                      "cookiejar": {"path": str(out / "cookies.txt")}},
            "store": {"path": str(out / "store.db")},
        }
        capture = flowtap.Capture(config, load_entrypoints=True)
        capture.start()
        dispatcher = capture.dispatcher
        dispatcher.sync()
        session = dispatcher.session
        convert = Converter("proxy")
        flows = list(mitm_flows(args.flows))

        profiler = cProfile.Profile() if args.profile else None
        began, cpu = time.process_time(), time.thread_time()
        converted = [convert.http_flow(f) for f in flows]
        convert_cpu = time.thread_time() - cpu
        del flows
        if profiler:
            profiler.enable()
        cpu = time.thread_time()
        before = runner_cpu(dispatcher)
        for number, flow in enumerate(converted, 1):
            dispatcher._on_flow(flow, session, True)
            if number % args.batch == 0:
                dispatcher._feed()
            if number % 2000 == 0:
                dispatcher.sync()  # within every sink's backlog: none misses a flow
        dispatcher._feed()
        dispatch_cpu = time.thread_time() - cpu
        if profiler:
            profiler.disable()
        dispatcher.sync()
        sinks_cpu = {name: cpu - before.get(ident, ("", 0.0))[1]
                     for ident, (name, cpu) in runner_cpu(dispatcher).items()}
        del converted
        capture.stop()
        total = time.process_time() - began
    n = args.flows
    each = ", ".join(f"{name} {cpu / n * 1e6:.1f}" for name, cpu in sinks_cpu.items())
    print(f"{n} flows, µs of CPU per flow: convert {convert_cpu / n * 1e6:.1f}, "
          f"dispatch {dispatch_cpu / n * 1e6:.1f}, sinks {sum(sinks_cpu.values()) / n * 1e6:.1f} ({each}), "
          f"whole process (incl. close) {total / n * 1e6:.1f}")
    if profiler:
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
