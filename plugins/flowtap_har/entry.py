"""One flow as one HAR 1.2 entry: a dict ready for ``json.dumps``.

Follows the HAR 1.2 spec (http://www.softwareishard.com/blog/har-12-spec/)
and its JSON schema (npm ``har-schema``); custom fields start with ``_``, as
the spec asks: ``_error`` (a flow without a response), ``_flowtap`` (a body
that was truncated or left out), ``_base64`` (the exact bytes of a request body
its declared charset cannot carry), ``_resourceType`` and ``_webSocketMessages``
(as Chrome writes them).

Bodies read back byte for byte through mitmproxy's HAR reader (``mitmdump -nr``),
which turns ``text`` into bytes with the message's charset (UTF-8 for JSON,
ISO-8859-1 when none is declared). A response body is ``text`` only when that
gives its bytes back, else base64 (``content.encoding``). HAR 1.2 gives
``postData`` no encoding field, so a request body is always ``text``: its bytes
decoded with that same charset, so binary bodies come out as ISO-8859-1 text
(each byte one character) and read back exactly; ``comment`` says so.
"""

from __future__ import annotations

import base64
import codecs
import functools
import ipaddress
import re
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from flowtap import Flow, Request, Response

# Media types whose bodies are binary whatever they decode to.
_BINARY = ("image/", "audio/", "video/", "font/", "application/octet-stream", "application/zip",
           "application/gzip", "application/pdf", "application/wasm", "application/x-protobuf",
           "application/protobuf", "application/grpc")
# Bytes that do not occur in text (control characters but tab, newlines, form feed):
# translate(None, _TEXT_BYTES) keeps only those.
_TEXT_BYTES = bytes(b for b in range(256) if b not in range(0x00, 0x09) and b not in range(0x0E, 0x20))
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
_UTF8 = codecs.lookup("utf-8")


def iso_time(timestamp: float) -> str:
    """A Unix timestamp as ISO 8601 in UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _charset(message: Request | Response) -> str | None:
    """The charset the message's Content-Type declares, or None."""
    for param in (message.headers.get("content-type") or "").split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip("\"' "):
            return value.strip("\"' ")
    return None


@functools.lru_cache(maxsize=256)
def _codec(name: str | None) -> codecs.CodecInfo | None:
    """The text codec called ``name``; None for an unknown name or a codec that is no charset
    (``base64``, ``zlib``, ``rot13``: bytes to bytes, or text to text)."""
    if not name:
        return None
    try:
        codec = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    return codec if getattr(codec, "_is_text_encoding", True) else None


def reader_charset(message: Request | Response) -> str:
    """The charset a HAR reader turns ``text`` back into bytes with, as mitmproxy's does
    (``mitmproxy.net.http.headers.infer_content_encoding``): the declared charset, UTF-8 for
    JSON, ISO-8859-1 otherwise (HTTP/1.1's old default)."""
    charset = _charset(message)
    if not charset and "json" in (message.headers.get("content-type") or ""):
        charset = "utf-8"
    charset = charset or "latin-1"
    return "gb18030" if charset.lower() in ("gb2312", "gbk") else charset


@functools.lru_cache(maxsize=256)
def _foreign(name: str) -> bool:
    """A codec Python knows that is no charset (``base64``, ``rot13``): a reader calling
    ``codecs.encode(text, name)`` gets a TypeError, not bytes."""
    try:
        codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return False
    return _codec(name) is None


def _round_trips(text: str, data: bytes, charset: str, complete: bool) -> bool:
    """Whether a reader encoding ``text`` with ``charset`` gets ``data`` back (its start, when cut).

    mitmproxy falls back to UTF-8 for a charset it does not know.
    """
    codec = _codec(charset) or _UTF8
    try:
        encoded = codec.encode(text)[0]
    except Exception:  # any codec error: the reader could not rebuild the bytes either
        return False
    return encoded == data if complete else data.startswith(encoded)


def _decode(codec: codecs.CodecInfo, data: bytes, complete: bool) -> str | None:
    try:
        return codec.incrementaldecoder("strict").decode(data, final=complete)
    except Exception:  # UnicodeError (a UTF-16 body with no BOM), or a codec's own error
        return None


def decode_body(message: Request | Response, data: bytes, complete: bool = True) -> str | None:
    """``data`` as text a HAR reader turns back into the same bytes, or None (give it base64).

    Text is decoded with the message's charset (UTF-8 when none is declared) and kept only
    when encoding it again with :func:`reader_charset` gives ``data`` back, so mitmproxy's
    reader rebuilds the body byte for byte. ``complete=False`` allows an incomplete
    character at the end (a body cut short). Never raises, whatever the charset.
    """
    if _foreign(reader_charset(message)):
        return None  # mitmproxy's reader would raise encoding any text, even ""
    if not data:
        return ""
    if message.content_type.startswith(_BINARY):
        return None
    codec = _codec(_charset(message)) or _UTF8
    wide = codec.name.startswith(("utf-16", "utf-32"))
    if not wide and data.translate(None, _TEXT_BYTES):  # fast: no decoding needed to see it
        return None
    text = _decode(codec, data, complete)
    if text is None or (wide and _CONTROL.search(text)):
        return None
    reader = reader_charset(message)
    if codec.name == "utf-8" and (_codec(reader) or _UTF8).name == "utf-8":
        return text  # strict UTF-8 decoding succeeded: encoding it again gives the same bytes
    return text if _round_trips(text, data, reader, complete) else None


def request_text(request: Request, data: bytes, complete: bool = True) -> tuple[str, str | None]:
    """A request body as ``postData.text``, and a note when the text is not plainly the body.

    HAR 1.2 has no encoding field for ``postData``: a reader encodes ``text`` with the
    request's charset (:func:`reader_charset`), so the text is the body decoded with that
    charset, binary bodies included (ISO-8859-1 maps every byte to one character and
    back). When the declared charset cannot carry the bytes, the text is lossy (UTF-8 with
    U+FFFD) and the note says so; the caller keeps the exact bytes in ``_base64``.
    """
    charset = reader_charset(request)
    codec = _codec(charset) or _UTF8
    text = _decode(codec, data, complete)
    if text is not None and _round_trips(text, data, charset, complete):
        if codec.name == "iso8859-1" and not data.isascii():
            declared = "declared" if _charset(request) else "assumed: none is declared"
            return text, f"the body's bytes read as ISO-8859-1 ({declared}), as HAR readers write them back"
        return text, None
    text = data.decode("utf-8", "replace")
    return text, f"the body is not valid {charset}: text is lossy; _base64 holds the exact bytes"


class Body:
    """What to write for one message's body, given the sink's settings."""

    __slots__ = ("data", "mark", "comment")

    def __init__(self, message: Request | Response, content: str, max_size: int) -> None:
        size = message.body_size or 0
        data = message.body
        self.mark: dict[str, Any] | None = None
        self.comment: str | None = None
        if content != "full":
            data = b""
            if size:
                self._cut(size, 0, f"body left out (content = {content!r})", "content")
        elif len(data) > max_size:
            data = data[:max_size]
            self._cut(size, max_size, f"body truncated to {max_size} of {size} bytes (max_body_size)",
                      "max_body_size")
        elif message.truncated:
            self._cut(size, len(data), f"the source kept {len(data)} of {size} bytes of the body", "source")
        self.data = data

    @property
    def complete(self) -> bool:
        return self.mark is None

    def _cut(self, size: int, kept: int, comment: str, reason: str) -> None:
        self.mark = {"truncated": True, "bodySize": size, "kept": kept, "reason": reason}
        self.comment = comment


def _pairs(pairs) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _request(request: Request, content: str, max_size: int) -> dict[str, Any]:
    size = request.encoded_size if request.encoded_size is not None else request.body_size
    out: dict[str, Any] = {
        "method": request.method,
        "url": request.url,
        "httpVersion": request.http_version,
        "cookies": [] if content == "none" else _pairs(request.cookies),
        "headers": [] if content == "none" else _pairs(request.headers.fields),
        "queryString": _pairs(request.query),
        "headersSize": -1,
        "bodySize": size,
    }
    if request.body_size or request.body:
        body = Body(request, content, max_size)
        mime = "" if content == "none" else request.headers.get("content-type") or ""
        text, note = request_text(request, body.data, body.complete) if body.data else ("", None)
        post: dict[str, Any] = {"mimeType": mime, "text": text}
        if note is not None and note.startswith("the body is not valid"):
            post["_base64"] = base64.b64encode(body.data).decode("ascii")
        elif request.content_type == "application/x-www-form-urlencoded" and body.complete and note is None:
            post["params"] = _pairs(parse_qsl(text, keep_blank_values=True))
        notes = [n for n in (body.comment, note) if n]
        if body.mark:
            post["_flowtap"] = body.mark
        if notes:
            post["comment"] = "; ".join(notes)
        out["postData"] = post
    return out


def _response_cookies(flow: Flow) -> list[dict[str, Any]]:
    cookies = []
    for cookie in flow.response_cookies:
        entry: dict[str, Any] = {"name": cookie.name, "value": cookie.value, "path": cookie.path,
                                 "domain": cookie.domain, "httpOnly": cookie.httponly,
                                 "secure": cookie.secure}
        if cookie.expires is not None:
            try:
                entry["expires"] = iso_time(cookie.expires)
            except (OverflowError, OSError, ValueError):
                pass
        if cookie.samesite:
            entry["sameSite"] = cookie.samesite
        cookies.append(entry)
    return cookies


def _response(flow: Flow, content: str, max_size: int) -> dict[str, Any]:
    response = flow.response
    if response is None:
        return {
            "status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
            "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "",
            "headersSize": -1, "bodySize": -1, "_error": flow.error or "no response",
        }
    body = Body(response, content, max_size)
    text = decode_body(response, body.data, body.complete)
    size = response.body_size or 0
    body_content: dict[str, Any] = {
        "size": size,
        "mimeType": ("" if content == "none" else response.headers.get("content-type")) or "x-unknown",
    }
    encoded = response.encoded_size
    if encoded is not None and "content-encoding" in response.headers:
        body_content["compression"] = size - encoded
    if text is None:
        body_content["text"] = base64.b64encode(body.data).decode("ascii")
        body_content["encoding"] = "base64"
    elif text or body.complete:
        body_content["text"] = text
    if body.mark:
        body_content["_flowtap"] = body.mark
        body_content["comment"] = body.comment
    if encoded is None and "content-encoding" not in response.headers:
        encoded = size
    try:
        reason = response.reason or HTTPStatus(response.status_code).phrase
    except ValueError:
        reason = ""
    out = {
        "status": response.status_code,
        "statusText": reason,
        "httpVersion": response.http_version,
        "cookies": [] if content == "none" else _response_cookies(flow),
        "headers": [] if content == "none" else _pairs(response.headers.fields),
        "content": body_content,
        "redirectURL": ("" if content == "none" else response.headers.get("location")) or "",
        "headersSize": -1,
        "bodySize": -1 if encoded is None else encoded,
    }
    if flow.error:
        out["_error"] = flow.error
    return out


def _timings(flow: Flow) -> tuple[dict[str, float], float]:
    t = flow.timings

    def known(ms: float | None) -> float:
        return -1 if ms is None else round(max(ms, 0.0), 3)

    # HAR counts the TLS handshake in `connect` as well as in `ssl`.
    connect = None if t.connect is None else t.connect + (t.tls or 0.0)
    send, wait, receive = t.send, t.wait, t.receive
    if send is None and wait is None and receive is None and t.duration is not None:
        wait = t.duration  # the source saw only the whole exchange
    timings = {
        "blocked": -1, "dns": known(t.dns), "connect": known(connect), "ssl": known(t.tls),
        "send": known(send or 0.0), "wait": known(wait or 0.0), "receive": known(receive or 0.0),
    }
    total = sum(value for key, value in timings.items() if key != "ssl" and value > 0)
    return timings, round(total, 3)


def _server_ip(flow: Flow) -> str | None:
    for candidate in (flow.server_ip, flow.server_address[0] if flow.server_address else None):
        if candidate:
            ip = _ip(candidate)
            if ip:
                return ip
    return None


@functools.lru_cache(maxsize=1024)  # a capture talks to few servers
def _ip(candidate: str) -> str | None:
    try:
        return str(ipaddress.ip_address(candidate.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


def har_entry(flow: Flow, content: str = "full", max_size: int = 1 << 20) -> dict[str, Any]:
    """The HAR entry for ``flow``.

    :param content: ``full``, ``headers`` (bodies left out) or ``none`` (headers too).
    :param max_size: bodies longer than this many bytes are cut and marked.
    """
    timings, total = _timings(flow)
    entry: dict[str, Any] = {
        "startedDateTime": iso_time(flow.timings.start),
        "time": total,
        "request": _request(flow.request, content, max_size),
        "response": _response(flow, content, max_size),
        "cache": {},
        "timings": timings,
    }
    ip = _server_ip(flow)
    if ip:
        entry["serverIPAddress"] = ip
    entry["connection"] = str(flow.client_address[1]) if flow.client_address else flow.id
    if flow.error:
        entry["comment"] = (f"flowtap: {flow.error}" if flow.response
                            else f"flowtap: no response: {flow.error}")
    elif flow.response is None:
        entry["comment"] = "flowtap: no response"
    if flow.websocket is not None:
        entry["_resourceType"] = "websocket"
        if content == "full":
            entry["_webSocketMessages"] = [
                {"type": "send" if m.from_client else "receive", "time": m.timestamp,
                 "opcode": 1 if m.is_text else 2,
                 "data": m.content.decode("utf-8", "replace") if m.is_text
                 else base64.b64encode(m.content).decode("ascii")}
                for m in flow.websocket
            ]
    return entry
