"""The HAR sink: each kept flow appended to a journal, finalized into a HAR 1.2 file at the end.

Every flush hands what was written to the operating system, so a crashed
or killed process loses nothing that was flushed. The journal is fsync'd
at most every :data:`FSYNC_INTERVAL` seconds (a timer fsyncs what a
throttled flush left), and at clear and close: a crash of the machine
loses at most the last quarter of a second. (An fsync after every batch
cost more CPU than the entries themselves under small batches.)
"""

from __future__ import annotations

import logging
import os
import threading
import time

import flowtap
from flowtap.paths import check_writable, expand_path

from flowtap_har import journal
from flowtap_har.entry import har_entry

log = logging.getLogger("flowtap.har")

#: The most seconds between a flush and the journal's fsync.
FSYNC_INTERVAL = 0.25


class HarSink(flowtap.Sink):
    """Writes ``[sinks.har]``: one entry line per flow into ``PATH.journal``, the HAR at session end.

    Memory does not grow with the session: entries go to the journal as they
    arrive (flushed on every :meth:`flush`, fsync'd within :data:`FSYNC_INTERVAL`), and :meth:`close`
    streams the journal into the HAR (temp file + rename) and deletes it.
    """

    def __init__(self, options: dict) -> None:
        self.template = options["path"]
        self.content = options["content"]
        self.max_body_size = options["max_body_size"]
        self.path = self.journal_path = None
        self._file = None
        self._header = b""
        self._lock = threading.Lock()  # the file's fd: the dispatcher vs. the fsync timer
        self._timer: threading.Timer | None = None
        self._last_sync = float("-inf")
        self._unsynced = False

    def open(self, session: flowtap.Session) -> None:
        self.path = expand_path(self.template, session)
        check_writable(self.path)
        self.journal_path = journal.journal_path(self.path)
        if self.journal_path.name != self.path.name + journal.SUFFIX:
            log.warning("%s: a journal left by an earlier run is there (finalize it with "
                        "`flowtap har finalize %s`); writing this session's to %s",
                        self.path, self.path.with_name(self.path.name + journal.SUFFIX), self.journal_path)
        try:
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise flowtap.SinkError(f"{self.journal_path}: cannot create: {exc.strerror or exc}") from None
        self._file = os.fdopen(fd, "wb")
        self._header = journal.dump(journal.header(self.path, session))
        self._file.write(self._header)

    def write(self, flow: flowtap.Flow) -> None:
        self._file.write(journal.dump(har_entry(flow, self.content, self.max_body_size)))

    def flush(self) -> None:
        if self._file is None or self._file.closed:
            return
        self._file.flush()
        with self._lock:
            self._unsynced = True
            wait = self._last_sync + FSYNC_INTERVAL - time.monotonic()
            if wait <= 0:
                self._fsync()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._fsync()
            except OSError as exc:  # the next flush tries again
                log.error("%s: cannot sync the journal: %s", self.journal_path, exc.strerror or exc)

    def _fsync(self) -> None:
        """fsync the journal if a flush left data unsynced (lock held)."""
        if self._unsynced and self._file is not None and not self._file.closed:
            os.fsync(self._file.fileno())
            self._unsynced = False
            self._last_sync = time.monotonic()

    def _sync_now(self) -> None:
        self._file.flush()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._unsynced = True
            self._fsync()

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget the entries so far: the journal keeps only its header."""
        if self._file is not None:
            self._file.truncate(0)
            self._file.write(self._header)
            self._sync_now()

    def close(self) -> None:
        if self._file is None or self._file.closed:
            return
        self._sync_now()
        with self._lock:
            self._file.close()
        try:
            written, _ = journal.finalize(self.journal_path, self.path)
        except OSError as exc:
            log.error("%s: cannot write the HAR (%s); the entries are kept in %s: run "
                      "`flowtap har finalize %s` once the problem is fixed",
                      self.path, exc.strerror or exc, self.journal_path, self.journal_path)
            return
        self.journal_path.unlink()
        log.info("%s: %d entries", self.path, written)
