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

import flowtap
from flowtap_faulty.faulty import MODES, FaultyError, FaultySink

__all__ = ["FaultyError", "FaultySink", "MODES"]


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
