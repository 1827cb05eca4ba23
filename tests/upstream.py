"""A small upstream server for the proxy tests: HTTP/1.1, HTTPS with HTTP/2 by ALPN, WebSocket.

Runs on 127.0.0.1 in threads of its own. Routes (HTTP/1.1 and HTTP/2 alike):

- ``/json``: a small JSON body with Content-Length, duplicate headers and two Set-Cookie
- ``/echo``: the request body back (any method); ``/as?type=T``: the same, as Content-Type T
- ``/gzip``: a gzip-encoded JSON body
- ``/big?n=N``: N bytes with a Content-Length; ``/chunked?n=N``: N bytes, chunked;
  ``/bigjson?n=N``: N bytes of JSON, with a Set-Cookie
- ``/slow?ms=M``: answers after M milliseconds
- ``/stream``: one chunk, then (once ``server.release`` is set) a second; ``server.released`` says
  whether the release came before a 5 s timeout (HTTP/1.1 only)
- ``/ws``: a WebSocket that echoes every message (HTTP/1.1 only)

Also a WebSocket client that goes through an HTTP proxy (:func:`websocket_exchange`).
"""

from __future__ import annotations

import datetime
import gzip
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import wsproto
import wsproto.events
from wsproto.utilities import generate_accept_token

JSON_BODY = b'{"ok": true, "items": [1, 2, 3]}'
JSON_HEADERS = [
    ("Content-Type", "application/json"),
    ("X-Dup", "one"),
    ("Set-Cookie", "session=abc123; Path=/; HttpOnly"),
    ("X-Dup", "two"),
    ("Set-Cookie", "theme=dark; Path=/"),
]


def route(method: str, target: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """``(status, headers, body, chunked)`` for a request; shared by HTTP/1.1 and HTTP/2."""
    url = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    if url.path == "/json":
        return 200, list(JSON_HEADERS), JSON_BODY, False
    if url.path == "/echo":
        return 200, [("Content-Type", "application/octet-stream")], body, False
    if url.path == "/as":
        return 200, [("Content-Type", query.get("type", "application/octet-stream"))], body, False
    if url.path == "/gzip":
        data = json.dumps({"message": "hello " * 50}).encode()
        return 200, [("Content-Type", "application/json"),
                     ("Content-Encoding", "gzip")], gzip.compress(data), False
    if url.path == "/big":
        return 200, [("Content-Type", "application/octet-stream")], b"x" * int(query.get("n", "0")), False
    if url.path == "/bigjson":  # N bytes of JSON text: {"pad": "xxx..."}
        return 200, [("Content-Type", "application/json"), ("Set-Cookie", "big=1; Path=/")], (
            b'{"pad": "' + b"x" * max(0, int(query.get("n", "0")) - 11) + b'"}'), False
    if url.path == "/chunked":
        return 200, [("Content-Type", "text/plain")], b"y" * int(query.get("n", "0")), True
    if url.path == "/slow":
        time.sleep(int(query.get("ms", "500")) / 1000)
        return 200, [("Content-Type", "text/plain")], b"slow", False
    return 404, [("Content-Type", "text/plain")], b"not found", False


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(10)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self) -> None:
        if self.server.tls is not None and self.request.selected_alpn_protocol() == "h2":
            _serve_h2(self.request)
        else:
            super().handle()

    def log_message(self, *args) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, list(self.headers.items()), body))
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket()
        if self.path == "/stream":
            return self._stream()
        status, headers, data, chunked = route(self.command, self.path, body)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 4096):
                part = data[i:i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"d\r\ndata: first\n\n\r\n")
        self.wfile.flush()
        self.server.released = self.server.release.wait(5)
        self.wfile.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")

    def _websocket(self) -> None:
        accept = generate_accept_token(self.headers["Sec-WebSocket-Key"].encode()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        ws = wsproto.Connection(wsproto.ConnectionType.SERVER)
        while True:
            data = self.connection.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, wsproto.events.Message):
                    self.connection.sendall(ws.send(wsproto.events.Message(data=event.data)))
                elif isinstance(event, wsproto.events.CloseConnection):
                    if ws.state is not wsproto.connection.ConnectionState.CLOSED:
                        self.connection.sendall(ws.send(event.response()))
                    self.close_connection = True
                    return
            if not data:
                self.close_connection = True
                return


def _read_chunked(rfile) -> bytes:
    body = b""
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            rfile.readline()
            return body
        body += rfile.read(size)
        rfile.readline()


def _serve_h2(sock: ssl.SSLSocket) -> None:
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    requests: dict[int, tuple[dict[str, str], bytearray]] = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = ({k.decode(): v.decode() for k, v in event.headers}, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                requests[event.stream_id][1].extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = requests.pop(event.stream_id)
                status, extra, out, chunked = route(headers[":method"], headers[":path"], bytes(body))
                fields = [(":status", str(status))] + [(k.lower(), v) for k, v in extra]
                if not chunked:
                    fields.append(("content-length", str(len(out))))
                conn.send_headers(event.stream_id, fields)
                conn.send_data(event.stream_id, out, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return
        sock.sendall(conn.data_to_send())


class Upstream(http.server.ThreadingHTTPServer):
    """An upstream server on 127.0.0.1; HTTPS (h2 or http/1.1) when given a certificate."""

    daemon_threads = True

    def __init__(self, cert: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        self.release = threading.Event()
        self.released: bool | None = None
        self.tls: ssl.SSLContext | None = None
        if cert is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*cert)
            self.tls.set_alpn_protocols(["h2", "http/1.1"])
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server_port}"

    def handle_error(self, request, client_address) -> None:
        pass  # a proxy test that drops a connection is not the server's failure

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "upstream.pem", directory / "upstream-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def free_port() -> int:
    """A port nothing listens on (for "upstream down")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def websocket_exchange(proxy_port: int, host: str, port: int,
                       messages: list[str | bytes]) -> list[str | bytes]:
    """Open ws://host:port/ws through the proxy (CONNECT), send messages, return the replies, close."""
    replies: list[str | bytes] = []
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the proxy closed the connection during CONNECT"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(ws.send(wsproto.events.Request(host=f"{host}:{port}", target="/ws")))
        pending = list(messages)
        accepted = closing = False
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, wsproto.events.AcceptConnection):
                    accepted = True
                elif isinstance(event, wsproto.events.Message):
                    replies.append(event.data)
                elif isinstance(event, wsproto.events.CloseConnection):
                    return replies
            if accepted and pending:
                for message in pending:
                    sock.sendall(ws.send(wsproto.events.Message(data=message)))
                pending = []
            elif accepted and len(replies) == len(messages) and not closing:
                closing = True
                sock.sendall(ws.send(wsproto.events.CloseConnection(code=1000, reason="done")))
            if not data:
                return replies
