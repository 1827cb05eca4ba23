"""Fake installed distributions with flowtap entry points, for plugin-discovery tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str],
                      version: str = "1.0.0") -> Path:
    """Write ``name``'s modules and a ``.dist-info`` under ``root`` (put ``root`` on sys.path)."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[flowtap]\n{lines}\n")
    return root


REPLAY_SOURCE = '''
import threading

import flowtap
from flowtap.testing import make_flow


class Replay(flowtap.Source):
    """Emits ``count`` fake flows, then idles until stopped."""

    def __init__(self, options):
        self.count = options["count"]

    def start(self, emitter):
        def run():
            for i in range(self.count):
                emitter.emit(make_flow(url=f"https://api.test/items/{i}", source=self.name))
        threading.Thread(target=run, daemon=True).start()

    def describe(self):
        return [f"replaying {self.count} flows"]


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare("sources.replay", flowtap.Option("count", int, 3, "How many flows to emit."))


@flowtap.hookimpl
def flowtap_register_sources(register):
    register("replay", Replay)
'''


def replay_source(root: Path) -> Path:
    """A third-party source plugin, ``[sources.replay] count = N``, on ``root``."""
    return make_distribution(root, "flowtap-replay", {"replay": "flowtap_replay"},
                             {"flowtap_replay": REPLAY_SOURCE})


STREAM_SOURCE = '''
import errno
import socket
import threading
import time

import flowtap
from flowtap.testing import make_flow


class Stream(flowtap.Source):
    """Emits a flow every ``interval`` seconds until stopped (``count`` > 0: that many).

    With ``listen = "HOST:PORT"`` it also holds a listening socket, as a proxy would.
    """

    def __init__(self, options):
        self.options = options
        self._stop = threading.Event()
        self._socket = None

    def start(self, emitter):
        if self.options["listen"]:
            host, _, port = self.options["listen"].rpartition(":")
            self._socket = socket.socket()
            try:
                self._socket.bind((host, int(port)))
            except OSError as exc:
                self._socket.close()
                if exc.errno == errno.EADDRINUSE:
                    raise flowtap.SourceError(f"cannot listen on {host}:{port}: the port is in use") from None
                raise
            self._socket.listen()

        def run():
            i = 0
            while not self._stop.is_set() and (not self.options["count"] or i < self.options["count"]):
                emitter.emit(make_flow(url=f"https://api.test/stream/{i}", source=self.name))
                i += 1
                self._stop.wait(self.options["interval"])

        threading.Thread(target=run, daemon=True).start()

    def stop(self):
        self._stop.set()
        if self._socket is not None:
            self._socket.close()

    def describe(self):
        return [f"streaming a flow every {self.options['interval']}s"]


@flowtap.hookimpl
def flowtap_config_options(declare):
    declare(
        "sources.stream",
        flowtap.Option("interval", float, 0.01, "Seconds between flows."),
        flowtap.Option("count", int, 0, "How many flows; 0: until stopped."),
        flowtap.Option("listen", str, "", "HOST:PORT to hold a listening socket on."),
    )


@flowtap.hookimpl
def flowtap_register_sources(register):
    register("stream", Stream)
'''


def stream_source(root: Path) -> Path:
    """A source plugin that emits flows continuously, ``[sources.stream]``, on ``root``."""
    return make_distribution(root, "flowtap-stream", {"stream": "flowtap_stream"},
                             {"flowtap_stream": STREAM_SOURCE})
