"""What every ``flowtap`` command shares: the global options, the config and capture they name, errors.

Core commands and plugin commands alike import from here (never from
:mod:`flowtap.cli`, which only wires them together). Light on purpose:
it is imported before arguments are parsed, for ``--help`` too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from flowtap.config import Config, load_config

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
                        help="config file (default: ./flowtap.toml, else the user config file)")
    parser.add_argument("--set", metavar="TABLE.KEY=VALUE", action="append", default=default([]),
                        dest="overrides",
                        help="override a config key, e.g. --set sinks.har.path=out.har (repeatable)")
    parser.add_argument("-p", metavar="no:NAME", action="append", default=default([]), dest="plugin_flags",
                        help="-p no:NAME disables plugin NAME (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more log output (-vv: debug)")


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


def capture_from_args(args: argparse.Namespace, config: Config | None = None) -> Capture:
    """A :class:`flowtap.Capture` of ``config`` (default: the one the arguments name), ``-p no:`` applied."""
    from flowtap.capture import Capture

    return Capture(config if config is not None else config_from_args(args), disable=disabled_plugins(args))
