"""What ``flowtap run`` shows: a live table on a terminal, one line per flow otherwise.

The live table keeps the start-up facts (where the sources listen, what to give
clients) at the top and a message area for warnings and errors at the bottom:
while it is drawn, records of the ``flowtap`` logger go there instead of over the
table, and are printed in full (tracebacks too) once the table is gone.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from flowtap.api import Sink
from flowtap.plugins import hookimpl
from flowtap.terminal import terminal_safe

if TYPE_CHECKING:
    from flowtap.capture import Capture
    from flowtap.health import SinkHealth
    from flowtap.model import Flow
    from flowtap.session import Session

KEYS = "p pause  r resume  c clear  m mark  q end"
#: Messages the live view shows at once (the latest).
MESSAGE_LINES = 5
#: Characters of log output held back while the live view is drawn, printed after it
#: (past this, the oldest are dropped).
HELD_CHARS = 1_000_000
#: The plugin name ``flowtap run`` registers the view under (its console sink is not one of the user's).
VIEW_PLUGIN = "flowtap-view"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def flow_row(flow: Flow) -> tuple[str, ...]:
    """time, method, status, host, path, size, duration: one flow as table cells (terminal-safe)."""
    response = flow.response
    status = str(response.status_code) if response else ("ERR" if flow.error else "-")
    duration = flow.timings.duration
    return (
        time.strftime("%H:%M:%S", time.localtime(flow.timings.start)),
        terminal_safe(flow.request.method),
        status,
        terminal_safe(flow.request.host),
        terminal_safe(flow.request.path),
        _size(response.body_size if response else None),
        "-" if duration is None else f"{duration:.0f}ms",
    )


def flow_line(flow: Flow) -> str:
    """One flow as a log line, terminal-safe; failures carry their error."""
    cells = flow_row(flow)
    line = f"{cells[0]} {cells[1]:<7} {cells[2]:>3} {cells[3]}{cells[4]}  {cells[5]} {cells[6]}"
    return f"{line}  ({terminal_safe(flow.error)})" if flow.error else line


class _ViewSink(Sink):
    def __init__(self, view: ConsoleView) -> None:
        self.view = view

    def write(self, flow: Flow) -> None:
        self.view.add(flow)

    def flush(self) -> None:
        self.view.flush()


class _HeldOutput:
    """Stands in for the terminal in a log handler while the live view is drawn: keeps what is written."""

    def __init__(self, limit: int = HELD_CHARS) -> None:
        self.chunks: collections.deque[str] = collections.deque()
        self.size = 0
        self.dropped = 0  # chunks (records) dropped, the oldest first, past the limit
        self.limit = limit

    def write(self, text: str) -> int:
        self.chunks.append(text)
        self.size += len(text)
        while self.size > self.limit and len(self.chunks) > 1:
            self.size -= len(self.chunks.popleft())
            self.dropped += 1
        return len(text)

    def flush(self) -> None:
        pass


class MessageArea(logging.Handler):
    """The live view's message area: the last few warnings and errors of the ``flowtap`` logger.

    Attached for the whole run, so that what a sink logs as the sources start is
    there too. While the view is drawn (:meth:`hold_terminal`), the logger's
    handlers that print to the terminal write into a buffer instead, printed in
    full (tracebacks too) once the view is gone (:meth:`free_terminal`).
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.NOTSET)
        self.logger = logger
        self.messages: collections.deque[str] = collections.deque(maxlen=MESSAGE_LINES)
        self.count = 0  # warnings and errors so far
        self._held: list[tuple[logging.StreamHandler, object, _HeldOutput]] = []
        self._guard = threading.Lock()

    def attach(self) -> None:
        self.logger.addHandler(self)

    def detach(self) -> None:
        self.free_terminal()
        self.logger.removeHandler(self)

    def hold_terminal(self) -> None:
        """Keep the logger's handlers from printing on the terminal until :meth:`free_terminal`."""
        for handler in list(self.logger.handlers):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and _is_terminal(stream):
                held = _HeldOutput()
                # Under the handler's lock: a record being printed now is out before the view draws.
                handler.setStream(held)
                self._held.append((handler, stream, held))

    def free_terminal(self) -> None:
        """Give the handlers their terminal back, and print on it what they wrote meanwhile."""
        held, self._held = self._held, []
        for handler, stream, output in held:
            handler.setStream(stream)
            if output.dropped:
                handler.stream.write(f"flowtap: {output.dropped} earlier log records of the live view "
                                     "were not kept\n")
            handler.stream.write("".join(output.chunks))
            handler.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        try:
            text = terminal_safe(record.getMessage().strip(), lines=True).splitlines()
            line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname}: "
            line += text[0] if text else ""
            if record.exc_info or len(text) > 1:
                line += " (in full when the view ends)"
            with self._guard:
                self.messages.append(line)
                self.count += 1
        except Exception:  # a handler must not raise into the code that logs
            self.handleError(record)

    def snapshot(self) -> tuple[list[str], int]:
        """The messages to show, oldest first, and how many there were in all."""
        with self._guard:
            return list(self.messages), self.count


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except Exception:
        return False


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
        self._facts: list[str] = []  # the start-up lines, kept at the top of the live table
        self.area: MessageArea | None = None
        if interactive:  # from now on: what sinks log as the sources start belongs in it too
            self.area = MessageArea(logging.getLogger("flowtap"))
            self.area.attach()

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

    def facts(self) -> list[str]:
        """The start-up facts: the session, where each source listens and how to point clients at it."""
        session = self.capture.session
        if session is None:
            return []
        lines = [f"flowtap {_version()}: session {session.name!r} ({session.id})"]
        for name, source in self.capture.sources.items():
            lines.extend(f"  [{name}] {line}" for line in source.describe())
        if session.time_limit:
            lines.append(f"  ends after {session.time_limit:.0f}s")
        return lines

    def started(self) -> None:
        """Print where the sources listen and how to point clients at them."""
        self._facts = self.facts()
        for line in self._facts:
            print(line, file=self.out)
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
        if self.area is None:
            self.area = MessageArea(logging.getLogger("flowtap"))
            self.area.attach()
        area = self.area
        area.hold_terminal()
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
            area.free_terminal()

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
        messages, count = self.area.snapshot() if self.area else ([], 0)
        if count > len(messages):
            ruler = f"-- messages: the last {len(messages)} of {count} "
        else:
            ruler = "-- messages " if count else "-- messages: none "
        bottom = ["\x1b[7m" + ruler.ljust(width, "-")[:width] + "\x1b[0m", *(m[:width] for m in messages)]
        facts = [f[:width] for f in self._facts]
        # The table keeps at least 3 rows: the facts give way first on a short terminal.
        facts = facts[:max(0, height - 1 - len(bottom) - 1 - 3)]
        header = ("TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION")
        room = max(0, height - 1 - len(bottom) - len(facts) - 1)
        with self._lock:
            rows = list(self.rows)[-room:] if room else []
        widths = [8, 7, 6, 24, 0, 8, 8]
        widths[4] = max(10, width - sum(widths) - 7)
        table = [" ".join(c[:w].ljust(w) for c, w in zip(row, widths, strict=True))[:width]
                 for row in (header, *rows)]
        table += [""] * (room - len(rows))
        state = session.state.value.upper()
        status = (f" {session.name} | {state} | {session.counts.recorded} recorded | "
                  f"{session.elapsed:.0f}s{self._sinks_status()} | {KEYS} ")
        lines = [*facts, *table, *bottom][:height - 1]
        # Each line over the last one, cleared to its end (no clearing the whole screen: no flicker).
        screen = ("\x1b[H" + "\x1b[K\r\n".join(lines) + "\x1b[K\x1b[J"
                  + f"\x1b[{height};1H\x1b[7m{status[:width].ljust(width)}\x1b[0m")
        self.out.write(screen)
        self.out.flush()

    def _sinks_status(self) -> str:
        """`` | sink 'har' failing`` for the sinks not doing well; empty when all are."""
        bad = [h for h in self.capture.health() if not h.clean]
        if not bad:
            return ""
        return " | " + ", ".join(f"sink {h.name!r} {h.state if h.state != 'ok' else 'missed flows'}"
                                 for h in bad)

    def close(self) -> None:
        """Stop catching log records for the message area (the run is over)."""
        if self.area is not None:
            self.area.detach()
            self.area = None

    def finished(self, session: Session) -> None:
        """Print the session's summary after it ended: counts, then each sink's health."""
        c = session.counts
        print(f"session {session.name!r} ended after {session.elapsed:.1f}s: {c.recorded} recorded, "
              f"{c.filtered} filtered out, {c.paused} while paused", file=self.out)
        for line in health_table(h for h in self.capture.health() if h.plugin != VIEW_PLUGIN or not h.clean):
            print(f"  {line}", file=self.out)
        self.out.flush()


def health_table(sinks: Iterable[SinkHealth]) -> list[str]:
    """Each sink's health as the lines of a table: name, state, written, errors, missed, what went wrong."""
    rows = [("SINK", "STATE", "WRITTEN", "ERRORS", "MISSED", "")]
    for h in sinks:
        notes = []
        if h.stuck_in:
            notes.append(f"stuck in {h.stuck_in}")
        if h.last_error:
            notes.append(f"last error: {h.last_error}")
        note = terminal_safe("; ".join(notes))  # an error's text may quote what was captured (a URL)
        rows.append((h.name, h.state, str(h.written), str(h.errors), str(h.missed), note))
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 *(row[i].rjust(widths[i]) for i in (2, 3, 4))]
        lines.append(("  ".join(cells) + ("  " + row[5] if row[5] else "")).rstrip())
    return lines


def _version() -> str:
    import flowtap

    return flowtap.__version__
