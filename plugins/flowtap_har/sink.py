"""The HAR sink: each kept flow appended to a journal, finalized into a HAR 1.2 file at the end."""

from __future__ import annotations

import logging
import os

import flowtap
from flowtap.paths import check_writable, expand_path

from flowtap_har import journal
from flowtap_har.entry import har_entry

log = logging.getLogger("flowtap.har")


class HarSink(flowtap.Sink):
    """Writes ``[sinks.har]``: one entry line per flow into ``PATH.journal``, the HAR at session end.

    Memory does not grow with the session: entries go to the journal as they
    arrive (flushed and fsync'd on every :meth:`flush`), and :meth:`close`
    streams the journal into the HAR (temp file + rename) and deletes it.
    """

    def __init__(self, options: dict) -> None:
        self.template = options["path"]
        self.content = options["content"]
        self.max_body_size = options["max_body_size"]
        self.path = self.journal_path = None
        self._file = None
        self._header = b""

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
        if self._file is not None and not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget the entries so far: the journal keeps only its header."""
        if self._file is not None:
            self._file.truncate(0)
            self._file.write(self._header)
            self.flush()

    def close(self) -> None:
        if self._file is None or self._file.closed:
            return
        self.flush()
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
