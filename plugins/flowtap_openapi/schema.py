"""JSON Schemas summarised from samples, one value at a time, in memory bounded by the schema.

A :class:`Shape` takes JSON values (:meth:`Shape.add`) and keeps what a
schema needs, never the values: the types seen (``null`` among them), for
objects how often each property was present (``required`` lists those
present in every object), for arrays the shape of their items, for strings
the formats every string matched (``date-time``, ``date``, ``uuid``,
``email``, ``uri``, ``ipv4``) and up to :data:`MAX_ENUM` distinct values
(written as ``enum`` once each was seen :data:`ENUM_REPEATS` times on
average). An object with more than :data:`MAX_PROPERTIES` keys is a map:
its values share one ``additionalProperties`` shape.

:meth:`Shape.from_schema` reads back a schema written before (by flowtap
or by hand), so that a new session widens it: its ``required`` stays
required only while every new object has it, its ``format`` and ``enum``
hold only while new strings match them.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

MAX_ENUM = 8
ENUM_REPEATS = 2
MAX_PROPERTIES = 100
#: Values nested deeper than this are described by their type alone.
MAX_DEPTH = 32
#: The keywords a Shape writes; any other keyword of a schema is the user's.
OWNED = frozenset({"type", "format", "enum", "required", "properties", "items", "additionalProperties"})

_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("date-time", re.compile(r"^\d{4}-\d\d-\d\d[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?"
                             r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$")),
    ("date", re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")),
    ("uuid", re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)),
    ("email", re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")),
    ("uri", re.compile(r"^[a-z][a-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=:@-]+(/[A-Za-z0-9._~%!$&'()*+,;=:@/?#-]*)?$",
                       re.I)),
    ("ipv4", re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")),
)
_ALL_FORMATS = frozenset(name for name, _ in _FORMATS)
_PATTERNS = dict(_FORMATS)


def formats_of(text: str, candidates: Iterable[str] = _ALL_FORMATS) -> set[str]:
    """The formats among ``candidates`` that ``text`` is valid in."""
    found = set()
    for name in candidates:
        # _CHECKS: what a pattern cannot tell (February 30th, 999.1.1.1)
        if _PATTERNS[name].match(text) and (name not in _CHECKS or _CHECKS[name](text)):
            found.add(name)
    return found


def _valid(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def valid(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return False
        return True
    return valid


_CHECKS = {"date": _valid(datetime.date.fromisoformat),
           "date-time": _valid(lambda text: datetime.date.fromisoformat(text[:10])),
           "ipv4": _valid(ipaddress.IPv4Address)}


#: The JSON type of each Python type json.loads makes.
_TYPES: dict[type, str] = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
                           bool: "boolean", type(None): "null"}
_SCALARS = {kind: name for kind, name in _TYPES.items() if name in ("integer", "number", "boolean", "null")}


class Shape:
    """What the JSON values seen at one place of a document have in common."""

    __slots__ = ("additional", "formats", "items", "objects", "present", "properties", "strings", "types",
                 "values")

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.objects = 0  # objects seen
        self.properties: dict[str, Shape] = {}
        self.present: dict[str, int] = {}  # objects each property was in
        self.additional: Shape | None = None  # a map's values (when it has too many keys)
        self.items: Shape | None = None
        self.formats: set[str] | None = None  # None: no string yet
        self.values: set[str] | None = set()  # None: too many to be an enum
        self.strings = 0

    # -- learning -------------------------------------------------------------------------------------

    def add(self, value: Any, depth: int = 0) -> None:
        """Learn from one more value (``depth``: how deep it lies; below :data:`MAX_DEPTH`, types only)."""
        kind = _TYPES.get(type(value), "object")
        self.types.add(kind)
        if kind == "string":
            self._add_string(value)
        elif depth >= MAX_DEPTH:
            return
        elif kind == "object":
            self._add_object(value, depth + 1)
        elif kind == "array":
            items = self.items
            if items is None:
                items = self.items = Shape()
            for item in value:
                items.add(item, depth + 1)

    def _add_string(self, text: str) -> None:
        self.strings += 1
        if self.formats is None:
            self.formats = formats_of(text)
        elif self.formats:
            self.formats = formats_of(text, self.formats)
        if self.values is not None and text not in self.values:
            self.values.add(text)
            if len(self.values) > MAX_ENUM or len(text) > 40:
                self.values = None

    def _add_object(self, value: dict[str, Any], depth: int) -> None:
        self.objects += 1
        if self.additional is not None:
            for item in value.values():
                self.additional.add(item, depth)
            return
        properties, present = self.properties, self.present
        crowded = len(properties) + len(value) > MAX_PROPERTIES
        if crowded and len(properties.keys() | value.keys()) > MAX_PROPERTIES:
            self._to_map(value, depth)  # a map, keyed by values: its values share one shape
            return
        for key, item in value.items():
            shape = properties.get(key)
            if shape is None:
                shape = properties[key] = Shape()
                present[key] = 0
            present[key] += 1
            # The hot path: a number, true, false or null (its type is all there is to learn), or a string.
            scalar = _SCALARS.get(type(item))
            if scalar is not None:
                shape.types.add(scalar)
            elif type(item) is str:
                shape.types.add("string")
                shape._add_string(item)
            else:
                shape.add(item, depth)

    def _to_map(self, value: dict[str, Any], depth: int) -> None:
        """Turn the object shape into a map's (when it has too many keys), ``value`` learnt."""
        additional = self.additional = Shape()
        for known in self.properties.values():
            additional.merge(known)
        self.properties.clear()
        self.present.clear()
        for item in value.values():
            additional.add(item, depth)

    def merge(self, other: Shape) -> Shape:
        """Learn everything ``other`` learnt (two endpoints became one); returns self."""
        self.types |= other.types
        if other.formats is not None:
            self.formats = set(other.formats) if self.formats is None else self.formats & other.formats
        if self.values is not None and other.values is not None:
            self.values |= other.values
            if len(self.values) > MAX_ENUM:
                self.values = None
        else:
            self.values = None
        self.strings += other.strings
        for key, shape in other.properties.items():
            if key in self.properties:
                self.properties[key].merge(shape)
                self.present[key] += other.present[key]
            else:
                self.properties[key] = shape
                self.present[key] = other.present[key]
        self.objects += other.objects
        if other.additional is not None:
            self.additional = (self.additional or Shape()).merge(other.additional)
        if other.items is not None:
            self.items = other.items if self.items is None else self.items.merge(other.items)
        return self

    # -- as a schema -----------------------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """A JSON Schema (draft 2020-12, as OpenAPI 3.1 has it) every value seen is valid in."""
        types = set(self.types)
        if {"integer", "number"} <= types:
            types.discard("integer")
        out: dict[str, Any] = {}
        if types:
            ordered = [t for t in ("object", "array", "string", "integer", "number", "boolean", "null")
                       if t in types]
            out["type"] = ordered[0] if len(ordered) == 1 else ordered
        if "string" in types:
            if self.formats:
                out["format"] = sorted(self.formats, key=[name for name, _ in _FORMATS].index)[0]
            elif self.values and len(self.values) > 1 and self.strings >= ENUM_REPEATS * len(self.values):
                out["enum"] = sorted(self.values) + ([None] if "null" in types else [])
        if "object" in types:
            if self.properties:
                out["properties"] = {key: shape.schema() for key, shape in self.properties.items()}
                required = [key for key, count in self.present.items() if count >= self.objects]
                if required:
                    out["required"] = required
            if self.additional is not None:
                out["additionalProperties"] = self.additional.schema()
        if "array" in types and self.items is not None and self.items.types:
            out["items"] = self.items.schema()
        return out

    @classmethod
    def from_schema(cls, schema: Any) -> Shape:
        """The shape a schema written before stands for (one object, whose properties are as required)."""
        shape = cls()
        if not isinstance(schema, dict):
            return shape
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        shape.types = {str(t) for t in kinds}
        if "string" in shape.types:
            fmt = schema.get("format")
            shape.formats = {fmt} if fmt in _ALL_FORMATS else set()
            enum = schema.get("enum")
            shape.values = {v for v in enum if isinstance(v, str)} if isinstance(enum, list) else None
            shape.strings = 10**6 if enum else 0
        properties = schema.get("properties")
        if "object" in shape.types or isinstance(properties, dict):
            shape.types.add("object")
            shape.objects = 1
            required = schema["required"] if isinstance(schema.get("required"), list) else []
            for key, sub in (properties or {}).items():
                shape.properties[str(key)] = cls.from_schema(sub)
                shape.present[str(key)] = 1 if key in required else 0
            if isinstance(schema.get("additionalProperties"), dict):
                shape.additional = cls.from_schema(schema["additionalProperties"])
        if isinstance(schema.get("items"), dict):
            shape.items = cls.from_schema(schema["items"])
        return shape


def parameter_schema(shape: Shape) -> dict[str, Any]:
    """The schema of a path, query or header parameter: one type, as its text is read."""
    types = shape.types - {"null"}
    if types == {"integer"}:
        return {"type": "integer"}
    if types and types <= {"integer", "number"}:
        return {"type": "number"}
    out = shape.schema() if types == {"string"} else {}
    out["type"] = "string"
    return {key: value for key, value in out.items() if key in ("type", "format", "enum")}


def scalar(text: str) -> int | str:
    """A parameter's text as the value it stands for: an integer when it is one, else the text."""
    if text.isdigit() and len(text) < 16 and (text == "0" or not text.startswith("0")):
        return int(text)
    return text
