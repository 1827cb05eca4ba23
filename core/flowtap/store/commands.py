"""``flowtap sessions``, ``search``, ``show`` and ``export``: the session store from the command line.

Every command here but ``sessions rename``/``delete`` opens the store
read-only. Errors (no such session or flow, a bad filter, a store that is
corrupt or from a newer flowtap) are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from flowtap.commandline import (
    UsageError,
    config_from_args as _config,
    describe,
    disabled_plugins as _disabled,
)
from flowtap.config import Config, ConfigError
from flowtap.progress import Progress

if TYPE_CHECKING:
    from flowtap.cookies import Cookie


def _store_key(config: Config, key: str) -> str:
    """``[store] KEY`` as a string (not validated with the plugins: only this key)."""
    table = config.raw.get("store")
    value: Any = table.get(key, "") if isinstance(table, dict) else ""
    if isinstance(value, dict) and set(value) == {"env"}:
        value = os.environ.get(str(value["env"]), "")
    if not isinstance(value, str):
        raise ConfigError(f"{config.where('store', key)}: expected a string, got {value!r}")
    return value


def store_path(config: Config) -> Path:
    """The SQLite store ``[store] path`` names."""
    from flowtap.store import db

    return db.resolve_path(_store_key(config, "path"))


def shown(location: str | Path) -> str:
    """A store's location for people: the file, or the database's URL without its password."""
    from flowtap.store.backend_postgres import is_url, redact

    return redact(str(location)) if is_url(location) else str(location)


def store_location(config: Config) -> str | Path:
    """The store the commands read: ``[store] url`` (a PostgreSQL URL) if set, else ``[store] path``."""
    url = _store_key(config, "url")
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{config.where('store', 'url')}: expected a PostgreSQL URL "
                          f"(postgresql://user@host/db), got {url!r}")
    return url or store_path(config)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Store and filter errors as one-line usage errors (exit 2)."""
    from flowtap.filters import FilterError
    from flowtap.store import StoreError

    try:
        yield
    except (StoreError, FilterError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[Any]:
    from flowtap.store import Store

    location = store_location(_config(args))
    with _errors():
        store = Store(location)
        try:
            yield store
        finally:
            store.close()


# -- sessions ---------------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    """List the stored sessions, newest first."""
    from flowtap.store import Store, render
    from flowtap.store.db import EmptyStore

    location = store_location(_config(args))
    with _errors():
        try:
            store = Store(location)
        except EmptyStore as exc:
            print(f"no sessions recorded yet ({exc.where})")
            return 0
        try:
            sessions = store.sessions(machine=args.machine, user=args.user)
        finally:
            store.close()
    if args.json:
        for s in sessions:
            print(json.dumps(_session_dict(s)))
    elif not sessions:
        print(f"no sessions recorded yet ({store.path})" if args.machine is None and args.user is None
              else "no sessions recorded " + " ".join(
                  f"{what} {value!r}" for what, value in (("on", args.machine), ("by", args.user)) if value))
    else:
        for line in render.sessions_table(sessions):
            print(line)
    return 0


def _session_dict(s: Any) -> dict[str, Any]:
    keys = ("id", "name", "started", "ended", "state", "pid", "flows", "recorded", "filtered", "paused",
            "received", "config", "machine", "user", "seen")
    return {k: getattr(s, k) for k in keys}


def cmd_sessions_show(args: argparse.Namespace) -> int:
    """One session in detail: state, times, counts, config, hosts, events and markers."""
    from flowtap.store import render

    with _store(args) as store:
        session = store.session(args.session)
        events = store.events(session.id)
        if args.json:
            data = _session_dict(session)
            data["events"] = [{"time": e.time, "kind": e.kind, "text": e.text} for e in events]
            print(json.dumps(data, indent=2))
            return 0
        for line in render.session_details(session, events, store.hosts(session.id)):
            print(line)
    return 0


class _Writer:
    """A PostgreSQL connection that takes the shared SQL (``?`` placeholders), as sqlite3's does."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple = ()) -> Any:
        from flowtap.store.backend_postgres import placeholders

        return self.conn.execute(placeholders(sql), params)


@contextlib.contextmanager
def _writable(location: str | Path) -> Iterator[Any]:
    """The store opened for writing (rename, delete); the database's errors as one line."""
    import sqlite3

    from flowtap.store import Store, backend_postgres as pg, db

    with _errors():
        Store(location).close()  # the checks of a read: exists, is a store, not newer, not damaged
        if pg.is_url(location):
            remote = pg.connect(str(location), write=True)
            try:
                yield _Writer(remote)
            except pg.driver().Error as exc:
                raise pg.error(str(location), exc, "write") from None
            finally:
                remote.close()
            return
        path = Path(location)
        conn = db.connect(path, write=True, check=0)
        try:
            yield conn
        except sqlite3.Error as exc:
            raise db.error(path, exc, "write") from None
        finally:
            conn.close()


def cmd_sessions_rename(args: argparse.Namespace) -> int:
    """Give a stored session a new name."""
    session = rename_session(store_location(_config(args)), args.session, args.name)
    print(f"session {session.id}: renamed {session.name!r} to {args.name!r}")
    return 0


def rename_session(location: str | Path, ref: str, name: str) -> Any:
    """Give the stored session ``ref`` names (unambiguously) a new name; its :class:`SessionInfo`
    as it was. The one rename of ``flowtap sessions rename`` and the web UI.

    :raises UsageError: an empty name, no such session, or the store cannot be written.
    """
    from flowtap.store import Store

    if not name.strip():
        raise UsageError("the new name is empty")
    with _errors(), Store(location) as store:
        session = store.session(ref, unique=True)
    with _writable(location) as conn:
        conn.execute("UPDATE sessions SET name = ? WHERE id = ?", (name, session.id))
    return session


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    """Delete stored sessions with their flows and body files."""
    for session in delete_sessions(store_location(_config(args)), args.sessions):
        print(f"deleted session {session.name!r} ({session.id}) and its {session.flows} flows")
    return 0


def delete_sessions(location: str | Path, refs: list[str]) -> list[Any]:
    """Delete the stored sessions ``refs`` name, with their flows and body files; their
    :class:`SessionInfo`. The one delete of ``flowtap sessions delete`` and the web UI.

    :raises UsageError: no such session, one is being recorded, or the store cannot be written.
    """
    import shutil

    from flowtap.store import Store, db

    with _errors(), Store(location) as store:
        sessions = [store.session(ref, unique=True) for ref in refs]
    for s in sessions:
        if s.live:
            where = f" on {s.machine}" if s.machine else ""
            raise UsageError(f"session {s.name!r} ({s.id}) is being recorded by pid {s.pid}{where}; "
                             "end that run first (`flowtap ctl stop`)")
    with _writable(location) as conn:
        for s in sessions:
            conn.execute("DELETE FROM sessions WHERE id = ?", (s.id,))  # one statement: its own transaction
            if isinstance(location, Path):  # PostgreSQL keeps bodies in its rows
                shutil.rmtree(db.bodies_dir(location) / s.id, ignore_errors=True)
    return sessions


# -- search and show ----------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    """Stored flows matching a filter expression, newest first."""
    from flowtap.store import render

    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: expected 0 or more")
    with _store(args) as store:
        session = store.session(args.session) if args.session else None
        rows = store.rows(args.expression, session=session, limit=args.limit, newest_first=True,
                          machine=args.machine, user=args.user)
        found = 0
        label = f"searching session {session.name!r}" if session else "searching the store"
        with Progress(label, unit="found") as progress:
            for row in rows:
                if args.json:
                    progress.print(json.dumps(row.summary()))
                else:
                    if not found:
                        progress.print(render.header_line())
                    progress.print(render.flow_line(render.flow_cells(row)))
                found += 1
                progress.advance()
        if not found and not args.json:
            where = f"session {session.name!r}" if session else "the store"
            print(f"no flows in {where} match" + (f" {args.expression!r}" if args.expression else ""),
                  file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """A stored flow in full: request, response, bodies pretty-printed when text."""
    from flowtap import serialize
    from flowtap.store import render

    with _store(args) as store:
        row = store.find(args.flow)
        flow = store.flow(row.id)
        if args.json:
            data = serialize.flow_to_dict(flow)
            data["session"] = row.session
            print(serialize.to_json(data, indent=2))
            return 0
        try:
            session = store.session(row.session)
        except Exception:
            session = None
        out = sys.stdout
        for part in render.flow_parts(flow, row, session, raw=args.raw):
            if isinstance(part, bytes) and _is_terminal(out) and not _plain(part):
                print(f"[{len(part)} bytes not printed: they hold control characters, which a terminal would "
                      "obey; redirect `flowtap show --raw` to a file or a pipe]", file=out)
            elif isinstance(part, bytes):
                out.flush()
                sys.stdout.buffer.write(part if part.endswith(b"\n") else part + b"\n")
                sys.stdout.buffer.flush()
            else:
                print(part, file=out)
    return 0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _plain(data: bytes) -> bool:
    """Whether ``data`` is text with no control character but line breaks and tabs."""
    from flowtap.terminal import terminal_safe

    text = data.decode("utf-8", "surrogateescape")
    return terminal_safe(text, lines=True) == text


# -- export -------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """A stored session through a sink (as if captured live), or as curl commands."""
    from flowtap.store import query

    if (args.sink is None) == (args.format is None):
        raise UsageError("flowtap export: give --sink NAME (with -o PATH) or --format curl")
    with _errors():
        query.plan(args.filter)  # a bad filter fails before anything is written
    config = _config(args)
    if args.format == "curl":
        return _export_curl(args)
    if not args.output:
        raise UsageError(f"flowtap export --sink {args.sink}: -o PATH is required")
    return _export_sink(args, config)


def _export_curl(args: argparse.Namespace) -> int:
    with _store(args) as store:
        session = store.session(args.session)
        with _output(args.output) as out, Progress(f"exporting {session.name!r} as curl",
                                                   total=session.flows) as progress:
            count = 0
            for command in curl_commands(store, session, args.filter):
                progress.print(command, file=out)
                count += 1
                progress.advance()
    if args.output:
        print(f"wrote {count} curl commands from session {session.name!r} to {args.output}")
    return 0


def session_flows(store: Any, session: Any, expression: str | None = None,
                  ids: list[str] | None = None) -> Iterator[Any]:
    """The flows of a stored session an export takes: those matching ``expression`` (and, when
    ``ids`` is given, only those), in recording order."""
    if ids is None:
        return store.flows(expression, session=session)
    return store.selected(session, ids, expression)


def curl_commands(store: Any, session: Any, expression: str | None = None,
                  ids: list[str] | None = None) -> Iterator[str]:
    """A curl command for each flow of a stored session an export takes (see :func:`session_flows`)."""
    for flow in session_flows(store, session, expression, ids):
        yield curl_command(flow)


def curl_command(flow: Any) -> str:
    """The curl command line that sends the flow's request again (without its hop-by-hop headers)."""
    from flowtap.store import render

    return render.curl(_for_replay(flow))


#: Hop-by-hop headers (RFC 9110 7.6.1) and those meant for the proxy: a replay must not send them
#: (curl makes its own connection; Transfer-Encoding and Upgrade would misframe or switch it).
#: The HAR keeps them: it is the record of what was sent.
#: An export waits for its sink after at most this many flows, or bytes of bodies (at most half of
#: the sink's backlog, [dispatch] backlog and backlog_size), so that the sink never misses a flow.
EXPORT_BATCH, EXPORT_BATCH_BYTES = 1000, 32 << 20

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                        "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"})


def _for_replay(flow: Any) -> Any:
    """The flow with its request's hop-by-hop headers (and those Connection names) left out."""
    import attrs

    headers = flow.request.headers
    named = {token.strip().lower() for value in headers.get_all("connection") for token in value.split(",")}
    drop = HOP_BY_HOP | named
    kept = [(k, v) for k, v in headers.fields if k.lower() not in drop]
    if len(kept) == len(headers):
        return flow
    return attrs.evolve(flow, request=attrs.evolve(flow.request, headers=kept))


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """Standard output, or the file ``path``: owner-only like every output holding captures (its headers
    carry credentials), and written all at once (an export that fails leaves the old file)."""
    if not path:
        yield sys.stdout
        return
    from flowtap.paths import atomic_writer

    target = Path(path)
    try:
        with atomic_writer(target, mode=0o600) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            yield text
            text.flush()
            text.detach()
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _cookie_events(events: list[Any], order: dict[str, int]) -> list[tuple[int, list[Cookie], str]]:
    """The cookies seen that no stored flow sets again (while paused, before a clear, or reported by a
    source), each with the number of the stored flow it came after (-1: before them all) and its source."""
    from flowtap.cookies import Cookie

    out = []
    for event in events:
        if event.kind != "cookies":
            continue
        try:
            data = json.loads(event.text)
            if data.get("flow") in order:
                continue  # its flow is stored and sets them again (if --filter keeps it)
            found = [Cookie(**fields) for fields in data["cookies"]]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a row this version cannot read
        out.append((order.get(data.get("after"), -1), found, str(data.get("source", "store"))))
    out.sort(key=lambda item: item[0])  # stable: in the order they were seen
    return out


def _recorded_options(recorded: dict[str, Any], dotted: str, known: list[Any]) -> dict[str, Any] | None:
    """Table ``dotted`` as the session's config had it (options this version still knows), or None."""
    node: Any = recorded.get("tables")
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    names = {option.name for option in known}
    return {key: value for key, value in node.items() if key in names}


def _table(raw: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = raw
    for part in dotted.split("."):
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    return node


def _export_sink(args: argparse.Namespace, config: Config) -> int:
    with _store(args) as store:
        session = store.session(args.session)
        try:
            done = export_session(config, store, session, args.sink, args.output, expression=args.filter,
                                  current_config=args.current_config, disable=_disabled(args))
        except ExportFailed as exc:
            print(f"flowtap: error: {exc}", file=sys.stderr)
            return 1
    how = ("with the options it was recorded with" if done.recorded
           else "with this config's options")
    print(f"exported {done.count} flows of session {session.name!r} ({session.id}) through {args.sink!r} "
          f"to {done.target} ({how} for [{done.table}])")
    return 0


class ExportFailed(Exception):
    """The sink failed while exporting (it reported why); its output may be incomplete."""


@attrs.define
class Exported:
    """What :func:`export_session` wrote."""

    count: int  # flows
    target: Path
    table: str  # the sink's config table
    recorded: bool  # with the sink options the session was recorded with (else the config's)


def export_sinks(config: Config, disable: Iterable[str] = ()) -> dict[str, str]:
    """The sinks a stored session can be exported through (those with a ``path`` option): each
    name with its default path (``flowtap-{session}.har``)."""
    from flowtap.capture import Capture

    capture = Capture(config, disable=disable)
    found = {}
    for name, entry in sorted(capture.sink_factories.items()):
        for option in capture.options.get(entry.table, []):
            if option.name == "path":
                found[name] = str(option.default or f"{{session}}.{name}")
    return found


def export_session(config: Config, store: Any, session: Any, sink: str, output: str | os.PathLike, *,
                   expression: str | None = None, ids: list[str] | None = None,
                   current_config: bool = False, disable: Iterable[str] = (),
                   quiet: bool = False) -> Exported:
    """Replay a stored session through sink ``sink`` into the file ``output``, as if captured now.

    The one export path of ``flowtap export --sink`` and of the web UI: any registered sink
    with a ``path`` option can export. The sink gets the options the session was recorded
    with (``current_config``: those of ``config``); an existing ``output`` is replaced once
    the export is complete, unless the sink merges into it (:attr:`flowtap.Sink.merges`).
    ``config`` itself is not changed.

    :param expression: only the flows matching this filter expression.
    :param ids: only the flows with these ids.
    :param quiet: no progress line, even on a terminal.
    :raises UsageError: no such sink, or it writes no file.
    :raises ExportFailed: the sink failed while exporting.
    """
    from flowtap.capture import Capture

    config = Config.from_dict(config.raw, config.path)
    capture = Capture(config, disable=disable)
    entry = capture.sink_factories.get(sink)
    if entry is None:
        names = ", ".join(sorted(capture.sink_factories)) or "none"
        raise UsageError(f"no sink named {sink!r} (available: {names}; `flowtap plugins` lists plugins)")
    if not any(option.name == "path" for option in capture.options.get(entry.table, [])):
        raise UsageError(f"sink {sink!r} has no path option in [{entry.table}]: "
                         "it does not write a file to export to")
    raw = config.raw
    recorded = _recorded_options(session.config, entry.table, capture.options.get(entry.table, []))
    if recorded is not None and not current_config:  # the options the session was captured with
        table = _table(raw, entry.table)
        table.clear()
        table.update(recorded)
    for name, other in capture.sink_factories.items():
        _table(raw, other.table)["enabled"] = name == sink
    # The file to write: an existing one is replaced once the export is done (a live
    # session never overwrites another's file, so the sink writes beside it first), unless the
    # sink merges into the file at its path (Sink.merges): it writes that file in place.
    from flowtap.paths import expand_path

    target = expand_path(str(output), session)
    in_place = getattr(entry.factory, "merges", False) or not target.is_file()
    scratch = target if in_place else target.with_name(f".{target.name}.export-{os.getpid()}")
    if scratch != target:
        scratch = scratch.with_name(scratch.name + "".join(target.suffixes[-2:]))
    _table(raw, entry.table)["path"] = str(scratch)
    for other in capture.source_factories.values():
        _table(raw, other.table)["enabled"] = False
    raw.pop("filters", None)  # the stored flows passed the capture's filters already
    _table(raw, "session").update(name=session.name, duration="")
    capture.start(started=session.started, replay=True)
    limits = capture.config.table("dispatch")
    batch = max(1, min(EXPORT_BATCH, limits["backlog"] // 2))
    batch_bytes = max(1, min(EXPORT_BATCH_BYTES, limits["backlog_size"] // 2))
    count = in_flight = 0
    events = store.events(session.id, cookies=True)
    # Where each cookie event falls among the flows (one pass over the rows, only if there are any).
    order = ({row.id: number for number, row in enumerate(store.rows(session=session))}
             if any(event.kind == "cookies" for event in events) else {})
    cookies = _cookie_events(events, order)
    with Progress(f"exporting {session.name!r} through {sink!r}", total=session.flows,
                  stream=io.StringIO() if quiet else None) as progress:
        try:
            for flow in session_flows(store, session, expression, ids):
                while cookies and cookies[0][0] < order.get(flow.id, -1):
                    capture.dispatcher.cookies(*cookies.pop(0)[1:])
                capture.emit(flow)
                count += 1
                in_flight += len(flow.request.body) + (len(flow.response.body) if flow.response else 0)
                if count % batch == 0 or in_flight > batch_bytes:
                    # The store reads faster than a sink may write: wait for it rather than overrun
                    # its backlog (a capture's sources never wait; an export must lose nothing).
                    capture.dispatcher.sync()
                    in_flight = 0
                progress.advance()
            for _, found, source in cookies:
                capture.dispatcher.cookies(found, source)
            progress.note = f"finishing {output}"
        finally:
            capture.stop()
    if capture.host.error_count:
        raise ExportFailed(f"sink {sink!r} failed while exporting (see above); {scratch} may be incomplete")
    if scratch != target and scratch.is_file():
        try:
            os.replace(scratch, target)
        except OSError as exc:
            raise UsageError(f"{target}: cannot replace it with the export in {scratch}: "
                             f"{exc.strerror or exc}") from None
    return Exported(count, target, entry.table, recorded is not None and not current_config)


# -- wiring: the setup of each command's arguments (flowtap.coreplugin registers the commands) --------


def setup_sessions(parser: argparse.ArgumentParser) -> None:
    describe(parser, "List the debug sessions kept in the session store, newest first: id, name, start, "
                     "duration, state and flow counts. Its actions show, rename and delete one.",
             "flowtap sessions", "flowtap sessions --json", "flowtap sessions show last")
    parser.add_argument("--json", action="store_true", help="one JSON object per session")
    _who_arguments(parser, "sessions")
    actions = parser.add_subparsers(dest="sessions_command", metavar="ACTION")
    show = actions.add_parser("show", help="one session in detail, with its events and markers")
    describe(show, "One stored session in detail: state, times, counts, the config it ran with, the hosts "
                   "it saw, and its events (pause, resume, clear, markers).",
             "flowtap sessions show last", "flowtap sessions show checkout --json")
    show.add_argument("session", metavar="SESSION", help="an id (or its start), a name, or last")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(func=cmd_sessions_show)
    rename = actions.add_parser("rename", help="give a session a new name")
    describe(rename, "Give a stored session a new name (names need not be unique; ids are).",
             "flowtap sessions rename last checkout-bug")
    rename.add_argument("session", metavar="SESSION", help="an id, a name, or last")
    rename.add_argument("name", metavar="NAME", help="the new name")
    rename.set_defaults(func=cmd_sessions_rename)
    delete = actions.add_parser("delete", help="delete sessions with their flows")
    describe(delete, "Delete stored sessions with their flows and body files. A session being recorded "
                     "cannot be deleted.",
             "flowtap sessions delete last", "flowtap sessions delete 2024-05-01_101500 checkout")
    delete.add_argument("sessions", metavar="SESSION", nargs="+", help="ids, names, or last")
    delete.set_defaults(func=cmd_sessions_delete)


def setup_search(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Stored flows matching a mitmproxy filter expression, newest first, over every session "
                     "or one. On a terminal, a search that takes more than a second shows its progress.",
             "flowtap search '~d api.example.com & ~c 500' --session last",
             "flowtap search '~m POST & ~u /login' --limit 5",
             "flowtap search --json '~t json' | jq .url")
    parser.add_argument("expression", metavar="EXPR", nargs="?",
                        help='a mitmproxy filter expression, e.g. "~d api.example.com & ~m POST"')
    parser.add_argument("--session", metavar="SESSION", help="only this session (an id, a name, or last)")
    parser.add_argument("--limit", metavar="N", type=int, help="at most N flows (the newest)")
    parser.add_argument("--json", action="store_true", help="one JSON object per flow")
    _who_arguments(parser, "flows of sessions")


def _who_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--machine`` and ``--user``: who recorded it, in a store several machines write to."""
    parser.add_argument("--machine", metavar="HOST", help=f"only {what} recorded on this machine (host name)")
    parser.add_argument("--user", metavar="NAME", help=f"only {what} recorded by this user")


def setup_show(parser: argparse.ArgumentParser) -> None:
    describe(parser, "One stored flow in full: request and response lines, headers, and bodies (decoded "
                     "and pretty-printed when they are text).",
             "flowtap show 7f3a9c2e", "flowtap show 7f3a9c2e --raw > body.bin",
             "flowtap show 7f3a9c2e --json")
    parser.add_argument("flow", metavar="FLOW_ID", help="the flow's id, or its start (as search prints it)")
    parser.add_argument("--raw", action="store_true",
                        help="bodies as they are, not decoded or pretty-printed")
    parser.add_argument("--json", action="store_true", help="the whole flow as JSON (bodies in base64)")


def setup_export(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Replay a stored session through a sink, as if it were captured now (a HAR file, a "
                     "Postman collection, a cookie jar, or a third-party sink), or print it as curl "
                     "commands. On a terminal, an export that takes more than a second shows its progress.",
             "flowtap export last --sink har -o session.har",
             "flowtap export last --sink collection -o checkout.postman_collection.json",
             "flowtap export checkout --format curl --filter '~m POST'")
    parser.add_argument("session", metavar="SESSION", help="an id, a name, or last")
    parser.add_argument("--sink", metavar="NAME", help="the sink to replay the session through, e.g. har")
    parser.add_argument("--format", choices=("curl",), help="print curl commands instead")
    parser.add_argument("-o", "--output", metavar="PATH", help="the file to write (for curl: default stdout)")
    parser.add_argument("--filter", metavar="EXPR", help="only the flows matching this filter expression")
    parser.add_argument("--current-config", action="store_true",
                        help="take the sink's options from this directory's config (and --config/--set), not "
                             "from the config the session was recorded with (the default; -o always names "
                             "the file)")


# -- the store itself: sync, copy ---------------------------------------------------------------------


def cmd_store(args: argparse.Namespace) -> int:
    """``flowtap store`` without an action."""
    raise UsageError("flowtap store: give an action: sync (deliver spooled flows) or copy (between stores)")


def cmd_store_sync(args: argparse.Namespace) -> int:
    """Deliver the flows that wait in local spools to the PostgreSQL store ``[store] url`` names."""
    from flowtap.store import backend_postgres as pg, spool

    location = store_location(_config(args))
    if not pg.is_url(location):
        raise UsageError("flowtap store sync: [store] url names no PostgreSQL database; only a PostgreSQL "
                         "store has a spool to deliver")
    url = str(location)
    waiting = spool.spooled(url)
    if not waiting:
        print(f"nothing waits for {pg.redact(url)}")
        return 0
    with _errors(), Progress(f"delivering {len(waiting)} spools to {pg.redact(url)}") as progress:
        delivered, held = spool.sync(url, progress)
    print(f"delivered {delivered} flows from {len(waiting) - held} spools to {pg.redact(url)}"
          + (f"; {held} spools belong to captures still running (they deliver them)" if held else ""))
    return 0


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy sessions from one store to another (an SQLite file or a PostgreSQL URL, either way)."""
    from flowtap.store import backend_postgres as pg, copy, db

    def where(value: str) -> str | Path:
        return value if pg.is_url(value) else db.resolve_path(value)

    source, target = where(args.source), where(args.target)
    if str(source) == str(target):
        raise UsageError(f"flowtap store copy: --from and --to are the same store ({args.source})")
    shown = pg.redact(str(target)) if pg.is_url(target) else str(target)
    with _errors(), Progress(f"copying to {shown}") as progress:
        sessions, flows, refused = copy.copy(source, target, progress, args.session or None)
    print(f"copied {sessions} sessions ({flows} flows) to {shown}")
    if refused:
        print(f"flowtap: error: {len(refused)} flows were refused by {shown}, e.g. {refused[0]}",
              file=sys.stderr)
        return 1
    return 0


def setup_store(parser: argparse.ArgumentParser) -> None:
    describe(parser, "Work with the store itself: deliver the flows a PostgreSQL store's spool holds "
                     "(`sync`), copy sessions between stores (`copy`: an SQLite file or a PostgreSQL URL, "
                     "either way; resumable: run it again after an interruption).",
             "flowtap store sync",
             "flowtap store copy --from ~/.local/share/flowtap/flowtap.db --to postgresql://db.example.com/flowtap")
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION")
    sync = actions.add_parser("sync", help="deliver spooled flows to the PostgreSQL store")
    describe(sync, "Deliver the flows that wait in local spools (a run that ended while the database was "
                   "unreachable) to the PostgreSQL store [store] url names.", "flowtap store sync")
    sync.set_defaults(func=cmd_store_sync)
    copy = actions.add_parser("copy", help="copy sessions from one store to another")
    describe(copy, "Copy sessions with their events and flows from one store to another. Flows and events "
                   "already in the target are skipped, so an interrupted copy resumes when run again.",
             "flowtap store copy --from old.db --to postgresql://db.example.com/flowtap",
             "flowtap store copy --from postgresql://db.example.com/flowtap --to mine.db --session 1c94429c")
    copy.add_argument("--from", dest="source", metavar="URL_OR_PATH", required=True,
                      help="the store to copy from: an SQLite file or a postgresql:// URL")
    copy.add_argument("--to", dest="target", metavar="URL_OR_PATH", required=True,
                      help="the store to copy into (created if need be)")
    copy.add_argument("--session", metavar="ID", action="append",
                      help="only this session (by id; may be repeated); default: all")
    copy.set_defaults(func=cmd_store_copy)
