"""Output paths for file sinks: placeholders, directories, and an early writability check.

A sink that writes files takes a path template from its config table and
resolves it in ``open(session)``::

    self.path = expand_path(options["path"], session)
    check_writable(self.path)

Both raise :class:`flowtap.SinkError` with the path and the reason, which
stops the run at start-up with a message the user can act on.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from flowtap.api import SinkError

#: How the ``{date}`` placeholder renders the session's start (local time).
DATE_FORMAT = "%Y-%m-%d_%H%M%S"

_UNSAFE = re.compile(r"[^\w.-]+")


class _SessionLike(Protocol):
    name: str
    started: float


def safe_filename(text: str, default: str = "session", limit: int = 100) -> str:
    """``text`` made safe as one path component.

    Runs of anything but letters, digits, ``.``, ``_`` and ``-`` become one
    ``-``; leading and trailing dots and dashes go; at most ``limit``
    characters; ``default`` when nothing is left.
    """
    cleaned = _UNSAFE.sub("-", text).strip(".-")[:limit].strip(".-")
    return cleaned or default


def expand_path(template: str | os.PathLike, session: _SessionLike) -> Path:
    """The path ``template`` names for ``session``, its parent directories created.

    ``{session}`` becomes the session name made safe for a file name
    (:func:`safe_filename`), ``{date}`` the session's start in local time
    as ``YYYY-MM-DD_HHMMSS``; ``~`` is expanded. Other braces are left as
    they are. Placeholders may appear in directory names too.

    :raises SinkError: the parent directory cannot be created (names the
        path and the reason).
    """
    text = os.fspath(template)
    text = text.replace("{session}", safe_filename(session.name))
    text = text.replace("{date}", time.strftime(DATE_FORMAT, time.localtime(session.started)))
    path = Path(text).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a directory" if blocker else _reason(exc)
        raise SinkError(f"{path}: cannot create directory {path.parent}: {reason}") from None
    return path


def unused_path(path: Path, companions: tuple[str, ...] = ()) -> Path:
    """``path``, or the first of ``NAME-2.EXT``, ``NAME-3.EXT``... that nothing holds yet.

    A file sink that writes a file of its own session (a HAR, a collection)
    takes its path through this, so that a rerun with the same config (after
    a crash, say) never overwrites another session's file. ``companions`` are
    suffixes of files that claim the name too (``".journal"``: a crashed
    session's journal, which will become that HAR).
    """
    def taken(candidate: Path) -> bool:  # a directory in the way is check_writable's to report
        return (candidate.exists() and not candidate.is_dir()) or any(
            candidate.with_name(candidate.name + s).exists() for s in companions)

    if not taken(path):
        return path
    stem, suffix = path.name, ""
    for known in (".postman_collection.json", ".har", ".json"):
        if path.name.endswith(known) and path.name != known:
            stem, suffix = path.name[: -len(known)], known
            break
    else:
        stem, suffix = path.stem or path.name, path.suffix if path.stem else ""
    number = 2
    while taken(candidate := path.with_name(f"{stem}-{number}{suffix}")):
        number += 1
    return candidate


def check_writable(path: Path) -> None:
    """Make sure a file can be created or replaced at ``path``, or raise.

    Creates and removes a scratch file next to ``path`` (the way an atomic
    rewrite works), and refuses a directory or a read-only existing file.

    :raises SinkError: naming the path and the reason.
    """
    if path.is_dir():
        raise SinkError(f"{path}: is a directory; expected a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise SinkError(f"{path}: the file exists and is not writable")
    try:
        with tempfile.TemporaryFile(dir=path.parent or "."):
            pass
    except OSError as exc:
        raise SinkError(f"{path}: cannot write in {path.parent}: {_reason(exc)}") from None


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Write ``path`` all at once: readers see the old file or the new one, never half.

    Yields a binary file in the same directory; when the block ends without
    an exception the file is flushed to disk and renamed over ``path``,
    otherwise it is removed and ``path`` is left as it was. ``mode`` is the
    new file's permission bits (owner-only by default: captures hold secrets).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
