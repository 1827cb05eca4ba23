"""The collection sink: kept flows as a Postman Collection v2.1.0, rewritten whole and atomically.

Each request and each saved response is serialized once, when its flow
arrives, and appended to a spool (an unnamed temporary file next to the
collection); memory holds only where each piece lies and which folder it
belongs to (about 32 bytes per request). A rewrite streams the pieces, in
the collection's order, into a temporary file that then replaces the
collection (``os.replace``): whoever reads the file reads a whole, valid
collection, the last one or the one before.

What a rewrite writes is fixed by one number, the spool's length when it
starts: pieces are only ever appended, so the pieces below it are exactly
the requests and responses that had arrived by then, each complete. A flow
that arrives during a rewrite is in the next one. A rewrite reads one piece
at a time (``os.pread``), so its memory does not grow with the collection.

Rewrites happen on a timer thread: at most once a second while flows
arrive, and less often as the collection grows, so that rewriting takes at
most about 1/:data:`BUDGET` of the time (a rewrite that took 0.2 s waits
4 s for the next); the last one comes within that interval of the last
flush, and once more when the session ends.
"""

from __future__ import annotations

import logging
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


class _Folder:
    """A folder's sub-folders, and where its items' pieces lie in the spool.

    ``items`` holds four numbers per item: its head's offset and length, and
    its first response's (-1 when it has none); ``more`` holds further
    responses (with ``dedupe``) as offset, length pairs per item number.
    About 32 bytes per item, whatever the item holds. ``born`` is where the
    folder's first item lies: a rewrite that ends before it leaves the folder out.

    Everything here is only ever appended to, in the order of the offsets,
    and each read is a single step under the GIL: a rewrite reads the live
    index while flows keep coming, and skips what lies at or beyond its end.
    """

    __slots__ = ("folders", "items", "more", "born")

    def __init__(self, born: int) -> None:
        self.folders: dict[str, _Folder] = {}
        self.items = array("q")
        self.more: dict[int, array] = {}
        self.born = born

    def add(self, head: tuple[int, int]) -> int:
        """Add an item; return its number."""
        self.items.extend((*head, -1, -1))
        return len(self.items) // 4 - 1

    def add_response(self, number: int, piece: tuple[int, int]) -> None:
        if self.items[4 * number + 2] < 0:
            self.items[4 * number + 2: 4 * number + 4] = array("q", piece)
        else:
            self.more.setdefault(number, array("q")).extend(piece)

    def pieces(self, number: int, end: int) -> tuple[tuple[int, int], list[tuple[int, int]]] | None:
        """Item ``number``'s head and responses that lie before ``end``; None if its head does not."""
        head_offset, head_length, offset, length = self.items[4 * number: 4 * number + 4]
        if head_offset >= end:
            return None
        responses = [(offset, length)] if 0 <= offset < end else []
        more = self.more.get(number)
        if more is not None and responses:
            more = more.tolist()
            responses += [piece for piece in zip(more[::2], more[1::2]) if piece[0] < end]
        return (head_offset, head_length), responses


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
        self._root = _Folder(-1)
        self._seen: dict[str, tuple[_Folder, int]] = {}
        self._variables = Variables()
        self._convert = Converter(self._variables, self.use_variables, "endpoint" in self.organize)
        self._end = 0  # the spool's length: every piece below it is written whole
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
            head = b""
            if seen is None:
                name = f"{request['method']} {captured if 'domain' in self.organize else flow.request.host + captured}"
                head = json_bytes({"name": name, "request": request})[:-1]  # without the closing brace
            example = self._convert.example(flow, request) if self.save_responses else None
            response = b"" if example is None else json_bytes(example)
            if not head and not response:
                return
            offset = self._put(head + response)  # raises before anything refers to it
            if head:
                folder = self._folder(flow, request["method"], endpoint, offset)
                seen = folder, folder.add((offset, len(head)))
                if self.dedupe:
                    self._seen[key] = seen
            if response:
                seen[0].add_response(seen[1], (offset + len(head), len(response)))
            self._dirty = True

    def flush(self) -> None:
        with self._lock:
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

    def _put(self, data: bytes) -> int:
        """Write ``data`` at the spool's end; return its offset. The end moves only once it is all written."""
        offset = self._end
        view = memoryview(data)
        while view:
            written = os.pwrite(self._spool.fileno(), view, offset + len(data) - len(view))
            view = view[written:]
        self._end += len(data)
        return offset

    def _folder(self, flow: flowtap.Flow, method: str, endpoint: str, offset: int) -> _Folder:
        """The folder for this flow, made (as born at ``offset``) if it is new."""
        folder = self._root
        names = []
        if "domain" in self.organize:
            port = flow.request.port
            default = {"http": 80, "https": 443}.get(flow.request.scheme)
            names.append(flow.request.host + (f":{port}" if port and port != default else ""))
        if "endpoint" in self.organize:
            names.append(f"{method} {endpoint}")
        for name in names:
            sub = folder.folders.get(name)
            if sub is None:
                sub = folder.folders[name] = _Folder(offset)
            folder = sub
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
                    end = self._end  # this rewrite writes the collection as it is now
                    self._dirty = False
            if early:
                self.flush()  # schedules it again, for when it is due
                return
            began = time.monotonic()
            try:
                self._write_file(end)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                log.error("%s: cannot write the collection: %s", self.path, exc.strerror or exc)
            finally:
                elapsed = time.monotonic() - began
                self._next = time.monotonic() + max(INTERVAL, BUDGET * elapsed)

    def _write_file(self, end: int) -> None:
        """Write the collection as it was when the spool was ``end`` bytes long."""
        info = {"_postman_id": self.postman_id, "name": self.title, "description": self._description,
                "schema": SCHEMA}
        with atomic_writer(self.path) as out:
            out.write(b'{"info":' + json_bytes(info) + b',"item":[')
            self._write_folder(out, self._root, end)
            with self._lock:  # every variable the items written refer to (and maybe a few more)
                variables = self._variables.as_list(self.include_secrets)
            out.write(b'],"variable":' + json_bytes(variables) + b"}\n")

    def _write_folder(self, out: BinaryIO, folder: _Folder, end: int) -> None:
        fd = self._spool.fileno()
        first = True
        for name, sub in list(folder.folders.items()):
            if sub.born >= end:
                break  # made after this rewrite began, as were those after it (dicts keep their order)
            out.write((b"" if first else b",") + b'\n{"name":' + json_bytes(name) + b',"item":[')
            self._write_folder(out, sub, end)
            out.write(b"]}")
            first = False
        for number in range(len(folder.items) // 4):
            pieces = folder.pieces(number, end)
            if pieces is None:
                break  # arrived after this rewrite began, as did those after it
            (offset, length), responses = pieces
            out.write(b"\n" if first else b",\n")
            comma = b""
            if responses and responses[0][0] == offset + length:  # written together: one read
                both = memoryview(os.pread(fd, length + responses[0][1], offset))
                out.write(both[:length])
                out.write(b',"response":[')
                out.write(both[length:])
                comma, responses = b",", responses[1:]
            else:
                out.write(os.pread(fd, length, offset))
                out.write(b',"response":[')
            for offset, length in responses:  # one at a time, however many there are
                out.write(comma)
                out.write(os.pread(fd, length, offset))
                comma = b","
            out.write(b"]}")
            first = False
