"""How the run's sinks and plugins are doing, and how their errors reach the user: once, then summarised."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import threading
import traceback

import attrs

log = logging.getLogger("flowtap")

#: Seconds between the summaries of repeated errors.
SUMMARY_INTERVAL = 10.0


@attrs.define
class SinkHealth:
    """What one sink did in the session: shown in the summary, ``flowtap ctl status`` and the live view."""

    name: str  #: the registered sink name, e.g. ``"har"``
    plugin: str  #: the plugin that registered it
    written: int = 0  #: flows ``write`` took without raising
    errors: int = 0  #: calls that raised
    missed: int = 0  #: flows it never got (backlog full, detached) or said it lost (``SinkFailed.lost``)
    #: ``ok``, ``failing`` (has raised), ``detached`` (a call hung) or ``abandoned`` (did not close in time)
    state: str = "ok"
    last_error: str = ""  #: one line
    backlog: int = 0  #: flows waiting for it now
    stuck_in: str = ""  #: for ``detached`` and ``abandoned``: the call and where it was stuck
    note: str = ""  #: what the sink says of its state that is no error (its ``status``)

    @property
    def clean(self) -> bool:
        """No error, nothing missed, never detached or abandoned."""
        return self.state == "ok" and not self.errors and not self.missed

    def as_dict(self) -> dict[str, object]:
        """Plain data, for JSON."""
        return {**attrs.asdict(self), "clean": self.clean}


def one_line(exc: BaseException) -> str:
    """``ValueError: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ErrorLog:
    """Logs the first error of each culprit and call with its traceback; counts repeats for a summary.

    :meth:`summarize` (every :data:`SUMMARY_INTERVAL` seconds and at the end of
    the run) logs one line per culprit and call that raised again since: how
    many times, and the last message.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._repeats: dict[tuple[str, str], tuple[int, str]] = {}
        self.count = 0

    def report(self, who: str, where: str, exc: BaseException, trace: bool = True) -> None:
        """Report ``exc`` raised by ``who`` (``"sink 'har'"``) in ``where`` (``"write"``).

        :param trace: an unexpected error: the first of each culprit and call is logged with its
            traceback. False: an error that explains itself (``SinkFailed``): ``where`` is a phrase
            (``"failed in flush"``), and the first of each culprit and kind of error is logged as is.
        """
        key = (who, where if trace else type(exc).__name__)
        text = f"raised in {where}: {one_line(exc)}" if trace else f"{where}: {' '.join(str(exc).split())}"
        with self._lock:
            self.count += 1
            first = key not in self._seen
            if first:
                self._seen.add(key)
            else:
                count, _ = self._repeats.get(key, (0, ""))
                self._repeats[key] = (count + 1, text)
        if first:
            exc_info = (type(exc), exc, exc.__traceback__) if trace else None
            log.error("%s %s", who, text, exc_info=exc_info)

    def summarize(self) -> None:
        """Log one line per culprit and kind of error that came again since the last summary."""
        with self._lock:
            repeats, self._repeats = self._repeats, {}
        for (who, _), (count, last) in repeats.items():
            log.error("%s: %d more time%s; last: %s", who, count, "s" * (count != 1), last)


def where_stuck(thread: threading.Thread | None) -> tuple[str, str]:
    """Where ``thread`` is: one line (its innermost frame outside the standard library), and its stack."""
    frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
    if frame is None:
        return "unknown", ""
    stack = traceback.extract_stack(frame)
    stdlib = sysconfig.get_paths()["stdlib"]
    innermost = stack[-1]
    own = next((f for f in reversed(stack) if not f.filename.startswith(stdlib)), innermost)
    line = f"{own.filename}:{own.lineno} in {own.name}" + (f": {own.line}" if own.line else "")
    if own is not innermost:
        line += f" (in {os.path.basename(innermost.filename)}:{innermost.lineno} {innermost.name})"
    return line, "".join(stack.format())
