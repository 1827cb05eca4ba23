"""Live control of a running ``flowtap run`` from another terminal, and who holds a port.

Each run listens on a Unix socket of its own, ``<control dir>/ctl-<pid>.sock``
(the directory owner-only, the socket too), speaking line-delimited JSON::

    → {"op": "pause"}
    ← {"ok": true, "changed": true, "session": {"id": ..., "state": "paused", ...}}

Operations: ``status``, ``pause``, ``resume``, ``clear``, ``stop``, and
``mark`` (``"text"``: a marker kept in the session store). ``flowtap ctl``
is the client. The control directory is ``$FLOWTAP_DATA_DIR/run`` when that
is set, else the user runtime dir (``$XDG_RUNTIME_DIR/flowtap``), else
``run`` in the user data dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import stat
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowtap.capture import Capture

log = logging.getLogger("flowtap")

OPS = ("status", "pause", "resume", "clear", "stop", "mark")
_SUN_PATH_MAX = 107
_TIMEOUT = 10
#: Seconds between the control server's checks for shutdown (how long closing it may take).
SHUTDOWN_POLL = 0.05


class ControlError(Exception):
    """No run to control, or it did not answer: a one-line message."""


def control_dir() -> Path:
    """Where the control sockets of running flowtap processes are."""
    if os.environ.get("FLOWTAP_DATA_DIR"):
        return Path(os.environ["FLOWTAP_DATA_DIR"]).expanduser() / "run"
    import platformdirs

    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(platformdirs.user_runtime_dir("flowtap"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_data_dir("flowtap")) / "run"


def socket_path(pid: int) -> Path:
    return control_dir() / f"ctl-{pid}.sock"


# -- the server, inside `flowtap run` -----------------------------------------------------


class ControlServer:
    """Serves the control socket of a running capture on a thread of its own.

    :param capture: the running capture.
    :param stop: called by the ``stop`` operation to end the run.
    """

    def __init__(self, capture: Capture, stop: Callable[[], None]) -> None:
        self.capture = capture
        self.stop = stop
        self.path = socket_path(os.getpid())
        self._server: Any = None  # a socketserver.ThreadingUnixStreamServer
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Listen; False (with a warning logged) if the socket cannot be made."""
        import socketserver

        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            info = directory.stat()
            if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
                os.chmod(directory, 0o700)
            if len(os.fsencode(self.path)) > _SUN_PATH_MAX:
                raise OSError(f"the path is longer than {_SUN_PATH_MAX} bytes")
            self.path.unlink(missing_ok=True)
            handler = type("Handler", (_handler_class(),), {"control": self})
            server = socketserver.ThreadingUnixStreamServer(str(self.path), handler, bind_and_activate=False)
            server.daemon_threads = True
            old = os.umask(0o177)
            try:
                server.server_bind()
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            server.server_activate()
        except OSError as exc:
            log.warning("no live control (`flowtap ctl`): cannot listen on %s: %s", self.path, exc.strerror or exc)
            return False
        self._server = server
        # serve_forever checks for shutdown() between polls: 0.5 s by default, which Ctrl-C waited for.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL},
                                        name="flowtap-control", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            try:
                self.path.unlink()
            except OSError:
                pass

    # -- operations ------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op not in OPS:
            return {"ok": False, "error": f"unknown operation {op!r}; expected one of: {', '.join(OPS)}"}
        if op == "stop":
            self.stop()
            return {"ok": True, "pid": os.getpid()}
        session = self.capture.session
        if session is None:
            return {"ok": False, "error": "no session is running"}
        changed = None
        if op in ("pause", "resume", "clear"):
            changed = getattr(session, op)()
        elif op == "mark":
            changed = session.mark(str(request.get("text") or time.strftime("mark %H:%M:%S")))
        if op != "status":
            self.capture.dispatcher.sync(_TIMEOUT)  # the store has it when the reply arrives
        return {"ok": True, "changed": changed, **self.status()}

    def status(self) -> dict[str, Any]:
        session = self.capture.session
        info: dict[str, Any] = {"pid": os.getpid(), "session": None, "argv": sys.argv}
        if session is not None:
            c = session.counts
            info["session"] = {
                "id": session.id, "name": session.name, "state": session.state.value,
                "started": session.started, "elapsed": session.elapsed,
                "recorded": c.recorded, "filtered": c.filtered, "paused": c.paused, "received": c.received,
            }  # fmt: skip
        info["sources"] = {name: source.describe() for name, source in list(self.capture.sources.items())}
        info["listening"] = listening(os.getpid())
        stores = [str(w.sink.path) for w in self.capture.workers if w.sink.name == "store"]
        info["store"] = stores[0] if stores else None
        info["sinks"] = [health.as_dict() for health in self.capture.health()]
        info["clean"] = self.capture.clean
        return info


def _handler_class() -> type:
    import socketserver

    class Handler(socketserver.StreamRequestHandler):
        control: ControlServer

        def handle(self) -> None:
            for line in self.rfile:
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("expected a JSON object")
                    reply = self.control.handle(request)
                except ValueError as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # never let a request take the run down
                    log.exception("control request failed")
                    reply = {"ok": False, "error": f"internal error: {exc!r}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()

    return Handler


# -- the client: `flowtap ctl` ---------------------------------------------------------------


def request(path: Path, op: str, timeout: float = _TIMEOUT, **fields: Any) -> dict[str, Any]:
    """Send one operation to the run listening on ``path``; its reply.

    :raises ControlError: it cannot be reached or gave no answer.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline()
    except OSError as exc:
        raise ControlError(f"{path}: no answer: {exc.strerror or exc}") from None
    try:
        return json.loads(line)
    except ValueError:
        raise ControlError(f"{path}: no answer (the run ended?)") from None


def running() -> dict[int, Path]:
    """The flowtap runs with a control socket, by pid; sockets of dead processes are removed."""
    found: dict[int, Path] = {}
    directory = control_dir()
    for path in sorted(directory.glob("ctl-*.sock")) if directory.is_dir() else ():
        match = re.fullmatch(r"ctl-(\d+)\.sock", path.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except OSError:
            pass
        found[pid] = path
    return found


def choose(pid: int | None) -> tuple[int, Path]:
    """The run ``flowtap ctl`` talks to: ``pid``, or the only one running."""
    runs = running()
    if pid is not None:
        if pid not in runs:
            raise ControlError(f"no flowtap run with pid {pid} (running: {_list(runs) or 'none'})")
        return pid, runs[pid]
    if not runs:
        raise ControlError(f"no running flowtap to control (no control socket in {control_dir()})")
    if len(runs) > 1:
        raise ControlError(f"{len(runs)} flowtap runs: {_list(runs)}; choose one with --pid")
    return next(iter(runs.items()))


def _list(runs: dict[int, Path]) -> str:
    described = []
    for pid, path in runs.items():
        try:
            session = request(path, "status", timeout=2).get("session") or {}
            described.append(f"pid {pid} (session {session.get('name')!r})")
        except ControlError:
            described.append(f"pid {pid}")
    return ", ".join(described)


def setup_ctl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("op", choices=OPS, metavar="ACTION",
                        help="status, pause, resume, clear (forget the flows so far), stop, or mark")
    parser.add_argument("text", nargs="*", help="the marker's text (mark)")
    parser.add_argument("--pid", type=int, help="the run to control when several are running")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")


def cmd_ctl(args: argparse.Namespace) -> int:
    """Drive a running ``flowtap run``: status, pause, resume, clear, stop, mark."""
    from flowtap.cli import UsageError

    text = " ".join(args.text)
    if text and args.op != "mark":
        raise UsageError(f"flowtap ctl {args.op}: takes no text (only mark does)")
    try:
        pid, path = choose(args.pid)
        fields = {"text": text} if text else {}
        reply = request(path, args.op, **fields)
    except ControlError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        print(f"flowtap: error: pid {pid}: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.op == "stop":
        print(f"pid {pid}: stopping")
        return 0
    session = reply.get("session") or {}
    name = f"session {session.get('name')!r} ({session.get('id')})"
    if args.op == "status":
        print(f"pid {pid}: {name}: {session.get('state')}, {session.get('elapsed', 0):.0f}s, "
              f"{session.get('recorded')} recorded, {session.get('filtered')} filtered out, "
              f"{session.get('paused')} while paused")
        for source, lines in (reply.get("sources") or {}).items():
            for line in lines:
                print(f"  [{source}] {line}")
        if reply.get("store"):
            print(f"  store: {reply['store']}")
        return 0
    done = {"pause": "paused", "resume": "recording again", "clear": "cleared", "mark": "marked"}[args.op]
    if reply.get("changed") is False:
        done = {"pause": "not running (already paused?)", "resume": "not paused",
                "clear": "ended: nothing to clear"}[args.op]
    print(f"pid {pid}: {name}: {done}" + (f" {text!r}" if text else ""))
    return 0


# -- who holds a port -------------------------------------------------------------------------


def _tcp_listeners() -> dict[int, list[tuple[str, int]]]:
    """Socket inode -> (address, port) of every listening TCP socket, from /proc/net."""
    import ipaddress

    found: dict[int, list[tuple[str, int]]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc shows each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.setdefault(int(fields[9]), []).append((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _socket_inodes(pid: int | str) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on (Linux; empty elsewhere)."""
    listeners = _tcp_listeners()
    return sorted(address for inode in _socket_inodes(pid) for address in listeners.get(inode, ()))


def port_holder(port: int) -> int | None:
    """The pid of a process listening on TCP ``port``, if /proc tells."""
    inodes = {inode for inode, addresses in _tcp_listeners().items() if any(p == port for _, p in addresses)}
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _socket_inodes(entry) & inodes:
            return int(entry)
    return None


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


_IN_USE = re.compile(r"\bin use\b", re.I)
_PORT = re.compile(r":(\d{1,5})(?!\d)")


def explain_in_use(message: str) -> str:
    """A source's "address in use" error, with which process holds the port.

    Asks the control socket of every running flowtap which ports it
    listens on; failing that, looks the port up in /proc.
    """
    if not _IN_USE.search(message):
        return message
    ports = [int(p) for p in _PORT.findall(message) if 0 < int(p) < 65536]
    for pid, path in running().items():
        if pid == os.getpid():
            continue
        try:
            status = request(path, "status", timeout=2)
        except ControlError:
            continue
        if any(port in ports for _, port in status.get("listening") or ()):
            session = status.get("session") or {}
            return (f"{message} (held by flowtap pid {pid}, session {session.get('name')!r}; "
                    f"`flowtap ctl stop --pid {pid}` ends it)")
    for port in ports:
        holder = port_holder(port)
        if holder is not None and holder != os.getpid():
            return f"{message} (held by pid {holder}: {_command_line(holder)})"
    return message
