"""The browser UI: watch, search, inspect and save captured traffic, served by flowtap itself.

``flowtap web`` serves it over the session store; ``[web]`` in a run's config
(or ``flowtap run --web``) serves it beside the capture, live. It reads only
the store, controls a live session through the run's control socket (as
``flowtap ctl`` does) and exports through the registered sinks (as
``flowtap export`` does).
"""

from __future__ import annotations

import flowtap
from flowtap import Option

NAME = "web"

def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535; 0: any free port)")
    return value


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "web",
        Option("host", str, "127.0.0.1",
               "Address the UI listens on. Anything but loopback (127.0.0.1, ::1, localhost) lets other "
               "machines reach it (the token still guards it): flowtap warns."),
        Option("port", int, 8040, "Port of the UI; 0: any free port.", convert=_port),
        Option("open_browser", bool, False, "Open the UI in the default browser when it starts."),
        Option("allowed_hosts", list, [],
               "More names the browser may call the UI by (its Host header), e.g. the machine's name "
               "when host is not loopback. Any other is refused (DNS rebinding)."),
    )


@flowtap.hookimpl
def flowtap_register_commands(register):
    from flowtap_web import commands

    register("web", "the browser UI over the session store (live beside a run: [web] or run --web)",
             commands.setup, commands.run)


@flowtap.hookimpl
def flowtap_register_sources(register):
    register(NAME, _web_source, table="web", captures=False)


def _web_source(options):
    from flowtap_web.service import WebSource

    return WebSource(options)
