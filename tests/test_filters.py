"""flowtap.filters: mitmproxy filter expressions give mitmproxy's own answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy import flow as mflow, flowfilter, http, websocket
from mitmproxy.test import tflow
from wsproto.frame_protocol import Opcode

import flowtap.filters
from flowtap.filters import FilterError, compile_expression, simple_filter
from flowtap.model import Flow, Request, Response, WebSocketMessage

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def make(method, url, req_headers=(), req_body=b"", status=None, resp_headers=(),
         resp_body=b"", **kw) -> Flow:  # fmt: skip
    response = None
    if status is not None:
        response = Response(status_code=status, headers=resp_headers, body=resp_body)
    request = Request(method=method, url=url, headers=req_headers, body=req_body)
    kw.setdefault("client_address", ("10.0.0.2", 50001))
    return Flow(request=request, response=response, **kw)


JSON = [("Content-Type", "application/json")]

FLOWS: dict[str, Flow] = {
    "users": make(
        "GET", "https://api.example.com/v1/users?page=2",
        [("Accept", "application/json"), ("User-Agent", "curl/8.0"), ("Accept", "text/plain")],
        status=200, resp_headers=JSON, resp_body=b'{"users": ["alice", "bob"]}',
        server_address=("api.example.com", 443),
        metadata={"comment": "look at this", "note": "first"},
    ),
    "login": make(
        "POST", "https://api.example.com/v1/login", JSON,
        b'{"user": "alice", "password": "s3cret"}', status=200,
        resp_headers=JSON + [("Set-Cookie", "session=abc; Path=/"), ("Set-Cookie", "theme=dark")],
        resp_body=b'{"ok": true}', server_address=("api.example.com", 443),
    ),
    "put500": make(
        "PUT", "http://shop.example.org/items/42",
        [("content-type", "application/x-www-form-urlencoded")], b"name=widget&qty=3",
        status=500, resp_headers=[("content-type", "text/html")],
        resp_body=b"<h1>Internal Server Error</h1>", server_address=("shop.example.org", 80),
    ),
    "home": make(
        "GET", "https://www.example.com/", status=200,
        resp_headers=[("Content-Type", "text/html; charset=utf-8")], resp_body=b"<html>hi</html>",
    ),
    "png": make(
        "GET", "https://cdn.example.com/img/logo.png", [("Accept", "image/*")],
        status=200, resp_headers=[("Content-Type", "image/png")], resp_body=PNG,
    ),
    "css": make(
        "GET", "https://cdn.example.com/static/site.css", status=200,
        resp_headers=[("Content-Type", "text/css")], resp_body=b"body { color: red }",
    ),
    "js": make(
        "GET", "https://cdn.example.com/static/app.js", status=200,
        resp_headers=[("Content-Type", "application/javascript")], resp_body=b"alert(1)",
    ),
    "missing": make(
        "GET", "http://example.net/missing", status=404,
        resp_headers=[("Content-Type", "text/plain")], resp_body=b"not found",
    ),
    "hosthdr": make(
        "GET", "http://10.1.2.3:8080/internal/status", [("Host", "internal.corp.local:8080")],
        status=200, resp_headers=JSON, resp_body=b'{"status": "green"}',
        server_address=("10.1.2.3", 8080), client_address=("192.168.1.5", 60000),
    ),
    "error": make(
        "GET", "https://slow.example.com/timeout", error="Connection killed.",
        client_address=None,
    ),
    "pending": make("GET", "https://api.example.com/v1/pending", [("Accept", "*/*")]),
    "ws": make(
        "GET", "https://chat.example.com/socket",
        [("Upgrade", "websocket"), ("Connection", "Upgrade")], status=101,
        resp_headers=[("Upgrade", "websocket")],
        websocket=[
            WebSocketMessage(from_client=True, content=b"hello server"),
            WebSocketMessage(from_client=False, content=b"\x00\x01binary-frame", is_text=False),
            WebSocketMessage(from_client=False, content=b"welcome"),
        ],
    ),
    "upload": make(
        "POST", "https://upload.example.com/files",
        [("Content-Type", "application/octet-stream")], b"\x00\xff\xfe\x01payload\x80",
        status=201, resp_headers=JSON, resp_body=b'{"id": 9}',
    ),
    "umlaut": make(
        "GET", "https://www.example.de/cv", [("X-Name", "Jürgen Müller")], status=200,
        resp_headers=[("Content-Type", "application/pdf"),
                      ("Content-Disposition", 'attachment; filename="résumé.pdf"')],
        resp_body=b"%PDF-1.4",
    ),  # fmt: skip
    "delete": make(
        "DELETE", "https://API.Example.com:8443/v1/users/7", status=204,
        server_address=("api.example.com", 8443),
    ),
}


def to_mitmproxy(flow: Flow) -> http.HTTPFlow:
    """The same exchange as a real mitmproxy HTTPFlow, headers and bodies byte for byte."""

    def enc(s: str) -> bytes:
        return s.encode("utf-8", "surrogateescape")

    def headers(message) -> http.Headers:
        return http.Headers([(enc(k), enc(v)) for k, v in message.headers.fields])

    client, server = tflow.tclient_conn(), tflow.tserver_conn()
    client.peername = flow.client_address
    server.address = flow.server_address
    mf = http.HTTPFlow(client, server)
    mf.request = http.Request.make(flow.request.method, flow.request.url)
    mf.request.headers = headers(flow.request)
    mf.request.raw_content = flow.request.body
    if flow.response is not None:
        mf.response = http.Response.make(flow.response.status_code)
        mf.response.headers = headers(flow.response)
        mf.response.raw_content = flow.response.body
    if flow.error:
        mf.error = mflow.Error(flow.error)
    if flow.websocket is not None:
        mf.websocket = websocket.WebSocketData()
        mf.websocket.messages = [
            websocket.WebSocketMessage(Opcode.TEXT if m.is_text else Opcode.BINARY,
                                       m.from_client, m.content, m.timestamp)
            for m in flow.websocket
        ]  # fmt: skip
    mf.metadata = dict(flow.metadata)
    mf.comment = flow.metadata.get("comment", "")
    return mf


MITM = {name: to_mitmproxy(f) for name, f in FLOWS.items()}

EXPRESSIONS = [
    r"~d example.com", r"~d ^api\.", r"~d corp\.local", r"~d cdn", r"~d 10\.1\.2\.3",
    r"~m POST", r"~m put", r'~m "^(GET|HEAD)$"',
    r"~u /v1/", r"~u \.png$", r"~u :8080", r"~u internal\.corp", r"~u api.example.com:8443",
    r"~u ^https://www\.example\.com/$",
    r"~c 200", r"~c 404", r"~c 500", r"~c 101",
    r"~h Set-Cookie", r"~h set-cookie", r'~h "(?i)^set-cookie: session="',
    r'~h "^Upgrade: websocket\r$"',
    r'~hq "^Accept: application/json"', r"~hq Jürgen", r"~hq ^Host:",
    r"~hs résumé", r"~hs ^content-type", r"~hs .",
    r"~t json", r"~tq json", r"~ts text/html", r"~ts image", r"~t ^text/",
    r"~b alice", r"~b welcome", r"~b \x89PNG", r"~bq password", r"~bq hello", r"~bq ^$",
    r"~bs users", r"~bs binary-frame", r"~bq \xff\xfe", r'~b "Internal Server"',
    r"~a", r"~e", r"~s", r"~q", r"~http", r"~websocket",
    r"~src 10\.0\.0\.2", r"~src :60000$", r"~dst :443$", r"~dst ^api\.",
    r"!~s", r"~s & ~c 200", r"~d example.com & !~a", r"~c 404 | ~c 500",
    r"(~m GET | ~m PUT) & ~d example", r"~d cdn ~ts css", r"example.com/v1",
    r"'static/app'", r"!(~q | ~e )", r"!~d example & ~s", r'~meta "note: first"',
    r"~comment look", r"~all", r"~marked", r"~marker .*", r"~tcp", r"~udp", r"~dns",
    r"~replay", r"~replayq", r"~replays",
]  # fmt: skip

# mitmproxy quirks the list relies on: an unquoted regex ends at whitespace or a
# parenthesis (so "~h a: b" is "~h a:" AND the URL regex "b"); ~h sees header names
# as sent, case-sensitively ("~h set-cookie" matches nothing); a flag operator right
# before ")" is a syntax error ("(~q | ~e)" fails, "(~q | ~e )" parses).

#: Expressions that by their nature (or the quirks above) match every flow or none.
UNIFORM = {"~h set-cookie", "~http", "~all", "~marked", "~marker .*", "~tcp", "~udp", "~dns",
           "~replay", "~replayq", "~replays"}  # fmt: skip


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_same_result_as_mitmproxy(expression):
    ours, theirs = compile_expression(expression), flowfilter.parse(expression)
    mismatches = [
        f"{name}: flowtap={bool(ours(FLOWS[name]))} mitmproxy={bool(theirs(MITM[name]))}"
        for name in FLOWS
        if bool(ours(FLOWS[name])) != bool(theirs(MITM[name]))
    ]
    assert not mismatches, f"{expression!r} differs from mitmproxy on " + "; ".join(mismatches)
    matched = sum(bool(ours(f)) for f in FLOWS.values())
    if expression not in UNIFORM:
        assert 0 < matched < len(FLOWS), f"{expression!r} matched {matched}/{len(FLOWS)} flows"


def test_every_operator_is_covered():
    operators = (*flowfilter.filter_unary, *flowfilter.filter_rex, *flowfilter.filter_int)
    codes = {cls.code for cls in operators}
    used = {tok[1:] for e in EXPRESSIONS for tok in e.replace("(", " ").replace("!", " ").split()
            if tok.startswith("~")}  # fmt: skip
    assert codes <= used


@pytest.mark.parametrize(
    "expression, position, detail",
    [("~d (", 3, "~d expects a value"), ("~c abc", 3, "~c expects a number"),
     ("~zz foo", 0, "unknown operator ~zz"),
     ('"unterminated', 0, "unterminated quoted string"), ("~b [", 3, "bad regex"),
     ("~s & (~q", 5, "'(' without its ')'"), ("~q) | ~s", 2, "~q must be followed by a space"),
     ("(~s | ~q)", 8, "~q must be followed by a space"), ("~q & ~s )", 8, "')' without its '('")],
)  # fmt: skip
def test_filter_error_position(expression, position, detail):
    """The same column and words whichever pyparsing mitmproxy brings (3.3 reports less)."""
    with pytest.raises(FilterError) as info:
        compile_expression(expression)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.expression == expression and err.position == position and err.detail.startswith(detail)
    message = str(err)
    assert repr(expression) in message and f"column {position + 1}" in message
    shown, caret = message.splitlines()[1:3]
    assert caret.index("^") == shown.index(expression) + position


@pytest.mark.parametrize("expression, column, detail", [
    ("~x foo", 1, "unknown operator ~x (operators: ~a ~all ~b ~bq ~bs ~c ~comment ~d ~dns ~dst ~e ~h ~hq "
                  "~hs ~http ~m ~marked ~marker ~meta ~q ~replay ~replayq ~replays ~s ~src ~t ~tcp ~tq ~ts "
                  "~u ~udp ~websocket)"),
    ("~m GET | ~cc 200", 10, "unknown operator ~cc; did you mean ~c?"),
    ("~d", 3, "~d expects a value (domain): a word or a quoted string, e.g. ~d api.example.com"),
    ("~d foo & ~m", 12, "~m expects a value (method): a word or a quoted string, e.g. ~m POST"),
    ("~c abc", 4, "~c expects a number (HTTP response code), e.g. ~c 404; got 'abc'"),
    ("~d foo & (~m GET", 10, "'(' without its ')'"),
    ("~d a)", 5, "')' without its '('"),
    ('~h "abc', 4, 'unterminated quoted string: its " is never closed'),
    ("(~s | ~q)", 9, "~q must be followed by a space"),
    ("~d a ~", 6, "~ must be followed by an operator, e.g. ~d api.example.com"),
])  # fmt: skip
def test_filter_errors_say_what_was_expected_in_the_filters_own_words(expression, column, detail):
    with pytest.raises(FilterError) as info:
        compile_expression(expression)
    assert str(info.value).splitlines()[0] == (
        f"invalid filter expression {expression!r}: error at column {column}: {detail}")


def test_no_parser_internals_in_filter_errors():
    for expression in ["~x foo", "~d", "~c", "(~d a", "~d a)", "~h 'a", "~q)", "~d ~m", "!~", "~d a & (~m"]:
        with pytest.raises(FilterError) as info:
            compile_expression(expression)
        message = str(info.value)
        for internal in ("Expected", "Suppress", "W:(", "end of text", "enclosed in"):
            assert internal not in message, (expression, message)


def test_filter_error_bad_regex_and_empty():
    with pytest.raises(FilterError, match="bad regex"):
        compile_expression("~d ok | ~b '(unclosed'")
    for empty in ("", "   "):
        with pytest.raises(FilterError) as info:
            compile_expression(empty)
        assert info.value.position is None and repr(empty) in str(info.value)


def names(predicate, flows=FLOWS) -> set[str]:
    return {name for name, f in flows.items() if predicate(f)}


def test_simple_filter_nothing_set():
    assert simple_filter() is None
    assert simple_filter(methods=[], url_regex=True) is None


def test_simple_filter_url_contains_and_not_contains():
    assert names(simple_filter(url_contains="API.example.COM/v1")) == {"users", "login", "pending"}
    assert names(simple_filter(url_not_contains="example.com")) == {
        "put500", "missing", "hosthdr", "umlaut"}  # fmt: skip
    both = simple_filter(url_contains="/v1/", url_not_contains="login")
    assert names(both) == {"users", "pending", "delete"}


def test_simple_filter_regex_mode():
    assert names(simple_filter(url_contains=r"\.(png|css)$", url_regex=True)) == {"png", "css"}
    assert names(simple_filter(url_not_contains=r"^https://", url_regex=True)) == {
        "put500", "missing", "hosthdr"}  # fmt: skip
    # The same text without regex mode is a literal substring: matches nothing.
    assert names(simple_filter(url_contains=r"\.(png|css)$")) == set()
    with pytest.raises(FilterError) as info:
        simple_filter(url_contains="(oops", url_regex=True)
    assert "(oops" in str(info.value) and "url_contains" in str(info.value)


def test_simple_filter_methods():
    assert names(simple_filter(methods=["post", " Put "])) == {"login", "upload", "put500"}
    assert names(simple_filter(methods={"DELETE"})) == {"delete"}


def test_simple_filter_skip_resources():
    extra = {
        "vendor-no-response": make("GET", "https://cdn.example.com/x/vendor.min.js"),
        "sourcemap": make("GET", "https://cdn.example.com/x/app.js.map?v=2"),
        "avatar-by-type": make("GET", "https://img.example.com/avatar?id=3", status=200,
                               resp_headers=[("Content-Type", "image/jpeg")]),
        "ecmascript": make("GET", "https://cdn.example.com/run", status=200,
                           resp_headers=[("Content-Type", "text/javascript; charset=utf-8")]),
        "json-file": make("GET", "https://cdn.example.com/data.json", status=200,
                          resp_headers=JSON),
    }  # fmt: skip
    kept = names(simple_filter(skip_resources=True), {**FLOWS, **extra})
    dropped = {"png", "css", "js", "vendor-no-response", "sourcemap", "avatar-by-type",
               "ecmascript"}  # fmt: skip
    assert kept == (set(FLOWS) | set(extra)) - dropped


def test_simple_filter_combined():
    predicate = simple_filter(url_contains="example.com", methods=["GET"], skip_resources=True)
    assert names(predicate) == {"users", "home", "error", "pending", "ws"}


def test_import_does_not_import_mitmproxy():
    core = str(Path(flowtap.filters.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [core, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    code = "import flowtap.filters, sys; assert 'mitmproxy' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
