"""The one mitmproxy addon flowtap runs: hands every finished flow to the session.

Its hooks run on the proxy's event loop, so each does the least it can:
convert the flow once and emit it. Filtering, pausing and the sinks happen
on flowtap's dispatcher thread. A hook returns what ``emit`` returns, and
mitmproxy awaits it before it answers the client: that is how the proxy's
process holds answers back while flowtap's process catches up
(:meth:`flowtap_proxy.host._Sender.emit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mitmproxy import ctx, http, tls

from flowtap import Flow
from flowtap_proxy.convert import Converter, arrived_body, tap

_EMITTED = "flowtap.emitted"


class FlowtapAddon:
    """Converts finished HTTP and WebSocket flows, and failed handshakes, and emits them."""

    def __init__(self, emit: Callable[[Flow], Awaitable[None] | None], source: str, max_body_size: int,
                 upstream_auth: str | None = None) -> None:
        self._emit = emit
        self._convert = Converter(source, upstream_auth)
        self._max_body_size = max_body_size

    # Bodies: stream what mitmproxy would not buffer whole, counting it.

    def requestheaders(self, f: http.HTTPFlow) -> None:
        tap(f.request, self._max_body_size)

    def responseheaders(self, f: http.HTTPFlow) -> None:
        if f.response is not None:  # always, in this hook
            tap(f.response, self._max_body_size)

    # Finished flows.

    def response(self, f: http.HTTPFlow) -> Awaitable[None] | None:
        if f.request.method == "CONNECT":  # a tunnel: its traffic is recorded, not the CONNECT itself
            if f.response is None or not 200 <= f.response.status_code < 300:
                return self.http_connect_error(f)  # mitmproxy 10 reports a failed CONNECT here
        elif f.websocket is None:  # a WebSocket is emitted when it ends, with its messages
            return self._emit(self._convert.http_flow(f))
        return None

    def error(self, f: http.HTTPFlow) -> Awaitable[None] | None:
        if f.request.method == "CONNECT":
            return self.http_connect_error(f)  # the client may hang up before mitmproxy reports it
        elif f.websocket is None:
            if f.response is not None and f.response.raw_content is None:  # cut short mid-body
                arrived_body(f, ctx.master.addons.get("proxyserver"))
            return self._emit(self._convert.http_flow(f))
        return None

    def websocket_end(self, f: http.HTTPFlow) -> Awaitable[None] | None:
        return self._emit(self._convert.http_flow(f))

    def http_connect_error(self, f: http.HTTPFlow) -> Awaitable[None] | None:
        if not f.metadata.get(_EMITTED):  # mitmproxy may report one failed CONNECT twice
            f.metadata[_EMITTED] = True
            return self._emit(self._convert.connect_error(f))
        return None

    def tls_failed_client(self, data: tls.TlsData) -> Awaitable[None] | None:
        if data.conn.error == "connection closed early":
            return None  # the client opened a connection and closed it unused (browsers do): no exchange
        return self._emit(self._convert.tls_failure(data))
