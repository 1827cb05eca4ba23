"""The flow model: headers, URL parts, bodies, cookies derived from headers."""

import types

import flowtap
from flowtap import Flow, Headers, Request, Response
from flowtap.testing import capture, make_flow


def test_headers_keep_order_and_duplicates_with_case_insensitive_lookup():
    headers = Headers([("Set-Cookie", "a=1"), ("content-type", "text/html"), ("set-cookie", "b=2")])
    assert headers.fields == (("Set-Cookie", "a=1"), ("content-type", "text/html"), ("set-cookie", "b=2"))
    assert headers.get("SET-COOKIE") == "a=1" and headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert headers["Content-Type"] == "text/html" and "CONTENT-TYPE" in headers and "x" not in headers
    assert headers.get("missing", "d") == "d" and len(headers) == 3


def test_headers_from_any_mapping_as_make_flow_documents():
    # make_flow takes a Mapping; one that is not a dict used to be iterated as pairs (its keys).
    headers = types.MappingProxyType({"Accept": "*/*", "X-Id": "7"})
    assert Request(headers=headers).headers.fields == (("Accept", "*/*"), ("X-Id", "7"))
    flow = make_flow(request_headers=headers, response_headers=types.MappingProxyType({"Server": "t"}))
    assert flow.request.headers["x-id"] == "7" and flow.response.headers.fields == (("Server", "t"),)


def test_request_url_parts():
    request = Request(method="POST", url="https://API.example.com:8443/v1/users?id=7&tag=&tag=x")
    assert (request.scheme, request.host, request.port) == ("https", "api.example.com", 8443)
    assert request.path == "/v1/users?id=7&tag=&tag=x"
    assert request.query == [("id", "7"), ("tag", ""), ("tag", "x")]
    assert Request(url="http://example.com").port == 80 and Request(url="http://example.com").path == "/"


def test_body_size_and_truncation():
    response = Response(body=b"abc", body_size=1000, truncated=True,
                        headers=[("Content-Type", "text/plain; charset=latin-1")])
    assert response.body_size == 1000 and response.truncated and response.content_type == "text/plain"
    assert Response(body=b"\xe9", headers=[("Content-Type", "text/plain; charset=latin-1")]).text() == "é"
    assert Response(body=b"12345").body_size == 5


def test_cookies_derived_from_headers():
    flow = make_flow(
        url="https://www.shop.test/account/login",
        request_headers=[("Cookie", "sid=old; theme=dark")],
        response_headers=[
            ("Set-Cookie", "sid=new; Domain=shop.test; Path=/; Secure; HttpOnly; SameSite=lax"),
            ("Set-Cookie", "cart=1; Max-Age=0"),
            ("Set-Cookie", "evil=1; Domain=other.test"),  # a browser ignores it
            ("Set-Cookie", "local=1"),
        ],
    )
    assert flow.request_cookies == [("sid", "old"), ("theme", "dark")]
    sid, cart, local = flow.response_cookies
    assert (sid.domain, sid.path, sid.secure, sid.httponly, sid.samesite, sid.host_only) == (
        "shop.test", "/", True, True, "Lax", False)
    assert cart.is_expired() and not sid.is_expired()
    assert (local.domain, local.path, local.host_only) == ("www.shop.test", "/account", True)
    assert [c.name for c in flow.cookies] == ["sid", "theme", "sid", "cart", "local"]


def test_a_flow_without_response_has_no_response_cookies():
    flow = Flow(request=Request(url="https://a.test/"), error="connection refused")
    assert flow.response is None and flow.response_cookies == [] and flow.timings.duration is None


def test_modules_register_like_objects():
    module = types.ModuleType("only_delete")

    @flowtap.hookimpl
    def flowtap_filter(flow):
        return flow.request.method == "DELETE" or False

    module.flowtap_filter = flowtap_filter
    with capture(module) as cap:
        cap.feed(make_flow(method="GET"), make_flow(method="DELETE"))
        assert [f.request.method for f in cap.recorded.flows] == ["DELETE"]
        assert cap.capture.host.infos["only_delete"].hooks == ["flowtap_filter"]
