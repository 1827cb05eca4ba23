"""The core's own commands: ``flowtap run``, ``flowtap plugins``, ``flowtap config check``.

Registered by :mod:`flowtap.coreplugin` through ``flowtap_register_commands``,
like any plugin's commands. The store's commands are in
:mod:`flowtap.store.commands`, ``flowtap ctl`` in :mod:`flowtap.control.client`.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import threading

from flowtap.commandline import UsageError, capture_from_args, config_from_args
from flowtap.config import Config, ConfigError

# -- flowtap plugins --------------------------------------------------------------------------


def setup_plugins(parser: argparse.ArgumentParser) -> None:
    pass


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin found: name, version, distribution, hooks, status."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"flowtap: warning: {exc} (listing plugins without it)", file=sys.stderr)
        config = Config()
    capture = capture_from_args(args, config)
    provides: dict[str, list[str]] = {}
    for factories in (capture.source_factories, capture.sink_factories):
        for entry in factories.values():
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


# -- flowtap config check -----------------------------------------------------------------------


def setup_config(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a config file without running")
    check.add_argument("path", nargs="?", help="the file (default: as for run)")
    check.set_defaults(func=cmd_config_check)


def cmd_config(args: argparse.Namespace) -> int:
    raise UsageError("flowtap config: expected an action: check")  # argparse requires one first


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file without running anything."""
    config = config_from_args(args, args.path)
    capture = capture_from_args(args, config)
    capture.validate()
    sources = capture.configured_sources()
    sinks = [n for n, e in capture.sink_factories.items() if e.enabled(config)]
    print(f"{config.origin}: OK (sources: {', '.join(sources) or 'none'}; sinks: {', '.join(sinks) or 'none'})")
    return 0


# -- flowtap run ----------------------------------------------------------------------------------


def setup_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="name of the debug session")
    parser.add_argument("--duration", help='end after this long, e.g. "30m"')
    parser.add_argument("--plain", action="store_true", help="one line per flow, even on a terminal")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no line per flow (start-up lines and the summary still print), like mitmdump -q")


def cmd_run(args: argparse.Namespace) -> int:
    """Start the configured sources and a debug session; end on Ctrl-C or the time limit."""
    from flowtap.capture import StartupError
    from flowtap.control.client import explain_in_use
    from flowtap.control.server import ControlServer
    from flowtap.view import ConsoleView

    config = config_from_args(args)
    if args.name:
        config.raw.setdefault("session", {})["name"] = args.name
    if args.duration:
        config.raw.setdefault("session", {})["duration"] = args.duration
    capture = capture_from_args(args, config)
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

    def watch() -> None:
        capture.wait()
        stop.set()

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
        threading.Thread(target=watch, name="flowtap-watch", daemon=True).start()
        view.run_until(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        control.close()
        capture.stop()
    view.finished(session)
    return 0
