"""The HAR sink: each kept flow appended to a journal that becomes the HAR 1.2 file at the end.

The journal is the HAR being written (:mod:`flowtap_har.journal`); an
entry goes to it when its flow arrives, and nothing of it stays in memory.
Ending the session appends the HAR's last line and renames the journal:
however large the HAR, the end touches none of its entries.

Every flush hands what was written to the operating system, so a crashed
or killed process loses nothing that was flushed. The journal is fsync'd
at most every :data:`FSYNC_INTERVAL` seconds (a flush that comes sooner
leaves the fsync to a :meth:`flowtap.Sink.call_later` callback, on the
thread serving the sink), and at clear and close: a crash of the machine loses at
most the last quarter of a second. (An fsync after every batch cost more
CPU than the entries themselves under small batches.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import flowtap
from flowtap.memory import unmap_large_buffers
from flowtap.paths import check_writable, expand_path, unused_path
from flowtap.serialize import json_bytes
from flowtap_har import journal
from flowtap_har.entry import har_entry

if TYPE_CHECKING:
    from pathlib import Path

    from flowtap.scheduler import Timer

log = logging.getLogger("flowtap.har")

#: The most seconds between a flush and the journal's fsync.
FSYNC_INTERVAL = 0.25


class HarSink(flowtap.Sink):
    """Writes ``[sinks.har]``: one entry line per flow into ``PATH.journal``, the HAR at session end.

    Memory does not grow with the session: entries go to the journal as they
    arrive (flushed on every :meth:`flush`, fsync'd within :data:`FSYNC_INTERVAL`), and :meth:`close`
    closes the HAR's JSON and renames the journal to the HAR.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.template = options["path"]
        self.content = options["content"]
        self.max_body_size = options["max_body_size"]
        self.path: Path | None = None
        self.journal_path: Path | None = None
        self._file: BinaryIO | None = None
        self._header = b""
        self._entries = 0  # in the journal
        self._timer: Timer | None = None  # the fsync a throttled flush left
        self._last_sync = float("-inf")
        self._unsynced = False

    def open(self, session: flowtap.Session) -> None:
        unmap_large_buffers()
        path = expand_path(self.template, session)
        self.path = unused_path(path, (journal.SUFFIX,))  # never another session's HAR, nor its name
        if self.path != path:
            left = path.with_name(path.name + journal.SUFFIX)
            why = (f"a journal an earlier run left is there (`flowtap har finalize {left}` makes its HAR)"
                   if left.exists() else "it holds another session's HAR")
            log.warning("%s: %s; writing this session's HAR to %s", path, why, self.path)
        path = self.path
        check_writable(path)
        self.journal_path = journal.journal_path(path)
        if self.journal_path.name != path.name + journal.SUFFIX:
            log.warning("%s: a journal left by an earlier run is there (finalize it with "
                        "`flowtap har finalize %s`); writing this session's to %s",
                        path, path.with_name(path.name + journal.SUFFIX), self.journal_path)
        try:
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise flowtap.SinkError(f"{self.journal_path}: cannot create: {exc.strerror or exc}") from None
        self._file = os.fdopen(fd, "wb")
        self._header = journal.head(path, session)
        self._file.write(self._header)

    def write(self, flow: flowtap.Flow) -> None:
        assert self._file is not None
        data = json_bytes(har_entry(flow, self.content, self.max_body_size))
        # Three writes rather than one joined line: a large entry is not copied again.
        if self._entries:
            self._file.write(b",")
        self._file.write(data)
        self._file.write(b"\n")
        self._entries += 1

    def flush(self) -> None:
        if self._file is None or self._file.closed:
            return
        self._file.flush()
        self._unsynced = True
        wait = self._last_sync + FSYNC_INTERVAL - time.monotonic()
        if wait <= 0:
            self._fsync()
        elif self._timer is None:
            self._timer = self.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._fsync()

    def _fsync(self) -> None:
        """fsync the journal if a flush left data unsynced."""
        if self._unsynced and self._file is not None and not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:  # still unsynced: the next flush tries again
                raise flowtap.SinkFailed(f"{self.journal_path}: cannot sync the journal: "
                                         f"{exc.strerror or exc}") from None
            self._unsynced = False
            self._last_sync = time.monotonic()

    def _sync_now(self) -> None:
        assert self._file is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self._file.flush()
        except OSError as exc:
            raise flowtap.SinkFailed(f"{self.journal_path}: cannot write the journal: "
                                     f"{exc.strerror or exc}") from None
        self._unsynced = True
        self._fsync()

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget the entries so far: the journal keeps only its header."""
        if self._file is not None:
            self._file.truncate(0)
            self._file.write(self._header)
            self._entries = 0
            self._sync_now()

    def close(self) -> None:
        if self._file is None or self._file.closed:
            return
        assert self.path is not None and self.journal_path is not None
        failed = None
        try:
            self._sync_now()  # the entries, on disk before the HAR's closing line
        except flowtap.SinkFailed as exc:  # the HAR gets what reached the journal all the same
            failed = exc
        try:
            if failed is None:
                entries = self._close_in_place()
            else:  # the journal may end in a torn line: the HAR is a copy without it
                with contextlib.suppress(OSError):
                    self._file.close()
                entries, _ = journal.finalize(self.journal_path, self.path)
                self.journal_path.unlink()
        except OSError as exc:
            raise flowtap.SinkFailed(
                f"{self.path}: cannot write the HAR ({exc.strerror or exc}); the entries are kept in "
                f"{self.journal_path}: run `flowtap har finalize {self.journal_path}` once the problem "
                "is fixed") from None
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
        log.info("%s: %d entries", self.path, entries)
        if failed is not None:
            raise failed

    def _close_in_place(self) -> int:
        """Append the HAR's closing line to the (flushed) journal and rename it to the HAR.

        :raises OSError: the journal is left as it was, for ``flowtap har finalize``.
        """
        assert self._file is not None and self.path is not None and self.journal_path is not None
        fd = self._file.fileno()
        end = os.fstat(fd).st_size
        try:
            os.write(fd, journal.CLOSE)  # short writes do not happen on regular files but on a full disk
            os.fsync(fd)
            os.replace(self.journal_path, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)  # a journal again
            raise
        return self._entries
