"""Each sink fed on its own: a bounded backlog per sink, served by threads that sinks share until one lags.

The dispatcher hands every kept flow (and the session and cookie events a
sink implements hooks for) to each sink's :class:`SinkWorker` without ever
waiting. A sink that is slow falls behind on its own backlog; past its
bound, only that sink misses flows, and each one is counted. A sink call
that does not return in time is reported by the watchdog with where it is
stuck, and the sink is detached: the others go on. Every call of one sink —
``write``, ``flush``, ``close``, its hook methods, its ``call_later``
callbacks — runs on a flowtap thread, one at a time and in order: a sink
needs no locks of its own.

A :class:`SinkRunner` is the thread that makes the calls. The sinks of a
session share one, taking turns of at most :data:`TURN` items each (a sink
alone on its runner takes all that waits, flushed once): a
thread per sink cost a tenth more CPU per proxied request, every hand-over
of the GIL between five threads a cache of the proxy's work lost. When a
sink's turn runs past ``STALL`` seconds (a slow or hung call, or a sink that
cannot keep up), the watchdog gives the runner to that sink alone and moves
the others to a new runner: a lagging sink holds the others back for at
most that long, never a second time.
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

#: Items of one sink handled in a turn before the runner serves the next sink.
TURN = 256
#: Seconds one sink's turn may last before the others are moved to a runner of their own.
STALL = 0.1

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
    close_timeout: float | None = 5.0  #: unfinished this long after the end: abandoned (None: never)


class BacklogFull(Exception):
    """A sink fell too far behind: it misses flows until it catches up."""


class SinkWorker:
    """One sink's thread and backlog.

    :param sink: the sink (opened before the worker starts).
    :param plugin: the plugin that registered it (for messages).
    """

    def __init__(self, sink: Sink, plugin: str, limits: Limits, scheduler: Scheduler,
                 errors: ErrorLog) -> None:
        self.runner: SinkRunner | None = None  # the thread making its calls (set by SinkRunner)
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
        self.finished = threading.Event()  # its runner is done with it (closed, or detached and returned)
        sink._flowtap_worker = self  # type: ignore[attr-defined]  # Sink.call_later finds its worker here

    def start(self) -> None:
        """Queue the first turn (a flush), as the session begins; the runner starts the sinks it is given."""
        with self._cond:
            self._items.append(("start",))

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
            report, self._behind = missed and not self._behind, self._behind or bool(missed)
        self._wake()
        if report:
            self._errors.report(self.who, "fell behind", BacklogFull(
                f"more than {limits.backlog} flows (or {limits.backlog_size} bytes) waiting; it misses flows "
                "until it catches up (each one counted)"), trace=False)

    def end(self, session: object) -> None:
        """Queue the end of the session: the sink's end hook, then ``close``; the thread then ends."""
        with self._cond:
            self._items.append(("end", session))
        self._wake()

    def sync(self) -> threading.Event:
        """An event set once everything queued so far is handled and flushed."""
        done = threading.Event()
        with self._cond:
            if self.detached or self.finished.is_set():
                done.set()
            else:
                self._items.append(("sync", done))
        self._wake()
        return done

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on this worker's thread after ``delay`` seconds."""
        timer = Timer(callback)

        def due() -> None:
            if not timer.cancelled:
                with self._cond:
                    self._items.append(("call", timer))
                self._wake()

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
        runner = self.runner
        where, stack = where_stuck(runner.thread if runner is not None else None)
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
        if runner is not None:
            runner.isolate(self)  # the sinks that shared its runner go on without it
        log.error("%s %s (stuck in %s for %.1f s at %s)%s", self.who, message, self.call, self.stuck_for(),
                  where, f"\n{stack}" if stack and log.isEnabledFor(logging.DEBUG) else "")

    # -- its runner's thread ----------------------------------------------------------------

    def _wake(self) -> None:
        runner = self.runner
        if runner is not None:
            runner.wake()

    def take_turn(self, limit: int | None = TURN) -> bool:
        """Handle the waiting items, up to ``limit`` (None: all); on the runner's thread. False once closed
        or detached."""
        with self._cond:
            if not self._items:
                return not self.detached
            if limit is None or len(self._items) <= limit:
                items = self._batch = self._items
                self._items = collections.deque()
            else:
                items = self._batch = collections.deque(self._items.popleft() for _ in range(limit))
            self._behind = False
        sink = self.sink
        self._handed = size = 0  # flows handled (and their bytes): in the backlog until the turn is done
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
        self._invoke("flush", sink.flush)  # after every turn, as the Sink API promises
        with self._cond:
            if not self.detached:
                self._flows -= self._handed
                self._bytes -= size
                self._handed = 0
        return not self.detached

    def has_items(self) -> bool:
        """Whether items wait for a turn."""
        return bool(self._items)

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


class SinkRunner:
    """The thread that makes sink calls: the sinks it serves take turns, in the order they were given."""

    _numbers = itertools.count(1)

    def __init__(self, workers: Iterable[SinkWorker]) -> None:
        self.workers = list(workers)
        self.current: SinkWorker | None = None  # the sink whose turn it is
        self.since = 0.0  # when that turn began (time.monotonic)
        self._pending = True  # a sink may have items: look again
        self._cond = threading.Condition(threading.Lock())
        for worker in self.workers:
            worker.runner = self
        self.thread = threading.Thread(target=self._run, name=self._name(), daemon=True)

    def _name(self) -> str:
        if len(self.workers) == 1:
            return f"flowtap-sink-{self.workers[0].sink.name}"
        return f"flowtap-sinks-{next(self._numbers)}"

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """A sink it serves has items (any thread)."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    def isolate_lagging(self, stall: float = STALL) -> None:
        """If a sink's turn has run longer than ``stall`` seconds, leave this thread to it (the watchdog)."""
        worker = self.current
        if worker is not None and time.monotonic() - self.since > stall:
            self.isolate(worker)

    def isolate(self, worker: SinkWorker) -> None:
        """Leave this thread to ``worker``, in a turn (lagging, or stuck in a call); the others move to a
        new runner."""
        with self._cond:
            others = self._leave_to(worker) if self.current is worker else None
        if others is not None:
            log.debug("%s keeps its thread (a turn of %.2f s so far): the other sinks move to another",
                      worker.who, time.monotonic() - self.since)
            others.start()

    def _leave_to(self, worker: SinkWorker) -> SinkRunner | None:
        """Move every sink but ``worker`` (whose turn it is) to a new runner, not yet started."""
        if len(self.workers) < 2:
            return None
        others = SinkRunner(w for w in self.workers if w is not worker)  # their runner from now on
        self.workers = [worker]
        self.thread.name = f"flowtap-sink-{worker.sink.name}"
        return others

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._pending = False
                workers = list(self.workers)
                if not workers:
                    return
            for worker in workers:
                with self._cond:
                    if worker.runner is not self:  # moved to another runner meanwhile
                        continue
                    self.current, self.since = worker, time.monotonic()
                    limit = TURN if len(self.workers) > 1 else None  # alone, it takes all (one flush)
                try:
                    going = worker.take_turn(limit)
                except Exception:  # flowtap's own bug: this sink stops, the others go on
                    log.exception("internal error while feeding %s", worker.who)
                    going = False
                with self._cond:
                    self.current = None
                    if not going:
                        worker.finished.set()
                        if worker in self.workers:
                            self.workers.remove(worker)
                        self._pending = True  # look again: the end of the list ends the thread
                    elif worker.has_items():
                        self._pending = True
