"""The interceptor source: the bridge, fed by the extension, emitting flows and cookie events."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import flowtap
from flowtap_interceptor import convert, pairing
from flowtap_interceptor.bridge import Bridge, Client

#: How long the requests in flight of a browser whose extension disconnected wait for it to come
#: back (its service worker restarted) before they are recorded as unfinished.
RECONNECT_WAIT = 30.0


class InterceptorSource(flowtap.Source):
    """Captures the user's own browser traffic through the flowtap extension.

    Built sources are registered as plugins, so the session hooks below
    reach it: a pause or resume is pushed to every connected extension.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.host, self.port = options["listen"]
        self.key_path = pairing.key_path(options["key_file"])
        self.bridge: Bridge | None = None
        self._emitter: flowtap.Emitter | None = None
        self._paused = False
        #: Browser sessions that disconnected (instance id -> their requests in flight, and until when
        #: they wait for the extension to reconnect). Touched on the bridge's thread only.
        self._parked: dict[str, tuple[convert.Assembler, float]] = {}

    # -- flowtap.Source -----------------------------------------------------------------

    def start(self, emitter: flowtap.Emitter) -> None:
        """Make sure a pairing key exists, then start the bridge; return once it listens."""
        try:
            _, created = pairing.ensure_key(self.key_path)
        except pairing.PairingError as exc:
            raise flowtap.SourceError(str(exc)) from None
        if created:
            emitter.log.warning("created a pairing key in %s: run `flowtap interceptor pair` to see it and "
                                "paste it into the extension", self.key_path)
        if not _is_loopback(self.host):
            emitter.log.warning("the interceptor bridge listens on %s, not on loopback: other machines "
                                "can reach it (only a paired extension is admitted)", self.host)
        self._emitter = emitter
        self._paused = not emitter.recording
        self.bridge = Bridge(self.host, self.port, self, lambda: pairing.read_key(self.key_path),
                             self.options["max_message_size"], emitter.log)
        self.bridge.start()
        self.port = self.bridge.port

    def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None
        for assembler, _ in self._parked.values():
            self._emit(assembler.close())
        self._parked.clear()

    def describe(self) -> list[str]:
        return [
            f"interceptor bridge listening on ws://{self.host}:{self.port}",
            "load the extension (`flowtap interceptor extension`) and pair it with the key "
            "`flowtap interceptor pair` shows",
        ]

    # -- session hooks (the source is registered as a plugin while it runs) --------------

    @flowtap.hookimpl
    def flowtap_session_start(self) -> None:
        self._set_paused(False)

    @flowtap.hookimpl
    def flowtap_session_pause(self) -> None:
        self._set_paused(True)

    @flowtap.hookimpl
    def flowtap_session_resume(self) -> None:
        self._set_paused(False)

    @flowtap.hookimpl
    def flowtap_session_end(self) -> None:
        self._set_paused(True)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            if self.bridge is not None:
                self.bridge.broadcast("config", config={"paused": paused})

    # -- bridge.Handler -------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The full settings sent to an extension when it connects."""
        o = self.options
        return {
            "capture": o["capture"],
            "paused": self._paused,
            "urlFilter": o["url_filter"],
            "methods": [m.upper() for m in o["methods"]],
            "resourceTypes": list(o["resource_types"]),
            "cookieDomains": list(o["cookie_domains"]),
            "captureBodies": o["capture_bodies"],
            "maxBodySize": o["max_body_size"],
        }

    def connected(self, client: Client) -> None:
        """One assembler per browser session: a connection after a restart of the extension's service
        worker, or beside another one of the same browser, takes over its requests in flight."""
        same = self._same_browser(client)
        if same is not None:
            client.state = same.state
        elif client.instance in self._parked:
            client.state = self._parked.pop(client.instance)[0]
        else:
            client.state = convert.Assembler(self.name or "interceptor")

    def message(self, client: Client, message: dict[str, Any]) -> None:
        kind = message["type"]
        assembler: convert.Assembler = client.state
        if kind == "capture":
            self._emit(assembler.capture(message))
        elif kind == "body":
            self._emit(assembler.body(message))
        elif kind == "cookies":
            cookies = convert.cookies(message)
            if cookies and self._emitter is not None:
                self._emitter.cookies(cookies)
        elif kind == "log":
            level = {"info": 20, "warning": 30, "error": 40}[message["level"]]
            self._log(level, "extension %s: %s", client, message["message"])

    def disconnected(self, client: Client) -> None:
        self._log(20, "extension disconnected: %s", client)
        if client.state is None or self._same_browser(client) is not None:
            return
        if client.instance:
            self._parked[client.instance] = (client.state, time.monotonic() + RECONNECT_WAIT)
        else:
            self._emit(client.state.close())

    def tick(self) -> None:
        assemblers = [assembler for assembler, _ in self._parked.values()]
        if self.bridge is not None:
            assemblers += [client.state for client in list(self.bridge.clients) if client.state is not None]
        for assembler in {id(a): a for a in assemblers}.values():
            self._emit(assembler.expire())
        now = time.monotonic()
        for instance, (assembler, deadline) in list(self._parked.items()):
            if now >= deadline:
                del self._parked[instance]
                self._emit(assembler.close())

    def _same_browser(self, client: Client) -> Client | None:
        """Another paired connection speaking for the same browser session as ``client``, if any."""
        if not client.instance or self.bridge is None:
            return None
        for other in list(self.bridge.clients):
            if other is not client and other.state is not None and other.instance == client.instance:
                return other
        return None

    def _emit(self, flows: list[flowtap.Flow]) -> None:
        if self._emitter is not None:
            for flow in flows:
                self._emitter.emit(flow)

    def _log(self, level: int, msg: str, *args: Any) -> None:
        if self._emitter is not None:
            self._emitter.log.log(level, msg, *args)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
