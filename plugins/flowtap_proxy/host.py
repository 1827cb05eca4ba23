"""The proxy's process: mitmproxy and the conversion of its flows, on a GIL of their own.

``python -m flowtap_proxy.host`` is started by :class:`flowtap_proxy.source.ProxySource`.
It reads its setup (a pickled dict: the source's options, name and log
level) from standard input, runs :class:`flowtap_proxy.embedded.EmbeddedProxy`,
and writes messages to its standard output (anything else printed there
goes to standard error), each a 4-byte little-endian length and a pickle
of ``(kind, payload)``:

- ``("ready", port)`` once it listens, or ``("error", message)`` if it cannot;
- ``("flows", [Flow, ...])``, the flows finished since the last message (a
  thread of its own pickles and writes them; the event loop only queues);
- ``("log", (level, message))``, the source's log records;
- ``("dropped", count)`` when more than :data:`BACKLOG` flows (or :data:`BACKLOG_BYTES` of
  bodies) waited for the pipe (see :meth:`_Sender.emit`);
- ``("synced", None)`` for each ``s`` byte read from standard input, once every
  flow finished before it is written (:meth:`flowtap.Source.sync`).

End of standard input (the capture stopping it, or its process gone, even
by ``kill -9``) stops the proxy: what it finished is written, then it exits.
It ignores SIGINT: a Ctrl-C at the terminal is the capture's to handle.

Why a process: in the capture's, the proxy's event loop shared the GIL with
the sinks' threads, and every hand-over cost the proxy time and CPU (see
README, Performance).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from typing import Any, BinaryIO

#: Flows (and bodies' bytes) waiting for the pipe past which the proxy holds its answers back
#: while the capture is taking flows: the proxy then goes at the pace of flowtap's process.
PAUSE, PAUSE_BYTES = 1024, 16 << 20
#: Seconds without the capture taking a flow after which the proxy no longer holds answers back.
STALL = 1.0
#: Flows at most waiting for the pipe; past it they are dropped, counted and reported.
BACKLOG, BACKLOG_BYTES = 16384, 128 << 20
#: Flows at most in one message, and bodies' bytes (a message is a copy of its flows while written).
BATCH, BATCH_BYTES = 256, 1 << 20
#: Seconds the sender lets flows gather after the first before it writes them: one message, one
#: wake-up of each side, for the flows of a few milliseconds rather than for each.
GATHER = 0.02
#: Bodies' bytes that pass between two full collections of the cyclic garbage collector.
COLLECT_BYTES = 8 << 20
_SYNC, _DONE = object(), object()  # markers in the sender's queue


def write_message(fd: int, kind: str, payload: Any) -> None:
    """Write one message to the pipe ``fd`` (whole: the caller holds the writing lock)."""
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(4, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def read_messages(pipe: BinaryIO) -> Iterator[tuple[str, Any]]:
    """The messages on ``pipe`` until its end (a message cut short ends it too)."""
    while True:
        head = pipe.read(4)
        if len(head) < 4:
            return
        data = pipe.read(int.from_bytes(head, "little"))
        try:
            yield pickle.loads(data)
        except Exception:  # cut short: the process died while writing
            return


class _Channel:
    """The pipe to the capture, shared by the sender thread and the log handler."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def send(self, kind: str, payload: Any) -> None:
        if self.broken:
            return
        with self.lock:
            try:
                write_message(self.fd, kind, payload)
            except OSError:  # the capture is gone
                self.broken = True


class _Sender:
    """Queues flows from the event loop (never waiting) and writes them in batches from a thread."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.queued = self.queued_bytes = 0  # flows (and bodies' bytes) queued so far, by the event loop
        self.written = self.written_bytes = 0  # ... and written so far, by the sender
        self.dropped = 0  # flows dropped so far (by the event loop's thread)
        self.reported = 0  # ... and reported so far (by the sender's)
        self.collected_at = 0  # written_bytes at the last collection of garbage
        self.taken_at = time.monotonic()  # when the capture last took a message of flows
        self.thread = threading.Thread(target=self._run, name="flowtap-proxy-sender", daemon=True)

    def emit(self, flow: Any) -> Awaitable[None] | None:
        """Queue ``flow`` for the pipe; past the pause bound, an awaitable that holds its answer back.

        When flowtap's process takes flows slower than the proxy makes them (its
        CPU is busy with the sinks' work), the proxy waits for it rather than
        lose flows for every sink: mitmproxy awaits what a hook returns before it
        answers the client. A slow or hung sink never causes this (each sink has
        its own backlog in flowtap's process, which keeps reading); a capture
        that takes nothing for :data:`STALL` seconds is not waited for, and past
        :data:`BACKLOG` the flows are dropped and counted.
        """
        size = len(flow.request.body) + (len(flow.response.body) if flow.response else 0)
        waiting, waiting_bytes = self.queued - self.written, self.queued_bytes - self.written_bytes
        if waiting >= BACKLOG or (waiting and waiting_bytes + size > BACKLOG_BYTES):
            self.dropped += 1
            return None
        self.queued += 1
        self.queued_bytes += size
        self.queue.put((flow, size))
        return self._taken() if self._held() else None

    def _held(self) -> bool:
        """Whether answers wait: past the pause bound, and the capture took flows in the last STALL s."""
        waiting, waiting_bytes = self.queued - self.written, self.queued_bytes - self.written_bytes
        return ((waiting > PAUSE or waiting_bytes > PAUSE_BYTES)
                and time.monotonic() - self.taken_at < STALL)

    async def _taken(self) -> None:
        while self._held():
            await asyncio.sleep(0.005)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            if batch[0] is not _SYNC and batch[0] is not _DONE:
                time.sleep(GATHER)
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            flows: list[Any] = []
            size = 0
            for item in batch:
                if item is _SYNC or item is _DONE:
                    self._send(flows, size)
                    flows, size = [], 0
                    if item is _DONE:
                        return
                    self.channel.send("synced", None)
                    continue
                flows.append(item[0])
                size += item[1]
                if size >= BATCH_BYTES:
                    self._send(flows, size)
                    flows, size = [], 0
            self._send(flows, size)

    def _send(self, flows: list[Any], size: int) -> None:
        if flows:
            self.channel.send("flows", flows)
            self.taken_at = time.monotonic()
            self.written += len(flows)
            self.written_bytes += size
            self._collect()
        dropped = self.dropped
        if dropped != self.reported:
            self.channel.send("dropped", dropped - self.reported)
            self.reported = dropped

    def _collect(self) -> None:
        """Collect the cyclic garbage once every :data:`COLLECT_BYTES` of bodies.

        mitmproxy's streams are reference cycles that hold their flow, bodies
        included, until the collector runs; it runs after so many objects, not
        bytes, so a few hundred large bodies could wait in memory for it.
        """
        if self.written_bytes - self.collected_at >= COLLECT_BYTES:
            self.collected_at = self.written_bytes
            gc.collect()

    def sync(self) -> None:
        """Answer ``synced`` once what is queued now is written."""
        self.queue.put(_SYNC)

    def finish(self) -> None:
        """Write what is queued, then end the thread."""
        self.queue.put(_DONE)
        self.thread.join()


class _Forward(logging.Handler):
    """Sends the source's log records to the capture, which logs them as its own."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.channel.send("log", (record.levelno, message))
        except Exception:
            self.handleError(record)


class _Emitter:
    """What the embedded proxy is given: its flows go to the sender, its log records to the pipe."""

    def __init__(self, sender: _Sender, log: logging.Logger) -> None:
        self.emit = sender.emit
        self.log = log
        self.recording = True

    def cookies(self, cookies: list[Any]) -> None:  # the proxy reports cookies only in flows
        pass

    def failed(self, message: str) -> None:
        self.log.error("%s", message)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = _Channel(os.dup(1))
    os.dup2(2, 1)  # a stray print must not corrupt the messages
    setup = pickle.load(sys.stdin.buffer)

    from flowtap_proxy.embedded import EmbeddedProxy

    log = logging.getLogger(f"flowtap.source.{setup['name']}")
    log.setLevel(setup["level"])
    log.propagate = False
    log.addHandler(_Forward(channel))
    sender = _Sender(channel)
    sender.thread.start()
    proxy = EmbeddedProxy(setup["options"])
    proxy.name = setup["name"]
    try:
        proxy.start(_Emitter(sender, log))  # type: ignore[arg-type]  # no config: the proxy reads none
    except Exception as exc:  # flowtap.SourceError, or anything mitmproxy raised
        channel.send("error", str(exc) if str(exc) else repr(exc))
        return 1
    channel.send("ready", proxy.port)
    gc.freeze()  # what start-up made lives as long as the process: out of the collector's sight
    while data := os.read(sys.stdin.fileno(), 4096):  # until the capture closes it, or is gone
        for _ in range(data.count(b"s")):
            sender.sync()
    proxy.stop()
    sender.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
