"""Collection sink: kept flows as a Postman Collection v2.1.0, rewritten atomically."""

from __future__ import annotations

import flowtap
from flowtap import Option

NAME = "collection"


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.collection",
        Option("path", str, "flowtap-{session}.postman_collection.json",
               "Where to write the collection; {session} and {date} are replaced."),
        Option("name", str, "", "The collection's name; default: the session name."),
        Option("organize", str, "none", "Folders: none, domain, endpoint or domain+endpoint (as Postman offers).",
               choices=("none", "domain", "endpoint", "domain+endpoint")),
        Option("save_responses", bool, True,
               "Save each response as an example (never image, audio or video bodies, as in Postman)."),
        Option("dedupe", bool, False, "Keep one request per method and URL (the first), adding later responses as examples."),
        Option("variables", bool, True, "Put each host behind a {{baseUrl}} collection variable."),
        Option("include_secrets", bool, False,
               "Write the values of secrets (Authorization, Cookie, API keys) into their collection variables."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_collection.sink import CollectionSink

    register(NAME, CollectionSink)
