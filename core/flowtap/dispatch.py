"""The dispatcher: moves flows from sources through the filters to each sink's worker, off the sources'.

Sources put flows on a bounded queue without ever waiting (a flow that finds
the queue full is counted as dropped and reported). One thread takes them
off in batches, runs the filters and the plugins' cookie and session hooks,
counts, and hands the batch's kept flows and sink events to every sink's
:class:`~flowtap.sinkworker.SinkWorker` — again without waiting: a slow or
stuck sink falls behind on its own backlog, and no other sink nor any
source notices. Session events travel the same queue as flows, so every
hook sees them in order with the flows.

When a flow arrives at an idle dispatcher, the thread lets the flows of the
next :data:`GATHER` seconds join it: one wake-up of each sink's worker, and
one flush per sink, for a batch instead of one per flow. The thread shares
the GIL with the proxy, and sink work done in batches costs much less per
flow (warm caches, one hand-over of the GIL). A session event or a
:meth:`Dispatcher.sync` cuts the wait short.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from flowtap.health import ErrorLog
from flowtap.session import Session
from flowtap.sinkworker import SinkRunner, SinkWorker

if TYPE_CHECKING:
    from flowtap.cookies import Cookie
    from flowtap.model import Flow
    from flowtap.plugins import PluginHost

log = logging.getLogger("flowtap")

QUEUE_SIZE = 16384
BATCH = 256
#: Seconds an idle dispatcher waits for more flows after the first (a flow reaches the sinks this much later).
GATHER = 0.02
#: Seconds between checks of the closing sinks at the end of a session.
CLOSE_POLL = 0.02
_STOP = ("stop",)


class QueueFull(Exception):
    """The dispatcher fell behind the sources: flows are dropped (each one counted)."""


class Dispatcher:
    """One thread that runs the filters and feeds every sink's worker for the current session."""

    def __init__(self, host: PluginHost, errors: ErrorLog, queue_size: int = QUEUE_SIZE) -> None:
        self.host = host
        self.errors = errors
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=queue_size)
        self.current: Session | None = None  # what sources feed; set at once by attach()
        self.session: Session | None = None  # what the thread is working on
        self.workers: list[SinkWorker] = []  # the sinks of self.session
        self.history: list[SinkWorker] = []  # every sink worker of the run, for its health
        self.dropped = 0  # flows the full queue turned away
        self._out: list[tuple[Any, ...]] = []  # what the batch being handled gives the sinks
        self._sink_cookies = False  # a sink of the session implements flowtap_cookies_seen
        self._hurry = threading.Event()  # set: something other than flows is queued; do not gather
        self._thread = threading.Thread(target=self._run, name="flowtap-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Handle everything queued, then end the thread (waiting at most ``timeout`` seconds)."""
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the dispatcher did not finish within %.1f s (a filter or hook is stuck); "
                          "giving up on it", timeout)

    # -- called from any thread ----------------------------------------------

    def attach(self, session: Session, workers: list[SinkWorker]) -> None:
        """Make ``session`` the current one, with the sinks' workers built for it."""
        session._post = lambda event, *args: self._put(("event", event, session, *args))
        self.current = session
        self._put(("attach", session, workers))

    def add_workers(self, workers: list[SinkWorker]) -> None:
        """Add sinks to the current session (a plugin registered mid-session)."""
        if workers:
            self._put(("add_workers", workers))

    def emit(self, flow: Flow) -> None:
        """Queue a flow from a source; never blocks (a full queue drops it, counted)."""
        session = self.current
        if session is not None:
            try:
                self.queue.put_nowait(("flow", flow, session, session.recording))
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    self.errors.report("flowtap", "fell behind", QueueFull(
                        f"{self.dropped} flow(s) dropped: the filters and hooks cannot keep up with the "
                        "sources"), trace=False)

    def cookies(self, cookies: list[Cookie], source: str) -> None:
        """Queue cookie changes a source saw outside any flow."""
        if cookies:
            self._put(("cookies", cookies, source))

    def sync(self, timeout: float | None = None, only: Collection[str] | None = None) -> bool:
        """Block until everything queued so far has been handled, and flushed by every healthy sink.

        :param only: wait just for the sinks of these names (``{"store"}``: a stuck third-party
            sink must not hold up ``flowtap ctl``).
        """
        holder = _Sync(only)
        self._put(("sync", holder))
        if not holder.ready.wait(timeout):
            return False
        return all(done.wait(timeout) for done in holder.events)

    def _put(self, item: tuple[Any, ...]) -> None:
        """Queue anything but a flow (waits for room): it is handled without waiting for more flows."""
        self.queue.put(item)
        self._hurry.set()

    # -- the dispatcher thread --------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            if batch[0][0] == "flow" and self.queue.qsize() < BATCH:
                self._hurry.wait(GATHER)  # let the next few milliseconds of flows join this batch
            self._hurry.clear()
            try:
                while len(batch) < BATCH:
                    batch.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            for item in batch:
                if item is _STOP:
                    self._feed()
                    return
                try:
                    getattr(self, "_on_" + item[0])(*item[1:])
                except Exception:  # the dispatcher itself must never die
                    log.exception("internal error while dispatching %s", item[0])
            self._feed()

    def _feed(self) -> None:
        """Hand what this batch gave the sinks to each sink's worker."""
        if self._out:
            out, self._out = self._out, []
            for worker in self.workers:
                worker.feed(out)

    def _on_attach(self, session: Session, workers: list[SinkWorker]) -> None:
        self._feed()
        self.session, self.workers = session, workers
        self.history.extend(workers)
        self._sink_cookies = any(w.implements("flowtap_cookies_seen") for w in workers)
        _start_sinks(workers)
        self._hook("flowtap_session_start", session=session)

    def _on_sync(self, holder: _Sync) -> None:
        self._feed()
        holder.events = [w.sync() for w in self.workers if holder.only is None or w.sink.name in holder.only]
        holder.ready.set()

    def _on_add_workers(self, workers: list[SinkWorker]) -> None:
        self._feed()
        self.workers = self.workers + workers
        self.history.extend(workers)
        self._sink_cookies = self._sink_cookies or any(w.implements("flowtap_cookies_seen") for w in workers)
        _start_sinks(workers)
        if self.session is not None:
            for worker in workers:
                worker.feed([("hook", "flowtap_session_start", {"session": self.session})])

    def _on_flow(self, flow: Flow, session: Session, recording: bool) -> None:
        counts = session.counts
        counts.received += 1
        if self._sink_cookies or self.host.impls("flowtap_cookies_seen"):
            self._report_cookies(flow)
        if not recording or session is not self.session:
            counts.paused += 1
            return
        if self.host.impls("flowtap_filter"):
            for _, keep in self.host.each("flowtap_filter", flow=flow):
                if keep is False:
                    counts.filtered += 1
                    return
        counts.recorded += 1
        response = flow.response
        self._out.append(("flow", flow, len(flow.request.body) + (len(response.body) if response else 0)))

    def _report_cookies(self, flow: Flow) -> None:
        try:
            cookies = flow.cookies
        except Exception:  # a flow no parser foresaw must still reach the sinks
            log.warning("cannot read the cookies of %s %s", flow.request.method, flow.request.url,
                        exc_info=True)
            return
        if cookies:
            self._hook("flowtap_cookies_seen", cookies=cookies, flow=flow, source=flow.source)

    def _on_cookies(self, cookies: list[Cookie], source: str) -> None:
        self._hook("flowtap_cookies_seen", cookies=cookies, flow=None, source=source)

    def _on_event(self, event: str, session: Session, *args: Any) -> None:
        if event == "clear":
            session.counts.recorded = session.counts.filtered = 0
        if event == "mark":
            self._hook("flowtap_session_mark", session=session, text=args[0])
        elif event != "end":
            self._hook(f"flowtap_session_{event}", session=session)
        else:
            self.host.call("flowtap_session_end", session=session)
            self._end(session)

    def _hook(self, hook: str, **kwargs: Any) -> None:
        """Call the plugins' implementations now; the sinks' go through their workers, in order with flows."""
        self.host.call(hook, **kwargs)
        if self.workers:
            self._out.append(("hook", hook, kwargs))

    def _end(self, session: Session) -> None:
        """Feed each sink the end; a closer thread waits for them (abandoning stuck ones), then ends it."""
        self._feed()
        workers = self.workers if session is self.session else []
        for worker in workers:
            worker.end(session)
        if session is self.session:
            self.session, self.workers, self._sink_cookies = None, [], False
        if session is self.current:
            self.current = None
        closer = threading.Thread(target=self._close, args=(session, workers), name="flowtap-close")
        closer.daemon = True
        closer.start()

    def _close(self, session: Session, workers: list[SinkWorker]) -> None:
        """Wait until every sink has closed; one not done within close_timeout (a call that stalls, or a
        backlog too slow to drain) is abandoned."""
        pending = list(workers)
        began = time.monotonic()
        while pending:
            for worker in list(pending):
                if worker.finished.is_set() or worker.detached:
                    pending.remove(worker)
                elif (timeout := worker.limits.close_timeout) and time.monotonic() - began > timeout:
                    worker.detach("abandoned", f"did not finish within [dispatch] close_timeout "
                                               f"({timeout:g} s): abandoned, its output may "
                                               "be incomplete")
                    pending.remove(worker)
            if pending:
                pending[0].finished.wait(CLOSE_POLL)
        self.errors.summarize()
        session._done.set()


def _start_sinks(workers: list[SinkWorker]) -> None:
    """Start the sinks' workers on a runner they share (the watchdog splits it if one lags)."""
    for worker in workers:
        worker.start()
    if workers:
        SinkRunner(workers).start()


class _Sync:
    """What a :meth:`Dispatcher.sync` waits for: the sinks' own sync events, once the dispatcher got there."""

    def __init__(self, only: Collection[str] | None) -> None:
        self.only = only
        self.ready = threading.Event()
        self.events: list[threading.Event] = []
