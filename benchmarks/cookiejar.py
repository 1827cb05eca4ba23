"""Benchmark the cookiejar sink: flows/s and peak RSS for 10,000 fake flows (run by hand).

    /work/venv/bin/python benchmarks/cookiejar.py [--flows 10000 50000]

Each row runs in a fresh process (peak RSS is per process). The flows are
mixed: bodies of 0.2-5 KB, 10% of 100 KB; 50 hosts; every request sends a
Cookie header of three cookies, a fifth of the responses set a new session
cookie and one in a hundred deletes one, so the jar changes all the time and
the sync throttle is exercised. "none" is the same feed with no sink at all:
the dispatcher's own cost. The session store is off in every row. The cookiejar
rows sync continuously (the default).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINKS = ("none", "cookiejar netscape", "cookiejar json")
HOSTS = [f"api{i}.example{i % 7}.com" for i in range(50)]
BIG = b"x" * 100_000


def flows(count: int, seed: int = 1):
    """Fake flows, made one at a time so memory stays flat however many."""
    from flowtap.testing import make_flow

    rng = random.Random(seed)
    for i in range(count):
        host = rng.choice(HOSTS)
        body = BIG if i % 10 == 0 else b"y" * rng.randint(200, 5000)
        request_headers = [("Host", host), ("Cookie", f"sid=s{i // 100}; theme=dark; lang=en")]
        response_headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if i % 5 == 0:
            domain = host.split(".", 1)[1]
            response_headers.append(("Set-Cookie", f"sid=s{i}; Domain={domain}; Path=/; "
                                                   "Secure; HttpOnly; SameSite=Lax; Max-Age=3600"))
        if i % 100 == 1:
            response_headers.append(("Set-Cookie", "theme=; Max-Age=0"))
        yield make_flow(url=f"https://{host}/v1/items/{i}", request_headers=request_headers,
                        response_headers=response_headers, response_body=body)  # fmt: skip


def run(sink: str, count: int) -> dict:
    """Feed ``count`` flows through ``sink`` in this process; return the measurements."""
    from flowtap.testing import capture

    with tempfile.TemporaryDirectory() as tmp:
        plugins, config = (), {"store": {"enabled": False}}  # the session store is measured on its own
        if sink != "none":
            path = Path(tmp) / "jar"
            plugins = ("cookiejar",)
            config["sinks"] = {"cookiejar": {"path": str(path), "format": sink.split()[1]}}
        with capture(*plugins, config=config, record=False) as harness:
            start = time.perf_counter()
            for flow in flows(count):
                harness.capture.emit(flow)
            harness.capture.dispatcher.sync(timeout=600)
            elapsed = time.perf_counter() - start
        size = path.stat().st_size if sink != "none" else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sink": sink, "flows": count, "flows_s": count / elapsed, "peak_rss_mb": peak, "jar_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[10_000],
                        help="flow counts to run (default 10000)")
    parser.add_argument("--one", nargs=2, metavar=("SINK", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run(args.one[0], int(args.one[1]))))
        return
    print(f"{'sink':<20} {'flows':>7} {'flows/s':>9} {'peak RSS MB':>12} {'jar bytes':>10}")
    for count in args.flows:
        for sink in SINKS:
            out = subprocess.run([sys.executable, __file__, "--one", sink, str(count)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{row['sink']:<20} {row['flows']:>7} {row['flows_s']:>9.0f} {row['peak_rss_mb']:>12.1f} "
                  f"{row['jar_bytes']:>10}")  # fmt: skip


if __name__ == "__main__":
    main()
