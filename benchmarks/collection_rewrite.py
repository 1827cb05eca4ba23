#!/usr/bin/env python3
"""What one rewrite of the collection sink's file costs, per MB written (run by hand).

    python benchmarks/collection_rewrite.py

Builds a collection sink (no capture, no network), writes fake flows into it,
then times its rewrite (the callback its call_later runs; best of 5): wall time
including the fsync, this thread's CPU time, and the process's peak RSS during
the rewrite above what it held before (Linux: VmHWM, reset through clear_refs).
The sink's next rewrite waits BUDGET times as long as the last one took, so
these figures bound how stale the file gets as a session grows.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from flowtap.session import Session
from flowtap.testing import make_flow
from flowtap_collection.sink import CollectionSink

ROWS = [  # flows, response body bytes, options
    (20_000, 200, {}),
    (20_000, 200, {"organize": "domain+endpoint", "dedupe": True}),
    (2_000, 10_000, {}),
    (200, 1 << 20, {}),
]


def _status(field: str) -> int:
    """A VmRSS/VmHWM figure of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run(count: int, size: int, extra: dict) -> str:
    directory = Path(tempfile.mkdtemp())
    options = {"path": str(directory / "c.json"), "name": "", "organize": "none", "save_responses": True,
               "dedupe": False, "variables": True, "include_secrets": False, **extra}
    sink = CollectionSink(options)
    sink.open(Session(name="bench"))
    body = b'{"k": "' + b"x" * size + b'"}'
    for i in range(count):
        sink.write(make_flow(url=f"https://api{i % 7}.example/users/{i % 500}?q={i}", response_body=body))
    wall = cpu = float("inf")
    peak = 0
    for _ in range(5):
        sink._dirty = True
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        began, began_cpu = time.perf_counter(), time.thread_time()
        sink._rewrite()
        wall, cpu = min(wall, time.perf_counter() - began), min(cpu, time.thread_time() - began_cpu)
        peak = max(peak, _status("VmHWM") - before)
    mb = (directory / "c.json").stat().st_size / 1e6
    sink.close()
    layout = ", ".join(f"{k}={v}" for k, v in extra.items()) or "organize=none"
    return (f"{count:6} flows of {size:>7} B ({layout:36}): {mb:6.1f} MB in {wall * 1000:6.1f} ms, "
            f"{wall * 1000 / mb:5.2f} ms/MB wall, {cpu * 1000 / mb:5.2f} ms/MB CPU, "
            f"peak RSS +{peak // 1024} MiB")


if __name__ == "__main__":
    for row in ROWS:
        print(run(*row), flush=True)
