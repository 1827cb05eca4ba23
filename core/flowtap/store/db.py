"""The store's SQLite database: where it lives, its schema and migrations, flows to rows and back.

One file (WAL mode) with three tables: ``sessions`` (one row per debug
session, with its counts and the config it ran with), ``events`` (pause,
resume, clear and markers) and ``flows`` (one row per flow: the fields a
search needs, indexed where it helps). The full flow sits in ``contents``
beside it, so that scanning ``flows`` stays cheap however big the bodies:
the flow as JSON (:mod:`flowtap.serialize`, without bodies) and the two
bodies, or, for bodies over ``[store] body_file_threshold``, the names of
files under ``<db stem>-bodies/<session id>/`` beside the database.

The schema version is SQLite's ``user_version``; :data:`MIGRATIONS` step a
database from one version to the next when it is opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote, urlsplit

from flowtap import serialize
from flowtap.filters import pretty_url

if TYPE_CHECKING:
    from flowtap.model import Flow


class StoreError(Exception):
    """The store cannot be used: the message names the database and the reason."""


class EmptyStore(StoreError):
    """Nothing was recorded in this store yet: no file, or no tables in the database."""

    def __init__(self, message: str, where: object) -> None:
        super().__init__(message)
        self.where = where  #: the file, or the database's URL without its password


SCHEMA_V1 = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    state TEXT NOT NULL,               -- running, paused, ended
    pid INTEGER,                       -- the process recording it
    recorded INTEGER NOT NULL DEFAULT 0,
    filtered INTEGER NOT NULL DEFAULT 0,
    paused INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL DEFAULT 0,
    config TEXT NOT NULL DEFAULT '{}'  -- {"file": ..., "tables": the config as written}
);
CREATE INDEX sessions_started ON sessions(started);

CREATE TABLE events (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    time REAL NOT NULL,
    kind TEXT NOT NULL,                -- pause, resume, clear, mark
    text TEXT
);
CREATE INDEX events_session ON events(session, time);

CREATE TABLE flows (
    seq INTEGER PRIMARY KEY,           -- the order flows were recorded in
    id TEXT NOT NULL,                  -- Flow.id
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    time REAL NOT NULL,                -- timings.start
    method TEXT NOT NULL,
    scheme TEXT NOT NULL,
    host TEXT NOT NULL,
    host_header TEXT NOT NULL,         -- the Host header; '' when not sent
    port INTEGER,
    path TEXT NOT NULL,                -- path and query
    url TEXT NOT NULL,
    pretty_url TEXT,                   -- the URL with the Host header's authority; NULL: same as url
    status INTEGER,                    -- NULL: no response
    request_type TEXT NOT NULL,        -- every Content-Type value, one per line; '' when none
    response_type TEXT NOT NULL,
    request_size INTEGER,              -- decoded body lengths; NULL: unknown (a truncated body)
    response_size INTEGER,
    duration REAL,                     -- milliseconds
    source TEXT NOT NULL,
    error TEXT,
    websocket INTEGER,                 -- WebSocket messages; NULL for plain HTTP
    files INTEGER NOT NULL DEFAULT 0   -- 1: request body in a file, 2: response body in a file
);
-- Filters on host, method and status find their rows through these indexes (store/query.py).
CREATE INDEX flows_session ON flows(session, seq);
CREATE INDEX flows_id ON flows(id);
CREATE INDEX flows_time ON flows(time);
CREATE INDEX flows_host ON flows(host, host_header);
CREATE INDEX flows_method ON flows(method);
CREATE INDEX flows_status ON flows(status);

CREATE TABLE contents (
    seq INTEGER PRIMARY KEY REFERENCES flows(seq) ON DELETE CASCADE,
    data TEXT NOT NULL,                -- serialize.flow_to_dict(flow, bodies=False), as JSON
    request_body BLOB,                 -- NULL when kept in a file
    response_body BLOB
);
"""

# Two indexes cost more on every insert than they saved. flows(id): random ids put each new
# row on another page of the index, so every commit wrote a page per flow and the cost grew
# with the store (40 against 22 us per flow at 160,000 flows); a lookup by id now reads the
# flows table (25 ms at 150,000 flows), and only `flowtap show` does one. flows(time): unused.
SCHEMA_V2 = """
DROP INDEX IF EXISTS flows_id;
DROP INDEX IF EXISTS flows_time;
"""

# A team store has many capture machines and people writing into it: each session says where it was
# recorded and by whom ('' for sessions recorded before).
SCHEMA_V3 = """
ALTER TABLE sessions ADD COLUMN machine TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN user_name TEXT NOT NULL DEFAULT '';
"""

# Whether a session on another machine is still recorded cannot be asked of its process: the run
# writes the time it was last alive into its session row ('seen': with every commit, and every
# HEARTBEAT seconds while nothing else is committed); readers take a running session not seen
# for STALE seconds as interrupted. NULL: recorded before.
SCHEMA_V4 = """
ALTER TABLE sessions ADD COLUMN seen REAL;
"""

#: version -> SQL that brings a database from the version before to it. Written for SQLite; the
#: PostgreSQL backend translates the types (store/backend_postgres.py).
MIGRATIONS: dict[int, str] = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3, 4: SCHEMA_V4}
VERSION = max(MIGRATIONS)
#: The oldest version a read-only connection reads as it is (since then: indexes dropped, the
#: columns machine and user_name, read as '' when missing, and seen, read as NULL).
READS_FROM = 1
#: Seconds between a run's writes of ``sessions.seen`` while it commits nothing else.
HEARTBEAT = 30.0
#: Seconds after which a running session of another machine, not seen since, reads as interrupted.
STALE = 3 * HEARTBEAT

FLOW_COLUMNS = ("seq", "id", "session", "time", "method", "scheme", "host", "host_header", "port", "path",
                "url", "pretty_url", "status", "request_type", "response_type", "request_size",
                "response_size", "duration", "source", "error", "websocket", "files")
#: A session row, as copies and deliveries carry it.
SESSION_COLUMNS = ("id", "name", "started", "ended", "state", "pid", "recorded", "filtered", "paused",
                   "received", "config", "machine", "user_name", "seen")


class SessionWrites:
    """A backend writer's session and event writes: the same statements on either backend but for
    their placeholders and casts (each backend's writer sets the three)."""

    conn: Any
    UPSERT_SESSION: str  #: the session row (:data:`SESSION_COLUMNS`), made or brought up to date
    UPDATE_SESSION: str  #: the session row brought up to date (its id last)
    INSERT_EVENT: str  #: an event, unless the same one is there (its four values twice)

    def session(self, values: tuple, create: bool = True) -> None:
        """A session row (:data:`SESSION_COLUMNS`), made or brought up to date; ``create=False``: only
        brought up to date if it is there."""
        if create:
            self.conn.execute(self.UPSERT_SESSION, values)
        else:
            self.conn.execute(self.UPDATE_SESSION, (*values[1:], values[0]))

    def event(self, session: str, when: float, kind: str, text: str | None) -> None:
        """An event, unless the same one is there."""
        self.conn.execute(self.INSERT_EVENT, (session, when, kind, text, session, when, kind, text))


def session_statements(mark: str) -> tuple[str, str]:
    """:attr:`SessionWrites.UPSERT_SESSION` and ``UPDATE_SESSION`` with the placeholder ``mark``."""
    upsert = (f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES "
              f"({', '.join([mark] * len(SESSION_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET "
              + ", ".join(f"{c} = excluded.{c}" for c in SESSION_COLUMNS[1:]))
    assignments = ", ".join(f"{c} = {mark}" for c in SESSION_COLUMNS[1:])
    update = f"UPDATE sessions SET {assignments} WHERE id = {mark}"
    return upsert, update


INSERT_FLOW = f"INSERT INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES ({', '.join('?' * len(FLOW_COLUMNS))})"
INSERT_CONTENT = "INSERT INTO contents (seq, data, request_body, response_body) VALUES (?, ?, ?, ?)"

REQUEST_FILE, RESPONSE_FILE = 1, 2


# -- where things are -------------------------------------------------------------


def data_dir() -> Path:
    """flowtap's data directory: ``$FLOWTAP_DATA_DIR``, else the platform's user data dir."""
    base = os.environ.get("FLOWTAP_DATA_DIR")
    if base:
        return Path(base).expanduser()
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_data_dir("flowtap"))


def default_path() -> Path:
    """The store used when ``[store] path`` is empty: ``flowtap.db`` in :func:`data_dir`."""
    return data_dir() / "flowtap.db"


def resolve_path(path: str | os.PathLike | None) -> Path:
    """``path`` with ``~`` expanded, or :func:`default_path` when it is empty."""
    return Path(path).expanduser() if path else default_path()


def bodies_dir(db_path: Path) -> Path:
    """Where bodies too big for rows are kept: ``<stem>-bodies/`` beside the database."""
    return db_path.with_name(db_path.stem + "-bodies")


# -- opening ------------------------------------------------------------------------------

#: Seconds a connection waits for another process's lock (a run starting, committing, upgrading
#: the schema) before it gives up.
BUSY_TIMEOUT = 10.0

#: Seconds opening a store may spend on ``PRAGMA quick_check``. The check reads the whole file:
#: on a store of 100,000 flows (235 MB) it took 0.2-0.45 s with the file in the page cache and
#: 4.8-5.9 s from disk, too long for every start of a run. Within this budget the check finishes
#: for stores of up to about 150,000 such flows when cached, and covers part of bigger or uncached
#: ones; damage elsewhere is found when a commit or a read reaches it, and reported the same way.
CHECK_BUDGET = 0.5


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _code(exc: sqlite3.Error) -> str:
    """SQLite's primary result code name of ``exc`` (``SQLITE_CORRUPT``, ...), or ''."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name:
        return "SQLITE_" + name.removeprefix("SQLITE_").split("_")[0]
    text = str(exc)  # Python 3.10: SQLite's messages
    for fragment, code in (("malformed", "SQLITE_CORRUPT"), ("not a database", "SQLITE_NOTADB"),
                           ("database is locked", "SQLITE_BUSY"), ("disk is full", "SQLITE_FULL"),
                           ("disk I/O error", "SQLITE_IOERR"), ("unable to open", "SQLITE_CANTOPEN"),
                           ("readonly", "SQLITE_READONLY")):
        if fragment in text:
            return code
    return ""


def damaged(path: Path, what: str) -> StoreError:
    """The error for a store SQLite finds damaged; ``what``: SQLite's words."""
    return StoreError(f"{path}: the session store is damaged ({what}); move it aside (a new store is "
                      f"started in its place) or recover what it holds: sqlite3 {shlex.quote(str(path))} "
                      ".recover | sqlite3 recovered.db")


def error(path: Path, exc: sqlite3.Error, doing: str = "read") -> StoreError:
    """``exc``, raised while ``doing`` (read, write) the store, as one line: what is wrong, what to do."""
    code, text = _code(exc), _describe(exc)
    if code == "SQLITE_CORRUPT":
        return damaged(path, f"SQLite: {text}")
    if code == "SQLITE_NOTADB":
        return StoreError(f"{path}: not a readable flowtap session store (SQLite: {text}); if [store] "
                          "path is right, the file is damaged: move it aside (a new store is started in its "
                          "place)")
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(f"{path}: the store stayed locked by another process for {BUSY_TIMEOUT:.0f} s "
                          f"(SQLite: {text}); try again when it is done")
    return StoreError(f"{path}: cannot {doing} the store (SQLite: {text})")


def connect(path: Path, write: bool = False, check: float | None = None) -> sqlite3.Connection:
    """Open the store at ``path``.

    Both check the store's integrity (for up to ``check`` seconds, default
    :data:`CHECK_BUDGET`; 0: not at all) and wait up to :data:`BUSY_TIMEOUT`
    for another process's lock, as when two runs start together on a new
    store. Read connections are read-only (``mode=ro``) and never change the
    file; they require the current schema. Write connections create the
    file and its directory as needed and migrate an older schema.

    :raises StoreError: missing, not a flowtap store, damaged, from a newer flowtap, or locked.
    """
    if write:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open the store: {_describe(exc)}") from None
        try:
            os.chmod(path, 0o600)  # captures hold secrets
        except OSError:
            pass
    else:
        if not path.is_file():
            raise EmptyStore(f"{path}: no session store here (nothing recorded yet?)", path)
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the store: {_describe(exc)}") from None
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        # One read transaction: the version and the tables of the same moment, though another
        # process may be creating the schema right now.
        conn.execute("BEGIN")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # it only read
                    conn.execute("ROLLBACK")
        if version > VERSION:
            raise StoreError(f"{path}: this store was written by a newer flowtap (schema version {version}; "
                             f"this flowtap knows up to {VERSION}); upgrade flowtap, or set [store] path to "
                             "another file")
        if version == 0 and tables:
            raise StoreError(f"{path}: not a flowtap session store (an SQLite database with other tables); "
                             "set [store] path to another file")
        if version and not {"sessions", "flows"} <= tables:
            raise StoreError(f"{path}: not a flowtap session store (tables are missing); "
                             "set [store] path to another file")
        check = CHECK_BUDGET if check is None else check
        if version and check:
            quick_check(conn, path, check)
        if write:  # only now that it is known to be a flowtap store: nothing else is changed
            _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a killed process loses nothing committed
            migrate(conn, path, version)
        elif version < READS_FROM:
            raise StoreError(f"{path}: this store has schema version {version}, older than this flowtap's "
                             f"({VERSION}); the next `flowtap run` upgrades it")
    except sqlite3.Error as exc:
        conn.close()
        raise error(path, exc, "write" if write else "read") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode (it stays with the file).

    Another connection changing the mode at the same moment (a second run
    starting on a new store) makes SQLite answer "database is locked" at
    once, without waiting: retry until :data:`BUSY_TIMEOUT`.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if _code(exc) not in ("SQLITE_BUSY", "SQLITE_LOCKED") or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def quick_check(conn: sqlite3.Connection, path: Path, budget: float | None = None) -> bool:
    """Run SQLite's ``PRAGMA quick_check``, for at most ``budget`` seconds (None: to its end).

    The budget is kept by ``sqlite3_interrupt`` from a timer: SQLite walks each
    b-tree in one step of its program, so a progress handler is not called while
    it waits for the disk.

    :returns: True if it ran to its end, False if the budget cut it short (what it checked was fine).
    :raises StoreError: the check found damage.
    """
    timer = None
    if budget is not None:
        timer = threading.Timer(budget, conn.interrupt)
        timer.daemon = True
        timer.start()
    try:
        rows = [row[0] for row in conn.execute("PRAGMA quick_check(10)")]
    except sqlite3.OperationalError as exc:
        if timer is not None and "interrupted" in str(exc):
            return False
        raise
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # not interrupting anything after this
    if rows != ["ok"]:
        problems = [r for r in rows if not r.startswith("*** in database")]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise damaged(path, f"SQLite's quick_check: {problems[0] if problems else rows[0]}{more}")
    return True


def migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Apply the migrations after ``version`` in order, each in its own transaction."""
    for target in sorted(v for v in MIGRATIONS if v > version):
        try:
            with transaction(conn):
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current >= target:  # another process migrated meanwhile
                    continue
                for statement in _statements(MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(target)}")
        except sqlite3.Error as exc:
            if _code(exc) in ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_BUSY", "SQLITE_LOCKED"):
                raise
            raise StoreError(f"{path}: cannot upgrade the store to schema version {target} "
                             f"(SQLite: {_describe(exc)})") from None


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; ``ROLLBACK`` if the body raises or ``COMMIT`` fails.

    ``BEGIN IMMEDIATE`` takes the write lock at once, waiting for another
    writer up to the busy timeout (deferred, a read could not be upgraded to
    a write without failing). When a statement or the ``COMMIT`` fails, SQLite
    may already have rolled the transaction back (it does for a full disk
    and I/O errors): roll back only if one is still open, and let nothing
    the rollback raises hide the first error, SQLite's own message.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line.split("--", 1)[0] if "--" in line else line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


# -- flows to rows and back ---------------------------------------------------------------


def _types(headers) -> str:
    return "\n".join(v for k, v in headers.fields if k.lower() == "content-type")


def flow_columns(flow: Flow) -> list[Any]:
    """The ``flows`` row of ``flow`` without ``seq``, ``session`` and ``files``."""
    req, resp = flow.request, flow.response
    parts = urlsplit(req.url)  # once, not once per Request property
    pretty = pretty_url(req)  # what ~u searches
    port = _port(parts)
    return [_text(value) for value in (
        flow.id,
        flow.timings.start,
        req.method,
        parts.scheme,
        parts.hostname or "",
        req.headers.get("host") or "",
        port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme),
        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        req.url,
        None if pretty == req.url else pretty,
        None if resp is None else resp.status_code,
        _types(req.headers),
        "" if resp is None else _types(resp.headers),
        req.body_size,
        None if resp is None else resp.body_size,
        flow.timings.duration,
        flow.source,
        flow.error,
        None if flow.websocket is None else len(flow.websocket),
    )]


def _text(value: Any) -> Any:
    """A column value SQLite can store: lone surrogates (bytes that were not UTF-8) become U+FFFD.

    The columns are for searching; the exact text is in ``contents.data``.
    """
    if isinstance(value, str) and not value.isascii():
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _port(parts: SplitResult) -> int | None:
    """The URL's port, or None if it has none or one that is not a number in range (``.port`` raises)."""
    try:
        return parts.port
    except ValueError:
        return None


def flow_data(flow: Flow, request_file: str | None, response_file: str | None) -> str:
    """The ``contents.data`` JSON: the flow without bodies, plus body file names."""
    data = serialize.flow_to_dict(flow, bodies=False)
    if request_file:
        data["request"]["body_file"] = request_file
    if response_file:
        data["response"]["body_file"] = response_file
    return serialize.to_json(data)


def read_body_files(db_path: Path, parsed: dict[str, Any], request_body: bytes | None,
                    response_body: bytes | None) -> list[bytes | None]:
    """The two bodies of a stored flow, those kept in files read; the file names taken out of its JSON
    ``parsed`` (a file that is gone: an empty body, marked truncated)."""
    bodies = []
    for part, body in (("request", request_body), ("response", response_body)):
        message = parsed.get(part) or {}
        name = message.pop("body_file", None)
        if name is not None:
            try:
                body = (bodies_dir(db_path) / name).read_bytes()
            except OSError:
                body = b""
                message["truncated"] = True
        bodies.append(body)
    return bodies


def load_flow(db_path: Path, data: str, request_body: bytes | None, response_body: bytes | None) -> Flow:
    """The :class:`Flow` a ``contents`` row holds (bodies read from their files if need be)."""
    try:
        parsed = serialize.from_json(data)
    except ValueError as exc:
        raise damaged(db_path, f"a stored flow is not JSON: {exc}") from None
    bodies = [b"" if body is None else bytes(body)
              for body in read_body_files(db_path, parsed, request_body, response_body)]
    try:
        return serialize.flow_from_dict(parsed, bodies[0], bodies[1])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise damaged(db_path, f"a stored flow is not what flowtap wrote: {exc!r}") from None
