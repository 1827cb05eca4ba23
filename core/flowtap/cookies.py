"""Cookies as RFC 6265 defines them: the model, and parsing of the two headers."""

from __future__ import annotations

import time
from http.cookiejar import http2time
from urllib.parse import urlsplit

import attrs


@attrs.define(slots=True, frozen=True)
class Cookie:
    """One cookie as a browser's jar would hold it.

    ``expires`` is a Unix timestamp, or None for a session cookie. A cookie
    whose ``expires`` lies in the past is a deletion (``Max-Age=0`` or a past
    ``Expires``): a jar that receives it removes its namesake.
    ``host_only`` is True when the server gave no Domain attribute, so the
    cookie goes back only to exactly ``domain``.
    """

    name: str
    value: str
    domain: str
    path: str = "/"
    expires: float | None = None
    secure: bool = False
    httponly: bool = False
    samesite: str | None = None
    host_only: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies a cookie in a jar: an update replaces the same key."""
        return (self.domain, self.path, self.name)

    def is_expired(self, now: float | None = None) -> bool:
        """True when the cookie is a deletion or has run out."""
        return self.expires is not None and self.expires <= (time.time() if now is None else now)


def domain_match(host: str, domain: str) -> bool:
    """RFC 6265 5.1.3: ``host`` is ``domain`` or a subdomain of it."""
    host, domain = host.lower().rstrip("."), domain.lower().lstrip(".").rstrip(".")
    return host == domain or host.endswith("." + domain)


def default_path(request_path: str) -> str:
    """RFC 6265 5.1.4: the directory of the request path."""
    if not request_path.startswith("/") or request_path.count("/") == 1:
        return "/"
    return request_path[: request_path.rindex("/")]


def parse_cookie_header(value: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a request's Cookie header, in order."""
    pairs = []
    for part in value.split(";"):
        name, sep, val = part.strip().partition("=")
        if sep and name.strip():
            pairs.append((name.strip(), val.strip()))
    return pairs


def parse_set_cookie(header: str, request_url: str, now: float | None = None) -> Cookie | None:
    """Parse one Set-Cookie header as a user agent would (RFC 6265 5.2, 5.3).

    Returns None when a browser would ignore the header: no ``=`` in the
    name-value pair, an empty name, or a Domain that does not cover the host.
    """
    now = time.time() if now is None else now
    url = urlsplit(request_url)
    host = (url.hostname or "").lower()
    pair, *attributes = header.split(";")
    name, sep, value = pair.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        return None

    domain = ""
    path = ""
    expires: float | None = None
    max_age: float | None = None
    secure = httponly = False
    samesite = None
    for attribute in attributes:
        key, _, val = attribute.partition("=")
        key, val = key.strip().lower(), val.strip()
        if key == "expires":
            parsed = http2time(val)
            if parsed is not None:
                expires = float(parsed)
        elif key == "max-age":
            try:
                seconds = int(val)
            except ValueError:
                continue
            max_age = now + seconds if seconds > 0 else 0.0
        elif key == "domain" and val:
            domain = val.lstrip(".").lower()
        elif key == "path":
            path = val if val.startswith("/") else ""
        elif key == "secure":
            secure = True
        elif key == "httponly":
            httponly = True
        elif key == "samesite":
            samesite = val.capitalize() if val.lower() in ("strict", "lax", "none") else None

    if domain and not domain_match(host, domain):
        return None
    return Cookie(
        name=name,
        value=value,
        domain=domain or host,
        path=path or default_path(url.path or "/"),
        expires=max_age if max_age is not None else expires,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
        host_only=not domain,
    )
