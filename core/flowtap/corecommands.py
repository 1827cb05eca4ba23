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
from pathlib import Path
from typing import TYPE_CHECKING

from flowtap.commandline import UsageError, capture_from_args, config_from_args, describe
from flowtap.config import CONFIG_NAME, Config, ConfigError, default_config_path
from flowtap.plugins import misspelled

if TYPE_CHECKING:
    from flowtap.capture import Capture

# -- flowtap plugins --------------------------------------------------------------------------


def setup_plugins(parser: argparse.ArgumentParser) -> None:
    describe(parser, "List every plugin found through the `flowtap` entry points and in code: its name, "
                     "version, distribution, status (enabled, disabled, failed and why), the config "
                     "tables it provides and the hooks it implements. Works even when a plugin is broken.",
             "flowtap plugins",
             "flowtap plugins -p no:cookiejar       # as a run with cookiejar disabled sees them",
             "FLOWTAP_LOAD_PLUGINS= flowtap plugins  # no third-party plugin loaded")


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin found: name, version, distribution, hooks, status."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"flowtap: warning: {exc} (listing plugins without it)", file=sys.stderr)
        config = Config()
    capture = capture_from_args(args, config, check=False)
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
        if info.unknown_hooks:
            status += f"; {misspelled(info.unknown_hooks)}"
        rows.append((info.name, info.version or "-", info.distribution or "(code)", status,
                     ", ".join(provides.get(info.name, [])) or "-",
                     ", ".join(h.removeprefix("flowtap_") for h in info.hooks) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])
    return 0


# -- flowtap config check -----------------------------------------------------------------------


def setup_config(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Work with flowtap's config file (TOML; docs/config.md is the reference).",
             "flowtap config check", "flowtap config check ./other.toml")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a config file without running")
    describe(check, "Validate the config file without running anything: which file was read and where "
                    "flowtap looked, then every table and key against what the plugins declare. Exit "
                    "code 2 and one line naming the file, line, table and key on an error.",
             "flowtap config check",
             "flowtap config check ~/.config/flowtap/flowtap.toml",
             "flowtap config check --set session.duration=30m   # with an override, as run would")
    check.add_argument("path", nargs="?", help="the file (default: as for run)")
    check.set_defaults(func=cmd_config_check)


def cmd_config(args: argparse.Namespace) -> int:
    raise UsageError("flowtap config: expected an action: check")  # argparse requires one first


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file without running anything; say which file it was and where flowtap looked."""
    config = config_from_args(args, args.path)
    capture = capture_from_args(args, config)
    capture.validate()
    sources = capture.configured_sources()
    sinks = [n for n, e in capture.sink_factories.items() if e.enabled(config)]
    name = str(config.path) if config.path else "no config file"
    print(f"{name}: OK (sources: {', '.join(sources) or 'none'}; sinks: {', '.join(sinks) or 'none'})")
    for line in config_origin(config, args.path or args.config):
        print(line)
    if not sources:
        print(f"nothing to capture from: {no_source_fix(capture)}")
    return 0


def config_origin(config: Config, given: str | None) -> list[str]:
    """Lines saying which config file was read and where flowtap looked for one."""
    lines = []
    if given:
        lines.append(f"config file: {Path(given).resolve()} (given with --config)")
    else:
        looked = f"looked for, in order: {shown(config.searched)}"
        if config.path:
            lines.append(f"config file: {config.path.resolve()} ({looked})")
        else:
            lines.append(f"config file: none ({looked}); using the defaults")
    for given_as in config.overrides.values():
        lines.append(f"overridden: {given_as}")
    return lines


def shown(paths: list[Path]) -> str:
    """``./flowtap.toml, /home/me/.config/flowtap/flowtap.toml``."""
    return ", ".join(str(path) if path.is_absolute() else f"./{path}" for path in paths)


def no_source_fix(capture: Capture) -> str:
    """What to run when the config starts no source."""
    config = capture.config
    if config.path is None and "proxy" in capture.source_factories:
        return ("`flowtap init` writes ./flowtap.toml with a proxy on 127.0.0.1:5555 "
                "(or run: flowtap run --set sources.proxy.enabled=true)")
    capturing = [f"[{entry.table}]" for entry in capture.source_factories.values() if entry.captures]
    available = ", ".join(capturing) or "none installed"
    if "proxy" in capture.source_factories:
        return (f"add a source table to {config.origin} (available: {available}), "
                "or run: flowtap run --set sources.proxy.enabled=true")
    return f"add a source table to {config.origin} (available: {available})"


# -- flowtap init -----------------------------------------------------------------------------------


def setup_init(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Write a config file to start from: every option with its default, commented (the "
                     "example config flowtap ships). It runs a proxy on 127.0.0.1:5555 and writes a HAR, "
                     "a Postman collection and a cookie jar in the working directory. An existing file "
                     "is never overwritten.",
             "flowtap init && flowtap run",
             "flowtap init --user            # the user config file, used wherever flowtap runs",
             "flowtap init capture.toml && flowtap run -c capture.toml")
    parser.add_argument("path", nargs="?", metavar="PATH",
                        help=f"the file to write (default: ./{CONFIG_NAME})")
    parser.add_argument("--user", action="store_true",
                        help=f"write the user config file ({default_config_path()})")


def cmd_init(args: argparse.Namespace) -> int:
    """Write the shipped example config as ./flowtap.toml (or PATH, or the user config file)."""
    if args.user and args.path:
        raise UsageError("flowtap init: give PATH or --user, not both")
    target = default_config_path() if args.user else Path(args.path or CONFIG_NAME)
    text = example_config()
    if target.exists():
        raise UsageError(f"{target}: already exists; not overwritten (remove it first, or give another PATH)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        raise UsageError(f"{target}: already exists; not overwritten") from None
    except OSError as exc:
        raise UsageError(f"{target}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {target}: a proxy on 127.0.0.1:5555; HAR, Postman collection and cookie jar in the "
          "working directory; every option commented")
    run = "flowtap run" if args.user or target == Path(CONFIG_NAME) else f"flowtap run -c {target}"
    print(f"next: {run}   (and `flowtap ca` shows how to make clients trust its CA for HTTPS)")
    return 0


def example_config() -> str:
    """The example config flowtap ships (every option, commented)."""
    from importlib import resources

    return resources.files("flowtap").joinpath("config.example.toml").read_text(encoding="utf-8")


# -- flowtap completion -----------------------------------------------------------------------------

#: The shells ``flowtap completion`` writes a script for.
SHELLS = ("bash", "zsh", "fish")


def setup_completion(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Print a tab-completion script for bash, zsh or fish, generated from flowtap's "
                     "commands and options, installed plugins' commands included (regenerate it after "
                     "installing a plugin).",
             'eval "$(flowtap completion bash)"    # this bash only; or, for every new one:',
             "flowtap completion bash > ~/.local/share/bash-completion/completions/flowtap",
             'flowtap completion zsh > "${fpath[1]}/_flowtap"      # then: compinit',
             "flowtap completion fish > ~/.config/fish/completions/flowtap.fish")
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell`` for every command, plugins' included."""
    import shtab

    from flowtap.cli import build_parser, commands

    parser = build_parser(commands([]))  # no core command named: every plugin's commands too
    _complete_paths(parser, shtab.FILE)
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _complete_paths(parser: argparse.ArgumentParser, files: object) -> None:
    """Complete file names where an argument is a path (``-c PATH``, ``-o FILE``, ``init PATH``)."""
    for action in parser._actions:
        if action.metavar in ("PATH", "FILE") or action.dest in ("path", "journal", "output"):
            action.complete = files  # type: ignore[attr-defined]  # shtab's convention
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub, files)


# -- flowtap run ----------------------------------------------------------------------------------


def setup_run(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Start the configured sources and a debug session, and capture until Ctrl-C, "
                     "`flowtap ctl stop` or the time limit. On a terminal it shows a live table (keys: "
                     "p pause, r resume, c clear, m mark, q end); otherwise one line per flow. Exit code 0 "
                     "when every sink and plugin was clean, 1 when one failed, 2 for a config or start-up "
                     "error.",
             "flowtap run",
             "flowtap run --duration 30m --name checkout",
             "flowtap run --set filters.expression='~d api.example.com & !~t image'",
             "flowtap run -p no:cookiejar --plain > flows.log")
    parser.add_argument("--name", help="name of the debug session")
    parser.add_argument("--duration", help='end after this long, e.g. "30m"')
    parser.add_argument("--plain", action="store_true", help="one line per flow, even on a terminal")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no line per flow (start-up lines and the summary still print), "
                             "like mitmdump -q")
    parser.add_argument("--web", action="store_true",
                        help="serve the browser UI beside the capture (as [web] in the config does)")


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
        config.override("session.name", args.name, f"--name {args.name}")
    if args.duration:
        config.override("session.duration", args.duration, f"--duration {args.duration}")
    if args.web:
        config.override("web.enabled", True, "--web")
    capture = capture_from_args(args, config)
    capture.validate()
    if not capture.configured_sources(capturing=True):
        if config.path is None:
            raise UsageError(f"no config file (looked for {shown(config.searched)}), so no source to start: "
                             f"{no_source_fix(capture)}")
        raise UsageError(f"{config.origin}: no source to start: {no_source_fix(capture)}")
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not (args.plain or args.quiet)
    view = ConsoleView(capture, interactive=interactive, per_flow=not args.quiet)
    capture.register(view, name=VIEW_PLUGIN)

    stop = threading.Event()
    # The handler only appends (no lock): it runs in the main thread between two of its steps, and
    # once ran inside stop.wait() with the event's own lock held, where stop.set() waited for that
    # lock forever (a run that ignored Ctrl-C). The view's loop looks at the list on every tick.
    signalled: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: signalled.append(signum)) for sig in _ENDING}
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
        view.run_until(stop, lambda: bool(signalled))
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
