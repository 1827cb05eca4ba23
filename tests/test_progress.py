"""Long exports and searches show progress on a terminal (stderr), and nothing when it is not one."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import threading
import time

import pytest

from flowtap.filters import compile_expression
from flowtap.progress import Progress
from flowtap.testing import capture, make_flow

from fakedist import make_distribution

pytestmark = pytest.mark.timeout(90)


class Terminal:
    """A pseudo-terminal whose output is collected by a thread (so a writer never blocks on it)."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.data += chunk

    def text(self, settle: float = 0.3) -> str:
        time.sleep(settle)  # what was written reaches the reader thread
        return self.data.decode("utf-8", "replace")

    def close(self) -> None:
        os.close(self.slave)
        self._thread.join(5)
        os.close(self.master)


@pytest.fixture
def terminal():
    term = Terminal()
    yield term
    term.close()


def test_progress_appears_after_the_delay_on_a_terminal_only(terminal):
    with os.fdopen(os.dup(terminal.slave), "w") as tty:
        with Progress("exporting session 'x'", total=10, stream=tty, delay=0.2, interval=0.05) as progress:
            progress.advance(3)
            assert progress.enabled
            time.sleep(0.05)
            assert "exporting" not in terminal.text(settle=0.05)  # not before the delay
            time.sleep(0.4)
            shown = terminal.text()
            assert "\rexporting session 'x': 3 of 10 flows (30%), 0s\x1b[K" in shown
        assert terminal.text().endswith("\r\x1b[K")  # erased at the end

    piped = io.StringIO()
    with Progress("searching", stream=piped, delay=0, interval=0.01) as progress:
        progress.advance()
        time.sleep(0.1)
    assert not progress.enabled and piped.getvalue() == ""


def test_output_lines_are_not_mixed_into_the_progress_line(terminal):
    with os.fdopen(os.dup(terminal.slave), "w") as tty:
        with Progress("searching", unit="found", stream=tty, delay=0, interval=0.05) as progress:
            time.sleep(0.2)
            progress.print("a result", file=tty)
            time.sleep(0.2)
    shown = terminal.text()
    # The progress line is erased before the result is written on its line, then drawn again.
    assert "\r\x1b[Ka result" in shown.replace("\r\n", "\n")
    assert shown.rindex("searching: 0 found") > shown.index("a result")


SLOW_SINK = '''
import time

import flowtap


class Slow(flowtap.Sink):
    def __init__(self, options):
        self.path = options["path"]
        self.delay = options["delay"]

    def open(self, session):
        self.file = open(self.path, "w")

    def write(self, flow):
        time.sleep(self.delay)
        self.file.write(flow.request.url + "\\n")

    def close(self):
        self.file.close()


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare("sinks.slow", flowtap.Option("path", str, "slow.txt", "Output."),
            flowtap.Option("delay", float, 0.01, "Seconds per flow."))


@flowtap.hookimpl
def flowtap_register_sinks(register):
    register("slow", Slow)
'''


def _store(path, flows):
    with capture(config={"store": {"path": str(path)}, "session": {"name": "big"}}) as cap:
        cap.feed(*flows)


def _flowtap(args, tmp_path, stderr, pythonpath=()):
    env = dict(os.environ, COLUMNS="120",
               PYTHONPATH=os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "flowtap", *args], cwd=tmp_path, env=env, timeout=60,
                          stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)


def test_an_export_longer_than_a_second_shows_progress_on_a_terminal_not_when_piped(tmp_path, terminal):
    store = tmp_path / "store.db"
    _store(store, [make_flow(url=f"https://api.example.com/items/{i}") for i in range(150)])
    site = make_distribution(tmp_path / "site", "flowtap-slow", {"slow": "flowtap_slow"},
                             {"flowtap_slow": SLOW_SINK})
    args = ["--set", f"store.path={store}", "export", "big", "--sink", "slow", "-o", "out.txt"]

    result = _flowtap(args, tmp_path, terminal.slave, [site])
    assert result.returncode == 0
    shown = terminal.text()
    line = "\rexporting 'big' through 'slow': 150 of 150 flows (100%), 1s, finishing out.txt\x1b[K"
    assert line in shown, shown
    assert shown.endswith("\r\x1b[K")
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 150

    result = _flowtap(args, tmp_path, subprocess.PIPE, [site])
    assert result.returncode == 0 and result.stderr == b""


def test_a_search_longer_than_a_second_shows_progress_on_a_terminal(tmp_path, terminal):
    # A regex that backtracks for a while on each body: long enough for a search of a few flows to
    # take more than a second here, whatever the machine's speed.
    expression = "~bs '(x+x+)+y'"
    match = compile_expression(expression)
    for n in range(16, 40, 2):
        started = time.perf_counter()
        match(make_flow(response_body=b"x" * n))
        if time.perf_counter() - started > 0.25:
            break
    store = tmp_path / "store.db"
    slow = [make_flow(url=f"https://api.example.com/slow/{i}", response_body=b"x" * n) for i in range(6)]
    _store(store, [*slow, make_flow(url="https://api.example.com/found", response_body=b"xxy")])
    args = ["--set", f"store.path={store}", "search", expression]

    result = _flowtap(args, tmp_path, terminal.slave)
    assert result.returncode == 0
    assert "api.example.com /found" in result.stdout.decode()
    shown = terminal.text()
    assert re.search(r"\rsearching the store: \d+ found, \d+s", shown), shown  # the first at 1 s or later

    result = _flowtap(args, tmp_path, subprocess.PIPE)
    assert result.returncode == 0 and result.stderr == b""
