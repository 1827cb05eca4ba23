"""An operation (a method of an endpoint) summarised from the flows that called it.

What one flow teaches, in one place:

- **Security**: ``Authorization: Bearer …`` is the scheme ``bearerAuth``,
  ``Basic …`` ``basicAuth``, any other ``Authorization`` an API key in that
  header; another header, a query parameter or a cookie whose name says it
  holds a credential (:func:`flowtap.credentials.is_secret`) is an API key
  there (``X-API-Key`` → ``xApiKey``, ``?api_key=`` → ``apiKeyQuery``,
  cookie ``session`` → ``sessionCookie``). Each operation lists the sets
  of schemes its flows used (``{}`` when some used none). None of their
  values is kept: they are only collected to be replaced in examples.
- **Parameters**: query parameters and non-standard request headers
  (``X-…``) that are not credentials, their schema from their values
  (``integer`` when every value was one), ``required`` when every flow had
  them.
- **Bodies**: per media type. JSON (``application/json``, ``…+json``) is
  summarised by a :class:`~flowtap_openapi.schema.Shape`; a form is an
  object of strings; text/plain and text/html are strings; other text and
  binary bodies have no schema (any content, as OpenAPI 3.1 writes binary
  content). One
  example per request media type and one per response status, from the
  first flow that had one, its credentials replaced by ``REDACTED``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson

from flowtap import Flow, Request, Response
from flowtap.credentials import is_secret
from flowtap.endpoints import camel
from flowtap_openapi.schema import MAX_DEPTH, Shape, parameter_schema, scalar

REDACTED = "REDACTED"
#: Bodies longer than this give no example (the schema still learns from them).
MAX_EXAMPLE = 16 * 1024
#: Headers never written as parameters (standard, hop-by-hop, or the proxy's).
_STANDARD_PREFIXES = ("x-forwarded-", "x-real-ip", "x-requested-with")
#: Request headers written as parameters, at most this many per operation.
MAX_HEADERS = 16
MAX_QUERY = 64

Security = tuple[str, ...]


def media_kind(media: str) -> str:
    """How a body of media type ``media`` is described: "json", "form", "multipart", "plain" (text
    validators read as a string), "text" (other text) or "binary"."""
    if media == "application/json" or media.endswith(("+json", "/json")):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("multipart/"):
        return "multipart"
    if media in ("text/plain", "text/html"):
        return "plain"
    if media.startswith("text/") or media.endswith(("+xml", "/xml", "/javascript", "/graphql")):
        return "text"
    return "binary"


class Body:
    """One media type of a request or response body: its shape and one example."""

    __slots__ = ("example", "kind", "shape")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.shape = Shape()
        self.example: Any = None

    def learn(self, message: Request | Response, secrets: set[str], example: bool) -> None:
        """Learn from ``message``'s body; keep it as the example if ``example`` and there is none yet."""
        if message.truncated:
            return
        value: Any
        if self.kind == "json":
            try:
                value = orjson.loads(message.body)
            except ValueError:  # not JSON, or what orjson refuses: integers beyond 64 bits, NaN
                try:
                    value = json.loads(message.body)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    return
        elif self.kind == "form":
            value = dict(parse_qsl(message.text(), keep_blank_values=True))
        elif self.kind in ("plain", "text"):
            value = message.text()  # for the example: text has no shape to learn
        else:
            return
        if self.kind in ("json", "form"):
            self.shape.add(value)
        if example and self.example is None and len(message.body) <= MAX_EXAMPLE:
            try:
                self.example = scrub(value, secrets)
            except RecursionError:  # too deep to be an example worth reading (or to write)
                pass

    def merge(self, other: Body) -> Body:
        self.shape.merge(other.shape)
        if self.example is None:
            self.example = other.example
        return self

    def spec(self) -> dict[str, Any]:
        """The media type object: ``schema`` and ``example``.

        Binary bodies and text other than text/plain and text/html have no schema (any
        content), as OpenAPI 3.1 writes binary content: validators such as openapi-core read
        those bodies as bytes, which no ``type: string`` accepts.
        """
        out: dict[str, Any] = {}
        if self.kind in ("json", "form"):
            out["schema"] = self.shape.schema()
        elif self.kind == "multipart":
            out["schema"] = {"type": "object"}
        elif self.kind == "plain":
            out["schema"] = {"type": "string"}
        if self.example is not None:
            out["example"] = self.example
        return out

    @classmethod
    def from_spec(cls, media: str, content: Any) -> Body:
        body = cls(media_kind(media))
        if isinstance(content, dict) and body.kind in ("json", "form"):
            body.shape = Shape.from_schema(content.get("schema"))
        return body


class Parameter:
    """A query parameter or a header: how often it was there, and the shape of its values."""

    __slots__ = ("name", "seen", "shape")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen = 0
        self.shape = Shape()

    def merge(self, other: Parameter) -> Parameter:
        self.seen += other.seen
        self.shape.merge(other.shape)
        return self


class Operation:
    """What the flows of one method of one endpoint had in common."""

    __slots__ = ("bodies", "count", "headers", "query", "responses", "security", "with_body")

    def __init__(self) -> None:
        self.count = 0
        self.query: dict[str, Parameter] = {}
        self.headers: dict[str, Parameter] = {}  # by lower-case name
        self.security: set[Security] = set()
        self.bodies: dict[str, Body] = {}
        self.with_body = 0
        self.responses: dict[str, dict[str, Body]] = {}  # status → media type → body

    # -- learning -------------------------------------------------------------------------------------

    def learn(self, flow: Flow, schemes: dict[str, dict[str, Any]]) -> None:
        """Learn from one flow that has a response; new security schemes go into ``schemes``."""
        request, response = flow.request, flow.response
        assert response is not None
        self.count += 1
        query = request.query
        used, secrets = _security(request, query, schemes)
        self.security.add(used)
        if query:
            self._parameters(self.query, [pair for pair in query if not is_secret(pair[0])], MAX_QUERY)
        headers = [(name, value) for name, value in request.headers if _role(name) == "parameter"]
        if headers:
            self._parameters(self.headers, headers, MAX_HEADERS, fold=True)
        if request.body:
            self.with_body += 1
            self._body(self.bodies, request, secrets)
        status = str(response.status_code)
        content = self.responses.get(status)
        if content is None:
            content = self.responses[status] = {}
        if response.body:
            self._body(content, response, secrets)

    def _parameters(self, known: dict[str, Parameter], pairs: Any, limit: int, fold: bool = False) -> None:
        """Learn from ``(name, value)`` pairs; ``fold``: names in any case are one (headers)."""
        seen = set()
        for name, value in pairs:
            key = name.lower() if fold else name
            parameter = known.get(key)
            if parameter is None:
                if len(known) >= limit:
                    continue
                parameter = known[key] = Parameter(name)  # named as first seen
            if key not in seen:
                parameter.seen += 1
                seen.add(key)
            parameter.shape.add(scalar(value))

    @staticmethod
    def _body(content: dict[str, Body], message: Request | Response, secrets: set[str]) -> None:
        media = message.content_type or "application/octet-stream"
        body = content.get(media)
        if body is None:
            body = content[media] = Body(media_kind(media))
        # One example per status: none yet for any of its media types.
        example = body.example is None and all(other.example is None for other in content.values())
        body.learn(message, secrets, example)

    def merge(self, other: Operation) -> Operation:
        """Learn what ``other`` learnt (two endpoints became one); returns self."""
        self.count += other.count
        self.with_body += other.with_body
        self.security |= other.security
        for mine, theirs in ((self.query, other.query), (self.headers, other.headers)):
            for name, parameter in theirs.items():
                mine[name] = mine[name].merge(parameter) if name in mine else parameter
        _merge_content(self.bodies, other.bodies)
        for status, content in other.responses.items():
            _merge_content(self.responses.setdefault(status, {}), content)
        return self

    # -- as an operation object -------------------------------------------------------------------------

    def spec(self, path_parameters: list[dict[str, Any]]) -> dict[str, Any]:
        """The operation object (without the parts only a person writes: summary, description...)."""
        parameters = list(path_parameters)
        for where, known in (("query", self.query), ("header", self.headers)):
            for parameter in known.values():
                parameters.append({"name": parameter.name, "in": where,
                                   "required": parameter.seen >= self.count,
                                   "schema": parameter_schema(parameter.shape)})
        out: dict[str, Any] = {}
        if parameters:
            out["parameters"] = parameters
        if self.bodies:
            out["requestBody"] = {"required": self.with_body >= self.count,
                                  "content": {media: body.spec() for media, body in self.bodies.items()}}
        responses: dict[str, Any] = {}
        for status in sorted(self.responses):
            responses[status] = {"description": _reason(status)}
            if self.responses[status]:
                responses[status]["content"] = {media: body.spec()
                                                for media, body in self.responses[status].items()}
        out["responses"] = responses or {"default": {"description": "Not seen yet"}}
        if any(self.security):
            out["security"] = [{name: [] for name in used} for used in sorted(self.security, key=_by_size)]
        return out

    @classmethod
    def from_spec(cls, spec: Any) -> Operation:
        """The operation a spec written before describes, as if one flow had shown it."""
        op = cls()
        op.count = 1
        if not isinstance(spec, dict):
            return op
        for parameter in spec.get("parameters") or []:
            if not isinstance(parameter, dict) or parameter.get("in") not in ("query", "header"):
                continue
            name = str(parameter.get("name", ""))
            known = op.query if parameter["in"] == "query" else op.headers
            key = name if parameter["in"] == "query" else name.lower()
            loaded = known[key] = Parameter(name)
            loaded.seen = 1 if parameter.get("required") else 0
            loaded.shape = Shape.from_schema(parameter.get("schema"))
        body = spec.get("requestBody")
        if isinstance(body, dict):
            op.with_body = 1 if body.get("required") else 0
            for media, content in _mapping(body.get("content")).items():
                op.bodies[str(media)] = Body.from_spec(str(media), content)
        for status, response in _mapping(spec.get("responses")).items():
            if str(status) == "default":
                continue
            content = response.get("content") if isinstance(response, dict) else None
            op.responses[str(status)] = {str(media): Body.from_spec(str(media), value)
                                         for media, value in _mapping(content).items()}
        for requirement in spec.get("security") or []:
            if isinstance(requirement, dict):
                op.security.add(tuple(sorted(map(str, requirement))))
        return op


def _mapping(value: Any) -> dict[Any, Any]:
    """``value`` if it is a mapping (as a hand-written document should have it there), else {}."""
    return value if isinstance(value, dict) else {}


def _merge_content(mine: dict[str, Body], theirs: dict[str, Body]) -> None:
    for media, body in theirs.items():
        mine[media] = mine[media].merge(body) if media in mine else body


def _by_size(used: Security) -> tuple[int, Security]:
    return (0 if used else 1, used)  # {} (no credentials) last


def _reason(status: str) -> str:
    try:
        return HTTPStatus(int(status)).phrase
    except ValueError:
        return f"Status {status}"


_BEARER = {"type": "http", "scheme": "bearer"}
_BASIC = {"type": "http", "scheme": "basic"}


def _security(request: Request, query: list[tuple[str, str]],
              schemes: dict[str, dict[str, Any]]) -> tuple[Security, set[str]]:
    """The security schemes ``request`` used (added to ``schemes``), and the credentials it sent."""
    used: dict[str, dict[str, Any]] = {}  # scheme name → definition
    secrets: set[str] = set()
    for name, value in request.headers:
        role = _role(name)
        if role is None or role == "parameter":
            continue
        if role == "authorization":
            kind, _, credential = value.strip().partition(" ")
            kind = kind.lower()
            if kind == "bearer":
                used["bearerAuth"] = _BEARER
            elif kind == "basic":
                used["basicAuth"] = _BASIC
                secrets.add(_password(credential.strip()))
            else:
                used["authorization"] = {"type": "apiKey", "in": "header", "name": name}
            secrets.update((value, credential))
        elif role == "cookie":
            for cookie, secret in request.cookies:
                if is_secret(cookie):
                    used[camel(cookie, "session") + "Cookie"] = {"type": "apiKey", "in": "cookie",
                                                                 "name": cookie}
                    secrets.add(secret)
        elif role == "credential":
            used[camel(name, "apiKey")] = {"type": "apiKey", "in": "header", "name": name}
            secrets.add(value)
        else:  # a proxy's credentials: no scheme of the API's, but never written either
            secrets.add(value)
    for name, value in query:
        if is_secret(name):
            used[camel(name, "apiKey") + "Query"] = {"type": "apiKey", "in": "query", "name": name}
            secrets.add(value)
    for name, definition in used.items():
        if name not in schemes:
            schemes[name] = definition
    return tuple(sorted(used)), {secret for secret in secrets if len(secret) >= 4}


@functools.lru_cache(maxsize=1024)  # the same few header names, over and over
def _role(name: str) -> str | None:
    """What a request header is to the description: "authorization", "cookie", "proxy" (its
    credentials), "credential" (an API key), "parameter" (an ``X-…`` header), or None (left out)."""
    lower = name.lower()
    if lower in ("authorization", "cookie"):
        return lower
    if lower == "proxy-authorization":
        return "proxy"
    if is_secret(name):
        return "credential" if lower != "set-cookie" else None
    return "parameter" if lower.startswith("x-") and not lower.startswith(_STANDARD_PREFIXES) else None


def _password(credential: str) -> str:
    """The password of Basic credentials (to be replaced wherever it shows up); "" if none."""
    try:
        return base64.b64decode(credential, validate=True).decode("utf-8").partition(":")[2]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def scrub(value: Any, secrets: set[str], depth: int = 0) -> Any:
    """``value`` with credentials replaced: values of keys named like one, and any text ``secrets`` holds.

    :raises RecursionError: ``value`` is nested deeper than :data:`MAX_DEPTH` (no example, then).
    """
    if depth > MAX_DEPTH and isinstance(value, (dict, list)):
        raise RecursionError("too deep for an example")
    if isinstance(value, dict):
        return {key: _redacted(item) if is_secret(key) and not isinstance(item, (dict, list))
                else scrub(item, secrets, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item, secrets, depth + 1) for item in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
    return value


def _redacted(item: Any) -> Any:
    if item is None or isinstance(item, bool):
        return item
    return 0 if isinstance(item, (int, float)) else REDACTED
