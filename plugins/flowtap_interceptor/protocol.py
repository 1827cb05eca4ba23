"""The bridge protocol: versioned JSON messages, checked against ``extension/protocol.json``.

The schema is shared with the extension (it ships inside the extension's
folder). :func:`check` validates with the small subset of JSON Schema that
file uses; :class:`ProtocolError` carries the ``code`` of the error reply.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any

#: The protocol version every message carries as ``"v"``.
VERSION = 2

EXTENSION_DIR = Path(__file__).parent / "extension"
SCHEMA_PATH = EXTENSION_DIR / "protocol.json"

#: Message types the bridge accepts from the extension once paired.
FROM_EXTENSION = ("ping", "pong", "capture", "body", "cookies", "log", "error")

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
#: Keywords the validator understands; annotations are ignored.
_KEYWORDS = {"$ref", "type", "properties", "required", "additionalProperties", "items", "enum", "const",
             "minimum", "maximum", "minLength", "maxLength", "maxItems", "oneOf"}
_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}


class ProtocolError(Exception):
    """A message the bridge refuses; ``code`` goes into the error reply."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.ref = ref


@functools.cache
def schema() -> dict[str, Any]:
    """The protocol schema, checked to use only the keywords :func:`validate` knows."""
    document = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    _check_keywords(document, "#")
    return document


def _check_keywords(node: Any, where: str) -> None:
    if isinstance(node, dict):
        unknown = set(node) - _KEYWORDS - _ANNOTATIONS
        if unknown:
            raise ValueError(f"{SCHEMA_PATH}: {where} uses {sorted(unknown)}, which the bridge's validator "
                             "does not support")
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    _check_keywords(sub, f"{where}/{key}/{name}")
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                _check_keywords(value, f"{where}/{key}")
            elif key == "oneOf":
                for i, sub in enumerate(value):
                    _check_keywords(sub, f"{where}/oneOf/{i}")


def extension_id() -> str:
    """The extension's Chromium ID, the same from whatever folder it is loaded: derived from the public
    key in its manifest (SHA-256 of the key, first 32 hex digits written with the letters a to p)."""
    manifest = json.loads((EXTENSION_DIR / "manifest.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(base64.b64decode(manifest["key"])).hexdigest()[:32]
    return "".join(chr(ord("a") + int(digit, 16)) for digit in digest)


def message_types() -> list[str]:
    """Every message type the schema defines."""
    return [ref["$ref"].rsplit("/", 1)[1] for ref in schema()["oneOf"]]


def validate(value: Any, node: dict[str, Any], path: str = "$") -> str | None:
    """The first way ``value`` breaks the schema ``node``, as "path: problem"; None if it fits."""
    if "$ref" in node:
        return validate(value, _resolve(node), path)
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_TYPES[t](value) for t in types):
            return f"{path}: expected {' or '.join(types)}, got {_kind(value)}"
    if "const" in node and not _same(value, node["const"]):
        return f"{path}: expected {json.dumps(node['const'])}, got {_short(value)}"
    if "enum" in node and not any(_same(value, choice) for choice in node["enum"]):
        choices = ", ".join(json.dumps(c) for c in node["enum"])
        return f"{path}: expected one of {choices}, got {_short(value)}"
    if isinstance(value, str):
        if len(value) > node.get("maxLength", math.inf):
            return f"{path}: longer than {node['maxLength']} characters"
        if len(value) < node.get("minLength", 0):
            return f"{path}: shorter than {node['minLength']} characters"
    if _TYPES["number"](value):
        if value < node.get("minimum", -math.inf):
            return f"{path}: less than {node['minimum']}"
        if value > node.get("maximum", math.inf):
            return f"{path}: more than {node['maximum']}"
    if isinstance(value, list):
        if len(value) > node.get("maxItems", math.inf):
            return f"{path}: more than {node['maxItems']} items"
        if "items" in node:
            for i, item in enumerate(value):
                if problem := validate(item, node["items"], f"{path}[{i}]"):
                    return problem
    if isinstance(value, dict):
        for name in node.get("required", ()):
            if name not in value:
                return f"{path}: missing {name!r}"
        properties = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                sub = properties[name]
            elif extra is False:
                return f"{path}: unexpected key {name!r}"
            elif isinstance(extra, dict):
                sub = extra
            else:
                continue
            if problem := validate(item, sub, f"{path}.{name}"):
                return problem
    if "oneOf" in node:
        problems = [validate(value, sub, path) for sub in node["oneOf"]]
        fits = problems.count(None)
        if fits == 0 and isinstance(value, dict):
            # Name the problem of the shape whose "type" the message claims, if one does.
            for sub, problem in zip(node["oneOf"], problems, strict=True):
                if _resolve(sub).get("properties", {}).get("type") == {"const": value.get("type")}:
                    return problem
        if fits != 1:
            return f"{path}: matches {fits} of the allowed shapes, expected exactly one"
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the definition its local ``$ref`` points to."""
    if "$ref" not in node:
        return node
    target: Any = schema()
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


def parse(raw: str | bytes, allowed: tuple[str, ...] = FROM_EXTENSION) -> dict[str, Any]:
    """Decode and validate one received frame.

    :raises ProtocolError: malformed JSON, a wrong version, a type not in
        ``allowed``, or a message that breaks the schema.
    """
    if isinstance(raw, bytes):
        raise ProtocolError("malformed", "expected a text frame holding JSON, got a binary frame")
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("malformed", f"not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed", f"expected a JSON object, got {_kind(message)}")
    kind = message.get("type")
    ref = kind if isinstance(kind, str) else None
    if message.get("v") != VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {message.get('v')!r} is not supported; this bridge speaks "
                            f"version {VERSION} (update the extension or flowtap)", ref)
    if ref not in message_types() or ref not in allowed:
        raise ProtocolError("unknown_type", f"unknown or unexpected message type {_short(kind)}", ref)
    problem = validate(message, schema()["$defs"][ref], ref)
    if problem:
        raise ProtocolError("invalid", problem, ref)
    return message


def make(kind: str, **fields: Any) -> str:
    """Encode a message of type ``kind`` (fields that are None are left out)."""
    message = {"v": VERSION, "type": kind, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(message, separators=(",", ":"))


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b) or (_TYPES["number"](a) and _TYPES["number"](b) and a == b)


def _kind(value: Any) -> str:
    for name, test in _TYPES.items():
        if name != "integer" and test(value):
            return name
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
