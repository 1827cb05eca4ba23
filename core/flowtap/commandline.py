"""What every ``flowtap`` command shares: the global options, the config and capture they name, errors.

Core commands and plugin commands alike import from here (never from
:mod:`flowtap.cli`, which only wires them together). Light on purpose:
it is imported before arguments are parsed, for ``--help`` too.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from flowtap.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from flowtap.capture import Capture


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit code 2."""


@attrs.frozen
class Command:
    """A subcommand as ``flowtap_register_commands`` registered it."""

    name: str
    help: str
    setup: Callable[[argparse.ArgumentParser], None]  #: adds the command's arguments to its parser
    run: Callable[[argparse.Namespace], int]  #: performs it; returns the exit code
    plugin: str  #: the plugin that registered it ("core" for the core's own)


def add_global_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Add the options every command takes, before or after the command's name.

    :param suppress: no defaults (for the copies after the command's name, so that
        they do not overwrite what was given before it).
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("-c", "--config", metavar="PATH", default=default(None),
                        help="config file (default: ./flowtap.toml, else the user config file; "
                             "`flowtap config check` shows which)")
    parser.add_argument("--set", metavar="TABLE.KEY=VALUE", action="append", default=default([]),
                        dest="overrides",
                        help="override a config key, e.g. sinks.har.path=out.har (repeatable)")
    parser.add_argument("-p", metavar="no:NAME", action="append", default=default([]), dest="plugin_flags",
                        help="disable the plugin NAME (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more log output (-vv: debug)")


def describe(parser: argparse.ArgumentParser, description: str, *examples: str) -> None:
    """Give a command's ``--help`` its description and examples (one command line each;
    ``# text`` after two spaces explains it)."""
    parser.description = description
    if examples:
        parser.epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)


#: Global options that take a value (to find the command's name without parsing).
VALUED_OPTIONS = frozenset({"-c", "--config", "--set", "-p"})


def disabled_plugins(args: argparse.Namespace) -> set[str]:
    """The plugins ``-p no:NAME`` disables.

    :raises UsageError: a ``-p`` flag of another form.
    """
    names = set()
    for flag in args.plugin_flags:
        if not flag.startswith("no:") or not flag[3:]:
            raise UsageError(f"-p {flag}: expected -p no:NAME")
        names.add(flag[3:])
    return names


def config_from_args(args: argparse.Namespace, path: str | None = None) -> Config:
    """The config ``-c`` names (or ``path``), with the ``--set`` overrides applied (not validated).

    :raises flowtap.ConfigError: it cannot be read or parsed.
    """
    return load_config(path or args.config, args.overrides)


def capture_from_args(args: argparse.Namespace, config: Config | None = None, check: bool = True) -> Capture:
    """A :class:`flowtap.Capture` of ``config`` (default: the one the arguments name), ``-p no:`` applied.

    :param check: refuse a config that has a ``[sinks.NAME]`` or ``[sources.NAME]`` table whose
        plugin is missing, failed to load or misspelled its hooks (:func:`check_plugins`); the
        warnings about such a plugin are then left out, the error says it all.
    :raises flowtap.ConfigError: that.
    """
    from flowtap.capture import Capture

    config = config if config is not None else config_from_args(args)
    with _held_plugin_warnings() as held:
        capture = Capture(config, disable=disabled_plugins(args))
    blamed = None
    try:
        if check:
            check_plugins(capture, verbose=getattr(args, "verbose", 0) > 0)
    except _PluginProblem as problem:
        blamed = problem.plugin
        raise ConfigError(str(problem)) from None
    finally:
        for record in held:
            if getattr(record, "plugin", None) != blamed:
                logging.getLogger(record.name).handle(record)
    return capture


class _PluginProblem(Exception):
    def __init__(self, message: str, plugin: str | None) -> None:
        super().__init__(message)
        self.plugin = plugin


@contextlib.contextmanager
def _held_plugin_warnings() -> Iterator[list[logging.LogRecord]]:
    """Hold back what the plugin host logs about plugins while the block runs; yields the records."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger = logging.getLogger("flowtap.plugins")
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def check_plugins(capture: Capture, verbose: bool = False) -> None:
    """Refuse a configured ``[sinks.NAME]`` or ``[sources.NAME]`` table that no plugin serves.

    The table's plugin (the one named NAME, as entry points name plugins) failed to import, has
    a misspelled hook, registers no such sink or source, or is not installed: one line naming
    the plugin and the reason. A disabled plugin's table is left alone, as is ``enabled = false``.

    :param verbose: print the traceback of a plugin that failed to import (to stderr) first.
    :raises _PluginProblem: naming the plugin (a :class:`flowtap.ConfigError` for the command line).
    """
    config = capture.config
    for kind, factories in (("sources", capture.source_factories), ("sinks", capture.sink_factories)):
        tables = config.raw.get(kind)
        if not isinstance(tables, dict):
            continue
        served = {entry.table for entry in factories.values()}
        for name, table in tables.items():
            dotted = f"{kind}.{name}"
            if not isinstance(table, dict) or dotted in served or table.get("enabled", True) is False:
                continue
            problem = _why_unserved(capture, kind, name, verbose)
            if problem is not None:
                message, plugin = problem
                raise _PluginProblem(f"{config.where(dotted)}: {message}", plugin)


def _why_unserved(capture: Capture, kind: str, name: str, verbose: bool) -> tuple[str, str | None] | None:
    from flowtap.plugins import misspelled

    what = kind[:-1]  # "sink", "source"
    factories = capture.source_factories if kind == "sources" else capture.sink_factories
    info = capture.host.infos.get(name)
    if info is not None and info.status == "disabled":
        return None
    if info is None:
        installed = sorted(factories)
        close = difflib.get_close_matches(name, installed, n=1)
        hint = f"; did you mean [{kind}.{close[0]}]?" if close else ""
        failed = [i.name for i in capture.host.infos.values() if i.status == "failed"]
        also = f"; failed to load: {', '.join(map(repr, failed))}" if failed else ""
        return (f"no installed plugin provides the {what} {name!r}{hint} (installed {kind}: "
                f"{', '.join(installed) or 'none'}{also}; `flowtap plugins` lists plugins)", None)
    who = f"plugin {name!r}" + (f" ({info.distribution} {info.version})" if info.distribution else "")
    if info.status == "failed":
        if verbose and info.traceback:
            sys.stderr.write(info.traceback)
        more = "the traceback is above" if verbose else "-v shows the traceback"
        return f"{who} failed to load: {info.error} ({more})", name
    if info.unknown_hooks:
        return f"{who} registers no {what} {name!r}: {misspelled(info.unknown_hooks)}", name
    return (f"{who} registers no {what} named {name!r} (it has no flowtap_register_{kind} hook for it; "
            f"{kind}: {', '.join(sorted(factories)) or 'none'})"), name
