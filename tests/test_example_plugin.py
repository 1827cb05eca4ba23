"""The plugin guide's worked example, installed as its own distribution, used like any plugin."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clirun import flowtap as run_cli
from fakedist import replay_source

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flowtap-jsonl"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install`` the example into a directory of its own (then put on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True, timeout=120)
    replay_source(target)
    return target


def test_discovered_through_its_entry_point(installed):
    result = run_cli("plugins", pythonpath=[installed])
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("jsonl ")]
    assert "1.0.0" in row and "flowtap-jsonl" in row and "enabled" in row and "sinks.jsonl" in row


def test_configured_from_toml_and_fed_flows(installed, tmp_path):
    (tmp_path / "flowtap.toml").write_text(
        "[session]\nduration = '1s'\n[sources.replay]\ncount = 4\n"
        "[sinks.jsonl]\npath = 'out/flows.jsonl'\nbodies = true\n")
    (tmp_path / "out").mkdir()
    result = run_cli("run", cwd=tmp_path, pythonpath=[installed])
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "flows.jsonl").read_text().splitlines()]
    assert [r["url"] for r in records] == [f"https://api.test/items/{i}" for i in range(4)]
    assert all(r["status"] == 200 and r["response_body"] for r in records)


def test_a_bad_key_in_its_table_is_reported(installed, tmp_path):
    (tmp_path / "flowtap.toml").write_text("[sinks.jsonl]\nbody = true\n")
    result = run_cli("config", "check", cwd=tmp_path, pythonpath=[installed])
    assert result.returncode == 2
    assert ("flowtap.toml:2: [sinks.jsonl] body: unknown key; [sinks.jsonl] accepts: bodies, path"
            in result.stderr)


def test_its_own_test_passes_with_the_testing_helper(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(EXAMPLE / "test_jsonl.py")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(installed)}, cwd=installed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
