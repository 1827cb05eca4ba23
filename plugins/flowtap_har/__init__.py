"""HAR sink: every kept flow into a HAR 1.2 file, written incrementally.

Also adds ``flowtap har finalize JOURNAL``, which turns the journal left
behind by a crashed run into the HAR file it was for.
"""

from __future__ import annotations

import flowtap
from flowtap import Option, parse_size

NAME = "har"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.har",
        Option("path", str, "flowtap-{session}.har",
               "Where to write the HAR; {session} is replaced by the session name (made safe for a file "
               "name) and {date} by the session's start (YYYY-MM-DD_HHMMSS). Entries are appended to "
               "PATH.journal while the session runs; when it ends the journal is closed and renamed "
               "to PATH."),
        Option("content", str, "full",
               "Bodies to keep: full, headers (no bodies) or none (no headers, no bodies).",
               choices=("full", "headers", "none")),
        Option("max_body_size", (int, str), "1MB",
               "Bodies longer than this are cut and marked as truncated (a _flowtap field and a comment).",
               convert=parse_size),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_har.sink import HarSink

    register(NAME, HarSink)


@flowtap.hookimpl
def flowtap_register_commands(register):
    def setup(parser):
        from flowtap_har.journal import setup_command

        setup_command(parser)

    def run(args):
        from flowtap_har.journal import run_command

        return run_command(args)

    register("har", "HAR files: finalize the journal a crashed run left behind", setup, run)
