"""The control server inside ``flowtap run``: answers ``flowtap ctl`` on the run's own socket.

The protocol is described in :mod:`flowtap.control`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flowtap.control import OPS, TIMEOUT
from flowtap.control.runs import listening, socket_path

if TYPE_CHECKING:
    from flowtap.capture import Capture

log = logging.getLogger("flowtap")

_SUN_PATH_MAX = 107
#: Seconds between the control server's checks for shutdown (how long closing it may take).
SHUTDOWN_POLL = 0.05


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
            log.warning("no live control (`flowtap ctl`): cannot listen on %s: %s",
                        self.path, exc.strerror or exc)
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
            self.capture.sync(TIMEOUT)  # the store has it when the reply arrives
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
        # A PostgreSQL store names its database (``location``), not the spool it writes first.
        stores = [getattr(w.sink, "location", None) or getattr(w.sink, "path", None)
                  for w in self.capture.workers if w.sink.name == "store"]
        info["store"] = str(stores[0]) if stores and stores[0] else None
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
