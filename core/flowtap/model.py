"""The captured-traffic model every source produces and every sink reads.

Plain attrs classes with no mitmproxy type anywhere: a source converts what it
saw into a :class:`Flow` once, and everything downstream reads only this.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

from flowtap.cookies import Cookie, parse_cookie_header, parse_set_cookie


class Headers:
    """Ordered header pairs with duplicates kept and case-insensitive lookup."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: tuple[tuple[str, str], ...] = tuple([(str(k), str(v)) for k, v in fields])

    @property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """All ``(name, value)`` pairs in the order they were sent."""
        return self._fields

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), or ``default``."""
        name = name.lower()
        for k, v in self._fields:
            if k.lower() == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in order."""
        name = name.lower()
        return [v for k, v in self._fields if k.lower() == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and other._fields == self._fields

    def __hash__(self) -> int:
        return hash(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self._fields)!r})"


@functools.lru_cache(maxsize=1024)  # every sink asks about the same URL
def _split(url: str) -> tuple[str, str, int | None, str, str]:
    """``(scheme, host, port or None, path, query)``; raises ValueError as urlsplit does."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, parts.hostname or "", port, parts.path, parts.query


@functools.lru_cache(maxsize=1024)  # every sink asks, and the same query strings come back (pages, filters)
def _parse_query(query: str) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(query, keep_blank_values=True))


def _headers(value: Headers | Iterable[tuple[str, str]] | Mapping[str, str]) -> Headers:
    if isinstance(value, Headers):
        return value
    if isinstance(value, Mapping):
        return Headers(value.items())
    return Headers(value)


@attrs.define(slots=True)
class _Message:
    http_version: str = "HTTP/1.1"
    headers: Headers = attrs.field(factory=Headers, converter=_headers)
    body: bytes = b""
    #: Length of the whole decoded body, even when ``body`` holds less of it;
    #: None when a truncated body's full length is unknown.
    body_size: int | None = None
    #: Bytes on the wire (before Content-Encoding was undone); None if unknown.
    encoded_size: int | None = None
    #: True when ``body`` holds only part of the body, or none of it.
    truncated: bool = False

    def __attrs_post_init__(self) -> None:
        if self.body_size is None and not self.truncated:
            self.body_size = len(self.body)

    @property
    def content_type(self) -> str:
        """The Content-Type header's media type, lower-cased, without parameters."""
        value = self.headers.get("content-type") or ""
        return value.split(";", 1)[0].strip().lower()

    def text(self, errors: str = "replace") -> str:
        """The body decoded with the charset its Content-Type names (default UTF-8)."""
        charset = "utf-8"
        for param in (self.headers.get("content-type") or "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip("\"'")
        try:
            return self.body.decode(charset, errors)
        except LookupError:
            return self.body.decode("utf-8", errors)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@attrs.define(slots=True)
class Request(_Message):
    """An HTTP request as the client sent it."""

    method: str = "GET"
    url: str = ""

    @property
    def scheme(self) -> str:
        return _split(self.url)[0]

    @property
    def host(self) -> str:
        """The host name, lower-cased; "" when the URL has none (or is malformed)."""
        try:
            return _split(self.url)[1]
        except ValueError:
            return ""

    @property
    def port(self) -> int | None:
        scheme, _, port, _, _ = _split(self.url)
        return port or _DEFAULT_PORTS.get(scheme)

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``: the port left out when it is the scheme's default, IPv6 in brackets."""
        try:
            scheme, host, port, _, _ = _split(self.url)
        except ValueError:
            return ""
        scheme = scheme or "http"
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS.get(scheme) else "")

    @property
    def path(self) -> str:
        """The path and query string, as on the request line."""
        _, _, _, path, query = _split(self.url)
        return (path or "/") + (f"?{query}" if query else "")

    @property
    def query(self) -> list[tuple[str, str]]:
        """Query parameters as ordered pairs, blanks kept."""
        query = _split(self.url)[4]
        return list(_parse_query(query)) if query else []

    @property
    def cookies(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs from the Cookie header(s)."""
        pairs: list[tuple[str, str]] = []
        for value in self.headers.get_all("cookie"):
            pairs.extend(parse_cookie_header(value))
        return pairs


@attrs.define(slots=True)
class Response(_Message):
    """An HTTP response as the server sent it."""

    status_code: int = 200
    reason: str = ""


@attrs.define(slots=True)
class Timings:
    """When the exchange happened and how long each phase took.

    ``start`` and ``end`` are Unix timestamps (seconds); the phases are
    milliseconds, or None when the source could not see that phase.
    """

    start: float = attrs.field(factory=time.time)
    end: float | None = None
    dns: float | None = None
    connect: float | None = None
    tls: float | None = None
    send: float | None = None
    wait: float | None = None
    receive: float | None = None

    @property
    def duration(self) -> float | None:
        """Milliseconds from the first request byte to the last response byte."""
        return None if self.end is None else max(0.0, (self.end - self.start) * 1000)


@attrs.define(slots=True)
class TLSInfo:
    """The TLS connection between flowtap and the server (or client)."""

    version: str | None = None
    sni: str | None = None
    cipher: str | None = None
    alpn: str | None = None


@attrs.define(slots=True)
class WebSocketMessage:
    """One message on an upgraded WebSocket connection."""

    from_client: bool
    content: bytes
    is_text: bool = True
    timestamp: float = attrs.field(factory=time.time)


@attrs.define(slots=True)
class Flow:
    """One HTTP exchange: a request and, unless it failed, its response.

    ``metadata`` holds source-specific marks (for example
    ``{"body_unavailable": True}`` from a source that cannot see bodies); a
    sink may show them and must not depend on them.
    """

    request: Request
    response: Response | None = None
    source: str = "unknown"
    # 32 random hex digits, as uuid4().hex but 4x faster
    id: str = attrs.field(factory=lambda: os.urandom(16).hex())
    timings: Timings = attrs.field(factory=Timings)
    client_address: tuple[str, int] | None = None
    server_address: tuple[str, int] | None = None
    server_ip: str | None = None
    tls: TLSInfo | None = None
    error: str | None = None
    websocket: list[WebSocketMessage] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    # The last response_cookies: (response headers, request URL, time, cookies); every sink asks.
    _parsed: tuple[Any, ...] | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @property
    def request_cookies(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs the client sent in its Cookie header(s)."""
        return self.request.cookies

    @property
    def response_cookies(self) -> list[Cookie]:
        """Cookies the server set, resolved against the request URL (RFC 6265)."""
        if self.response is None:
            return []
        headers, url, now = self.response.headers, self.request.url, self.timings.end or self.timings.start
        parsed = self._parsed
        if parsed is not None and parsed[0] is headers and parsed[1] == url and parsed[2] == now:
            return list(parsed[3])
        cookies = []
        for value in headers.get_all("set-cookie"):
            cookie = parse_set_cookie(value, url, now=now)
            if cookie is not None:
                cookies.append(cookie)
        self._parsed = (headers, url, now, tuple(cookies))
        return cookies

    @property
    def cookies(self) -> list[Cookie]:
        """Every cookie this flow shows: sent by the client, then set by the server.

        Cookies from the request header carry only what the header tells
        (name, value, and the request host as a host-only domain).
        """
        pairs = self.request_cookies
        host = self.request.host if pairs else ""  # the URL is split only for a flow that sent cookies
        sent = [Cookie(name=name, value=value, domain=host, path="/", host_only=True)
                for name, value in pairs]
        return sent + self.response_cookies
