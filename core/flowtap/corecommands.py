"""The core's own commands: ``flowtap run``, ``flowtap plugins``, ``flowtap config check``.

Registered by :mod:`flowtap.coreplugin` through ``flowtap_register_commands``,
like any plugin's commands. The store's commands are in
:mod:`flowtap.store.commands`, ``flowtap ctl`` in :mod:`flowtap.control.client`.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from flowtap.commandline import UsageError, capture_from_args, config_from_args
from flowtap.config import Config, ConfigError

if TYPE_CHECKING:
    from flowtap.capture import Capture

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
    print(f"{config.origin}: OK (sources: {', '.join(sources) or 'none'}; "
          f"sinks: {', '.join(sinks) or 'none'})")
    return 0


# -- flowtap run ----------------------------------------------------------------------------------


def setup_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="name of the debug session")
    parser.add_argument("--duration", help='end after this long, e.g. "30m"')
    parser.add_argument("--plain", action="store_true", help="one line per flow, even on a terminal")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no line per flow (start-up lines and the summary still print), "
                             "like mitmdump -q")


def cmd_run(args: argparse.Namespace) -> int:
    """Start the configured sources and a debug session; end on Ctrl-C or the time limit.

    Exit code 0 if every sink and plugin was clean, 1 if one failed; a second Ctrl-C
    (or SIGTERM) while the sinks finish ends the process at once with 130.
    """
    from flowtap.capture import StartupError
    from flowtap.control.client import explain_in_use
    from flowtap.control.server import ControlServer
    from flowtap.view import VIEW_PLUGIN, ConsoleView

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
    capture.register(view, name=VIEW_PLUGIN)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _ENDING}
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
        # Ending: the sinks get their close timeout; the next Ctrl-C or SIGTERM quits at once.
        for sig in _ENDING:
            signal.signal(sig, lambda *_: _quit_now(capture))
        notice = capture.scheduler.call_later(NOTICE_AFTER, lambda: _waiting_notice(capture))
        try:
            control.close()
            capture.stop()
        finally:
            notice.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            view.close()
    view.finished(session)
    if not capture.clean:
        print(f"flowtap: error: {_failures(capture)} during the run (see above): exit code 1",
              file=sys.stderr)
        return 1
    return 0


#: The signals that end a run: the first gracefully, the next at once.
_ENDING = (signal.SIGINT, signal.SIGTERM)
#: Seconds of ending after which the user is told what it waits for.
NOTICE_AFTER = 1.0


def _unfinished(capture: Capture) -> list[str]:
    """The sinks of the session still running (closing, or stuck in a call): ``'har' (in close)``."""
    found = []
    for worker in list(capture.workers):
        if not worker.finished.is_set():
            call = worker.call
            found.append(f"{worker.health.name!r}" + (f" (in {call})" if call else ""))
    return found


def _waiting_notice(capture: Capture) -> None:
    names = _unfinished(capture)
    if names:
        print(f"flowtap: waiting for sink{'s' * (len(names) > 1)} {', '.join(names)} to finish; "
              "Ctrl-C again to quit at once", file=sys.stderr, flush=True)


def _quit_now(capture: Capture) -> None:
    """A second Ctrl-C or SIGTERM while the run ends: exit at once with 130, naming what did not finish."""
    names = _unfinished(capture)
    what = (f"sink{'s' * (len(names) > 1)} {', '.join(names)} did not finish (output may be incomplete)"
            if names else "every sink had finished")
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(2, f"flowtap: interrupted again: quitting now; {what}\n".encode())
    os._exit(130)


def _failures(capture: Capture) -> str:
    """What made the run unclean, in a few words: ``sink 'faulty' failing, 3 plugin errors``."""
    parts = [f"sink {h.name!r} {h.state if h.state != 'ok' else 'missed flows'}"
             for h in capture.health() if not h.clean]
    if not parts and capture.host.errors.count:
        parts.append("a plugin raised")
    if capture.dispatcher.dropped:
        parts.append(f"{capture.dispatcher.dropped} flows dropped before the sinks")
    return ", ".join(parts) or "a sink or plugin failed"
