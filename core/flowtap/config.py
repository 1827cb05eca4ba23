"""TOML configuration: finding the file, declared options, validation, overrides."""

from __future__ import annotations

import builtins
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Keys every plugin table accepts without declaring them.
ENABLED_KEY = "enabled"


class ConfigError(Exception):
    """The configuration is wrong; the message says where and what was expected."""


@attrs.define(frozen=True)
class Option:
    """One key of a config table.

    :param name: the key.
    :param type: ``str``, ``int``, ``float``, ``bool``, ``list`` (of strings), ``dict``,
        or a tuple of these when several are accepted (``(int, str)`` for ``"10MB"`` or 1024).
    :param default: used when the file does not set the key.
    :param help: one paragraph for ``docs/config.md`` and error messages.
    :param choices: the allowed values, if only a few are.
    :param convert: turns the raw value into what the plugin uses (e.g. ``"30m"``
        into seconds); raises ValueError with what was expected.
    """

    name: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def types(self) -> tuple[builtins.type, ...]:  # ``type`` here is the field above
        return self.type if isinstance(self.type, tuple) else (self.type,)

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                 list: "a list of strings", dict: "a table"}
        return " or ".join(names[t] for t in self.types)

    def check(self, value: Any) -> Any:
        """Return the value to use, or raise ValueError saying what was expected."""
        types = self.types
        if isinstance(value, bool):
            ok = bool in types
        elif isinstance(value, int) and float in types and int not in types:
            value, ok = float(value), True
        else:
            ok = isinstance(value, types)
        if ok and isinstance(value, list):
            ok = all(isinstance(item, str) for item in value)
        if not ok:
            raise ValueError(f"expected {self.expected()}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"expected {self.expected()}, got {value!r}")
        return self.convert(value) if self.convert else value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g|kib|mib|gib)?\s*$", re.I)


def parse_duration(value: str | int | float) -> float | None:
    """``"30m"``, ``"90s"``, ``"1.5h"``, ``"250ms"`` or a number of seconds → seconds; ``""`` → None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if value > 0 else None
    if isinstance(value, str) and not value.strip():
        return None
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f'expected a duration such as "90s", "30m" or "2h", got {value!r}')
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_size(value: str | int) -> int:
    """``"10MB"``, ``"512k"`` or a number of bytes → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a size of 0 bytes or more, got {value!r}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f'expected a size such as 1048576, "512kb" or "10MB", got {value!r}')
    unit = (match.group(2) or "b").lower()
    factor = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
              "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}[unit]
    return int(float(match.group(1)) * factor)


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_address(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:5555"`` for IPv6; port 0: any free port) → ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'expected "HOST:PORT", e.g. "127.0.0.1:5555", got {value!r}')
    return (host.strip("[]") or "127.0.0.1", int(port))


def parse_methods(values: list[str]) -> list[str]:
    """HTTP method names → upper case; anything that is not a method token is refused."""
    for method in values:
        if not _TOKEN.match(method):
            raise ValueError(f"expected HTTP methods such as GET or POST, got {method!r}")
    return [method.upper() for method in values]


def parse_domains(values: list[str]) -> list[str]:
    """Domain names (or IP addresses) → lower case, without a leading dot."""
    import ipaddress

    domains = []
    for value in values:
        domain = value.strip().lstrip(".").lower()
        try:
            domains.append(str(ipaddress.ip_address(domain.strip("[]"))))
            continue
        except ValueError:
            pass
        if not domain or any(char in domain for char in "/:@ \t"):
            raise ValueError(
                f"expected domain names such as example.com (no scheme, port or path), got {value!r}")
        domains.append(domain)
    return domains


#: The config file's name, in the working directory and in the user config directory.
CONFIG_NAME = "flowtap.toml"


def default_config_path() -> Path:
    """The user-wide config file, used when there is no ``./flowtap.toml``."""
    import platformdirs

    return Path(platformdirs.user_config_dir("flowtap")) / CONFIG_NAME


def config_candidates() -> list[Path]:
    """Where flowtap looks for its config file without ``--config``, in order."""
    return [Path(CONFIG_NAME), default_config_path()]


def find_config(path: str | os.PathLike | None) -> Path | None:
    """``--config PATH``, else ``./flowtap.toml``, else the user config file, else None."""
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise ConfigError(f"{found}: no such config file")
        return found
    for candidate in config_candidates():
        if candidate.is_file():
            return candidate
    return None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors name the file, line and column."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def apply_override(data: dict[str, Any], assignment: str) -> str:
    """Apply one ``--set table.key=value``; the value is TOML, or a bare string.

    Returns the dotted key it set (``"sinks.har.path"``).
    """
    dotted, sep, raw = assignment.partition("=")
    parts = [p.strip() for p in dotted.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment}: expected TABLE.KEY=VALUE, e.g. --set sinks.har.path=out.har")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {part} is not a table")
    node[parts[-1]] = value
    return ".".join(parts)


def _resolve_env(value: Any, where: str) -> Any:
    if isinstance(value, dict) and set(value) == {"env"}:
        name = value["env"]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    return value


@attrs.define
class Config:
    """A validated configuration: one table of values per declared table name.

    Build it with :func:`load_config` (from a file) or :meth:`from_dict` (in code).
    """

    raw: dict[str, Any] = attrs.field(factory=dict)
    path: Path | None = None
    #: Keys set on the command line, not in the file: dotted key -> what set it
    #: (``"session.duration" -> "--set session.duration=30x"``); messages about them blame it.
    overrides: dict[str, str] = attrs.field(factory=dict)
    #: The files looked for when no ``--config`` was given, in order (empty when one was).
    searched: list[Path] = attrs.field(factory=list)
    _tables: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> Config:
        """A config from nested dicts shaped like the TOML file."""
        return cls(raw=_deep_copy(data), path=path)

    @property
    def origin(self) -> str:
        return str(self.path) if self.path else "<config>"

    def override(self, dotted: str, value: Any, given_as: str) -> None:
        """Set ``dotted`` (``"session.duration"``) as a command-line option did; errors blame ``given_as``."""
        *tables, key = dotted.split(".")
        node = self.raw
        for part in tables:
            node = node.setdefault(part, {})
        node[key] = value
        self.overrides[dotted] = given_as

    def where(self, table: str, key: str | None = None) -> str:
        """``file:line: [table] key`` for messages, with the line when the file shows it.

        A key (or a table) that came from the command line is blamed on the option that set it:
        ``--set session.duration=30x: [session] duration``.
        """
        return f"{self._place(table, key)}: [{table}]" + (f" {key}" if key else "")

    def _place(self, table: str, key: str | None) -> str:
        given = self._given(table, key)
        if given:
            return given
        line = _locate(self.path, table, key) if self.path else None
        return f"{self.origin}:{line}" if line else self.origin

    def _given(self, table: str, key: str | None) -> str | None:
        """The command-line option behind ``[table] key`` (or behind a table the file does not have)."""
        if key is not None:
            return self.overrides.get(f"{table}.{key}")
        if self.path is not None and _locate(self.path, table, None):
            return None
        inside = [given for dotted, given in self.overrides.items() if dotted.startswith(table + ".")]
        return inside[0] if inside else None

    def enabled(self, table: str, default: bool = False) -> bool:
        """Whether the plugin part behind ``[table]`` runs.

        True when the file has the table and does not set ``enabled = false``;
        ``default`` when the file has no such table.
        """
        node = self._raw_table(table)
        if node is None:
            return default
        return node.get(ENABLED_KEY, True) is not False

    def table(self, table: str) -> dict[str, Any]:
        """The validated values of ``[table]``, defaults filled in."""
        return self._tables[table]

    def _raw_table(self, table: str) -> dict[str, Any] | None:
        node: Any = self.raw
        for part in table.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, dict) else None

    def validate(self, declared: Mapping[str, Iterable[Option]], ignored: Iterable[str] = ()) -> None:
        """Check every table against its declared options; fill in defaults.

        :param declared: table name → options.
        :param ignored: tables of disabled or broken plugins, not checked.
        :raises ConfigError: on the first unknown table or key, wrong type or bad value.
        """
        ignored = set(ignored)
        self._check_unknown_tables(declared, ignored)
        for table, options in declared.items():
            self._tables[table] = self._validate_table(table, list(options))

    def _check_unknown_tables(self, declared: Mapping[str, Iterable[Option]], ignored: set[str]) -> None:
        known = set(declared) | ignored
        prefixes = {t.rsplit(".", 1)[0] for t in known if "." in t}

        def walk(node: dict[str, Any], prefix: str) -> None:
            for key, value in node.items():
                name = f"{prefix}{key}"
                if name in known:
                    continue
                if name in prefixes and isinstance(value, dict):
                    walk(value, name + ".")
                    continue
                if prefix:
                    choices = sorted(t for t in known if t.startswith(prefix))
                else:
                    choices = sorted({t.split(".")[0] for t in known})
                what = "table" if isinstance(value, dict) else "key"
                place = self._place(name, None)
                raise ConfigError(
                    f"{place}: unknown {what} [{name}]; expected one of: "
                    + ", ".join(f"[{c}]" for c in choices)
                )

        walk(self.raw, "")

    def _validate_table(self, table: str, options: list[Option]) -> dict[str, Any]:
        raw = self._raw_table(table) or {}
        by_name = {o.name: o for o in options}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            where = self.where(table, key)
            if key == ENABLED_KEY:
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: expected true or false, got {value!r}")
                continue
            option = by_name.get(key)
            if option is None:
                known = ", ".join(sorted(by_name)) or "none"
                raise ConfigError(f"{where}: unknown key; [{table}] accepts: {known}")
            try:
                values[key] = option.check(_resolve_env(value, where))
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        for option in options:
            if option.name not in values:
                values[option.name] = (
                    option.convert(option.default) if option.convert else option.default
                )
        return values


def _locate(path: Path, table: str, key: str | None) -> int | None:
    """The line of ``[table]`` (or of ``key`` within it) in the file, if it can be seen."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
    dotted = table.rsplit(".", 1)[-1] if key is None else key
    inside = False
    for number, line in enumerate(lines, 1):
        if header.match(line):
            if key is None:
                return number
            inside = True
        elif line.lstrip().startswith("["):
            inside = False
        elif (inside or key is None) and re.match(rf"^\s*\"?{re.escape(dotted)}\"?\s*=", line):
            return number
    return None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Find and parse the config file and apply ``--set`` overrides (not yet validated)."""
    found = find_config(path)
    data = read_toml(found) if found else {}
    given = {}
    for assignment in overrides:
        given[apply_override(data, assignment)] = f"--set {assignment}"
    searched = config_candidates() if path is None else []
    return Config(raw=data, path=found, overrides=given, searched=searched)
