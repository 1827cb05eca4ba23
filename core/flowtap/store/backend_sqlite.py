"""The store on SQLite (the embedded default), as the reader sees it: :mod:`flowtap.store.db` holds
the schema, the connection and SQLite's errors; this is the face :class:`flowtap.store.Store` reads
through, the same as :class:`flowtap.store.backend_postgres.Reader`'s."""

from __future__ import annotations

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
