"""What a source and a sink are: the two objects plugins hand to the host."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flowtap.cookies import Cookie
    from flowtap.model import Flow
    from flowtap.session import Session


class Emitter(Protocol):
    """What a running source is given to feed the session."""

    log: logging.Logger

    @property
    def recording(self) -> bool:
        """False while the session is paused or ended: a source may skip converting flows."""

    def emit(self, flow: Flow) -> None:
        """Hand a finished flow to the session. Thread-safe; blocks while the queue is full."""

    def cookies(self, cookies: list[Cookie]) -> None:
        """Report cookie changes the source saw outside any flow (set, update, deletion)."""


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

    def describe(self) -> list[str]:
        """Lines telling the user how to point a client at this source."""
        return []


class Sink:
    """Where kept flows go.

    Built by the factory a plugin registers with ``flowtap_register_sinks``.
    All calls arrive on the dispatcher thread, one at a time, so a sink
    needs no locking. A sink may also implement hooks (``flowtap_session_clear``,
    ``flowtap_cookies_seen``, ...) as methods decorated with ``@flowtap.hookimpl``.
    """

    #: The sink's registered name; set by the host.
    name: str = ""

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
        """Finalize the output; called once when the session ends."""


class SourceError(Exception):
    """A source cannot start; the message is shown to the user as is."""


class SinkError(Exception):
    """A sink cannot open; the message is shown to the user as is."""
