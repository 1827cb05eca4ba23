"""Captured control bytes never reach a terminal raw, and the curl export sends them back exactly.

End to end: a raw client sends a request full of ESC, CR, NUL, DEL, C1 and non-UTF-8 bytes through
``flowtap run``'s proxy to a raw upstream that answers in kind; then the run's own lines, ``flowtap
search``, ``show`` and ``sessions`` are read for raw control characters, and the curl export is
written to a file (owner-only), read the same way, and run with bash and real curl against the same
upstream, which compares the bytes it receives with the first time.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import flowtap
from flowtap.cli import _SafeFormatter
from flowtap.control import runs
from flowtap.store import render
from flowtap.testing import capture, make_flow
from flowtap.view import ConsoleView, MessageArea, flow_line, flow_row, health_table

from clirun import flowtap as run_cli

pytestmark = pytest.mark.timeout(90)

# What a terminal must never be handed raw: C0 controls but LF and TAB, DEL, C1 controls.
RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]".replace("\x0a", "\x0b"))


def raw_controls(text: str) -> list[str]:
    return RAW_CONTROL.findall(text)


# -- the helper ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("ok\rforged", "ok\\rforged"),
    ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    ("csi\x9b31m", "csi\\x9b31m"),
    ("not utf-8 \udce9", "not utf-8 \\xe9"),
    ("line\nnext\ttab", "line\\nnext\\ttab"),
    ("café C:\\path", "café C:\\path"),
    ("invoice\u202etxt.exe", "invoice\\u202etxt.exe"),  # a right-to-left override would show "exe.txt"
    ("\u2066isolate\u2069 \u200fmark", "\\u2066isolate\\u2069 \\u200fmark"),
])
def test_terminal_safe_escapes_every_control_character(text, shown):
    assert flowtap.terminal_safe(text) == shown
    assert flowtap.terminal_safe(shown) == shown


def test_terminal_safe_keeps_lines_and_tabs_for_text_shown_as_lines():
    assert flowtap.terminal_safe("a\r\nb\n\tc\rd\x1b", lines=True) == "a\r\nb\n\tc\\rd\\x1b"


def hostile_flow() -> flowtap.Flow:
    return make_flow(url="http://evil.test/a\x1b]0;owned\x07b?c=\rd", method="GE\x1bT",
                     request_headers=[("X-Esc", "\x1b[2J")], error="reset\r\x1b[1A by peer")


def test_the_live_view_and_the_plain_lines_show_control_characters_escaped(tmp_path):
    flow = hostile_flow()
    assert not raw_controls(" ".join(flow_row(flow)))
    line = flow_line(flow)
    assert not raw_controls(line) and "a\\x1b]0;owned\\x07b" in line and "reset\\r\\x1b[1A by peer" in line

    class _Capture:
        session = None

    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        view = ConsoleView(_Capture(), interactive=False, out=fh)  # type: ignore[arg-type]
        view.started()
        view.add(flow)
        view.flush()
    assert not raw_controls(out.read_text())

    logger = logging.getLogger("flowtap.test-terminal")
    area = MessageArea(logger)
    area.attach()
    try:
        logger.warning("bad URL %s", "http://x/\x1b[2J\rflowtap: ERROR: forged")
    finally:
        area.detach()
    (message,), _ = area.snapshot()
    assert not raw_controls(message) and "\\x1b[2J\\rflowtap: ERROR: forged" in message


def test_a_sinks_error_text_is_shown_escaped():
    from flowtap.health import SinkHealth

    health = SinkHealth("har", "flowtap_har", errors=1, state="failing",
                        last_error="cannot write http://x/\x1b]0;owned\x07")
    (_, row) = health_table([health])
    assert not raw_controls(row) and row.endswith("last error: cannot write http://x/\\x1b]0;owned\\x07")


def test_log_lines_escape_control_characters_and_indent_further_lines():
    record = logging.LogRecord("flowtap", logging.WARNING, __file__, 1, "from %s",
                               ("\x1b[2Jpeer\nflowtap: ERROR: forged",), None)
    text = _SafeFormatter("flowtap: %(levelname)s: %(message)s").format(record)
    assert text == "flowtap: WARNING: from \\x1b[2Jpeer\n  flowtap: ERROR: forged"


def test_show_lines_of_a_stored_flow_are_terminal_safe():
    flow = make_flow(url="http://evil.test/a\x1b]0;owned\x07b", request_headers=[("X-Esc", "\x1b[2J")],
                     response_body=b"body \x1b[2J line\r\nnext\rforged",
                     response_headers=[("Content-Type", "text/plain")])
    lines = [p for p in render.flow_parts(flow, _Row(), None) if isinstance(p, str)]
    assert not any(raw_controls(line.replace("\r\n", "\n")) for line in lines)
    text = "\n".join(lines)
    assert "X-Esc: \\x1b[2J" in text and "body \\x1b[2J line\r\nnext\\rforged" in text


class _Row:
    session = "s"


# -- end to end -----------------------------------------------------------------------------------

HEADERS = [
    (b"X-Esc", b"a\x1b[31mred\x1b[0m\x1b]0;owned\x07"),
    (b"X-Cr", b"value\rX-Forged: yes"),
    (b"X-Del", b"a\x7fb\x01c"),
    (b"X-C1", "csi\x9b31m é".encode()),  # a C1 control as UTF-8
    (b"X-Empty", b""),
    (b"X-Nul", b"a\x00b"),  # no command-line argument can carry it
    (b"Authorization", b"Bearer s3cret"),
]
BODY = b"line1\r\nfake\rline\x1b[2J\x00end\x9b\xc2\x9b"
RESPONSE_BODY = b"\x1b[2Jcleared\rforged\nnext"


class RawUpstream:
    """A TCP server that records each request's raw head and body, and answers with control bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[bytes, bytes]] = []
        self.arrived = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1)) if re.search(
                    rb"(?im)^content-length:", head) else 0
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\x1b[5m\r\nContent-Type: text/plain\r\n"
                             b"X-Evil: \x1b]0;title\x07\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % len(RESPONSE_BODY) + RESPONSE_BODY)
                with self.arrived:
                    self.requests.append((head, body))
                    self.arrived.notify_all()

    def wait(self, count: int, timeout: float = 20) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests

    def close(self) -> None:
        self.sock.close()


def headers_of(head: bytes) -> dict[bytes, bytes]:
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.lower()] = value.strip(b" ")
    return fields



def test_control_bytes_never_reach_the_terminal_and_curl_sends_them_back(tmp_path, data_dir):
    env = {"FLOWTAP_DATA_DIR": str(data_dir)}
    upstream = RawUpstream()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        proxy_port = probe.getsockname()[1]
    (tmp_path / "flowtap.toml").write_text(f'[sources.proxy]\nlisten = "127.0.0.1:{proxy_port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run"], cwd=tmp_path,
                            env=dict(os.environ, **env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not runs.socket_path(proc.pid).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        target = f"http://127.0.0.1:{upstream.port}/evil\x1b[31m?q=\x7f".encode()
        request = (b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % upstream.port
                   + b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS)
                   + b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(BODY) + BODY)
        with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as client:
            client.sendall(request)
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
        assert reply.endswith(RESPONSE_BODY), reply
        upstream.wait(1)
        assert run_cli("ctl", "stop", "--pid", str(proc.pid), env=env).returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    run_output = (out + err).decode("utf-8")
    assert proc.returncode == 0 and "/evil\\x1b[31m?q=\\x7f" in run_output, run_output
    assert not raw_controls(run_output)

    search = run_cli("search", "--session", "last", env=env)
    assert search.returncode == 0 and not raw_controls(search.stdout), search.stderr
    flow_id = search.stdout.splitlines()[1].split()[0]
    show = run_cli("show", flow_id, env=env)
    assert show.returncode == 0 and not raw_controls(show.stdout.replace("\r\n", "\n")), show.stderr
    assert "X-Esc: a\\x1b[31mred\\x1b[0m\\x1b]0;owned\\x07" in show.stdout
    assert "X-Cr: value\\rX-Forged: yes" in show.stdout and "X-C1: csi\\x9b31m é" in show.stdout
    assert "X-Evil: \\x1b]0;title\\x07" in show.stdout and "HTTP/1.1 200 OK\\x1b[5m" in show.stdout
    assert "\\x1b[2Jcleared\\rforged\nnext" in show.stdout
    assert not raw_controls(run_cli("sessions", env=env).stdout)

    exported = tmp_path / "replay.sh"
    old_umask = os.umask(0o022)
    try:
        result = run_cli("export", "last", "--format", "curl", "-o", str(exported), env=env)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    script = exported.read_bytes().decode("utf-8")
    assert not raw_controls(script)
    assert "# the header X-Nul was left out: it holds a NUL byte" in script
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    replay = subprocess.run(["bash", str(exported)], capture_output=True, timeout=30)
    assert replay.returncode == 0, replay.stderr
    upstream.wait(2)
    upstream.close()
    (first_head, first_body), (again_head, again_body) = upstream.requests
    assert first_body == BODY and again_body == BODY
    assert first_head.split(b" ")[1] == again_head.split(b" ")[1] == b"/evil\x1b[31m?q=\x7f"
    first, again = headers_of(first_head), headers_of(again_head)
    for name, value in HEADERS:
        if name != b"X-Nul":
            assert first[name.lower()] == again[name.lower()] == value, name
    assert b"x-nul" in first and b"x-nul" not in again


def test_show_raw_prints_bytes_to_a_pipe_but_not_control_bytes_to_a_terminal(tmp_path):
    path = tmp_path / "s.db"
    body = b"\x1b]0;owned\x07\x1b[2Jbinary\x00"
    with capture(config={"store": {"path": str(path)}}) as cap:
        cap.feed(make_flow(response_body=body,
                           response_headers=[("Content-Type", "application/octet-stream")]))
    with flowtap.open_store(path) as store:
        flow_id = next(store.rows()).id
    command = [sys.executable, "-m", "flowtap", "show", flow_id, "--raw", "--set", f"store.path={path}"]
    piped = subprocess.run(command, capture_output=True, timeout=30)
    assert piped.returncode == 0 and body in piped.stdout

    leader, follower = pty.openpty()
    try:
        shown = subprocess.run(command, stdout=follower, stderr=subprocess.PIPE, timeout=30)
        os.close(follower)
        follower = -1
        text = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            text += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert shown.returncode == 0, shown.stderr
    assert b"\x1b" not in text
    assert f"[{len(body)} bytes not printed: they hold control characters".encode() in text
