"""Collection sink: kept flows as a Postman Collection v2.1.0, rewritten atomically."""

from __future__ import annotations

import flowtap
from flowtap import Option, parse_size

NAME = "collection"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.collection",
        Option("path", str, "flowtap-{session}.postman_collection.json",
               "Where to write the collection; {session} is replaced by the session name (made safe for a "
               "file name) and {date} by the session's start (YYYY-MM-DD_HHMMSS). Rewritten whole and "
               "atomically at most once a second while flows arrive, and when the session ends."),
        Option("name", str, "", "The collection's name; default: the session name."),
        Option("organize", str, "none",
               "Folders: none, domain (one per host), endpoint (one per method and path, e.g. "
               "GET /users/:userId, identifier path segments (numbers, UUIDs, dates, hashes) becoming path "
               "variables) or domain+endpoint (endpoints within hosts).",
               choices=("none", "domain", "endpoint", "domain+endpoint")),
        Option("save_responses", bool, True,
               "Save each response as an example (never image, audio or video bodies, as in Postman)."),
        Option("max_example_size", (int, str), "64kb",
               "A saved response's body longer than this is cut to it, and the example's name says so "
               "with the body's real size (e.g. \"200 OK (body cut to 64 KiB of 3.2 MiB)\"): examples "
               "are for reading, and Postman struggles with collections of hundreds of megabytes. The "
               "HAR and the session store keep bodies as their own max_body_size says.",
               convert=parse_size),
        Option("dedupe", bool, False,
               "Keep one request per method and URL (the first), adding later responses as examples; "
               "with organize = endpoint the URL is the templated one (/users/:userId)."),
        Option("variables", bool, True,
               "Put each origin (scheme, host, port) behind a collection variable: {{baseUrl}} for the "
               "first, {{baseUrl2}}, {{baseUrl3}}... for the next."),
        Option("include_secrets", bool, False,
               "Secrets (Authorization, Cookie and Set-Cookie headers; headers and parameters named like "
               "tokens, API keys, passwords, sessions) are always written as {{variables}}; this writes "
               "their values into the collection's variables too."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_collection.sink import CollectionSink

    register(NAME, CollectionSink)
