"""A configured sink or source whose plugin is broken or missing stops the run with one line naming it.

Each broken plugin is installed as a distribution of its own (tests/fakedist.py), as a user's
`pip install flowtap-foo` would install it.
"""

from __future__ import annotations

import pytest

from clirun import flowtap as run_cli
from fakedist import make_distribution, replay_source

pytestmark = pytest.mark.timeout(60)


BROKEN = """
    import flowtap
    import requests_toolbelt_not_installed  # a dependency the user does not have
"""

TYPO = """
    import flowtap

    @flowtap.hookimpl
    def flowtap_config_options(declare):
        declare("sinks.typo", flowtap.Option("path", str, "typo.txt", "Where."))

    @flowtap.hookimpl
    def flowtap_register_sink(register):   # the hook is flowtap_register_sinks
        raise AssertionError("never called")
"""


@pytest.fixture
def sites(tmp_path):
    """``sites(*names)``: the sites to put on PYTHONPATH, each one distribution: "broken" (fails to
    import), "typo" (a misspelled hook), "replay" (a good source)."""
    made = {
        "broken": make_distribution(tmp_path / "broken", "flowtap-broken", {"broken": "flowtap_broken"},
                                    {"flowtap_broken": BROKEN}),
        "typo": make_distribution(tmp_path / "typo", "flowtap-typo", {"typo": "flowtap_typo"},
                                  {"flowtap_typo": TYPO}),
        "replay": replay_source(tmp_path / "replay"),
    }
    return lambda *names: [made[name] for name in names]


def test_a_sink_whose_plugin_fails_to_import_stops_the_run_with_one_line(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\n\n[sinks.broken]\npath = 'out.jsonl'\n")
    result = run_cli("run", cwd=tmp_path, pythonpath=sites("broken", "replay"))
    assert result.returncode == 2
    assert result.stderr == (
        "flowtap: error: flowtap.toml:3: [sinks.broken]: plugin 'broken' (flowtap-broken 1.0.0) "
        "failed to load: ModuleNotFoundError: No module named 'requests_toolbelt_not_installed' "
        "(-v shows the traceback)\n")


def test_with_v_the_traceback_comes_first_and_the_message_says_so(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\n\n[sinks.broken]\npath = 'out.jsonl'\n")
    result = run_cli("run", "-v", cwd=tmp_path, pythonpath=sites("broken", "replay"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert 'flowtap_broken.py", line 3, in <module>' in result.stderr
    assert "ModuleNotFoundError: No module named 'requests_toolbelt_not_installed'" in lines
    assert lines[-1].endswith("failed to load: ModuleNotFoundError: No module named "
                              "'requests_toolbelt_not_installed' (the traceback is above)")
    assert "WARNING" not in result.stderr  # the error says it once


def test_a_misspelled_hook_stops_the_run_and_names_the_hook_it_meant(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\n[sinks.typo]\n")
    result = run_cli("run", cwd=tmp_path, pythonpath=sites("typo", "replay"))
    assert result.returncode == 2
    assert result.stderr == (
        "flowtap: error: flowtap.toml:2: [sinks.typo]: plugin 'typo' (flowtap-typo 1.0.0) registers no sink "
        "'typo': flowtap_register_sink is not a flowtap hook (did you mean flowtap_register_sinks?)\n")
    result = run_cli("config", "check", cwd=tmp_path, pythonpath=sites("typo", "replay"))
    assert result.returncode == 2 and "did you mean flowtap_register_sinks?" in result.stderr


def test_a_table_no_installed_plugin_provides_is_named_with_the_likely_one(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\n[sinks.hra]\npath = 'x.har'\n")
    result = run_cli("run", cwd=tmp_path, pythonpath=sites("broken", "replay"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flowtap: WARNING: plugin 'broken' (from flowtap-broken) failed to load: "
        "ModuleNotFoundError: No module named 'requests_toolbelt_not_installed'",
        "flowtap: error: flowtap.toml:2: [sinks.hra]: no installed plugin provides the sink 'hra'; "
        "did you mean [sinks.har]? (installed sinks: collection, cookiejar, har, openapi, store; "
        "failed to load: 'broken'; `flowtap plugins` lists plugins)",
    ]


def test_a_broken_plugin_nobody_configured_is_a_warning_and_the_run_goes_on(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sources.replay]\ncount = 2\n[session]\nduration = '0.5s'\n")
    result = run_cli("run", "--plain", cwd=tmp_path, pythonpath=sites("broken", "typo", "replay"))
    assert result.returncode == 0, result.stderr
    assert "2 recorded" in result.stdout
    assert result.stderr.splitlines() == [
        "flowtap: WARNING: plugin 'broken' (from flowtap-broken) failed to load: "
        "ModuleNotFoundError: No module named 'requests_toolbelt_not_installed'",
        "flowtap: WARNING: plugin 'typo': flowtap_register_sink is not a flowtap hook "
        "(did you mean flowtap_register_sinks?); flowtap never calls it",
    ]


def test_a_disabled_plugins_table_does_not_stop_the_run(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text(
        "[sources.replay]\ncount = 1\n[session]\nduration = '0.3s'\n[sinks.broken]\npath = 'x'\n")
    result = run_cli("run", "--plain", "-p", "no:broken", cwd=tmp_path, pythonpath=sites("broken", "replay"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_plugins_lists_the_broken_ones_and_why(tmp_path, sites):
    (tmp_path / "flowtap.toml").write_text("[sinks.broken]\n[sinks.typo]\n")
    result = run_cli("plugins", cwd=tmp_path, pythonpath=sites("broken", "typo"))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "failed: ModuleNotFoundError: No module named 'requests_toolbelt_not_installed'" in rows["broken"]
    assert ("enabled; flowtap_register_sink is not a flowtap hook (did you mean flowtap_register_sinks?)"
            in rows["typo"])


def test_code_that_runs_a_capture_gets_the_same_line_as_the_command_line(tmp_path, sites, monkeypatch):
    import flowtap

    for site in sites("broken", "typo"):
        monkeypatch.syspath_prepend(str(site))
    for table, expected in (
            ("broken", "[sinks.broken]: plugin 'broken' (flowtap-broken 1.0.0) failed to load: "
                       "ModuleNotFoundError: No module named 'requests_toolbelt_not_installed'"),
            ("typo", "[sinks.typo]: plugin 'typo' (flowtap-typo 1.0.0) registers no sink 'typo': "
                     "flowtap_register_sink is not a flowtap hook (did you mean flowtap_register_sinks?)"),
            ("hra", "[sinks.hra]: no installed plugin provides the sink 'hra'; did you mean [sinks.har]?")):
        (tmp_path / "flowtap.toml").write_text(f"[store]\nenabled = false\n[sinks.{table}]\n")
        capture = flowtap.Capture(flowtap.load_config(tmp_path / "flowtap.toml"), load_entrypoints=True)
        with pytest.raises(flowtap.ConfigError) as refused:
            capture.start()
        assert str(refused.value).startswith(f"{tmp_path / 'flowtap.toml'}:3: {expected}")
        assert capture.session is None  # nothing started
