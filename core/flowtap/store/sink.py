"""The store sink: every kept flow into the session store, committed in batches.

``write`` turns a flow into its rows (big bodies go to files at once) and
buffers them. ``flush``, which the sink's worker calls after every batch it
handles, commits the buffer in one transaction when ``[store]
batch_interval`` has passed since the last commit (or 256 rows are
waiting); otherwise a commit is scheduled for when the interval is up
(:meth:`flowtap.Sink.call_later`: on the same thread, so nothing here needs
a lock). Under load a transaction carries many flows; at any rate a recorded
flow is committed within about ``batch_interval``. Pauses, resumes, clears,
markers and the end commit at once. WAL mode with ``synchronous = NORMAL``:
a killed process loses nothing that was committed, and the database stays
whole.

A commit that fails (a full disk, an I/O error, a damaged store) raises
:class:`flowtap.SinkFailed` with SQLite's message; its flows are dropped
and counted as lost, not held for a retry that would fail the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import attrs

from flowtap.api import Sink, SinkError, SinkFailed
from flowtap.memory import unmap_large_buffers
from flowtap.plugins import hookimpl
from flowtap.store import db
from flowtap.store.db import StoreError
from flowtap.store.reader import pid_alive

if TYPE_CHECKING:
    from flowtap.config import Config
    from flowtap.cookies import Cookie
    from flowtap.model import Flow
    from flowtap.scheduler import Timer
    from flowtap.session import Session

#: Rows waiting that make a flush commit at once, whatever the interval.
BATCH_ROWS = 256

#: A flow's rows, waiting for a commit: its ``flows`` columns, ``contents.data``, the two bodies
#: (None: in a file), which bodies are in files, and those files' names.
Row = tuple[list[Any], str, bytes | None, bytes | None, int, tuple[str | None, str | None]]


def config_json(config: Config | None) -> str:
    """What a session row keeps of the config: the file and the tables as written."""
    if config is None:
        return "{}"
    tables = config.raw
    store = tables.get("store")
    if isinstance(store, dict) and isinstance(store.get("url"), str):  # a password in it stays out
        from flowtap.store.backend_postgres import redact

        tables = {**tables, "store": {**store, "url": redact(store["url"])}}
    data = {"file": str(config.path) if config.path else None, "tables": tables}
    return json.dumps(data, default=str)


def recorder() -> tuple[str, str]:
    """This machine's host name and the user running flowtap, as sessions record them."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name anywhere (a container with an unnamed uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else ""
    return socket.gethostname(), user


class StoreSink(Sink):
    """Writes each session, its events and its flows into the ``[store]`` database."""

    def __init__(self, options: dict[str, Any], config: Config | None = None) -> None:
        self.path = db.resolve_path(options["path"])
        self.threshold: int = options["body_file_threshold"]
        self.interval: float = options["batch_interval"] or 0.0
        self.config = config_json(config)
        self.session: Session | None = None
        self.conn: sqlite3.Connection | None = None
        self._pending: list[Row] = []
        self._marks: list[tuple[float, str, str]] = []  # markers and cookie events: time, kind, text
        self._last_flow: str | None = None  # the id of the last flow written, where cookie events fall
        self._cookies: dict[tuple[str, str, str], Cookie] = {}  # each cookie as the last event has it
        self._counts: tuple[int, ...] | None = None  # as last committed
        self._started = False
        self._events = 0  # pauses, resumes, clears and marks so far
        self._last_commit = float("-inf")  # the first flow is committed at once
        self._timer: Timer | None = None  # the commit scheduled for when the interval is up
        self._beat: Timer | None = None  # the next look at whether ``seen`` is due
        self._seen_at = float("-inf")  # when ``seen`` was last committed (monotonic)
        self._seen_due = False  # the next commit is for ``seen`` alone if nothing else

    # -- flowtap.Sink --------------------------------------------------------------

    def open(self, session: Session) -> None:
        unmap_large_buffers()
        try:
            self.conn = conn = db.connect(self.path, write=True)
        except StoreError as exc:
            raise SinkError(str(exc)) from None
        self.session = session
        try:
            with db.transaction(conn):
                self._close_interrupted(conn)
                conn.execute("INSERT INTO sessions (id, name, started, state, pid, config, machine, "
                             "user_name, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (session.id, session.name, session.started, session.state.value, os.getpid(),
                              self.config, *recorder(), time.time()))
        except sqlite3.Error as exc:
            conn.close()
            self.conn = None
            raise SinkError(str(db.error(self.path, exc, "write"))) from None

    def write(self, flow: Flow) -> None:
        session = self.session
        if session is None or self.conn is None:  # never opened, or closed: nothing would commit it
            raise SinkFailed(f"{self.path}: the store is not open; the flow is lost", lost=1)
        files = 0
        request_body: bytes | None = flow.request.body
        response_body: bytes | None = None
        request_file = response_file = None
        try:
            if len(flow.request.body) > self.threshold:
                request_file = self._body_file(session, flow.request.body, "request")
                request_body, files = None, db.REQUEST_FILE
            if flow.response is not None:
                response_body = flow.response.body
                if len(flow.response.body) > self.threshold:
                    response_file = self._body_file(session, flow.response.body, "response")
                    response_body, files = None, files | db.RESPONSE_FILE
        except OSError as exc:
            self._remove_bodies(request_file)
            raise SinkFailed(f"{self.path}: cannot write a body file beside the store "
                             f"({exc.strerror or exc}); the flow is lost", lost=1) from None
        self._last_flow = flow.id
        self._pending.append((db.flow_columns(flow), db.flow_data(flow, request_file, response_file),
                              request_body, response_body, files, (request_file, response_file)))

    def flush(self) -> None:
        if self.conn is None or not self._dirty():
            return
        wait = self._last_commit + self.interval - time.monotonic()
        if not self.interval or (self._pending and (wait <= 0 or len(self._pending) >= BATCH_ROWS)):
            self._commit()
        elif self._timer is None:
            # Flows to hold back, or only new counts (at most one such commit an interval).
            self._timer = self.call_later(wait if self._pending else self.interval, self._commit)

    def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self.conn is None:
            return
        session = self.session
        assert session is not None
        failure = None
        try:
            try:
                self._commit()
            except SinkFailed as exc:
                failure = exc
            try:
                with db.transaction(self.conn):
                    if self._started and (session.counts.received or self._events):
                        self.conn.execute("UPDATE sessions SET state = 'ended', ended = ? WHERE id = ?",
                                          (session.ended or time.time(), session.id))
                    else:  # it never ran (a sink or source failed to start), or nothing happened in it
                        self.conn.execute("DELETE FROM sessions WHERE id = ?", (session.id,))
            except sqlite3.Error as exc:
                failure = failure or SinkFailed(f"{self._failed(exc)}; the session's end is not recorded")
        finally:
            self.conn.close()
            self.conn = None
        if failure is not None:
            raise failure

    # -- committing --------------------------------------------------------------------------

    def _dirty(self) -> bool:
        """Flows, marks or new counts to commit."""
        assert self.session is not None
        c = self.session.counts
        counts = (c.recorded, c.filtered, c.paused, c.received)
        return bool(self._pending or self._marks or self._seen_due) or counts != self._counts

    def _heartbeat(self) -> None:
        """Commit ``seen`` if nothing has for half a :data:`~flowtap.store.db.HEARTBEAT` (a
        call_later callback, every HEARTBEAT from the session's start): other machines reading a
        team store can tell a session that is still recorded from one whose run died."""
        if self.conn is None:
            return
        self._beat = self.call_later(db.HEARTBEAT, self._heartbeat)
        if time.monotonic() - self._seen_at >= db.HEARTBEAT / 2:
            self._seen_due = True
            self._commit()

    def _commit(self) -> None:
        """Commit the waiting flows, the marks and the counts, in one transaction.

        :raises SinkFailed: the commit failed (a full disk, an I/O error, a damaged
            store): its flows and marks are dropped and counted as lost, not held
            for a retry that would fail the same way while memory grows.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        session, conn = self.session, self.conn
        if session is None or conn is None or not self._dirty():
            return
        if self._pending:  # the interval is between commits of flows
            self._last_commit = time.monotonic()
        c = session.counts
        counts = (c.recorded, c.filtered, c.paused, c.received)
        pending, marks = self._pending, self._marks
        self._pending, self._marks, self._seen_due = [], [], False
        try:
            with db.transaction(conn):
                refused = self._insert(conn, session, pending) if pending else []
                conn.executemany("INSERT INTO events (session, time, kind, text) VALUES (?, ?, ?, ?)",
                                 [(session.id, when, kind, text) for when, kind, text in marks])
                conn.execute("UPDATE sessions SET recorded = ?, filtered = ?, paused = ?, received = ?, "
                             "seen = ? WHERE id = ?", (*counts, time.time(), session.id))
        except sqlite3.Error as exc:
            for row in pending:
                self._remove_bodies(*row[5])
            if any(kind == "cookies" for _, kind, _ in marks):
                self._cookies.clear()  # those events are lost: the next sight of each cookie records it
            lost = f"; {_many(len(pending), 'flow')} lost" if pending else ""
            lost += f"; {_many(len(marks), 'event')} lost" if marks else ""
            raise SinkFailed(f"{self._failed(exc)}{lost}", lost=len(pending)) from None
        self._events += len(marks)
        self._counts = counts
        self._seen_at = time.monotonic()
        if refused:
            (method, url, error), more = refused[0], len(refused) - 1
            raise SinkFailed(f"{self.path}: a flow ({method} {url}) not stored: {error}"
                             + (f"; and {_many(more, 'other')}" if more else ""), lost=len(refused))

    def _insert(self, conn: sqlite3.Connection, session: Session,
                pending: list[Row]) -> list[tuple[str, str, str]]:
        """Insert the waiting flows; a row the database refuses is left out, not the batch.

        :returns: the method, URL and error of each flow left out.
        """
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM flows").fetchone()[0]
        rows = [((seq, columns[0], session.id, *columns[1:], files), (seq, data, request_body, response_body))
                for seq, (columns, data, request_body, response_body, files, _)
                in enumerate(pending, seq + 1)]
        refused = []
        conn.execute("SAVEPOINT batch")
        try:
            conn.executemany(db.INSERT_FLOW, [flow for flow, _ in rows])
            conn.executemany(db.INSERT_CONTENT, [content for _, content in rows])
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError):
            conn.execute("ROLLBACK TO batch")
            for (flow, content), row in zip(rows, pending, strict=True):
                try:
                    conn.execute(db.INSERT_FLOW, flow)
                    conn.execute(db.INSERT_CONTENT, content)
                except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError) as exc:
                    conn.execute("DELETE FROM flows WHERE seq = ?", (flow[0],))
                    self._remove_bodies(*row[5])
                    refused.append((flow[4], flow[10], str(exc)))
        conn.execute("RELEASE batch")
        return refused

    # -- session events -------------------------------------------------------------------

    @hookimpl
    def flowtap_session_start(self, session: Session) -> None:
        if session is self.session:
            self._started = True
            try:
                self._beat = self.call_later(db.HEARTBEAT, self._heartbeat)
            except RuntimeError:  # driven by hand, not by a capture: seen goes with each commit only
                pass

    @hookimpl
    def flowtap_session_pause(self, session: Session) -> None:
        self._event(session, "pause", "paused")

    @hookimpl
    def flowtap_session_resume(self, session: Session) -> None:
        self._event(session, "resume", "running")

    @hookimpl
    def flowtap_session_clear(self, session: Session) -> None:
        """Forget the session's flows, as Postman's clear does; the session row and its events stay."""
        if session is not self.session or self.conn is None:
            return
        for row in self._pending:
            self._remove_bodies(*row[5])
        self._pending = []
        try:
            with db.transaction(self.conn):
                self.conn.execute("DELETE FROM flows WHERE session = ?", (session.id,))
                self._record(session, "clear")
        except sqlite3.Error as exc:
            raise SinkFailed(f"{self._failed(exc)}; the session's flows were not cleared") from None
        shutil.rmtree(db.bodies_dir(self.path) / session.id, ignore_errors=True)
        self._commit()  # the counts, reset by the clear

    @hookimpl
    def flowtap_session_mark(self, session: Session, text: str) -> None:
        """Keep the marker; it is written at once."""
        if session is self.session:
            self._marks.append((time.time(), "mark", text))
            self._commit()

    @hookimpl
    def flowtap_cookies_seen(self, cookies: list[Cookie], flow: Flow | None, source: str) -> None:
        """Keep the cookies that changed as an event (kind ``cookies``), committed with the next flows.

        Its text is JSON: ``source``; ``flow``, the id of the flow that set
        them (None: the source reported them); ``after``, the id of the last
        flow written before them; and ``cookies``, the cookies the server set
        (or the source reported), each as :class:`flowtap.Cookie`'s fields.
        A cookie set again exactly as the last event has it (a server that
        sends the same ``Set-Cookie`` with every response) changes no jar and
        makes no event. An export replays the ones no stored flow sets again
        (seen while paused, or before a clear) where they happened.
        """
        if self.session is None or self.conn is None:
            return
        try:
            found = cookies if flow is None else flow.response_cookies
        except Exception:  # the dispatcher reports a flow no parser foresaw
            return
        last = self._cookies
        changed = [c for c in found if last.get(c.key) != c]
        if not changed:
            return  # a request's Cookie header only, or cookies as they were: nothing a jar would not know
        for cookie in changed:
            last[cookie.key] = cookie
        text = json.dumps({"source": source, "flow": flow.id if flow is not None else None,
                           "after": self._last_flow, "cookies": [attrs.asdict(c) for c in changed]})
        self._marks.append((time.time(), "cookies", text))

    # -- plumbing ---------------------------------------------------------------------------

    def _event(self, session: Session, kind: str, state: str) -> None:
        """Commit what is waiting, then record a pause or resume (even if that commit failed)."""
        if session is not self.session or self.conn is None:
            return
        failure = None
        try:
            self._commit()
        except SinkFailed as exc:
            failure = exc
        try:
            with db.transaction(self.conn):
                self.conn.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, session.id))
                self._record(session, kind)
        except sqlite3.Error as exc:
            failure = failure or SinkFailed(f"{self._failed(exc)}; the {kind} is not recorded")
        if failure is not None:
            raise failure

    def _record(self, session: Session, kind: str) -> None:
        assert self.conn is not None
        self.conn.execute("INSERT INTO events (session, time, kind) VALUES (?, ?, ?)",
                          (session.id, time.time(), kind))
        self._events += 1

    def _failed(self, exc: sqlite3.Error) -> str:
        """A failed write as one line, with SQLite's own message."""
        return str(db.error(self.path, exc, "write"))

    def _remove_bodies(self, *names: str | None) -> None:
        """Delete body files whose rows were not stored."""
        for name in names:
            if name:
                try:
                    (db.bodies_dir(self.path) / name).unlink()
                except OSError:
                    pass

    def _body_file(self, session: Session, body: bytes, part: str) -> str:
        """Write a body beside the database; its name relative to the bodies directory."""
        name = f"{session.id}/{secrets.token_hex(8)}.{part}"
        target = db.bodies_dir(self.path) / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
        except OSError:
            target.unlink(missing_ok=True)  # not half a body
            raise
        return name

    def _close_interrupted(self, conn: sqlite3.Connection) -> None:
        """Mark sessions whose process died without ending them as interrupted."""
        rows = conn.execute("SELECT id, pid FROM sessions WHERE state IN ('running', 'paused')").fetchall()
        for sid, pid in rows:
            if pid != os.getpid() and not pid_alive(pid):
                conn.execute(
                    "UPDATE sessions SET state = 'interrupted', ended = coalesce("
                    "(SELECT max(time) FROM flows WHERE session = ?), started) WHERE id = ?", (sid, sid))


def _many(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
