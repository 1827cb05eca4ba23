"""The web UI's server: tornado, on an event loop of its own in a thread of its own.

Tornado (it comes with mitmproxy) because it is asyncio-native: a live table
is a long-lived Server-Sent Events response per open page, which costs a
coroutine, not a thread, and the server's loop never shares the proxy's.
Store reads run on :class:`flowtap_web.data.Reader` threads.

Safety, as Jupyter does it: a secret token in the printed URL is traded for an
HttpOnly, SameSite=Strict cookie; every request must carry it. ``Host`` must
name this server (no DNS rebinding), ``Origin``, when sent, must be its own
(no cross-site requests; no CORS header is ever sent), and every response
carries a strict Content-Security-Policy: captured content is only ever put
in the page as text, and no script but the UI's own may run.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import secrets
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from flowtap.commandline import UsageError
from flowtap.config import Config
from flowtap.filters import FilterError
from flowtap.store import StoreError
from flowtap.store.commands import ExportFailed
from flowtap.store.db import EmptyStore
from flowtap_web import data

log = logging.getLogger("flowtap.web")

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
#: Seconds between two looks at the store for a live table's new rows.
POLL_INTERVAL = 0.5
#: Rows one live update brings at most: past it (the proxy outran what anyone can read) the page
#: jumps to the newest and loads the ones skipped only if scrolled back to them.
LIVE_LIMIT = 100


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebServer:
    """The UI over the session store at ``store``, for ``config`` (its sinks export).

    :param host: the address to listen on (loopback unless configured otherwise).
    :param port: the port; 0: a free one.
    :param allowed_hosts: more names the ``Host`` header may give (for a non-loopback address).
    """

    def __init__(self, store: Path | str, config: Config, host: str = "127.0.0.1", port: int = 0,
                 allowed_hosts: Iterable[str] = (), disable: Iterable[str] = ()) -> None:
        self.store_path = store
        self.config = config
        self.disable = set(disable)
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self.allowed_hosts = {h.lower() for h in allowed_hosts} | {"localhost", "127.0.0.1", "[::1]"}
        if host not in ("0.0.0.0", "::", ""):
            self.allowed_hosts.add(f"[{host}]" if ":" in host else host.lower())
        self.reader = data.Reader(store)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        #: Set when the server stops (on its loop): live streams end at once.
        self.stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The URL to open: it carries the token."""
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> str:
        """Listen (in this thread, so that a taken port fails here) and serve on a thread; the URL.

        :raises OSError: the address cannot be listened on.
        """
        sockets = tornado.netutil.bind_sockets(self.port, self.host or None)
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            asyncio.run(self._serve(sockets, ready))

        self._thread = threading.Thread(target=serve, name="flowtap-web", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    async def _serve(self, sockets: list[Any], ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        server = tornado.httpserver.HTTPServer(self.application(), xheaders=False)
        server.add_sockets(sockets)
        ready.set()
        await self.stopping.wait()
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)

    def stop(self) -> None:
        """Stop serving: close every connection, end the thread."""
        if self._loop is not None and self.stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)
            self._thread.join(10)
        self.reader.close()

    def application(self) -> tornado.web.Application:
        ui = {"ui": self}
        return tornado.web.Application([
            (r"/", Page, ui),
            (r"/static/([a-z]+\.(?:js|css))", Static, ui),
            (r"/api/sessions", Sessions, ui),
            (r"/api/sessions/([^/]+)", OneSession, ui),
            (r"/api/sessions/([^/]+)/flows", Flows, ui),
            (r"/api/sessions/([^/]+)/live", Live, ui),
            (r"/api/sessions/([^/]+)/control", Control, ui),
            (r"/api/sessions/([^/]+)/export", Export, ui),
            (r"/api/sessions/([^/]+)/cookies", Cookies, ui),
            (r"/api/sinks", Sinks, ui),
            (r"/api/flows/([0-9a-zA-Z_-]+)", OneFlow, ui),
        ], default_handler_class=NotFound, default_handler_args=ui, compress_response=False,
           log_function=_log)

    def cookie_name(self) -> str:
        return f"flowtap_web_{self.port}"  # cookies are shared across ports: one per server


def _json(value: Any) -> bytes:
    """``value`` as compact JSON (orjson: the live stream encodes every new row)."""
    return orjson.dumps(value, default=str)


def _log(handler: tornado.web.RequestHandler) -> None:
    """Requests are logged at debug level only: inside a run, the console is the live table's."""
    request = handler.request
    log.debug("%d %s %.1fms", handler.get_status(), request.uri, 1000 * request.request_time())


class Handler(tornado.web.RequestHandler):
    """Every request: the right Host, the right Origin (if any), and the token's cookie."""

    web: WebServer

    def initialize(self, ui: WebServer) -> None:
        self.web = ui

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    def prepare(self) -> None:
        host = (self.request.headers.get("Host") or "").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in self.web.allowed_hosts:
            self.refuse(403, f"Host {host!r} is not this flowtap web UI's (DNS rebinding?)")
            return
        origin = self.request.headers.get("Origin")
        if origin is not None and urlsplit(origin)._replace(path="").geturl().lower() != f"http://{host}":
            self.refuse(403, f"cross-site request from {origin!r} refused")
            return
        if not self.admit() and not self.authorized():
            self.refuse(403, "open the URL `flowtap web` printed (with its token), not this one")

    def admit(self) -> bool:
        """Whether this request is let in without the cookie (and answered already)."""
        return False

    async def head(self, *args: str) -> None:
        """What GET answers, headers only (Tornado leaves a HEAD answer's body out); 405 without GET."""
        answer = self.get(*args)
        if answer is not None:
            await answer

    def authorized(self) -> bool:
        given = self.get_cookie(self.web.cookie_name()) or ""
        return hmac.compare_digest(given.encode(), self.web.token.encode())

    def refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(_json(value))

    def body_json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the request body is not JSON") from None
        if not isinstance(value, dict):
            raise tornado.web.HTTPError(400, reason="expected a JSON object")
        return value

    async def read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(store, ...)`` on a reader thread; the store's and filters' errors become 400s."""
        try:
            return await self.web.reader.call(fn, *args, **kwargs)
        except (StoreError, FilterError, UsageError, ExportFailed) as exc:
            raise tornado.web.HTTPError(400, reason=str(exc).splitlines()[0]) from None

    def params(self) -> dict[str, str]:
        return {key: self.get_argument(key) for key in self.request.arguments}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self._reason}))


class NotFound(Handler):
    def prepare(self) -> None:
        super().prepare()
        if not self._finished:
            raise tornado.web.HTTPError(404, reason="no such page")


class Page(Handler):
    def admit(self) -> bool:
        token = self.get_argument("token", None)
        if token is None or not hmac.compare_digest(token.encode(), self.web.token.encode()):
            return False
        # Traded for a cookie, then out of the address bar (and of the history).
        self.set_cookie(self.web.cookie_name(), token, httponly=True, samesite="Strict", path="/")
        self.redirect("/")
        return True

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish((STATIC / "index.html").read_bytes())


class Static(Handler):
    def get(self, name: str) -> None:
        path = STATIC / name
        if not path.is_file():
            raise tornado.web.HTTPError(404, reason="no such file")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        self.set_header("Content-Type", f"{kind}; charset=utf-8")
        self.finish(path.read_bytes())


class Sessions(Handler):
    async def get(self) -> None:
        from flowtap.store.commands import shown

        try:
            sessions = await self.web.reader.call(data.sessions)
        except EmptyStore:  # nothing recorded yet: no file, or a database without the tables
            sessions = []
        except StoreError as exc:
            raise tornado.web.HTTPError(400, reason=str(exc).splitlines()[0]) from None
        self.write_json({"sessions": sessions, "store": shown(self.web.store_path)})


class OneSession(Handler):
    async def get(self, ref: str) -> None:
        self.write_json(await self.read(data.session, ref))

    async def patch(self, ref: str) -> None:
        from flowtap.store.commands import rename_session

        name = str(self.body_json().get("name", ""))
        await self.read(lambda store: rename_session(self.web.store_path, ref, name))
        self.write_json({"ok": True})

    async def delete(self, ref: str) -> None:
        from flowtap.store.commands import delete_sessions

        await self.read(lambda store: delete_sessions(self.web.store_path, [ref]))
        self.write_json({"ok": True})


def _int(value: str | None) -> int | None:
    try:
        return None if value in (None, "") else int(str(value))
    except ValueError:
        raise tornado.web.HTTPError(400, reason=f"expected a number, got {value!r}") from None


class Flows(Handler):
    async def get(self, ref: str) -> None:
        params = self.params()
        expression = await self.read(lambda store: data.expression(params))
        page = await self.read(data.page, ref, expression, after=_int(params.get("after")),
                               before=_int(params.get("before")), newest=params.get("newest") == "1",
                               limit=_int(params.get("limit")) or data.PAGE_LIMIT)
        self.write_json(page)


class Live(Handler):
    """Server-Sent Events: the rows recorded after ``after``, pushed as the store gets them, and the
    session (state, counts, events) when it changes; ends when the session does."""

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    async def get(self, ref: str) -> None:
        params = self.params()
        expression = await self.read(lambda store: data.expression(params))
        ref = (await self.read(lambda store: store.session(ref, unique=True))).id  # polled by id
        cursor = _int(params.get("after")) or 0
        self.set_header("Content-Type", "text/event-stream")
        if self.request.method == "HEAD":  # the stream's headers, not a stream that never ends
            self.finish()
            return
        last: Any = None
        while not self._closed:
            news = await self.read(data.update, ref, expression, cursor, LIVE_LIMIT)
            cursor = news.pop("cursor")
            if news["rows"] or news["session"] != last:
                last = news["session"]
                self.write(b"data: " + _json(news) + b"\n\n")
                try:
                    await self.flush()
                except tornado.iostream.StreamClosedError:
                    return
            if not last["live"]:
                break
            try:
                assert self.web.stopping is not None
                await asyncio.wait_for(self.web.stopping.wait(), POLL_INTERVAL)
                break  # the server stops
            except asyncio.TimeoutError:
                pass
        self.finish()


class Control(Handler):
    """Pause, resume, clear, mark, stop a live session: through its run's control socket, as
    ``flowtap ctl`` does, so every sink sees the same session events."""

    async def post(self, ref: str) -> None:
        message = self.body_json()
        op = message.get("op")
        if op not in ("pause", "resume", "clear", "mark", "stop"):
            raise tornado.web.HTTPError(400, reason=f"unknown control {op!r}")
        request = {"op": op, **({"text": str(message["text"])} if message.get("text") else {})}
        self.write_json(await self.read(_control, ref, request))


def _control(store: Any, ref: str, request: dict[str, Any]) -> dict[str, Any]:
    from flowtap.control.client import ControlError, request as ask
    from flowtap.control.runs import socket_path

    session = store.session(ref, unique=True)
    if not session.live or not session.pid:
        raise UsageError(f"session {session.name!r} is not being recorded: nothing to control")
    try:
        reply = ask(socket_path(session.pid), request)
    except ControlError as exc:
        raise UsageError(str(exc)) from None
    running = (reply.get("session") or {}).get("id")
    if request["op"] != "stop" and running != session.id:
        raise UsageError(f"pid {session.pid} records another session now")
    if not reply.get("ok"):
        raise UsageError(str(reply.get("error")))
    return reply


class Sinks(Handler):
    async def get(self) -> None:
        from flowtap.store.commands import export_sinks

        sinks = await self.read(lambda store: export_sinks(self.web.config, self.web.disable))
        # The store's path names a database (with a folder of bodies), not a file to download.
        self.write_json({"sinks": [name for name in sorted(sinks) if name != "store"] + ["curl"]})


class Export(Handler):
    """A download of the session (or its selected or matching flows) through a sink, by the same
    code as ``flowtap export``."""

    async def post(self, ref: str) -> None:
        message = self.body_json()
        sink = str(message.get("sink") or "")
        params = {k: str(v) for k, v in (message.get("filters") or {}).items()}
        ids = message.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise tornado.web.HTTPError(400, reason="ids: expected a list of flow ids")
        name, body = await self.read(self._export, ref, sink, params, ids)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
        self.finish(body)

    def _export(self, store: Any, ref: str, sink: str, params: dict[str, str],
                ids: list[str] | None) -> tuple[str, bytes]:
        from flowtap.paths import expand_path
        from flowtap.store.commands import curl_commands, export_session, export_sinks

        session = store.session(ref, unique=True)
        expression = data.expression(params)
        if sink == "curl":
            lines = "\n".join(curl_commands(store, session, expression, ids))
            return f"{expand_path('flowtap-{session}', session).name}.sh", (lines + "\n").encode()
        sinks = export_sinks(self.web.config, self.web.disable)
        if sink not in sinks:
            raise UsageError(f"no sink {sink!r} to export through (available: {', '.join(sinks)})")
        name = expand_path(sinks[sink], session).name
        with tempfile.TemporaryDirectory(prefix="flowtap-web-") as tmp:
            done = export_session(self.web.config, store, session, sink, Path(tmp) / name,
                                  expression=expression, ids=ids, disable=self.web.disable, quiet=True)
            return name, done.target.read_bytes()


class Cookies(Handler):
    async def get(self, ref: str) -> None:
        session = await self.read(lambda store: store.session(ref, unique=True))
        self.write_json({"domains": await self.read(data.cookies, session.id)})


class OneFlow(Handler):
    async def get(self, flow_id: str) -> None:
        self.write_json(await self.read(data.flow, flow_id))
