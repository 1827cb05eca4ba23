"""What a source and a sink are: the two objects plugins hand to the host."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flowtap.config import Config
    from flowtap.cookies import Cookie
    from flowtap.model import Flow
    from flowtap.scheduler import Timer
    from flowtap.session import Session


class Emitter(Protocol):
    """What a running source is given to feed the session."""

    log: logging.Logger
    #: The run's whole config, for a source that needs more than its own table (the web UI serves
    #: the store that ``[store]`` names).
    config: Config

    @property
    def recording(self) -> bool:
        """False while the session is paused or ended: a source may skip converting flows."""

    def emit(self, flow: Flow) -> None:
        """Hand a finished flow to the session. Thread-safe; never blocks."""

    def cookies(self, cookies: list[Cookie]) -> None:
        """Report cookie changes the source saw outside any flow (set, update, deletion)."""

    def failed(self, message: str) -> None:
        """Report that the running source failed (it captures no more, or lost flows): logged with the
        source's name, and counted, so that the run's end and its exit code say so."""


class Source:
    """A capture source: turns traffic it sees into :class:`flowtap.Flow` objects.

    Built by the factory a plugin registers with ``flowtap_register_sources``.
    """

    #: The source's registered name; set by the host.
    name: str = ""

    def start(self, emitter: Emitter) -> None:
        """Start serving and return once the source is ready.

        Run in the background (a thread of the source's own); call
        ``emitter.emit(flow)`` for every finished exchange. Raise
        :class:`flowtap.SourceError` with a plain message when the source
        cannot start (port in use, missing permission).
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and release every resource; return when done."""

    def sync(self, timeout: float | None = None) -> bool:
        """Return once every flow the source finished before the call has been emitted (False if that
        took longer than ``timeout`` seconds).

        A source that emits each flow as it finishes has nothing to do (the
        default). One that hands flows over later (from another process, say)
        waits for them: a pause, a clear or a marker then falls after them.
        """
        return True

    def describe(self) -> list[str]:
        """Lines telling the user how to point a client at this source."""
        return []


class Sink:
    """Where kept flows go.

    Built by the factory a plugin registers with ``flowtap_register_sinks``.
    Each sink is fed on its own, behind a bounded backlog, never by a
    source's thread. The sinks of a session take turns on a thread they
    share while they keep up; a sink whose turn lags (``STALL`` in
    :mod:`flowtap.sinkworker`, a tenth of a second) is left that thread alone
    and the others move on to another, so a slow sink holds the others back
    for a moment at most, and never the sources. Every call of one sink —
    ``write``, ``flush``, ``close``, its hook methods and its
    :meth:`call_later` callbacks — arrives one at a time, in order, on the
    thread serving it: a sink needs no locks (nor may it keep per-thread
    state across calls). A sink may implement the session hooks
    (``flowtap_session_clear``, ``flowtap_session_end``, ...) and
    ``flowtap_cookies_seen`` as methods decorated with ``@flowtap.hookimpl``;
    they arrive in order with its flows.

    A call that raises is reported with the sink's name (the first time with
    its traceback, then summarised) and the sink goes on getting flows; a
    call that does not return within ``[dispatch] call_timeout`` gets the
    sink detached. Raise :class:`SinkFailed` to say flows were lost; set
    :attr:`status` to say something of its state that is no failure.
    """

    #: The sink's registered name; set by the host.
    name: str = ""
    #: A short note on the sink's state that is no error, "" when there is none ("database
    #: unreachable: flows wait in the spool"): shown with its health (live view, ``flowtap ctl
    #: status``, the summary) while set. It does not make the run unclean.
    status: str = ""
    #: True for a sink that merges what it writes into the file already at its path (read, widened,
    #: never overwritten): ``flowtap export -o FILE`` then has it write FILE in place.
    merges: bool = False

    def open(self, session: Session) -> None:
        """Acquire what writing needs (files, connections) for ``session``.

        Called when a session begins, before any of its flows (at start-up,
        before any source starts). Raise :class:`flowtap.SinkError` with the
        path and the reason to refuse the run (an unwritable path, say).
        ``session.name``, ``session.id`` and ``session.started`` are set.
        """

    def write(self, flow: Flow) -> None:
        """Take one kept flow. May buffer: :meth:`flush` follows each batch."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what :meth:`write` took durable; called whenever the queue drains."""

    def close(self) -> None:
        """Finalize the output; called once when the session ends.

        Must return within ``[dispatch] close_timeout``, or the sink is abandoned.
        """

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on the thread serving this sink, between its calls, after ``delay`` seconds.

        For deferred work (a throttled fsync, a rewrite) without a thread or a
        lock of the sink's own. Works from :meth:`open` on. Returns a handle
        whose ``cancel()`` keeps the callback from running; callbacks still
        due when the session ends are dropped (``close`` finishes the work).
        """
        worker = getattr(self, "_flowtap_worker", None)
        if worker is None:
            raise RuntimeError(f"sink {self.name!r} is not fed by a capture: call_later needs one")
        return worker.call_later(delay, callback)


def sink_plugin(name: str, sink: Sink | Callable[[dict[str, Any]], Sink], *, default: bool = True) -> object:
    """A plugin that registers one sink: hand it to :meth:`flowtap.Capture.register`, and a sink
    made in code joins the capture in one call::

        capture.register(flowtap.sink_plugin("mine", MySink))   # a new MySink(options) each session
        capture.register(flowtap.sink_plugin("tee", my_sink))   # this very object, every session

    Registered before :meth:`~flowtap.Capture.start`, it is opened with the first session;
    after, it joins the running session.

    :param name: the sink's name (in the summary, ``flowtap ctl status``, its table ``[sinks.NAME]``).
    :param sink: a :class:`Sink` (used for every session: ``open`` again after ``close``), or a
        factory called with the validated options of ``[sinks.NAME]`` (an empty dict unless a
        plugin declares that table).
    :param default: build it even when the config has no ``[sinks.NAME]`` table.
    """
    from flowtap.plugins import hookimpl

    factory: Callable[[dict[str, Any]], Sink] = (lambda options: sink) if isinstance(sink, Sink) else sink

    class SinkPlugin:
        __name__ = f"sink:{name}"  # the plugin's name in `flowtap plugins` and in messages

        @hookimpl
        def flowtap_register_sinks(self, register: Callable[..., None]) -> None:
            register(name, factory, default=default)

    return SinkPlugin()


class SourceError(Exception):
    """A source cannot start; the message is shown to the user as is."""


class SinkError(Exception):
    """A sink cannot open; the message is shown to the user as is."""


class SinkFailed(Exception):
    """Raised by a sink's call to say it failed and flows were lost (a commit the disk refused).

    The message is reported once, without a traceback, with the sink's name;
    ``lost`` flows are added to the sink's missed count, and the run's exit
    code says it was not clean.
    """

    def __init__(self, message: str, lost: int = 0) -> None:
        super().__init__(message)
        self.lost = lost
