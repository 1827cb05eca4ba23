"""The store sink for a PostgreSQL store: a local spool, delivered in order.

Every flow is first committed to a local spool: an SQLite store of its own, one
file per session under ``<data dir>/spool/<database>/``, written by the store
sink's own code (:class:`flowtap.store.sink.StoreSink`), so capture never waits
on the network. Every ``batch_interval`` a delivery thread (:class:`Delivery`: a
database that is slow then holds up neither the sink nor its backlog) moves
what the spool holds into PostgreSQL — sessions, events, flows in the order they
were recorded, up to :data:`BATCH` flows a transaction, one pipelined
``INSERT … ON CONFLICT (id) DO NOTHING`` per flow (no round trip each) — and
then deletes it from the spool. A delivery that was committed in PostgreSQL but
not yet removed from the spool (a crash in between) is delivered again and
changes nothing: flows are idempotent on their id, events on their contents.

When the database is unreachable or slow, flows wait in the spool (up to
``[store] spool_limit`` bytes, then they are counted as lost); the sink says so
once (``SinkFailed``, shown in the live view, ``ctl status`` and the summary),
retries with a growing pause, and delivers everything when the database is back.
A run that ends while the database is down leaves its spool; the next run, or
``flowtap store sync``, delivers it. A spool a running capture holds is locked
(``flock``) and left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowtap.api import SinkError, SinkFailed
from flowtap.store import backend_postgres as pg, db
from flowtap.store.db import StoreError
from flowtap.store.reader import pid_alive
from flowtap.store.sink import StoreSink

if TYPE_CHECKING:
    from flowtap.config import Config
    from flowtap.model import Flow
    from flowtap.scheduler import Timer
    from flowtap.session import Session

log = logging.getLogger("flowtap")

#: Flows delivered in one PostgreSQL transaction.
BATCH = 1000
#: Seconds between attempts to reach a database that is down: the first, and the most.
RETRY_FIRST, RETRY_MOST = 0.5, 10.0
#: What one spooled flow costs beyond its bodies (its row and JSON), for the spool's bound.
ROW_BYTES = 1024


class Unreachable(StoreError):
    """The database cannot be reached, or did not answer in time: the spool waits."""


def spool_dir(url: str) -> Path:
    """Where the spools for the database ``url`` are kept (one directory per database, password aside)."""
    key = hashlib.sha256(pg.redact(url).encode()).hexdigest()[:16]
    return db.data_dir() / "spool" / key


# -- delivering ------------------------------------------------------------------------------------


class Courier:
    """Delivers spools into the PostgreSQL store at ``url`` through one writer (connected when needed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.writer: pg.Writer | None = None
        self._sent: dict[str, tuple] = {}  # each session row as last delivered
        self.refused: list[str] = []  #: flows the database would not take: method, URL and why
        self.delivered_bytes = 0  #: of the flows delivered: their bodies, and ROW_BYTES each

    def connect(self) -> pg.Writer:
        """The writer, connected (and the schema migrated) if need be. :raises Unreachable: it is not."""
        if self.writer is None:
            try:
                self.writer = pg.Writer(self.url)
            except StoreError as exc:
                raise Unreachable(str(exc)) from None
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def deliver(self, spool: sqlite3.Connection, path: Path) -> int:
        """Move what the spool at ``path`` holds into the database, in order; how many flows.

        Each batch is committed in PostgreSQL, then removed from the spool. Flows the
        database refuses (bad data: rare, flowtap cleans what it knows of) are left out,
        not retried for ever; :attr:`refused` lists them.

        :raises Unreachable: the database is unreachable or too slow (what was delivered
            before stays delivered; the rest stays in the spool).
        """
        psycopg = pg.driver()
        total = 0
        try:
            while True:
                count, more = self._batch(spool, path)
                total += count
                if not more:
                    return total
        except psycopg.Error as exc:
            self.close()  # a new connection next time: this one may be broken
            raise Unreachable(str(pg.error(self.url, exc, "write"))) from None

    def _read(self, spool: sqlite3.Connection) -> tuple[list, list, list]:
        """Flows, events and sessions to deliver, as of one moment (a clear between reads would mix)."""
        columns = ", ".join(f"f.{c}" for c in db.FLOW_COLUMNS)
        spool.execute("BEGIN")
        try:
            flows = spool.execute(f"SELECT {columns}, c.data, c.request_body, c.response_body "
                                  "FROM flows f JOIN contents c ON c.seq = f.seq ORDER BY f.seq LIMIT ?",
                                  (BATCH,)).fetchall()
            events = spool.execute("SELECT rowid, session, time, kind, text FROM events "
                                   "ORDER BY rowid").fetchall()
            sessions = spool.execute(
                f"SELECT {', '.join(db.SESSION_COLUMNS)}, "
                "EXISTS (SELECT 1 FROM events e WHERE e.session = s.id) FROM sessions s").fetchall()
        finally:
            spool.execute("COMMIT")
        return flows, events, sessions

    def _batch(self, spool: sqlite3.Connection, path: Path) -> tuple[int, bool]:
        """Deliver the events and up to :data:`BATCH` flows; how many flows, and whether more wait."""
        flows, events, sessions = self._read(spool)
        changed = [s for s in sessions if self._sent.get(s[0]) != s[:-1]]
        if not (flows or events or changed):
            return 0, False
        carried = {row[2] for row in flows}
        rows = [self._flow(path, row) for row in flows]
        writer = self.connect()
        with writer.transaction():
            for session in changed:
                values, has_events = session[:-1], session[-1]
                # Received flows, events, flows here: a session worth keeping. An empty one is only
                # brought up to date (it is kept once something happens in it).
                writer.session(values, create=bool(values[9] or has_events or values[0] in carried))
            for _, session_id, when, kind, text in events:
                if kind == "clear":  # the spool forgot the flows recorded before it: so does the database
                    writer.clear(session_id)
                writer.event(session_id, when, kind, text)
            if rows:
                writer.flows(rows, self.refused)
        for session in changed:
            self._sent[session[0]] = session[:-1]
        with db.transaction(spool):
            if events:
                spool.execute("DELETE FROM events WHERE rowid <= ?", (events[-1][0],))
            if flows:
                spool.execute("DELETE FROM flows WHERE seq <= ?", (flows[-1][0],))
        width = len(db.FLOW_COLUMNS)
        for row in flows:
            if row[width - 1]:  # bodies in files: delivered, so gone
                _remove_files(path, json.loads(row[width]))
        self.delivered_bytes += sum(len(row[-2] or b"") + len(row[-1] or b"") + ROW_BYTES for row in rows)
        return len(flows), len(flows) == BATCH

    @staticmethod
    def _flow(path: Path, row: tuple) -> tuple:
        """A spooled flow as the database's row: bodies from their files, inline, no NUL in text columns."""
        width = len(db.FLOW_COLUMNS)
        columns, (data, request_body, response_body) = list(row[1:width]), row[width:]
        if row[width - 1]:  # files: bodies in files beside the spool
            parsed = json.loads(data)
            request_body, response_body = db.read_body_files(path, parsed, request_body, response_body)
            data = json.dumps(parsed)
            columns[-1] = 0
        if "\x00" in "".join(v for v in columns if v.__class__ is str):  # PostgreSQL's text cannot hold NUL
            columns = [v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in columns]
        return (*columns, data, request_body, response_body)


def _remove_files(path: Path, data: dict[str, Any]) -> None:
    for part in ("request", "response"):
        name = (data.get(part) or {}).get("body_file")
        if name:
            with contextlib.suppress(OSError):
                (db.bodies_dir(path) / name).unlink()


def remove_spool(path: Path) -> None:
    """Delete a spool file with its WAL, its body files and its lock."""
    for extra in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(OSError):
            Path(f"{path}{extra}").unlink()
    shutil.rmtree(db.bodies_dir(path), ignore_errors=True)


def _empty(conn: sqlite3.Connection) -> bool:
    """Nothing left to deliver: no flows, no events, every session ended or interrupted."""
    return not conn.execute(
        "SELECT EXISTS (SELECT 1 FROM flows) OR EXISTS (SELECT 1 FROM events) OR "
        "EXISTS (SELECT 1 FROM sessions WHERE state IN ('running', 'paused'))").fetchone()[0]


@contextlib.contextmanager
def held(path: Path, wait: bool = False) -> Iterator[bool]:
    """Hold the lock of the spool ``path`` (True), or find it held by a running capture (False)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): only the process ids in the spool say who holds it
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def spooled(url: str, skip: Path | None = None) -> list[Path]:
    """The spool files of ``url`` (oldest first), but ``skip``."""
    directory = spool_dir(url)
    found = sorted(directory.glob("*.db"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    return [p for p in found if p != skip]


def deliver_spool(courier: Courier, path: Path) -> int | None:
    """Deliver a spool no capture holds, and remove it when all of it is delivered.

    :returns: flows delivered; None if a running capture holds the spool.
    :raises StoreError: the database is unreachable (the spool stays), or the spool is unreadable.
    """
    with held(path) as mine:
        if not mine:
            return None
        conn = db.connect(path, write=True, check=0)
        try:
            with db.transaction(conn):  # its run died: the sessions it left open were interrupted
                for sid, pid in conn.execute(
                        "SELECT id, pid FROM sessions WHERE state IN ('running', 'paused')").fetchall():
                    if not pid_alive(pid) or pid == os.getpid():
                        conn.execute("UPDATE sessions SET state = 'interrupted', ended = coalesce("
                                     "(SELECT max(time) FROM flows WHERE session = ?), started) WHERE id = ?",
                                     (sid, sid))
            count = courier.deliver(conn, path)
            done = _empty(conn)
        finally:
            conn.close()
        if done:
            remove_spool(path)
        return count


# -- the sink ----------------------------------------------------------------------------------------


class Delivery(threading.Thread):
    """Delivers one run's spool every ``interval`` on a thread of its own (then, once, other runs' spools).

    Its own thread, so that a database that is slow holds up neither the sink nor, through its
    backlog, the flows behind it: the sink goes on spooling. It reports through attributes the
    sink reads (``down``, ``refused``, ``delivered``); the sink raises what the user is shown.
    """

    def __init__(self, url: str, path: Path, interval: float) -> None:
        super().__init__(name="flowtap-store-delivery", daemon=True)
        self.url, self.path, self.interval = url, path, interval
        self.courier = Courier(url)
        self.down: str | None = None  #: why the database cannot be reached, while it cannot
        self.delivered = 0  #: flows delivered so far
        self._halt = threading.Event()
        self._wake = threading.Event()

    def run(self) -> None:
        retry, leftovers = RETRY_FIRST, True
        conn = None
        try:
            while not self._halt.is_set():
                pause = self.interval
                try:
                    if conn is None:
                        conn = db.connect(self.path, write=True, check=0)
                    self.delivered += self.courier.deliver(conn, self.path)
                    if leftovers:
                        leftovers = False
                        self._leftovers()
                    self.down, retry = None, RETRY_FIRST
                except Unreachable as exc:
                    self.down = str(exc)
                    pause, retry = retry, min(retry * 2, RETRY_MOST)
                except (StoreError, sqlite3.Error) as exc:  # the spool itself
                    self.down = f"{self.path}: cannot read the spool ({' '.join(str(exc).split())})"
                    pause = RETRY_MOST
                self._wake.wait(pause)
                self._wake.clear()
        finally:
            if conn is not None:
                conn.close()
            self.courier.close()

    def _leftovers(self) -> None:
        """Deliver the spools other runs left; one that cannot be read is named in the log and left."""
        for path in spooled(self.url, skip=self.path):
            try:
                deliver_spool(self.courier, path)
            except Unreachable:
                raise
            except (StoreError, sqlite3.Error, OSError) as exc:
                log.warning("store: cannot deliver the spool %s (%s); `flowtap store sync` says more", path,
                            " ".join(str(exc).split()))

    def stop(self, timeout: float) -> bool:
        """Stop after the delivery under way; whether it stopped within ``timeout`` seconds."""
        self._halt.set()
        self._wake.set()
        self.join(timeout)
        return not self.is_alive()


class PostgresSink(StoreSink):
    """The store sink when ``[store] url`` names a PostgreSQL database: spool, then deliver."""

    def __init__(self, options: dict[str, Any], config: Config | None = None) -> None:
        super().__init__(options, config)
        self.url: str = options["url"]
        self.where = self.location = pg.redact(self.url)  # location: what `flowtap ctl status` shows
        self.limit: int = options["spool_limit"]
        self.delivery: Delivery | None = None
        self._lock: contextlib.ExitStack | None = None
        self._tick: Timer | None = None
        self._down: str | None = None  # the outage reported, while it lasts
        self._refused = 0  # refusals reported so far
        self._spooled = 0  # bytes spooled so far (estimated)

    def open(self, session: Session) -> None:
        try:
            pg.driver()
        except StoreError as exc:
            raise SinkError(str(exc)) from None
        self.path = spool_dir(self.url) / f"{session.id}.db"
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(held(self.path, wait=True))
        try:
            super().open(session)
        except BaseException:
            self._lock.close()
            raise
        self.delivery = Delivery(self.url, self.path, max(self.interval, 0.05))
        self.delivery.start()
        self._tick = self.call_later(1.0, self._check)

    def write(self, flow: Flow) -> None:
        response = len(flow.response.body) if flow.response is not None else 0
        size = len(flow.request.body) + response + ROW_BYTES
        waiting = self._spooled - self._delivered_bytes()
        if waiting + size > self.limit:
            raise SinkFailed(f"{self.where}: the spool is full (about {waiting} bytes wait in {self.path} "
                             "for the database, [store] spool_limit); the flow is lost", lost=1)
        super().write(flow)
        self._spooled += size

    def flush(self) -> None:
        super().flush()
        self._report()

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        failure: SinkFailed | None = None
        try:
            super().close()
        except SinkFailed as exc:
            failure = exc
        try:
            if self.delivery is not None:
                self.delivery.stop(pg.STATEMENT_TIMEOUT_MS / 1000)
            if self._lock is not None:
                self._lock.close()  # deliver_spool takes the lock again, as any other delivery
                self._lock = None
            courier = Courier(self.url)
            try:
                deliver_spool(courier, self.path)
            except StoreError as exc:
                failure = failure or SinkFailed(
                    f"{exc}; the session stays in the spool {self.path}: the next run or "
                    "`flowtap store sync` delivers it")
            finally:
                courier.close()
                self._refused_flows(courier.refused)
        except SinkFailed as exc:
            failure = failure or exc
        if failure is not None:
            raise failure

    # -- what the delivery thread says ---------------------------------------------------------

    def _delivered_bytes(self) -> int:
        return 0 if self.delivery is None else self.delivery.courier.delivered_bytes

    def _check(self) -> None:
        """Report the delivery's news even when no flow comes (every second)."""
        self._tick = self.call_later(1.0, self._check)
        self._report()

    def _report(self) -> None:
        """An outage: logged when it begins and ends, the sink's status while it lasts (no error:
        nothing is lost); flows the database refused."""
        delivery = self.delivery
        if delivery is None:
            return
        if delivery.courier.refused[self._refused:]:
            self._refused_flows(delivery.courier.refused[self._refused:])
        down = delivery.down
        if down is not None and self._down is None:
            self._down = down
            self.status = "database unreachable: flows wait in the spool"
            log.warning("store: %s; capture goes on: flows wait in the spool %s and are delivered when "
                        "the database is back", down, self.path)
        if down is None and self._down is not None:
            self._down = None
            self.status = ""
            log.warning("store: %s is back; the spooled flows are delivered", self.where)

    def _refused_flows(self, refused: list[str]) -> None:
        if not refused:
            return
        self._refused += len(refused)
        more = f"; and {len(refused) - 1} more" if len(refused) > 1 else ""
        raise SinkFailed(f"{self.where}: a flow ({refused[0]}) not stored{more}", lost=len(refused))


def sync(url: str, progress: Any = None) -> tuple[int, int]:
    """Deliver every spool of ``url`` no capture holds: ``flowtap store sync``.

    :returns: flows delivered, spools left (held by a running capture).
    :raises StoreError: the database is unreachable.
    """
    courier = Courier(url)
    delivered = held_by_others = 0
    try:
        for path in spooled(url):
            count = deliver_spool(courier, path)
            if count is None:
                held_by_others += 1
            else:
                delivered += count
                if progress is not None:
                    progress.advance(count)
    finally:
        courier.close()
    return delivered, held_by_others
