"""The bridge: a WebSocket server on loopback that admits only the paired flowtap extension.

It runs on a thread and asyncio loop of its own. Its ``Origin`` must be a
browser extension's (a web page cannot connect), and then both sides prove
they hold the pairing key over fresh nonces, the bridge first, so that the
extension sends nothing to a server that is not flowtap::

    extension -> hello      nonce Ne                    (32 random bytes, hex)
    bridge    -> challenge  nonce Nb, HMAC(key, "flowtap-bridge\\n" Ne "\\n" Nb)
    extension    checks that proof; closes (4401) if it is wrong
    extension -> auth       HMAC(key, "flowtap-extension\\n" Nb "\\n" Ne)
    bridge    -> welcome    the settings flowtap asks for

A recorded exchange replays nowhere: each side's proof covers the other
side's fresh nonce, and the bridge refuses a hello nonce it has seen before.

Until its ``auth`` checks out a connection is *pending*, and kept cheap: at
most :data:`MAX_PENDING` at once (more are dropped as they arrive), frames of
:data:`PENDING_FRAME_SIZE` bytes, :data:`PENDING_BYTES` in all (the HTTP
upgrade included), :data:`OPEN_TIMEOUT` + :data:`AUTH_TIMEOUT` seconds to
finish. Refusals are logged through :class:`RefusalLog`: a flood writes one
line per interval, not one per connection.

Once paired, every message is validated against the protocol schema; a bad
one gets an error reply and a log line, and the connection goes on. The key
file is read again every second: when it changed (``flowtap interceptor pair
--new``) the connections paired with the old key are closed.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import flowtap
from flowtap_interceptor import pairing, protocol
from flowtap_interceptor.protocol import ProtocolError

EXTENSION_ORIGINS = ("chrome-extension://", "moz-extension://")
#: Close code for a connection refused at pairing (no key, wrong key, a key replaced since).
CLOSE_UNAUTHORIZED = 4401
#: Connections that have not proved the key yet, at most; more are dropped as they arrive.
MAX_PENDING = 16
#: Largest frame a pending connection may send (a hello or an auth is ~200 bytes).
PENDING_FRAME_SIZE = 4096
#: Bytes a pending connection may send in all, HTTP upgrade request included; past it, it is dropped.
PENDING_BYTES = 64 * 1024
#: Seconds for the HTTP upgrade, then for hello and auth.
OPEN_TIMEOUT = 5.0
AUTH_TIMEOUT = 5.0
#: Hello nonces remembered, to refuse one seen before.
SEEN_NONCES = 4096
#: Seconds between two summary lines of refused connections.
REFUSAL_LOG_INTERVAL = 10.0
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

    def __init__(self, ws: Any, peer: str, origin: str, agent: str, key: str, instance: str = "") -> None:
        self.ws = ws
        self.peer = peer
        self.origin = origin
        self.agent = agent
        self.key = key  # the key it proved: a connection outlives no key change
        #: The browser session it speaks for, the same across the extension worker's restarts ("" if
        #: it does not say): the requests in flight outlive one connection.
        self.instance = instance
        self.state: Any = None  # the handler's per-connection state

    def __repr__(self) -> str:
        return f"{self.agent or 'extension'} ({self.origin}, {self.peer})"


class RefusalLog:
    """Logs refused connections at a bounded rate.

    The first refusal of a quiet period is logged at once, with its reason;
    the ones that follow within ``interval`` seconds are only counted, and
    :meth:`tick` (or :meth:`flush`) writes one line with their number and the
    last one's reason.
    """

    def __init__(self, log: logging.Logger, interval: float = REFUSAL_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self.total = 0
        self._since: float | None = None  # when the current interval began
        self._held = 0
        self._last = ""

    def refused(self, peer: str, reason: str) -> None:
        self.total += 1
        text = f"refused a connection from {peer}: {reason}"
        now = self.clock()
        if self._since is None or now - self._since >= self.interval:
            self.flush()
            self._since = now
            self.log.warning("%s", text)
        else:
            self._held += 1
            self._last = text

    def tick(self) -> None:
        """Write the summary of an interval that is over."""
        if self._held and self._since is not None and self.clock() - self._since >= self.interval:
            self.flush()
            self._since = self.clock()

    def flush(self) -> None:
        """Write the summary of the refusals counted but not logged yet, if any."""
        if self._held:
            self.log.warning("refused %d more connection%s (logged once per %gs); the last: %s", self._held,
                             "s" * (self._held > 1), self.interval, self._last)
            self._held = 0


class _HandshakeFailures(logging.Filter):
    """Drops websockets' "opening handshake failed" (websockets 16 logs an error with a traceback
    for each client that closed, or spoke no WebSocket, before the upgrade; 17 only a debug line):
    such a client is counted as a refused connection when it goes (see ``connection_lost``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "opening handshake failed"


def _make_connection_class(bridge: Bridge) -> type[ServerConnection]:
    """A websockets connection that keeps a pending (not yet paired) connection within its budget."""

    class Connection(ServerConnection):
        paired = False
        received = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert isinstance(transport, asyncio.Transport)
            if len(bridge.pending) >= MAX_PENDING:
                bridge.refusals.refused(_peer_of(transport), f"{MAX_PENDING} connections are already waiting "
                                                             "to pair; try again in a few seconds")
                transport.abort()
                return
            bridge.pending.add(self)

        def data_received(self, data: bytes) -> None:
            if not self.paired:
                self.received += len(data)
                if self.received > PENDING_BYTES:
                    bridge.pending.discard(self)
                    bridge.refusals.refused(_peer_of(self.transport), f"sent more than {PENDING_BYTES} bytes "
                                                                      "before pairing")
                    self.transport.abort()
                    return
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            failed = self.protocol.handshake_exc  # no valid WebSocket upgrade came
            if self in bridge.pending and failed is not None:
                cause = failed.__cause__
                bridge.refusals.refused(_peer_of(self.transport), f"no WebSocket handshake: {failed}"
                                                                  + (f" ({cause})" if cause else ""))
            bridge.pending.discard(self)
            super().connection_lost(exc)

    return Connection


class Bridge:
    """Serve the extension protocol on ``host:port``; see the module docstring.

    :param load_key: returns the current pairing key (None: not paired yet);
        called for every connection and every second, so a rotated key takes
        effect at once and cuts off the connections paired with the old one.
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
        self.pending: set[ServerConnection] = set()
        self.refusals = RefusalLog(log)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()
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
        self._stop = asyncio.Event()
        # websockets' own records (a handshake that failed, "server listening") only with -vv.
        ws_log = logging.getLogger(f"{self.log.name}.websockets")
        verbose = self.log.isEnabledFor(logging.DEBUG)
        ws_log.setLevel(logging.NOTSET if verbose else logging.WARNING)
        if not verbose and not any(isinstance(f, _HandshakeFailures) for f in ws_log.filters):
            ws_log.addFilter(_HandshakeFailures())
        try:
            server = await serve(
                self._connection, self.host, self.port,
                process_request=self._check_origin,
                create_connection=_make_connection_class(self),
                open_timeout=OPEN_TIMEOUT,
                max_size=PENDING_FRAME_SIZE,  # raised once the connection is paired
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
            self.refusals.flush()
            self._loop = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.refusals.tick()
            self._check_key()
            try:
                self.handler.tick()
            except Exception:
                self.log.exception("internal error in the interceptor source")

    def _check_key(self) -> None:
        """Close the connections paired with a key that is no longer the key file's."""
        if not self.clients:
            return
        try:
            key = self.load_key()
        except pairing.PairingError:
            key = None
        stale = [c for c in self.clients
                 if key is None or not hmac.compare_digest(c.key.encode(), key.encode())]
        if not stale:
            return
        self.log.warning("the pairing key %s: closing %d extension connection%s paired with the old key "
                         "(give the extension the new key)", "changed" if key else "is gone", len(stale),
                         "s" * (len(stale) > 1))
        for client in stale:
            self.clients.discard(client)
            task = asyncio.ensure_future(self._close(client.ws, "auth_failed",
                                                     "flowtap's pairing key was replaced "
                                                     "(`flowtap interceptor pair --new`); paste the new key"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _check_origin(self, connection: Any, request: Any) -> Any:
        origin = request.headers.get("Origin") or ""
        if origin.startswith(EXTENSION_ORIGINS) and len(origin) > len("chrome-extension://"):
            return None
        self.refusals.refused(_peer(connection), f"origin {origin or '(none)'} is not a browser extension "
                                                 "(only the flowtap extension may connect)")
        return connection.respond(HTTPStatus.FORBIDDEN,
                                  "flowtap bridge: only the paired flowtap browser extension may connect\n")

    async def _connection(self, ws: Any) -> None:
        peer, origin = _peer(ws), ws.request.headers.get("Origin", "")
        try:
            client = await asyncio.wait_for(self._pair(ws, peer, origin), AUTH_TIMEOUT)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            await self._refuse(ws, peer, "auth_required",
                               f"did not pair within {AUTH_TIMEOUT:g}s (an extension older than this flowtap "
                               "waits for the bridge to speak first: load it again from `flowtap interceptor "
                               "extension`)")
            return
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNAUTHORIZED:
                self.refusals.refused(peer, "the extension did not accept this bridge's proof: it holds "
                                            "another pairing key; run `flowtap interceptor pair` and paste "
                                            "the key into the extension's popup")
            return
        if client is None:
            return
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
        """Prove the key, check the peer's proof: the paired :class:`Client`, or None once refused."""
        try:
            hello = self._parse(await ws.recv(), ("hello",))
        except ProtocolError as exc:
            await self._refuse(ws, peer, "auth_required", f"expected a hello message: {exc}")
            return None
        extension_nonce = hello["nonce"]
        if not pairing.is_hex64(extension_nonce):
            await self._refuse(ws, peer, "auth_required", "the hello's nonce is not 64 lowercase hex digits")
            return None
        if extension_nonce in self._seen:
            await self._refuse(ws, peer, "auth_failed", "a hello replayed (its nonce was used before)")
            return None
        self._seen[extension_nonce] = None
        if len(self._seen) > SEEN_NONCES:
            self._seen.popitem(last=False)
        try:
            key = self.load_key()
        except pairing.PairingError as exc:
            key, problem = None, str(exc)
        else:
            problem = "flowtap has no pairing key yet; run `flowtap interceptor pair`"
        if key is None:
            await self._refuse(ws, peer, "unpaired", problem)
            return None
        bridge_nonce = pairing.new_nonce()
        await ws.send(protocol.make("challenge", nonce=bridge_nonce,
                                    proof=pairing.bridge_proof(key, extension_nonce, bridge_nonce)))
        try:
            auth = self._parse(await ws.recv(), ("auth",))
        except ProtocolError as exc:
            await self._refuse(ws, peer, "auth_required", f"expected an auth message: {exc}")
            return None
        if not pairing.matches(pairing.extension_proof(key, bridge_nonce, extension_nonce), auth["proof"]):
            await self._refuse(ws, peer, "auth_failed",
                               "wrong pairing key; run `flowtap interceptor pair` and paste the key "
                               "into the extension's popup")
            return None
        ws.paired = True
        self.pending.discard(ws)
        _set_max_size(ws, 4 * self.max_message_size)
        agent = " ".join(filter(None, (auth.get("client"), _browser(auth.get("browser", "")))))
        client = Client(ws, peer, origin, agent, key, auth.get("instance", ""))
        self.clients.add(client)  # from now on it gets every broadcast, sent after the welcome
        try:
            await ws.send(protocol.make("welcome", server=f"flowtap {flowtap.__version__}",
                                        config=self.handler.settings()))
        except BaseException:  # closed, or out of time
            self.clients.discard(client)
            raise
        self.log.info("extension connected: %s", client)
        return client

    async def _refuse(self, ws: Any, peer: str, code: str, reason: str) -> None:
        self.refusals.refused(peer, reason)
        await self._close(ws, code, reason)

    @staticmethod
    async def _close(ws: Any, code: str, reason: str) -> None:
        try:
            await ws.send(protocol.make("error", code=code, message=reason))
            await ws.close(CLOSE_UNAUTHORIZED, code)
        except ConnectionClosed:
            pass

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
                problem = "flowtap failed to handle this message (see its log)"
                await client.ws.send(protocol.make("error", code="internal", ref=kind, message=problem))

    def _parse(self, raw: str | bytes, allowed: tuple[str, ...] = protocol.FROM_EXTENSION) -> dict[str, Any]:
        size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode())
        if size > self.max_message_size:
            raise ProtocolError("too_large", f"a message of {size} bytes is over max_message_size "
                                             f"({self.max_message_size} bytes)")
        return protocol.parse(raw, allowed)

    def _broadcast(self, text: str) -> None:
        for client in list(self.clients):
            asyncio.ensure_future(self._send(client, text))

    @staticmethod
    async def _send(client: Client, text: str) -> None:
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


def _set_max_size(ws: Any, size: int) -> None:
    """Raise the largest frame a connection accepts (websockets 16+ name it ``max_message_size``)."""
    if hasattr(ws.protocol, "max_message_size"):
        ws.protocol.max_message_size = size
    else:  # websockets 13 to 15
        ws.protocol.max_size = size


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


def _peer_of(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if address else "?"
