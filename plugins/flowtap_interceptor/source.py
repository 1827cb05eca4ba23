"""The interceptor source: the bridge, fed by the extension, emitting flows and cookie events."""

from __future__ import annotations

import ipaddress
from typing import Any

import flowtap
from flowtap_interceptor import convert, pairing
from flowtap_interceptor.bridge import Bridge, Client


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
        if client.state is not None:
            self._emit(client.state.close())

    def tick(self) -> None:
        if self.bridge is not None:
            for client in list(self.bridge.clients):
                if client.state is not None:
                    self._emit(client.state.expire())

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
