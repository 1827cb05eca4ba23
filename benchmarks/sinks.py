"""Sinks under load: flows/s and peak RSS of each bundled sink, and the HAR sink against mitmproxy's savehar.

Run by hand (not by CI)::

    python benchmarks/sinks.py                         # 10,000 and 50,000 flows, every sink
    python benchmarks/sinks.py --flows 10000 --sinks har savehar

Every (sink, flow count) pair runs in a fresh Python process, which reports its
peak RSS (VmHWM) and the RSS it had before the first flow. The flows are fake
but shaped like API traffic: mostly small JSON, 10% with 100 KB bodies (half
JSON text, half binary), a fifth of them POSTs, some setting and sending
cookies, 2% failing without a response.

- A flowtap sink is built from its entry point and config table, then driven
  as the dispatcher drives it, but on one thread: session start, for each flow
  the cookie hook and ``write``, ``flush`` every 256 flows, session end and
  ``close``. Its time runs from the first flow to the end of ``close()`` (the
  file finalized). The ``null`` row does the same with a sink that does
  nothing: what building the fake flows costs.
- ``savehar`` is mitmproxy's HAR export as ``--set hardump=...`` runs it: the
  addon keeps every flow, then ``export_har`` writes them at exit. Its time
  covers building the same flows as mitmproxy objects plus the export.

Both wall time and CPU time are shown: on a busy machine the CPU time
(``process_time``, every thread of the run) is the steadier of the two;
``flows/s`` and the comparison use it.

To add a sink, add a row to ``SINKS``: ``name: options`` (``{dir}`` in a value
is replaced by the run's scratch directory); the sink is loaded through its
``flowtap`` entry point, so any installed plugin works.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

#: The sinks measured, in table order: entry-point name → its config table.
SINKS: dict[str, dict[str, Any]] = {
    "null": {},
    "har": {"path": "{dir}/out.har"},
    "collection": {"path": "{dir}/out.postman_collection.json", "organize": "domain+endpoint"},
    "cookiejar": {"path": "{dir}/cookies.txt"},
    "savehar": {"path": "{dir}/savehar.har"},  # mitmproxy's own, for comparison
}
DEFAULT_COUNTS = (10_000, 50_000)
HOSTS = ("api.example.com", "auth.example.com", "cdn.example.net", "127.0.0.1:8080", "shop.example.org")
BIG = 100 * 1024


class Spec(NamedTuple):
    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status: int | None
    response_headers: list[tuple[str, str]]
    response_body: bytes


def specs(count: int, seed: int = 7) -> Iterator[Spec]:
    """The same ``count`` fake exchanges for every run (bodies are fresh objects per flow)."""
    rng = random.Random(seed)
    small = [json.dumps({"id": i, "items": list(range(rng.randint(5, 400)))}).encode() for i in range(64)]
    big_text = json.dumps({"data": [f"row {i:06d} " + "x" * 80 for i in range(1100)]}).encode()[:BIG]
    big_binary = rng.randbytes(BIG)
    for i in range(count):
        host = HOSTS[i % len(HOSTS)]
        scheme = "http" if host.startswith("127.") else "https"
        post = i % 5 == 1
        url = f"{scheme}://{host}/api/v1/items/{i}?page={i % 7}&q=term{i % 13}"
        request_headers = [("Host", host), ("User-Agent", "bench/1.0"), ("Accept", "application/json")]
        request_body = b""
        if post:
            request_body = bytes(small[(i * 7) % 64])
            request_headers += [("Content-Type", "application/json"),
                                ("Content-Length", str(len(request_body)))]
        if i % 3 == 0:
            request_headers.append(("Cookie", f"sid=s{i % 97}; theme=dark"))
        if i % 10 == 0:  # 10%: a 100 KB body, made anew for this flow
            binary = i % 20 == 0
            tail = big_binary if binary else big_text
            body = f"{i:>12}".encode() + tail[12:]
            response_headers = [("Content-Type", "image/png" if binary else "application/json")]
        else:
            body = bytes(small[i % 64])
            response_headers = [("Content-Type", "application/json; charset=utf-8")]
        response_headers.append(("Content-Length", str(len(body))))
        if i % 4 == 0:
            response_headers.append(("Set-Cookie", f"sid=s{i % 97}; Path=/; HttpOnly; Max-Age=3600"))
        status = None if i % 50 == 49 else (201 if post else 200)
        yield Spec("POST" if post else "GET", url, request_headers, request_body, status, response_headers,
                   body)


# -- the child: one run, one process -------------------------------------------------


def _rss() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    values = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _output_size(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


def run_flowtap(sink: str, count: int, directory: Path) -> dict[str, Any]:
    """Drive one sink the way the dispatcher does, on this thread: write, cookies, flush per batch, close.

    (No queue and no second thread, so that neither scheduling noise nor the
    queue's backlog shows up in the sink's numbers.)
    """
    import flowtap
    from flowtap.dispatch import BATCH
    from flowtap.testing import make_flow

    class NullSink(flowtap.Sink):
        def write(self, flow):
            pass

    class NullPlugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register("null", lambda options: NullSink())

    options = {k: v.replace("{dir}", str(directory)) if isinstance(v, str) else v
               for k, v in SINKS[sink].items()}
    capture = flowtap.Capture({"sinks": {sink: options}}, load_entrypoints=False)
    if sink == "null":
        capture.register(NullPlugin(), name="null")
    else:
        capture.host.load_entrypoints(only=[sink])
        if sink not in capture.sink_factories:
            raise SystemExit(f"no working flowtap entry point provides the sink {sink!r}")
    capture.validate()
    host, entry = capture.host, capture.sink_factories[sink]
    session = flowtap.Session(name="bench")
    target = entry.factory(capture.config.table(entry.table))
    target.open(session)
    host.pm.register(target, name="bench-sink")
    cookie_hooks = bool(host.pm.hook.flowtap_cookies_seen.get_hookimpls())
    host.call("flowtap_session_start", session=session)

    before, _ = _rss()
    began, cpu = time.perf_counter(), time.process_time()
    for number, spec in enumerate(specs(count), 1):
        flow = make_flow(url=spec.url, method=spec.method, status=spec.status,
                         request_body=spec.request_body, response_body=spec.response_body,
                         request_headers=spec.request_headers, response_headers=spec.response_headers,
                         error="connection reset" if spec.status is None else None, source="bench")
        if cookie_hooks:
            cookies = flow.cookies
            if cookies:
                host.call("flowtap_cookies_seen", cookies=cookies, flow=flow, source="bench")
        target.write(flow)
        if number % BATCH == 0:
            target.flush()
    target.flush()
    session.state = flowtap.State.ENDED
    host.call("flowtap_session_end", session=session)
    target.close()
    return {"seconds": time.perf_counter() - began, "cpu": time.process_time() - cpu,
            "rss_before": before, "rss_peak": _rss()[1], "errors": host.error_count}


def _fields(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers]


def run_savehar(count: int, directory: Path) -> dict[str, Any]:
    from mitmproxy import flow as mflow, http
    from mitmproxy.addons.savehar import SaveHar
    from mitmproxy.test import tflow

    addon = SaveHar()
    before, _ = _rss()
    began, cpu = time.perf_counter(), time.process_time()
    for spec in specs(count):  # what SaveHar.response() does for each flow: keep it
        f = tflow.tflow()
        f.request = http.Request.make(spec.method, spec.url, spec.request_body, _fields(spec.request_headers))
        if spec.status is None:
            f.response, f.error = None, mflow.Error("connection reset")
        else:
            f.response = http.Response.make(spec.status, spec.response_body, _fields(spec.response_headers))
        addon.flows.append(f)
    addon.export_har(addon.flows, str(directory / "savehar.har"))  # what SaveHar.done() does
    return {"seconds": time.perf_counter() - began, "cpu": time.process_time() - cpu,
            "rss_before": before, "rss_peak": _rss()[1], "errors": 0}


def child(sink: str, count: int, directory: Path) -> None:
    import logging

    logging.disable(logging.WARNING)  # savehar's "HAR file saved" alert
    result = run_savehar(count, directory) if sink == "savehar" else run_flowtap(sink, count, directory)
    result["output_mb"] = _output_size(directory)
    print(json.dumps(result))


# -- the parent: runs every child, prints one table -----------------------------------------


def measure(sink: str, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"flowtap-bench-{sink}-") as directory:
        proc = subprocess.run([sys.executable, __file__, "--child", sink, str(count), directory],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=list(DEFAULT_COUNTS),
                        help="flow counts to run")
    parser.add_argument("--sinks", nargs="+", default=list(SINKS), choices=list(SINKS), help="sinks to run")
    parser.add_argument("--child", nargs=3, metavar=("SINK", "COUNT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sink, count, directory = args.child
        child(sink, int(count), Path(directory))
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; flows: 10% with 100 KB bodies")
    header = f"{'sink':<11}{'flows':>8}{'wall s':>8}{'CPU s':>8}{'flows/s':>9}{'RSS before':>12}" \
             f"{'peak RSS':>10}{'growth':>9}{'output':>10}"
    print(header + "\n" + "-" * len(header))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for count in args.flows:
        for sink in args.sinks:
            r = results[sink, count] = measure(sink, count)
            if "error" in r:
                print(f"{sink:<11}{count:>8}  error: {r['error']}")
                continue
            note = f"  ({r['errors']} sink errors!)" if r["errors"] else ""
            print(f"{sink:<11}{count:>8}{r['seconds']:>8.2f}{r['cpu']:>8.2f}{count / r['cpu']:>9.0f}"
                  f"{r['rss_before']:>9.0f} MB{r['rss_peak']:>7.0f} MB"
                  f"{r['rss_peak'] - r['rss_before']:>6.0f} MB"
                  f"{r['output_mb']:>7.0f} MB{note}", flush=True)
    print()
    for count in args.flows:
        har, mitm = results.get(("har", count), {}), results.get(("savehar", count), {})
        if "cpu" in har and "cpu" in mitm:
            print(f"{count} flows: har sink {mitm['cpu'] / har['cpu']:.1f}x the speed of savehar (CPU time); "
                  f"peak RSS {har['rss_peak']:.0f} MB vs {mitm['rss_peak']:.0f} MB")
    if len(args.flows) > 1:
        low, high = min(args.flows), max(args.flows)
        for sink in args.sinks:
            a, b = results.get((sink, low), {}), results.get((sink, high), {})
            if "rss_peak" in a and "rss_peak" in b:
                print(f"{sink}: peak RSS {low} → {high} flows: {a['rss_peak']:.0f} → {b['rss_peak']:.0f} MB "
                      f"({b['rss_peak'] - a['rss_peak']:+.0f} MB)")


if __name__ == "__main__":
    main()
