"""The store on SQLite (the embedded default), as the reader sees it: :mod:`flowtap.store.db` holds
the schema, the connection and SQLite's errors; this is the face :class:`flowtap.store.Store` reads
through, the same as :class:`flowtap.store.backend_postgres.Reader`'s."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from flowtap.store import db


class Reader:
    """A read-only SQLite store: queries in the shared SQL (``?`` placeholders)."""

    #: How queries break ties between sessions or events that started at the same moment.
    order = "rowid"
    #: SQLite calls the Python functions a plan brings (no dialect needed).
    dialect = None

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = db.resolve_path(path)
        self.conn = db.connect(self.path, write=False)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(sessions)")}
        # Stores from before schema version 3 have no machine and user.
        self.who = "machine, user_name" if "machine" in columns else "'', ''"
        self.seen = "seen" if "seen" in columns else "NULL"  # before schema version 4
        #: A session's flows, counted (fast enough: 85 ms for `flowtap sessions` over a million flows).
        self.stored = "(SELECT count(*) FROM flows WHERE session = s.id)"

    def close(self) -> None:
        self.conn.close()

    def functions(self, functions: dict[str, tuple[int, Any]]) -> None:
        """Register a plan's SQL functions."""
        for name, (nargs, fn) in functions.items():
            self.conn.create_function(name, nargs, fn, deterministic=True)

    def execute(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """The rows of a query, all fetched: SQLite reports damage while fetching too."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise db.error(self.path, exc) from None

    def iterate(self, sql: str, params: tuple | list = ()) -> Iterator[tuple]:
        """The rows of a query one by one (on a cursor of its own); errors as :class:`StoreError`."""
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql, params)
            while True:
                try:
                    row = next(cursor)
                except StopIteration:
                    return
                yield row
        except sqlite3.Error as exc:
            raise db.error(self.path, exc) from None
        finally:
            cursor.close()




class Writer(db.SessionWrites):
    """Writes sessions, events and flows into an SQLite store, each idempotent (copies); the same
    methods as :class:`flowtap.store.backend_postgres.Writer`. Bodies go into rows, not files."""

    UPSERT_SESSION, UPDATE_SESSION = db.session_statements("?")
    INSERT_EVENT = ("INSERT INTO events (session, time, kind, text) SELECT ?, ?, ?, ? WHERE NOT EXISTS ("
                    "SELECT 1 FROM events WHERE session = ? AND time = ? AND kind = ? AND text IS ?)")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = db.resolve_path(path)
        self.where = str(self.path)
        self.conn = db.connect(self.path, write=True)
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        self._ids: dict[str, set[str]] = {}  # the flow ids of each session written to

    def transaction(self) -> Any:
        return db.transaction(self.conn)

    def clear(self, session: str) -> None:
        self.conn.execute("DELETE FROM flows WHERE session = ?", (session,))
        self._ids.pop(session, None)

    def flows(self, rows: list[tuple], refused: list[str]) -> None:
        """Insert flows (``flows`` columns without ``seq``, then data and bodies); ids already there are
        skipped (each session's ids read once, through its index: the store has none on ids)."""
        width = len(db.FLOW_COLUMNS) - 1
        seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM flows").fetchone()[0]
        for row in rows:
            there = self._ids.get(row[1])
            if there is None:
                there = self._ids[row[1]] = {r[0] for r in self.conn.execute(
                    "SELECT id FROM flows WHERE session = ?", (row[1],))}
            if row[0] in there:
                continue
            seq += 1
            try:
                self.conn.execute(db.INSERT_FLOW, (seq, *row[:width]))
                self.conn.execute(db.INSERT_CONTENT, (seq, *row[width:]))
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, ValueError) as exc:
                self.conn.execute("DELETE FROM flows WHERE seq = ?", (seq,))
                refused.append(f"{row[3]} {row[9]}: {exc}")
                continue
            there.add(row[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
