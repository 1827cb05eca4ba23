"""`flowtap ctl` against a running `flowtap run`, the control socket's protocol and permissions,
and a second run on a taken port naming who holds it."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flowtap
from flowtap.control import client, runs, server
from flowtap.testing import capture, make_flow

from clirun import flowtap as run_cli
from fakedist import stream_source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """A `flowtap run` with the stream source, in the background."""

    def __init__(self, tmp_path: Path, name: str, listen: str = "", interval: float = 0.02) -> None:
        site = tmp_path / "site"
        if not site.exists():
            stream_source(site)
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[sources.stream]\ninterval = {interval}\nlisten = "{listen}"\n')
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowtap", "-c", str(config), "run", "--name", name], cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(site)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL)
        self.site = site
        deadline = time.monotonic() + 30
        while not runs.socket_path(self.proc.pid).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"flowtap run did not start: {self.proc.communicate()}")
            time.sleep(0.05)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli("ctl", *args)

    def finish(self) -> tuple[str, str]:
        try:
            return self.proc.communicate(timeout=20)
        finally:
            self.proc.kill()


def test_ctl_drives_a_running_capture(tmp_path, data_dir):
    run = Run(tmp_path, "live")
    try:
        path = runs.socket_path(run.proc.pid)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        status = run.ctl("status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"pid {run.proc.pid}: session 'live' (")
        assert ": running, " in status.stdout
        assert "[stream] streaming a flow every 0.02s" in status.stdout
        assert f"store: {data_dir / 'flowtap.db'}" in status.stdout

        assert run.ctl("pause").stdout.strip().endswith(": paused")
        assert run.ctl("pause").stdout.strip().endswith(": not running (already paused?)")
        time.sleep(0.3)
        reply = json.loads(run.ctl("status", "--json").stdout)
        assert reply["session"]["state"] == "paused" and reply["session"]["paused"] > 0
        assert run.ctl("resume").stdout.strip().endswith(": recording again")
        cleared = run.ctl("clear")
        assert cleared.stdout.strip().endswith(": cleared")
        with flowtap.open_store() as store:
            session = store.session("live")
            assert session.state == "running" and session.flows < 10  # what came before clear is gone
        marked = run.ctl("mark", "after", "login")
        assert marked.returncode == 0 and marked.stdout.strip().endswith(": marked 'after login'")
        assert run.ctl("stop").stdout.strip() == f"pid {run.proc.pid}: stopping"
        out, err = run.finish()
        assert run.proc.returncode == 0, err
        assert "session 'live' ended" in out and not path.exists()
    finally:
        run.proc.kill()
    with flowtap.open_store() as store:
        session = store.session("live")
        kinds = [(e.kind, e.text) for e in store.events(session.id)]
    assert session.state == "ended" and session.paused > 0
    assert kinds == [("pause", None), ("resume", None), ("clear", None), ("mark", "after login")]
    shown = run_cli("sessions", "show", "live")
    assert "mark  'after login'" in shown.stdout


def test_ctl_errors(tmp_path, data_dir):
    result = run_cli("ctl", "status")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"flowtap: error: no running flowtap to control (no control socket in {data_dir / 'run'})")
    runs = [Run(tmp_path, "one")]
    try:
        runs.append(Run(tmp_path, "two"))
        first, second = runs
        result = run_cli("ctl", "pause")
        assert result.returncode == 2 and "2 flowtap runs: " in result.stderr and "--pid" in result.stderr
        assert f"pid {first.proc.pid} (session 'one')" in result.stderr
        result = run_cli("ctl", "status", "--pid", "1")
        assert result.returncode == 2 and "no flowtap run with pid 1" in result.stderr
        result = run_cli("ctl", "pause", "now")
        assert result.returncode == 2 and "takes no text" in result.stderr
        result = run_cli("ctl", "status", "--pid", str(second.proc.pid))
        assert result.returncode == 0 and "session 'two'" in result.stdout
    finally:
        for run in runs:
            run.proc.terminate()
            run.finish()


def test_a_second_run_on_a_taken_port_says_which_flowtap_holds_it(tmp_path, data_dir):
    port = free_port()
    first = Run(tmp_path, "holder", listen=f"127.0.0.1:{port}")
    try:
        config = tmp_path / "second.toml"
        config.write_text(f'[sources.stream]\nlisten = "127.0.0.1:{port}"\n')
        result = run_cli("-c", str(config), "run", "--name", "late", pythonpath=[first.site])
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"flowtap: error: source 'stream': cannot listen on 127.0.0.1:{port}: the port is in use "
            f"(held by flowtap pid {first.proc.pid}, session 'holder'; "
            f"`flowtap ctl stop --pid {first.proc.pid}` ends it)")
    finally:
        first.proc.terminate()
        first.finish()
    with flowtap.open_store() as store:  # the run that could not start left no session behind
        assert [s.name for s in store.sessions()] == ["holder"]


def test_a_port_held_by_another_program_is_found_in_proc(tmp_path, data_dir):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc")
    site = stream_source(tmp_path / "site")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "flowtap.toml"
        config.write_text(f'[sources.stream]\nlisten = "127.0.0.1:{port}"\n')
        result = run_cli("-c", str(config), "run", pythonpath=[site])
    assert result.returncode == 2
    assert f"the port is in use (held by pid {os.getpid()}: " in result.stderr and "pytest" in result.stderr


def test_the_protocol_answers_bad_requests_and_status(data_dir):
    with capture(config={"store": {"path": str(data_dir / "s.db")}, "session": {"name": "api"}}) as cap:
        control = server.ControlServer(cap.capture, stop=lambda: None)
        assert control.start()
        try:
            cap.feed(make_flow())
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(control.path))
                reader = sock.makefile("rb")
                for line in (b"not json\n", b'"a string"\n', b'{"op": "explode"}\n', b'{"op": "status"}\n'):
                    sock.sendall(line)
                    replies = json.loads(reader.readline())
                    if line.startswith(b'{"op": "status"'):
                        assert replies["ok"] and replies["session"]["name"] == "api"
                        assert replies["session"]["recorded"] == 1 and replies["pid"] == os.getpid()
                    else:
                        assert replies["ok"] is False and replies["error"]
            assert client.request(control.path, {"op": "mark", "text": "x"})["changed"] is True
            assert client.request(control.path, {"op": "explode"}) == {
                "ok": False, "error": "unknown operation 'explode'; expected one of: status, pause, resume, "
                                      "clear, stop, mark"}
        finally:
            control.close()
        assert not control.path.exists()
    class Marks:
        seen = []

        @flowtap.hookimpl
        def flowtap_session_mark(self, text):
            Marks.seen.append(text)

    with capture(Marks(), config={"store": {"enabled": False}}) as cap:  # any plugin gets the marker
        control = server.ControlServer(cap.capture, stop=lambda: None)
        assert control.start()
        try:
            assert client.request(control.path, {"op": "mark", "text": "logged in"})["changed"] is True
            assert Marks.seen == ["logged in"]
        finally:
            control.close()
