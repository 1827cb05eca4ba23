"""One flow as a Postman Collection v2.1.0 request and saved response (an "example").

The rules, in one place:

- **Base URL**: with ``variables = true`` each origin (scheme, host, port) becomes a
  collection variable holding it: the first ``baseUrl``, the next ``baseUrl2``,
  ``baseUrl3``... (each variable's description names its origin); requests use
  ``{{baseUrl}}/path``.
- **Path variables**: with ``templated=True`` (``organize`` includes ``endpoint``) a
  numeric or UUID path segment becomes ``:name``, named after the segment before it
  (``/users/42`` → ``/users/:userId``, ``/status/404`` → ``/status/:status``; ``id``
  when there is none; see :mod:`flowtap.endpoints`), with its captured value in
  ``url.variable``.
- **Secrets**: the headers Authorization, Proxy-Authorization, Cookie and Set-Cookie,
  and any header, query, form or multipart parameter whose name contains ``token``,
  ``secret``, ``passw``, ``apikey``/``api-key``/``api_key``, ``session``,
  ``credential`` or the word ``auth``, or is ``key``, ``sig``, ``signature`` or ``sid``,
  are written as ``{{variable}}`` (``X-API-Key`` → ``{{xApiKey}}``). One variable per
  name *and value*: the first value of ``Authorization`` is ``{{authorization}}``, a
  different one ``{{authorization2}}``..., so that every request replays the secret it
  was captured with (and every ``Set-Cookie`` of an example stays). Values are written
  only with ``include_secrets``.
- **Bodies**: ``urlencoded`` and ``formdata`` (multipart, parsed with the standard
  library's email parser; file parts keep their file name only) as Postman has them;
  ``graphql`` for ``application/graphql`` bodies and for JSON bodies with a GraphQL
  ``query`` POSTed to a path containing "graphql"; otherwise ``raw`` with the
  language Postman would pick (json, xml, html, javascript, text) when the body is
  UTF-8 text, which is what Postman and newman send a ``raw`` body as. Any other body
  (binary, or text in another charset: latin-1, UTF-16) is Postman's ``file`` mode
  ("binary" in the app): its bytes are written to a file beside the collection
  (``store_body``) and sent as they were captured; so are a multipart body's file
  parts, under their own file names. Paths are relative to the collection's folder:
  run newman with ``--working-dir`` set to it (or set it as Postman's working
  directory). Without ``store_body`` such a body is written base64-encoded, and the
  request's description says so.
- **Rebuilt bodies**: a form body the Interceptor rebuilt from the browser's parsed
  fields (the browser gives them sorted by name) says so in the request's
  description: the page's field order is lost.
- **Examples**: never with image, audio or video bodies (as in Postman).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Collection
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from flowtap import Flow, Headers, Request, Response
from flowtap.credentials import is_secret
from flowtap.endpoints import camel as _camel, template

_DROP_HEADERS = {"host", "content-length", "connection", "keep-alive", "proxy-connection",
                 "transfer-encoding", "te", "trailer", "upgrade", "http2-settings"}
_MEDIA = ("image/", "audio/", "video/")
_BINARY = _MEDIA + ("font/", "application/octet-stream", "application/zip", "application/gzip",
                    "application/pdf", "application/wasm", "application/protobuf", "application/x-protobuf",
                    "application/grpc")
# Bytes that do not occur in text (control characters but tab, newlines, form feed).
_TEXT_BYTES = bytes(b for b in range(256) if b not in range(0x00, 0x09) and b not in range(0x0E, 0x20))
_GRAPHQL = re.compile(r"^\s*(query|mutation|subscription|fragment)\b|^\s*\{")
#: ``store_body(data, name)``: keep ``data`` in a file (``name``: the file name a form sends)
#: and return its path as Postman's ``src``.
#: What newman's urlencoded mode leaves unescaped (RFC 3986's unreserved characters).
_FORM_SAFE = "-_.~"
StoreBody = Callable[[bytes, str], str]


camel = functools.lru_cache(maxsize=4096)(_camel)  # the same few names, over and over


def text_of(message: Request | Response) -> str | None:
    """The body as text, or None when it is binary."""
    if message.content_type.startswith(_BINARY):
        return None
    try:
        text = message.text("strict")
    except UnicodeDecodeError:
        return None
    charset = (message.headers.get("content-type") or "").lower()
    raw = text.encode("utf-8") if "utf-16" in charset or "utf-32" in charset else message.body
    return None if raw.translate(None, _TEXT_BYTES) else text  # only control characters are left


def _utf8_text(message: Request | Response) -> str | None:
    """The body as text when sending it as UTF-8 text gives back the same bytes, else None."""
    if message.content_type.startswith(_BINARY):
        return None
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if message.body.translate(None, _TEXT_BYTES) or text.startswith("\ufeff"):
        return None  # control characters, or a BOM: bytes, not text
    charset = (message.headers.get("content-type") or "").lower()
    if "utf-16" in charset or "utf-32" in charset:
        return None
    return text


def _where(request: Request) -> str:
    """A request as a variable's description names it: method and URL without the query (secrets)."""
    parts = urlsplit(request.url)
    return f"{request.method} {parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _language(content_type: str) -> str:
    for word, language in (("json", "json"), ("xml", "xml"), ("html", "html"), ("javascript", "javascript")):
        if word in content_type:
            return language
    return "text"


class Variables:
    """The collection's variables: a base URL per origin, and one variable per secret name and value."""

    def __init__(self) -> None:
        self._origins: dict[str, str] = {}
        self._secrets: dict[str, tuple[str, str]] = {}  # variable name → (value, where first seen)
        self._by_value: dict[tuple[str, str], str] = {}  # (name stem, value) → variable name

    def base_url(self, origin: str) -> str:
        if origin not in self._origins:
            number = len(self._origins) + 1
            self._origins[origin] = "baseUrl" if number == 1 else f"baseUrl{number}"
        return self._origins[origin]

    def secret(self, name: str, value: str, where: str = "") -> str:
        """The ``{{reference}}`` standing for ``value`` of secret ``name``.

        The same name and value give the same variable; another value of the
        same name a new one (``authorization``, ``authorization2``...), so
        that each request keeps the secret it was captured with.
        """
        stem = camel(name, "secret")
        if stem.startswith("baseUrl"):
            stem = "secret" + stem[0].upper() + stem[1:]
        key = self._by_value.get((stem, value))
        if key is None:
            key, number = stem, 2
            while key in self._secrets or key in self._origins.values():
                key, number = f"{stem}{number}", number + 1
            self._by_value[(stem, value)] = key
            self._secrets[key] = (value, where)
        return "{{" + key + "}}"

    def as_list(self, include_secrets: bool) -> list[dict[str, Any]]:
        out = [{"key": key, "value": origin, "type": "string", "description": f"Base URL of {origin}"}
               for origin, key in self._origins.items()]
        for key, (value, where) in self._secrets.items():
            entry = {"key": key, "value": value if include_secrets else "", "type": "string"}
            seen = f"First seen in {where}." if where else ""
            if not include_secrets:
                seen += (" A secret; its value is left out (flowtap writes it with "
                         "include_secrets = true).")
            if seen:
                entry["description"] = seen.strip()
            out.append(entry)
        return out


class Converter:
    """Turns flows into Postman request and response dicts, sharing one :class:`Variables`."""

    def __init__(self, variables: Variables, use_base_url: bool, templated: bool,
                 store_body: StoreBody | None = None) -> None:
        self.variables = variables
        self.use_base_url = use_base_url
        self.templated = templated
        self.store_body = store_body
        self._where = ""  # the request being converted, for the variables' descriptions

    def _secret(self, name: str, value: str) -> str:
        return self.variables.secret(name, value, self._where)

    # -- request ------------------------------------------------------------

    def url(self, request: Request) -> tuple[dict[str, Any], str, str]:
        """The ``url`` object, the path and query as captured, and the endpoint's (templated) path."""
        parts = urlsplit(request.url)
        scheme, host = parts.scheme or "http", parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            port = None
        origin = request.origin
        path = parts.path if parts.path not in ("", "/") else ""
        segments = path.split("/")[1:] if path else []
        captured = path or "/"
        variables: list[dict[str, str]] = []
        if self.templated:
            segments, names = template(segments)
            variables = [{"key": key, "value": value} for key, value in names]
        pairs: list[tuple[str, str | None]] = []
        for part in parts.query.split("&") if parts.query else []:
            if not part:
                continue
            key, sep, raw = part.partition("=")
            value = raw if sep else None
            if value is not None and is_secret(key):
                value = self._secret(key, unquote(value))
            pairs.append((key, value))
        query = [{"key": key, "value": value} for key, value in pairs]
        url: dict[str, Any] = {}
        if self.use_base_url:
            base = "{{" + self.variables.base_url(origin) + "}}"
            url["host"] = [base]
        else:
            base = origin
            url["protocol"] = scheme
            url["host"] = [f"[{host}]"] if ":" in host else host.split(".")
            if port and port != {"http": 80, "https": 443}.get(scheme):
                url["port"] = str(port)
        endpoint = "/" + "/".join(segments)
        search = ""
        if query:
            search = "?" + "&".join(key if value is None else f"{key}={value}" for key, value in pairs)
        url = {"raw": base + endpoint + search, **url, "path": segments}
        if query:
            url["query"] = query
        if variables:
            url["variable"] = variables
        return url, captured + search, endpoint

    def headers(self, headers: Headers, drop: Collection[str] = frozenset()) -> list[dict[str, str]]:
        out = []
        for name, value in headers.fields:
            lower = name.lower()
            if lower.startswith(":") or lower in _DROP_HEADERS or lower in drop:
                continue
            if is_secret(name):
                value = self._secret(name, value)
            out.append({"key": name, "value": value})
        return out

    def body(self, request: Request) -> tuple[dict[str, Any] | None, set[str], str | None]:
        """The ``body`` object, request headers it replaces, and a note for the description."""
        if not request.body:
            note = "The captured request had a body flowtap could not see." if request.body_size else None
            return None, set(), note
        note = None
        if request.truncated:
            note = f"The captured body was cut short: {len(request.body)} of {request.body_size} bytes."
        kind = request.content_type
        if kind == "multipart/form-data" and not request.truncated:
            fields = self._formdata(request)
            if fields is not None:
                return {"mode": "formdata", "formdata": fields}, {"content-type"}, note
        text = _utf8_text(request)
        if text is None:  # newman and Postman send a raw body as UTF-8: keep these bytes in a file
            return self._file_body(request.body, note)
        if kind == "application/x-www-form-urlencoded" and not request.truncated:
            return self._urlencoded(text), set(), note
        graphql = self._graphql(request, text)
        if graphql is not None:
            return {"mode": "graphql", "graphql": graphql}, {"content-type"}, note
        return {"mode": "raw", "raw": text, "options": {"raw": {"language": _language(kind)}}}, set(), note

    def _file_body(self, data: bytes, note: str | None) -> tuple[dict[str, Any], set[str], str | None]:
        """A body that only its bytes can replay: Postman's file ("binary") mode, or base64 text."""
        if self.store_body is not None:
            body = {"mode": "file", "file": {"src": self.store_body(data, "body")}}
            return body, set(), note
        binary = f"The captured body was binary ({len(data)} bytes); it is shown base64-encoded."
        raw = base64.b64encode(data).decode("ascii")
        return {"mode": "raw", "raw": raw, "options": {"raw": {"language": "text"}}}, set(), binary

    def _urlencoded(self, text: str) -> dict[str, Any]:
        """A form body: Postman's urlencoded mode when newman sends it back the same, else raw text.

        newman sends urlencoded fields as an object (repeated names grouped, names
        like ``0`` first) with RFC 3986 escapes: a body it would reorder or
        re-encode other than ``+`` for a space stays raw text, secret values
        becoming variables that hold them as they were encoded.
        """
        parts = [part.partition("=") for part in text.split("&")]
        names = [unquote_plus(name) for name, _, _ in parts]
        fields: list[dict[str, str]] | None = []
        if len(set(names)) < len(names) or any(not sep or not key or key.isdigit()
                                               for (_, sep, _), key in zip(parts, names, strict=True)):
            fields = None
        for (name, _, value), key in zip(parts, names, strict=True):
            if fields is None:
                break
            try:
                decoded = unquote_plus(value, errors="strict")
                key = unquote_plus(name, errors="strict")
            except UnicodeDecodeError:
                fields = None
                break
            again = f"{quote(key, safe=_FORM_SAFE)}={quote(decoded, safe=_FORM_SAFE)}"
            if again != f"{name}={value}".replace("+", "%20"):
                fields = None
                break
            fields.append({"key": key, "value": self._secret(key, decoded) if is_secret(key) else decoded})
        if fields is not None:
            return {"mode": "urlencoded", "urlencoded": fields}
        raw = "&".join(name + sep + (self._secret(key, value) if sep and is_secret(key) else value)
                       for (name, sep, value), key in zip(parts, names, strict=True))
        return {"mode": "raw", "raw": raw, "options": {"raw": {"language": "text"}}}

    def _formdata(self, request: Request) -> list[dict[str, str]] | None:
        head = f"Content-Type: {request.headers.get('content-type')}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=policy.HTTP).parsebytes(head + request.body)
        if not message.is_multipart():
            return None
        fields = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            filename = part.get_filename()
            if filename is not None:
                src = filename
                if self.store_body is not None:
                    content = part.get_payload(decode=True)
                    src = self.store_body(content if isinstance(content, bytes) else b"", filename)
                field = {"key": name, "type": "file", "src": src}
            else:
                payload = part.get_payload(decode=True)  # bytes, or None if it has none
                if not isinstance(payload, bytes):
                    payload = b""
                charset = part.get_content_charset() or "utf-8"
                try:
                    value = payload.decode(charset)
                except (LookupError, UnicodeDecodeError):
                    value = payload.decode("utf-8", "replace")
                if is_secret(name):
                    value = self._secret(name, value)
                field = {"key": name, "value": value, "type": "text"}
            if part.get_content_type() != "text/plain" or "content-type" in part:
                field["contentType"] = part.get_content_type()
            fields.append(field)
        return fields

    @staticmethod
    def _graphql(request: Request, text: str) -> dict[str, str] | None:
        kind = request.content_type
        if kind == "application/graphql":
            return {"query": text, "variables": ""}
        if request.method != "POST" or "json" not in kind or "graphql" not in request.path.lower():
            return None
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if not isinstance(document, dict) or not isinstance(document.get("query"), str):
            return None
        if not _GRAPHQL.match(document["query"]) or document.get("operationName") or set(document) - {
                "query", "variables", "operationName"}:
            return None  # keep what Postman's graphql mode could not send as it was
        variables = document.get("variables")
        return {"query": document["query"], "variables": json.dumps(variables, indent=2) if variables else ""}

    def request(self, flow: Flow) -> tuple[dict[str, Any], str, str]:
        """The ``request`` object, the captured path and query, and the endpoint's path."""
        request = flow.request
        self._where = _where(request)
        url, captured, endpoint = self.url(request)
        body, replaced, note = self.body(request)
        if flow.metadata.get("request_body_rebuilt") and body is not None:
            rebuilt = ("The browser showed this form body only as fields sorted by name: flowtap rebuilt it, "
                       "and the page's field order is lost.")
            note = f"{note} {rebuilt}" if note else rebuilt
        headers = self.headers(request.headers, drop=replaced)
        if body is not None and body["mode"] == "graphql":
            headers.append({"key": "Content-Type", "value": "application/json"})
        out: dict[str, Any] = {"method": request.method, "header": headers, "url": url}
        if body is not None:
            out["body"] = body
        if note:
            out["description"] = note
        return out, captured, endpoint

    # -- response -----------------------------------------------------------

    def example(self, flow: Flow, original: dict[str, Any]) -> dict[str, Any] | None:
        """The saved response, or None when there is none."""
        response = flow.response
        if response is None:
            return None
        self._where = "the response to " + _where(flow.request)
        try:
            reason = response.reason or HTTPStatus(response.status_code).phrase
        except ValueError:
            reason = ""
        example: dict[str, Any] = {
            "name": f"{response.status_code} {reason}".strip(),
            "originalRequest": original,
            "status": reason,
            "code": response.status_code,
            "_postman_previewlanguage": "text",
            "header": self.headers(response.headers),  # each Set-Cookie its own variable
            "cookie": [],
        }
        duration = flow.timings.duration
        if duration is not None:
            example["responseTime"] = round(duration)
        if response.body and not response.content_type.startswith(_MEDIA):
            text = text_of(response)
            if text is None:
                example["body"] = base64.b64encode(response.body).decode("ascii")
            else:
                example["body"] = text
                example["_postman_previewlanguage"] = _language(response.content_type)
        return example
