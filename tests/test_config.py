"""Config: discovery, declared options, validation errors a person can act on, overrides."""

import textwrap
from pathlib import Path

import pytest

import flowtap
from flowtap.config import load_config, parse_duration, parse_size

from clirun import flowtap as run_cli

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def validate(path, *overrides):
    return flowtap.Capture(load_config(path, overrides)).validate()


def test_example_config_is_valid_and_uses_every_section():
    config = validate(EXAMPLE)
    assert config.enabled("sources.proxy")
    for table in ("sinks.har", "sinks.collection", "sinks.cookiejar"):
        assert config.enabled(table), table


def test_typo_in_a_key_names_file_line_table_and_key(tmp_path):
    path = write(tmp_path / "flowtap.toml", """\
        [sources.proxy]
        listen = "127.0.0.1:5555"

        [sinks.har]
        pth = "out.har"
        """)
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert f"{path}:5: [sinks.har] pth: unknown key" in message
    assert "path" in message  # what it accepts


def test_unknown_table_is_named(tmp_path):
    path = write(tmp_path / "c.toml", "[sesion]\nname = 'x'\n")
    with pytest.raises(flowtap.ConfigError, match=r"c.toml:1: unknown table \[sesion\].*\[session\]"):
        validate(path)


def test_a_sink_table_no_plugin_serves_is_named_with_the_likely_one(tmp_path):
    path = write(tmp_path / "c.toml", "[sinks.hra]\npath = 'x'\n")
    with pytest.raises(flowtap.ConfigError, match=r"c.toml:1: \[sinks.hra\]: no installed plugin provides "
                                                  r"the sink 'hra'; did you mean \[sinks.har\]\?"):
        validate(path)


@pytest.mark.parametrize("line, expected", [
    ("https = 'yes'", "[sources.proxy] https: expected true or false, got 'yes'"),
    ("listen = 5555", "[sources.proxy] listen: expected a string, got 5555"),
    ("listen = 'localhost'", "expected \"HOST:PORT\""),
    ("mode = 'sideways'", "expected \"regular\""),
    ("max_body_size = 'huge'", "expected a size"),
    ("ignore_hosts = 'a.com'", "expected a list of strings"),
])
def test_wrong_types_and_values(tmp_path, line, expected):
    path = write(tmp_path / "c.toml", f"[sources.proxy]\n{line}\n")
    with pytest.raises(flowtap.ConfigError) as info:
        validate(path)
    assert expected in str(info.value) and f"{path}:2:" in str(info.value)


def test_choices_are_listed(tmp_path):
    path = write(tmp_path / "c.toml", "[sinks.har]\ncontent = 'some'\n")
    with pytest.raises(flowtap.ConfigError, match="expected one of 'full', 'headers', 'none'"):
        validate(path)


def test_toml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path / "c.toml", "[sinks.har]\npath = = 'x'\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert f"{path}: invalid TOML" in result.stderr and "line 2, column" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_filter_expression_fails_at_startup_with_its_position(tmp_path):
    path = write(tmp_path / "c.toml", "[filters]\nexpression = '~d ('\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2 and "column 4" in result.stderr and "[filters]" in result.stderr


def test_set_overrides_any_key(tmp_path):
    path = write(tmp_path / "c.toml", "[sinks.har]\npath = 'a.har'\n")
    config = validate(path, "sinks.har.path=b.har", "sinks.har.max_body_size=2048", "session.duration=90s")
    assert config.table("sinks.har")["path"] == "b.har"
    assert config.table("sinks.har")["max_body_size"] == 2048
    assert config.table("session")["duration"] == 90


def test_set_rejects_a_malformed_assignment():
    with pytest.raises(flowtap.ConfigError, match="expected TABLE.KEY=VALUE"):
        load_config(None, ["sinks.har"])


def test_env_indirection_reads_secrets(tmp_path, monkeypatch):
    path = write(tmp_path / "c.toml", "[sinks.har]\npath = { env = 'HAR_PATH' }\n")
    monkeypatch.setenv("HAR_PATH", "/tmp/secret.har")
    assert validate(path).table("sinks.har")["path"] == "/tmp/secret.har"
    monkeypatch.delenv("HAR_PATH")
    with pytest.raises(flowtap.ConfigError, match="environment variable HAR_PATH is not set"):
        validate(path)


def test_config_discovery_order(tmp_path, monkeypatch):
    user = flowtap.config.default_config_path()
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("[session]\nname = 'from-user-dir'\n")
    try:
        assert validate(None).table("session")["name"] == "from-user-dir"
        write(tmp_path / "flowtap.toml", "[session]\nname = 'from-cwd'\n")
        assert validate(None).table("session")["name"] == "from-cwd"
        explicit = write(tmp_path / "other.toml", "[session]\nname = 'explicit'\n")
        assert validate(explicit).table("session")["name"] == "explicit"
    finally:
        user.unlink()


def test_missing_explicit_config_is_an_error(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert result.returncode == 2 and "nope.toml: no such config file" in result.stderr


def test_tables_of_disabled_plugins_are_not_checked(tmp_path):
    path = write(tmp_path / "c.toml", "[plugins]\ndisable = ['har']\n[sinks.har]\nwhatever = 1\n")
    config = validate(path)
    assert not flowtap.Capture(config).sink_factories.get("har")


def test_durations_and_sizes():
    assert parse_duration("30m") == 1800 and parse_duration("1.5h") == 5400 and parse_duration("") is None
    assert parse_duration("250ms") == 0.25 and parse_duration(45) == 45
    assert parse_size("10MB") == 10 * 1024 * 1024 and parse_size("512k") == 512 * 1024 and parse_size(7) == 7
    for bad in ("soon", "-3m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")


# -- a value given on the command line is blamed on the command line -------------------------------


def test_a_bad_set_value_is_blamed_on_set_not_on_a_line_of_the_file(tmp_path):
    (tmp_path / "flowtap.toml").symlink_to(EXAMPLE)  # has `duration = ""` in [session]
    result = run_cli("config", "check", "--set", "session.duration=30x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("flowtap: error: --set session.duration=30x: [session] duration: "
                             "expected a duration such as \"90s\", \"30m\" or \"2h\", got '30x'\n")


def test_run_options_are_blamed_by_their_own_name(tmp_path):
    (tmp_path / "flowtap.toml").symlink_to(EXAMPLE)
    result = run_cli("run", "--duration", "30x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("flowtap: error: --duration 30x: [session] duration: "
                             "expected a duration such as \"90s\", \"30m\" or \"2h\", got '30x'\n")


def test_set_of_an_unknown_key_or_table_and_a_bad_filter_blame_set(tmp_path):
    (tmp_path / "flowtap.toml").symlink_to(EXAMPLE)
    result = run_cli("config", "check", "--set", "sinks.har.pth=x.har", cwd=tmp_path)
    assert result.stderr.startswith(
        "flowtap: error: --set sinks.har.pth=x.har: [sinks.har] pth: unknown key; ")
    result = run_cli("config", "check", "--set", "session.nme=x", cwd=tmp_path)
    assert result.stderr.startswith("flowtap: error: --set session.nme=x: [session] nme: unknown key; ")
    result = run_cli("config", "check", "--set", "filters.expression=~d foo & (~m GET", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flowtap: error: --set filters.expression=~d foo & (~m GET: [filters] expression: "
        "invalid filter expression '~d foo & (~m GET': error at column 10: '(' without its ')'",
        "  ~d foo & (~m GET",
        "           ^",
    ]
    # A value from the file is still blamed on its line.
    path = write(tmp_path / "c.toml", "[session]\nname = 'x'\nduration = '30x'\n")
    result = run_cli("config", "check", str(path))
    assert result.stderr.startswith(f"flowtap: error: {path}:3: [session] duration: expected a duration")
