"""Endpoints: a URL path with its identifiers templated (``/users/42`` → ``/users/:userId``).

One implementation for every output that groups requests by endpoint (the
collection's folders and path variables; an OpenAPI description would use
the same names). A path segment is an identifier when it is a number or a
UUID; it is named after the segment before it:

- a plural collection name gives its singular and ``Id``: ``/users/42`` →
  ``:userId``, ``/categories/7`` → ``:categoryId``, ``/addresses/3`` →
  ``:addressId``, ``/boxes/2`` → ``:boxId``;
- any other word is the name itself: ``/status/404`` → ``:status``,
  ``/page/2`` → ``:page``, ``/v/1`` → ``:v``;
- with no word before it (first segment, another identifier, ``v2``): ``id``.

Names are unique within a path (``id``, ``id2``...).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_NUMBER = re.compile(r"^[0-9]+$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_WORD = re.compile(r"^[A-Za-z][A-Za-z_-]*$")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
#: Words that end in "s" without being plurals (or whose plural is themselves).
_NOT_PLURAL = {"status", "news", "series", "species", "analysis", "axis", "basis", "campus", "bus", "alias",
               "canvas", "gas", "plus", "bonus", "virus", "corpus", "census", "process", "access", "address",
               "class", "business", "progress", "success", "express", "settings", "stats", "metrics",
               "details", "ids"}
#: Plural endings, longest first, and what the singular ends with instead.
_PLURALS = (("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("zzes", "zz"), ("ies", "y"),
            ("uses", "us"), ("s", ""))


def camel(name: str, default: str = "value") -> str:
    """``X-API-Key`` → ``xApiKey``: a variable name tools show well."""
    words = [w.lower() for w in _WORDS.findall(unquote(name))]
    if not words:
        return default
    return words[0] + "".join(w.capitalize() for w in words[1:])


def is_identifier(segment: str) -> bool:
    """Whether a path segment is a number or a UUID (a value, not part of the endpoint)."""
    return bool(_NUMBER.match(segment) or _UUID.match(segment))


def singular(word: str) -> str | None:
    """The singular of a lower-case plural collection name, or None when ``word`` is not one."""
    if word in _NOT_PLURAL or not word.endswith("s") or word.endswith(("ss", "is", "us")):
        return None
    if word.endswith("uses") and len(word) <= 6:  # uses, causes, houses: a plain "s"
        return word[:-1]
    for plural, single in _PLURALS:
        if word.endswith(plural) and len(word) > len(plural) + 1:
            return word[: -len(plural)] + single
    return None


def parameter_name(before: str) -> str:
    """The name of an identifier that follows the segment ``before`` ("" when there is none)."""
    if not _WORD.match(before):
        return "id"
    stem = camel(before, "")
    if not stem:
        return "id"
    words = _WORDS.findall(stem)
    last = words[-1].lower()
    single = singular(last)
    if single is None:
        return stem
    return stem[: len(stem) - len(last)] + (single if len(words) == 1 else single.capitalize()) + "Id"


def template(segments: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``segments`` with identifiers replaced by ``:name``, and each ``(name, captured value)``."""
    out: list[str] = []
    variables: list[tuple[str, str]] = []
    used: set[str] = set()
    for i, segment in enumerate(segments):
        if not is_identifier(segment):
            out.append(segment)
            continue
        before = segments[i - 1] if i and not is_identifier(segments[i - 1]) else ""
        base = name = parameter_name(before)
        number = 2
        while name in used:
            name, number = f"{base}{number}", number + 1
        used.add(name)
        out.append(":" + name)
        variables.append((name, segment))
    return out, variables
