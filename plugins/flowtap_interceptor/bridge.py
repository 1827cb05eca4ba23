"""The bridge: a WebSocket server on loopback that admits only the paired flowtap extension.

It runs on a thread and asyncio loop of its own. A connection is accepted
when its ``Origin`` is a browser extension's and its first message proves
knowledge of the pairing key (HMAC of a random nonce); every later message
is validated against the protocol schema. A bad message gets an error reply
and a log line, and the connection goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

import flowtap
from flowtap_interceptor import pairing, protocol
from flowtap_interceptor.protocol import ProtocolError

EXTENSION_ORIGINS = ("chrome-extension://", "moz-extension://")
HELLO_TIMEOUT = 10.0
#: Close code for a connection refused at the hello (no key, wrong key).
CLOSE_UNAUTHORIZED = 4401
_START_TIMEOUT = 10


class Handler(Protocol):
    """What the bridge calls; every call comes from the bridge's thread."""

    def settings(self) -> dict[str, Any]: ...
    def connected(self, client: Client) -> None: ...
    def message(self, client: Client, message: dict[str, Any]) -> None: ...
    def disconnected(self, client: Client) -> None: ...
    def tick(self) -> None: ...


class Client:
    """One paired extension connection."""

    def __init__(self, ws: Any, peer: str, origin: str, agent: str) -> None:
        self.ws = ws
        self.peer = peer
        self.origin = origin
        self.agent = agent
        self.state: Any = None  # the handler's per-connection state

    def __repr__(self) -> str:
        return f"{self.agent or 'extension'} ({self.origin}, {self.peer})"


class Bridge:
    """Serve the extension protocol on ``host:port``; see the module docstring.

    :param load_key: returns the current pairing key (None: not paired yet);
        called for every connection, so a rotated key takes effect at once.
    :param max_message_size: larger messages get a ``too_large`` error reply;
        past four times this the connection is closed (code 1009) unread.
    """

    def __init__(self, host: str, port: int, handler: Handler, load_key: Callable[[], str | None],
                 max_message_size: int, log: logging.Logger) -> None:
        self.host, self.port = host, port
        self.handler = handler
        self.load_key = load_key
        self.max_message_size = max_message_size
        self.log = log
        self.clients: set[Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None

    # -- control, from any thread ---------------------------------------------------

    def start(self) -> None:
        """Listen; return once listening (``self.port`` is then the bound port).

        :raises flowtap.SourceError: the address cannot be used (port in use, ...).
        """
        self._thread = threading.Thread(target=self._run, name="flowtap-interceptor", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            self._error = f"the bridge did not start within {_START_TIMEOUT}s"
        if self._error:
            self.stop()
            raise flowtap.SourceError(self._error)

    def stop(self) -> None:
        """Close every connection, stop listening, and wait for the thread to end."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already closed
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def broadcast(self, kind: str, **fields: Any) -> None:
        """Send a message to every paired connection; returns at once (fire and forget)."""
        text = protocol.make(kind, **fields)
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._broadcast, text)
        except RuntimeError:
            pass

    # -- the bridge thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # never die silently
            if not self._ready.is_set():
                self._error = f"the bridge failed to start: {exc!r}"
            else:
                self.log.exception("the bridge stopped unexpectedly")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        # websockets' own records (a handshake that failed, "server listening") only with -vv.
        ws_log = logging.getLogger(f"{self.log.name}.websockets")
        ws_log.setLevel(logging.NOTSET if self.log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        try:
            server = await serve(
                self._connection, self.host, self.port,
                process_request=self._check_origin,
                max_size=4 * self.max_message_size,
                ping_interval=20, ping_timeout=20,
                logger=ws_log,
            )
        except OSError as exc:
            self._error = self._listen_error(exc)
            return
        self.port = server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        ticker = asyncio.create_task(self._tick())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            server.close()
            await server.wait_closed()
            self._loop = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                self.handler.tick()
            except Exception:
                self.log.exception("internal error in the interceptor source")

    def _check_origin(self, connection: Any, request: Any) -> Any:
        origin = request.headers.get("Origin") or ""
        if origin.startswith(EXTENSION_ORIGINS) and len(origin) > len("chrome-extension://"):
            return None
        self.log.warning("refused a connection from %s: origin %s is not a browser extension "
                         "(only the flowtap extension may connect)", _peer(connection), origin or "(none)")
        return connection.respond(HTTPStatus.FORBIDDEN,
                                  "flowtap bridge: only the paired flowtap browser extension may connect\n")

    async def _connection(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        peer, origin = _peer(ws), ws.request.headers.get("Origin", "")
        try:
            client = await self._pair(ws, peer, origin)
        except ConnectionClosed:
            return
        if client is None:
            return
        self.clients.add(client)
        try:
            self.handler.connected(client)
            async for raw in ws:
                await self._receive(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            try:
                self.handler.disconnected(client)
            except Exception:
                self.log.exception("internal error in the interceptor source")

    async def _pair(self, ws: Any, peer: str, origin: str) -> Client | None:
        """Challenge the peer; the paired :class:`Client`, or None once refused and closed."""
        nonce = secrets.token_hex(16)
        await ws.send(protocol.make("challenge", nonce=nonce, server=f"flowtap {flowtap.__version__}"))
        try:
            raw = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            hello = self._parse(raw, ("hello",))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return await self._refuse(ws, peer, origin, "auth_required",
                                      f"no hello within {HELLO_TIMEOUT:g}s; pair the extension first")
        except ProtocolError as exc:
            return await self._refuse(ws, peer, origin, "auth_required", f"expected a hello message: {exc}")
        try:
            key = self.load_key()
        except pairing.PairingError as exc:
            key, problem = None, str(exc)
        else:
            problem = "flowtap has no pairing key yet; run `flowtap interceptor pair`"
        if key is None:
            return await self._refuse(ws, peer, origin, "unpaired", problem)
        if not pairing.verify(key, nonce, hello["proof"]):
            return await self._refuse(ws, peer, origin, "auth_failed",
                                      "wrong pairing key; run `flowtap interceptor pair` and paste the key "
                                      "into the extension's popup")
        agent = " ".join(filter(None, (hello.get("client"), _browser(hello.get("browser", "")))))
        client = Client(ws, peer, origin, agent)
        await ws.send(protocol.make("welcome", server=f"flowtap {flowtap.__version__}",
                                    config=self.handler.settings()))
        self.log.info("extension connected: %s", client)
        return client

    async def _refuse(self, ws: Any, peer: str, origin: str, code: str, reason: str) -> None:
        self.log.warning("refused a connection from %s (origin %s): %s", peer, origin, reason)
        await ws.send(protocol.make("error", code=code, message=reason))
        await ws.close(CLOSE_UNAUTHORIZED, code)
        return None

    async def _receive(self, client: Client, raw: str | bytes) -> None:
        try:
            message = self._parse(raw)
        except ProtocolError as exc:
            self.log.warning("refused a message from %s: %s: %s", client, exc.code, exc)
            await client.ws.send(protocol.make("error", code=exc.code, message=str(exc), ref=exc.ref))
            return
        kind = message["type"]
        if kind == "ping":
            await client.ws.send(protocol.make("pong", time=message.get("time")))
        elif kind == "error":
            self.log.warning("the extension refused a message: %s: %s", message["code"], message["message"])
        elif kind != "pong":
            try:
                self.handler.message(client, message)
            except Exception:
                self.log.exception("internal error handling a %s message from %s", kind, client)
                await client.ws.send(protocol.make("error", code="internal", ref=kind,
                                                   message="flowtap failed to handle this message (see its log)"))

    def _parse(self, raw: str | bytes, allowed: tuple[str, ...] = protocol.FROM_EXTENSION) -> dict[str, Any]:
        size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode())
        if size > self.max_message_size:
            raise ProtocolError("too_large", f"a message of {size} bytes is over max_message_size "
                                             f"({self.max_message_size} bytes)")
        return protocol.parse(raw, allowed)

    def _broadcast(self, text: str) -> None:
        for client in list(self.clients):
            asyncio.ensure_future(self._send(client, text))

    async def _send(self, client: Client, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await client.ws.send(text)
        except ConnectionClosed:
            pass

    def _listen_error(self, exc: OSError) -> str:
        where = f"{self.host}:{self.port}"
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {where}: the port is in use; set [sources.interceptor] listen "
                    "to another port (and the same in the extension's popup)")
        if exc.errno == errno.EACCES:
            return f"cannot listen on {where}: permission denied; use a port above 1023"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"cannot listen on {where}: no such address on this machine"
        return f"cannot listen on {where}: {exc.strerror or exc}"


_BROWSERS = re.compile(r"\b(Edg|OPR|Brave|Firefox|HeadlessChrome|Chrome)/([\d.]+)")


def _browser(user_agent: str) -> str:
    """``"Chrome/156.0.0.0"`` out of a User-Agent string (Edge, Opera, Firefox named first)."""
    found = dict(_BROWSERS.findall(user_agent))
    for name in ("Edg", "OPR", "Brave", "Firefox", "HeadlessChrome", "Chrome"):
        if name in found:
            return f"on {name}/{found[name]}"
    return ""


def _peer(connection: Any) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
