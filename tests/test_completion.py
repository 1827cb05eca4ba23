"""Shell completion generated from the parser: the bash script, loaded in a real bash, completes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from clirun import flowtap as run_cli

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")

# Completes the words given (the last one being typed) with the function `complete -p` names.
COMPLETE = r'''
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
function=$(complete -p flowtap | sed -E 's/.* -F ([^ ]+) .*/\1/')
"$function" flowtap "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    result = run_cli("completion", "bash")
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("completion") / "flowtap.bash"
    path.write_text(result.stdout)
    return path


def complete(script, *words: str) -> list[str]:
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", COMPLETE, "bash", str(script), *words],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("words, expected", [
    (("flowtap", "con"), ["config"]),
    (("flowtap", "com"), ["completion"]),
    (("flowtap", "run", "--dur"), ["--duration"]),
    (("flowtap", "ca", "ex"), ["export"]),          # a plugin's command and its action
    (("flowtap", "sessions", "re"), ["rename"]),
    (("flowtap", "completion", ""), ["bash", "zsh", "fish"]),
    (("flowtap", "export", "last", "--format", ""), ["curl"]),
])  # fmt: skip
def test_bash_completes_commands_actions_options_and_choices(script, words, expected):
    assert complete(script, *words) == expected


def test_every_command_is_offered(script):
    offered = complete(script, "flowtap", "")
    for command in ("init", "run", "plugins", "config", "sessions", "search", "show", "export", "ctl", "ca",
                    "har", "interceptor", "completion"):
        assert command in offered


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef flowtap"), ("fish", "complete -c flowtap")])
def test_zsh_and_fish_scripts_are_generated(shell, marker):
    result = run_cli("completion", shell)
    assert result.returncode == 0 and marker in result.stdout and "--duration" in result.stdout
