"""A failing third-party sink, seen where a user looks: the live view's message area (in a real
terminal, through tmux), the end-of-run summary, `flowtap ctl status`, and `flowtap run`'s exit code."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import flowtap
from flowtap.control import runs

from clirun import flowtap as run_cli
from fakedist import make_distribution, replay_source, stream_source

FAULTY_SINK = '''
import threading

import flowtap


class Faulty(flowtap.Sink):
    """mode: "raise" (every write), "hang-close" (close never returns), "ok"."""

    def __init__(self, options):
        self.mode = options["mode"]

    def write(self, flow):
        if self.mode == "raise":
            raise RuntimeError("disk on fire")

    def close(self):
        if self.mode == "hang-close":
            threading.Event().wait()


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare("sinks.faulty", flowtap.Option("mode", str, "raise", "How to misbehave."))


@flowtap.hookimpl
def flowtap_register_sinks(register):
    register("faulty", Faulty)
'''


HANG_AT_CLOSE = "[sources.stream]\ninterval = 0.05\n[sinks.faulty]\nmode = 'hang-close'\n"


@pytest.fixture
def site(tmp_path) -> Path:
    """Plugins on their own path: the stream and replay sources, the faulty sink (each a distribution)."""
    root = stream_source(tmp_path / "site")
    replay_source(root)
    return make_distribution(root, "flowtap-faulty", {"faulty": "flowtap_faulty"},
                             {"flowtap_faulty": FAULTY_SINK})



def iter_queue(lines: queue.Queue[str | None], timeout: float = 5):
    """What a reader thread put in ``lines`` until the stream ended (None)."""
    while (line := lines.get(timeout=timeout)) is not None:
        yield line


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- exit codes and the summary ------------------------------------------------------------------


def test_a_clean_run_exits_0_and_a_failing_sink_makes_it_1(tmp_path, site, data_dir):
    (tmp_path / "ok.toml").write_text("[sources.replay]\ncount = 5\n[session]\nduration = '1s'\n"
                                      "[sinks.faulty]\nmode = 'ok'\n")
    result = run_cli("-c", "ok.toml", "run", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 0, result.stderr
    assert not result.stderr
    assert "  faulty  ok           5       0       0" in result.stdout

    (tmp_path / "bad.toml").write_text("[sources.replay]\ncount = 20\n[session]\nduration = '1s'\n"
                                       "[sinks.faulty]\nmode = 'raise'\n")
    result = run_cli("-c", "bad.toml", "run", "--quiet", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    summary = lines[lines.index(next(line for line in lines if "ended after" in line)) + 1:]
    assert [line.split()[:5] for line in summary] == [
        ["SINK", "STATE", "WRITTEN", "ERRORS", "MISSED"],
        ["store", "ok", "20", "0", "0"],
        ["faulty", "failing", "0", "20", "0"],
    ]
    assert summary[2].endswith("last error: write: disk on fire")
    # The first error with its traceback, the repeats in one summary line: never a line per flow.
    errors = [line for line in result.stderr.splitlines() if line.startswith("flowtap: ERROR: ")]
    assert errors[0] == "flowtap: ERROR: sink 'faulty' raised in write: RuntimeError: disk on fire"
    assert errors[1] == ("flowtap: ERROR: sink 'faulty': 19 more times; "
                         "last: raised in write: RuntimeError: disk on fire")
    assert len(errors) == 2 and result.stderr.count("Traceback") == 1
    assert result.stderr.splitlines()[-1] == (
        "flowtap: error: sink 'faulty' failing during the run (see above): exit code 1")


def test_bad_config_exits_2(tmp_path, site):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\ncount = 'many'\n")
    result = run_cli("run", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 2 and result.stderr.startswith("flowtap: error: ") and not result.stdout


def session_state(store: Path) -> str | None:
    """The state the store holds for its last session (None: none yet)."""
    with flowtap.open_store(store) as opened:
        sessions = opened.sessions()
    return sessions[0].state if sessions else None


def start_run(tmp_path: Path, site: Path, config: str, *args: str) -> subprocess.Popen:
    (tmp_path / "flowtap.toml").write_text(config)
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run", *args], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(site)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: runs.socket_path(proc.pid).exists() or proc.poll() is not None, 30, "the run to start")
    assert proc.poll() is None, proc.communicate()
    return proc


def test_a_sink_that_does_not_close_is_abandoned_after_close_timeout_exit_1(tmp_path, site, data_dir):
    proc = start_run(tmp_path, site, HANG_AT_CLOSE + "[dispatch]\nclose_timeout = '0.5s'\n", "--quiet")
    try:
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert took < 5, took
    assert "sink 'faulty' did not finish within [dispatch] close_timeout (0.5 s): abandoned" in err
    faulty = next(line for line in out.splitlines() if line.split()[:2] == ["faulty", "abandoned"])
    assert "stuck in close at " in faulty and "flowtap_faulty.py" in faulty


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_second_signal_while_sinks_finish_exits_130_naming_them(tmp_path, site, data_dir, second):
    proc = start_run(tmp_path, site, HANG_AT_CLOSE + "[dispatch]\nclose_timeout = '60s'\n", "--quiet")
    try:
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=lambda: [*map(lines.put, proc.stderr), lines.put(None)], daemon=True).start()
        proc.send_signal(signal.SIGINT)
        # The run says what it waits for (an event to await, not a sleep): then the second signal.
        while True:
            line = lines.get(timeout=20)
            assert line is not None, "the run ended without saying what it waits for"
            if "waiting for sink" in line:
                break
        # The store closes on a thread of its own (the hung sink's cannot hold it up), usually
        # before this notice, but not always on a loaded machine: it may be named too.
        assert re.fullmatch(r"flowtap: waiting for sinks? ('store', )?'faulty' \(in close\) to finish; "
                            r"Ctrl-C again to quit at once", line.strip()), line
        wait_for(lambda: session_state(data_dir / "flowtap.db") == "ended", 20, "the store to close")
        began = time.monotonic()
        proc.send_signal(second)
        proc.wait(timeout=10)
        took = time.monotonic() - began
    finally:
        proc.kill()
    err = "".join(iter_queue(lines))
    assert proc.returncode == 130, err
    assert took < 3, took
    assert err.strip().splitlines()[-1] == (
        "flowtap: interrupted again: quitting now; "
        "sink 'faulty' (in close) did not finish (output may be incomplete)")


def test_the_run_ends_on_its_signal_handlers_flag_alone():
    """`flowtap run`'s SIGINT/SIGTERM handler only sets a flag: it runs in the main thread, maybe
    inside the view's ``stop.wait()`` with the event's lock held, where ``stop.set()`` waited for that
    lock forever (a run that ignored Ctrl-C). The view's loop ends on the flag, the event untouched."""
    from flowtap.view import ConsoleView

    class _Capture:
        session = None

    stop, signalled = threading.Event(), []
    timer = threading.Timer(0.3, lambda: signalled.append(signal.SIGINT))
    timer.start()
    began = time.monotonic()
    with open(os.devnull, "w") as out:
        ConsoleView(_Capture(), interactive=False, out=out).run_until(stop, lambda: bool(signalled))  # type: ignore[arg-type]
    assert signalled and not stop.is_set() and time.monotonic() - began < 2


# -- flowtap ctl status ---------------------------------------------------------------------------


def test_ctl_status_lists_each_sinks_health(tmp_path, site, data_dir):
    proc = start_run(tmp_path, site, "[sources.stream]\ninterval = 0.02\n[sinks.faulty]\nmode = 'raise'\n",
                     "--quiet")
    try:
        def failing():
            reply = json.loads(run_cli("ctl", "status", "--json").stdout)
            sinks = {sink["name"]: sink for sink in reply["sinks"]}
            return reply if sinks["faulty"]["errors"] >= 3 else None

        reply = wait_for(failing, 20, "the faulty sink to fail 3 times")
        sinks = {sink["name"]: sink for sink in reply["sinks"]}
        assert reply["clean"] is False
        assert sinks["faulty"]["state"] == "failing" and sinks["faulty"]["written"] == 0
        assert sinks["faulty"]["last_error"] == "write: disk on fire" and sinks["faulty"]["clean"] is False
        assert sinks["faulty"]["plugin"] == "faulty"
        assert sinks["store"]["state"] == "ok" and sinks["store"]["errors"] == 0 and sinks["store"]["clean"]
        assert set(sinks["store"]) >= {"written", "errors", "missed", "state", "last_error", "backlog",
                                       "stuck_in"}

        text = run_cli("ctl", "status").stdout.splitlines()
        table = text[text.index(next(line for line in text if line.split()[:2] == ["SINK", "STATE"])):]
        assert table[1].split()[:2] == ["store", "ok"]
        assert table[2].split()[:2] == ["faulty", "failing"]
        assert table[2].endswith("last error: write: disk on fire")
        assert "not clean: a sink or plugin failed" in text[-1]
        assert run_cli("ctl", "stop").returncode == 0
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err


# -- the live view, in a real terminal ---------------------------------------------------------------


class Terminal:
    """A tmux server of our own (its own socket) running one command in a 120x40 terminal."""

    def __init__(self, tmp_path: Path, command: str, env: dict[str, str]) -> None:
        if not shutil.which("tmux"):
            pytest.skip("needs tmux (.ci/run installs it)")
        self.socket = Path(tempfile.mkdtemp(prefix="tm-")) / "s"
        script = tmp_path / "term.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        self.rc = tmp_path / "rc"
        # pytest sets COLUMNS and LINES (80x24); the terminal's own size must win.
        script.write_text(f"unset COLUMNS LINES\n{exports}cd {shlex.quote(str(tmp_path))}\n"
                          f"{command}\necho $? > {self.rc}\nsleep 60\n")
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", f"sh {shlex.quote(str(script))}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        def shown() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return wait_for(shown, timeout, f"{text!r} on screen")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10)
        shutil.rmtree(self.socket.parent, ignore_errors=True)


def test_the_live_view_shows_the_start_up_facts_and_a_sink_error_in_its_message_area(
        tmp_path, site, data_dir):
    (tmp_path / "flowtap.toml").write_text("[sources.stream]\ninterval = 0.05\n"
                                           "[sinks.faulty]\nmode = 'raise'\n")
    env = {"PYTHONPATH": str(site), "FLOWTAP_DATA_DIR": str(data_dir), "TERM": "xterm"}
    terminal = Terminal(tmp_path, f"{shlex.quote(sys.executable)} -m flowtap run --name live", env)
    try:
        screen = terminal.wait_for("sink 'faulty' raised in write")
        lines = screen.splitlines()
        assert lines[0].startswith("flowtap ") and ": session 'live' (" in lines[0]
        assert lines[1] == "  [stream] streaming a flow every 0.05s"
        assert lines[2].split() == ["TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION"]
        ruler = next(i for i, line in enumerate(lines) if line.startswith("-- messages"))
        assert lines[ruler + 1].endswith(" ERROR: sink 'faulty' raised in write: RuntimeError: disk on fire "
                                         "(in full when the view ends)")
        assert "sink 'faulty' failing" in lines[-1] and "RUNNING" in lines[-1]
        # Nothing printed raw over the table: no log line, no traceback.
        assert "flowtap: ERROR" not in screen and "Traceback" not in screen
        assert "GET" in screen  # the table goes on

        terminal.tmux("send-keys", "q")
        wait_for(lambda: terminal.rc.exists() and terminal.rc.read_text().strip(), 20, "the run to end")
        assert terminal.rc.read_text().strip() == "1"
        after = terminal.screen()
        # Back on the normal screen: the held records in full (the traceback), then the summary.
        assert "flowtap: ERROR: sink 'faulty' raised in write: RuntimeError: disk on fire" in after
        assert "Traceback" in after
        assert after.index("Traceback") < after.index("session 'live' ended")
        assert any(line.split()[:2] == ["faulty", "failing"] for line in after.splitlines())
        assert "flowtap: error: sink 'faulty' failing during the run (see above): exit code 1" in after
    finally:
        terminal.close()
