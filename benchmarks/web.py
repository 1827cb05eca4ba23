#!/usr/bin/env python3
"""The web UI: a large stored session, and the cost to the proxy of a page on a live one.
Run by hand, not by CI.

    python benchmarks/web.py [--flows 100000] [--requests 5000] [--reps 3]

Needs Debian's Chromium and Playwright (the test extra), and ``hey`` and ``nginx`` for part 2
(``apt-get install hey nginx-light``).

1. A stored session of ``--flows`` flows (written through the store sink, as a capture does):
   the time from opening its page to its first rows on screen, in Chromium; the store side of
   the first page, the newest page, a page in the middle and filtered first pages, and the CPU
   of one poll of a live page (what serving a page costs the process, twice a second); then 30
   scrolls to the bottom of the table: the rows the page holds (at most its window, never the
   whole session), the table lines in the DOM, and the page's JS heap.
2. ``flowtap run --web --quiet`` with the proxy, ``hey -c 20`` through it to nginx, with no page
   open and with a Chromium page on the live session, interleaved ``--reps`` times: requests/s
   and the proxy process's CPU per request (medians); with the page: how long after the load
   ends the table shows the last flow, and the page's JS heap after each load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from playwright.sync_api import sync_playwright
from store import fill  # benchmarks/store.py, beside this script

import flowtap
from flowtap.config import Config
from flowtap_web import data
from flowtap_web.server import WebServer

from proxy import cpu_seconds, free_port, hey, start_nginx  # benchmarks/proxy.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chromium import chromium_binary  # noqa: E402  tests/chromium.py


def heap_mb(page) -> float:
    return page.evaluate("performance.memory.usedJSHeapSize") / 1e6


def best_ms(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


# -- 1. a large stored session --------------------------------------------------------------------


def bench_stored(tmp: Path, n: int, browser) -> None:
    db = tmp / "large.db"
    wall, _ = fill(db, n, name="large")
    print(f"stored session: {n} flows ({db.stat().st_size / 1e6:.0f} MB, written in {wall:.1f}s)")
    with flowtap.open_store(db) as store:
        sid = store.session("large").id
        middle = store.newest(sid, None, 1)[0].seq // 2
        for label, kwargs in [("first page", {}), ("newest page (live start)", {"newest": True}),
                              ("a page in the middle", {"after": middle}),
                              ("first page, ~d host7.test", {"expression": "~d host7.test"}),
                              ("first page, ~c 500", {"expression": "~c 500"}),
                              ("first page, ~b needle", {"expression": "~b needle"})]:
            expression = kwargs.pop("expression", None)
            ms = best_ms(lambda e=expression, k=kwargs: data.page(store, sid, e, **k))
            print(f"  store, {label:30} {ms:7.1f} ms (500 rows)")
        top = middle * 2
        for new in (0, 300):  # a live page's poll, as the server makes it twice a second
            cpu = time.process_time()
            for _ in range(20):
                orjson.dumps(data.update(store, sid, None, top - new), default=str)
            print(f"  server, one live poll finding {new:3} new rows: "
                  f"{(time.process_time() - cpu) / 20 * 1000:.1f} ms CPU (encoded)")
    server = WebServer(db, Config())
    url = server.start()
    base = url.split("/?")[0]
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#sessions a.open")
        firsts = []
        for _ in range(3):
            page.goto("about:blank")
            t = time.perf_counter()
            page.goto(f"{base}/#/s/{sid}")
            page.wait_for_selector("#flows .row.flow")
            firsts.append(time.perf_counter() - t)
        print(f"  page: first rows on screen {min(firsts) * 1000:.0f} ms (best of 3; "
              f"{', '.join(f'{f * 1000:.0f}' for f in firsts)})")
        for _ in range(30):
            page.evaluate("document.getElementById('flows').scrollTop = 1e9")
            page.wait_for_timeout(150)
        status = page.locator(".tfoot").inner_text()
        lines = page.locator("#flows .row").count()
        print(f"  page: after 30 scrolls to the bottom: {status!r}; {lines} table lines in the DOM; "
              f"JS heap {heap_mb(page):.1f} MB")
        context.close()
    finally:
        server.stop()


# -- 2. the proxy with a page on the live session ------------------------------------------------------


class Run:
    """`flowtap run --web --quiet` with the proxy on a free port and its own store."""

    def __init__(self, tmp: Path, tag: str) -> None:
        self.port = free_port()
        self.db = tmp / f"{tag}.db"
        self.tag = tag
        cmd = [sys.executable, "-m", "flowtap", "--set", f"sources.proxy.listen=127.0.0.1:{self.port}",
               "--set", f"store.path={self.db}", "--set", "web.port=0", "run", "--web", "--quiet",
               "--name", tag]
        env = dict(os.environ, FLOWTAP_DATA_DIR=str(tmp / "data"))
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.url = ""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if found := re.search(r"web UI: (http://\S+)", line):
                self.url = found.group(1)
                break
        if not self.url:
            raise SystemExit(f"flowtap run printed no web UI address (exit {self.proc.wait()})")

    def last_id(self) -> str | None:
        with flowtap.open_store(self.db) as store:
            rows = store.newest(store.session(self.tag).id, None, 1)
        return rows[0].id if rows else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            self.proc.kill()


def bench_live(tmp: Path, requests: int, reps: int, browser) -> None:
    if not (shutil.which("hey") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        print("live: skipped (needs hey and nginx: apt-get install hey nginx-light)")
        return
    http_port, https_port = free_port(), free_port()
    nginx = start_nginx(tmp, http_port, https_port)
    target = f"http://127.0.0.1:{http_port}/json"
    results: dict[str, list[dict[str, float]]] = {"no page": [], "page open": []}
    try:
        for rep in range(reps):
            for label in results:
                run = Run(tmp, f"{label.replace(' ', '-')}-{rep}")
                context = None
                try:
                    hey(target, 200, 20, run.port)  # warm up
                    if label == "page open":
                        context = browser.new_context(viewport={"width": 1400, "height": 900})
                        page = context.new_page()
                        page.goto(run.url)
                        with flowtap.open_store(run.db) as store:
                            sid = store.session(run.tag).id
                        page.goto(f"{run.url.split('/?')[0]}/#/s/{sid}")
                        page.wait_for_selector("#flows .row.flow")
                    before = cpu_seconds(run.proc.pid)
                    result = hey(target, requests, 20, run.port)
                    result["cpu"] = (cpu_seconds(run.proc.pid) - before) / requests * 1000
                    if context is not None:
                        done = time.perf_counter()
                        last = run.last_id()
                        while page.locator("#flows .row.flow").last.get_attribute("data-id") != last:
                            if time.perf_counter() - done > 10:
                                break
                            page.wait_for_timeout(20)
                            last = run.last_id()
                        result["lag"] = (time.perf_counter() - done) * 1000
                        result["heap"] = heap_mb(page)
                        result["rows"] = float(re.match(r"\d+", page.locator(".tfoot").inner_text()).group())
                    results[label].append(result)
                finally:
                    if context is not None:
                        context.close()
                    run.stop()
    finally:
        nginx.terminate()
        nginx.wait(10)
    for label, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        extra = ""
        if label == "page open":
            extra = (f"  table current {statistics.median(r['lag'] for r in runs):.0f} ms after the load; "
                     f"page holds {max(r['rows'] for r in runs):.0f} rows, JS heap "
                     f"{max(r['heap'] for r in runs):.1f} MB")
        print(f"live, {label:9}: {rps:7.0f} req/s  {cpu:5.2f} ms CPU/request{extra}")
        each = ", ".join(f"{r['rps']:.0f} req/s {r['cpu']:.2f} ms" for r in runs)
        print(f"  each run: {each}")
    ratio = statistics.median(r["rps"] for r in results["page open"]) / statistics.median(
        r["rps"] for r in results["no page"])
    print(f"live, page open / no page: {ratio:.3f}x req/s (target: >= 0.95)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("needs Chromium (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="flowtap-web-bench-"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=binary)
            try:
                bench_stored(tmp, args.flows, browser)
                if not args.skip_live:
                    bench_live(tmp, args.requests, args.reps, browser)
            finally:
                browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
