"""A debug session: one time frame of recording, with its state and counts."""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Callable

import attrs


class State(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    ENDED = "ended"


@attrs.define
class Counts:
    """What happened to the flows that reached the session.

    Updated by the dispatcher only. ``clear()`` resets ``recorded`` and
    ``filtered``; the others count the whole session.
    """

    recorded: int = 0
    filtered: int = 0
    paused: int = 0  # arrived while paused: not recorded
    received: int = 0  # every flow a source emitted during the session


@attrs.define(eq=False)
class Session:
    """One debug session. Sources keep serving whatever its state.

    Control it with :meth:`pause`, :meth:`resume`, :meth:`clear` and
    :meth:`end`; each takes effect at once for new flows, and the matching
    ``flowtap_session_*`` hook runs after the flows that arrived before it.
    """

    name: str
    time_limit: float | None = None
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex[:12])
    started: float = attrs.field(factory=time.time)
    ended: float | None = None
    state: State = State.RUNNING
    counts: Counts = attrs.field(factory=Counts)
    #: The session replays stored flows (``flowtap export``), as fast as the store reads them: its
    #: files are wanted only once it ends, so a sink may leave out the rewrites that keep a file
    #: current while a capture runs.
    replay: bool = False
    _post: Callable[..., None] | None = attrs.field(default=None, repr=False)
    #: Waits until the sources have emitted every flow they finished (set by the capture): a pause,
    #: resume, clear, marker or end falls after those flows.
    _settle: Callable[[], object] | None = attrs.field(default=None, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)
    _done: threading.Event = attrs.field(factory=threading.Event, repr=False)

    @property
    def recording(self) -> bool:
        return self.state is State.RUNNING

    @property
    def elapsed(self) -> float:
        """Seconds since the session began (until it ended)."""
        return (self.ended or time.time()) - self.started

    def pause(self) -> bool:
        """Stop recording; the sources keep serving. False if not running."""
        return self._change(State.RUNNING, State.PAUSED, "pause")

    def resume(self) -> bool:
        """Record again after :meth:`pause`. False if not paused."""
        return self._change(State.PAUSED, State.RUNNING, "resume")

    def clear(self) -> bool:
        """Forget what was recorded so far; sinks are told. False if ended."""
        self._settle_sources()
        with self._lock:
            if self.state is State.ENDED:
                return False
        self._post_event("clear")
        return True

    def mark(self, text: str) -> bool:
        """Set a marker between the flows so far and those to come. False if ended."""
        self._settle_sources()
        with self._lock:
            if self.state is State.ENDED:
                return False
        self._post_event("mark", text)
        return True

    def end(self, wait: bool = True) -> bool:
        """End the session: sinks get every flow so far, then are finalized.

        :param wait: block until the sinks are closed.
        :return: False if it had already ended.
        """
        self._settle_sources()
        with self._lock:
            if self.state is State.ENDED:
                changed = False
            else:
                self.state, self.ended, changed = State.ENDED, time.time(), True
        if changed:
            self._post_event("end")
        if wait:
            self.wait()
        return changed

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the session has ended and its sinks are closed; False on timeout."""
        return self._done.wait(timeout)

    def _change(self, old: State, new: State, event: str) -> bool:
        self._settle_sources()
        with self._lock:
            if self.state is not old:
                return False
            self.state = new
        self._post_event(event)
        return True

    def _settle_sources(self) -> None:
        if self._settle is not None and self.state is not State.ENDED:
            self._settle()

    def _post_event(self, event: str, *args: object) -> None:
        if self._post is not None:
            self._post(event, *args)
        elif event == "end":
            self._done.set()
