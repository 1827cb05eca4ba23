"""The HAR journal: entries appended one JSON line at a time, finalized into one HAR file.

A journal's first line describes it (``{"flowtap_har_journal": 1, ...}``:
the HAR it is for, the session, the creator); each further line is one
entry. Lines are only ever appended, so a crash can at worst tear the last
one; :func:`finalize` streams the lines into a HAR without holding them in
memory, which is also what ``flowtap har finalize`` does with a journal
left behind by a crashed run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

import flowtap
from flowtap.paths import atomic_writer
from flowtap.serialize import json_bytes

MARK = "flowtap_har_journal"
SUFFIX = ".journal"


def journal_path(target: Path) -> Path:
    """A journal path next to ``target`` that no earlier run left behind."""
    path = target.with_name(target.name + SUFFIX)
    number = 2
    while path.exists():
        path = target.with_name(f"{target.name}.{number}{SUFFIX}")
        number += 1
    return path


def header(target: Path, session: Any) -> dict[str, Any]:
    """The journal's first line: what :func:`finalize` needs to write the HAR."""
    return {MARK: 1, "har": str(target), "session": session.name, "session_id": session.id,
            "creator": {"name": "flowtap", "version": flowtap.__version__}}


def dump(obj: Any) -> bytes:
    """One JSON line in UTF-8 (:func:`flowtap.serialize.json_bytes`)."""
    return json_bytes(obj) + b"\n"


def _log_head(meta: dict[str, Any]) -> bytes:
    log: dict[str, Any] = {
        "version": "1.2",
        "creator": meta.get("creator") or {"name": "flowtap", "version": flowtap.__version__},
        "pages": [],
    }
    if meta.get("session"):
        log["comment"] = f"flowtap session {meta['session']}"
    return b'{"log":' + dump(log).rstrip(b"\n")[:-1] + b',"entries":['


def read_meta(fh: BinaryIO) -> dict[str, Any]:
    """The journal's header line, or ``{}`` (position rewound) if it has none."""
    first = fh.readline()
    try:
        meta = json.loads(first)
    except ValueError:
        meta = None
    if isinstance(meta, dict) and MARK in meta:
        return meta
    fh.seek(0)
    return {}


def finalize(journal: Path, out: Path, check: bool = False) -> tuple[int, int]:
    """Write the HAR at ``out`` (atomically) from the entries in ``journal``.

    :param check: parse each line and skip those that are not JSON objects
        (for journals left by a crash); without it only a torn last line is skipped.
    :return: ``(entries written, lines skipped)``.
    """
    written = skipped = 0
    with open(journal, "rb") as src, atomic_writer(out) as dst:
        meta = read_meta(src)
        dst.write(_log_head(meta))
        for line in src:
            if not line.strip():
                continue
            if not line.endswith(b"\n"):  # torn by a crash while it was written
                skipped += 1
                continue
            if check:
                try:
                    if not isinstance(json.loads(line), dict):
                        raise ValueError
                except ValueError:
                    skipped += 1
                    continue
            dst.write(b"\n" if written == 0 else b",\n")
            dst.write(line[:-1])
            written += 1
        dst.write(b"\n]}}\n")
    return written, skipped


def default_output(journal: Path) -> Path:
    """Where ``flowtap har finalize`` writes by default: the HAR the journal was for."""
    try:
        with open(journal, "rb") as fh:
            target = read_meta(fh).get("har")
    except OSError:
        target = None
    if target:
        return Path(target)
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
