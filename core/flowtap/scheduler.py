"""One thread for the run's timed work: time limits, the sink watchdog, error summaries, sinks' deferred work.

Instead of a ``threading.Timer`` thread per job, every job is an entry in
one heap served by one thread. Jobs must be short: a job that would block
(a sink's fsync, say) hands its work to the thread that owns it
(:meth:`flowtap.Sink.call_later` queues the callback on the sink's own
worker).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("flowtap")


class Timer:
    """A scheduled job; :meth:`cancel` keeps it from running (if it has not run yet)."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the job."""
        self.cancelled = True


class Scheduler:
    """Runs short callbacks at given times on one daemon thread, started on first use."""

    def __init__(self, name: str = "flowtap-scheduler") -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` on the scheduler's thread after ``delay`` seconds."""
        timer = Timer(callback)
        with self._cond:
            if self._closed:
                timer.cancelled = True
                return timer
            heapq.heappush(self._heap, (time.monotonic() + max(delay, 0.0), next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def every(self, interval: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` every ``interval`` seconds until the returned timer is cancelled."""
        handle = Timer(callback)

        def tick() -> None:
            if not handle.cancelled:
                callback()
                if not handle.cancelled:
                    self.call_later(interval, tick)

        self.call_later(interval, tick)
        return handle

    def close(self) -> None:
        """Drop every pending job and end the thread (a job running now finishes)."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._heap:
                        delay = self._heap[0][0] - time.monotonic()
                        if delay <= 0:
                            timer = heapq.heappop(self._heap)[2]
                            break
                        self._cond.wait(delay)
                    else:
                        self._cond.wait()
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:  # the scheduler serves every job; one bad job must not stop it
                log.exception("internal error in a scheduled job")
