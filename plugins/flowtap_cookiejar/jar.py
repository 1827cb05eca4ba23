"""The jar: cookies as a browser keeps them, keyed by (domain, path, name).

Storing a cookie replaces its namesake (RFC 6265 5.3 step 11); an expired
cookie (``Max-Age=0``, a past ``Expires``) deletes it instead. A cookie a
client *sent* tells only its name and value, so it never overwrites what the
jar knows about a cookie of that name for that host: only the value changes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator

import attrs

from flowtap.cookies import Cookie

#: Browsers ignore a cookie whose name and value together are longer (RFC 6265bis 5.7).
MAX_COOKIE_SIZE = 4096
#: Characters a browser refuses in a cookie's name or value (RFC 6265bis 5.7): controls but tab.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def path_match(request_path: str, cookie_path: str) -> bool:
    """RFC 6265 5.1.4: a cookie with ``cookie_path`` is sent with a request for ``request_path``."""
    if request_path == cookie_path:
        return True
    return request_path.startswith(cookie_path) and (
        cookie_path.endswith("/") or request_path[len(cookie_path)] == "/"
    )


def acceptable(cookie: Cookie) -> bool:
    """True when a browser would keep the cookie and every file format can hold it."""
    if not all(isinstance(text, str) for text in (cookie.name, cookie.value, cookie.domain, cookie.path)):
        return False
    if not cookie.name or not cookie.domain or not cookie.path.startswith("/"):
        return False
    expires = cookie.expires
    if expires is not None and not (isinstance(expires, (int, float)) and math.isfinite(expires)):
        return False
    if len(cookie.name) + len(cookie.value) > MAX_COOKIE_SIZE:
        return False
    if any(_CONTROLS.search(text) for text in (cookie.name, cookie.value, cookie.domain + cookie.path)):
        return False
    try:  # lone surrogates other than undecodable header bytes cannot be written
        (cookie.name + cookie.value + cookie.domain + cookie.path).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _domains_of(host: str) -> list[str]:
    """``host`` and every domain it is a subdomain of (none for an IP address)."""
    if ":" in host or host.rsplit(".", 1)[-1].isdigit():
        return [host]
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


class Jar:
    """A set of cookies with browser semantics. Not thread-safe: the caller locks."""

    def __init__(self) -> None:
        # (domain, name) -> path -> cookie: a Cookie header names cookies only by host and name.
        self._cookies: dict[tuple[str, str], dict[str, Cookie]] = {}

    def __len__(self) -> int:
        return sum(len(by_path) for by_path in self._cookies.values())

    def __iter__(self) -> Iterator[Cookie]:
        """The cookies in a stable order: by domain, path, name."""
        everything = (cookie for by_path in self._cookies.values() for cookie in by_path.values())
        return iter(sorted(everything, key=lambda c: (c.domain, c.path, c.name)))

    def get(self, domain: str, path: str, name: str) -> Cookie | None:
        return self._cookies.get((domain, name), {}).get(path)

    def set(self, cookie: Cookie, now: float | None = None) -> bool:
        """Store ``cookie`` over its namesake, or delete the namesake if it is expired.

        Returns True when the jar changed. A cookie a browser would refuse
        (see :func:`acceptable`) is ignored.
        """
        by_path = self._cookies.get((cookie.domain, cookie.name))
        if by_path is not None and by_path.get(cookie.path) == cookie and not cookie.is_expired(now):
            return False  # already held as it is (most flows repeat the cookies they carry)
        if not acceptable(cookie):
            return False
        if cookie.domain != cookie.domain.lower():
            cookie = attrs.evolve(cookie, domain=cookie.domain.lower())
        place = (cookie.domain, cookie.name)
        by_path = self._cookies.setdefault(place, {})
        if cookie.is_expired(now):
            changed = by_path.pop(cookie.path, None) is not None
        else:
            changed = by_path.get(cookie.path) != cookie
            by_path[cookie.path] = cookie
        if not by_path:
            del self._cookies[place]
        return changed

    def sent(self, name: str, value: str, host: str, path: str = "/", secure: bool = True,
             now: float | None = None) -> bool:  # fmt: skip
        """Merge a cookie a client sent to ``host`` (a request's ``Cookie`` header).

        If the jar holds cookies of that name that would go with this request
        (``path`` is the request's path, ``secure`` whether it went over TLS),
        and none has this value, the most specific one (longest path) takes
        the value and keeps its other attributes. If it holds none, the cookie
        is added as host-only for ``host`` at path ``/``. Returns True when
        the jar changed.
        """
        now = time.time() if now is None else now
        host = host.lower()
        candidates = [
            cookie
            for domain in _domains_of(host)
            for cookie in self._cookies.get((domain, name), {}).values()
            if (domain == host or not cookie.host_only)
            and path_match(path, cookie.path)
            and (secure or not cookie.secure)
            and not cookie.is_expired(now)
        ]
        if any(cookie.value == value for cookie in candidates):
            return False
        if candidates:
            best = max(candidates, key=lambda c: (len(c.path), len(c.domain)))
            return self.set(attrs.evolve(best, value=value), now)
        return self.set(Cookie(name=name, value=value, domain=host, path="/", host_only=True), now)

    def purge(self, now: float | None = None) -> bool:
        """Drop the cookies that have run out; True if any had."""
        now = time.time() if now is None else now
        changed = False
        for place in list(self._cookies):
            by_path = self._cookies[place]
            for path in [path for path, cookie in by_path.items() if cookie.is_expired(now)]:
                del by_path[path]
                changed = True
            if not by_path:
                del self._cookies[place]
        return changed
