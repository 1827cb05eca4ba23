"""The ``flowtap`` command line: one entry point, subcommands, plain errors.

Every command, the core's own included, comes from a ``flowtap_register_commands``
implementation: the core's (:mod:`flowtap.coreplugin`) is registered first, and
the plugins' entry points are loaded only when the command is not one of the
core's (or for ``--help``), so that ``flowtap sessions`` never imports a plugin.

Exit codes: 0 success, 1 a failure while running, 2 bad input (config,
arguments, a plugin that cannot start), 130 interrupted (``flowtap run``'s
codes are in docs/guide.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import flowtap
from flowtap.capture import StartupError
from flowtap.commandline import VALUED_OPTIONS, Command, UsageError, add_global_options, disabled_plugins
from flowtap.config import ConfigError, load_config
from flowtap.coreplugin import NAME as CORE, CorePlugin
from flowtap.plugins import PluginHost, PluginLoadError
from flowtap.terminal import terminal_safe

log = logging.getLogger("flowtap")


def commands(argv: list[str]) -> dict[str, Command]:
    """The subcommands, by name: the core's, then, unless ``argv`` runs one of those, the plugins'.

    Plugins are found without validating any config (a broken config must not hide
    the command that fixes it); ``-p no:NAME`` and ``[plugins] disable`` are honoured.
    """
    host = PluginHost()
    found: dict[str, Command] = {}

    def register(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[argparse.Namespace], int]) -> None:
        plugin = host.calling or "?"
        if name in found:
            log.warning("plugin %r registers the command %r, which plugin %r has: ignored",
                        plugin, name, found[name].plugin)
            return
        found[name] = Command(name, help, setup, run, plugin)

    host.register(CorePlugin(), name=CORE)
    host.call_historic("flowtap_register_commands", register=register)
    if _first_command(argv) not in found:
        host.disabled |= _disabled_before_parsing(argv)
        host.load_entrypoints()  # each registered plugin gets the historic call
    return found


def _disabled_before_parsing(argv: list[str]) -> set[str]:
    pre = argparse.ArgumentParser(add_help=False)
    add_global_options(pre)
    known, _ = pre.parse_known_args(argv)
    try:
        raw = load_config(known.config).raw
        disabled = set(raw.get("plugins", {}).get("disable", []) or [])
    except ConfigError:
        disabled = set()
    try:
        disabled |= disabled_plugins(known)
    except UsageError:
        pass  # said when the arguments are parsed
    return disabled


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowtap",
        description="Capture HTTP and HTTPS traffic into debug sessions; save it as HAR, "
                    "Postman collections and cookie jars.",
    )
    parser.add_argument("--version", action="version", version=f"flowtap {flowtap.__version__}")
    add_global_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    add_global_options(common, suppress=True)
    # Subcommands of subcommands (`sessions show`) are made with the same class: they take the
    # global options too.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_parser_with(common))
    for command in commands.values():
        command_parser = sub.add_parser(command.name, help=command.help)
        command_parser.set_defaults(func=command.run)
        command.setup(command_parser)
    return parser


def _parser_with(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """A parser class whose instances also accept the global options."""

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            super().__init__(*args, **kwargs)

    return Parser


class _SafeFormatter(logging.Formatter):
    """Log records for a terminal: captured text in a message (a URL, a header) cannot drive it.

    Control characters are escaped; a message's own further lines are indented, so no text in it can
    pass for a line of flowtap's.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = terminal_safe(record.message, lines=True).replace("\n", "\n  ")
        return super().formatMessage(safe)

    def formatException(self, ei: Any) -> str:
        return terminal_safe(super().formatException(ei), lines=True)

    def formatStack(self, stack_info: str) -> str:
        return terminal_safe(super().formatStack(stack_info), lines=True)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("flowtap: %(levelname)s: %(message)s"))
    root = logging.getLogger("flowtap")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))
    handler.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging(0)
    try:
        parser = build_parser(commands(argv))
        args = parser.parse_args(argv)
        _setup_logging(args.verbose)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except (ConfigError, StartupError, UsageError, PluginLoadError) as exc:
        print(f"flowtap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _first_command(argv: list[str]) -> str | None:
    """The subcommand word, skipping global options and their values."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
