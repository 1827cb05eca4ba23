"""Interceptor source: a browser extension feeds the user's own browser traffic to a local bridge."""

from __future__ import annotations

import flowtap
from flowtap import Option

NAME = "interceptor"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sources.interceptor",
        Option("listen", str, "127.0.0.1:5005", "Address and port of the bridge the extension connects to."),
    )


@flowtap.hookimpl
def flowtap_register_sources(register):
    from flowtap_interceptor.source import InterceptorSource

    register(NAME, InterceptorSource)
