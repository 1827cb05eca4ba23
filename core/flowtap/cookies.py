"""Cookies as RFC 6265 defines them: the model, and parsing of the two headers."""

from __future__ import annotations

import calendar
import datetime
import ipaddress
import re
import time
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


#: The latest expiry kept (9999-12-31 23:59:59 UTC): RFC 6265 5.2.2 lets a
#: user agent cap expiry at the latest date it can represent.
MAX_EXPIRES = 253402300799.0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def domain_match(host: str, domain: str) -> bool:
    """RFC 6265 5.1.3: ``host`` is ``domain`` or a subdomain of it.

    An IP address matches only itself (``10.0.0.1`` is no subdomain of ``0.0.1``).
    """
    host, domain = host.lower().rstrip("."), domain.lower().lstrip(".").rstrip(".")
    return host == domain or (host.endswith("." + domain) and not _is_ip(host))


_DATE_DELIMITERS = re.compile(r"[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+")
_DATE_TIME = re.compile(r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\D|$)", re.ASCII)
_DATE_DAY = re.compile(r"(\d{1,2})(?:\D|$)", re.ASCII)
_DATE_YEAR = re.compile(r"(\d{2,4})(?:\D|$)", re.ASCII)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MAX_AGE = re.compile(r"-?\d+", re.ASCII)


def parse_cookie_date(value: str) -> float | None:
    """RFC 6265 5.1.1: the Unix time an ``Expires`` value names, or None if it names none.

    Dates before 1970 are valid (and in the past: the cookie is a deletion).
    """
    hms = day = month = year = None
    for token in _DATE_DELIMITERS.split(value):
        if not token:
            continue
        if hms is None and (match := _DATE_TIME.match(token)):
            hms = tuple(int(group) for group in match.groups())
        elif day is None and (match := _DATE_DAY.match(token)):
            day = int(match.group(1))
        elif month is None and token[:3].lower() in _MONTHS:
            month = _MONTHS.index(token[:3].lower()) + 1
        elif year is None and (match := _DATE_YEAR.match(token)):
            year = int(match.group(1))
    if hms is None or day is None or month is None or year is None:
        return None
    if year < 100:
        year += 1900 if year >= 70 else 2000
    hour, minute, second = hms
    if year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        datetime.date(year, month, day)
    except ValueError:
        return None
    return min(float(calendar.timegm((year, month, day, hour, minute, second))), MAX_EXPIRES)


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
    try:
        url = urlsplit(request_url)
        host = (url.hostname or "").lower()
    except ValueError:  # e.g. "http://[::1/": no host a cookie could belong to
        return None
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
            parsed = parse_cookie_date(val)
            if parsed is not None:
                expires = parsed
        elif key == "max-age":
            if not _MAX_AGE.fullmatch(val):
                continue  # RFC 6265 5.2.2: only an optional "-" and digits
            seconds = int(val) if len(val) < 20 else (-1 if val.startswith("-") else int(MAX_EXPIRES))
            max_age = min(now + seconds, MAX_EXPIRES) if seconds > 0 else 0.0
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

    if domain and (_is_ip(domain) or "." not in domain):
        # A single-label Domain (localhost) or an IP address covers no other host: browsers
        # keep such a cookie host-only when it names the host itself, and refuse it otherwise.
        if domain != host.strip("[]"):
            return None
        domain = ""
    elif domain and not domain_match(host, domain):
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
