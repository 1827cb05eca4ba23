"""The ``flowtap`` command line: one entry point, subcommands, plain errors.

Exit codes: 0 success, 1 a failure while running, 2 bad input (config,
arguments, a plugin that cannot start), 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import flowtap
from flowtap.capture import Capture, StartupError
from flowtap.config import Config, ConfigError, load_config
from flowtap.plugins import PluginHost, PluginLoadError

log = logging.getLogger("flowtap")


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit code 2."""


def _global_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Options every command takes, before or after the command's name."""

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


def _disabled(args: argparse.Namespace) -> set[str]:
    names = set()
    for flag in args.plugin_flags:
        if not flag.startswith("no:") or not flag[3:]:
            raise UsageError(f"-p {flag}: expected -p no:NAME")
        names.add(flag[3:])
    return names


def _config(args: argparse.Namespace, path: str | None = None) -> Config:
    return load_config(path or args.config, args.overrides)


def _capture(args: argparse.Namespace, config: Config | None = None) -> Capture:
    return Capture(config if config is not None else _config(args), disable=_disabled(args))


# -- commands ----------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin found: name, version, distribution, hooks, status."""
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"flowtap: warning: {exc} (listing plugins without it)", file=sys.stderr)
        config = Config()
    capture = _capture(args, config)
    provides: dict[str, list[str]] = {}
    for kind, factories in (("sources", capture.source_factories), ("sinks", capture.sink_factories)):
        for name, entry in factories.items():
            provides.setdefault(entry.owner, []).append(entry.table)
    rows = [("NAME", "VERSION", "DISTRIBUTION", "STATUS", "PROVIDES", "HOOKS")]
    for info in capture.host.infos.values():
        if info.name.startswith("flowtap-"):
            continue
        status = info.status + (f" ({info.reason})" if info.reason else "")
        if info.error:
            status += f": {info.error}"
        rows.append((info.name, info.version or "-", info.distribution or "(code)", status,
                     ", ".join(provides.get(info.name, [])) or "-",
                     ", ".join(h.removeprefix("flowtap_") for h in info.hooks) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file without running anything."""
    config = _config(args, args.path)
    capture = _capture(args, config)
    capture.validate()
    sources = capture.configured_sources()
    sinks = [n for n, e in capture.sink_factories.items() if e.enabled(config)]
    print(f"{config.origin}: OK (sources: {', '.join(sources) or 'none'}; sinks: {', '.join(sinks) or 'none'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Start the configured sources and a debug session; end on Ctrl-C or the time limit."""
    from flowtap.control import ControlServer, explain_in_use
    from flowtap.view import ConsoleView

    config = _config(args)
    if args.name:
        config.raw.setdefault("session", {})["name"] = args.name
    if args.duration:
        config.raw.setdefault("session", {})["duration"] = args.duration
    capture = _capture(args, config)
    capture.validate()
    if not capture.configured_sources():
        available = ", ".join(f"[sources.{n}]" for n in capture.source_factories) or "none installed"
        raise UsageError(f"{config.origin}: no source to start; add a source table (available: {available})")
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not (args.plain or args.quiet)
    view = ConsoleView(capture, interactive=interactive, per_flow=not args.quiet)
    capture.register(view, name="flowtap-view")

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    control = ControlServer(capture, stop.set)
    try:
        try:
            session = capture.start()
        except StartupError as exc:
            raise StartupError(explain_in_use(str(exc))) from None
        control.start()
        view.started()
        # What start-up made (modules, plugins, mitmproxy) lives as long as the run: out of the
        # cyclic collector's sight, full collections skip it (a fifth of the time they took).
        gc.freeze()
        watcher = threading.Thread(target=lambda: (capture.wait(), stop.set()), daemon=True)
        watcher.start()
        view.run_until(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        control.close()
        capture.stop()
    view.finished(session)
    return 0


# -- wiring ---------------------------------------------------------------------------

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _plugin_commands(argv: list[str]) -> dict[str, Command]:
    """Subcommands that plugins add, found without validating any config."""
    pre = argparse.ArgumentParser(add_help=False)
    _global_options(pre)
    known, _ = pre.parse_known_args(argv)
    try:
        raw = load_config(known.config).raw
        disabled = set(raw.get("plugins", {}).get("disable", []) or [])
    except ConfigError:
        disabled = set()
    try:
        disabled |= _disabled(known)
    except UsageError:
        pass
    host = PluginHost(disable=disabled)
    host.load_entrypoints()
    commands: dict[str, Command] = {}

    def register(name: str, help: str, setup: Callable, run: Callable) -> None:
        commands[name] = (help, setup, run)

    host.call_historic("flowtap_register_commands", register=register)
    return commands


def build_parser(plugin_commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowtap",
        description="Capture HTTP and HTTPS traffic into debug sessions; save it as HAR, "
                    "Postman collections and cookie jars.",
    )
    parser.add_argument("--version", action="version", version=f"flowtap {flowtap.__version__}")
    _global_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_parser_with(common))

    run = sub.add_parser("run", help="capture with the configured sources until Ctrl-C or the time limit")
    run.add_argument("--name", help="name of the debug session")
    run.add_argument("--duration", help='end after this long, e.g. "30m"')
    run.add_argument("--plain", action="store_true", help="one line per flow, even on a terminal")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no line per flow (start-up lines and the summary still print), like mitmdump -q")
    run.set_defaults(func=cmd_run)

    plugins = sub.add_parser("plugins", help="list plugins: name, version, origin, hooks, status")
    plugins.set_defaults(func=cmd_plugins)

    config = sub.add_parser("config", help="work with the config file")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True,
                                       parser_class=_parser_with(common))
    check = config_sub.add_parser("check", help="validate a config file without running")
    check.add_argument("path", nargs="?", help="the file (default: as for run)")
    check.set_defaults(func=cmd_config_check)

    from flowtap.control import cmd_ctl, setup_ctl
    from flowtap.store.commands import add_commands

    add_commands(sub, _parser_with(common))
    ctl = sub.add_parser("ctl", help="control a running capture: status, pause, resume, clear, stop, mark")
    setup_ctl(ctl)
    ctl.set_defaults(func=cmd_ctl)

    for name, (help, setup, run_fn) in sorted((plugin_commands or {}).items()):
        command = sub.add_parser(name, help=help)
        setup(command)
        command.set_defaults(func=run_fn)
    return parser


def _parser_with(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """A parser class whose instances also accept the global options."""

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            super().__init__(*args, **kwargs)

    return Parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("flowtap: %(levelname)s: %(message)s"))
    root = logging.getLogger("flowtap")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))
    handler.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging(0)
    try:
        core_command = _first_command(argv) in _CORE_COMMANDS
        parser = build_parser(None if core_command else _plugin_commands(argv))
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


_CORE_COMMANDS = {"run", "plugins", "config", "sessions", "search", "show", "export", "ctl"}
_VALUED = {"-c", "--config", "--set", "-p"}


def _first_command(argv: list[str]) -> str | None:
    """The subcommand word, skipping global options and their values."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
