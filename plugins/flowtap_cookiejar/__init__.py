"""Cookie jar sink: cookies captured from any source, kept in sync in a file."""

from __future__ import annotations

import ipaddress

import flowtap
from flowtap import Option

NAME = "cookiejar"


def parse_domains(values: list[str]) -> list[str]:
    """Domain names as the user wrote them, lower-cased and without a leading dot."""
    domains = []
    for value in values:
        domain = value.strip().lstrip(".").lower()
        try:
            ipaddress.ip_address(domain.strip("[]"))
            domains.append(domain.strip("[]"))
            continue
        except ValueError:
            pass
        if not domain or any(char in domain for char in "/:@ \t"):
            raise ValueError(f"expected domain names such as example.com (no scheme, port or path), got {value!r}")
        domains.append(domain)
    return domains


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
               "Keep the file in sync within a second of every change, paused or not (else: write at session end)."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_cookiejar.sink import CookieJarSink

    register(NAME, CookieJarSink)
