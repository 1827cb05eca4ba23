"""Each sink fed on its own: a thread and a bounded backlog per sink.

The dispatcher hands every kept flow (and the session and cookie events a
sink implements hooks for) to each sink's :class:`SinkWorker` without ever
waiting. A sink that is slow falls behind on its own backlog; past its
bound, only that sink misses flows, and each one is counted. A sink call
that does not return in time is reported by the watchdog with where it is
stuck, and the sink is detached: the others go on. Every call of one sink —
``write``, ``flush``, ``close``, its hook methods, its ``call_later``
callbacks — runs on its worker's thread, one at a time: a sink needs no
locks of its own.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from flowtap import hookspecs
from flowtap.api import SinkFailed
from flowtap.health import ErrorLog, SinkHealth, where_stuck
from flowtap.scheduler import Scheduler, Timer

if TYPE_CHECKING:
    from flowtap.api import Sink

log = logging.getLogger("flowtap")

#: Hooks a sink may implement as methods; they reach it through its worker, in order with its flows.
SINK_HOOKS = frozenset({
    "flowtap_session_start", "flowtap_session_pause", "flowtap_session_resume", "flowtap_session_clear",
    "flowtap_session_mark", "flowtap_session_end", "flowtap_cookies_seen",
})


@attrs.define(frozen=True)
class Limits:
    """How far a sink may fall behind, and how long its calls may take (``[dispatch]``)."""

    backlog: int = 10_000  #: flows waiting
    backlog_size: int = 256 * 1024**2  #: bytes of bodies waiting
    call_timeout: float | None = 30.0  #: a call running longer detaches the sink (None: never)
    close_timeout: float | None = 5.0  #: at the end, a call running longer abandons the sink (None: never)


class BacklogFull(Exception):
    """A sink fell too far behind: it misses flows until it catches up."""


class SinkWorker:
    """One sink's thread and backlog.

    :param sink: the sink (opened before the worker starts).
    :param plugin: the plugin that registered it (for messages).
    """

    def __init__(self, sink: Sink, plugin: str, limits: Limits, scheduler: Scheduler,
                 errors: ErrorLog) -> None:
        self.sink = sink
        self.health = SinkHealth(sink.name, plugin)
        self.who = f"sink {sink.name!r}" + (f" (plugin {plugin!r})" if plugin and plugin != sink.name else "")
        self.limits = limits
        self._scheduler = scheduler
        self._errors = errors
        self._hooks = _sink_hooks(sink, self.who)
        self._items: collections.deque[tuple[Any, ...]] = collections.deque()
        self._batch: collections.deque[tuple[Any, ...]] = collections.deque()  # the one being handled
        self._flows = 0  # flows waiting or in the batch being handled
        self._bytes = 0  # their bodies' bytes
        self._handed = 0  # flows of the batch being handled that write() has been given
        self._behind = False  # missing flows since the backlog last overflowed
        self._cond = threading.Condition(threading.Lock())
        self._unflushed = False
        self.call: str | None = None  # the sink call under way, if any
        self.since = 0.0  # when it began (time.monotonic)
        self.detached = False
        self.finished = threading.Event()  # the thread has ended (closed, or detached and returned)
        self._thread = threading.Thread(target=self._run, name=f"flowtap-sink-{sink.name}", daemon=True)
        sink._flowtap_worker = self  # type: ignore[attr-defined]  # Sink.call_later finds its worker here

    def start(self) -> None:
        """Start the thread; its first batch (a flush) comes at once, as the session begins."""
        self._items.append(("start",))
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------

    def feed(self, items: Iterable[tuple[Any, ...]]) -> None:
        """Queue ``("flow", flow, size)`` and ``("hook", name, kwargs)`` items; never blocks.

        Flows past the backlog's bound are counted as missed; hooks the sink
        does not implement are skipped.
        """
        limits, hooks, missed = self.limits, self._hooks, 0
        with self._cond:
            if self.detached or self.finished.is_set():
                self.health.missed += sum(1 for item in items if item[0] == "flow")
                return
            for item in items:
                if item[0] == "flow":
                    full = self._flows >= limits.backlog
                    if full or (self._flows and self._bytes + item[2] > limits.backlog_size):
                        missed += 1
                        continue
                    self._flows += 1
                    self._bytes += item[2]
                elif item[1] not in hooks:
                    continue
                self._items.append(item)
            self.health.missed += missed
            self._cond.notify()
            report, self._behind = missed and not self._behind, self._behind or bool(missed)
        if report:
            self._errors.report(self.who, "fell behind", BacklogFull(
                f"more than {limits.backlog} flows (or {limits.backlog_size} bytes) waiting; it misses flows "
                "until it catches up (each one counted)"), trace=False)

    def end(self, session: object) -> None:
        """Queue the end of the session: the sink's end hook, then ``close``; the thread then ends."""
        with self._cond:
            self._items.append(("end", session))
            self._cond.notify()

    def sync(self) -> threading.Event:
        """An event set once everything queued so far is handled and flushed."""
        done = threading.Event()
        with self._cond:
            if self.detached or self.finished.is_set():
                done.set()
            else:
                self._items.append(("sync", done))
                self._cond.notify()
        return done

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on this worker's thread after ``delay`` seconds."""
        timer = Timer(callback)

        def due() -> None:
            if not timer.cancelled:
                with self._cond:
                    self._items.append(("call", timer))
                    self._cond.notify()

        self._scheduler.call_later(delay, due)
        return timer

    def implements(self, hook: str) -> bool:
        """Whether the sink has a method for ``hook``."""
        return hook in self._hooks

    def stuck_for(self) -> float:
        """Seconds the current call has been running (0 between calls)."""
        return time.monotonic() - self.since if self.call is not None else 0.0

    def snapshot(self) -> SinkHealth:
        """A copy of the sink's health now."""
        note = getattr(self.sink, "status", "")  # set by the sink's own thread; read as it is now
        with self._cond:
            return attrs.evolve(self.health, backlog=self._flows, note=note if isinstance(note, str) else "")

    def detach(self, state: str, message: str) -> None:
        """Give up on a stuck sink: report it once, count what it will never get, feed it no more."""
        where, stack = where_stuck(self._thread)
        with self._cond:
            if self.detached or self.finished.is_set():
                return
            self.detached = True
            self.health.missed += self._flows - self._handed  # the flow it is stuck on included
            self.health.state, self.health.stuck_in = state, f"{self.call or 'idle'} at {where}"
            for item in itertools.chain(self._batch, self._items):  # no sync may wait on it any more
                if item[0] == "sync":
                    item[1].set()
            self._items.clear()
            self._flows = self._bytes = 0
        log.error("%s %s (stuck in %s for %.1f s at %s)%s", self.who, message, self.call, self.stuck_for(),
                  where, f"\n{stack}" if stack and log.isEnabledFor(logging.DEBUG) else "")

    # -- the worker's thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._handle_batch():
                pass
        finally:
            self.finished.set()

    def _handle_batch(self) -> bool:
        """Handle what is waiting; False once the sink is closed or detached."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            items = self._batch = self._items
            self._items = collections.deque()
            self._behind = False
        sink = self.sink
        self._handed = size = 0  # flows handled (and their bytes): in the backlog until the batch is done
        for item in items:
            kind = item[0]
            if kind == "flow":
                if self._invoke("write", sink.write, item[1]) and not self.detached:
                    self.health.written += 1
                self._handed += 1
                size += item[2]
                self._unflushed = True
            elif kind == "hook":
                self._flush()
                self._invoke(item[1], self._hooks[item[1]], **item[2])
            elif kind == "call":
                if not item[1].cancelled:
                    self._invoke("a call_later callback", item[1].callback)
            elif kind == "sync":
                self._flush()
                item[1].set()
            elif kind == "end":
                self._flush()
                if "flowtap_session_end" in self._hooks:
                    self._invoke("flowtap_session_end", self._hooks["flowtap_session_end"], session=item[1])
                if not self.detached:
                    self._invoke("close", sink.close)
                return False
            if self.detached:
                return False
        self._unflushed = False
        self._invoke("flush", sink.flush)  # after every batch, as the Sink API promises
        with self._cond:
            if not self.detached:
                self._flows -= self._handed
                self._bytes -= size
                self._handed = 0
        return not self.detached

    def _flush(self) -> None:
        if self._unflushed:
            self._unflushed = False
            self._invoke("flush", self.sink.flush)

    def _invoke(self, call: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """Call the sink; report what it raises. True if it returned."""
        self.since, self.call = time.monotonic(), call
        try:
            fn(*args, **kwargs)
            return True
        except SinkFailed as exc:
            self._failed(call, exc, exc.lost, trace=False)
        except Exception as exc:  # a sink may raise anything; it must not take its worker down
            self._failed(call, exc, 0, trace=True)
        finally:
            self.call = None
        return False

    def _failed(self, call: str, exc: Exception, lost: int, trace: bool) -> None:
        if self.detached:  # reported when it was detached; what it raises on waking is moot
            return
        with self._cond:
            self.health.errors += 1
            self.health.missed += lost
            self.health.last_error = f"{call}: {exc}" if str(exc) else f"{call}: {type(exc).__name__}"
            if self.health.state == "ok":
                self.health.state = "failing"
        self._errors.report(self.who, call if trace else f"failed in {call}", exc, trace=trace)


def _sink_hooks(sink: Sink, who: str) -> dict[str, Callable[..., object]]:
    """The hooks ``sink`` implements, through a plugin manager of its own (wrappers work as pluggy says)."""
    pm = pluggy.PluginManager("flowtap")
    pm.add_hookspecs(hookspecs)
    pm.register(sink, name=f"sink:{sink.name}")
    names = {caller.name for caller in pm.get_hookcallers(sink) or ()}
    unknown = sorted(name for name in names if name not in SINK_HOOKS)
    if unknown:
        log.warning("%s implements %s, which flowtap does not call on sinks: misspelled, or meant for a "
                    "plugin rather than a sink?", who, ", ".join(unknown))
    return {name: getattr(pm.hook, name) for name in names & SINK_HOOKS}
