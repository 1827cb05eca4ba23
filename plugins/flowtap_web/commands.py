"""``flowtap web``: the browser UI over the session store, with or without a capture running."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from flowtap.commandline import UsageError, capture_from_args, config_from_args, describe, disabled_plugins


def setup(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Serve the browser UI over the session store: the stored sessions, each session's flows "
                     "(live while a `flowtap run` records it), their detail, pause/resume/clear/mark of a "
                     "running capture, and downloads through the sinks. It listens on 127.0.0.1 and prints "
                     "its URL, which carries a secret token. Ctrl-C ends it.",
             "flowtap web", "flowtap web --port 0 --open", "flowtap run --web   # the same, beside a capture")
    parser.add_argument("--host", help="the address to listen on (default: [web] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the port (default: [web] port, 8040; 0: any free port)")
    parser.add_argument("--open", action="store_true", help="open the UI in the default browser")


def run(args: argparse.Namespace) -> int:
    from flowtap.store.commands import shown
    from flowtap_web import service

    config = config_from_args(args)
    if args.host is not None:
        config.override("web.host", args.host, f"--host {args.host}")
    if args.port is not None:
        config.override("web.port", args.port, f"--port {args.port}")
    capture = capture_from_args(args, config)
    capture.validate()
    options = config.table("web")
    server = service.make_server(options, config, disabled_plugins(args))
    try:
        url = service.start(server, options["open_browser"] or args.open)
    except OSError as exc:
        raise UsageError(f"cannot listen on {options['host']}:{options['port']}: {exc.strerror or exc} "
                         "(--port chooses another; 0: any free port)") from None
    warning = service.exposure(options["host"])
    if warning:
        print(f"flowtap: {warning}", file=sys.stderr)
    print(f"flowtap web: {url}", flush=True)
    print(f"  sessions from {shown(server.store_path)}; Ctrl-C ends it", flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return 0
