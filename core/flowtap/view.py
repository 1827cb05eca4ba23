"""What ``flowtap run`` shows: a live table on a terminal, one line per flow otherwise."""

from __future__ import annotations

import collections
import os
import select
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from flowtap.api import Sink
from flowtap.plugins import hookimpl

if TYPE_CHECKING:
    from flowtap.capture import Capture
    from flowtap.model import Flow
    from flowtap.session import Session

KEYS = "p pause  r resume  c clear  m mark  q end"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def flow_row(flow: Flow) -> tuple[str, ...]:
    """time, method, status, host, path, size, duration: one flow as table cells."""
    response = flow.response
    status = str(response.status_code) if response else ("ERR" if flow.error else "-")
    duration = flow.timings.duration
    return (
        time.strftime("%H:%M:%S", time.localtime(flow.timings.start)),
        flow.request.method,
        status,
        flow.request.host,
        flow.request.path,
        _size(response.body_size if response else None),
        "-" if duration is None else f"{duration:.0f}ms",
    )


def flow_line(flow: Flow) -> str:
    """One flow as a log line; failures carry their error."""
    cells = flow_row(flow)
    line = f"{cells[0]} {cells[1]:<7} {cells[2]:>3} {cells[3]}{cells[4]}  {cells[5]} {cells[6]}"
    return f"{line}  ({flow.error})" if flow.error else line


class _ViewSink(Sink):
    def __init__(self, view: ConsoleView) -> None:
        self.view = view

    def write(self, flow: Flow) -> None:
        self.view.add(flow)

    def flush(self) -> None:
        self.view.flush()


class ConsoleView:
    """Shows flows as they are recorded, and takes p/r/c/q from the keyboard.

    :param interactive: draw a live table and read keys (a terminal);
        otherwise print one line per flow to ``out``.
    :param per_flow: False: no line per flow, only the start-up lines and the summary.
    """

    def __init__(self, capture: Capture, interactive: bool, out: TextIO | None = None,
                 per_flow: bool = True) -> None:
        self.capture = capture
        self.interactive = interactive
        self.per_flow = per_flow
        self.out = out or sys.stdout
        self.rows: collections.deque[tuple[str, ...]] = collections.deque(maxlen=200)
        self._lock = threading.Lock()
        self._early: list[str] | None = []  # lines held back until the banner is out

    @hookimpl
    def flowtap_register_sinks(self, register):
        if self.per_flow:
            register("console", lambda options: _ViewSink(self), default=True)

    @hookimpl
    def flowtap_session_clear(self):
        with self._lock:
            self.rows.clear()

    def add(self, flow: Flow) -> None:
        if self.interactive:
            with self._lock:
                self.rows.append(flow_row(flow))
        else:
            with self._lock:
                if self._early is not None:
                    self._early.append(flow_line(flow))
                    return
            self.out.write(flow_line(flow) + "\n")

    def flush(self) -> None:
        """Show the lines of a batch at once (one write per batch, not per flow)."""
        if not self.interactive:
            self.out.flush()

    def started(self) -> None:
        """Print where the sources listen and how to point clients at them."""
        session = self.capture.session
        print(f"flowtap {_version()}: session {session.name!r} ({session.id})", file=self.out)
        for name, source in self.capture.sources.items():
            for line in source.describe():
                print(f"  [{name}] {line}", file=self.out)
        if session.time_limit:
            print(f"  ends after {session.time_limit:.0f}s", file=self.out)
        if self.interactive:
            print(f"  keys: {KEYS}", file=self.out)
        else:
            print("  Ctrl-C ends the session", file=self.out)
        with self._lock:
            for line in self._early or ():
                print(line, file=self.out)
            self._early = None
        self.out.flush()

    def run_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set, drawing the table and handling keys when interactive."""
        if not self.interactive:
            # In short waits: when Ctrl-C reaches another thread than this one, Python runs the
            # handler here only between waits (an endless wait missed it, now and then, for good).
            while not stop.wait(0.1):
                pass
            return
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        try:
            self.out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide cursor
            while not stop.is_set():
                self._draw()
                ready, _, _ = select.select([fd], [], [], 0.25)
                if ready:
                    self._key(os.read(fd, 1).decode(errors="ignore").lower(), stop)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self.out.write("\x1b[?25h\x1b[?1049l")
            self.out.flush()

    def _key(self, key: str, stop: threading.Event) -> None:
        session = self.capture.session
        if session is None:
            return
        actions = {"p": session.pause, "r": session.resume, "c": session.clear,
                   "m": lambda: session.mark(time.strftime("mark %H:%M:%S"))}
        if key in actions:
            actions[key]()
        elif key == "q":
            stop.set()

    def _draw(self) -> None:
        session = self.capture.session
        if session is None:
            return
        width, height = shutil.get_terminal_size((100, 30))
        header = ("TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION")
        with self._lock:
            rows = list(self.rows)[-(height - 3):]
        cells = [header, *rows]
        widths = [8, 7, 6, 24, 0, 8, 8]
        widths[4] = max(10, width - sum(widths) - 7)
        lines = [
            " ".join(c[:w].ljust(w) for c, w in zip(row, widths))[:width] for row in cells
        ]
        state = session.state.value.upper()
        status = (f" {session.name} | {state} | {session.counts.recorded} recorded | "
                  f"{session.elapsed:.0f}s | {KEYS} ")
        screen = "\x1b[H\x1b[2J" + "\n".join(lines) + f"\x1b[{height};1H\x1b[7m{status[:width].ljust(width)}\x1b[0m"
        self.out.write(screen)
        self.out.flush()

    def finished(self, session: Session) -> None:
        """Print the session's summary after it ended."""
        c = session.counts
        print(f"session {session.name!r} ended after {session.elapsed:.1f}s: {c.recorded} recorded, "
              f"{c.filtered} filtered out, {c.paused} while paused", file=self.out, flush=True)


def _version() -> str:
    import flowtap

    return flowtap.__version__
