"""Interceptor source: a browser extension feeds the user's own browser traffic to a local bridge.

The extension lives in ``extension/`` (load it unpacked: ``flowtap interceptor
extension``); the bridge is a WebSocket server on loopback that admits it once
paired (``flowtap interceptor pair``).
"""

from __future__ import annotations

import flowtap
from flowtap import ConfigError, Option, parse_address, parse_domains, parse_methods, parse_size

NAME = "interceptor"

#: chrome.webRequest resource types; "all" captures every one.
RESOURCE_TYPES = ("main_frame", "sub_frame", "stylesheet", "script", "image", "font", "object",
                  "xmlhttprequest", "ping", "csp_report", "media", "websocket", "webbundle", "other", "all")


def _resource_types(value: list[str]) -> list[str]:
    for kind in value:
        if kind not in RESOURCE_TYPES:
            raise ValueError(f"{kind!r} is not a resource type; expected some of {', '.join(RESOURCE_TYPES)}")
    return ["all"] if "all" in value else value


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sources.interceptor",
        Option("listen", str, "127.0.0.1:5005",
               "Address and port of the bridge the extension connects to (the extension's popup must name "
               "the same port).", convert=parse_address),
        Option("key_file", str, "",
               "The pairing key file; default: interceptor.key in the user config directory. "
               "`flowtap interceptor pair` shows the key, `--new` replaces it."),
        Option("capture", bool, True,
               "Capture requests as soon as the extension connects; false connects for cookie sync only."),
        Option("url_filter", str, "",
               "A JavaScript regular expression: only requests whose URL matches are captured. Empty: all."),
        Option("methods", list, [], "Only these HTTP methods are captured. Empty: all.",
               convert=parse_methods),
        Option("resource_types", list, ["main_frame", "sub_frame", "xmlhttprequest"],
               'Kinds of request captured, as chrome.webRequest names them: XHR/fetch ("xmlhttprequest") '
               'and documents by default; ["all"] for every request (scripts, images, fonts, ...). Only '
               "those the extension's popup allows too.", convert=_resource_types),
        Option("cookie_domains", list, [],
               "Domains (with their subdomains) whose browser cookies are synced to the sinks: all of them "
               "when the extension connects, then every change. Only domains the extension's popup allows "
               "too.", convert=parse_domains),
        Option("capture_bodies", bool, False,
               "Also capture response bodies, through chrome.debugger, if the extension's popup allows it "
               'too: the browser then shows its "is debugging this browser" bar on every tab while capture '
               "is on."),
        Option("max_body_size", (int, str), "1MB",
               "Request and response bodies longer than this are cut by the extension and marked truncated.",
               convert=parse_size),
        Option("max_message_size", (int, str), "16MB",
               "Largest message the bridge accepts; a larger one gets an error reply (past four times this "
               "the connection is closed).", convert=parse_size),
    )


@flowtap.hookimpl
def flowtap_config_validate(config):
    table = config.table("sources.interceptor")
    needed = table["max_body_size"] * 4 // 3 + 65536  # base64 bodies plus headers
    if table["max_message_size"] < needed:
        raise ConfigError(f"{config.where('sources.interceptor', 'max_message_size')}: must be at least "
                          f"{needed} bytes to carry bodies of max_body_size ({table['max_body_size']} bytes)")


@flowtap.hookimpl
def flowtap_register_commands(register):
    from flowtap_interceptor import commands

    register("interceptor", "the browser extension: pair it with flowtap, find or zip it",
             commands.setup, commands.run)


@flowtap.hookimpl
def flowtap_register_sources(register):
    from flowtap_interceptor.source import InterceptorSource

    register(NAME, InterceptorSource)
