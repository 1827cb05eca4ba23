"""Memory does not grow with the session, whatever the bodies (issue 16; docs/guide.md, "Memory").

A real ``flowtap run`` with every bundled sink and the store captures 300
responses of 1 MiB from four clients; its resident memory, read from
/proc, may grow by at most :data:`GROWTH_MIB` between the first flows and
the last, and peak below :data:`PEAK_MIB`. Then Ctrl-C: every output is
final and complete (the HAR parses, the collection passes Postman's
schema, the store holds every flow) soon after.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import flowtap

from npmtools import POSTMAN, Judge, load_json, npm_install
from upstream import Upstream, free_port

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

MIB = 1 << 20
#: The budget docs/guide.md documents: growth over a session, and the peak (with the default backlog).
GROWTH_MIB, PEAK_MIB = 50, 400
WARM_UP, FLOWS, CLIENTS = 40, 300, 4


def status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process and its child processes (flowtap's proxy runs in one), summed, in MiB."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0}
    for one in _tree(pid):
        try:
            lines = Path(f"/proc/{one}/status").read_text().splitlines()
        except OSError:  # it ended meanwhile
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in out:
                out[key] += int(value.split()[0]) / 1024
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and the processes it started, theirs included (from /proc)."""
    found = [pid]
    for one in found:  # grows as children are found
        try:
            tasks = list(Path(f"/proc/{one}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                found += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def journal_entries(path: Path) -> int:
    """Entries in a HAR journal so far: its lines but the first (read in pieces, not whole)."""
    lines = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines - 1


def settle(tmp_path: Path, flows: int, timeout: float = 60) -> None:
    """Wait until the HAR's journal and the store both hold ``flows`` flows: no backlog left."""
    journal, db = tmp_path / "out" / "capture.har.journal", tmp_path / "out" / "store.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and db.exists() and journal_entries(journal) >= flows:
            with flowtap.open_store(db) as store:
                if store.count() >= flows:
                    return
        time.sleep(0.1)
    raise AssertionError(f"the sinks did not get {flows} flows within {timeout}s")


def test_memory_stays_flat_with_large_bodies_and_the_end_is_fast(tmp_path):
    judge = Judge(npm_install("postman", POSTMAN))
    port = free_port()
    (tmp_path / "flowtap.toml").write_text(f"""
[session]
name = "memory"
[sources.proxy]
listen = "127.0.0.1:{port}"
[sinks.har]
path = "out/capture.har"
[sinks.collection]
path = "out/capture.postman_collection.json"
[sinks.cookiejar]
path = "out/cookies.txt"
[store]
path = "out/store.db"
""")
    with Upstream() as upstream:
        proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run", "--quiet"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                    time.sleep(0.1)
            url = f"{upstream.url}/bigjson?n={MIB}"

            def fetch(count: int) -> None:
                with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as client:
                    for _ in range(count):
                        response = client.get(url)
                        assert response.status_code == 200 and len(response.content) == MIB

            def load(total: int) -> None:
                with ThreadPoolExecutor(CLIENTS) as pool:
                    for done in [pool.submit(fetch, total // CLIENTS) for _ in range(CLIENTS)]:
                        done.result()

            load(WARM_UP)
            settle(tmp_path, WARM_UP)
            start = status(proc.pid)["VmRSS"]
            load(FLOWS - WARM_UP)
            settle(tmp_path, FLOWS)
            end = status(proc.pid)
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - began
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    growth = end["VmRSS"] - start
    summary = (f"RSS {start:.0f} MiB after {WARM_UP} flows, {end['VmRSS']:.0f} MiB after {FLOWS} "
               f"(growth {growth:+.0f} MiB), peak {end['VmHWM']:.0f} MiB; SIGINT -> exit {took:.2f} s")
    print(summary)
    assert proc.returncode == 0, err
    assert growth < GROWTH_MIB, summary
    assert end["VmHWM"] < PEAK_MIB, summary
    assert took < 10, summary  # the benchmark's target is 2 s; a loaded test machine gets leeway

    out = tmp_path / "out"
    assert not (out / "capture.har.journal").exists()
    with open(out / "capture.har", "rb") as fh:
        entries = json.load(fh)["log"]["entries"]
    assert len(entries) == FLOWS
    assert all(len(e["response"]["content"]["text"]) == MIB for e in entries)  # 1 MiB: within max_body_size
    del entries
    collection = out / "capture.postman_collection.json"
    assert judge.postman_errors(collection) == ""
    items = load_json(collection)["item"]
    assert len(items) == FLOWS
    example = items[0]["response"][0]
    assert len(example["body"]) <= 64 * 1024 and example["name"] == "200 OK (body cut to 64 KiB of 1 MiB)"
    with flowtap.open_store(out / "store.db") as store:
        assert store.count() == FLOWS
    assert "\tbig\t1" in (out / "cookies.txt").read_text()
