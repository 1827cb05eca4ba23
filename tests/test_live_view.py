"""The live view of ``flowtap run`` in a real terminal (tmux): what it shows, `m` and its prompt,
the paused count, and that it redraws only what changed, also after a resize."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

import flowtap

from clirun import flowtap as run_cli
from fakedist import make_distribution, stream_source
from test_run_health import Terminal, wait_for

# Emits the flows its `urls` option names, one every `interval` seconds, then idles; a URL written
# "ERR url reason" is a flow that failed with that error. It says on stderr when it is done.
SCRIPTED_SOURCE = '''
import threading

import flowtap
from flowtap.testing import make_flow


class Scripted(flowtap.Source):
    def __init__(self, options):
        self.options = options
        self._stop = threading.Event()

    def start(self, emitter):
        def run():
            for i, spec in enumerate(self.options["urls"]):
                if self._stop.wait(self.options["interval"] if i else 0):
                    return
                if spec.startswith("ERR "):
                    _, url, error = spec.split(" ", 2)
                    emitter.emit(make_flow(url=url, status=None, error=error, source=self.name))
                else:
                    emitter.emit(make_flow(url=spec, source=self.name))

        threading.Thread(target=run, daemon=True).start()

    def stop(self):
        self._stop.set()

    def describe(self):
        return [f"playing {len(self.options['urls'])} flows"]


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare("sources.scripted",
            flowtap.Option("urls", list, [], "The flows: a URL, or 'ERR URL reason'."),
            flowtap.Option("interval", float, 0.0, "Seconds between two flows."))


@flowtap.hookimpl
def flowtap_register_sources(register):
    register("scripted", Scripted)
'''


@pytest.fixture
def site(tmp_path) -> Path:
    root = stream_source(tmp_path / "site")
    return make_distribution(root, "flowtap-scripted", {"scripted": "flowtap_scripted"},
                             {"flowtap_scripted": SCRIPTED_SOURCE})



def live_view(tmp_path: Path, site: Path, data_dir: Path, config: str, name: str = "live") -> Terminal:
    (tmp_path / "flowtap.toml").write_text(config)
    env = {"PYTHONPATH": str(site), "FLOWTAP_DATA_DIR": str(data_dir), "TERM": "xterm", "LANG": "C.UTF-8"}
    return Terminal(tmp_path, f"{shlex.quote(sys.executable)} -m flowtap run --name {name}", env)


def end(terminal: Terminal) -> str:
    """Press q, wait for the run to end; the screen after it."""
    terminal.tmux("send-keys", "q")
    wait_for(lambda: terminal.rc.exists() and terminal.rc.read_text().strip(), 20, "the run to end")
    return terminal.screen()


def row(screen: str, text: str) -> list[str]:
    """The cells of the table row holding ``text`` (split on blanks)."""
    return next(line for line in screen.splitlines() if text in line).split()


FLOWS = """[sources.scripted]
urls = ["https://api.test/plain", "http://api.test:8080/other-port", "http://api.test:80/default-port",
        "ERR https://down.test:8443/broken connection refused by peer", "https://[::1]:9443/v6"]
"""


def test_host_carries_its_port_and_a_failed_flow_its_error(tmp_path, site, data_dir):
    terminal = live_view(tmp_path, site, data_dir, FLOWS)
    try:
        screen = terminal.wait_for("/v6")
        assert row(screen, "/plain")[3] == "api.test"
        assert row(screen, "/other-port")[3] == "api.test:8080"
        assert row(screen, "/default-port")[3] == "api.test"
        assert row(screen, "/v6")[3] == "[::1]:9443"
        failed = next(line for line in screen.splitlines() if "/broken" in line)
        assert failed.split()[2:5] == ["ERR", "down.test:8443", "/broken"]
        assert "/broken  ! connection refused by peer" in failed
        assert end(terminal).count("session 'live' ended") == 1
    finally:
        terminal.close()


def test_m_asks_for_the_marker_shows_it_and_keeps_it_in_the_store(tmp_path, site, data_dir):
    terminal = live_view(tmp_path, site, data_dir, FLOWS)
    try:
        terminal.wait_for("/v6")
        # Esc cancels: no marker.
        terminal.tmux("send-keys", "m")
        terminal.wait_for(" marker:   (Enter sets it, Esc cancels)")
        terminal.tmux("send-keys", "-l", "never mind")
        terminal.wait_for(" marker: never mind  (Enter sets it, Esc cancels)")
        terminal.tmux("send-keys", "Escape")
        screen = terminal.wait_for("m mark  q end")
        assert "never mind" not in screen
        # Enter sets it; Backspace takes back a character; the keys typed are text, not commands.
        terminal.tmux("send-keys", "m")
        terminal.wait_for(" marker:   (Enter")
        terminal.tmux("send-keys", "-l", "after login, q p!")
        terminal.tmux("send-keys", "BSpace")
        terminal.wait_for(" marker: after login, q p  (Enter")
        terminal.tmux("send-keys", "Enter")
        screen = terminal.wait_for("marker: after login, q p -")
        lines = screen.splitlines()
        marker = next(i for i, line in enumerate(lines) if "marker: after login, q p" in line)
        assert lines[marker].startswith("-- ") and lines[marker].endswith("-" * 10)
        assert "/v6" in lines[marker - 1]  # after the flows so far
        assert "RUNNING" in lines[-1] and "m mark  q end" in lines[-1]  # the prompt is gone
        end(terminal)
    finally:
        terminal.close()
    with flowtap.open_store() as store:
        session = store.session("live")
        assert [(e.kind, e.text) for e in store.events(session.id)] == [("mark", "after login, q p")]
    assert "mark  'after login, q p'" in run_cli("sessions", "show", "live").stdout


def status_line(terminal: Terminal) -> str:
    return terminal.screen().rstrip("\n").splitlines()[-1]


def test_flows_while_paused_are_counted_on_the_status_line(tmp_path, site, data_dir):
    terminal = live_view(tmp_path, site, data_dir, "[sources.stream]\ninterval = 0.05\n")
    try:
        terminal.wait_for(" recorded | ")
        assert "while paused" not in status_line(terminal)
        terminal.tmux("send-keys", "p")
        terminal.wait_for("| PAUSED |")

        def counted() -> int:
            words = status_line(terminal).split(" | ")
            paused = next((w for w in words if w.endswith(" while paused")), "0 while paused")
            return int(paused.split()[0]) >= 5

        wait_for(counted, 20, "5 flows counted while paused")
        recorded = int(next(w for w in status_line(terminal).split(" | ") if w.endswith(" recorded"))
                       .split()[0])
        terminal.tmux("send-keys", "r")
        terminal.wait_for("| RUNNING |")
        line = status_line(terminal)
        assert " while paused | " in line  # the count stays: it is the session's
        assert int(next(w for w in line.split(" | ") if w.endswith(" recorded")).split()[0]) >= recorded
        end(terminal)
    finally:
        terminal.close()


def test_only_what_changed_is_redrawn_and_a_resize_keeps_the_table_intact(tmp_path, site, data_dir):
    terminal = live_view(tmp_path, site, data_dir, FLOWS)
    written = tmp_path / "written"
    try:
        terminal.wait_for("/v6")
        # A quiet second and a half: what reaches the terminal is the status line's clock, no more.
        terminal.tmux("pipe-pane", "-o", f"cat >> {shlex.quote(str(written))}")
        time.sleep(1.5)  # a window to watch, not a wait for an event
        terminal.tmux("pipe-pane")
        output = written.read_text(errors="replace")
        assert "\x1b[2J" not in output and "TIME" not in output and "api.test" not in output
        assert len(output) < 1000, output

        for columns, lines in ((80, 20), (70, 12), (120, 40)):
            terminal.tmux("resize-window", "-x", str(columns), "-y", str(lines))

            def redrawn(columns=columns, lines=lines) -> list[str] | None:
                shown = terminal.screen().rstrip("\n").split("\n")
                ruler = next((line for line in shown if line.startswith("-- messages")), "")
                # Redrawn, not just cut or reflowed by the terminal: the facts on top, the ruler as wide.
                done = (len(shown) == lines and shown[0].startswith("flowtap ") and len(ruler) == columns
                        and "RUNNING" in shown[-1])
                return shown if done else None

            shown = wait_for(redrawn, 10, f"the view at {columns}x{lines}")
            assert all(len(line) <= columns for line in shown)
            assert shown[0].startswith("flowtap ") and ": session 'live' (" in shown[0], shown
            header = next(i for i, line in enumerate(shown) if line.startswith("TIME "))
            assert shown[header].split() == ["TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION"]
            table = shown[header + 1:header + 6]
            assert [line.split()[2] for line in table] == ["200", "200", "200", "ERR", "200"]
            hosts = ["api.test", "api.test:8080", "api.test", "down.test:8443", "[::1]:9443"]
            for line, host in zip(table, hosts, strict=True):
                cell = line.split()[3]
                # HOST gives way on a narrow terminal (a cut shows as ~); from 80 columns on it fits.
                assert cell == host or (columns < 80 and cell.endswith("~") and host.startswith(cell[:-1]))
            assert "! conn" in table[3]
            assert any(line.startswith("-- messages: none ---") for line in shown)
            assert sum("TIME " in line for line in shown) == 1  # nothing left of the earlier size
        end(terminal)
    finally:
        terminal.close()
