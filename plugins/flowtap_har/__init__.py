"""HAR sink: every kept flow into a HAR 1.2 file, written incrementally."""

from __future__ import annotations

import flowtap
from flowtap import Option, parse_size

NAME = "har"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.har",
        Option("path", str, "flowtap-{session}-{date}.har",
               "Where to write the HAR; {session} and {date} are replaced by the session name and start date."),
        Option("content", str, "full", "Bodies to keep: full, headers (no bodies) or none (no headers, no bodies).",
               choices=("full", "headers", "none")),
        Option("max_body_size", (int, str), "1MB", "Bodies longer than this are cut and marked as truncated.",
               convert=parse_size),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_har.sink import HarSink

    register(NAME, HarSink)
