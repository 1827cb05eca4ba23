"""From the extension's events to flowtap's model: flows merged by request id, and cookies.

The extension sends each ``chrome.webRequest`` event as it happens (its
service worker may stop at any time and keeps nothing); an
:class:`Assembler` per browser session merges them into :class:`flowtap.Flow`
objects and marks what the browser did not show.
"""

from __future__ import annotations

import base64
import binascii
import collections
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import attrs

import flowtap
from flowtap import Cookie, Flow, Request, Response, Timings

#: How long a finished flow waits for its body from chrome.debugger.
BODY_WAIT = 3.0
#: How long a body from chrome.debugger waits for its flow.
BODY_KEEP = 30.0
#: Requests in flight kept per connection; past this the oldest is recorded as unfinished.
MAX_PENDING = 5000

T = TypeVar("T")

_NO_BODY_STATUS = {204, 205, 304}
_SAMESITE = {"lax": "Lax", "strict": "Strict", "no_restriction": "None"}


@attrs.define
class _Pending:
    id: str
    url: str
    method: str
    start: float
    info: dict[str, Any] = attrs.field(factory=dict)
    request_body: dict[str, Any] | None = None
    request_headers: list[dict[str, str]] | None = None


class Assembler:
    """Merges one connection's capture events into flows.

    Each method returns the flows that are now finished (possibly none).
    """

    def __init__(self, source: str = "interceptor", clock: Callable[[], float] = time.monotonic,
                 body_wait: float = BODY_WAIT, max_pending: int = MAX_PENDING) -> None:
        self.source = source
        self.clock = clock
        self.body_wait = body_wait
        self.max_pending = max_pending
        self.pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._awaiting: dict[tuple, collections.deque[tuple[float, Flow]]] = {}
        self._bodies: dict[tuple, collections.deque[tuple[float, dict]]] = {}

    def capture(self, event: dict[str, Any]) -> list[Flow]:
        """Take one ``capture`` message."""
        kind = event["event"]
        entry = self.pending.get(event["id"])
        if entry is None or kind == "request":
            entry = self._begin(event)
        if kind == "request":
            entry.request_body = event.get("requestBody")
        elif kind == "headers":
            entry.request_headers = event.get("requestHeaders", [])
        done: list[Flow] = []
        if kind in ("redirect", "completed", "error"):
            del self.pending[event["id"]]
            flow: Flow | None = _flow(entry, event, self.source)
            if flow is not None and kind == "completed" and event.get("bodyPending"):
                flow = self._join_body(flow, event)
            if flow is not None:
                done.append(flow)
        while len(self.pending) > self.max_pending:
            _, oldest = self.pending.popitem(last=False)
            done.append(_flow(oldest, None, self.source,
                              "flowtap saw no end of this request (too many requests in flight)"))
        return done

    def body(self, message: dict[str, Any]) -> list[Flow]:
        """Take one ``body`` message (a response body read through chrome.debugger)."""
        key = (message["tabId"], message["method"].upper(), message["url"])
        flow = _take_first(self._awaiting, key)
        if flow is not None:
            _set_body(flow, message)
            return [flow]
        self._bodies.setdefault(key, collections.deque()).append((self.clock() + BODY_KEEP, message))
        return []

    def expire(self) -> list[Flow]:
        """Flows whose body did not come in time (they go without); drop unclaimed bodies."""
        now = self.clock()
        _take_due(self._bodies, now)
        return _take_due(self._awaiting, now)

    def close(self, reason: str = "the extension disconnected before the request finished") -> list[Flow]:
        """Everything still held: unfinished requests (marked with ``reason``) and flows awaiting a body."""
        done = [_flow(entry, None, self.source, reason) for entry in self.pending.values()]
        done += [flow for queue in self._awaiting.values() for _, flow in queue]
        self.pending.clear()
        self._awaiting.clear()
        self._bodies.clear()
        return done

    def _begin(self, event: dict[str, Any]) -> _Pending:
        entry = _Pending(id=event["id"], url=event["url"], method=event["method"].upper(),
                         start=event["timeStamp"] / 1000)
        for key in ("tabId", "frameId", "resourceType", "initiator"):
            if key in event:
                entry.info[key] = event[key]
        self.pending[event["id"]] = entry
        return entry

    def _join_body(self, flow: Flow, event: dict[str, Any]) -> Flow | None:
        key = (event.get("tabId"), flow.request.method, flow.request.url)
        message = _take_first(self._bodies, key)
        if message is not None:
            _set_body(flow, message)
            return flow
        self._awaiting.setdefault(key, collections.deque()).append((self.clock() + self.body_wait, flow))
        return None


def _take_first(table: dict[tuple, collections.deque[tuple[float, T]]], key: tuple) -> T | None:
    """The oldest item waiting under ``key`` (dropping the key when none is left), or None."""
    queue = table.get(key)
    if not queue:
        return None
    _, item = queue.popleft()
    if not queue:
        del table[key]
    return item


def _take_due(table: dict[tuple, collections.deque[tuple[float, T]]], now: float) -> list[T]:
    """Every item whose deadline has passed, oldest first per key (dropping keys left empty)."""
    due: list[T] = []
    for key in list(table):
        queue = table[key]
        while queue and queue[0][0] <= now:
            due.append(queue.popleft()[1])
        if not queue:
            del table[key]
    return due


def _flow(entry: _Pending, end: dict[str, Any] | None, source: str, error: str | None = None) -> Flow:
    """The flow for ``entry``, finished by the ``redirect``/``completed``/``error`` event ``end``."""
    end = end or {}
    version, reason = _status_line(end.get("statusLine", ""))
    body, body_meta = _request_body(entry)
    request = Request(method=entry.method, url=entry.url, http_version=version or "HTTP/1.1",
                      headers=_pairs(entry.request_headers or []), body=body,
                      body_size=body_meta.pop("size", None), truncated=body_meta.pop("truncated", False))
    metadata: dict[str, Any] = {"timings": "browser", "request_id": entry.id, **body_meta}
    for key, name in (("tabId", "tab_id"), ("frameId", "frame_id"), ("resourceType", "resource_type"),
                      ("initiator", "initiator")):
        if key in entry.info:
            metadata[name] = entry.info[key]
    if entry.request_headers is None:
        metadata["request_headers_unavailable"] = True
    response = None
    if end.get("event") in ("redirect", "completed") and "statusCode" in end:
        status = end["statusCode"]
        empty = status in _NO_BODY_STATUS or 100 <= status < 200 or entry.method == "HEAD"
        response = Response(status_code=status, reason=reason, http_version=version or "HTTP/1.1",
                            headers=_pairs(end.get("responseHeaders", [])), truncated=not empty)
        if not empty:
            metadata["body_unavailable"] = True
        if end.get("fromCache"):
            metadata["from_cache"] = True
        if end.get("event") == "redirect" and "redirectUrl" in end:
            metadata["redirect_url"] = end["redirectUrl"]
    if end.get("event") == "error":
        error = end.get("error") or "the browser reported an error"
    elif response is None and error is None:
        error = "the browser reported no response"
    ip = end.get("ip")
    port = _port(entry.url)
    return Flow(
        request=request,
        response=response,
        source=source,
        timings=Timings(start=entry.start, end=end["timeStamp"] / 1000 if "timeStamp" in end else None),
        server_ip=ip,
        server_address=(ip, port) if ip and port else None,
        error=error,
        metadata=metadata,
    )


def _request_body(entry: _Pending) -> tuple[bytes, dict[str, Any]]:
    """The request body and what to note about it (size, truncated, how it was rebuilt)."""
    given = entry.request_body
    if not given:
        return b"", {}
    meta: dict[str, Any] = {}
    if given.get("error"):
        meta["request_body_error"] = given["error"]
    if "raw" in given:
        try:
            body = base64.b64decode(given["raw"], validate=True)
        except (binascii.Error, ValueError):
            return b"", {**meta, "request_body_error": "the extension sent a body that is not valid base64",
                         "truncated": True}
        if given.get("truncated"):
            meta["truncated"] = True
            meta["size"] = max(given.get("size", len(body)), len(body))
        return body, meta
    if "formData" in given:
        # The browser shows form bodies only parsed: rebuild them as the form would send them.
        pairs = [(name, value) for name, values in given["formData"].items() for value in values]
        content_type = _pairs(entry.request_headers or []).get("content-type") or ""
        meta["request_body_rebuilt"] = "form-data"
        if content_type.lower().startswith("multipart/form-data") and "boundary=" in content_type:
            boundary = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip('"')
            return _multipart(pairs, boundary), meta
        return urlencode(pairs).encode(), meta
    if given.get("error") or given.get("truncated"):
        meta["truncated"] = True
    return b"", meta


def _multipart(pairs: list[tuple[str, str]], boundary: str) -> bytes:
    out = []
    for name, value in pairs:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode()


def _set_body(flow: Flow, message: dict[str, Any]) -> None:
    _set_request_body(flow, message.get("requestBody"))
    response = flow.response
    if response is None:
        return
    if message.get("error"):
        flow.metadata["body_error"] = message["error"]
        return
    try:
        data = base64.b64decode(message.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        flow.metadata["body_error"] = "the extension sent a body that is not valid base64"
        return
    response.body = data
    response.truncated = bool(message.get("truncated"))
    response.body_size = max(message.get("size", len(data)), len(data))
    flow.metadata.pop("body_unavailable", None)
    flow.metadata["body_source"] = "debugger"


def _set_request_body(flow: Flow, given: str | None) -> None:
    """A form body as the page sent it (from the debugger) replaces the one rebuilt from sorted fields."""
    if given is None or not flow.metadata.get("request_body_rebuilt"):
        return
    try:
        data = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        return  # keep the rebuilt body, which says what it is
    flow.request.body = data
    flow.request.body_size = len(data)
    flow.request.truncated = False
    del flow.metadata["request_body_rebuilt"]
    flow.metadata["request_body_source"] = "debugger"


def _pairs(headers: list[dict[str, str]]) -> flowtap.Headers:
    return flowtap.Headers((h["name"], h["value"]) for h in headers)


def _status_line(line: str) -> tuple[str | None, str]:
    """``"HTTP/1.1 200 OK"`` → ``("HTTP/1.1", "OK")``."""
    parts = line.split(" ", 2)
    if not parts[0].startswith("HTTP/"):
        return None, ""
    return parts[0], parts[2] if len(parts) > 2 else ""


def _port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    except ValueError:
        return None


def cookies(message: dict[str, Any]) -> list[Cookie]:
    """The flowtap cookies a ``cookies`` message reports; removals become expired cookies.

    A removal whose cause is ``overwrite`` is skipped: the browser sends it
    just before the set that replaces the cookie. Within one message the
    last event for a cookie wins.
    """
    found: dict[tuple[str, str, str], Cookie] = {}
    for item in message["cookies"]:
        removed = bool(item.get("removed"))
        if removed and item.get("cause") == "overwrite":
            continue
        expires: float | None = None  # a session cookie
        if removed:
            expires = 0.0
        elif not item.get("session") and "expirationDate" in item:
            expires = float(item["expirationDate"])
        cookie = Cookie(
            name=item["name"],
            value=item["value"],
            domain=item["domain"].lstrip(".").lower(),
            path=item["path"] or "/",
            expires=expires,
            secure=bool(item.get("secure")),
            httponly=bool(item.get("httpOnly")),
            samesite=_SAMESITE.get(item.get("sameSite", "")),
            host_only=bool(item.get("hostOnly", not item["domain"].startswith("."))),
        )
        found.pop(cookie.key, None)
        found[cookie.key] = cookie
    return list(found.values())
