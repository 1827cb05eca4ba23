"""``flowtap store copy``: sessions from one store into another (SQLite or PostgreSQL, either way).

Resumable: a session already in the target is brought up to date, a flow already
there (same id) is skipped, an event already there is not added again; so a copy
that was interrupted is simply run again. Flows go over in the order they were
recorded, a batch of :data:`flowtap.store.spool.BATCH` per transaction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flowtap.store import backend_postgres as pg, db, spool
from flowtap.store.db import StoreError
from flowtap.store.reader import Store


def _writer(location: str | os.PathLike) -> Any:
    """The writer of the store at ``location``: a PostgreSQL URL, or an SQLite file."""
    if pg.is_url(location):
        return pg.Writer(str(location))
    from flowtap.store import backend_sqlite

    return backend_sqlite.Writer(location)


def copy(source: str | os.PathLike, target: str | os.PathLike, progress: Any = None,
         sessions: list[str] | None = None) -> tuple[int, int, list[str]]:
    """Copy ``sessions`` (ids; None: all) from the store ``source`` into ``target``.

    :returns: sessions and flows read (flows already in the target are counted, not copied again),
        and the flows the target refused (method, URL and why).
    :raises StoreError: either store cannot be opened, or a write failed.
    """
    with Store(source) as store:
        chosen = [s for s in store.sessions() if sessions is None or s.id in sessions]
        if progress is not None:
            progress.total = sum(s.flows for s in chosen)
        out = _writer(target)
        flows, refused = 0, list[str]()
        try:
            for info in reversed(chosen):  # oldest first
                flows += _session(store, out, info.id, progress, refused)
        except out.errors as exc:
            raise StoreError(f"{out.where}: cannot write the copy ({' '.join(str(exc).split())}); "
                             "run the same copy again to resume") from None
        finally:
            out.close()
    return len(chosen), flows, refused


def _session(store: Store, out: Any, session: str, progress: Any, refused: list[str]) -> int:
    """Copy one session: its row, its events, then its flows in batches; how many flows."""
    row = store._execute(f"SELECT {', '.join(db.SESSION_COLUMNS[:-3])}, {store._db.who}, {store._db.seen} "
                         "FROM sessions WHERE id = ?", (session,))[0]
    events = store._execute(f"SELECT time, kind, text FROM events WHERE session = ? "
                            f"ORDER BY time, {store._db.order}", (session,))
    with out.transaction():
        out.session(row)
        for when, kind, text in events:
            out.event(session, when, kind, text)
    columns = ", ".join(f"f.{c}" for c in db.FLOW_COLUMNS)
    path = Path(str(store.path))
    batch: list[tuple] = []
    count = 0
    for values in store._iterate(f"SELECT {columns}, c.data, c.request_body, c.response_body FROM flows f "
                                 "JOIN contents c ON c.seq = f.seq WHERE f.session = ? ORDER BY f.seq",
                                 (session,)):
        batch.append(spool.Courier._flow(path, tuple(values)))
        if len(batch) >= spool.BATCH:
            count += _write(out, batch, progress, refused)
    return count + _write(out, batch, progress, refused)


def _write(out: Any, batch: list[tuple], progress: Any, refused: list[str]) -> int:
    count = len(batch)
    if batch:
        with out.transaction():
            out.flows(batch, refused)
        if progress is not None:
            progress.advance(count)
        batch.clear()
    return count
