"""A flowtap sink that writes one JSON object per kept flow to a file.

Configure it with a ``[sinks.jsonl]`` table::

    [sinks.jsonl]
    path = "flows.jsonl"
    bodies = false

Each session appends its lines (each with the session's id); clearing a session forgets
that session's lines only, never an earlier session's.
"""

from __future__ import annotations

import base64
import json
import os

import flowtap


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.jsonl",
        flowtap.Option("path", str, "flows.jsonl", "The file to append flows to."),
        flowtap.Option("bodies", bool, False, "Include request and response bodies (base64)."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    register("jsonl", JsonLinesSink)


class JsonLinesSink(flowtap.Sink):
    """Appends each kept flow as one line of JSON; ``clear`` forgets this session's lines only."""

    def __init__(self, options):
        self.path = options["path"]
        self.bodies = options["bodies"]
        self.file = None
        self.session_id = ""
        self.start = 0  # where this session's lines begin: earlier sessions' lines stay

    def open(self, session):
        try:
            self.file = open(self.path, "ab")
        except OSError as exc:
            raise flowtap.SinkError(f"{self.path}: cannot open for writing: {exc.strerror}") from None
        self.start = self.file.tell()
        self.session_id = session.id

    def write(self, flow):
        record = {
            "id": flow.id,
            "session": self.session_id,
            "time": flow.timings.start,
            "method": flow.request.method,
            "url": flow.request.url,
            "status": flow.response.status_code if flow.response else None,
            "error": flow.error,
        }
        if self.bodies:
            record["request_body"] = base64.b64encode(flow.request.body).decode()
            if flow.response:
                record["response_body"] = base64.b64encode(flow.response.body).decode()
        self.file.write(json.dumps(record).encode() + b"\n")

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()

    @flowtap.hookimpl
    def flowtap_session_clear(self, session):
        # Forget what this session wrote so far, and only that: the file may hold earlier sessions.
        self.file.flush()
        self.file.truncate(self.start)

    @flowtap.hookimpl
    def flowtap_session_end(self, session):
        # Every flow of the session has been written (close() follows): make it durable.
        self.file.flush()
        os.fsync(self.file.fileno())
