"""The first ten minutes in a fresh directory: init, config check, run, Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flowtap.config
from flowtap.corecommands import example_config

from clirun import flowtap as run_cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "core" / "flowtap" / "config.example.toml"


def user_config() -> Path:
    return flowtap.config.default_config_path()  # under the tests' XDG_CONFIG_HOME (conftest)


def test_the_example_config_is_shipped_in_the_package_once():
    assert example_config() == SHIPPED.read_text()
    root = ROOT / "config.example.toml"  # what the README runs from a clone: the same file
    assert root.is_symlink() and root.resolve() == SHIPPED.resolve()


def test_config_check_in_an_empty_directory_says_where_it_looked_and_what_fixes_it(tmp_path):
    result = run_cli("config", "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "no config file: OK (sources: none; sinks: store)",
        f"config file: none (looked for, in order: ./flowtap.toml, {user_config()}); using the defaults",
        "nothing to capture from: `flowtap init` writes ./flowtap.toml with a proxy on 127.0.0.1:5555 "
        "(or run: flowtap run --set sources.proxy.enabled=true)",
    ]


def test_run_without_a_config_says_the_command_that_fixes_it(tmp_path):
    result = run_cli("run", "--set", "session.duration=30m", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"flowtap: error: no config file (looked for ./flowtap.toml, {user_config()}), "
        "so no source to start: `flowtap init` writes ./flowtap.toml with a proxy on 127.0.0.1:5555 "
        "(or run: flowtap run --set sources.proxy.enabled=true)\n")


@pytest.mark.parametrize("tables", ["[sinks.har]\npath = 'x.har'\n", "[web]\nport = 0\n"],
                         ids=["a sink only", "the web UI only (it serves, it does not capture)"])
def test_run_with_a_config_without_a_source_says_what_to_add(tmp_path, tables):
    (tmp_path / "flowtap.toml").write_text(tables)
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "flowtap: error: flowtap.toml: no source to start: add a source table to flowtap.toml "
        "(available: [sources.interceptor], [sources.proxy]), "
        "or run: flowtap run --set sources.proxy.enabled=true\n")


def test_init_writes_the_commented_example_and_never_overwrites(tmp_path):
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wrote flowtap.toml: a proxy on 127.0.0.1:5555; HAR, Postman collection and cookie jar in the "
        "working directory; every option commented",
        "next: flowtap run   (and `flowtap ca` shows how to make clients trust its CA for HTTPS)",
    ]
    written = tmp_path / "flowtap.toml"
    assert written.read_text() == SHIPPED.read_text()
    assert written.read_text().count("\n#") > 50  # commented

    written.write_text("[sources.proxy]\n# mine\n")
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("flowtap: error: flowtap.toml: already exists; not overwritten "
                             "(remove it first, or give another PATH)\n")
    assert written.read_text() == "[sources.proxy]\n# mine\n"

    result = run_cli("init", "other.toml", cwd=tmp_path)
    assert result.returncode == 0 and "next: flowtap run -c other.toml " in result.stdout


def test_init_user_writes_the_user_config_file_which_config_check_then_names(tmp_path):
    target = user_config()
    assert not target.exists()
    try:
        result = run_cli("init", "--user", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"wrote {target}: ")
        result = run_cli("config", "check", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"{target}: OK (sources: proxy; sinks: store, collection, cookiejar, har)",
            f"config file: {target} (looked for, in order: ./flowtap.toml, {target})",
        ]
    finally:
        target.unlink(missing_ok=True)


def test_config_check_names_the_file_given_and_the_overrides(tmp_path):
    (tmp_path / "c.toml").write_text("[sources.proxy]\n")
    result = run_cli("-c", "c.toml", "config", "check", "--set", "session.duration=30m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "c.toml: OK (sources: proxy; sinks: store)",
        f"config file: {tmp_path / 'c.toml'} (given with --config)",
        "overridden: --set session.duration=30m",
    ]


@pytest.mark.timeout(60)
def test_fresh_directory_init_check_run_and_ctrl_c(tmp_path):
    """What a newcomer does: init, config check, run, Ctrl-C; the run writes its files and exits 0."""
    assert run_cli("init", cwd=tmp_path).returncode == 0
    assert run_cli("config", "check", cwd=tmp_path).stdout.startswith("flowtap.toml: OK (sources: proxy;")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowtap", "run", "--set", "sources.proxy.listen=127.0.0.1:0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if "proxy listening on" in line:
                break
        else:
            pytest.fail("the proxy did not say it listens")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert list(tmp_path.glob("flowtap-*.har")) and list(tmp_path.glob("*.postman_collection.json"))
