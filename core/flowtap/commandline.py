"""What every ``flowtap`` command shares: the global options, the config and capture they name, errors.

Core commands and plugin commands alike import from here (never from
:mod:`flowtap.cli`, which only wires them together). Light on purpose:
it is imported before arguments are parsed, for ``--help`` too.
"""

from __future__ import annotations

import argparse
import contextlib
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
    """Refuse a configured ``[sinks.NAME]`` or ``[sources.NAME]`` table that no plugin serves
    (:meth:`flowtap.Capture.unserved_table`), and say where the traceback is of a plugin that
    failed to import. A disabled plugin's table is left alone, as is ``enabled = false``.

    :param verbose: print that traceback (to stderr) first.
    :raises _PluginProblem: naming the plugin (a :class:`flowtap.ConfigError` for the command line).
    """
    problem = capture.unserved_table()
    if problem is None:
        return
    message, plugin = problem
    info = capture.host.infos.get(plugin) if plugin else None
    if info is not None and info.status == "failed":
        if verbose and info.traceback:
            sys.stderr.write(info.traceback)
        message += " (the traceback is above)" if verbose else " (-v shows the traceback)"
    raise _PluginProblem(message, plugin)
