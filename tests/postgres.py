"""A throwaway PostgreSQL server for the tests: Debian's binaries, ``initdb`` + ``pg_ctl``, loopback only.

:func:`server` starts one cluster in a temporary directory on a free port (as the ``postgres`` user
when the tests run as root: ``initdb`` refuses root) and removes it afterwards. Tests that need the
server skip with the reason when PostgreSQL or psycopg is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PASSWORD = "app"


def _bin_dir() -> str | None:
    """Where initdb and pg_ctl are: on PATH, else the newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(candidates[-1]) if candidates else None


def missing() -> str | None:
    """Why no server can be started here (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if _bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user for initdb"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One PostgreSQL cluster; :meth:`database` makes a fresh database in it, :meth:`stop`/:meth:`start`."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flowtap-pg-"))
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres")
        try:
            (self.dir / "pw").write_text(PASSWORD + "\n")
            if self.root:
                shutil.chown(self.dir / "pw", "postgres")
            self._run("initdb", "-D", str(self.dir / "data"), "-U", "app", f"--pwfile={self.dir / 'pw'}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8",
                      "--no-sync")
            self.start()
        except BaseException:
            self.close()
            raise

    def _run(self, tool: str, *args: str) -> None:
        command = [os.path.join(str(self.bin), tool), *args]
        if self.root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, cwd=self.dir, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        """The maintenance database's URL (password included)."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://app:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server at once: ``fast`` cuts the connections; ``immediate`` is a crash (every
        process quits without a checkpoint; the next start recovers from the WAL)."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """A running server, stopped and removed afterwards; skips the test when none can be started."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    started = Server()
    try:
        yield started
    finally:
        started.close()


def wait_for(condition, timeout: float = 20.0, pause: float = 0.05):
    """Poll ``condition`` until it returns something true; that value (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout} s"
            return value
        time.sleep(pause)


class StoreAt:
    """Where a test's store is: an SQLite file, or a database on the test server (the same test, both)."""

    def __init__(self, kind: str, directory: Path, server: Server | None = None) -> None:
        self.kind = kind
        self.path = directory / "store.db" if kind == "sqlite" else None
        self.url = server.database() if server is not None else None

    @property
    def location(self):
        """What :func:`flowtap.open_store` takes."""
        return self.url or self.path

    def table(self, **options) -> dict:
        """The ``[store]`` table that writes here."""
        return {"url": self.url, **options} if self.url else {"path": str(self.path), **options}

    @property
    def args(self) -> tuple[str, str]:
        """The command line's ``--set`` for this store."""
        return ("--set", f"store.url={self.url}") if self.url else ("--set", f"store.path={self.path}")

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on the store behind flowtap's back (``?`` placeholders); its rows."""
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                cursor = conn.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall() if cursor.description else []
        import sqlite3

        conn = sqlite3.connect(self.path)
        try:
            with conn:
                return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def store_at(request, directory: Path) -> StoreAt:
    """A :class:`StoreAt` of the kind ``request.param`` names (the test server started if need be)."""
    if request.param == "sqlite":
        return StoreAt("sqlite", directory)
    return StoreAt("postgres", directory, request.getfixturevalue("pg_server"))
