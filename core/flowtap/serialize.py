"""Flows to plain dicts and JSON and back: the one (de)serializer for the whole flow.

The dict mirrors the model's attribute names; bytes (bodies, WebSocket
contents) are base64 text. ``flow_to_dict(flow, bodies=False)`` leaves the
two bodies out so that a store can keep them elsewhere and hand them back to
:func:`flow_from_dict`. Metadata values JSON cannot hold are kept as their
``repr``.

>>> text = dumps(flow)
>>> loads(text) == flow
True
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import orjson

from flowtap.model import Flow, Headers, Request, Response, Timings, TLSInfo, WebSocketMessage

#: Written as ``"format"`` in every dict; bumped if the shape ever changes incompatibly.
FORMAT = "flowtap.flow/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _message(m: Request | Response, bodies: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "http_version": m.http_version,
        "headers": m.headers.fields,  # pairs: JSON arrays
        "body_size": m.body_size,
        "encoded_size": m.encoded_size,
        "truncated": m.truncated,
    }
    if bodies:
        out["body"] = _b64(m.body)
    return out


def flow_to_dict(flow: Flow, bodies: bool = True) -> dict[str, Any]:
    """The whole flow as JSON-ready values; ``bodies=False`` leaves out both bodies."""
    req, resp, t = flow.request, flow.response, flow.timings
    request = _message(req, bodies)
    request["method"], request["url"] = req.method, req.url
    response = None
    if resp is not None:
        response = _message(resp, bodies)
        response["status_code"], response["reason"] = resp.status_code, resp.reason
    tls = flow.tls
    return {
        "format": FORMAT,
        "id": flow.id,
        "source": flow.source,
        "request": request,
        "response": response,
        "timings": {"start": t.start, "end": t.end, "dns": t.dns, "connect": t.connect, "tls": t.tls,
                    "send": t.send, "wait": t.wait, "receive": t.receive},
        "client_address": list(flow.client_address) if flow.client_address else None,
        "server_address": list(flow.server_address) if flow.server_address else None,
        "server_ip": flow.server_ip,
        "tls": None if tls is None else {"version": tls.version, "sni": tls.sni, "cipher": tls.cipher,
                                         "alpn": tls.alpn},
        "error": flow.error,
        "websocket": None if flow.websocket is None else [
            {"from_client": m.from_client, "content": _b64(m.content), "is_text": m.is_text,
             "timestamp": m.timestamp}
            for m in flow.websocket
        ],
        "metadata": flow.metadata,
    }


def _body(data: dict[str, Any], body: bytes | None) -> bytes:
    if body is None:
        return _unb64(data["body"]) if "body" in data else b""
    return body


# A builder each for requests and responses, every field named: faster than one builder taking
# the fields that differ as **kwargs (every stored flow is built when a session is exported).
def _request(data: dict[str, Any], body: bytes | None) -> Request:
    return Request(http_version=data["http_version"], headers=Headers(data["headers"]),
                   body=_body(data, body), body_size=data["body_size"], encoded_size=data["encoded_size"],
                   truncated=data["truncated"], method=data["method"], url=data["url"])


def _response(data: dict[str, Any], body: bytes | None) -> Response:
    return Response(http_version=data["http_version"], headers=Headers(data["headers"]),
                    body=_body(data, body), body_size=data["body_size"], encoded_size=data["encoded_size"],
                    truncated=data["truncated"], status_code=data["status_code"], reason=data["reason"])


def flow_from_dict(data: dict[str, Any], request_body: bytes | None = None,
                   response_body: bytes | None = None) -> Flow:
    """The :class:`Flow` a :func:`flow_to_dict` dict describes.

    :param request_body: the request body, when the dict was made without bodies.
    :param response_body: likewise for the response.
    :raises ValueError: the dict is not a serialized flow.
    """
    try:
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ValueError(f"unknown flow format {fmt!r}; expected {FORMAT!r}")
        request = _request(data["request"], request_body)
        response = None if data["response"] is None else _response(data["response"], response_body)
        tls = data["tls"]
        websocket = data["websocket"]
        t = data["timings"]
        return Flow(
            request=request,
            response=response,
            source=data["source"],
            id=data["id"],
            timings=Timings(start=t["start"], end=t["end"], dns=t["dns"], connect=t["connect"], tls=t["tls"],
                            send=t["send"], wait=t["wait"], receive=t["receive"]),
            client_address=tuple(data["client_address"]) if data["client_address"] else None,
            server_address=tuple(data["server_address"]) if data["server_address"] else None,
            server_ip=data["server_ip"],
            tls=None if tls is None else TLSInfo(**tls),
            error=data["error"],
            websocket=None if websocket is None else [
                WebSocketMessage(from_client=m["from_client"], content=_unb64(m["content"]),
                                 is_text=m["is_text"], timestamp=m["timestamp"])
                for m in websocket
            ],
            metadata=data["metadata"],
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a serialized flow: {exc!r}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


# ASCII-only: header bytes that are not UTF-8 arrive as lone surrogates, which \udcXX escapes
# keep exactly (and SQLite, which stores UTF-8, could not take as they are).
_COMPACT = json.JSONEncoder(default=_jsonable, separators=(",", ":"))


def to_json(data: dict[str, Any], indent: int | None = None) -> str:
    """JSON text of a :func:`flow_to_dict` dict (compact unless ``indent``).

    Text that is not UTF-8 (lone surrogates) is kept exactly, as ``\\udcXX`` escapes.
    """
    if indent is None:
        try:
            return orjson.dumps(data, default=_jsonable).decode("utf-8")
        except orjson.JSONEncodeError:  # lone surrogates, or integers beyond 64 bits
            return _COMPACT.encode(data)
    return json.dumps(data, default=_jsonable, indent=indent)


_SMUGGLED = re.compile("[\udc80-\udcff]")
_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def json_bytes(obj: Any) -> bytes:
    """Compact JSON in UTF-8, for files other tools read (HAR, collections).

    Strings may hold bytes that were not UTF-8 as lone surrogates (Python's
    ``surrogateescape``, as mitmproxy decodes header values); each such byte
    is written as the Latin-1 character it stands for, as HTTP/1.1 reads
    header bytes. Encoded by orjson: a sink's JSON costs a tenth of the
    standard library's, and every flow is encoded by several sinks.
    """
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # lone surrogates, or integers beyond 64 bits
        text = _UTF8.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SMUGGLED.sub(lambda m: chr(ord(m.group()) - 0xDC00), text).encode("utf-8", "replace")


def from_json(text: str | bytes) -> Any:
    """The value of JSON text :func:`to_json` wrote (orjson; the standard library for the ``\\udcXX``
    escapes of text that was not UTF-8, which orjson refuses). Raises ValueError on anything else."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(flow: Flow, indent: int | None = None) -> str:
    """The flow as JSON text, bodies included (base64)."""
    return to_json(flow_to_dict(flow), indent)


def loads(text: str | bytes) -> Flow:
    """The flow :func:`dumps` wrote. Raises ValueError on anything else."""
    return flow_from_dict(from_json(text))
