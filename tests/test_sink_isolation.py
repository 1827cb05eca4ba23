"""One misbehaving third-party sink costs the store and the HAR sink no flow, and is seen (issue 10).

The sink is ``tests/faulty_sink``, pip-installed as its own distribution and found through its
entry point, configured as ``[sinks.faulty]`` beside ``[sinks.har]`` and the store. Each test
runs the real ``flowtap run`` with the proxy on 127.0.0.1, sends real requests through it to a
local upstream, then ends the run with Ctrl-C (SIGINT) or kill -9 and counts what the store and
the HAR file hold. Requests carry ``?i=N`` so that every flow can be found by number.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import flowtap

from upstream import Upstream

pytestmark = pytest.mark.timeout(90)

FAULTY = Path(__file__).resolve().parent / "faulty_sink"
#: ``[dispatch]`` for the Ctrl-C tests: a hung call is detached after this long ...
CALL_TIMEOUT = 1.0
#: ... and at the end each sink gets this long to finish before it is abandoned.
CLOSE_TIMEOUT = 1.0
#: What a run may take beyond ``close_timeout`` to end: stopping the proxy, closing the healthy
#: sinks, leaving Python; on a machine whose two cores other processes share.
MARGIN = 4.0
#: Requests per Ctrl-C test, in two halves (the second after the faulty sink's first report).
REQUESTS = 60
#: Lines naming the faulty sink a run may print: its first error, a summary of the repeats,
#: the state it ended in. One line per flow would be REQUESTS.
MAX_SINK_LINES = 4


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``pip install`` the faulty sink into a directory of its own (put on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(FAULTY)], check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture
def upstream():
    with Upstream() as server:
        yield server


def write_config(tmp_path: Path, faulty: dict | None, dispatch: dict | None = None) -> Path:
    tables: dict[str, dict] = {
        "sources.proxy": {"listen": "127.0.0.1:0"},
        "store": {"path": str(tmp_path / "store.db")},
        "sinks.har": {"path": str(tmp_path / "capture.har")},
    }
    if faulty is not None:
        tables["sinks.faulty"] = faulty
    if dispatch is not None:
        tables["dispatch"] = dispatch
    config = tmp_path / "flowtap.toml"
    config.write_text("".join(
        f"[{name}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()) + "\n"
        for name, values in tables.items()))
    return config


class Run:
    """``flowtap run --quiet`` in a subprocess; its stdout and stderr read as they come."""

    def __init__(self, tmp_path: Path, config: Path, site: Path) -> None:
        env = {**os.environ, "FLOWTAP_DATA_DIR": str(tmp_path / "data"),
               "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-m", "flowtap", "-c", str(config), "run", "--quiet"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, env=env, cwd=tmp_path)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._open = 2  # streams not at their end yet
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def wait_for(self, lines: list[str], pattern: str, timeout: float) -> re.Match:
        """The first line of ``lines`` matching ``pattern``, waiting up to ``timeout`` for it."""
        found: list[re.Match] = []

        def seen() -> bool:
            found[:] = [m for m in map(re.compile(pattern).search, lines) if m][:1]
            return bool(found) or not self._open

        with self._changed:
            self._changed.wait_for(seen, timeout)
        if not found:
            state = f"exited with {self.proc.wait(5)}" if not self._open else "still runs"
            raise AssertionError(f"flowtap run ({state}) printed no line matching {pattern!r} "
                                 f"(waited up to {timeout}s)\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}")
        return found[0]

    def proxy(self) -> str:
        """The proxy's URL, once ``run`` printed it (the proxy listens then)."""
        return self.wait_for(self.out, r"export http_proxy=(http://127\.0\.0\.1:\d+)", 30).group(1)

    def interrupt(self, bound: float) -> tuple[int, float]:
        """Ctrl-C; the exit code and the seconds it took. Fails (and kills) past ``bound``."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"flowtap run did not end within {bound:.1f}s of Ctrl-C\n"
                                 f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}") from None
        took = time.monotonic() - started
        self._drain()
        return code, took

    def kill(self) -> float:
        """kill -9; returns when it was sent (time.monotonic())."""
        sent = time.monotonic()
        self.proc.kill()
        self.proc.wait(10)
        self._drain()
        return sent

    def _drain(self) -> None:
        for reader in self._readers:
            reader.join(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


@pytest.fixture
def start(tmp_path, site):
    runs: list[Run] = []

    def start(config: Path) -> Run:
        runs.append(Run(tmp_path, config, site))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def request(client: httpx.Client, upstream: Upstream, i: int) -> None:
    response = client.get(f"{upstream.url}/json?i={i}")
    assert response.status_code == 200, response.text


def number(url: str) -> int:
    return int(re.search(r"[?&]i=(\d+)", url).group(1))


def stored(path: Path) -> list[int]:
    """The ``i`` of every flow in the store, in recording order."""
    with flowtap.open_store(path) as store:
        return [number(row.url) for row in store.rows()]


def har_entries(path: Path) -> list[int]:
    """The ``i`` of every entry in the finalized HAR file."""
    assert path.exists(), f"{path} was not finalized (left: {sorted(p.name for p in path.parent.iterdir())})"
    return [number(entry["request"]["url"]) for entry in json.loads(path.read_text())["log"]["entries"]]


def sink_lines(run: Run) -> list[str]:
    return [line for line in run.err if "sink 'faulty'" in line]


# mode -> ([sinks.faulty], [dispatch] call_timeout, whether the sink reports before the run ends)
MODES = {
    # hangs in its 5th write: detached after call_timeout, reported with where it is stuck
    "hang": ({"mode": "hang", "after": 5}, CALL_TIMEOUT, True),
    # 2 s in every flush, longer than close_timeout but shorter than call_timeout: a slow sink,
    # not a stuck one; it is still flushing at Ctrl-C and is abandoned after close_timeout
    "sleep": ({"mode": "sleep", "seconds": 2.0}, 10.0, False),
    "raise": ({"mode": "raise"}, CALL_TIMEOUT, True),
    # seeded: its first error comes within the first half of the requests
    "random": ({"mode": "random", "rate": 0.3, "seed": 7}, CALL_TIMEOUT, True),
}


@pytest.mark.parametrize("mode", MODES)
def test_a_faulty_sink_costs_the_store_and_the_har_sink_no_flow(mode, tmp_path, upstream, start):
    faulty, call_timeout, reports_early = MODES[mode]
    config = write_config(tmp_path, faulty, {"call_timeout": f"{call_timeout}s",
                                             "close_timeout": f"{CLOSE_TIMEOUT}s"})
    run = start(config)
    with httpx.Client(proxy=run.proxy(), timeout=10) as client:
        for i in range(REQUESTS // 2):
            request(client, upstream, i)
        if reports_early:  # the second half goes through while the sink is known to be failing
            run.wait_for(run.err, r"sink 'faulty'", 10 + call_timeout)
        for i in range(REQUESTS // 2, REQUESTS):
            request(client, upstream, i)

    code, took = run.interrupt(CLOSE_TIMEOUT + MARGIN)

    everything = list(range(REQUESTS))
    assert sorted(stored(tmp_path / "store.db")) == everything, run.stderr
    assert sorted(har_entries(tmp_path / "capture.har")) == everything, run.stderr
    assert code == 1, f"exit code {code} after {took:.1f}s\nstderr:\n{run.stderr}"
    named = sink_lines(run)
    assert 1 <= len(named) <= MAX_SINK_LINES, run.stderr
    # The first error with its traceback, repeats summarised: never one line per flow.
    assert len(run.err) < REQUESTS // 2, run.stderr
    if mode in ("raise", "random"):
        assert run.stderr.count("Traceback (most recent call last)") == 1, run.stderr
        assert "faulty sink refuses flow" in run.stderr
    if mode == "hang":  # where it is stuck: the call, and the line of the sink's code
        assert any("write" in line and "faulty.py" in line for line in named), run.stderr


def test_a_clean_run_with_the_third_party_sink_exits_0(tmp_path, upstream, start):
    """The control: the same sink, behaving, is not reported and the run is clean."""
    config = write_config(tmp_path, {"mode": "ok"}, {"call_timeout": f"{CALL_TIMEOUT}s",
                                                      "close_timeout": f"{CLOSE_TIMEOUT}s"})
    run = start(config)
    with httpx.Client(proxy=run.proxy(), timeout=10) as client:
        for i in range(REQUESTS):
            request(client, upstream, i)

    code, took = run.interrupt(CLOSE_TIMEOUT + MARGIN)

    assert sorted(stored(tmp_path / "store.db")) == list(range(REQUESTS))
    assert sorted(har_entries(tmp_path / "capture.har")) == list(range(REQUESTS))
    assert code == 0, f"exit code {code}\nstderr:\n{run.stderr}"
    assert "sink '" not in run.stderr


#: The kill -9 test: flows answered at least this long ago must be in the store ...
AGE = 1.0
#: ... checked every this many seconds while the traffic runs, and at the kill;
CHECK_EVERY = 0.25
#: the traffic runs this long (two of the sleeping sink's flushes) and for at least this many
#: requests, then kill -9; it is bounded in count and in time.
TRAFFIC_SECONDS = 4.0
MIN_REQUESTS = 200
MAX_REQUESTS = 3000
CLIENTS = 4


def test_kill_9_with_a_sleeping_sink_loses_no_flow_answered_a_second_before(tmp_path, upstream, start):
    """The store commits every [store] batch_interval (100 ms), whatever the other sinks do.

    The faulty sink sleeps 2 s in every flush and stays attached (call_timeout is the default
    30 s): a slow sink, not a stuck one. While the traffic runs, and after the kill -9, every
    flow answered more than a second earlier is in the store (committed rows are what a reader
    sees, and all that survives the kill).
    """
    run = start(write_config(tmp_path, {"mode": "sleep", "seconds": 2.0}))
    proxy = run.proxy()
    answered: list[tuple[float, int]] = []  # (time.monotonic() when answered, i), in that order
    numbers = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        with httpx.Client(proxy=proxy, timeout=10) as http:
            while not stop.is_set():
                i = next(numbers)
                if i >= MAX_REQUESTS:
                    return
                try:
                    response = http.get(f"{upstream.url}/json?i={i}")
                except httpx.HTTPError as exc:
                    if not stop.is_set():
                        errors.append(exc)
                    return
                if response.status_code == 200:
                    answered.append((time.monotonic(), i))

    def missing(now: float) -> tuple[set[int], int]:
        """Flows answered before ``now - AGE`` not in the store; how many were due."""
        due = {i for at, i in list(answered) if at < now - AGE}
        return due - set(stored(tmp_path / "store.db")), len(due)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 60
    late: list[str] = []  # what the checks during the traffic found
    while not (len(answered) >= MIN_REQUESTS and time.monotonic() - answered[0][0] >= TRAFFIC_SECONDS):
        assert time.monotonic() < deadline and not errors, \
            f"{len(answered)} requests answered through the proxy in 60 s; {errors}"
        stop.wait(CHECK_EVERY)
        now = time.monotonic()
        lost, due = missing(now)
        if lost:
            late.append(f"{len(lost)} of {due} at {now - answered[0][0]:.2f}s")
    stop.set()  # before the kill: what the clients see after it is no error of theirs
    killed = run.kill()
    for thread in clients:
        thread.join(15)
    assert not errors, errors

    lost, due = missing(killed)
    assert due >= MIN_REQUESTS // 2
    assert not lost and not late, (
        f"flows answered more than {AGE}s earlier, missing from the store: {len(lost)} of {due} "
        f"at the kill -9, {late or 'none'} while the traffic ran ({len(answered)} answered in "
        f"{killed - answered[0][0]:.1f}s)\nstderr:\n{run.stderr}")
