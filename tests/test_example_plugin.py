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
    assert "2 passed" in result.stdout


def test_the_pytest_plugin_imports_flowtap_only_for_a_test_that_uses_it(tmp_path):
    """Every pytest run in an environment with flowtap loads its pytest11 entry point: it must cost
    nothing until a test asks for ``flowtap_capture``."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n\n"
        "def test_unrelated():\n"
        "    assert 'flowtap_pytest' in sys.modules  # the plugin is loaded...\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] == 'flowtap']  # ...lazily\n\n"
        "def test_using_the_fixture(flowtap_capture):\n"
        "    from flowtap.testing import make_flow\n"
        "    cap = flowtap_capture()\n"
        "    cap.feed(make_flow())\n"
        "    assert len(cap.recorded.flows) == 1\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_sink_object_made_in_code_joins_in_one_call():
    import flowtap
    from flowtap.testing import capture, make_flow

    class Mine(flowtap.Sink):
        def __init__(self):
            self.urls, self.cleared = [], 0

        def write(self, flow):
            self.urls.append(flow.request.url)

        @flowtap.hookimpl
        def flowtap_session_clear(self, session):
            self.cleared += 1

    before, after = Mine(), Mine()
    with capture() as cap:
        cap.capture.register(flowtap.sink_plugin("before", before))
        cap.feed(make_flow(url="https://api.example.com/1"))
        cap.session.clear()
        cap.capture.register(flowtap.sink_plugin("after", lambda options: after))  # a factory
        cap.feed(make_flow(url="https://api.example.com/2"))
        assert {h.name for h in cap.capture.health()} >= {"before", "after"}
    assert before.urls == ["https://api.example.com/1", "https://api.example.com/2"] and before.cleared == 1
    assert after.urls == ["https://api.example.com/2"]
