"""The specification file: read (YAML or JSON, by extension), widened in place, written atomically.

YAML goes through ruamel.yaml's round-trip mode: a file written by hand
keeps its comments, key order and quoting where flowtap did not change it.

:func:`update` folds what flowtap generated into the document read from
disk, so that what a person wrote survives: keys flowtap never writes stay
(``tags``, ``x-…``, ``externalDocs``...); ``description``, ``summary``,
``operationId``, ``title``, ``version``, ``example`` and the ``openapi``
version are written only
where there are none; parameters are matched by ``in`` and ``name``,
servers by ``url``. In a schema, the keywords flowtap infers
(:data:`~flowtap_openapi.schema.OWNED`) are replaced, the others kept.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

import flowtap
from flowtap.paths import atomic_writer
from flowtap_openapi.schema import OWNED

#: Written only where the document has none: what people write by hand.
KEEP = frozenset({"openapi", "description", "summary", "operationId", "title", "version", "example"})
_SCHEMA_KEYS = ("schema", "items", "additionalProperties")


def is_json(path: Path) -> bool:
    """Whether ``path`` holds JSON (by its extension); YAML otherwise."""
    return path.suffix.lower() == ".json"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    return yaml


def parse(path: Path, text: str) -> dict[str, Any]:
    """The document in ``text`` (read from ``path``); an empty file is an empty document.

    :raises flowtap.SinkError: not YAML/JSON, not a mapping, or not OpenAPI 3.1.
    """
    if not text.strip():
        return {}
    try:
        doc = json.loads(text) if is_json(path) else _yaml().load(text)
    except (ValueError, YAMLError) as exc:
        kind = "JSON" if is_json(path) else "YAML"
        raise flowtap.SinkError(f"{path}: not valid {kind}, so it cannot be merged with this session: "
                                f"{' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise flowtap.SinkError(f"{path}: expected an OpenAPI document (a mapping), found "
                                f"{type(doc).__name__}; move it away or choose another path")
    version = str(doc.get("openapi", ""))
    if doc and not version.startswith("3.1"):
        raise flowtap.SinkError(f"{path}: expected an OpenAPI 3.1 document to merge with (openapi: 3.1.x), "
                                f"found openapi: {version or 'missing'}; convert it or choose another path")
    for key, container in (("info", dict), ("paths", dict), ("components", dict), ("servers", list)):
        if doc.get(key) is not None and not isinstance(doc[key], container):
            expected = "a mapping" if container is dict else "a list"
            raise flowtap.SinkError(f"{path}: {key}: expected {expected}, found {type(doc[key]).__name__}; "
                                    "fix it to merge this session into it")
    return doc


def dump(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` all at once (a reader sees the old file or the new one)."""
    if is_json(path):
        data = json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
    else:
        stream = io.StringIO()
        _yaml().dump(doc, stream)
        data = stream.getvalue().encode()
    with atomic_writer(path, mode=0o644) as out:
        out.write(data)


def update(target: dict[str, Any], generated: dict[str, Any], schema: bool = False) -> None:
    """Fold ``generated`` into ``target`` in place, keeping what a person wrote (see the module)."""
    if schema:
        for key in [key for key in target if key in OWNED and key not in generated]:
            del target[key]
    for key, value in generated.items():
        old = target.get(key)
        if key in KEEP and not schema and key in target:
            continue
        if key == "properties" and schema and isinstance(old, dict):
            for name, sub in value.items():
                _set(old, name, sub, schema=True)
        elif key in ("parameters", "servers") and isinstance(old, list):
            _update_list(old, value, ("in", "name") if key == "parameters" else ("url",))
        else:
            _set(target, key, value, schema=(key in _SCHEMA_KEYS) or (schema and key in ("items",)))


def _set(target: dict[str, Any], key: str, value: Any, schema: bool) -> None:
    old = target.get(key)
    if isinstance(old, dict) and isinstance(value, dict):
        update(old, value, schema)
    elif old != value:
        target[key] = value


def _update_list(old: list[Any], new: list[Any], keys: tuple[str, ...]) -> None:
    """Match items of ``new`` to items of ``old`` by ``keys``: update those, append the rest."""
    index = {tuple(item.get(k) for k in keys): item for item in old if isinstance(item, dict)}
    for item in new:
        match = index.get(tuple(item.get(k) for k in keys))
        if match is None:
            old.append(item)
        else:
            update(match, item)
