"""mitmproxy flows into flowtap flows: done once per finished flow, on the proxy's loop.

Only the proxy's addon imports this module, after mitmproxy has been loaded.
"""

from __future__ import annotations

import re
import time
import weakref
from urllib.parse import quote

from mitmproxy import connection, http, tls
from mitmproxy.net import encoding

from flowtap import Flow, Request, Response, Timings, TLSInfo, WebSocketMessage

_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


class BodyTap:
    """A mitmproxy stream callable: passes a body on, counts it, keeps up to ``limit`` bytes."""

    __slots__ = ("limit", "size", "chunks")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] | None = []

    def __call__(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.chunks is not None:
            if self.size > self.limit:
                self.chunks = None
            elif data:
                self.chunks.append(data)
        return data


def tap(message: http.Message, limit: int) -> None:
    """Decide, when a message's headers arrive, whether its body is streamed.

    mitmproxy buffers a body whole unless ``message.stream`` is set. A body
    whose Content-Length is above ``limit`` streams through a tap that only
    counts it (recorded as omitted, with its size); one of unknown length
    (chunked, HTTP/2) streams through a tap that keeps it while it fits, so
    an endless stream (server-sent events) reaches the client as it comes.
    Cheaper than mitmproxy's ``stream_large_bodies``, which flowtap leaves off.
    """
    if message.stream:
        return
    length = _raw_header(message.headers.fields, b"content-length")
    if length is None:
        message.stream = BodyTap(limit)
    else:
        try:
            if int(length) > limit:
                message.stream = BodyTap(0)
        except ValueError:
            pass


def arrived_body(f: http.HTTPFlow, proxyserver: object) -> None:
    """Give a flow that failed mid-body the bytes of the body that arrived, where mitmproxy buffered it.

    A buffered body cut short (a reset mid-body) is left behind in mitmproxy's HTTP
    layer, and the flow keeps only its Content-Length. Found through mitmproxy's
    internals (connection handler, layers, the stream's buffer), looked up defensively:
    when anything is not where it was in mitmproxy 10 and 11, nothing is set and
    the body's size is recorded as unknown.
    """
    try:
        for handler in getattr(proxyserver, "connections", {}).values():
            layer = getattr(handler, "layer", None)
            for _ in range(32):  # a few layers deep; never a cycle
                if layer is None:
                    break
                for stream in (getattr(layer, "streams", None) or {}).values():
                    if getattr(stream, "flow", None) is f:
                        _take_buffer(f.request, stream.request_body_buf)
                        if f.response is not None:
                            _take_buffer(f.response, stream.response_body_buf)
                        return
                layer = _child(layer)
    except Exception:  # internals moved: the size stays unknown
        return


def _child(layer: object) -> object | None:
    """The layer under ``layer``: a ``child_layer``, a NextLayer's ``layer``, or the one a
    mode layer hands its events to."""
    for name in ("child_layer", "layer"):
        child = getattr(layer, name, None)
        if child is not None:
            return child
    child = getattr(getattr(layer, "_handle_event", None), "__self__", None)
    return None if child is layer else child


def _take_buffer(message: http.Message, buffer: object) -> None:
    if message.raw_content is None and not message.stream and buffer is not None:
        message.raw_content = bytes(buffer)  # type: ignore[call-overload]  # typed object: mitmproxy's ReceiveBuffer


def _raw_header(fields: tuple[tuple[bytes, bytes], ...], name: bytes) -> bytes | None:
    for key, value in fields:
        if len(key) == len(name) and key.lower() == name:
            return value
    return None


class Converter:
    """Builds flowtap flows; remembers which server connections already reported their set-up."""

    def __init__(self, source: str, upstream_auth: str | None = None) -> None:
        self.source = source
        # The Proxy-Authorization header flowtap adds for the upstream proxy: not the client's, never
        # recorded.
        self._added_auth = None
        if upstream_auth:
            from mitmproxy.addons.upstream_auth import parse_upstream_auth

            self._added_auth = ("Proxy-Authorization", parse_upstream_auth(upstream_auth).decode())
        self._servers_seen: weakref.WeakSet[connection.Server] = weakref.WeakSet()

    def http_flow(self, f: http.HTTPFlow) -> Flow:
        """A finished (or failed) HTTP flow, WebSocket messages included."""
        req, resp = f.request, f.response
        flow = Flow(
            request=_request(req, req.url, self._added_auth),
            response=_response(resp) if resp is not None else None,
            source=self.source,
            timings=self._timings(f),
            client_address=_address(f.client_conn.peername),
            server_address=_address(f.server_conn.address),
            server_ip=f.server_conn.peername[0] if f.server_conn.peername else None,
            tls=_tls(f.server_conn) or _tls(f.client_conn),
            error=f.error.msg if f.error else None,
        )
        via = f.server_conn.via
        if via is not None:  # upstream mode: the proxy the request went through
            flow.metadata["via"] = f"{via[0]}://{via[1][0]}:{via[1][1]}"
        ws = f.websocket
        if ws is not None:
            flow.websocket = [
                WebSocketMessage(from_client=m.from_client, content=m.content, is_text=m.is_text,
                                 timestamp=m.timestamp)
                for m in ws.messages
            ]
            flow.metadata["websocket_close_code"] = int(ws.close_code) if ws.close_code is not None else None
            flow.metadata["websocket_closed_by_client"] = ws.closed_by_client
            if ws.timestamp_end:
                flow.timings.end = ws.timestamp_end
        return flow

    def connect_error(self, f: http.HTTPFlow) -> Flow:
        """A CONNECT whose server could not be reached (the client got mitmproxy's 502)."""
        host, port = f.request.host, f.request.port
        reason = f.server_conn.error or (f.response.reason if f.response else "connection failed")
        flow = Flow(
            request=_request(f.request, _https_url(host, port)),
            source=self.source,
            timings=Timings(start=f.request.timestamp_start, end=time.time()),
            client_address=_address(f.client_conn.peername),
            server_address=(host, port),
            error=f"cannot connect to {host}:{port}: {reason}",
        )
        return flow

    def tls_failure(self, data: tls.TlsData) -> Flow:
        """A client that gave up the TLS handshake with flowtap, most often over an untrusted CA."""
        client, server = data.conn, data.context.server
        host, port = server.address[:2] if server.address else (client.sni or "unknown", 443)
        host = client.sni or host
        error = _tls_error(client.error or "unknown error")
        authority = f"{host}:{port}"
        return Flow(
            request=Request(method="CONNECT", url=_https_url(host, port), headers=[("Host", authority)]),
            source=self.source,
            timings=Timings(start=client.timestamp_start or time.time(), end=time.time()),
            client_address=_address(client.peername),
            server_address=_address(server.address),
            server_ip=server.peername[0] if server.peername else None,
            tls=TLSInfo(sni=client.sni),
            error=error,
        )

    def _timings(self, f: http.HTTPFlow) -> Timings:
        req, resp, server = f.request, f.response, f.server_conn
        timings = Timings(start=req.timestamp_start)
        if req.timestamp_end:
            timings.send = _ms(req.timestamp_start, req.timestamp_end)
        ready = None  # when a connection opened for this flow was ready to use
        if server.timestamp_tcp_setup and server not in self._servers_seen:
            self._servers_seen.add(server)
            timings.connect = _ms(server.timestamp_start, server.timestamp_tcp_setup)
            ready = server.timestamp_tcp_setup
            if server.timestamp_tls_setup:
                timings.tls = _ms(server.timestamp_tcp_setup, server.timestamp_tls_setup)
                ready = server.timestamp_tls_setup
        if resp is not None:
            sent = max(req.timestamp_end or req.timestamp_start, ready or 0)
            timings.wait = _ms(sent, resp.timestamp_start)
            if resp.timestamp_end:
                timings.receive = _ms(resp.timestamp_start, resp.timestamp_end)
                timings.end = resp.timestamp_end
        if timings.end is None:
            timings.end = f.error.timestamp if f.error else time.time()
        return timings


def _tls_error(reason: str) -> str:
    """mitmproxy's account of a failed client handshake, told in flowtap's terms."""
    found = re.search(r"\(([^()]*)\)$", reason)
    detail = f" ({found.group(1)})" if found else ""
    hint = "; run `flowtap ca` to see how to trust it"
    if reason.startswith("The client does not trust"):
        return f"client does not trust flowtap's CA{detail}{hint}"
    if reason.startswith("The client may not trust"):
        return f"TLS handshake with the client failed{detail}: it may not trust flowtap's CA{hint}"
    if reason.startswith("The client disconnected during the handshake"):
        return f"client closed the connection during the TLS handshake: it may not trust flowtap's CA{hint}"
    return f"TLS handshake with the client failed: {reason}"


def _request(req: http.Request, url: str, drop: tuple[str, str] | None = None) -> Request:
    fields = _fields(req.headers.fields)
    if drop is not None and drop in fields:
        fields.remove(drop)
    body, body_size, encoded_size, truncated = _body(req, fields)
    if not url.isascii():
        url = quote(url.encode("utf-8", "surrogateescape"), safe=_URL_SAFE)
    return Request(
        method=req.method, url=url, http_version=req.http_version, headers=fields,
        body=body, body_size=body_size, encoded_size=encoded_size, truncated=truncated,
    )


def _response(resp: http.Response) -> Response:
    fields = _fields(resp.headers.fields)
    body, body_size, encoded_size, truncated = _body(resp, fields)
    return Response(
        status_code=resp.status_code, reason=resp.reason, http_version=resp.http_version, headers=fields,
        body=body, body_size=body_size, encoded_size=encoded_size, truncated=truncated,
    )


def _body(message: http.Message, fields: list[tuple[str, str]]) -> tuple[bytes, int | None, int | None, bool]:
    """``(decoded body, decoded size, wire size, truncated)``."""
    ce = _header(fields, "content-encoding")
    raw = message.raw_content
    if raw is None:
        stream = message.stream
        if isinstance(stream, BodyTap) and stream.chunks is not None:
            raw = b"".join(stream.chunks)
        elif isinstance(stream, BodyTap):  # longer than max_body_size: streamed to the client, not kept
            # The decoded size of an encoded body that was not kept is unknown.
            return b"", None if ce else stream.size, stream.size, True
        else:  # buffered, cut short, and arrived_body could not find what came: unknown, not Content-Length
            return b"", None, None, True
    body = raw
    if ce and raw:
        try:
            decoded = encoding.decode(raw, ce)
        except ValueError:
            decoded = raw
        # An illegal "Content-Encoding: utf8" decodes to str: keep the bytes as sent.
        body = decoded if isinstance(decoded, bytes) else raw
    return body, len(body), len(raw), False


def _fields(fields: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Header bytes as text: UTF-8, a byte that is not UTF-8 as a lone surrogate (``surrogateescape``).

    Never lossy: ``value.encode("utf-8", "surrogateescape")`` gives back the bytes sent, as the
    store, the cookie jar and the curl export do; JSON outputs write such a byte as the Latin-1
    character it stands for (:func:`flowtap.serialize.json_bytes`), and a terminal shows an escape.
    (Latin-1 here made a cookie's byte 0xE9 the two UTF-8 bytes of "é" in cookies.txt.)
    """
    try:
        return [(name.decode(), value.decode()) for name, value in fields]
    except UnicodeDecodeError:
        return [(_text(name), _text(value)) for name, value in fields]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _header(fields: list[tuple[str, str]], name: str) -> str | None:
    for key, value in fields:
        if len(key) == len(name) and key.lower() == name:
            return value
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _tls(conn: connection.Connection) -> TLSInfo | None:
    if not conn.tls_established:
        return None
    return TLSInfo(
        version=conn.tls_version,
        sni=conn.sni,
        cipher=conn.cipher,
        alpn=conn.alpn.decode("ascii", "replace") if conn.alpn else None,
    )


def _address(address) -> tuple[str, int] | None:
    return (address[0], address[1]) if address else None


def _https_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}/" if port == 443 else f"https://{host}:{port}/"


def _ms(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start) * 1000)
