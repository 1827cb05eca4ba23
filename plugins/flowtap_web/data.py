"""What the UI shows, as JSON-ready values read from the session store.

Every function here takes an open :class:`flowtap.store.Store` and runs on
one of the server's reader threads (:class:`Reader`), never on its event loop.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from flowtap.filters import simple_expression
from flowtap.model import _Message
from flowtap.store import Store
from flowtap.store.reader import FlowRow, SessionInfo

T = TypeVar("T")

#: Most bytes of one body the detail view carries (a larger body is shown cut, with its size).
BODY_LIMIT = 1 << 20
#: Most rows one page (or one push of the live stream) carries.
PAGE_LIMIT = 500


class Reader:
    """Store reads off the event loop: a few threads, each with its own read-only :class:`Store`."""

    def __init__(self, path: Path | str, threads: int = 2) -> None:
        self.path = path
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="flowtap-web-reader")

    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:  # opened on first use: the store may not exist yet when the UI starts
            store = self._local.store = Store(self.path)
        return store

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(store, *args, **kwargs)`` on a reader thread."""
        work = functools.partial(self._run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self._store(), *args, **kwargs)

    def close(self) -> None:
        """Stop the threads (their connections close with them)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- filters ----------------------------------------------------------------------------------


def expression(params: dict[str, str]) -> str | None:
    """The filter expression of a page's filter bar: its expression and Postman's simple filters
    (``url``, ``not_url``, ``methods`` "GET,POST", ``hide_assets`` "1"), all of which must match.

    :raises FilterError: a part is invalid.
    """
    simple = simple_expression(
        url_contains=params.get("url", ""),
        url_not_contains=params.get("not_url", ""),
        methods=[m for m in params.get("methods", "").split(",") if m],
        skip_resources=params.get("hide_assets", "") in ("1", "true"),
    )
    parts = [part for part in (params.get("filter", "").strip(), simple) if part]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return " & ".join(f"({part})" for part in parts)


# -- sessions ----------------------------------------------------------------------------------


def session_json(session: SessionInfo, hosts: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """A session as the sessions page and the session page's header show it."""
    return {
        "id": session.id, "name": session.name, "state": session.state, "live": session.live,
        "started": session.started, "ended": session.ended, "pid": session.pid, "flows": session.flows,
        "recorded": session.recorded, "filtered": session.filtered, "paused": session.paused,
        "received": session.received, "hosts": hosts,
    }  # fmt: skip


def sessions(store: Store) -> list[dict[str, Any]]:
    """Every stored session, newest first, with the hosts it saw most."""
    return [session_json(s, store.hosts(s.id, limit=3)) for s in store.sessions()]


def session(store: Store, ref: str | SessionInfo, hosts: bool = True) -> dict[str, Any]:
    """One session with its events (and the hosts it saw most, unless ``hosts`` is false: they
    cost a pass over its flows)."""
    found = ref if isinstance(ref, SessionInfo) else store.session(ref, unique=True)
    return {**session_json(found, store.hosts(found.id, limit=3) if hosts else None),
            "events": events(store, found.id)}


def events(store: Store, session_id: str) -> list[dict[str, Any]]:
    """A session's pauses, resumes, clears and markers, in order."""
    return [{"time": e.time, "kind": e.kind, "text": e.text} for e in store.events(session_id)]


# -- the flow table ------------------------------------------------------------------------------


def row_json(row: FlowRow) -> dict[str, Any]:
    """One line of the flow table."""
    return {
        "seq": row.seq, "id": row.id, "time": row.time, "method": row.method, "scheme": row.scheme,
        "host": row.host, "port": row.port, "path": row.path, "status": row.status,
        "type": row.response_type.split("\n")[0].split(";")[0].strip(), "size": row.response_size,
        "duration": row.duration, "error": row.error, "websocket": row.websocket,
    }  # fmt: skip


def page(store: Store, session_id: str, filter_expression: str | None, after: int | None = None,
         before: int | None = None, newest: bool = False, limit: int = PAGE_LIMIT) -> dict[str, Any]:
    """A page of the flow table, by keyset (see :meth:`Store.page`): after ``after``, before
    ``before``, the newest, or the first.

    ``more``: the store holds more matching rows beyond the page in its direction; ``top``: the
    session's last ``seq`` when the page was read (where a live stream starts).
    """
    limit = max(1, min(limit, PAGE_LIMIT))
    found = store.session(session_id, unique=True)
    top = _top(store, found)
    if newest:
        rows = store.newest(found, filter_expression, limit + 1)
        return {"rows": [row_json(r) for r in rows[-limit:]], "more": len(rows) > limit, "top": top}
    rows = store.page(found, filter_expression, after=after, before=before, limit=limit + 1)
    shown = rows[-limit:] if before is not None and after is None else rows[:limit]
    return {"rows": [row_json(r) for r in shown], "more": len(rows) > limit, "top": top}


def _top(store: Store, found: SessionInfo) -> int:
    last = store.newest(found, None, 1)
    return last[0].seq if last else 0


def update(store: Store, session_id: str, filter_expression: str | None, cursor: int,
           limit: int = PAGE_LIMIT) -> dict[str, Any]:
    """What a live table lacks: the matching rows recorded after ``cursor``, or, when more than
    ``limit`` came since (the proxy outran the page), the newest ``limit`` with ``gap`` set; the
    session with its counts and events; and the next ``cursor`` (past every row looked at, so that
    a filter matching nothing does not look at the same rows again)."""
    found = store.session_by_id(session_id)
    top = _top(store, found)
    rows = store.page(found, filter_expression, after=cursor, limit=limit + 1)
    gap = len(rows) > limit
    if gap:
        rows = store.newest(found, filter_expression, limit)
    cursor = max(top, cursor, rows[-1].seq if rows else 0)
    return {"rows": [row_json(r) for r in rows], "gap": gap, "cursor": cursor,
            "session": session(store, found, hosts=False)}


# -- one flow --------------------------------------------------------------------------------------

_TEXT_TYPES = ("json", "xml", "javascript", "ecmascript", "x-www-form-urlencoded", "graphql", "yaml", "csv",
               "html", "css", "svg")


def body_json(message: _Message) -> dict[str, Any]:
    """A body as the detail view shows it: ``kind`` is ``empty``, ``json`` (``text`` holds it),
    ``text`` (decoded with its charset), ``image`` or ``binary`` (``base64``). At most
    :data:`BODY_LIMIT` bytes come along (``shown``); ``size`` is the real size (None: unknown)."""
    data = message.body
    ctype = message.content_type
    charset = _charset(message)
    out: dict[str, Any] = {"content_type": ctype, "charset": charset, "size": message.body_size,
                           "captured": len(data), "truncated": message.truncated,
                           "shown": min(len(data), BODY_LIMIT)}
    part = data[:BODY_LIMIT]
    if not data:
        out["kind"] = "empty"
    elif ctype.startswith("image/") and ctype != "image/svg+xml":
        out.update(kind="image", base64=base64.b64encode(part).decode())
    elif (text := _as_text(part, charset, ctype)) is not None:
        out.update(kind="text", text=text)
        if ("json" in ctype or text.lstrip()[:1] in ("{", "[")) and len(data) <= BODY_LIMIT:
            try:
                json.loads(text)
                out["kind"] = "json"
            except ValueError:
                pass
    else:
        out.update(kind="binary", base64=base64.b64encode(part).decode())
    return out


def _charset(message: _Message) -> str | None:
    for param in (message.headers.get("content-type") or "").split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"'")
    return None


def _as_text(data: bytes, charset: str | None, ctype: str) -> str | None:
    """The body as text, when it is: its charset (else UTF-8) decodes it and it has no control
    characters but line breaks and tabs (a cut UTF-8 sequence at the end is allowed)."""
    try:
        text = data.decode(charset or "utf-8")
    except LookupError:
        return None
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 3:
            return None
        text = data[:exc.start].decode(charset or "utf-8")
    textual = ctype.startswith("text/") or any(t in ctype for t in _TEXT_TYPES)
    controls = sum(1 for c in text[:4096] if ord(c) < 32 and c not in "\r\n\t")
    return text if controls == 0 or (textual and controls < 4) else None


def flow(store: Store, flow_id: str) -> dict[str, Any]:
    """A stored flow in full, for the detail view."""
    from flowtap.store.commands import curl_command

    row = store.find(flow_id)
    f = store.flow(row.id)
    req, resp, t = f.request, f.response, f.timings
    return {
        "id": f.id, "session": row.session, "source": f.source, "error": f.error,
        "request": {"method": req.method, "url": req.url, "http_version": req.http_version,
                    "headers": list(req.headers.fields), "body": body_json(req)},
        "response": None if resp is None else {
            "status": resp.status_code, "reason": resp.reason, "http_version": resp.http_version,
            "headers": list(resp.headers.fields), "body": body_json(resp)},
        "timings": {"start": t.start, "end": t.end, "duration": t.duration, "dns": t.dns,
                    "connect": t.connect, "tls": t.tls, "send": t.send, "wait": t.wait, "receive": t.receive},
        "client_address": _address(f.client_address), "server_address": _address(f.server_address),
        "server_ip": f.server_ip,
        "tls": None if f.tls is None else {"version": f.tls.version, "sni": f.tls.sni, "cipher": f.tls.cipher,
                                           "alpn": f.tls.alpn},
        "cookies": {"sent": [list(pair) for pair in f.request_cookies],
                    "set": [_cookie(c) for c in f.response_cookies]},
        "websocket": None if f.websocket is None else [_message(m) for m in f.websocket[:1000]],
        "websocket_count": None if f.websocket is None else len(f.websocket),
        "metadata": {k: str(v) for k, v in f.metadata.items()},
        "curl": curl_command(f),
    }  # fmt: skip


def _address(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


def _cookie(cookie: Any) -> dict[str, Any]:
    return {"name": cookie.name, "value": cookie.value, "domain": cookie.domain, "path": cookie.path,
            "expires": cookie.expires, "secure": cookie.secure, "http_only": cookie.httponly,
            "same_site": cookie.samesite, "host_only": cookie.host_only}


def _message(message: Any) -> dict[str, Any]:
    content = message.content[:BODY_LIMIT]
    text = content.decode("utf-8", "replace") if message.is_text else None
    return {"from_client": message.from_client, "time": message.timestamp, "size": len(message.content),
            "text": text, "base64": None if text is not None else base64.b64encode(content[:4096]).decode()}


# -- cookies -------------------------------------------------------------------------------------------


def cookies(store: Store, session_id: str) -> dict[str, list[dict[str, Any]]]:
    """The session's cookie jar at its end, per domain: every cookie set by its flows or seen by a
    source (a later one replaces an earlier of the same domain, path and name; expired ones go)."""
    from flowtap.cookies import Cookie

    jar: dict[tuple[str, str, str], Any] = {}
    seen: list[tuple[float, list[Any]]] = []
    for event in store.events(session_id, cookies=True):
        if event.kind == "cookies":
            try:
                seen.append((event.time, [Cookie(**c) for c in json.loads(event.text or "")["cookies"]]))
            except (ValueError, TypeError, KeyError):
                continue
    for found in store.flows('~hs "(?i)^set-cookie:"', session=session_id):
        seen.append((found.timings.end or found.timings.start, found.response_cookies))
    seen.sort(key=lambda item: item[0])
    for _, batch in seen:
        for cookie in batch:
            jar[cookie.key] = cookie
    domains: dict[str, list[dict[str, Any]]] = {}
    for cookie in sorted(jar.values(), key=lambda c: (c.domain, c.path, c.name)):
        if not cookie.is_expired():
            domains.setdefault(cookie.domain, []).append(_cookie(cookie))
    return domains
