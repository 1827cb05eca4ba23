"""Reading the store: sessions, and flows matching a filter, never changing the database."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from flowtap.store import db, query
from flowtap.store.db import StoreError
from flowtap.store.query import TRUE

if TYPE_CHECKING:
    from flowtap.model import Flow

_SESSION_COLUMNS = "id, name, started, ended, state, pid, recorded, filtered, paused, received, config"


def _reader(location: str | os.PathLike | None) -> Any:
    """The backend that reads the store at ``location``: a PostgreSQL URL, or an SQLite file."""
    from flowtap.store import backend_postgres

    if backend_postgres.is_url(location):
        return backend_postgres.Reader(str(location))
    from flowtap.store import backend_sqlite

    return backend_sqlite.Reader(location)


def _machine() -> str:
    """This machine's name, as sessions record it."""
    import socket

    return socket.gethostname()


def _interrupted(pid: int | None, machine: str, seen: float | None) -> bool:
    """Whether a session stored as running is not: its process (on this machine) is gone, or (on
    another) its run has not written ``seen`` for :data:`flowtap.store.db.STALE` seconds."""
    if machine in ("", _machine()):
        return not pid_alive(pid)
    return seen is not None and time.time() - seen > db.STALE


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@attrs.define
class Event:
    """Something that happened during a session: pause, resume, clear, or a marker."""

    time: float
    kind: str
    text: str | None = None


@attrs.define
class SessionInfo:
    """One stored session.

    ``state`` is ``running``, ``paused``, ``ended``, or ``interrupted`` (its
    process died before ending it: a crash or ``kill -9``; for a session of
    another machine, whose process cannot be asked, its run has not been
    heard from for :data:`flowtap.store.db.STALE` seconds).
    """

    id: str
    name: str
    started: float
    ended: float | None
    state: str
    pid: int | None
    flows: int
    recorded: int
    filtered: int
    paused: int
    received: int
    config: dict[str, Any]
    machine: str = ""  #: the host name of the machine that recorded it ('' before flowtap recorded it)
    user: str = ""  #: the user who recorded it
    seen: float | None = None  #: when its run was last known alive (Unix time; None: not recorded)

    @property
    def live(self) -> bool:
        """A process is recording it right now."""
        return self.state in ("running", "paused")


@attrs.define
class FlowRow:
    """A stored flow's searchable fields; :meth:`Store.flow` loads the whole flow."""

    seq: int
    id: str
    session: str
    time: float
    method: str
    scheme: str
    host: str
    host_header: str  # '' when not sent
    port: int | None
    path: str
    url: str
    pretty_url: str | None  # the URL as ~u sees it, when it differs from url
    status: int | None
    request_type: str  # every Content-Type value, one per line ('' when none)
    response_type: str
    request_size: int
    response_size: int | None
    duration: float | None
    source: str
    error: str | None
    websocket: int | None
    files: int

    def summary(self) -> dict[str, Any]:
        """The fields ``flowtap search --json`` prints."""
        return {
            "id": self.id, "session": self.session, "time": self.time, "method": self.method,
            "status": self.status, "host": self.host, "path": self.path, "url": self.url,
            "request_size": self.request_size, "response_size": self.response_size,
            "duration": self.duration,
            "content_type": self.response_type.split("\n")[0] or None,
            "source": self.source, "error": self.error,
        }  # fmt: skip


class Store:
    """A session store opened for reading (see :func:`flowtap.open_store`).

    >>> with flowtap.open_store() as store:
    ...     session = store.session("last")
    ...     posts = list(store.flows("~m POST & ~d api.example.com", session=session.id))

    Reads see what was committed when each query began; a capture may be
    writing meanwhile. ``path`` is an SQLite file, or a PostgreSQL URL
    (``postgresql://user@host/db``: a team store), then ``path`` names it
    without its password.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._db = _reader(path)
        self.path = self._db.path

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """The rows of a query, all fetched; errors as :class:`StoreError`."""
        return self._db.execute(sql, params)

    def _iterate(self, sql: str, params: tuple | list = ()) -> Iterator[tuple]:
        """The rows of a query one by one (streamed); errors as :class:`StoreError`."""
        return self._db.iterate(sql, params)

    # -- sessions ------------------------------------------------------------------------

    def sessions(self, machine: str | None = None, user: str | None = None) -> list[SessionInfo]:
        """Every stored session, newest first (only those recorded on ``machine``, by ``user``, if given)."""
        where, params = self._who(machine, user)
        tie = "rowid" if self._db.order == "rowid" else "id"
        return self._sessions(where, params, f" ORDER BY started DESC, {tie} DESC")

    def _sessions(self, where: list[str], params: list[str], order: str = "") -> list[SessionInfo]:
        """The sessions meeting the conditions ``where`` (none: all)."""
        rows = self._execute(
            f"SELECT {_SESSION_COLUMNS}, {self._db.stored}, {self._db.who}, {self._db.seen} "
            f"FROM sessions s{' WHERE ' + ' AND '.join(where) if where else ''}{order}", params)
        return [self._session(row) for row in rows]

    @staticmethod
    def _who(machine: str | None, user: str | None) -> tuple[list[str], list[str]]:
        """Conditions on sessions' machine and user."""
        where, params = [], []
        for column, value in (("machine", machine), ("user_name", user)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return where, params

    def _session(self, row: tuple) -> SessionInfo:
        (sid, name, started, ended, state, pid, recorded, filtered, paused, received, config, flows,
         machine, user, seen) = row
        if state in ("running", "paused") and _interrupted(pid, machine, seen):
            state = "interrupted"
        try:
            config = json.loads(config)
        except ValueError:
            config = {}
        return SessionInfo(sid, name, started, ended, state, pid, flows, recorded, filtered, paused,
                           received, config, machine, user, seen)

    def session(self, ref: str, unique: bool = False) -> SessionInfo:
        """The session ``ref`` names: an id, a unique id prefix, a name, or ``last``.

        A name several sessions share means the newest of them, unless
        ``unique`` (then it is an error).

        :raises StoreError: no such session, or an ambiguous reference.
        """
        sessions = self.sessions()
        if ref == "last":
            if not sessions:
                raise StoreError(f"{self.path}: no sessions recorded yet")
            return sessions[0]
        for candidates in (
            [s for s in sessions if s.id == ref],
            [s for s in sessions if s.name == ref],
            [s for s in sessions if len(ref) >= 4 and s.id.startswith(ref)],
        ):
            if len(candidates) == 1 or (candidates and not unique and candidates[0].name == ref):
                return candidates[0]
            if candidates:
                ids = ", ".join(s.id for s in candidates[:5])
                raise StoreError(f"session {ref!r} is ambiguous: {len(candidates)} sessions match ({ids}); "
                                 "use an id")
        raise StoreError(f"no session {ref!r} in {self.path} (`flowtap sessions` lists them)")

    def session_by_id(self, session_id: str) -> SessionInfo:
        """The session with exactly this id: one row, where :meth:`session` reads them all.

        :raises StoreError: no such session.
        """
        found = self._sessions(["id = ?"], [session_id])
        if not found:
            raise StoreError(f"no session {session_id!r} in {self.path} (`flowtap sessions` lists them)")
        return found[0]

    def events(self, session: str, cookies: bool = False) -> list[Event]:
        """Pauses, resumes, clears and markers of a session, in order.

        :param cookies: also the cookies seen (kind ``cookies``, their text JSON: see
            ``StoreSink.flowtap_cookies_seen``), which an export replays.
        """
        where = "" if cookies else " AND kind != 'cookies'"
        rows = self._execute(f"SELECT time, kind, text FROM events WHERE session = ?{where} "
                             f"ORDER BY time, {self._db.order}", (session,))
        return [Event(*row) for row in rows]

    def hosts(self, session: str, limit: int = 5) -> list[tuple[str, int]]:
        """The hosts a session's flows went to most, with their counts."""
        rows = self._execute("SELECT host, count(*) AS n FROM flows WHERE session = ? GROUP BY host "
                             "ORDER BY n DESC, host LIMIT ?", (session, limit))
        return [(host, n) for host, n in rows]

    # -- flows ---------------------------------------------------------------------------------

    def rows(self, expression: str | None = None, session: str | SessionInfo | None = None,
             limit: int | None = None, newest_first: bool = False, machine: str | None = None,
             user: str | None = None) -> Iterator[FlowRow]:
        """The searchable fields of the flows matching ``expression``.

        :param expression: a mitmproxy filter expression; None: every flow.
        :param session: only this session's flows: a :class:`SessionInfo`, or an id,
            name or ``last`` as for :meth:`session`.
        :param limit: at most this many.
        :param newest_first: the most recently recorded first (else recording order).
        :param machine: only flows of sessions recorded on this machine.
        :param user: only flows of sessions recorded by this user.
        :raises FilterError: the expression is invalid.
        """
        for row, _ in self._select(expression, session, limit, newest_first, machine=machine, user=user):
            yield row

    def page(self, session: str | SessionInfo, expression: str | None = None, after: int | None = None,
             before: int | None = None, limit: int = 100) -> list[FlowRow]:
        """One page of a session's flows matching ``expression``, by recording order (keyset on
        :attr:`FlowRow.seq`, never an offset: any page of a large session costs the same).

        :param after: the first ``limit`` flows recorded after the flow with this ``seq``
            (None: from the first).
        :param before: else, the last ``limit`` flows recorded before this ``seq``. Neither: the
            first ``limit`` flows. Either way the page is in recording order.
        :raises FilterError: the expression is invalid.
        """
        if after is not None or before is None:
            bound = None if after is None else ("f.seq > ?", [after])
            found = self._select(expression, session, limit, False, load=False, bound=bound)
            return [row for row, _ in found]
        found = self._select(expression, session, limit, True, load=False, bound=("f.seq < ?", [before]))
        return [row for row, _ in found][::-1]

    def newest(self, session: str | SessionInfo, expression: str | None = None,
               limit: int = 100) -> list[FlowRow]:
        """The last ``limit`` flows of a session matching ``expression``, in recording order."""
        return [row for row, _ in self._select(expression, session, limit, True, load=False)][::-1]

    def flows(self, expression: str | None = None, session: str | SessionInfo | None = None,
              limit: int | None = None, newest_first: bool = False, machine: str | None = None,
              user: str | None = None) -> Iterator[Flow]:
        """The :class:`flowtap.Flow` objects matching ``expression`` (arguments as for :meth:`rows`)."""
        # Only the contents: the flows' index alone finds them (an export reads every flow of a session).
        for _, flow in self._matching(expression, session, limit, newest_first, load=True, machine=machine,
                                      user=user, columns=("seq",)):
            assert flow is not None  # loaded
            yield flow

    def selected(self, session: str | SessionInfo, ids: list[str], expression: str | None = None
                 ) -> Iterator[Flow]:
        """The flows of a session with these ids (and matching ``expression``), in recording order."""
        rows: list[FlowRow] = []
        for start in range(0, len(ids), 500):  # SQLite allows 999 parameters (before 3.32)
            part = list(ids[start:start + 500])
            where = ("f.id IN (" + ", ".join("?" * len(part)) + ")", part)
            rows.extend(row for row, _ in self._select(expression, session, None, False, load=False,
                                                       bound=where))
        for row in sorted(rows, key=lambda row: row.seq):
            yield self._load(row.seq)

    def flow(self, ref: str) -> Flow:
        """The stored flow with this id (or unique id prefix)."""
        return self._load(self.find(ref).seq)

    def find(self, ref: str) -> FlowRow:
        """The :class:`FlowRow` of the flow with this id (or unique id prefix).

        :raises StoreError: no such flow, or several match the prefix.
        """
        cols = ", ".join(f"f.{c}" for c in db.FLOW_COLUMNS)
        # One pass over the flows (ids are not indexed, see db.SCHEMA_V2): the exact id first.
        rows = [] if not ref else [FlowRow(*row) for row in self._execute(
            f"SELECT {cols} FROM flows f WHERE substr(f.id, 1, ?) = ? ORDER BY f.id = ? DESC LIMIT 2",
            (len(ref), ref, ref))]
        if not rows:
            raise StoreError(f"no flow {ref!r} in {self.path} (`flowtap search` lists flows with their ids)")
        if len(rows) > 1 and rows[0].id != ref:
            raise StoreError(f"flow id {ref!r} is ambiguous: several flows start with it; "
                             "give more of the id")
        return rows[0]

    def count(self, session: str | None = None) -> int:
        """How many flows are stored (in one session, or in all)."""
        if session is None:
            return self._execute("SELECT count(*) FROM flows")[0][0]
        return self._execute("SELECT count(*) FROM flows WHERE session = ?", (session,))[0][0]

    def _load(self, seq: int) -> Flow:
        rows = self._execute("SELECT data, request_body, response_body FROM contents WHERE seq = ?", (seq,))
        row = rows[0] if rows else None
        if row is None:
            raise db.damaged(self.path, f"the flow stored as #{seq} has no contents")
        return db.load_flow(self.path, *row)

    def _select(self, expression: str | None, session: str | SessionInfo | None, limit: int | None,
                newest_first: bool, load: bool = False, bound: tuple[str, list[Any]] | None = None,
                machine: str | None = None, user: str | None = None) -> Iterator[tuple[FlowRow, Flow | None]]:
        found = self._matching(expression, session, limit, newest_first, load, bound, machine, user)
        for values, flow in found:
            yield FlowRow(*values), flow

    def _matching(self, expression: str | None, session: str | SessionInfo | None, limit: int | None,
                  newest_first: bool, load: bool = False, bound: tuple[str, list[Any]] | None = None,
                  machine: str | None = None, user: str | None = None,
                  columns: tuple[str, ...] = db.FLOW_COLUMNS) -> Iterator[tuple[tuple, Flow | None]]:
        """The ``flows`` ``columns`` of each flow matching (as :meth:`rows` has them), and the flow if
        ``load`` (or if the filter needed it)."""
        plan = query.plan(expression, self._db.dialect)
        if session is not None:
            session = session.id if isinstance(session, SessionInfo) else self.session(session).id
        self._db.functions(plan.functions)
        cols = ", ".join(f"f.{c}" for c in columns)
        sql = f"SELECT {cols}, {TRUE if plan.exact else plan.sure}"
        if plan.exact and not plan.needs_contents and not load:
            sql += " FROM flows f"
        else:  # the contents come along for the rows Python must check, or the caller loads
            sql += ", c.data, c.request_body, c.response_body FROM flows f JOIN contents c ON c.seq = f.seq"
        where, params = [plan.maybe], []
        if session is not None:
            where.append("f.session = ?")
            params.append(session)
        if bound is not None:  # a condition of the caller's: "f.seq > ?", [cursor]
            where.append(bound[0])
            params.extend(bound[1])
        who, names = self._who(machine, user)
        if who:
            where.append(f"f.session IN (SELECT id FROM sessions WHERE {' AND '.join(who)})")
            params.extend(names)
        sql += " WHERE " + " AND ".join(where) + f" ORDER BY f.seq {'DESC' if newest_first else 'ASC'}"
        if plan.exact and limit is not None:
            sql += f" LIMIT {int(limit)}"
        if limit is not None and limit <= 0:
            return
        found = 0
        width = len(columns)
        for values in self._iterate(sql, params):
            row, sure = values[:width], values[width]
            flow = None
            predicate = None if sure else plan.predicate  # None: no filter, or SQL decided it
            if load or predicate is not None:
                flow = db.load_flow(self.path, *values[width + 1:])
                if predicate is not None and not predicate(flow):
                    continue
            yield row, flow
            found += 1
            if limit is not None and found >= limit:
                return


def open_store(path: str | os.PathLike | None = None) -> Store:
    """Open the session store for reading: list sessions, iterate flows matching a filter.

    :param path: the database; default ``[store] path``'s default, ``flowtap.db``
        in the user data directory (``$FLOWTAP_DATA_DIR`` if set).
    :raises StoreError: no store there, not a flowtap store, or from a newer flowtap.
    """
    return Store(path)
