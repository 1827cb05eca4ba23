"""The store on PostgreSQL: everything that differs from SQLite, in one place.

The tables are the ones :data:`flowtap.store.db.MIGRATIONS` defines, translated
by :func:`translate` (types, the flows' ``seq`` an identity column, which is unique
however many machines write at once), plus what only PostgreSQL has
(:data:`EXTRAS`): a unique index on flow ids (what makes delivery idempotent,
``ON CONFLICT (id) DO NOTHING``), an order column for events, and indexes for
searches. Migrations run under an advisory lock, so several machines upgrading at
once apply each step once. The driver is psycopg 3, an optional extra.

Searches (:class:`Dialect`): a regex SQL can decide the same way Python does runs
as ``~``/``~*``; the regexes over hosts, methods and content types are tested in
Python once per distinct value (found with a loose index scan), then looked up
through the index; the rest is checked in Python, streamed from a server-side cursor.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from flowtap.store import db, query
from flowtap.store.db import StoreError

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")

#: Seconds to wait for a connection and for one statement, unless the URL says otherwise: a database
#: that is slow or gone must not hold a sink (or a command) for long.
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 15000

#: The key of the advisory lock migrations take (any constant: "flowtap" in ASCII).
LOCK_KEY = 0x666C6F77746170

#: What PostgreSQL adds to each version of the shared schema.
EXTRAS: dict[int, str] = {
    1: """
ALTER TABLE events ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX flows_uid ON flows(id);
""",
    3: """
-- How many flows each session has, kept by the writers (spool.insert_flows): `flowtap sessions`
-- reads it rather than counting a million rows.
ALTER TABLE sessions ADD COLUMN stored bigint NOT NULL DEFAULT 0;
CREATE INDEX flows_time ON flows(time);
CREATE INDEX flows_request_type ON flows(request_type);
CREATE INDEX flows_response_type ON flows(response_type);
""",
}


def is_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL database (a libpq URL) rather than an SQLite file."""
    return isinstance(location, str) and location.startswith(SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def driver() -> Any:
    """The psycopg module; a one-line error naming the extra when it is not installed."""
    try:
        import psycopg
    except ImportError:
        raise StoreError("[store] url names a PostgreSQL database, but its driver is not installed: "
                         "pip install 'flowtap[postgres]'") from None
    return psycopg


def error(url: str, exc: BaseException, doing: str = "read") -> StoreError:
    """A psycopg error as one line: which database, what went wrong."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return StoreError(f"{redact(url)}: cannot {doing} the store (PostgreSQL: {text})")


def connect(url: str, write: bool = False) -> psycopg.Connection:
    """Connect to the store at ``url`` (autocommit); ``write``: create or upgrade its schema, else a
    read-only session.

    The password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq's
    rules); ``sslmode`` and the other TLS parameters pass through the URL.

    :raises StoreError: psycopg missing, the server unreachable, not a flowtap store, or from a newer flowtap.
    """
    psycopg = driver()
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: not a valid PostgreSQL URL ({exc})") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "flowtap")
    params.setdefault("tcp_user_timeout", CONNECT_TIMEOUT * 2000)  # ms: a host that vanished, not refused
    options = str(params.get("options") or "")
    if "statement_timeout" not in options:
        options += f" -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    if not write:  # a reader never changes the store, whatever it runs
        options += " -c default_transaction_read_only=on"
    params["options"] = options.strip()
    try:
        conn = psycopg.connect(autocommit=True, **params)
    except psycopg.Error as exc:
        raise error(url, exc, "reach") from None
    try:
        version = schema_version(conn)
        if version > db.VERSION:
            raise StoreError(f"{redact(url)}: this store was written by a newer flowtap (schema version "
                             f"{version}; this flowtap knows up to {db.VERSION}); upgrade flowtap")
        if write:
            migrate(conn, url)
        elif version == 0:
            raise db.EmptyStore(f"{redact(url)}: no session store in this database yet (nothing recorded "
                                "yet?)", redact(url))
    except psycopg.Error as exc:
        conn.close()
        raise error(url, exc, "write" if write else "read") from None
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: psycopg.Connection) -> int:
    """The store's schema version; 0: no store in this database."""
    if conn.execute("SELECT to_regclass('flowtap_schema')").fetchone()[0] is None:  # type: ignore[index]
        return 0
    row = conn.execute("SELECT max(version) FROM flowtap_schema").fetchone()
    return (row[0] if row else 0) or 0


def migrate(conn: psycopg.Connection, url: str, upto: int = db.VERSION) -> None:
    """Bring the schema to version ``upto``, each step in a transaction, under an advisory lock."""
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS flowtap_schema (version integer NOT NULL)")
        for target in range(1, upto + 1):
            with conn.transaction():
                if schema_version(conn) >= target:  # done before, or by another machine meanwhile
                    continue
                conn.execute(translate(db.MIGRATIONS[target]) + EXTRAS.get(target, ""))
                conn.execute("INSERT INTO flowtap_schema (version) VALUES (%s)", (target,))
        _trigram(conn)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{redact(url)}: cannot upgrade the store's schema: {' '.join(str(exc).split())}") \
            from None
    finally:
        with contextlib.suppress(Exception):
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _trigram(conn: psycopg.Connection) -> None:
    """A trigram index for URL regexes, where the pg_trgm extension can be had (it only speeds up)."""
    if conn.execute("SELECT to_regclass('flows_url_trgm')").fetchone()[0] is not None:  # type: ignore[index]
        return
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute("CREATE INDEX flows_url_trgm ON flows USING gin "
                         "((coalesce(pretty_url, url)) gin_trgm_ops)")
    except Exception:  # not installed, or not allowed to create it: regexes scan instead
        pass


_TYPES = [
    (re.compile(r"\bseq INTEGER PRIMARY KEY REFERENCES"), "seq bigint PRIMARY KEY REFERENCES"),
    (re.compile(r"\bseq INTEGER PRIMARY KEY\b"), "seq bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "bigint"),
    (re.compile(r"\bREAL\b"), "double precision"),
    (re.compile(r"\bBLOB\b"), "bytea"),
]


def translate(script: str) -> str:
    """A migration of :data:`flowtap.store.db.MIGRATIONS` in PostgreSQL's types."""
    for pattern, replacement in _TYPES:
        script = pattern.sub(replacement, script)
    return script


# -- queries ---------------------------------------------------------------------------------------


def placeholders(sql: str) -> str:
    """The store's shared SQL (``?`` placeholders, no ``%``) in psycopg's style."""
    return sql.replace("?", "%s")


def literal(value: str) -> str:
    """``value`` as a PostgreSQL string constant with nothing in it but letters, digits and escapes.

    A Unicode-escape constant (``U&'...'``): no quote, ``?`` or ``%`` appears in
    the SQL text, so it can sit in the shared SQL beside ``?`` placeholders.
    """
    out = []
    for char in value:
        if char.isascii() and char.isalnum():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\{ord(char):04X}")
        else:
            out.append(f"\\+{ord(char):06X}")
    return "U&'" + "".join(out) + "'"


#: Regexes PostgreSQL's ``~`` matches exactly as Python's ``re.search`` does: literal characters,
#: escaped punctuation, ``\d``, ``.``, anchors, alternation, groups, quantifiers, simple classes.
_PORTABLE = re.compile(r"""(?:
    [A-Za-z0-9 _\-/:=&@,;!<>~#%'"]
  | \\[.?*+^$|()\[\]{}\\/\-:=&@,;!<>~#%'"_ ]
  | \\d
  | [.^$*+?|()]
  | \{\d+(?:,\d*)?\}
  | \[\^?(?:[A-Za-z0-9_/:.]|\\[.\-\]\\/]|(?<!\[)-(?!\]))+\]
)*\Z""", re.VERBOSE)


def portable_regex(rx: re.Pattern) -> tuple[str, bool] | None:
    """``rx``'s pattern and whether it ignores case, if PostgreSQL matches it as Python does; else None."""
    pattern = rx.pattern
    if isinstance(pattern, bytes):
        try:
            pattern = pattern.decode("ascii")
        except UnicodeDecodeError:
            return None
    if rx.flags & ~(re.IGNORECASE | re.UNICODE) or "(?" in pattern or not _PORTABLE.match(pattern):
        return None
    return pattern, bool(rx.flags & re.IGNORECASE)


class Dialect:
    """How :mod:`flowtap.store.query` writes conditions for PostgreSQL (it cannot call Python in SQL)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def regex(self, column: str, rx: re.Pattern) -> str | None:
        """``rx`` searched in ``column``, decided in SQL; None if only Python can tell."""
        portable = portable_regex(rx)
        if portable is None:
            return None
        pattern, nocase = portable
        return f"({column} {'~*' if nocase else '~'} {literal(pattern)})"

    def status_is(self, status: int) -> str:
        return f"(f.status IS NOT DISTINCT FROM {int(status)})"

    def lookup(self, fn: Callable[..., Any], columns: tuple[str, ...]) -> str:
        """``fn`` tested in Python once per distinct value of ``columns``; the matching ones, as SQL."""
        matches = [values for values in self.distinct(columns) if fn(*values)]
        if not matches:
            return query.FALSE
        if len(columns) == 1:
            return f"(f.{columns[0]} = ANY(ARRAY[{', '.join(literal(v) for v, in matches)}]::text[]))"
        rows = ", ".join("(" + ", ".join(literal(v) for v in values) + ")" for values in matches)
        return f"(({', '.join(f'f.{c}' for c in columns)}) IN (VALUES {rows}))"

    def distinct(self, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The distinct values of ``columns`` (NOT NULL ones, with an index that starts with them).

        A loose index scan: one index probe per distinct value, not a scan of every row.
        """
        names = ", ".join(columns)
        previous = ", ".join(f"t.{c}" for c in columns)
        sql = (f"WITH RECURSIVE t AS ((SELECT {names} FROM flows ORDER BY {names} LIMIT 1) UNION ALL "
               f"SELECT n.* FROM t, LATERAL (SELECT {names} FROM flows WHERE ({names}) > ({previous}) "
               f"ORDER BY {names} LIMIT 1) n) SELECT {names} FROM t")
        return [tuple(row) for row in self.conn.execute(sql).fetchall()]


_cursors = itertools.count()


def iterate(conn: psycopg.Connection, sql: str, params: tuple | list) -> Iterator[tuple]:
    """The rows of a query, streamed from a server-side cursor (in a transaction of its own)."""
    with conn.transaction():
        with conn.cursor(name=f"flowtap_rows{next(_cursors)}") as cursor:
            cursor.itersize = 2000
            cursor.execute(placeholders(sql), params)
            yield from cursor


class Reader:
    """A PostgreSQL store opened for reading: the shared SQL, in psycopg's placeholders."""

    order = "seq"  # events; sessions break ties on their id

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = redact(url)  # what messages name
        self.conn = connect(url, write=False)
        self.dialect = Dialect(self.conn)
        self.who = "machine, user_name"
        # Before schema version 4 (a store no writer of this version has opened yet): no seen.
        self.seen = "seen" if schema_version(self.conn) >= 4 else "NULL"
        self.stored = "s.stored"

    def close(self) -> None:
        self.conn.close()

    def functions(self, functions: dict[str, tuple[int, Any]]) -> None:
        assert not functions, "a plan for PostgreSQL calls no Python from SQL"

    def execute(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        psycopg = driver()
        try:
            return self.conn.execute(placeholders(sql), params).fetchall()
        except psycopg.Error as exc:
            raise error(self.url, exc) from None

    def iterate(self, sql: str, params: tuple | list = ()) -> Iterator[tuple]:
        psycopg = driver()
        try:
            yield from iterate(self.conn, sql, params)
        except psycopg.Error as exc:
            raise error(self.url, exc) from None


# -- writing (deliveries from the spool, copies) ----------------------------------------------------

_FLOW_COLUMNS = [c for c in db.FLOW_COLUMNS if c != "seq"]
#: A flow and its contents in one statement; nothing when its id is there already (idempotent).
INSERT_FLOW = (
    f"WITH f AS (INSERT INTO flows ({', '.join(_FLOW_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_FLOW_COLUMNS))}) ON CONFLICT (id) DO NOTHING RETURNING seq) "
    "INSERT INTO contents (seq, data, request_body, response_body) SELECT seq, %s, %s, %s FROM f")


class Writer(db.SessionWrites):
    """Writes sessions, events and flows into a PostgreSQL store, each idempotent (deliveries, copies).

    Flows go in pipelined batches (one round trip a batch, not a flow), and each session's
    ``stored`` count grows by the flows actually inserted.
    """

    UPSERT_SESSION, UPDATE_SESSION = db.session_statements("%s")
    INSERT_EVENT = ("INSERT INTO events (session, time, kind, text) "
                    "SELECT %s::text, %s::float8, %s::text, %s::text WHERE NOT EXISTS (SELECT 1 FROM events "
                    "WHERE session = %s AND time = %s AND kind = %s AND text IS NOT DISTINCT FROM %s::text)")

    def __init__(self, url: str) -> None:
        self.where = redact(url)
        self.conn = connect(url, write=True)
        self.errors: tuple[type[BaseException], ...] = (driver().Error,)

    def transaction(self) -> Any:
        return self.conn.transaction()

    def clear(self, session: str) -> None:
        """Forget a session's flows (a clear)."""
        self.conn.execute("DELETE FROM flows WHERE session = %s", (session,))
        self.conn.execute("UPDATE sessions SET stored = 0 WHERE id = %s", (session,))

    def flows(self, rows: list[tuple], refused: list[str]) -> None:
        """Insert flows (``flows`` columns without ``seq``, then data and bodies); ids already there are
        skipped. If the database refuses one, the batch goes again a flow at a time, and what it refuses
        is added to ``refused`` (method, URL, why) instead."""
        psycopg = driver()
        refusals = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)
        sessions: dict[str, list[tuple]] = {}
        for row in rows:
            sessions.setdefault(row[1], []).append(row)
        for session, batch in sessions.items():
            try:
                with self.conn.transaction(), self.conn.cursor() as cursor:  # a savepoint: all or nothing
                    cursor.executemany(INSERT_FLOW, batch)
                    inserted = cursor.rowcount
            except refusals:
                inserted = 0
                for row in batch:
                    try:
                        with self.conn.transaction():
                            inserted += self.conn.execute(INSERT_FLOW, row).rowcount
                    except refusals as exc:
                        refused.append(f"{row[3]} {row[9]}: {' '.join(str(exc).split())}")
            self.conn.execute("UPDATE sessions SET stored = stored + %s WHERE id = %s", (inserted, session))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
