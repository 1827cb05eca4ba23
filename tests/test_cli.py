"""The command line: version, help without mitmproxy, run end to end, clean exits."""

import os
import re
import signal
import subprocess
import sys
import time

import flowtap

from clirun import flowtap as run_cli
from fakedist import make_distribution, replay_source


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


CORE_COMMANDS = ["init", "run", "plugins", "config", "sessions", "search", "show", "export", "store", "ctl"]


def test_help_lists_the_core_commands_and_the_plugins_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^    (\w+)\s", result.stdout, re.M)
    assert listed[:len(CORE_COMMANDS)] == CORE_COMMANDS
    assert {"ca", "har"} <= set(listed[len(CORE_COMMANDS):])


def test_a_core_command_loads_no_plugin():
    """`flowtap sessions` and the other core commands start without importing a plugin or mitmproxy."""
    code = ("import sys\nfrom flowtap.cli import main\n"
            "try:\n    main(['-c', 'none.toml', 'sessions', '--help'])\nexcept SystemExit:\n    pass\n"
            "loaded = [m for m in sys.modules if m.startswith(('mitmproxy', 'flowtap_'))]\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "usage: flowtap sessions" in result.stdout and "rename" in result.stdout


def test_a_plugin_cannot_take_a_core_command(tmp_path):
    site = make_distribution(tmp_path / "site", "flowtap-greedy", {"greedy": "greedy"}, {"greedy": """
        import flowtap

        @flowtap.hookimpl
        def flowtap_register_commands(register):
            register("sessions", "mine now", lambda parser: None, lambda args: 7)
            register("greet", "says hello", lambda parser: None, lambda args: print("hello") or 0)
    """})
    result = run_cli("greet", pythonpath=[site])
    assert result.returncode == 0 and result.stdout == "hello\n"
    assert result.stderr.strip() == (
        "flowtap: WARNING: plugin 'greedy' registers the command 'sessions', "
        "which plugin 'core' has: ignored")
    result = run_cli("sessions", "--help", pythonpath=[site])  # the core's, without loading plugins
    assert result.returncode == 0 and "usage: flowtap sessions" in result.stdout and not result.stderr


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
    summary = lines[lines.index(next(line for line in lines if "session 'smoke' ended" in line)):]
    assert "5 recorded" in summary[0]
    assert summary[1].split() == ["SINK", "STATE", "WRITTEN", "ERRORS", "MISSED"]
    assert summary[2].split() == ["store", "ok", "5", "0", "0"] and len(summary) == 3


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
    assert "[replay] replaying 3 flows" in result.stdout and "3 recorded" in result.stdout.splitlines()[-3]


# -- mistakes on the command line, and the help ------------------------------------------------------


def test_a_mistyped_command_gets_did_you_mean():
    result = run_cli("confg", "check")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "flowtap: error: unknown command 'confg'; did you mean config? (choose from init, run, plugins, ")
    result = run_cli("sessions", "shw", "last")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "flowtap sessions: error: unknown command 'shw'; did you mean show? "
        "(choose from show, rename, delete)")


def test_a_mistyped_option_or_choice_gets_did_you_mean():
    result = run_cli("run", "--durration", "30m")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("usage: flowtap run ")
    assert result.stderr.splitlines()[-1] == (
        "flowtap run: error: unrecognized arguments: --durration 30m; did you mean --duration?")
    result = run_cli("export", "last", "--format", "crul")
    assert result.stderr.splitlines()[-1] == (
        "flowtap export: error: unknown --format value 'crul'; did you mean curl? (choose from curl)")
    result = run_cli("search", "--sesion=last", "~d x")
    assert result.stderr.splitlines()[-1] == (
        "flowtap search: error: unrecognized arguments: --sesion=last; did you mean --session?")


def _parsers(parser, path=("flowtap",)):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _parsers(sub, (*path, name))


def test_every_command_and_action_has_a_description_and_examples():
    from flowtap.cli import build_parser, commands

    found = list(_parsers(build_parser(commands(["ca"]))))  # a plugin's command: every plugin loads
    assert {"init", "run", "ca", "har", "interceptor", "completion"} <= {path[1] for path, _ in found}
    for path, parser in found:
        text = parser.format_help()
        name = " ".join(path)
        assert parser.description and len(parser.description) > 20, name
        assert "\nexamples:\n" in text, name
        examples = text.split("\nexamples:\n", 1)[1].splitlines()
        assert examples and all(line.startswith(f"  {name}") or "flowtap" in line for line in examples), name
        assert "-p no:NAME  -p no:NAME" not in " ".join(text.split()), name


def test_help_of_a_command_shows_its_description_and_examples():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    assert "\nStart the configured sources and a debug session" in result.stdout
    assert "\nexamples:\n  flowtap run\n  flowtap run --duration 30m --name checkout\n" in result.stdout
    assert "  -p no:NAME            disable the plugin NAME (repeatable)\n" in result.stdout
