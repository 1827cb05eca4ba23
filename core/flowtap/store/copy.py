"""``flowtap store copy``: sessions from one store into another (SQLite or PostgreSQL, either way).

Resumable: a session already in the target is brought up to date, a flow already
there (same id) is skipped, an event already there is not added again; so a copy
that was interrupted is simply run again. Flows go over in the order they were
recorded, a batch of :data:`flowtap.store.spool.BATCH` per transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowtap.store import backend_postgres as pg, db, spool
from flowtap.store.db import StoreError
from flowtap.store.reader import Store

#: One statement for both backends (both read ``ON CONFLICT`` and these casts).
_EVENT = spool.INSERT_EVENT.replace("%s::text", "CAST(%s AS text)").replace("%s::float8",
                                                                          "CAST(%s AS double precision)")


class _Target:
    """The store copied into: its connection and the few statements that differ between backends."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.refused: list[str] = []  # flows the database would not take: method, URL and why
        self.postgres = pg.is_url(location)
        if self.postgres:
            self.where = pg.redact(str(location))
            self.conn: Any = pg.connect(str(location), write=True)
        else:
            path = db.resolve_path(location)
            self.where = str(path)
            self.conn = db.connect(path, write=True)

    def sql(self, statement: str) -> str:
        return statement if self.postgres else statement.replace("%s", "?")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self.conn.transaction():
                yield
        else:
            with db.transaction(self.conn):
                yield

    def flows(self, rows: list[tuple]) -> None:
        """Insert flows (rows as ``spool.Courier._flow`` makes them), skipping ids already there."""
        if self.postgres:
            spool.insert_flows(self.conn, rows, self.refused)
            return
        width = len(db.FLOW_COLUMNS) - 1
        ids = [row[0] for row in rows]
        there = {r[0] for r in self.conn.execute(
            f"SELECT id FROM flows WHERE id IN ({', '.join('?' * len(ids))})", ids)} if ids else set()
        seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM flows").fetchone()[0]
        for row in rows:
            if row[0] in there:
                continue
            seq += 1
            self.conn.execute(db.INSERT_FLOW, (seq, *row[:width]))
            self.conn.execute(db.INSERT_CONTENT, (seq, *row[width:]))

    def close(self) -> None:
        self.conn.close()


def copy(source: str | os.PathLike, target: str | os.PathLike, progress: Any = None,
         sessions: list[str] | None = None) -> tuple[int, int, list[str]]:
    """Copy ``sessions`` (ids; None: all) from the store ``source`` into ``target``.

    :returns: sessions and flows read (flows already in the target are counted, not copied again),
        and the flows the target refused (method, URL and why).
    :raises StoreError: either store cannot be opened, or a write failed.
    """
    psycopg_error: tuple[type[BaseException], ...] = (sqlite3.Error,)
    if pg.is_url(target):
        psycopg_error += (pg.driver().Error,)
    with Store(source) as store:
        chosen = [s for s in store.sessions() if sessions is None or s.id in sessions]
        if progress is not None:
            progress.total = sum(s.flows for s in chosen)
        out = _Target(target)
        flows = 0
        try:
            for info in reversed(chosen):  # oldest first
                flows += _session(store, out, info.id, progress)
        except psycopg_error as exc:
            raise StoreError(f"{out.where}: cannot write the copy ({' '.join(str(exc).split())}); "
                             "run the same copy again to resume") from None
        finally:
            out.close()
    return len(chosen), flows, out.refused


def _session(store: Store, out: _Target, session: str, progress: Any) -> int:
    """Copy one session: its row, its events, then its flows in batches; how many flows."""
    row = store._execute(f"SELECT {', '.join(spool.SESSION_COLUMNS[:-2])}, {store._db.who} FROM sessions "
                         "WHERE id = ?", (session,))[0]
    events = store._execute(f"SELECT time, kind, text FROM events WHERE session = ? "
                            f"ORDER BY time, {store._db.order}", (session,))
    with out.transaction():
        out.conn.execute(out.sql(spool.UPSERT_SESSION), row)
        for when, kind, text in events:
            out.conn.execute(out.sql(_EVENT), (session, when, kind, text, session, when, kind, text))
    columns = ", ".join(f"f.{c}" for c in db.FLOW_COLUMNS)
    path = Path(str(store.path))
    batch: list[tuple] = []
    count = 0
    for values in store._iterate(f"SELECT {columns}, c.data, c.request_body, c.response_body FROM flows f "
                                 "JOIN contents c ON c.seq = f.seq WHERE f.session = ? ORDER BY f.seq",
                                 (session,)):
        batch.append(spool.Courier._flow(path, tuple(values)))
        if len(batch) >= spool.BATCH:
            count += _write(out, batch, progress)
    return count + _write(out, batch, progress)


def _write(out: _Target, batch: list[tuple], progress: Any) -> int:
    count = len(batch)
    if batch:
        with out.transaction():
            out.flows(batch)
        if progress is not None:
            progress.advance(count)
        batch.clear()
    return count
