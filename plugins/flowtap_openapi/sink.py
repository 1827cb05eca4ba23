"""The OpenAPI sink: flows summarised per endpoint and method, the description rewritten atomically.

Memory holds the API, not the traffic: the paths learnt so far
(:class:`flowtap.endpoints.EndpointTree`, which folds identifiers and
crowded word positions into parameters), and per operation a summary
(:class:`~flowtap_openapi.operation.Operation`: merged schemas, parameter
counts, security schemes, one example per status). No body is kept.

The description is rebuilt from that summary and folded into the document
read from ``path`` at :meth:`open` (:func:`flowtap_openapi.document.update`),
then written whole and atomically when it changed: at most once a second
while flows arrive, and less often as rewrites take longer (so that they
take at most 1/:data:`BUDGET` of the sink's time), and when the session
ends. A replay (``flowtap export``: :attr:`flowtap.Session.replay`) writes it
only when the session ends.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

import flowtap
from flowtap.endpoints import EndpointTree, Node
from flowtap.memory import unmap_large_buffers
from flowtap.paths import check_writable, expand_path
from flowtap_openapi import _ORIGIN, document
from flowtap_openapi.operation import Operation

if TYPE_CHECKING:
    from flowtap.scheduler import Timer

log = logging.getLogger("flowtap.openapi")

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: Seconds between rewrites while flows keep arriving (at least).
INTERVAL = 1.0
#: The next rewrite waits this many times as long as the last one took (YAML's round trip is slow:
#: a third of a second for 50 operations).
BUDGET = 50
#: Origins remembered per endpoint (for path-level ``servers``).
MAX_ORIGINS = 16
_ASSET_EXTENSIONS = frozenset({".js", ".mjs", ".css", ".map", ".png", ".jpg", ".jpeg", ".gif", ".webp",
                               ".avif", ".svg", ".ico", ".bmp", ".woff", ".woff2", ".ttf", ".otf", ".eot",
                               ".mp4", ".webm", ".mp3", ".ogg", ".wav", ".html", ".htm"})
_ASSET_TYPES = ("image/", "font/", "audio/", "video/", "text/css", "text/javascript",
                "application/javascript", "text/html")


class Endpoint:
    """What ends at one node of the tree: its operations by method, and the origins that served it."""

    __slots__ = ("key", "operations", "origins")

    def __init__(self, key: str = "") -> None:
        self.key = key  # the path as the file had it, for an endpoint read from it
        self.operations: dict[str, Operation] = {}
        self.origins: set[str] = set()

    def merge(self, other: Endpoint) -> Endpoint:
        """Take in ``other`` (two endpoints became one); returns self."""
        for method, op in other.operations.items():
            self.operations[method] = self.operations[method].merge(op) if method in self.operations else op
        self.origins |= other.origins
        return self


class OpenAPISink(flowtap.Sink):
    """Writes ``[sinks.openapi]``: an OpenAPI 3.1 description of what the session saw."""

    merges = True  # an existing description at path is widened, never replaced

    def __init__(self, options: dict[str, Any]) -> None:
        self.template = options["path"]
        self.title = options["title"] or "API seen by flowtap"
        self.origins = [_ORIGIN.match(entry).groups() for entry in options["origins"]]  # type: ignore[union-attr]
        self.assets = options["assets"]
        self.path: Path | None = None
        self._text = ""  # the file as open() found it
        self._timer: Timer | None = None
        self._next = 0.0
        self._written: bytes | None = None  # the description last written, as generated (JSON)
        self._live = True  # rewrite while flows arrive (not in a replay: the file is written at the end)
        self._reset({})

    def _reset(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.tree = EndpointTree(Endpoint.merge)
        self.schemes: dict[str, dict[str, Any]] = {}
        self.servers: list[str] = []
        self.counts = {"described": 0, "failed": 0, "assets": 0, "origins": 0, "other": 0}
        self._dirty = True
        self._load(doc)

    def _load(self, doc: dict[str, Any]) -> None:
        """Learn what a description written before says (its endpoints are kept as they are written)."""
        for server in doc.get("servers") or []:
            if isinstance(server, dict) and isinstance(server.get("url"), str):
                self.servers.append(server["url"].rstrip("/"))
        schemes = (doc.get("components") or {}).get("securitySchemes")
        if isinstance(schemes, dict):
            self.schemes.update({str(name): dict(scheme) for name, scheme in schemes.items()
                                 if isinstance(scheme, dict)})
        for key, item in (doc.get("paths") or {}).items():
            if not isinstance(item, dict):
                continue
            node = self.tree.add_template(str(key))
            endpoint = node.payload = node.payload or Endpoint(str(key))
            for method in METHODS:
                if method in item:
                    endpoint.operations[method] = Operation.from_spec(item[method])
            for op in [item, *(item[m] for m in METHODS if isinstance(item.get(m), dict))]:
                for parameter in op.get("parameters") or []:
                    if isinstance(parameter, dict) and parameter.get("in") == "path":
                        _learn_kind(node, str(parameter.get("name")), parameter.get("schema"))

    # -- the sink -------------------------------------------------------------------------------------

    def open(self, session: flowtap.Session) -> None:
        unmap_large_buffers()
        path = self.path = expand_path(self.template, session)
        self._live = not session.replay
        check_writable(path)
        try:
            self._text = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise flowtap.SinkError(f"{path}: cannot read the description to merge with: {exc}") from None
        self._reset(document.parse(path, self._text))

    def write(self, flow: flowtap.Flow) -> None:
        request, response = flow.request, flow.response
        method = request.method.lower()
        if flow.websocket is not None or method not in METHODS:
            self.counts["other"] += 1
            return
        if response is None or flow.error is not None:
            self.counts["failed"] += 1
            return
        if self.origins and not any(_matches(request, *entry) for entry in self.origins):
            self.counts["origins"] += 1
            return
        path = request.path.split("?", 1)[0]
        if not self.assets and (_extension(path) in _ASSET_EXTENSIONS or (
                response.status_code < 400 and response.content_type.startswith(_ASSET_TYPES))):
            self.counts["assets"] += 1
            return
        node, _ = self.tree.add(path)
        endpoint = node.payload = node.payload or Endpoint()
        origin = request.origin
        if origin not in self.servers:
            self.servers.append(origin)
        if len(endpoint.origins) < MAX_ORIGINS:
            endpoint.origins.add(origin)
        operation = endpoint.operations.get(method)
        if operation is None:
            operation = endpoint.operations[method] = Operation()
        operation.learn(flow, self.schemes)
        self.counts["described"] += 1
        self._dirty = True

    def flush(self) -> None:
        if self._dirty and self._live and self._timer is None and self.path is not None:
            self._timer = self.call_later(max(0.0, self._next - time.monotonic()), self._rewrite)

    @flowtap.hookimpl
    def flowtap_session_clear(self) -> None:
        """Forget this session's flows: the description goes back to what the file held at the start."""
        if self.path is not None:
            self._reset(document.parse(self.path, self._text))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.path is None:
            return
        if self._dirty:
            self._rewrite()
        left = {what: count for what, count in self.counts.items() if count and what != "described"}
        if left:
            why = {"failed": "failed (no response)", "assets": "static assets (assets = false)",
                   "origins": "of other origins", "other": "WebSocket, CONNECT or other methods"}
            log.info("%s: described %d flows; left out: %s", self.path, self.counts["described"],
                     ", ".join(f"{count} {why[what]}" for what, count in left.items()))

    # -- the description ------------------------------------------------------------------------------

    def _rewrite(self) -> None:
        """Write the description as it is now (a call_later callback, and at close)."""
        self._timer = None
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        began = time.monotonic()
        try:
            text = orjson.dumps(self.generated(), option=orjson.OPT_NON_STR_KEYS)
            if text == self._written:  # the flows since the last write changed nothing in it
                return
            # Through JSON: no part shared by two places (YAML would write anchors and aliases).
            document.update(self.doc, orjson.loads(text))
            document.dump(self.path, self.doc)
            self._written = text
        except OSError as exc:  # still dirty: the next flush schedules another try
            self._dirty = True
            raise flowtap.SinkFailed(f"{self.path}: cannot write the OpenAPI description: "
                                     f"{exc.strerror or exc}") from None
        finally:
            self._next = time.monotonic() + max(INTERVAL, BUDGET * (time.monotonic() - began))

    def generated(self) -> dict[str, Any]:
        """The description of what was learnt, before it is folded into the file's document."""
        paths: dict[str, Any] = {}
        everywhere = set(self.servers)
        for node in self.tree.endpoints():
            endpoint: Endpoint = node.payload
            parameters = _path_parameters(node)
            item: dict[str, Any] = {method: endpoint.operations[method].spec(parameters)
                                    for method in METHODS if method in endpoint.operations}
            if len(everywhere) > 1 and endpoint.origins and endpoint.origins != everywhere:
                item["servers"] = [{"url": origin} for origin in sorted(endpoint.origins)]
            paths[endpoint.key or node.path()] = item
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": "0.1.0",
                     "description": f"Inferred by flowtap {flowtap.__version__} from captured traffic."},
            "servers": [{"url": url} for url in self.servers],
            "paths": paths,
        }
        if self.schemes:
            doc["components"] = {"securitySchemes": self.schemes}
        return doc


def _extension(path: str) -> str:
    """``.js`` for ``/static/app.js``, lower-cased; "" when the last segment has none."""
    name = path.rpartition("/")[2]
    return "." + name.rpartition(".")[2].lower() if "." in name.strip(".") else ""


def _matches(request: flowtap.Request, scheme: str | None, wildcard: str | None, host: str,
             port: str | None) -> bool:
    """Whether ``request`` goes to the origin an ``origins`` entry names."""
    if scheme and request.scheme != scheme:
        return False
    if port and str(request.port) != port:
        return False
    if wildcard:
        return request.host.endswith("." + host)
    return request.host == host.strip("[]")


def _learn_kind(node: Node, name: str, schema: Any) -> None:
    """Mark the parameter ``name`` above ``node`` with the kind its schema (written before) says."""
    schema = schema if isinstance(schema, dict) else {}
    kind = "integer" if schema.get("type") == "integer" else {"uuid": "uuid", "date": "date"}.get(
        str(schema.get("format")), "string")
    current: Node | None = node
    while current is not None:
        if current.is_param and current.name == name and not current.kinds:
            current.kinds.add(kind)
        current = current.parent


def _path_parameters(node: Node) -> list[dict[str, Any]]:
    """The path parameters of the endpoint at ``node``, from the root down."""
    out = []
    current: Node | None = node
    while current is not None:
        if current.is_param:
            out.append({"name": current.name, "in": "path", "required": True,
                        "schema": _kind_schema(current.kinds)})
        current = current.parent
    return out[::-1]


def _kind_schema(kinds: set[str]) -> dict[str, Any]:
    if kinds == {"integer"}:
        return {"type": "integer"}
    if kinds == {"uuid"}:
        return {"type": "string", "format": "uuid"}
    if kinds == {"date"}:
        return {"type": "string", "format": "date"}
    return {"type": "string"}
