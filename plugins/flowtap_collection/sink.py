"""The collection sink: kept flows as a Postman Collection v2.1.0, rewritten whole and atomically.

Each request and each saved response is serialized once, when its flow
arrives, and appended to a spool file (an unnamed temporary file next to the
collection; written in chunks of :data:`SPILL` bytes); memory holds only where
each piece lies and which folder it belongs to. Rewriting the collection streams the pieces from the spool into
a temporary file that then replaces the collection, so the file on disk is
always a whole, valid collection.

Rewrites happen on a timer thread: at most once a second while flows
arrive, and less often as the collection grows, so that rewriting takes at
most about 1/:data:`BUDGET` of the time (a rewrite that took 0.2 s waits
4 s for the next); the last one comes within that interval of the last
flush, and once more when the session ends.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
import threading
import time
import uuid
from array import array
from typing import BinaryIO

import flowtap
from flowtap.paths import atomic_writer, check_writable, expand_path
from flowtap.serialize import json_bytes

from flowtap_collection.convert import Converter, Variables

log = logging.getLogger("flowtap.collection")

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
#: Seconds between rewrites while flows keep arriving (at least).
INTERVAL = 1.0
#: The next rewrite waits this many times as long as the last one took.
BUDGET = 20
#: Bytes of pieces buffered before they go to the spool (at a flush or a rewrite, whichever comes first).
SPILL = 1 << 16
class _Folder:
    """A folder's sub-folders, and where its items' pieces lie in the spool.

    ``items`` holds four numbers per item: its head's offset and length, and
    its first response's (-1 when it has none); ``more`` holds further
    responses (with ``dedupe``) as offset, length pairs per item number.
    About 32 bytes per item, whatever the item holds.
    """

    __slots__ = ("folders", "items", "more")

    def __init__(self) -> None:
        self.folders: dict[str, _Folder] = {}
        self.items = array("q")
        self.more: dict[int, array] = {}

    def add(self, head: tuple[int, int]) -> int:
        """Add an item; return its number."""
        self.items.extend((*head, -1, -1))
        return len(self.items) // 4 - 1

    def add_response(self, number: int, piece: tuple[int, int]) -> None:
        if self.items[4 * number + 2] < 0:
            self.items[4 * number + 2: 4 * number + 4] = array("q", piece)
        else:
            self.more.setdefault(number, array("q")).extend(piece)

    def pieces(self, number: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
        """Item ``number``'s head, and its responses."""
        head_offset, head_length, offset, length = self.items[4 * number: 4 * number + 4]
        responses = [] if offset < 0 else [(offset, length)]
        more = self.more.get(number)
        if more is not None:
            more = more.tolist()
            responses += list(zip(more[::2], more[1::2]))
        return (head_offset, head_length), responses

    def plan(self) -> tuple[list[tuple[str, _Folder, tuple]], int]:
        """What a rewrite writes: the folders and item counts as they are now.

        Items and responses are only ever appended, so a rewrite can read
        the live folders up to these counts while new flows keep coming.
        """
        return [(name, sub, sub.plan()) for name, sub in list(self.folders.items())], len(self.items) // 4


class CollectionSink(flowtap.Sink):
    """Writes ``[sinks.collection]``: a Postman Collection v2.1.0 kept up to date on disk."""

    def __init__(self, options: dict) -> None:
        self.template = options["path"]
        self.title = options["name"]
        self.organize = options["organize"]
        self.save_responses = options["save_responses"]
        self.dedupe = options["dedupe"]
        self.use_variables = options["variables"]
        self.include_secrets = options["include_secrets"]
        self.postman_id = str(uuid.uuid4())
        self.path = None
        self.skipped = 0
        self._description = ""
        self._spool: BinaryIO | None = None
        self._lock = threading.Lock()  # the index and variables (dispatcher vs. rewriter)
        self._rewrite_lock = threading.Lock()  # one rewrite at a time; the spool stays put
        self._timer: threading.Timer | None = None
        self._next = 0.0  # monotonic time before which no rewrite starts
        self._reset()

    def _reset(self) -> None:
        self._root = _Folder()
        self._seen: dict[str, tuple[_Folder, int]] = {}
        self._variables = Variables()
        self._convert = Converter(self._variables, self.use_variables, "endpoint" in self.organize)
        self._end = 0  # the spool's length, counting what is still buffered
        self._buffer = bytearray()  # the spool's last pieces, not yet written
        self._dirty = True

    # -- the sink -----------------------------------------------------------

    def open(self, session: flowtap.Session) -> None:
        self.path = expand_path(self.template, session)
        check_writable(self.path)
        self.title = self.title or session.name
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.started))
        self._description = f"Captured by flowtap {flowtap.__version__} in session {session.name!r} ({started})."
        try:
            self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=".flowtap-collection-")
        except OSError as exc:
            raise flowtap.SinkError(f"{self.path}: cannot write in {self.path.parent}: {exc.strerror}") from None

    def write(self, flow: flowtap.Flow) -> None:
        if flow.websocket is not None or flow.request.method == "CONNECT":
            self.skipped += 1  # a collection cannot replay these
            return
        with self._lock:
            request, captured, endpoint = self._convert.request(flow)
            key = f"{request['method']} {request['url']['raw']}"
            seen = self._seen.get(key) if self.dedupe else None
            if seen is None:
                name = f"{request['method']} {captured if 'domain' in self.organize else flow.request.host + captured}"
                head = json_bytes({"name": name, "request": request})[:-1]  # without the closing brace
                folder = self._folder(flow, request["method"], endpoint)
                seen = folder, folder.add(self._append(head))
                if self.dedupe:
                    self._seen[key] = seen
            if self.save_responses:
                example = self._convert.example(flow, request)
                if example is not None:
                    seen[0].add_response(seen[1], self._append(json_bytes(example)))
            self._dirty = True

    def flush(self) -> None:
        with self._lock:
            if len(self._buffer) >= SPILL:
                self._spill()
            if not self._dirty or self._timer is not None or self._spool is None:
                return
            delay = max(0.0, self._next - time.monotonic())
            self._timer = threading.Timer(delay, self._rewrite)
            self._timer.daemon = True
            self._timer.start()

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget every request so far; the file is rewritten empty at the next flush."""
        with self._rewrite_lock, self._lock:
            self._reset()
            if self._spool is not None:
                self._spool.truncate(0)

    def close(self) -> None:
        if self._spool is None:
            return
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._rewrite(final=True)
        self._spool.close()
        self._spool = None
        if self.skipped:
            log.info("%s: %d WebSocket or CONNECT flow(s) left out", self.path, self.skipped)

    # -- the index ----------------------------------------------------------

    def _append(self, data: bytes) -> tuple[int, int]:
        """Add a piece to the spool (buffered); return where it lies."""
        offset = self._end
        self._buffer += data
        self._end += len(data)
        return offset, len(data)

    def _spill(self) -> None:
        """Write the buffered pieces into the spool (lock held); kept buffered if that fails."""
        view = memoryview(self._buffer)
        offset = self._end - len(view)
        while view:
            written = os.pwrite(self._spool.fileno(), view, offset)
            view, offset = view[written:], offset + written
        view.release()
        self._buffer.clear()

    def _folder(self, flow: flowtap.Flow, method: str, endpoint: str) -> _Folder:
        folder = self._root
        names = []
        if "domain" in self.organize:
            port = flow.request.port
            default = {"http": 80, "https": 443}.get(flow.request.scheme)
            names.append(flow.request.host + (f":{port}" if port and port != default else ""))
        if "endpoint" in self.organize:
            names.append(f"{method} {endpoint}")
        for name in names:
            folder = folder.folders.setdefault(name, _Folder())
        return folder

    # -- rewriting ----------------------------------------------------------

    def _rewrite(self, final: bool = False) -> None:
        with self._rewrite_lock:
            with self._lock:
                self._timer = None
                if self._spool is None or (not self._dirty and not final):
                    return
                early = not final and time.monotonic() < self._next  # scheduled during the last rewrite
                if not early:
                    try:
                        self._spill()
                    except OSError as exc:  # still dirty: the next flush tries again
                        log.error("%s: cannot write the collection: %s", self.path, exc.strerror or exc)
                        return
                    plan = self._root, self._root.plan(), self._end  # every piece is in the spool
                    self._dirty = False
            if early:
                self.flush()  # schedules it again, for when it is due
                return
            began = time.monotonic()
            try:
                self._write_file(*plan)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                log.error("%s: cannot write the collection: %s", self.path, exc.strerror or exc)
            finally:
                elapsed = time.monotonic() - began
                self._next = time.monotonic() + max(INTERVAL, BUDGET * elapsed)

    def _write_file(self, root: _Folder, plan: tuple, end: int) -> None:
        info = {"_postman_id": self.postman_id, "name": self.title, "description": self._description,
                "schema": SCHEMA}
        # A map of the spool: each piece is a slice, not a system call.
        spool = mmap.mmap(self._spool.fileno(), end, access=mmap.ACCESS_READ) if end else b""
        try:
            with atomic_writer(self.path) as out:
                out.write(b'{"info":' + json_bytes(info) + b',"item":[')
                self._write_folder(out, spool, root, plan)
                with self._lock:  # now: every variable the items written so far refer to
                    variables = self._variables.as_list(self.include_secrets)
                out.write(b'],"variable":' + json_bytes(variables) + b"}\n")
        finally:
            if end:
                spool.close()

    def _write_folder(self, out: BinaryIO, spool: mmap.mmap, folder: _Folder, plan: tuple) -> None:
        folders, count = plan
        first = True
        for name, sub, sub_plan in folders:
            out.write((b"" if first else b",") + b'\n{"name":' + json_bytes(name) + b',"item":[')
            self._write_folder(out, spool, sub, sub_plan)
            out.write(b"]}")
            first = False
        for number in range(count):
            (offset, length), responses = folder.pieces(number)
            out.write(b"".join((
                b"" if first else b",", b"\n", spool[offset:offset + length], b',"response":[',
                b",".join([spool[offset:offset + length] for offset, length in responses]), b"]}",
            )))
            first = False
