"""Endpoints: a URL path with its identifiers templated (``/users/42`` → ``/users/:userId``).

One implementation for every output that groups requests by endpoint (the
collection's folders and path variables, the OpenAPI description's paths).
A path segment is an identifier when it is a number, a UUID, a date
(``2024-05-01``), a hash (16 or more hex digits) or a token mixing letters
and at least three digits (``ord_8f2k3j9q``); it is named after the segment
before it:

- a plural collection name gives its singular and ``Id``: ``/users/42`` →
  ``:userId``, ``/categories/7`` → ``:categoryId``, ``/addresses/3`` →
  ``:addressId``, ``/boxes/2`` → ``:boxId``;
- any other word is the name itself: ``/status/404`` → ``:status``,
  ``/page/2`` → ``:page``, ``/v/1`` → ``:v``;
- with no word before it (first segment, another identifier, ``v2``): ``id``.

Names are unique within a path (``id``, ``id2``...).

:func:`template` looks at one path. :class:`EndpointTree` learns from many,
one at a time, in memory bounded by the API rather than by the traffic: it
also turns a position holding words into a parameter once :data:`MANY`
distinct words there are followed by the same segment (``/repos/alice/
settings``, ``/repos/bob/settings``... → ``/repos/{repo}/settings``), or
once it holds :data:`MOST` words whatever follows. From then on a new word
there is a value of that parameter, and so is an earlier word followed by
a segment that follows the parameter. A word followed by identifiers names
a collection and stays literal (``/v1/users/{userId}``,
``/v1/orders/{orderId}``... are never ``/v1/{v1}/...``), and so does a word
beside a parameter of identifiers (``/users/me`` beside
``/users/{userId}``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

_NUMBER = re.compile(r"^[0-9]+$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_DATE = re.compile(r"^[0-9]{4}-[01][0-9]-[0-3][0-9]$")
_HEX = re.compile(r"^(?=[a-f]*[0-9])(?=[0-9]*[a-f])[0-9a-f]{16,}$", re.I)
_TOKEN = re.compile(r"^(?=(?:[^0-9]*[0-9]){3})(?=.*[A-Za-z])[A-Za-z0-9_~-]{8,}$")
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


@functools.lru_cache(maxsize=4096)  # the same words, over and over
def kind(segment: str) -> str | None:
    """What identifier a path segment is: "integer", "uuid", "date", "hex" or "token"; None for a word."""
    for name, pattern in (("integer", _NUMBER), ("uuid", _UUID), ("date", _DATE), ("hex", _HEX),
                          ("token", _TOKEN)):
        if pattern.match(segment):
            return name
    return None


def is_identifier(segment: str) -> bool:
    """Whether a path segment is a value (see :func:`kind`), not part of the endpoint."""
    return kind(segment) is not None


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


def word_parameter_name(before: str) -> str:
    """The name of a parameter of words that follows ``before``: ``repos`` → ``repo``, else ``name``."""
    stem = camel(before, "") if _WORD.match(before) else ""
    if not stem:
        return "name"
    words = _WORDS.findall(stem)
    single = singular(words[-1].lower())
    if single is None:
        return stem
    return stem[: len(stem) - len(words[-1])] + (single if len(words) == 1 else single.capitalize())


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


#: A position becomes a parameter once this many distinct words there share what follows them.
MANY = 8
#: ... and once it holds this many words, whatever follows them.
MOST = 64


class Node:
    """One position of a path: its literal children, its parameter child, what ends here.

    A parameter node has a ``name`` and the ``kinds`` of values seen there
    (:func:`kind`'s names, and "word"); ``payload`` is the caller's (for
    example the operations of the endpoint that ends at this node), and
    ``fixed`` marks a node written by hand (never folded into a parameter).
    """

    __slots__ = ("fixed", "kinds", "literals", "name", "param", "parent", "payload")

    def __init__(self, parent: Node | None = None, name: str = "") -> None:
        self.parent = parent
        self.name = name  # the literal segment, or the parameter's name
        self.literals: dict[str, Node] = {}
        self.param: Node | None = None
        self.kinds: set[str] = set()
        self.payload: Any = None
        self.fixed = False

    @property
    def is_param(self) -> bool:
        return self.parent is not None and self.parent.param is self

    def segments(self) -> list[str]:
        """The path's segments from the root, parameters as ``{name}``."""
        out: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            out.append("{" + node.name + "}" if node.is_param else node.name)
            node = node.parent
        return out[::-1]

    def path(self) -> str:
        """The templated path: ``/users/{userId}``."""
        return "/" + "/".join(self.segments())

    def walk(self) -> Iterator[Node]:
        """This node and every node below it."""
        yield self
        for child in list(self.literals.values()):
            yield from child.walk()
        if self.param is not None:
            yield from self.param.walk()


class EndpointTree:
    """Paths learnt one at a time; each ends at a :class:`Node` that stands for its endpoint.

    ``merge(a, b)`` folds payload ``b`` into ``a`` (and returns the result)
    when two endpoints become one because a position became a parameter.
    """

    def __init__(self, merge: Callable[[Any, Any], Any]) -> None:
        self.root = Node()
        self.merge = merge

    def add(self, path: str) -> tuple[Node, list[tuple[str, str]]]:
        """The endpoint of ``path`` (``/users/42``), and each ``(parameter, captured value)``."""
        node, values, created = self.root, [], False
        names: set[str] = set()
        trimmed = path.split("?", 1)[0].strip("/")
        segments = (trimmed.split("/") if "%" not in trimmed else [unquote(s) for s in trimmed.split("/")]
                    ) if trimmed else []
        for i, segment in enumerate(segments):
            what = kind(segment)
            child = node.literals.get(segment) if what is None else None
            if child is None and node.param is not None and (what is not None or "word" in node.param.kinds):
                child = node.param
            if child is None and what is not None:
                before = segments[i - 1] if i and not node.is_param else ""
                child = node.param = Node(node, _unique(parameter_name(before), names))
            if child is None:
                child = node.literals[segment] = Node(node, segment)
                created = True
            if child is node.param:
                child.kinds.add(what or "word")
                names.add(child.name)
                values.append((child.name, segment))
            node = child
        if created:
            node = self._fold(node)
            values = _values(node, segments)
        return node, values

    def add_template(self, path: str) -> Node:
        """The endpoint of a templated path (``/users/{id}``) written by hand: kept as written."""
        node = self.root
        for segment in path.strip("/").split("/") if path.strip("/") else []:
            if segment.startswith("{") and segment.endswith("}"):
                if node.param is None:
                    node.param = Node(node, segment[1:-1])
                node = node.param
            else:
                node = node.literals.setdefault(segment, Node(node, segment))
            node.fixed = True
        return node

    def endpoints(self) -> Iterator[Node]:
        """Every node where a path ends (those with a payload), in path order."""
        for node in sorted(self.root.walk(), key=Node.segments):
            if node.payload is not None:
                yield node

    # -- folding words into a parameter ---------------------------------------------------------------

    def _fold(self, leaf: Node) -> Node:
        """Fold the positions above ``leaf`` that now hold many words; return where ``leaf`` went."""
        node: Node | None = leaf
        while node is not None and node.parent is not None:
            parent = node.parent
            group = _crowd(parent)
            if group:
                target = parent.param
                if target is None:
                    before = "" if parent.is_param or parent.parent is None else parent.name
                    names = {n.name for n in _ancestors(parent) if n.is_param}
                    target = parent.param = Node(parent, _unique(word_parameter_name(before), names))
                target.kinds.add("word")
                moved = node.name in group and not node.is_param
                for name in group:
                    self._merge_into(target, parent.literals.pop(name))
                if moved:
                    return self._fold(_follow(target, leaf, node))
            node = parent
        return leaf

    def _merge_into(self, target: Node, source: Node) -> None:
        """Fold the subtree ``source`` into ``target``."""
        if source.payload is not None:
            target.payload = source.payload if target.payload is None else self.merge(target.payload,
                                                                                      source.payload)
        target.kinds |= source.kinds
        for name, child in source.literals.items():
            if name in target.literals:
                self._merge_into(target.literals[name], child)
            else:
                target.literals[name] = child
                child.parent = target
        if source.param is not None:
            if target.param is None:
                target.param = source.param
                source.param.parent = target
            else:
                self._merge_into(target.param, source.param)


def _unique(name: str, used: set[str]) -> str:
    base, number = name, 2
    while name in used:
        name, number = f"{base}{number}", number + 1
    return name


def _ancestors(node: Node) -> Iterator[Node]:
    current: Node | None = node
    while current is not None:
        yield current
        current = current.parent


def _crowd(parent: Node) -> list[str]:
    """The names of ``parent``'s literal children to fold into a parameter (none: an empty list).

    A word followed by identifiers (``users`` in ``/v1/users/{userId}``) names a collection:
    it is never a value, however many such collections sit side by side.
    """
    words = [name for name, child in parent.literals.items() if not child.fixed and not _collection(child)]
    if parent.param is not None and "word" in parent.param.kinds:  # words were folded here before
        shared = set(parent.param.literals)
        joining = [name for name in words if shared & parent.literals[name].literals.keys()]
        if joining:
            return joining
    if len(words) >= MOST:
        return words
    groups: dict[str, list[str]] = {}
    for name in words:
        for key in parent.literals[name].literals:
            groups.setdefault(key, []).append(name)
    best = max(groups.values(), key=len, default=[])
    return best if len(best) >= MANY else []


def _collection(node: Node) -> bool:
    """Whether identifiers follow ``node`` (a parameter that took no words)."""
    return node.param is not None and "word" not in node.param.kinds


def _follow(target: Node, leaf: Node, moved: Node) -> Node:
    """Where ``leaf``, below ``moved``, lies now that ``moved`` was folded into ``target``."""
    below = []
    node = leaf
    while node is not moved:
        below.append(node)
        assert node.parent is not None
        node = node.parent
    here = target
    for step in reversed(below):
        nxt = here.param if step.is_param or step.name not in here.literals else here.literals[step.name]
        assert nxt is not None
        here = nxt
    return here


def _values(node: Node, segments: list[str]) -> list[tuple[str, str]]:
    """Each parameter on the way to ``node`` with the segment of ``segments`` it stands for."""
    chain = [n for n in _ancestors(node) if n.parent is not None][::-1]
    return [(n.name, segment) for n, segment in zip(chain, segments, strict=False) if n.is_param]
