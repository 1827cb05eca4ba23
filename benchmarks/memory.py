#!/usr/bin/env python3
"""Memory with large bodies (issue 16): flowtap against bare mitmdump and mitmdump + hardump.

    python benchmarks/memory.py                      # 200 -> 1,200 flows of 1 MiB, about 3 minutes
    python benchmarks/memory.py --flows 100 600      # a shorter run
    python benchmarks/memory.py --only flowtap --sink har   # one sink alone (and no store)

nginx serves a 1 MiB JSON body (``application/json``, a ``Set-Cookie``) over
HTTP on 127.0.0.1; ``hey`` drives it through each proxy with 4 clients
(keep-alive). Each target runs in a fresh process, one after the other, in
the same run: ``mitmdump -q``, ``mitmdump -q --set hardump=FILE``
(mitmproxy's savehar, which holds every flow until it writes the HAR at
exit) and ``flowtap run --quiet`` with every bundled sink and the session
store on, the example config's ``max_body_size`` values. For each: the
RSS of the proxy's processes (``/proc/PID/status`` VmRSS, summed over the process
and those it started: flowtap's proxy runs in one) after the first and the
last count of flows, its peak (VmHWM, which includes the shutdown), and
the time from SIGINT to exit. flowtap's outputs are then read back (the
HAR and the collection parsed, the store's flows counted).

Targets (issue 16): flowtap's RSS growth from the first count to the last
< 50 MiB, its peak < 400 MiB, SIGINT -> exit < 2 s.

``--sink NAME`` (repeatable) runs flowtap with only these sinks, for telling
which one holds memory; ``store`` counts as a sink. ``--env K=V`` sets an
environment variable for the flowtap process (``MALLOC_ARENA_MAX=2``,
``PYTHONTRACEMALLOC=1`` ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import BIN, free_port, status, wait_port  # noqa: E402  (a script beside this one)

MIB = 1 << 20
SINKS = ("har", "collection", "cookiejar", "store")
#: The targets issue 16 sets for flowtap.
GROWTH_MIB, PEAK_MIB, EXIT_S = 50, 400, 2.0


def big_json(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes: an array of small records."""
    record = b'{"id": 12345, "name": "flowtap benchmark record", "tags": ["a", "b", "c"], "ok": true}'
    head, tail = b'{"items": [', b'], "pad": ""}'
    count = (size - len(head) - len(tail)) // (len(record) + 2)
    body = head + b", ".join([record] * count) + tail
    pad = size - len(body)
    return body[:-2] + b"x" * pad + body[-2:]


def start_nginx(tmp: Path, port: int, size: int) -> subprocess.Popen:
    root = tmp / "www"
    root.mkdir()
    tmp.chmod(0o755)  # nginx's worker may run as another user (nobody, when started as root)
    (root / "big.json").write_bytes(big_json(size))
    temp = tmp / "nginx-temp"
    temp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    types {{ application/json json; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ add_header Set-Cookie "visit=1; Path=/"; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def hey(url: str, n: int, clients: int, proxy_port: int) -> float:
    """Send ``n`` requests through the proxy; the requests per second hey measured."""
    done = subprocess.run(["hey", "-n", str(n), "-c", str(clients), "-t", "60",
                           "-x", f"http://127.0.0.1:{proxy_port}", url],
                          capture_output=True, text=True, timeout=1200)
    out = done.stdout + done.stderr
    if f"[200]\t{n} responses" not in out:
        raise SystemExit(f"hey did not get {n} answers with status 200 from {url}:\n{out[-3000:]}")
    rate = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    return float(rate.group(1)) if rate else 0.0


def flowtap_config(tmp: Path, port: int, sinks: tuple[str, ...]) -> Path:
    out = tmp / "out-flowtap"
    out.mkdir()
    lines = [f'[sources.proxy]\nlisten = "127.0.0.1:{port}"\nmax_body_size = "10MB"\n']
    if "har" in sinks:
        lines.append(f'[sinks.har]\npath = "{out / "capture.har"}"\nmax_body_size = "1MB"\n')
    if "collection" in sinks:
        lines.append(f'[sinks.collection]\npath = "{out / "capture.postman_collection.json"}"\n')
    if "cookiejar" in sinks:
        lines.append(f'[sinks.cookiejar]\npath = "{out / "cookies.txt"}"\n')
    if "store" in sinks:
        lines.append(f'[store]\npath = "{out / "flowtap.db"}"\nbody_file_threshold = "256kb"\n')
    else:
        lines.append("[store]\nenabled = false\n")
    path = tmp / "flowtap.toml"
    path.write_text("\n".join(lines))
    return path


def start(tmp: Path, target: str, sinks: tuple[str, ...],
          env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    environ = {**os.environ, "FLOWTAP_DATA_DIR": str(tmp / "flowtap-data"), **env}
    if target == "flowtap":
        cmd = [str(BIN / "flowtap"), "-c", str(flowtap_config(tmp, port, sinks)), "run", "--quiet"]
    else:
        cmd = [str(BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
               "--set", f"confdir={tmp / 'mitmproxy-conf'}"]
        if target == "mitmdump+hardump":
            cmd += ["--set", f"hardump={tmp / 'mitmdump.har'}"]
    proc = subprocess.Popen(cmd, cwd=tmp, env=environ, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"{target}.log", "w"), stdin=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def check_outputs(tmp: Path, sinks: tuple[str, ...], flows: int) -> str:
    """flowtap's files read back: entries, requests and stored flows, against ``flows``."""
    out = tmp / "out-flowtap"
    notes = []
    if "har" in sinks:
        try:
            with open(out / "capture.har", "rb") as fh:
                entries = json.load(fh)["log"]["entries"]
            full = sum(1 for e in entries if e["response"]["content"].get("text"))
            notes.append(f"HAR {len(entries)} entries ({full} with bodies)")
            del entries
        except (OSError, ValueError, KeyError) as exc:
            notes.append(f"HAR unreadable ({exc.__class__.__name__}: {exc})")
    if "collection" in sinks:
        try:
            with open(out / "capture.postman_collection.json", "rb") as fh:
                items = json.load(fh)["item"]
            notes.append(f"collection {len(items)} requests")
            del items
        except (OSError, ValueError, KeyError) as exc:
            notes.append(f"collection unreadable ({exc.__class__.__name__}: {exc})")
    if "store" in sinks:
        with sqlite3.connect(out / "flowtap.db") as conn:
            notes.append(f"store {conn.execute('SELECT count(*) FROM flows').fetchone()[0]} flows")
    if (out / "capture.har.journal").exists():
        notes.append("HAR journal left behind")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / MIB
    return f"expected {flows}: " + ", ".join(notes) + f"; {size:.0f} MiB on disk"


@dataclass
class Result:
    first: float  # RSS after the first count of flows, MiB
    last: float  # ... after the last
    peak: float  # VmHWM up to the exit
    exit: float  # seconds from SIGINT to exit
    code: int | None
    rate: float  # requests/s hey measured from the first count to the last
    outputs: str = ""  # flowtap's files read back


def run_target(tmp: Path, url: str, target: str, counts: tuple[int, int], clients: int,
               sinks: tuple[str, ...], env: dict[str, str]) -> Result:
    proc, port = start(tmp, target, sinks, env)
    try:
        first, last = counts
        hey(url, first, clients, port)
        at_first = status(proc.pid)["VmRSS"]
        rate = hey(url, last - first, clients, port)
        time.sleep(1.5)  # the sinks' backlogs drain (a HAR fsync, a collection rewrite)
        stats = status(proc.pid)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        peak = stats["VmHWM"]
        # VmHWM up to the last moment it can be read; the largest sum seen (the proxy's process ends
        # first, and its share drops out of the sum)
        while proc.poll() is None:
            try:
                peak = max(peak, status(proc.pid)["VmHWM"])
            except (OSError, KeyError):
                pass
            time.sleep(0.02)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = Result(at_first, stats["VmRSS"], peak, took, proc.returncode, rate)
    if target == "flowtap":
        result.outputs = check_outputs(tmp, sinks, last)
        log = (tmp / f"{target}.log").read_text(errors="replace").strip()
        if log:
            result.outputs += "\n" + "\n".join(f"{'':<18}| {line}" for line in log.splitlines()[-8:])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs=2, default=(200, 1200), metavar=("FIRST", "LAST"))
    parser.add_argument("--size", type=int, default=MIB, help="response body bytes (default 1 MiB)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", action="append", choices=("mitmdump", "mitmdump+hardump", "flowtap"))
    parser.add_argument("--sink", action="append", choices=SINKS, help="flowtap with only these sinks")
    parser.add_argument("--env", action="append", default=[], help="K=V for the flowtap process")
    args = parser.parse_args()
    first, last = args.flows
    if not 0 < first < last or first % args.clients or (last - first) % args.clients:
        parser.error(f"--flows {first} {last}: need 0 < FIRST < LAST, FIRST and LAST - FIRST multiples of "
                     f"--clients ({args.clients}): hey gives each client the same number of requests")
    for tool in ("hey", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(f"benchmark: {tool} not found; on Debian: apt-get install hey nginx-light", file=sys.stderr)
            return 2
    targets = args.only or ["mitmdump", "mitmdump+hardump", "flowtap"]
    sinks = tuple(args.sink or SINKS)
    env = dict(item.split("=", 1) for item in args.env)
    load = os.getloadavg()
    print(f"{args.size / MIB:g} MiB JSON responses, {args.clients} clients, RSS after {first:,} and "
          f"{last:,} flows; flowtap sinks: {', '.join(sinks)}"
          + (f"; env {' '.join(args.env)}" if args.env else "")
          + f"\n(load average at start {load[0]:.1f} on {os.cpu_count()} CPUs: the machine may be shared)")
    print(f"{'target':<18}{'RSS@' + str(first):>10}{'RSS@' + str(last):>11}{'growth':>9}{'peak':>8}"
          f"{'SIGINT->exit':>14}{'req/s':>8}")
    verdict = ""
    for target in targets:
        tmp = Path(tempfile.mkdtemp(prefix="flowtap-memory-"))
        nginx = None
        try:
            http_port = free_port()
            nginx = start_nginx(tmp, http_port, args.size)
            r = run_target(tmp, f"http://127.0.0.1:{http_port}/big.json", target, (first, last),
                           args.clients, sinks, env)
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(10)
        growth = r.last - r.first
        print(f"{target:<18}{r.first:>8.0f}Mi{r.last:>9.0f}Mi{growth:>+7.0f}Mi{r.peak:>6.0f}Mi"
              f"{r.exit:>12.2f}s{r.rate:>8.0f}  (exit code {r.code})", flush=True)
        if r.outputs:
            print(f"{'':<18}outputs: {r.outputs}", flush=True)
            verdict = (f"\nflowtap against the targets: growth {growth:+.0f} MiB "
                       f"({'ok' if growth < GROWTH_MIB else 'MISSED'}: < {GROWTH_MIB}), "
                       f"peak {r.peak:.0f} MiB ({'ok' if r.peak < PEAK_MIB else 'MISSED'}: < {PEAK_MIB}), "
                       f"SIGINT -> exit {r.exit:.2f} s "
                       f"({'ok' if r.exit < EXIT_S else 'MISSED'}: < {EXIT_S:g})")
        shutil.rmtree(tmp, ignore_errors=True)
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
