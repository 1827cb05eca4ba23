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
import contextlib
import difflib
import io
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


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but a paragraph with indented lines (examples) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line[:1].isspace() for line in paragraph.splitlines()):
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped command, choice or option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(choice) for choice in action.choices]
            what = "command" if isinstance(action, argparse._SubParsersAction) else f"{_name(action)} value"
            hint = _did_you_mean(str(value), choices)
            listed = ", ".join(choices)
            raise argparse.ArgumentError(None, f"unknown {what} {value!r}{hint} (choose from {listed})")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            chain = _chosen(self, parsed)
            options = [o for parser in chain for a in parser._actions for o in a.option_strings]
            hints = [_did_you_mean(extra.split("=", 1)[0], options).removeprefix("; ")
                     for extra in extras if extra.startswith("-")]
            hint = "; ".join(h for h in hints if h)
            chain[-1].error(f"unrecognized arguments: {' '.join(extras)}" + (f"; {hint}" if hint else ""))
        return parsed


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else (action.metavar or action.dest)  # type: ignore[return-value]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _chosen(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """``parser`` and the subcommand parsers the arguments chose, outermost first."""
    chain = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
            if chosen is not None:
                chain += _chosen(chosen, namespace)
    return chain


def build_parser(commands: dict[str, Command]) -> argparse.ArgumentParser:
    parser = Parser(
        prog="flowtap",
        description="Capture HTTP and HTTPS traffic into debug sessions; save it as HAR, "
                    "Postman collections and cookie jars.",
        epilog="start here:\n  flowtap init          # write ./flowtap.toml (a proxy on 127.0.0.1:5555)\n"
               "  flowtap run           # capture until Ctrl-C\n"
               "  flowtap COMMAND --help",
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
    _describe_all(parser)
    return parser


def _parser_with(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """A parser class whose instances also accept the global options."""

    class CommandParser(Parser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            super().__init__(*args, **kwargs)

    return CommandParser


def _describe_all(parser: argparse.ArgumentParser) -> None:
    """Give each subcommand without a description its one-line help as one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, command in action.choices.items():
                text = helps.get(name)
                if not command.description and text:
                    command.description = text[0].upper() + text[1:] + "."
                _describe_all(command)


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
    for stream in (sys.stdout, sys.stderr):  # captured bytes that were not UTF-8 print as escapes
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, io.UnsupportedOperation):
                stream.reconfigure(errors="backslashreplace")
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
