"""flowtap.cookies: RFC 6265 parsing of Set-Cookie and Cookie headers, and domain matching."""

import calendar
from http.cookiejar import http2time

import pytest

from flowtap.cookies import (
    MAX_EXPIRES,
    Cookie,
    default_path,
    domain_match,
    parse_cookie_date,
    parse_cookie_header,
    parse_set_cookie,
)
from flowtap.testing import make_flow

NOW = 1_700_000_000.0


def parse(header, url="https://api.example.com/v1/users/7"):
    return parse_set_cookie(header, url, now=NOW)


@pytest.mark.parametrize("host, domain, expected", [
    ("example.com", "example.com", True),
    ("api.example.com", "example.com", True),
    ("API.Example.COM", ".example.com", True),
    ("a.b.example.com", "example.com", True),
    ("notexample.com", "example.com", False),
    ("example.com", "api.example.com", False),
    ("example.org", "example.com", False),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "0.0.1", False),  # an IP address is nobody's subdomain
    ("10.0.0.1", "0.1", False),
])  # fmt: skip
def test_domain_match(host, domain, expected):
    assert domain_match(host, domain) is expected


def test_host_only_cookie_takes_the_request_host_and_default_path():
    cookie = parse("sid=abc")
    assert cookie == Cookie(name="sid", value="abc", domain="api.example.com", path="/v1/users",
                            host_only=True)
    assert default_path("/") == default_path("/top") == default_path("") == "/"


def test_every_attribute():
    cookie = parse("sid=a=b; Domain=.Example.com; Path=/v1; Secure; HttpOnly; SameSite=lax; Max-Age=60")
    assert cookie == Cookie(name="sid", value="a=b", domain="example.com", path="/v1", expires=NOW + 60,
                            secure=True, httponly=True, samesite="Lax", host_only=False)  # fmt: skip


@pytest.mark.parametrize("header", [
    "no-equals-sign",  # RFC 6265 5.2: ignored
    "=value",  # no name
    "sid=1; Domain=other.com",  # a domain that does not cover the host
    "sid=1; Domain=www.api.example.com",
])  # fmt: skip
def test_cookies_a_browser_ignores(header):
    assert parse(header) is None


def test_a_url_with_no_host_sets_no_cookie():
    assert parse("a=1", "http://[::1/x") is None  # urlsplit raises ValueError: the flow must not be lost


def test_domain_attribute_of_an_ip_host():
    assert parse("a=1; Domain=0.0.1", "http://127.0.0.1/") is None
    cookie = parse("a=1; Domain=127.0.0.1", "http://127.0.0.1/")
    assert (cookie.domain, cookie.host_only) == ("127.0.0.1", True)  # as browsers keep it (issue 11)
    assert parse("a=1; Domain=localhost", "http://localhost:8080/").host_only
    assert parse("a=1; Domain=localhost", "http://app.localhost/") is None


@pytest.mark.parametrize("value", [
    "Wed, 21 Oct 2015 07:28:00 GMT",  # RFC 1123
    "Wednesday, 21-Oct-15 07:28:00 GMT",  # RFC 850
    "Wed Oct 21 07:28:00 2015",  # asctime
    "21 oct 2015 07:28:00",
])  # fmt: skip
def test_cookie_dates(value):
    assert parse_cookie_date(value) == calendar.timegm((2015, 10, 21, 7, 28, 0))


@pytest.mark.parametrize("value", ["", "garbage", "Feb 31 2020 00:00:00", "Jan 1 1500 00:00:00",
                                   "Jan 1 2020 24:00:00", "Jan 1 99999 00:00:00"])  # fmt: skip
def test_dates_that_name_no_time(value):
    assert parse_cookie_date(value) is None


def test_a_date_before_1970_is_a_deletion_not_a_session_cookie():
    # http.cookiejar.http2time gives None here, which would have kept the cookie forever.
    assert http2time("Mon, 01 Jan 1900 00:00:00 GMT") is None
    cookie = parse("sid=; Expires=Mon, 01 Jan 1900 00:00:00 GMT")
    assert cookie.expires is not None and cookie.is_expired(NOW)


def test_max_age_wins_over_expires_and_zero_deletes():
    assert parse("a=1; Max-Age=10; Expires=Wed, 21 Oct 2015 07:28:00 GMT").expires == NOW + 10
    assert parse("a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT").is_expired(NOW)
    assert parse("a=1; Max-Age=0").is_expired(NOW)
    assert parse("a=1; Max-Age=-5").is_expired(NOW)


@pytest.mark.parametrize("value", ["1_0", "+5", "5s", " ", "0x10", "١٢"])
def test_max_age_that_is_not_digits_is_ignored(value):
    assert parse(f"a=1; Max-Age={value}").expires is None


def test_huge_max_age_is_capped_not_a_crash():
    # Adding a 400-digit int to a float used to raise OverflowError: the flow was lost for every sink.
    assert parse("a=1; Max-Age=" + "9" * 400).expires == MAX_EXPIRES
    assert parse("a=1; Max-Age=" + "9" * 5000).expires == MAX_EXPIRES
    assert parse("a=1; Max-Age=-" + "9" * 400).is_expired(NOW)
    flow = make_flow(response_headers=[("Set-Cookie", "a=1; Max-Age=" + "9" * 400)])
    assert [c.expires for c in flow.cookies] == [MAX_EXPIRES]


def test_odd_text_is_kept_as_is():
    cookie = parse("n=caf\udce9 \u2603; Path=/x")  # undecodable byte (surrogateescape) and a snowman
    assert cookie.value == "caf\udce9 \u2603"


def test_cookie_header_pairs():
    assert parse_cookie_header("a=1; b = 2 ;c=; bare; =x; d=e=f") == [("a", "1"), ("b", "2"), ("c", ""),
                                                                      ("d", "e=f")]


def test_flow_cookies_sent_then_set():
    flow = make_flow(
        url="https://shop.example.com/cart/items",
        request_headers=[("Cookie", "sid=old; theme=dark")],
        response_headers=[("Set-Cookie", "sid=new; Path=/; Secure"), ("Set-Cookie", "broken")],
    )
    sent = [Cookie(name="sid", value="old", domain="shop.example.com", host_only=True),
            Cookie(name="theme", value="dark", domain="shop.example.com", host_only=True)]  # fmt: skip
    assert flow.cookies == sent + [Cookie(name="sid", value="new", domain="shop.example.com", secure=True,
                                          host_only=True)]  # fmt: skip
