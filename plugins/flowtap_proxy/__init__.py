"""Proxy source: HTTP and HTTPS captured through an embedded mitmproxy.

mitmproxy is imported only when the proxy starts, never at import time.
"""

from __future__ import annotations

import flowtap
from flowtap import Option, parse_size

NAME = "proxy"


def _mode(value: str) -> str:
    kind, _, target = value.partition(":")
    if kind == "regular" and not target:
        return value
    if kind in ("upstream", "reverse") and target.startswith(("http://", "https://")):
        return value
    raise ValueError(f'expected "regular", "upstream:http://HOST:PORT" or "reverse:https://HOST", got {value!r}')


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'expected "HOST:PORT", e.g. "127.0.0.1:5555", got {value!r}')
    return (host.strip("[]") or "127.0.0.1", int(port))


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sources.proxy",
        Option("listen", str, "127.0.0.1:5555", "Address and port the proxy listens on.", convert=_listen),
        Option("mode", str, "regular",
               '"regular" (clients set it as their proxy), "upstream:URL" (chain to a corporate proxy) '
               'or "reverse:URL" (clients talk to flowtap as if it were URL).', convert=_mode),
        Option("https", bool, True, "Intercept TLS with flowtap's CA; false passes all HTTPS through unseen."),
        Option("ignore_hosts", list, [], "Host regexes whose TLS is passed through, not intercepted."),
        Option("allow_hosts", list, [], "Only these host regexes are intercepted; all other TLS passes through."),
        Option("max_body_size", (int, str), "10MB",
               "Bodies larger than this are streamed to the client and recorded as omitted, with their size.",
               convert=parse_size),
        Option("ssl_insecure", bool, False, "Accept upstream servers whose certificates do not verify."),
    )


@flowtap.hookimpl
def flowtap_register_sources(register):
    from flowtap_proxy.source import ProxySource

    register(NAME, ProxySource)
