"""Proxy source: HTTP and HTTPS captured through an embedded mitmproxy.

mitmproxy is imported only when the proxy starts, never at import time.
"""

from __future__ import annotations

import re
from pathlib import Path

import flowtap
from flowtap import ConfigError, Option, parse_address, parse_size

NAME = "proxy"


def _mode(value: str) -> str:
    kind, _, target = value.partition(":")
    if kind == "regular" and not target:
        return value
    if kind in ("upstream", "reverse") and target.startswith(("http://", "https://")):
        return value
    raise ValueError(
        f'expected "regular", "upstream:http://HOST:PORT" or "reverse:https://HOST", got {value!r}')


def _regexes(value: list[str]) -> list[str]:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return value


def _credentials(value: str) -> str:
    if value and ":" not in value:
        raise ValueError('expected "USER:PASSWORD"')
    return value


def _ca_file(value: str) -> str:
    """An existing PEM file holding at least one certificate (empty: none) -> its absolute path."""
    if not value:
        return value
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"expected a PEM file of CA certificates (BEGIN CERTIFICATE), got {value!r}")
    return str(path.resolve())


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sources.proxy",
        Option("listen", str, "127.0.0.1:5555", "Address and port the proxy listens on.",
               convert=parse_address),
        Option("mode", str, "regular",
               '"regular" (clients set it as their proxy), "upstream:URL" (chain to a corporate proxy) '
               'or "reverse:URL" (clients talk to flowtap as if it were URL).', convert=_mode),
        Option("upstream_auth", str, "",
               'Credentials for the upstream proxy in upstream mode, "USER:PASSWORD" (HTTP Basic); '
               'use {env = "VAR"} to keep them out of the file.', convert=_credentials),
        Option("https", bool, True,
               "Intercept TLS with flowtap's CA; false passes all HTTPS through unseen."),
        Option("ignore_hosts", list, [],
               'Regexes matched against "host:port"; matching connections pass through unseen.',
               convert=_regexes),
        Option("allow_hosts", list, [],
               'Only connections whose "host:port" matches one of these regexes are intercepted.',
               convert=_regexes),
        Option("max_body_size", (int, str), "10MB",
               "Bodies larger than this are streamed to the client and recorded as omitted, with their size.",
               convert=parse_size),
        Option("upstream_ca", str, "",
               "A PEM file of CA certificates to trust for upstream servers, besides the usual public ones: "
               "your company's TLS-inspecting proxy's CA, or an internal CA. Needs no ssl_insecure.",
               convert=_ca_file),
        Option("ssl_insecure", bool, False, "Accept upstream servers whose certificates do not verify."),
    )


@flowtap.hookimpl
def flowtap_config_validate(config):
    table = config.table("sources.proxy")
    if table["ignore_hosts"] and table["allow_hosts"]:
        raise ConfigError(f"{config.where('sources.proxy', 'allow_hosts')}: "
                          "set ignore_hosts or allow_hosts, not both")


@flowtap.hookimpl
def flowtap_register_commands(register):
    from flowtap_proxy import ca  # light: mitmproxy is imported when the command runs

    register("ca", "where flowtap's CA certificate is and how to trust it; export, regenerate",
             ca.setup, ca.run)


@flowtap.hookimpl
def flowtap_register_sources(register):
    from flowtap_proxy.source import ProxySource

    register(NAME, ProxySource)
