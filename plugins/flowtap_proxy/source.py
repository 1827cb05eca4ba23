"""The proxy source: mitmproxy in a process of its own, its flows read back and emitted here.

The process (:mod:`flowtap_proxy.host`) runs the embedded mitmproxy and
converts each finished flow; a thread here reads them from a pipe and
emits them, and logs what the process logs. So the proxy's event loop
never waits for the GIL while the sinks work, and the sinks' CPU is not
the proxy's latency (README, Performance). Stopping closes the process's
standard input: it stops listening, writes what it finished, and exits;
so does it when the capture's process is gone, however it ended.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from typing import IO, Any, BinaryIO

import flowtap
from flowtap_proxy import ca
from flowtap_proxy.host import read_messages

#: Seconds the proxy's process may take to listen (importing mitmproxy included).
START_TIMEOUT = 30
#: Seconds the proxy's process may take to stop and write its last flows.
STOP_TIMEOUT = 10
#: Bytes the pipe from the proxy's process holds (Linux's default ceiling for a user, fs.pipe-max-size).
PIPE_SIZE = 1 << 20


class ProxySource(flowtap.Source):
    """Runs mitmproxy (regular, upstream or reverse mode) in a process of its own; emits its flows."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.host, self.port = options["listen"]
        self.mode: str = options["mode"]
        self.confdir = ca.ca_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._stopping = False
        self._syncs = threading.Condition()  # asked and answered: sync requests sent, ``synced`` read
        self._asked = self._answered = 0
        self._read_all = False  # the pipe ended

    # -- flowtap.Source ------------------------------------------------------------

    def start(self, emitter: flowtap.Emitter) -> None:
        """Start the proxy's process; return once it listens (``self.port`` is then the bound port)."""
        # -O: mitmproxy type-checks each message it makes unless optimized, raising and catching a
        # TypeError per None field; each left a cycle of frames holding the flow and its bodies.
        try:
            self._process = subprocess.Popen([sys.executable, "-O", "-m", "flowtap_proxy.host"],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             start_new_session=True)
        except OSError as exc:
            raise flowtap.SourceError(f"cannot start the proxy's process: {exc.strerror or exc}") from None
        assert self._process.stdout is not None
        _widen(self._process.stdout)
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout, emitter),
                                        name="flowtap-proxy", daemon=True)
        self._reader.start()
        setup = {"options": self.options, "name": self.name or "proxy",
                 "level": emitter.log.getEffectiveLevel()}
        try:
            assert self._process.stdin is not None
            pickle.dump(setup, self._process.stdin)
            self._process.stdin.flush()
        except OSError:  # it is gone already: the reader tells why
            pass
        if not self._ready.wait(START_TIMEOUT):
            self._error = f"the proxy did not start within {START_TIMEOUT}s"
        if self._error:
            error = self._error
            self.stop()
            raise flowtap.SourceError(error)

    def stop(self) -> None:
        """Stop listening and drop open connections; return once every flow the proxy finished is emitted."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        try:
            assert process.stdin is not None
            process.stdin.close()
        except OSError:
            pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(STOP_TIMEOUT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = None

    def sync(self, timeout: float | None = None) -> bool:
        """Return once every flow the proxy finished before the call is emitted; False after ``timeout``."""
        process = self._process
        if process is None or process.stdin is None or not self._ready.is_set():
            return True
        with self._syncs:
            try:
                process.stdin.write(b"s")
                process.stdin.flush()
            except (OSError, ValueError):  # stopped or gone: nothing more will come
                return True
            self._asked += 1
            ticket = self._asked
            return self._syncs.wait_for(lambda: self._answered >= ticket or self._read_all, timeout)

    def describe(self) -> list[str]:
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        address = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}"
        where = " (all interfaces)" if shown != self.host else ""
        kind, _, target = self.mode.partition(":")
        lines = [f"{kind} proxy listening on {address}{where}"]
        if kind == "reverse":
            lines.append(f"point clients at {address} instead of {target}")
        else:
            if kind == "upstream":
                lines.append(f"forwarding to the upstream proxy {target}")
            lines.append(f"export http_proxy={address} https_proxy={address}")
        if self.options["https"]:
            lines.append(f"HTTPS: clients must trust {ca.cert_path(self.confdir)} (run `flowtap ca` for how)")
        else:
            lines.append("HTTPS is passed through unseen (https = false)")
        return lines

    # -- the reading thread ---------------------------------------------------------------

    def _read(self, pipe: BinaryIO, emitter: flowtap.Emitter) -> None:
        """Emit the flows the process sends and log what it logs, until it ends."""
        with pipe:
            for kind, payload in read_messages(pipe):
                if kind == "flows":
                    for flow in payload:
                        emitter.emit(flow)
                elif kind == "log":
                    level, message = payload
                    emitter.log.log(level, "%s", message)
                elif kind == "dropped":  # lost flows: the run's exit code says so
                    emitter.failed(f"{payload} flow(s) dropped: the capture did not take them from the "
                                   "proxy's process fast enough")
                elif kind == "ready":
                    self.port = payload
                    self._ready.set()
                elif kind == "synced":
                    with self._syncs:
                        self._answered += 1
                        self._syncs.notify_all()
                elif kind == "error":
                    self._error = payload
                    self._ready.set()
        with self._syncs:
            self._read_all = True
            self._syncs.notify_all()
        process = self._process
        code = None
        if process is not None:
            try:
                code = process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if not self._ready.is_set():
            self._error = f"the proxy's process ended (exit code {code}) before it listened"
            self._ready.set()
        elif not self._stopping:
            emitter.failed(f"the proxy's process ended unexpectedly (exit code {code}): nothing more is "
                           "captured through it")


def _widen(pipe: IO[bytes]) -> None:
    """Let the pipe hold a large flow whole (Linux): read in 64 KiB pieces, each a wait for the GIL,
    a 1 MiB body crossed it slower than the proxy answered, and piled up in the proxy's process."""
    try:
        import fcntl  # not on Windows

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, AttributeError, OSError):  # not Linux, or above fs.pipe-max-size: as it is
        pass
