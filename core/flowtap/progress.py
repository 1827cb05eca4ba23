"""A one-line progress report on the terminal for work that takes more than a second.

Used by ``flowtap export`` and ``flowtap search``. The line goes to stderr and is
redrawn in place; when stderr is not a terminal nothing is written at all, so
piped and redirected output (and logs) stay clean::

    with Progress("exporting session 'checkout'", total=5000) as progress:
        for flow in flows:
            ...
            progress.advance()
            progress.print(line)     # a result line: the progress line steps aside for it
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

#: Seconds of work before the progress line appears.
DELAY = 1.0
#: Seconds between redraws.
INTERVAL = 0.2


class Progress:
    """Counts work done and, past :data:`DELAY` seconds, shows it on stderr if stderr is a terminal.

    :param label: what is being done, e.g. ``"searching session 'checkout'"``.
    :param total: how many items there are, when known (shows "N of TOTAL" and a percentage).
    :param unit: what is counted, after the number ("flows", "found").
    :param stream: where the line goes (default ``sys.stderr``); nothing unless it is a terminal.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "flows", *,
                 stream: TextIO | None = None, delay: float = DELAY, interval: float = INTERVAL) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        #: Items done so far; :meth:`advance` adds to it.
        self.count = 0
        #: Shown last, e.g. "finishing out.har".
        self.note = ""
        self.stream = stream if stream is not None else sys.stderr
        self.delay, self.interval = delay, interval
        self.enabled = _is_terminal(self.stream)
        self._started = time.monotonic()
        self._drawn = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="flowtap-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.count += n

    def print(self, text: str, file: TextIO | None = None) -> None:
        """Print a line of output (default to stdout) without the progress line getting in its way."""
        out = file if file is not None else sys.stdout
        with self._lock:
            self._erase()
            print(text, file=out)
            if self.enabled:  # out before the line is drawn again
                out.flush()

    def close(self) -> None:
        """Stop drawing and erase the line; idempotent."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._erase()

    def line(self) -> str:
        """The progress line as it would be drawn now."""
        count = f"{self.count:,}" + (f" of {self.total:,}" if self.total else "")
        percent = f" ({100 * self.count // self.total}%)" if self.total else ""
        note = f", {self.note}" if self.note else ""
        return f"{self.label}: {count} {self.unit}{percent}, {time.monotonic() - self._started:.0f}s{note}"

    def _run(self) -> None:
        if self._done.wait(self.delay):
            return
        while not self._done.is_set():
            with self._lock:
                self._draw()
            self._done.wait(self.interval)

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        try:
            self.stream.write("\r" + self.line()[:width] + "\x1b[K")
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away
            self._done.set()
            return
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
