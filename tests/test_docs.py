"""The docs and the example config keep up with the code."""

import inspect
import re
from pathlib import Path

import pytest

from flowtap import hookspecs
from flowtap.capture import Capture

ROOT = Path(__file__).resolve().parent.parent
HOOKS = [(name, fn) for name, fn in vars(hookspecs).items() if name.startswith("flowtap_") and callable(fn)]


def declared_options():
    capture = Capture()  # the core and the bundled plugins
    return [(table, option.name) for table, options in capture.options.items() for option in options]


@pytest.mark.parametrize("name, fn", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_is_documented_with_its_signature(name, fn):
    signature = f"`{name}({', '.join(inspect.signature(fn).parameters)})`"
    assert signature in (ROOT / "docs" / "hooks.md").read_text(), f"{signature} is missing from docs/hooks.md"


def test_every_hook_has_a_docstring():
    for name, fn in HOOKS:
        assert fn.__doc__ and len(fn.__doc__.strip()) > 20, name


def test_every_option_is_in_the_example_config():
    sections: dict[str, str] = {}
    current = None
    for line in (ROOT / "config.example.toml").read_text().splitlines():
        header = re.match(r"^#?\s*\[([\w.]+)\]\s*$", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, "")
        elif current:
            sections[current] += line + "\n"
    for table, key in declared_options():
        assert table in sections, f"[{table}] is missing from config.example.toml"
        assert re.search(rf"^#?\s*{key}\s*=", sections[table], re.M), f"[{table}] {key} is missing"


def test_every_option_is_in_the_config_reference():
    text = (ROOT / "docs" / "config.md").read_text()
    for table, key in declared_options():
        section = text.split(f"## `[{table}]`", 1)
        assert len(section) == 2, f"[{table}] has no section in docs/config.md"
        assert f"| `{key}` |" in section[1].split("\n## ", 1)[0], (
            f"[{table}] {key} is missing from docs/config.md")
