"""Shared test set-up: no test touches the user's real flowtap dirs or inherits FLOWTAP_* settings."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

#: The tests' home for flowtap's data, config and cache dirs (a CA is made in it): removed when
#: the run ends, so that no run leaves a `flowtap-tests-*` directory in the system temp dir.
_home = tempfile.mkdtemp(prefix="flowtap-tests-")
for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
    os.environ[var] = os.path.join(_home, var.lower())
os.environ["FLOWTAP_DATA_DIR"] = os.path.join(_home, "data")
for var in ("FLOWTAP_LOAD_PLUGINS", "FLOWTAP_DISABLE_PLUGINS", "FLOWTAP_STRICT_PLUGINS"):
    os.environ.pop(var, None)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Each test runs in its own empty working directory (no stray ./flowtap.toml)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data_dir(monkeypatch):
    """A short data dir of the test's own (a control socket's path is limited to 107 bytes), for this
    process and the runs it starts."""
    path = tempfile.mkdtemp(prefix="ft-")
    monkeypatch.setenv("FLOWTAP_DATA_DIR", path)  # where runs.socket_path looks
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def pytest_unconfigure(config):
    shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole test session (tests/postgres.py); skips where none can start."""
    from postgres import server

    with server() as running:
        yield running


@pytest.fixture
def pg_url(pg_server):
    """The URL of a new, empty database on :func:`pg_server`, for one test."""
    return pg_server.database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request, tmp_path):
    """A store on each backend in turn (tests/postgres.py's ``StoreAt``): one test, both backends."""
    from postgres import store_at

    return store_at(request, tmp_path)
