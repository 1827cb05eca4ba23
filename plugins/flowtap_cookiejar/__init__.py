"""Cookie jar sink: cookies captured from any source, kept in sync in a file."""

from __future__ import annotations

import flowtap
from flowtap import Option, parse_domains

NAME = "cookiejar"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.cookiejar",
        Option("path", str, "flowtap-cookies.txt",
               "The cookie jar file; an existing one is updated, not replaced. "
               "{session} and {date} are replaced as in [sinks.har] path."),
        Option("format", str, "netscape",
               "netscape (cookies.txt, as curl -b, wget and Python's MozillaCookieJar read it) "
               "or json (every attribute, SameSite included).",
               choices=("netscape", "json")),
        Option("domains", list, [],
               "Domains whose cookies are synced; example.com covers its subdomains; empty: all.",
               convert=parse_domains),
        Option("sync", bool, True,
               "Keep the file in sync within a second of every change, paused or not "
               "(else: write at session end)."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_cookiejar.sink import CookieJarSink

    register(NAME, CookieJarSink)
