"""What ``flowtap run`` shows: a live table on a terminal, one line per flow otherwise.

The live table keeps the start-up facts (where the sources listen, what to give
clients) at the top and a message area for warnings and errors at the bottom:
while it is drawn, records of the ``flowtap`` logger go there instead of over the
table, and are printed in full (tracebacks too) once the table is gone.
"""

from __future__ import annotations

import codecs
import collections
import logging
import os
import select
import shutil
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, TextIO

from flowtap.api import Sink
from flowtap.plugins import hookimpl
from flowtap.session import State
from flowtap.store.render import duration, host_port, size
from flowtap.terminal import terminal_safe

if TYPE_CHECKING:
    from flowtap.capture import Capture
    from flowtap.health import SinkHealth
    from flowtap.model import Flow
    from flowtap.session import Session

KEYS = "p pause  r resume  c clear  m mark  q end"
#: Seconds between two looks at what changed (flows, messages, the clock) in the live view.
TICK = 0.25
#: Rows the live view keeps (flows and markers): the latest, as many as a tall terminal shows.
ROWS_KEPT = 500
#: Columns of the HOST column: it grows up to HOST_WIDTH_MAX for longer ``host:port``s.
HOST_WIDTH, HOST_WIDTH_MAX = 24, 40
#: Columns PATH keeps on a narrow terminal (HOST gives way first, down to 10).
PATH_WIDTH_MIN = 20
#: Characters a marker typed after `m` may have.
MARKER_CHARS = 200
#: Messages the live view shows at once (the latest).
MESSAGE_LINES = 5
#: Characters of log output held back while the live view is drawn, printed after it
#: (past this, the oldest are dropped).
HELD_CHARS = 1_000_000
#: The plugin name ``flowtap run`` registers the view under (its console sink is not one of the user's).
VIEW_PLUGIN = "flowtap-view"


class Row(NamedTuple):
    """One flow as the live table's cells; ``error`` is "" for a flow that did not fail."""

    time: str
    method: str
    status: str
    host: str
    path: str
    size: str
    duration: str
    error: str


class Marker(NamedTuple):
    """A marker between the flows of the live table."""

    time: str
    text: str


def flow_row(flow: Flow) -> Row:
    """One flow as table cells, terminal-safe; HOST carries the port where it is not the default."""
    response = flow.response
    status = str(response.status_code) if response else ("ERR" if flow.error else "-")
    duration = flow.timings.duration
    request = flow.request
    return Row(
        time.strftime("%H:%M:%S", time.localtime(flow.timings.start)),
        terminal_safe(request.method),
        status,
        terminal_safe(host_port(request.host, request.port, request.scheme)),
        terminal_safe(request.path),
        size(response.body_size if response else None),
        "-" if duration is None else f"{duration:.0f}ms",
        terminal_safe(flow.error or ""),
    )


def flow_line(flow: Flow) -> str:
    """One flow as a log line; failures carry their error."""
    row = flow_row(flow)
    line = f"{row.time} {row.method:<7} {row.status:>3} {row.host}{row.path}  {row.size} {row.duration}"
    return f"{line}  ({row.error})" if row.error else line


def marker_line(text: str) -> str:
    """A marker as a log line."""
    return f"-- {time.strftime('%H:%M:%S')} marker: {terminal_safe(text)} --"


class _ViewSink(Sink):
    """The view's console sink: flows and markers reach it in the order they happened."""

    def __init__(self, view: ConsoleView) -> None:
        self.view = view

    def write(self, flow: Flow) -> None:
        self.view.add(flow)

    def flush(self) -> None:
        self.view.flush()

    @hookimpl
    def flowtap_session_clear(self) -> None:
        self.view.cleared()

    @hookimpl
    def flowtap_session_mark(self, text: str) -> None:
        self.view.marked(text)


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
    """Shows flows as they are recorded, and takes p/r/c/m/q from the keyboard.

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
        self.rows: collections.deque[Row | Marker] = collections.deque(maxlen=ROWS_KEPT)
        self._lock = threading.Lock()
        self._early: list[str] | None = []  # lines held back until the banner is out
        self._facts: list[str] = []  # the start-up lines, kept at the top of the live table
        self._prompt: str | None = None  # the marker text being typed after `m`
        self._host_width = HOST_WIDTH
        self.area: MessageArea | None = None
        if interactive:  # from now on: what sinks log as the sources start belongs in it too
            self.area = MessageArea(logging.getLogger("flowtap"))
            self.area.attach()

    @hookimpl
    def flowtap_register_sinks(self, register):
        if self.per_flow:
            register("console", lambda options: _ViewSink(self), default=True)

    # -- what the console sink hands over (on its own thread) ------------------------------------

    def add(self, flow: Flow) -> None:
        if self.interactive:
            row = flow_row(flow)
            with self._lock:
                self.rows.append(row)
        else:
            self._plain(flow_line(flow))

    def marked(self, text: str) -> None:
        if self.interactive:
            with self._lock:
                self.rows.append(Marker(time.strftime("%H:%M:%S"), terminal_safe(text)))
        else:
            self._plain(marker_line(text))

    def cleared(self) -> None:
        with self._lock:
            self.rows.clear()

    def _plain(self, line: str) -> None:
        with self._lock:
            if self._early is not None:
                self._early.append(line)
                return
        self.out.write(line + "\n")

    def flush(self) -> None:
        """Show the lines of a batch at once (one write per batch, not per flow)."""
        if not self.interactive:
            self.out.flush()

    # -- start-up ---------------------------------------------------------------------------------

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

    # -- the live table ---------------------------------------------------------------------------

    def run_until(self, stop: threading.Event, signalled: Callable[[], bool] = lambda: False) -> None:
        """Block until ``stop`` is set or ``signalled()`` is true (a signal handler's flag: it must take
        no lock), drawing the table and handling keys when interactive."""
        if not self.interactive:
            # In short waits: when Ctrl-C reaches another thread than this one, Python runs the
            # handler here only between waits (an endless wait missed it, now and then, for good).
            while not (stop.wait(0.1) or signalled()):
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
        screen = _Screen(self.out)
        keys = _Keys()
        # A resize wakes the loop at once (the handler writes to a pipe it waits on); the size is
        # looked at on every tick as well, so a resize is never missed.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGWINCH, lambda *_: _poke(wake_w))
        try:
            screen.open()
            while not (stop.is_set() or signalled()):
                screen.draw(*self._screen_lines(*screen.size()))
                ready, _, _ = select.select([fd, wake_r], [], [], TICK)
                if wake_r in ready:
                    os.read(wake_r, 64)
                if fd in ready:
                    for key in keys.feed(os.read(fd, 1024)):
                        self._key(key, stop)
        finally:
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            os.close(wake_r)
            os.close(wake_w)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            screen.close()
            area.free_terminal()

    def _key(self, key: str, stop: threading.Event) -> None:
        session = self.capture.session
        if session is None:
            return
        if self._prompt is not None:
            self._prompt_key(key, session)
            return
        key = key.lower()
        actions = {"p": session.pause, "r": session.resume, "c": session.clear}
        if key in actions:
            actions[key]()
        elif key == "m":
            self._prompt = ""
        elif key == "q":
            stop.set()

    def _prompt_key(self, key: str, session: Session) -> None:
        """A key while the marker's text is asked for: Enter sets the marker, Esc cancels."""
        text = self._prompt or ""
        if key in ("\r", "\n"):
            self._prompt = None
            session.mark(text.strip() or time.strftime("mark %H:%M:%S"))
        elif key == "\x1b":
            self._prompt = None
        elif key in ("\x7f", "\b"):
            self._prompt = text[:-1]
        elif key == "\x15":  # Ctrl-U
            self._prompt = ""
        elif len(key) == 1 and key.isprintable() and len(text) < MARKER_CHARS:
            self._prompt = text + key

    def _screen_lines(self, width: int, height: int) -> tuple[list[str], int | None]:
        """The lines of the screen (the status line last), and the cursor's column on it (or None)."""
        session = self.capture.session
        if session is None or width < 1 or height < 1:
            return [], None
        messages, count = self.area.snapshot() if self.area else ([], 0)
        if count > len(messages):
            ruler = f"-- messages: the last {len(messages)} of {count} "
        else:
            ruler = "-- messages " if count else "-- messages: none "
        bottom = [_REVERSE + _fit(ruler, width, "-") + _RESET,
                  *(_fit(terminal_safe(m), width) for m in messages)]
        facts = [_fit(f, width) for f in self._facts]
        # The table keeps at least 3 rows: the facts give way first on a short terminal.
        facts = facts[:max(0, height - 1 - len(bottom) - 1 - 3)]
        room = max(0, height - 1 - len(bottom) - len(facts) - 1)
        with self._lock:
            rows = list(self.rows)[-room:] if room else []
        table = [*self._table(rows, width), *[""] * (room - len(rows))]
        lines = [*facts, *table, *bottom][:height - 1]
        status, cursor = self._status(session, width)
        return [*lines, *[""] * (height - 1 - len(lines)), status], cursor

    def _table(self, rows: list[Row | Marker], width: int) -> list[str]:
        """The header and the rows, fit to ``width``; failed flows in red with their error."""
        for row in rows:
            if isinstance(row, Row) and len(row.host) > self._host_width:
                self._host_width = min(HOST_WIDTH_MAX, len(row.host))  # grows, never jumps back
        fixed = 8 + 7 + 6 + 8 + 8 + 6  # TIME METHOD STATUS SIZE DURATION, and the blanks between
        host = max(10, min(self._host_width, width - fixed - PATH_WIDTH_MIN))  # on a narrow screen
        widths = [8, 7, 6, host, max(10, width - fixed - host), 8, 8]
        header = ("TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION")
        lines = [_fit(" ".join(_fit(c, w) for c, w in zip(header, widths, strict=True)), width)]
        for row in rows:
            if isinstance(row, Marker):
                lines.append(_BOLD + _fit(f"-- {row.time} marker: {row.text} ", width, "-") + _RESET)
                continue
            path = row.path
            if row.error:  # the error after the path, the path shortened so that the error shows
                path = f"{_fit(path, max(12, widths[4] - _width(row.error) - 4)).rstrip()}  ! {row.error}"
            cells = (*row[:4], path, row.size, row.duration)
            line = _fit(" ".join(_fit(c, w) for c, w in zip(cells, widths, strict=True)), width)
            lines.append(_RED + line + _RESET if row.error else line)
        return lines

    def _status(self, session: Session, width: int) -> tuple[str, int | None]:
        """The status line, or the marker prompt with the cursor's column."""
        if self._prompt is not None:
            hint = "  (Enter sets it, Esc cancels)"
            text = self._prompt[-max(1, width - len(" marker: ") - len(hint) - 1):]
            head = f" marker: {text}"
            return _REVERSE + _fit(head + hint, width) + _RESET, min(width, _width(head) + 1)
        c = session.counts
        paused = f" | {c.paused} while paused" if c.paused or session.state is State.PAUSED else ""
        status = (f" {session.name} | {session.state.value.upper()} | {c.recorded} recorded{paused} | "
                  f"{duration(session.elapsed)}{self._sinks_status()} | {KEYS} ")
        return _REVERSE + _fit(status, width) + _RESET, None

    def _sinks_status(self) -> str:
        """`` | sink 'har' failing`` for the sinks not doing well, and what sinks note of their state;
        empty when there is nothing to say."""
        said = [f"sink {h.name!r} {h.state if h.state != 'ok' else 'missed flows'}"
                for h in self.capture.health() if not h.clean]
        said += [f"{h.name}: {terminal_safe(h.note)}" for h in self.capture.health() if h.note]
        return " | " + ", ".join(said) if said else ""

    # -- the end ----------------------------------------------------------------------------------

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


# -- the terminal, in raw ANSI ------------------------------------------------------------------------

_REVERSE, _BOLD, _RED, _RESET = "\x1b[7m", "\x1b[1m", "\x1b[31m", "\x1b[0m"


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"w")
    except OSError:  # the pipe is full: the loop is woken already
        pass


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal (wide East Asian characters take two)."""
    return len(text) if text.isascii() else sum(map(_char_width, text))


def _fit(text: str, width: int, fill: str = " ") -> str:
    """``text`` cut or padded to exactly ``width`` columns; a cut is shown by a last ``~``."""
    total = _width(text)
    if total <= width:
        return text + fill * (width - total)
    if width < 1:
        return ""
    out, used = [], 0
    for char in text:
        w = _char_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "~" * (width - used)


class _Keys:
    """Bytes read from the terminal as keys: characters, lone Esc, and escape sequences in one piece
    (an arrow key is one key, ``\\x1b[A``, not an Esc followed by letters)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> list[str]:
        text = self._decoder.decode(data)
        keys, i = [], 0
        while i < len(text):
            if text[i] == "\x1b" and i + 1 < len(text):
                end = i + 2
                if text[i + 1] in "[O":  # CSI or SS3: parameters, then a final byte @..~
                    while end < len(text) and not ("@" <= text[end] <= "~"):
                        end += 1
                    end = min(end + 1, len(text))
                keys.append(text[i:end])
                i = end
            else:
                keys.append(text[i])
                i += 1
        return keys


class _Screen:
    """The terminal's alternate screen, drawn line by line: only the lines that changed are written.

    Each change is one write, framed as a synchronized update (terminals that know it show it at
    once; others ignore the frame). A new size clears the screen and draws it whole, once.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shown: list[str] = []
        self._size: tuple[int, int] | None = None
        self._cursor: int | None = None

    def size(self) -> tuple[int, int]:
        try:
            columns, lines = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            columns, lines = shutil.get_terminal_size((100, 30))
        if (columns, lines) != self._size:
            self._size = (columns, lines)
            self.shown = []
        return columns, lines

    def open(self) -> None:
        self.out.write("\x1b[?1049h\x1b[?25l\x1b[2J")  # alternate screen, hide the cursor
        self.out.flush()

    def close(self) -> None:
        self.out.write("\x1b[?25h\x1b[?1049l")
        self.out.flush()

    def draw(self, lines: list[str], cursor: int | None) -> None:
        parts = []
        if not self.shown and lines:
            parts.append("\x1b[2J")
        for i, line in enumerate(lines):
            if i >= len(self.shown) or self.shown[i] != line:
                # Lines with text are as wide as the screen; an empty one clears its row.
                parts.append(f"\x1b[{i + 1};1H{line}" + ("" if line else "\x1b[K"))
        if parts or cursor != self._cursor:
            if cursor is not None:
                parts.append(f"\x1b[{len(lines)};{cursor + 1}H\x1b[?25h")
            elif self._cursor is not None:
                parts.append("\x1b[?25l")
            self._cursor = cursor
        if parts:
            self.out.write("\x1b[?2026h" + "".join(parts) + "\x1b[?2026l")
            self.out.flush()
        self.shown = lines


def health_table(sinks: Iterable[SinkHealth]) -> list[str]:
    """Each sink's health as the lines of a table: name, state, written, errors, missed, what went wrong."""
    rows = [("SINK", "STATE", "WRITTEN", "ERRORS", "MISSED", "")]
    for h in sinks:
        notes = [h.note] if h.note else []
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
