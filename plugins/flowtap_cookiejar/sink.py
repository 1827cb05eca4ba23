"""The cookiejar sink: every cookie any source sees, kept in sync in a file.

Cookies arrive through the ``flowtap_cookies_seen`` hook, whether or not the
session is paused (as Postman keeps syncing): a flow's ``Set-Cookie``
headers, parsed against its request URL, and its ``Cookie`` header, which
tells only names and values (see :meth:`flowtap_cookiejar.jar.Jar.sent`); and
cookie events a source reports directly (a browser extension), which carry
every attribute. ``domains`` limits the jar to cookies whose domain is one of
them or a subdomain (``example.com`` covers ``api.example.com``); empty means
all.

With ``sync`` on, the file shows a change within a second: the sink's
worker flushes after each batch it handles (cookies included, paused or
not), and a dirty jar is written then, at most every :data:`MIN_INTERVAL`
seconds; a :meth:`flowtap.Sink.call_later` callback, on the same thread,
writes what a throttled flush left. Every write goes to a temporary file
that then replaces the jar, so a reader never sees half a file; expired
cookies are left out. With ``sync`` off the file is written when the
session ends.

An existing file is read when the session begins and updated, never
clobbered: a file that is not a jar in the configured format stops the run
with the line at fault. A new file is created readable by its owner only.

Clearing the session does not empty the jar: like Postman's cookie manager,
the jar outlives the requests that filled it (delete the file to start over).
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import flowtap
from flowtap.cookies import Cookie, domain_match
from flowtap.paths import atomic_writer, check_writable, expand_path
from flowtap_cookiejar.formats import FORMATS, FormatError
from flowtap_cookiejar.jar import Jar, acceptable

if TYPE_CHECKING:
    from flowtap.scheduler import Timer

log = logging.getLogger("flowtap.cookiejar")

#: The least time between two writes of the file (seconds).
MIN_INTERVAL = 0.25


class CookieJarSink(flowtap.Sink):
    """Keeps a cookie jar file in sync with the cookies the sources see."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.template: str = options["path"]
        self.path = Path(self.template)
        self.format = options["format"]
        self.dump, self.load = FORMATS[self.format]
        self.domains: list[str] = list(options["domains"])
        self.sync: bool = options["sync"]
        self.jar = Jar()
        self._dirty = False
        self._last_write = float("-inf")
        self._timer: Timer | None = None  # the write a throttled flush left
        self._ran = False  # the session ran: the sink's worker flushed at least once
        self._mode = 0o600
        self._skipped: set[tuple[str, str, str]] = set()

    # -- the sink -------------------------------------------------------------

    def open(self, session: flowtap.Session) -> None:
        """Check that the jar can be written and read what it already holds."""
        self.path = path = expand_path(self.template, session)
        check_writable(path)
        if not path.exists():
            self._dirty = True  # create it at the first flush (sync) or at the end
            return
        try:
            self._mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise flowtap.SinkError(f"{path}: cannot read the cookie jar: {exc.strerror or exc}") from None
        try:
            cookies = self.load(text)
        except FormatError as exc:
            raise flowtap.SinkError(f"{path}: not a {self.format} cookie jar: {exc} "
                                    "(fix the file, move it away, or set another path)") from None
        for cookie in cookies:
            self.jar.set(cookie)

    def write(self, flow: flowtap.Flow) -> None:
        """Recorded flows need nothing more: their cookies came through the hook."""

    def flush(self) -> None:
        self._ran = True
        if self.sync:
            self._sync()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dirty and self._ran:  # not when another sink refused to start
            self._write()

    # -- cookies --------------------------------------------------------------

    @flowtap.hookimpl
    def flowtap_cookies_seen(self, cookies: list[Cookie], flow: flowtap.Flow | None, source: str) -> None:
        """Take in the cookies a flow carries or a source reported."""
        now = time.time()
        changed = False
        if flow is None:
            for cookie in cookies:
                if isinstance(cookie, Cookie) and acceptable(cookie) and self._wanted(cookie.domain):
                    changed |= self.jar.set(cookie, now)
        else:
            changed = self._take_flow(flow, now)
        self._dirty |= changed

    def _take_flow(self, flow: flowtap.Flow, now: float) -> bool:
        # The flow's headers are read again rather than the ``cookies`` list,
        # to tell what the client sent (name and value only) from what the
        # server set: sent first, as they happened.
        changed = False
        try:
            url = urlsplit(flow.request.url)
            host = (url.hostname or "").lower()
        except ValueError:  # no host to file the cookies under
            return False
        if host and self._wanted(host):
            secure = url.scheme in ("https", "wss")
            for name, value in flow.request_cookies:
                changed |= self.jar.sent(name, value, host, url.path or "/", secure, now)
        for cookie in flow.response_cookies:
            if self._wanted(cookie.domain):
                changed |= self.jar.set(cookie, now)
        return changed

    def _wanted(self, domain: str) -> bool:
        return not self.domains or any(domain_match(domain, wanted) for wanted in self.domains)

    # -- the file ---------------------------------------------------------------

    def _sync(self) -> None:
        """Write the jar if it changed, at most once every MIN_INTERVAL."""
        if not self._dirty:
            return
        wait = self._last_write + MIN_INTERVAL - time.monotonic()
        if wait <= 0:
            self._write()
        elif self._timer is None:
            self._timer = self.call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._sync()

    def _write(self) -> None:
        """Replace the file with the jar's current cookies; still dirty if that fails."""
        self.jar.purge()
        text, skipped = self.dump(self.jar)
        for cookie in skipped:
            if cookie.key not in self._skipped:
                self._skipped.add(cookie.key)
                log.warning("%s: cookie %r for %s left out: the %s format cannot hold its name or value",
                            self.path, cookie.name, cookie.domain, self.format)
        try:
            with atomic_writer(self.path, self._mode) as file:
                file.write(text.encode("utf-8", "surrogateescape"))
        except OSError as exc:  # the next flush tries again
            raise flowtap.SinkFailed(f"{self.path}: cannot write the cookie jar: "
                                     f"{exc.strerror or exc}") from None
        self._dirty = False
        self._last_write = time.monotonic()
