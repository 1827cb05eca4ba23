"""One flow as a Postman Collection v2.1.0 request and saved response (an "example").

The rules, in one place:

- **Base URL**: with ``variables = true`` each origin (scheme, host, port) becomes a
  collection variable holding it: the first ``baseUrl``, the next ``baseUrl2``,
  ``baseUrl3``... (each variable's description names its origin); requests use
  ``{{baseUrl}}/path``.
- **Path variables**: with ``templated=True`` (``organize`` includes ``endpoint``) a
  numeric or UUID path segment becomes ``:name``, named after the segment before it
  (``/users/42`` → ``/users/:userId``; ``id`` when there is none), with its captured
  value in ``url.variable``.
- **Secrets**: the headers Authorization, Proxy-Authorization, Cookie and Set-Cookie,
  and any header, query, form or multipart parameter whose name contains ``token``,
  ``secret``, ``passw``, ``apikey``/``api-key``/``api_key``, ``session``,
  ``credential`` or the word ``auth``, or is ``key``, ``sig``, ``signature`` or ``sid``,
  are written as ``{{variable}}`` (``X-API-Key`` → ``{{xApiKey}}``). One variable per
  name, holding the latest value seen; values are written only with ``include_secrets``.
- **Bodies**: ``urlencoded`` and ``formdata`` (multipart, parsed with the standard
  library's email parser; file parts keep their file name only) as Postman has them;
  ``graphql`` for ``application/graphql`` bodies and for JSON bodies with a GraphQL
  ``query`` POSTed to a path containing "graphql"; otherwise ``raw`` with the
  language Postman would pick (json, xml, html, javascript, text). A binary body is
  written base64-encoded, and the request's description says so.
- **Examples**: never with image, audio or video bodies (as in Postman).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Collection
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from flowtap import Flow, Headers, Request, Response

_DROP_HEADERS = {"host", "content-length", "connection", "keep-alive", "proxy-connection",
                 "transfer-encoding", "te", "trailer", "upgrade", "http2-settings"}
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
_SECRET_EXACT = {"key", "sig", "signature", "sid", "auth"}
_SECRET_PARTS = ("token", "secret", "passw", "apikey", "api-key", "api_key", "session", "credential")
_MEDIA = ("image/", "audio/", "video/")
_BINARY = _MEDIA + ("font/", "application/octet-stream", "application/zip", "application/gzip",
                    "application/pdf", "application/wasm", "application/protobuf", "application/x-protobuf",
                    "application/grpc")
# Bytes that do not occur in text (control characters but tab, newlines, form feed).
_TEXT_BYTES = bytes(b for b in range(256) if b not in range(0x00, 0x09) and b not in range(0x0E, 0x20))
_NUMBER = re.compile(r"^[0-9]+$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_GRAPHQL = re.compile(r"^\s*(query|mutation|subscription|fragment)\b|^\s*\{")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=4096)  # the same few names, over and over
def is_secret(name: str) -> bool:
    """Whether a header or parameter called ``name`` carries a credential."""
    lower = unquote(name).strip().lower()
    if lower in _SECRET_HEADERS or lower in _SECRET_EXACT:
        return True
    if any(part in lower for part in _SECRET_PARTS):
        return True
    return "auth" in re.split(r"[-_.\s]+", lower)


@functools.lru_cache(maxsize=4096)
def camel(name: str, default: str = "value") -> str:
    """``X-API-Key`` → ``xApiKey``: a variable name Postman shows well."""
    words = [w.lower() for w in _WORDS.findall(unquote(name))]
    if not words:
        return default
    return words[0] + "".join(w.capitalize() for w in words[1:])


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


def _language(content_type: str) -> str:
    for word, language in (("json", "json"), ("xml", "xml"), ("html", "html"), ("javascript", "javascript")):
        if word in content_type:
            return language
    return "text"


class Variables:
    """The collection's variables: a base URL per origin and one variable per secret name."""

    def __init__(self) -> None:
        self._origins: dict[str, str] = {}
        self._secrets: dict[str, str] = {}  # variable name → latest value

    def base_url(self, origin: str) -> str:
        if origin not in self._origins:
            number = len(self._origins) + 1
            self._origins[origin] = "baseUrl" if number == 1 else f"baseUrl{number}"
        return self._origins[origin]

    def secret(self, name: str, value: str) -> str:
        """The ``{{reference}}`` standing for secret ``name`` (remembering ``value``)."""
        key = camel(name, "secret")
        if key.startswith("baseUrl"):
            key = "secret" + key[0].upper() + key[1:]
        self._secrets[key] = value
        return "{{" + key + "}}"

    def as_list(self, include_secrets: bool) -> list[dict[str, Any]]:
        out = [{"key": key, "value": origin, "type": "string", "description": f"Base URL of {origin}"}
               for origin, key in self._origins.items()]
        for key, value in self._secrets.items():
            entry = {"key": key, "value": value if include_secrets else "", "type": "string"}
            if not include_secrets:
                entry["description"] = ("A secret seen in the capture; its value is left out "
                                        "(flowtap writes it with include_secrets = true).")
            out.append(entry)
        return out


def _origin(scheme: str, host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def _path_variables(segments: list[str]) -> list[dict[str, str]]:
    """Template numeric and UUID segments in place; return the ``url.variable`` entries."""
    variables: list[dict[str, str]] = []
    used: set[str] = set()
    for i, segment in enumerate(segments):
        if not (_NUMBER.match(segment) or _UUID.match(segment)):
            continue
        before = segments[i - 1] if i and not segments[i - 1].startswith(":") else ""
        stem = camel(before, "") if re.fullmatch(r"[A-Za-z][A-Za-z_-]*", before) else ""
        for plural, singular in (("ies", "y"), ("ses", "s"), ("s", "")):
            if stem.endswith(plural) and not stem.endswith("ss"):
                stem = stem[: -len(plural)] + singular
                break
        name = stem + "Id" if stem else "id"
        base, number = name, 2
        while name in used:
            name, number = f"{base}{number}", number + 1
        used.add(name)
        segments[i] = ":" + name
        variables.append({"key": name, "value": segment})
    return variables


class Converter:
    """Turns flows into Postman request and response dicts, sharing one :class:`Variables`."""

    def __init__(self, variables: Variables, use_base_url: bool, templated: bool) -> None:
        self.variables = variables
        self.use_base_url = use_base_url
        self.templated = templated

    # -- request ------------------------------------------------------------

    def url(self, request: Request) -> tuple[dict[str, Any], str, str]:
        """The ``url`` object, the path and query as captured, and the endpoint's (templated) path."""
        parts = urlsplit(request.url)
        scheme, host = parts.scheme or "http", parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            port = None
        origin = _origin(scheme, host, port)
        path = parts.path if parts.path not in ("", "/") else ""
        segments = path.split("/")[1:] if path else []
        captured = path or "/"
        variables = _path_variables(segments) if self.templated else []
        pairs: list[tuple[str, str | None]] = []
        for part in parts.query.split("&") if parts.query else []:
            if not part:
                continue
            key, sep, raw = part.partition("=")
            value = raw if sep else None
            if value is not None and is_secret(key):
                value = self.variables.secret(key, unquote(value))
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
                value = self.variables.secret(name, value)
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
        text = text_of(request)
        if text is None:
            binary = f"The captured body was binary ({len(request.body)} bytes); it is shown base64-encoded."
            raw = base64.b64encode(request.body).decode("ascii")
            return {"mode": "raw", "raw": raw, "options": {"raw": {"language": "text"}}}, set(), binary
        if kind == "application/x-www-form-urlencoded" and not request.truncated:
            fields = [{"key": k, "value": self.variables.secret(k, v) if is_secret(k) else v}
                      for k, v in parse_qsl(text, keep_blank_values=True)]
            return {"mode": "urlencoded", "urlencoded": fields}, set(), note
        graphql = self._graphql(request, text)
        if graphql is not None:
            return {"mode": "graphql", "graphql": graphql}, {"content-type"}, note
        return {"mode": "raw", "raw": text, "options": {"raw": {"language": _language(kind)}}}, set(), note

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
                field = {"key": name, "type": "file", "src": filename}
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
                    value = self.variables.secret(name, value)
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
        url, captured, endpoint = self.url(request)
        body, replaced, note = self.body(request)
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
            "header": self.headers(response.headers),
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
