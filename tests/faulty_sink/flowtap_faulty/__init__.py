"""A flowtap sink that misbehaves on purpose: the third-party sink of the isolation tests.

``[sinks.faulty] mode`` chooses how:

- ``ok``: takes every flow and does nothing with it (the clean control run);
- ``hang``: blocks forever in ``write`` from its ``after``-th flow on;
- ``sleep``: sleeps ``seconds`` (2 s) in every ``flush``;
- ``raise``: raises in every ``write``;
- ``random``: raises in about ``rate`` (30%) of the writes.

It counts what it took in ``written`` and what it refused in ``refused`` (for tests
that build it in-process); it keeps nothing else.
"""

from __future__ import annotations

import random
import threading
import time

import flowtap

MODES = ("ok", "hang", "sleep", "raise", "random")


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sinks.faulty",
        flowtap.Option("mode", str, "ok", "How to misbehave.", choices=MODES),
        flowtap.Option("after", int, 5, "hang: block forever in write() from this flow on (1: the first)."),
        flowtap.Option("seconds", (int, float), 2.0, "sleep: seconds to sleep in every flush()."),
        flowtap.Option("rate", (int, float), 0.3, "random: the share of writes that raise."),
        flowtap.Option("seed", int, 0, "random: the generator's seed; 0: a fresh one each run."),
    )


@flowtap.hookimpl
def flowtap_register_sinks(register):
    register("faulty", FaultySink)


class FaultyError(RuntimeError):
    """What the sink raises: a plain bug in a third-party sink, not a flowtap.SinkFailed."""


class FaultySink(flowtap.Sink):
    def __init__(self, options):
        self.mode = options["mode"]
        self.after = options["after"]
        self.seconds = float(options["seconds"])
        self.rate = float(options["rate"])
        self.random = random.Random(options["seed"] or None)
        self.calls = 0  # write() calls so far
        self.written = 0
        self.refused = 0

    def write(self, flow):
        self.calls += 1
        if self.mode == "hang" and self.calls >= self.after:
            threading.Event().wait()  # forever: nothing ever sets it
        if self.mode == "raise" or (self.mode == "random" and self.random.random() < self.rate):
            self.refused += 1
            raise FaultyError(f"faulty sink refuses flow #{self.calls} ({flow.request.method} {flow.request.url})")
        self.written += 1

    def flush(self):
        if self.mode == "sleep":
            time.sleep(self.seconds)
