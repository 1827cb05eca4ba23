"""The collection sink: kept flows as a Postman Collection v2.1.0, rewritten whole and atomically.

Each request and each saved response is serialized once, when its flow
arrives, and appended to a spool (an unnamed temporary file next to the
collection); memory holds only where each piece lies and which folder it
belongs to (about 24 bytes per request). A piece is written whole before
the index refers to it. A new item's piece is the item's whole text as the
collection holds it, with the separator before it (``,\n{...,"response":
[...]}``), so that the items of a folder that arrived one after the other
lie end to end in the spool.

A rewrite streams the pieces, in the collection's order, into a temporary
file that then replaces the collection (``os.replace``): whoever reads the
file reads a whole, valid collection, the last one or the one before. It
copies each run of items lying end to end in the spool in chunks of
:data:`CHUNK` bytes (``os.pread``), so its memory does not grow with the
collection, nor its work with the number of items in a run; it runs on the
thread serving the sink (a :meth:`flowtap.Sink.call_later` callback),
between writes: what it writes is the collection as it was when it began.

Rewrites come at most once a second while flows arrive, and less often as
the collection grows, so that rewriting takes at most about 1/:data:`BUDGET`
of the sink's time (a rewrite that took 0.1 s waits 5 s for the next); the
last one comes within that interval of the last flush, and once more when
the session ends if anything changed since. A replay (``flowtap export``:
:attr:`flowtap.Session.replay`) writes the collection only when the session
ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from array import array
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

import flowtap
from flowtap.memory import unmap_large_buffers
from flowtap.paths import atomic_writer, check_writable, expand_path, safe_filename, unused_path
from flowtap.serialize import json_bytes
from flowtap_collection.convert import Converter, Variables

if TYPE_CHECKING:
    from pathlib import Path

    from flowtap.scheduler import Timer

log = logging.getLogger("flowtap.collection")

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
#: Seconds between rewrites while flows keep arriving (at least).
INTERVAL = 1.0
#: The next rewrite waits this many times as long as the last one took.
BUDGET = 50
#: Bytes a rewrite copies from the spool at a time.
CHUNK = 1 << 20
#: ``max_example_size``'s default: a saved response's body is cut past this many bytes.
MAX_EXAMPLE_SIZE = 64 * 1024

#: Bodies only their bytes can replay (binary, or text not in UTF-8) go in files in the
#: directory named after the collection plus this, as ``HASH/NAME``.
BODIES = ".bodies"

Piece = tuple[int, int]  # offset and length in the spool


class _Folder:
    """A folder's sub-folders, and where its items' pieces lie in the spool.

    ``items`` holds three numbers per item: its piece's offset and length,
    and whether the piece holds a response (1) or none (0); ``more`` holds
    further responses (with ``dedupe``) as offset, length pairs per item
    number. About 24 bytes per item, whatever the item holds.
    """

    __slots__ = ("folders", "items", "more")

    def __init__(self) -> None:
        self.folders: dict[str, _Folder] = {}
        self.items = array("q")
        self.more: dict[int, array[int]] = {}

    def add(self, piece: Piece, responses: int) -> int:
        """Add an item whose piece holds ``responses`` (0 or 1) responses; return its number."""
        self.items.extend((*piece, responses))
        return len(self.items) // 3 - 1

    def add_response(self, number: int, piece: Piece) -> None:
        """A further response of item ``number`` (a piece of its own)."""
        self.more.setdefault(number, array("q")).extend(piece)


class CollectionSink(flowtap.Sink):
    """Writes ``[sinks.collection]``: a Postman Collection v2.1.0 kept up to date on disk."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.template = options["path"]
        self.title = options["name"]
        self.organize = options["organize"]
        self.save_responses = options["save_responses"]
        self.max_example_size: int = options.get("max_example_size", MAX_EXAMPLE_SIZE)
        self.dedupe = options["dedupe"]
        self.use_variables = options["variables"]
        self.include_secrets = options["include_secrets"]
        self.postman_id = str(uuid.uuid4())
        self.path: Path | None = None
        self.skipped = 0
        self._description = ""
        self._spool: BinaryIO | None = None
        self._timer: Timer | None = None  # the rewrite scheduled
        self._next = 0.0  # monotonic time before which no rewrite starts
        self._live = True  # rewrite while flows arrive (a replay's is written at the end)
        self._reset()

    def _reset(self) -> None:
        self._root = _Folder()
        self._seen: dict[str, tuple[_Folder, int]] = {}
        self._variables = Variables()
        self._convert = Converter(self._variables, self.use_variables, "endpoint" in self.organize,
                                  store_body=self._store_body)
        self._end = 0  # the spool's length
        self._flows = 0  # flows in the spool
        self._on_disk = 0  # ... and in the file, as the last rewrite left it
        self._dirty = True

    # -- the sink -----------------------------------------------------------

    def open(self, session: flowtap.Session) -> None:
        unmap_large_buffers()
        self._live = not session.replay  # a replay's collection is written once, at the end
        path = expand_path(self.template, session)
        self.path = unused_path(path, (BODIES,))  # never another session's collection
        if self.path != path:
            log.warning("%s is another session's; writing this session's collection to %s", path, self.path)
        path = self.path
        check_writable(path)
        self.title = self.title or session.name
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.started))
        self._description = (f"Captured by flowtap {flowtap.__version__} in session {session.name!r} "
                             f"({started}).")
        try:
            self._spool = tempfile.TemporaryFile(dir=path.parent, prefix=".flowtap-collection-")
        except OSError as exc:
            raise flowtap.SinkError(f"{path}: cannot write in {path.parent}: {exc.strerror}") from None

    def write(self, flow: flowtap.Flow) -> None:
        if flow.websocket is not None or flow.request.method == "CONNECT":
            self.skipped += 1  # a collection cannot replay these
            return
        request, captured, endpoint = self._convert.request(flow)
        method = request["method"]
        key = f"{method} {request['url']['raw']}"
        seen = self._seen.get(key) if self.dedupe else None
        head = b""
        if seen is None:
            name = f"{method} {captured if 'domain' in self.organize else flow.request.host + captured}"
            head = json_bytes({"name": name, "request": request})[:-1]  # without the closing brace
        example = None
        if self.save_responses:
            short, size = self._cut(flow)
            example = self._convert.example(short, request)
            if example is not None and size is not None:
                kept = len(short.response.body) if short.response is not None else 0
                example["name"] += f" (body cut to {_size(kept)} of {_size(size)})"
        response = b"" if example is None else json_bytes(example)
        if seen is None:  # the whole item, written before anything refers to it
            piece = b",\n" + head + b',"response":[' + response + b"]}"
            offset = self._put(piece)  # raises before any folder is made for it
            folder = self._folder(flow, method, endpoint)
            seen = folder, folder.add((offset, len(piece)), 1 if response else 0)
            if self.dedupe:
                self._seen[key] = seen
        elif response:
            seen[0].add_response(seen[1], (self._put(response), len(response)))
        else:
            return
        self._flows += 1
        self._dirty = True

    def flush(self) -> None:
        if self._dirty and self._live and self._timer is None and self._spool is not None:
            self._timer = self.call_later(max(0.0, self._next - time.monotonic()), self._rewrite)

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget every request so far; the file is rewritten empty at the next flush."""
        self._reset()
        if self._spool is not None:
            self._spool.truncate(0)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._spool is None:
            return
        try:
            if self._dirty:
                self._rewrite()
        except flowtap.SinkFailed as exc:
            raise flowtap.SinkFailed(str(exc), lost=self._flows - self._on_disk) from None
        finally:
            self._spool.close()
            self._spool = None
        if self.skipped:
            log.info("%s: %d WebSocket or CONNECT flow(s) left out", self.path, self.skipped)

    def _cut(self, flow: flowtap.Flow) -> tuple[flowtap.Flow, int | None]:
        """``flow`` with its response body cut to ``max_example_size``, and the body's real size.

        The cut falls between UTF-8 characters, so that text stays text; the
        size is None when nothing was cut. Only what is kept is converted.
        """
        response = flow.response
        if response is None or len(response.body) <= self.max_example_size:
            return flow, None
        body, end = response.body, self.max_example_size
        for _ in range(3):  # a UTF-8 character is at most 4 bytes: do not split one
            if end > 0 and body[end] & 0xC0 == 0x80:
                end -= 1
        size = response.body_size if response.body_size is not None else len(body)
        short = attrs.evolve(response, body=body[:end], body_size=size, truncated=True)
        return attrs.evolve(flow, response=short), size

    def _store_body(self, data: bytes, name: str) -> str:
        """Keep ``data`` in a file beside the collection; its path relative to the collection's folder.

        Files are named by their content (the same bytes are written once),
        in folders of their own so that a form sends the file name it sent.
        Owner-only, as the collection: bodies hold secrets.
        """
        assert self.path is not None
        folder = self.path.name + BODIES
        relative = f"{folder}/{hashlib.sha256(data).hexdigest()[:24]}/{safe_filename(name, 'body')}"
        target = self.path.parent / relative
        if not target.exists():
            try:
                target.parent.parent.mkdir(mode=0o700, exist_ok=True)
                target.parent.mkdir(mode=0o700, exist_ok=True)
                with atomic_writer(target) as out:
                    out.write(data)
            except OSError as exc:
                raise flowtap.SinkFailed(f"{target}: cannot keep a request body for the collection: "
                                         f"{exc.strerror or exc}", lost=1) from None
        return relative

    # -- the index ----------------------------------------------------------

    def _put(self, data: bytes) -> int:
        """Write ``data`` at the spool's end; return its offset."""
        assert self._spool is not None
        offset = self._end
        view = memoryview(data)
        try:
            while view:
                view = view[os.pwrite(self._spool.fileno(), view, offset + len(data) - len(view)):]
        except OSError as exc:  # the end stays put: the next flow overwrites what was written
            raise flowtap.SinkFailed(f"{self.path}: cannot keep a flow for the collection: "
                                     f"{exc.strerror or exc}", lost=1) from None
        self._end += len(data)
        return offset

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

    def _rewrite(self) -> None:
        """Write the collection as it is now (a call_later callback, and at close)."""
        self._timer = None
        if not self._dirty or self._spool is None:
            return
        self._dirty, flows = False, self._flows
        began = time.monotonic()
        try:
            self._write_file()
        except OSError as exc:  # still dirty: the next flush schedules another try
            self._dirty = True
            raise flowtap.SinkFailed(f"{self.path}: cannot write the collection: "
                                     f"{exc.strerror or exc}") from None
        finally:
            self._next = time.monotonic() + max(INTERVAL, BUDGET * (time.monotonic() - began))
        self._on_disk = flows

    def _write_file(self) -> None:
        assert self.path is not None
        info = {"_postman_id": self.postman_id, "name": self.title, "description": self._description,
                "schema": SCHEMA}
        with atomic_writer(self.path) as out:
            out.write(b'{"info":' + json_bytes(info) + b',"item":[')
            self._write_folder(out, self._root)
            variables = self._variables.as_list(self.include_secrets)
            out.write(b'],"variable":' + json_bytes(variables) + b"}\n")

    def _write_folder(self, out: BinaryIO, folder: _Folder) -> None:
        """The folder's sub-folders, then its items: each run lying end to end in the spool copied whole."""
        first = True
        for name, sub in list(folder.folders.items()):
            out.write((b"" if first else b",") + b'\n{"name":' + json_bytes(name) + b',"item":[')
            self._write_folder(out, sub)
            out.write(b"]}")
            first = False
        items, more = folder.items.tolist(), folder.more
        start = end = 0  # the run of pieces not yet copied
        for number in range(len(items) // 3):
            offset, length, responses = items[3 * number: 3 * number + 3]
            if first:  # a folder's first item has no separator before it
                offset, length, first = offset + 1, length - 1, False
            if offset != end or number in more:
                self._copy(out, start, end)
                start = offset
            end = offset + length
            extra = more.get(number)
            if extra is not None:  # the piece but its closing "]}", the further responses, "]}"
                self._copy(out, start, end - 2)
                pairs = extra.tolist()
                for i in range(0, len(pairs), 2):  # one at a time, however many there are
                    out.write(b"," if responses or i else b"")
                    self._copy(out, pairs[i], pairs[i] + pairs[i + 1])
                out.write(b"]}")
                start = end
        self._copy(out, start, end)

    def _copy(self, out: BinaryIO, start: int, end: int) -> None:
        """Copy the spool's bytes from ``start`` to ``end`` to ``out``, :data:`CHUNK` at a time."""
        assert self._spool is not None
        fd = self._spool.fileno()
        while start < end:
            data = os.pread(fd, min(CHUNK, end - start), start)
            if not data:
                raise OSError(f"the spool ends at {start}, before {end}")
            out.write(data)
            start += len(data)


def _size(n: int) -> str:
    """A byte count as people read it: 980 B, 64 KiB, 3.2 MiB."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    return f"{value:.1f} GiB".replace(".0 ", " ")
