"""Flow filters: mitmproxy's filter expressions and Postman's simple session filters.

:func:`compile_expression` parses with mitmproxy's grammar (``~d example.com & !~c 200``)
but evaluates on flowtap flows with plain closures: mitmproxy is used only while compiling.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flowtap.model import Flow, Request, _Message

Predicate = Callable[[Flow], bool]
__all__ = [
    "ASSET_TYPES", "FilterError", "as_bytes", "compile_expression", "parse_authority", "pretty_url", "quote",
    "simple_expression", "simple_filter",
]


class FilterError(ValueError):
    """An invalid filter expression or pattern, with the column the error is at."""

    def __init__(self, expression: str, detail: str, position: int | None = None) -> None:
        self.expression = expression
        self.position = position
        # pyparsing messages can hold raw whitespace ("Expected !W:(()~'\" \n\t\r)").
        self.detail = detail = detail.translate({9: "\\t", 10: "\\n", 13: "\\r"})
        message = f"invalid filter expression {expression!r}: "
        if position is None:
            message += detail
        else:
            shown = expression.translate({9: " ", 10: " ", 13: " "})
            message += f"error at column {position + 1}: {detail}\n  {shown}\n  {' ' * position}^"
        super().__init__(message)


_DEFAULT_PORTS = {"http": 80, "https": 443}
_AUTHORITY = re.compile(r"^(?P<host>[^:]+|\[.+\])(?::(?P<port>\d+))?$")


def as_bytes(text: str) -> bytes:
    """mitmproxy keeps header names/values and the method as UTF-8 (surrogateescape) bytes."""
    return text.encode("utf-8", "surrogateescape")


def header_block(fields: Iterable[tuple[str, str]]) -> bytes:
    """What ``~h`` searches, as ``bytes(mitmproxy.http.Headers)``: ``Name: value\\r\\n`` per field, names
    as sent."""
    return b"".join(as_bytes(f"{name}: {value}\r\n") for name, value in fields)


def _content_types(message: _Message | None) -> list[bytes]:
    fields = ((as_bytes(k), as_bytes(v)) for k, v in (message.headers.fields if message else ()))
    return [value for name, value in fields if name.lower() == b"content-type"]


def parse_authority(value: str) -> tuple[str, int | None]:
    """Host and port from a Host header (mitmproxy's ``parse_authority(check=False)``)."""
    m = _AUTHORITY.match(value)
    if not m:
        return value, None
    host = m["host"][1:-1] if m["host"].startswith("[") else m["host"]
    return host, int(m["port"]) if m["port"] else None


def pretty_url(request: Request) -> str:
    """mitmproxy's ``Request.pretty_url``: the URL, with the Host header's authority if any."""
    parts, host_header = urlsplit(request.url), request.headers.get("host")
    if host_header:
        host, port = parse_authority(host_header)
        port = port or _DEFAULT_PORTS.get(parts.scheme) or 443
    else:
        # Port via parse_authority: ``parts.port`` raises on a malformed port.
        host, port = parts.hostname or "", parse_authority(parts.netloc.rpartition("@")[2])[1]
        port = port or (443 if parts.scheme == "https" else 80)
    authority = host if _DEFAULT_PORTS.get(parts.scheme) == port else f"{host}:{port}"
    path = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    return f"{parts.scheme}://{authority}{'' if path.startswith('/') else '/'}{path}"


def _messages(f: Flow, request: bool, response: bool) -> list[_Message]:
    return [m for m, wanted in ((f.request, request), (f.response, response)) if wanted and m]


def _searching(what: str, request: bool, response: bool) -> Callable[[re.Pattern], Predicate]:
    """``~h``/``~t``/``~b`` and their q/s forms, over request and/or response."""

    def subjects(f: Flow) -> list[bytes]:
        messages = _messages(f, request, response)
        if what == "h":
            return [header_block(m.headers.fields) for m in messages]
        if what == "t":
            return [ct for m in messages for ct in _content_types(m)]
        ws = [m.content for m in f.websocket or () if (request if m.from_client else response)]
        return [m.body for m in messages] + ws

    return lambda rx: lambda f: any(rx.search(subject) for subject in subjects(f))


def _search_address(attr: str) -> Callable[[re.Pattern], Predicate]:
    """``~src``/``~dst``: the regex against ``"ip:port"``; no address, no match."""
    return lambda rx: lambda f: bool(
        (address := getattr(f, attr)) and rx.search(f"{address[0]}:{address[1]}")
    )


ASSET_TYPES = [
    re.compile(p)
    for p in (b"text/javascript", b"application/x-javascript", b"application/javascript",
              b"text/css", b"image/.*", b"font/.*", b"application/font.*")
]  # fmt: skip

#: ``~code`` -> predicate, for operators without an argument. flowtap flows are
#: all HTTP and never marked or replayed.
_UNARY: dict[str, Predicate] = {
    "q": lambda f: f.response is None,
    "s": lambda f: f.response is not None,
    "e": lambda f: bool(f.error),
    "a": lambda f: any(rx.search(ct) for ct in _content_types(f.response) for rx in ASSET_TYPES),
    "websocket": lambda f: f.websocket is not None,
    **dict.fromkeys(("http", "all"), lambda f: True),
    **dict.fromkeys(("tcp", "udp", "dns", "marked", "replay", "replayq", "replays"),
                    lambda f: False),
}  # fmt: skip

#: ``~code`` -> (compiled regex -> predicate), for operators taking a regex.
_REGEX: dict[str, Callable[[re.Pattern], Predicate]] = {
    **{what + side: _searching(what, side != "s", side != "q")
       for what in "htb" for side in ("", "q", "s")},
    "d": lambda rx: lambda f: bool(  # mitmproxy tries both host and pretty_host
        rx.search(f.request.host)
        or rx.search(parse_authority(f.request.headers.get("host") or f.request.host)[0])
    ),
    "m": lambda rx: lambda f: bool(rx.search(as_bytes(f.request.method))),
    "u": lambda rx: lambda f: bool(rx.search(pretty_url(f.request))),
    "src": _search_address("client_address"),
    "dst": _search_address("server_address"),
    "meta": lambda rx: lambda f: bool(
        rx.search("\n".join(f"{k}: {v}" for k, v in f.metadata.items()))
    ),
    # No marks in flowtap: an unmarked mitmproxy flow has ``marked == ""``.
    "marker": lambda rx: lambda f: bool(rx.search("")),
    "comment": lambda rx: lambda f: bool(rx.search(str(f.metadata.get("comment", "")))),
}  # fmt: skip


def _compile_node(node: object, ff) -> Predicate:
    """Turn one node of mitmproxy's filter AST into a closure over flowtap flows."""
    if isinstance(node, (ff.FAnd, ff.FOr)):
        parts = [_compile_node(n, ff) for n in node.lst]
        combine = all if isinstance(node, ff.FAnd) else any
        return lambda f: combine(p(f) for p in parts)
    if isinstance(node, ff.FNot):
        inner = _compile_node(node.itm, ff)
        return lambda f: not inner(f)
    if isinstance(node, ff.FCode):
        num = node.num
        return lambda f: f.response is not None and f.response.status_code == num
    code = getattr(node, "code", type(node).__name__)
    if isinstance(node, ff._Rex) and code in _REGEX:
        return _REGEX[code](node.re)
    if isinstance(node, ff._Action) and code in _UNARY:
        return _UNARY[code]
    raise NotImplementedError(f"operator ~{code} is not supported")


# pyparsing's QuotedString(q, esc_char="\\"), as mitmproxy's grammar uses it
_QUOTED = {q: re.compile(rf"{q}(?:[^{q}\\]|\\.)*{q}") for q in "\"'"}
_CODE = re.compile(r"\w*")
_DIGIT = re.compile("[0-9]")
#: A value to show in "e.g. ~d api.example.com" for the operators that take one.
_EXAMPLES = {"d": "api.example.com", "m": "POST", "u": "/users", "c": "404", "t": "json", "tq": "json",
             "ts": "json", "h": "Authorization", "hq": "Authorization", "hs": "Set-Cookie",
             "b": "token", "bq": "token", "bs": "token", "src": "127.0.0.1", "dst": "127.0.0.1"}
#: What is said when no common mistake explains why the grammar refused an expression: never
#: pyparsing's own words ("Expected Suppress:('|') term"), which name its internals.
_EXPECTED = ("expected a filter here, e.g. ~d api.example.com, ~m POST, !~t image, "
             "joined with & (and), | (or), grouped with ( )")


def _first_mistake(expression: str, flowfilter: Any) -> tuple[int, str] | None:
    """The first mistake in an expression mitmproxy's grammar refused, by that grammar's rules:
    its column and what is wrong, in the filter language's own words; None if it is none of the
    common ones.

    pyparsing's own error column depends on its version: from 3.3 on, a bad operand is reported
    at its start, with every alternative of the grammar as the message.
    """
    import difflib

    kinds = {cls.code: ("flag", cls.help) for cls in flowfilter.filter_unary}
    kinds.update({cls.code: ("value", cls.help) for cls in flowfilter.filter_rex})
    kinds.update({cls.code: ("number", cls.help) for cls in flowfilter.filter_int})
    opened: list[int] = []
    i = 0
    while i < len(expression):
        char = expression[i]
        if char in "\"'":
            quoted = _QUOTED[char].match(expression, i)
            if quoted is None:
                return i, f"unterminated quoted string: its {char} is never closed"
            i = quoted.end()
            continue
        if char == "(":
            opened.append(i)
        elif char == ")":
            if not opened:
                return i, "')' without its '('"
            opened.pop()
        elif char == "~":
            word = _CODE.match(expression, i + 1)
            assert word is not None  # \w* matches, if only the empty string
            code, end = word.group(), word.end()
            if not code:
                return i, "~ must be followed by an operator, e.g. ~d api.example.com"
            if code not in kinds:
                close = difflib.get_close_matches(code, list(kinds), n=1, cutoff=0.5)
                if close:
                    return i, f"unknown operator ~{code}; did you mean ~{close[0]}?"
                return i, f"unknown operator ~{code} (operators: {' '.join('~' + c for c in sorted(kinds))})"
            if end < len(expression) and not expression[end].isspace():
                return end, f"~{code} must be followed by a space"
            kind, what = kinds[code]
            if what[1:2].islower():  # "Domain" -> "domain"; "HTTP response code" stays
                what = what[0].lower() + what[1:]
            example = f"e.g. ~{code} {_EXAMPLES.get(code, 'text')}"
            value = len(expression) - len(expression[end:].lstrip())
            if kind == "number" and not _DIGIT.match(expression, value):
                got = expression[value:].split(maxsplit=1)[0] if expression[value:].strip() else ""
                got = f"; got {got!r}" if got else ""
                return value, f"~{code} expects a number ({what}), {example}{got}"
            if kind == "value" and (value == len(expression) or expression[value] in "()~"):
                return value, f"~{code} expects a value ({what}): a word or a quoted string, {example}"
            i = end
            continue
        i += 1
    if opened:
        return opened[-1], "'(' without its ')'"
    return None


def compile_expression(expression: str) -> Predicate:
    """Compile a mitmproxy filter expression into a predicate over flowtap flows.

    Parsing uses ``mitmproxy.flowfilter``'s grammar; the result matches exactly the
    flows mitmproxy's filter would match. Raises :class:`FilterError` if invalid.
    """
    if not expression or not expression.strip():
        raise FilterError(expression, "empty filter expression")
    import pyparsing
    from mitmproxy import flowfilter

    try:
        tree = flowfilter.bnf.parse_string(expression, parse_all=True)[0]
    except pyparsing.ParseBaseException as e:
        column, detail = _first_mistake(expression, flowfilter) or (e.loc, _EXPECTED)
        raise FilterError(expression, detail, column) from None
    except ValueError as e:  # a regex that does not compile (or encode)
        cause = e.__context__
        if not isinstance(cause, re.error) or cause.pattern is None:
            raise FilterError(expression, str(e)) from e
        pattern = cause.pattern
        if isinstance(pattern, bytes):
            pattern = pattern.decode("utf-8", "surrogateescape")
        start = expression.find(pattern)  # best effort: the regex text's column
        position = start + (cause.pos or 0) if start >= 0 else None
        raise FilterError(expression, f"bad regex {pattern!r}: {cause.msg}", position) from e
    try:
        return _compile_node(tree, flowfilter)
    except NotImplementedError as e:  # an operator newer than this module
        raise FilterError(expression, str(e)) from e


# --- Postman's simple session filters -----------------------------------------

_RESOURCE_EXTENSIONS = ("png", "jpg", "jpeg", "gif", "webp", "svg", "ico", "bmp", "avif", "css", "js", "mjs",
                        "map")  # fmt: skip
def quote(text: str) -> str:
    """``text`` as one quoted argument of a filter expression (``~u``, ``~h``...), taken literally
    by the expression parser (the argument is still a regex: see :func:`re.escape`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: Images, stylesheets and scripts: by response Content-Type, or by the URL path's extension.
_RESOURCES = (f"~ts {quote('(?i)^image/|^text/css|javascript|ecmascript')} | "
              f"~u {quote(r'^[^?#]*[.](' + '|'.join(_RESOURCE_EXTENSIONS) + r')([?#]|$)')}")


def _url_regex(pattern: str, regex: bool, option: str) -> str:
    if not regex:
        return re.escape(pattern)
    try:
        re.compile(pattern)
    except re.error as e:
        raise FilterError(pattern, f"{option} is not a valid regex: {e.msg}", e.pos) from e
    return pattern


def simple_expression(
    url_contains: str = "",
    url_not_contains: str = "",
    url_regex: bool = False,
    methods: Iterable[str] = (),
    skip_resources: bool = False,
) -> str | None:
    """Postman-style session filters as one filter expression, or None when no option is set.

    URL tests are case-insensitive substring checks on the URL (``~u``), or regex
    searches when ``url_regex`` is true; ``methods`` keeps only those methods
    (empty: all); ``skip_resources`` drops images, JavaScript and CSS (by
    response Content-Type or URL extension). The session store evaluates the
    expression in SQL where it can (:mod:`flowtap.store.query`).

    :raises FilterError: ``url_regex`` and a pattern that is not a valid regex.
    """
    parts = []
    if url_contains:
        parts.append("~u " + quote(_url_regex(url_contains, url_regex, "url_contains")))
    if url_not_contains:
        parts.append("!~u " + quote(_url_regex(url_not_contains, url_regex, "url_not_contains")))
    wanted = sorted({m.strip().upper() for m in methods if m and m.strip()})
    if wanted:
        parts.append("(" + " | ".join(f"~m {quote('^' + re.escape(m) + '$')}" for m in wanted) + ")")
    if skip_resources:
        parts.append(f"!({_RESOURCES})")
    return " & ".join(parts) or None


def simple_filter(
    url_contains: str = "",
    url_not_contains: str = "",
    url_regex: bool = False,
    methods: Iterable[str] = (),
    skip_resources: bool = False,
) -> Predicate | None:
    """Postman-style session filter (see :func:`simple_expression`), or None when no option is set."""
    expression = simple_expression(url_contains, url_not_contains, url_regex, methods, skip_resources)
    return None if expression is None else compile_expression(expression)
