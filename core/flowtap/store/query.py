"""Filter expressions over the store: what SQL can decide, and what Python must.

A search evaluates the same predicate :func:`flowtap.filters.compile_expression`
builds, but pushes what it can into SQL so that 100,000 stored flows are
not each loaded and decoded. Each node of mitmproxy's filter tree becomes
two SQL conditions over the ``flows`` (``f``) and ``contents`` (``c``) columns:

- ``sure``: rows that certainly match (a subset of the matches);
- ``maybe``: rows that may match (a superset).

The query selects ``maybe`` rows; those where ``sure`` also holds are
matches as they are; the others are loaded and checked with the Python
predicate. Regexes run in SQL functions on the very subjects the Python
predicate searches (the same compiled pattern), so results are identical;
when ``sure`` and ``maybe`` coincide for the whole tree, SQL alone decides.
Headers (``~h``) are searched in the stored JSON, without building flows.
Fields with few distinct values (host, method, content types) are tested
once per distinct value, and the matching rows found through the index.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs

from flowtap import serialize
from flowtap.filters import (
    ASSET_TYPES,
    FilterError,
    Predicate,
    as_bytes,
    compile_expression,
    header_block,
    parse_authority,
)

TRUE, FALSE = "TRUE", "FALSE"  # SQL both backends read


@attrs.define
class Plan:
    """How to run one filter expression against the store."""

    sure: str = TRUE
    maybe: str = TRUE
    #: SQL functions the conditions call: name -> (number of arguments, function).
    functions: dict[str, tuple[int, Callable[..., Any]]] = attrs.field(factory=dict)
    #: The full predicate, for rows SQL alone cannot decide (None: no filter).
    predicate: Predicate | None = None
    #: The conditions read ``contents`` (``c``): bodies.
    needs_contents: bool = False

    @property
    def exact(self) -> bool:
        """SQL alone decides every row."""
        return self.sure == self.maybe


def plan(expression: str | None, dialect: Any = None) -> Plan:
    """Compile ``expression`` (None or blank: every flow) into a :class:`Plan`.

    :param dialect: how a backend that cannot call Python from SQL writes regexes
        and looks up distinct values (``backend_postgres.Dialect``); None: SQLite's
        SQL functions.

    :raises FilterError: the expression is invalid.
    """
    if expression is None or not expression.strip():
        return Plan()
    predicate = compile_expression(expression)
    from mitmproxy import flowfilter

    tree = flowfilter.bnf.parse_string(expression, parse_all=True)[0]
    builder = _Builder(flowfilter, dialect)
    sure, maybe = builder.node(tree)
    return Plan(sure, maybe, builder.functions, predicate, builder.contents)


def _and(parts: list[str]) -> str:
    if FALSE in parts:
        return FALSE
    parts = [p for p in parts if p != TRUE]
    return "(" + " AND ".join(parts) + ")" if parts else TRUE


def _or(parts: list[str]) -> str:
    if TRUE in parts:
        return TRUE
    parts = [p for p in parts if p != FALSE]
    return "(" + " OR ".join(parts) + ")" if parts else FALSE


def _not(part: str) -> str:
    return {TRUE: FALSE, FALSE: TRUE}.get(part, f"(NOT {part})")


def _split(values: str) -> list[bytes]:
    return [as_bytes(v) for v in values.split("\n")] if values else []


class _Builder:
    def __init__(self, ff: Any, dialect: Any = None) -> None:
        self.ff = ff
        self.dialect = dialect
        self.functions: dict[str, tuple[int, Callable[..., Any]]] = {}
        self._names = (f"ft_rx{n}" for n in itertools.count())
        self.contents = False

    def function(self, nargs: int, fn: Callable[..., bool], *columns: str) -> str:
        """A call of ``fn`` on each row's ``columns``."""
        name = next(self._names)
        self.functions[name] = (nargs, lambda *args: 1 if fn(*args) else 0)
        return f"{name}({', '.join(columns)})"

    def distinct(self, fn: Callable[..., bool], *columns: str) -> str:
        """``fn`` tested once per distinct value of ``columns`` (NOT NULL ones), then looked up.

        ``LIMIT -1`` keeps SQLite from pushing the test below the DISTINCT
        (where it would run once per row again).
        """
        if self.dialect is not None:
            return self.dialect.lookup(fn, columns)
        aliases = [f"v{i}" for i in range(len(columns))]
        call = self.function(len(columns), fn, *aliases)
        values = ", ".join(f"{c} AS {a}" for c, a in zip(columns, aliases, strict=True))
        return (f"(({', '.join(f'f.{c}' for c in columns)}) IN (SELECT {', '.join(aliases)} FROM "
                f"(SELECT DISTINCT {values} FROM flows LIMIT -1) WHERE {call}))")

    def node(self, node: Any) -> tuple[str, str]:
        ff = self.ff
        if isinstance(node, ff.FAnd):
            parts = [self.node(n) for n in node.lst]
            return _and([s for s, _ in parts]), _and([m for _, m in parts])
        if isinstance(node, ff.FOr):
            parts = [self.node(n) for n in node.lst]
            return _or([s for s, _ in parts]), _or([m for _, m in parts])
        if isinstance(node, ff.FNot):
            sure, maybe = self.node(node.itm)
            return _not(maybe), _not(sure)
        if isinstance(node, ff.FCode):
            exact = self.dialect.status_is(node.num) if self.dialect else f"(f.status IS {int(node.num)})"
            return exact, exact
        code = getattr(node, "code", None)
        leaf = self.leaf(code, getattr(node, "re", None))
        if leaf is not None:
            return leaf, leaf
        if code in ("b", "bq", "bs", "h", "hq", "hs") and self.dialect is not None:
            return FALSE, TRUE  # Python, on the flows the rest of the expression leaves
        if code in ("b", "bq", "bs"):
            return self.body(code, node.re)
        if code in ("h", "hq", "hs"):
            exact = self.headers(code, node.re)
            return exact, exact
        return FALSE, TRUE  # only Python can tell

    def leaf(self, code: str | None, rx: Any) -> str | None:
        """An exact SQL condition for the operator ``code``, or None."""
        constant = {
            "q": "(f.status IS NULL)", "s": "(f.status IS NOT NULL)",
            "e": "(f.error IS NOT NULL AND f.error != '')",
            "websocket": "(f.websocket IS NOT NULL)",
            "http": TRUE, "all": TRUE,
            **dict.fromkeys(("tcp", "udp", "dns", "marked", "replay", "replayq", "replays"), FALSE),
        }  # fmt: skip
        if code in constant:
            return constant[code]
        if code == "m":
            return self.distinct(lambda method: rx.search(as_bytes(method)), "method")
        if code == "d":
            return self.distinct(
                lambda host, header: rx.search(host) or rx.search(parse_authority(header or host)[0]),
                "host", "host_header")
        if code == "u":  # the stored pretty URL is filters.pretty_url(request)
            if self.dialect is not None:
                return self.dialect.regex("coalesce(f.pretty_url, f.url)", rx)
            return self.function(1, rx.search, "coalesce(f.pretty_url, f.url)")
        if code in ("t", "tq", "ts"):
            if code == "tq":
                return self.distinct(lambda q: any(rx.search(ct) for ct in _split(q)), "request_type")
            if code == "ts":
                return self.distinct(lambda s: any(rx.search(ct) for ct in _split(s)), "response_type")
            if self.dialect is not None:  # one column at a time, each through its own index
                return _or([self.distinct(lambda q: any(rx.search(ct) for ct in _split(q)), "request_type"),
                            self.distinct(lambda s: any(rx.search(ct) for ct in _split(s)), "response_type")])
            return self.distinct(lambda q, s: any(rx.search(ct) for ct in _split(q) + _split(s)),
                                 "request_type", "response_type")
        if code == "a":
            return self.distinct(
                lambda s: any(asset.search(ct) for ct in _split(s) for asset in ASSET_TYPES), "response_type")
        return None

    def headers(self, code: str, rx: Any) -> str:
        """``~h``/``~hq``/``~hs``: the regex over the header blocks, read from the stored JSON."""
        parts = [part for part, wanted in (("request", code != "hs"), ("response", code != "hq")) if wanted]

        def search(data: str) -> bool:
            stored = serialize.from_json(data)  # no Flow built, no body read
            return any(rx.search(header_block(stored[part]["headers"])) for part in parts if stored[part])

        self.contents = True
        return self.function(1, search, "c.data")

    def body(self, code: str, rx: Any) -> tuple[str, str]:
        """``~b``/``~bq``/``~bs``: in SQL, unless a body is in a file or WebSocket messages count too."""
        request, response = code != "bs", code != "bq"

        def search(q: bytes | None, s: bytes | None) -> bool:
            return any(rx.search(body) for body, wanted in ((q, request), (s, response))
                       if wanted and body is not None)

        call = self.function(2, search, "c.request_body", "c.response_body")
        self.contents = True
        plain = "(f.files = 0 AND f.websocket IS NULL)"
        return f"({plain} AND {call})", f"(NOT {plain} OR {call})"


__all__ = ["FilterError", "Plan", "plan"]
