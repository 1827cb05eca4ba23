"""The HAR journal: the HAR itself, written as it grows, closed and renamed at the end.

A journal is a HAR file missing only its last line. Its first line opens
the HAR up to its entries (``{"log":{"version":"1.2", ..., "_flowtap":
{"journal": 1, ...}, "entries":[``); each further line is one entry (all but
the first with a leading comma). Lines are only ever appended, so a crash
can at worst tear the last one. Ending a session appends the closing line
(``]}}``) and renames the journal to the HAR: finalizing touches none of
the entries, however many gigabytes they hold, so Ctrl-C stays fast.

``flowtap har finalize`` turns a journal left by a crashed run into a HAR
(:func:`finalize`: streams it line by line, dropping a torn last line). It
also reads the journals of earlier versions, whose first line was
``{"flowtap_har_journal": 1, ...}`` and whose lines were bare entries.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

import flowtap
from flowtap.paths import atomic_writer
from flowtap.serialize import json_bytes

MARK = "flowtap_har_journal"  # the first line of an earlier version's journal
SUFFIX = ".journal"
#: How a journal's first line ends: the HAR's entries begin.
OPEN = b',"entries":['
#: What closes a HAR whose entries were written.
CLOSE = b"]}}\n"


def journal_path(target: Path) -> Path:
    """A journal path next to ``target`` that no earlier run left behind."""
    path = target.with_name(target.name + SUFFIX)
    number = 2
    while path.exists():
        path = target.with_name(f"{target.name}.{number}{SUFFIX}")
        number += 1
    return path


def head(target: Path, session: Any) -> bytes:
    """The journal's first line: the HAR's opening, up to its entries, and a newline."""
    log: dict[str, Any] = {"version": "1.2", "creator": {"name": "flowtap", "version": flowtap.__version__},
                           "pages": []}
    if session.name:
        log["comment"] = f"flowtap session {session.name}"
    log["_flowtap"] = {"journal": 1, "har": target.name, "session_id": session.id}
    return b'{"log":' + json_bytes(log)[:-1] + OPEN + b"\n"


def dump(obj: Any) -> bytes:
    """One JSON line in UTF-8 (:func:`flowtap.serialize.json_bytes`)."""
    return json_bytes(obj) + b"\n"


def _log_head(meta: dict[str, Any]) -> bytes:
    """The HAR's opening for an earlier version's journal."""
    log: dict[str, Any] = {
        "version": "1.2",
        "creator": meta.get("creator") or {"name": "flowtap", "version": flowtap.__version__},
        "pages": [],
    }
    if meta.get("session"):
        log["comment"] = f"flowtap session {meta['session']}"
    return b'{"log":' + dump(log).rstrip(b"\n")[:-1] + OPEN


def _parse_head(line: bytes) -> dict[str, Any] | None:
    """The ``log`` object a journal's first line opens (without entries), or None if it is not one."""
    if not (line.startswith(b'{"log":') and line.rstrip(b"\n").endswith(OPEN)):
        return None
    try:
        data = json.loads(line.rstrip(b"\n")[: -len(OPEN)] + b"}}")
    except ValueError:
        return None
    log = data.get("log") if isinstance(data, dict) else None
    return log if isinstance(log, dict) else None


def read_meta(fh: BinaryIO) -> dict[str, Any]:
    """What the journal's first line says (``har``: the HAR it is for), or ``{}`` (position rewound).

    Reads both this version's journals (``opening`` then holds the line, to be copied as it is)
    and earlier ones'.
    """
    first = fh.readline()
    log = _parse_head(first)
    if log is not None:
        meta = dict(log.get("_flowtap") or {})
        meta["opening"] = first.rstrip(b"\n")
        return meta
    try:
        old = json.loads(first)
    except ValueError:
        old = None
    if isinstance(old, dict) and MARK in old:
        return old
    fh.seek(0)
    return {}


def finalize(journal: Path, out: Path, check: bool = False) -> tuple[int, int]:
    """Write the HAR at ``out`` (atomically) from the entries in ``journal``, a copy streamed line by line.

    For a journal left behind by a crash; a session that ends renames its journal instead.

    :param check: parse each line and skip those that are not JSON objects
        (for journals left by a crash); without it only a torn last line is skipped.
    :return: ``(entries written, lines skipped)``.
    """
    written = skipped = 0
    with open(journal, "rb") as src, atomic_writer(out) as dst:
        meta = read_meta(src)
        dst.write(meta.get("opening") or _log_head(meta))
        for line in src:
            if not line.strip():
                continue
            if not line.endswith(b"\n"):  # torn by a crash while it was written
                skipped += 1
                continue
            if line == CLOSE:  # closed, but not renamed
                break
            entry = memoryview(line)[1 if line.startswith(b",") else 0:-1]
            if check:
                try:
                    if not isinstance(json.loads(entry.tobytes()), dict):
                        raise ValueError
                except ValueError:
                    skipped += 1
                    continue
            dst.write(b"\n" if written == 0 else b",\n")
            dst.write(entry)
            written += 1
        dst.write(b"\n" + CLOSE)
    return written, skipped


def default_output(journal: Path) -> Path:
    """Where ``flowtap har finalize`` writes by default: the HAR the journal was for."""
    try:
        with open(journal, "rb") as fh:
            target = read_meta(fh).get("har")
    except OSError:
        target = None
    if target:
        return journal.with_name(target) if "/" not in target else Path(target)
    name = journal.name
    for suffix in (SUFFIX, ".jsonl"):
        if name.endswith(suffix):
            return journal.with_name(name[: -len(suffix)] or "flowtap.har")
    return journal.with_name(name + ".har")


def setup_command(parser) -> None:
    from flowtap.commandline import describe

    describe(parser, "The HAR sink's files. It writes a journal while the session runs and the HAR when it "
                     "ends; after a crash, `finalize` turns the journal into the HAR.",
             "flowtap har finalize flowtap-checkout.har.journal")
    actions = parser.add_subparsers(dest="har_action", metavar="ACTION", required=True)
    fin = actions.add_parser("finalize", help="turn a journal left behind by a crashed run into a HAR file")
    describe(fin, "Write the HAR file a journal was for. `flowtap run` finalizes its journals "
                  "itself when the session ends; a *.har.journal file remains only after a crash.",
             "flowtap har finalize capture.har.journal",
             "flowtap har finalize capture.har.journal -o recovered.har --keep")
    fin.add_argument("journal", help="the journal file (e.g. capture.har.journal)")
    fin.add_argument("-o", "--output", help="the HAR to write (default: the path the journal was for)")
    fin.add_argument("--force", action="store_true", help="replace the output file if it exists")
    fin.add_argument("--keep", action="store_true", help="keep the journal (default: delete it once written)")


def run_command(args) -> int:
    journal = Path(args.journal)
    if not journal.is_file():
        print(f"flowtap: error: {journal}: no such journal file", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else default_output(journal)
    if out.exists() and not args.force:
        print(f"flowtap: error: {out}: already exists; pass -o PATH or --force", file=sys.stderr)
        return 2
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        written, skipped = finalize(journal, out, check=True)
    except OSError as exc:
        print(f"flowtap: error: {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    note = f", {skipped} damaged line(s) skipped" if skipped else ""
    print(f"{out}: {written} entries{note}")
    if not args.keep:
        journal.unlink()
    return 0
