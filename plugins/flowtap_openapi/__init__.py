"""OpenAPI sink: an OpenAPI 3.1 description inferred from the traffic, merged into the file at ``path``."""

from __future__ import annotations

import re

import flowtap
from flowtap import Option

NAME = "openapi"

_ORIGIN = re.compile(r"^(?:(https?)://)?(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?/?$")


def check_origins(value: list[str]) -> list[str]:
    """Each entry an origin (``https://api.example.com``, ``http://127.0.0.1:8080``), a host, or
    ``*.example.com``; the entries lower-cased, without a trailing slash."""
    for entry in value:
        if not _ORIGIN.match(entry.strip()):
            raise ValueError(f"expected origins such as \"https://api.example.com\", \"api.example.com\" or "
                             f"\"*.example.com\", got {entry!r}")
    return [entry.strip().lower().rstrip("/") for entry in value]


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.openapi",
        Option("path", str, "openapi.yaml",
               "The OpenAPI 3.1 description to write: YAML, or JSON when the name ends in .json. A file "
               "already there is merged with what this session saw (paths and operations added, schemas "
               "widened; descriptions, summaries, operationIds, parameter names and comments kept), never "
               "overwritten. Rewritten atomically when it changed: at most once a second while flows "
               "arrive (less often as it grows), and when the session ends. {session} and {date} are "
               "replaced as in the other sinks' paths."),
        Option("title", str, "", "info.title of a new description; default: \"API seen by flowtap\"."),
        Option("origins", list, [],
               "Describe only these origins: \"https://api.example.com\", \"http://127.0.0.1:8080\", "
               "a host (\"api.example.com\", any scheme and port) or \"*.example.com\" (its subdomains). "
               "Empty: all.",
               convert=check_origins),
        Option("assets", bool, False,
               "Describe static assets too (scripts, style sheets, images, fonts, media, HTML pages: by "
               "extension, or by the Content-Type of a response that is not an error). Off: they are left "
               "out and counted."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    from flowtap_openapi.sink import OpenAPISink

    register(NAME, OpenAPISink)
