"""The command line: version, help without mitmproxy, run end to end, clean exits."""

import os
import re
import signal
import subprocess
import sys
import time

import flowtap

from clirun import flowtap as run_cli
from fakedist import replay_source


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"flowtap {flowtap.__version__}"


def test_help_does_not_import_mitmproxy():
    code = ("import sys\nfrom flowtap.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert not [m for m in sys.modules if m.startswith('mitmproxy')], 'mitmproxy imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "usage: flowtap" in result.stdout and "run" in result.stdout and "plugins" in result.stdout


def test_run_without_a_source_says_so(tmp_path):
    (tmp_path / "flowtap.toml").write_text("[sinks.har]\npath = 'x.har'\n")
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 2
    assert "no source to start" in result.stderr and "[sources.proxy]" in result.stderr


def test_run_with_a_time_limit_captures_and_ends_cleanly(tmp_path):
    site = replay_source(tmp_path / "site")
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\ncount = 5\n[session]\nduration = '1s'\n")
    result = run_cli("run", "--name", "smoke", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "session 'smoke'" in lines[0]
    assert "[replay] replaying 5 flows" in result.stdout
    flow_lines = [line for line in lines if "GET" in line and "api.test/items/" in line]
    assert len(flow_lines) == 5
    assert "session 'smoke' ended" in lines[-1] and "5 recorded" in lines[-1]


def test_sigint_ends_the_run_and_keeps_what_was_captured(tmp_path):
    site = replay_source(tmp_path / "site")
    (tmp_path / "flowtap.toml").write_text(
        "[sources.replay]\ncount = 20\n[filters]\nexpression = '!~u items/1$'\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        seen = []
        while len(seen) < 19 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "api.test/items/" in line:
                seen.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    paths = sorted(int(re.search(r"api\.test/items/(\d+) ", line).group(1)) for line in seen)
    assert paths == [i for i in range(20) if i != 1]
    assert "19 recorded, 1 filtered out" in out



def test_quiet_run_prints_no_line_per_flow(tmp_path):
    site = replay_source(tmp_path / "site")
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\ncount = 3\n[session]\nduration = '1s'\n")
    result = run_cli("run", "--quiet", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 0, result.stderr
    assert "api.test/items/" not in result.stdout
    assert "[replay] replaying 3 flows" in result.stdout and "3 recorded" in result.stdout.splitlines()[-1]
