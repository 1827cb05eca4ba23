"""Cookie jar sink: cookies captured from any source, kept in sync in a file."""

from __future__ import annotations

import flowtap
from flowtap import Option

NAME = "cookiejar"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.cookiejar",
        Option("path", str, "flowtap-cookies.txt", "The cookie jar file."),
        Option("format", str, "netscape", "netscape (curl, wget, Python's MozillaCookieJar) or json (keeps SameSite).",
               choices=("netscape", "json")),
        Option("domains", list, [], "Domains whose cookies are synced; example.com covers its subdomains; empty: all."),
        Option("sync", bool, True, "Keep the file in sync within a second of every change (else: write at session end)."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_cookiejar.sink import CookieJarSink

    register(NAME, CookieJarSink)
