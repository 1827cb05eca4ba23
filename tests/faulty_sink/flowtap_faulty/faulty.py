"""The sink itself, in a module of its own: where a hung call is reported names ``faulty.py``."""

from __future__ import annotations

import random
import threading
import time

import flowtap

MODES = ("ok", "hang", "sleep", "raise", "random")


class FaultyError(RuntimeError):
    """What the sink raises: a plain bug in a third-party sink, not a flowtap.SinkFailed."""


class FaultySink(flowtap.Sink):
    """Misbehaves as ``[sinks.faulty] mode`` says (see the package's docstring)."""

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
            raise FaultyError(f"faulty sink refuses flow #{self.calls} "
                              f"({flow.request.method} {flow.request.url})")
        self.written += 1

    def flush(self):
        if self.mode == "sleep":
            time.sleep(self.seconds)
