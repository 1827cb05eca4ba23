"""What the web UI reads from the store, without a browser: keyset pages, the live update with its
cursor and gap, the filter bar's expression, and how bodies are classified for the detail view."""

from __future__ import annotations

import pytest

import flowtap
from flowtap.filters import FilterError
from flowtap.testing import capture, make_flow
from flowtap_web import data


@pytest.fixture
def stored(tmp_path):
    """Two sessions in one store, their flows interleaved in recording order."""
    path = tmp_path / "flowtap.db"
    for name, count in (("one", 30), ("two", 5)):
        with capture(config={"store": {"path": str(path)}, "session": {"name": name}}, record=False) as cap:
            cap.feed(*[make_flow(url=f"https://{name}.example/item/{i}",
                                 method="POST" if i % 3 == 0 else "GET") for i in range(count)])
    with flowtap.open_store(path) as store:
        yield store


def paths(page):
    return [row["path"] for row in page["rows"]]


def test_pages_go_by_keyset_forward_backward_and_from_the_end(stored):
    one = stored.session("one").id
    first = data.page(stored, one, None, limit=10)
    assert paths(first) == [f"/item/{i}" for i in range(10)] and first["more"]
    after = data.page(stored, one, None, after=first["rows"][-1]["seq"], limit=25)
    assert paths(after) == [f"/item/{i}" for i in range(10, 30)] and not after["more"]
    before = data.page(stored, one, None, before=after["rows"][5]["seq"], limit=4)
    assert paths(before) == [f"/item/{i}" for i in range(11, 15)] and before["more"]
    newest = data.page(stored, one, None, newest=True, limit=3)
    assert paths(newest) == ["/item/27", "/item/28", "/item/29"] and newest["more"]
    assert newest["top"] == newest["rows"][-1]["seq"]
    posts = data.page(stored, one, data.expression({"methods": "POST", "not_url": "item/0"}))
    assert paths(posts) == [f"/item/{i}" for i in range(3, 30, 3)]


def test_the_live_update_sends_what_is_new_or_jumps_to_the_end(stored):
    two = stored.session("two").id
    top = data.page(stored, two, None)["rows"][1]["seq"]
    news = data.update(stored, two, None, top)
    assert paths(news) == ["/item/2", "/item/3", "/item/4"] and not news["gap"]
    assert news["cursor"] == news["rows"][-1]["seq"] and news["session"]["name"] == "two"
    behind = data.update(stored, two, None, 0, limit=2)
    assert behind["gap"] and paths(behind) == ["/item/3", "/item/4"]
    # A filter that matches nothing still moves the cursor past the rows it looked at.
    nothing = data.update(stored, two, "~u nomatch", top)
    assert nothing["rows"] == [] and nothing["cursor"] == news["cursor"]


def test_the_filter_bar_is_one_expression_and_bad_parts_are_errors():
    assert data.expression({}) is None
    assert data.expression({"filter": " ~m GET "}) == "~m GET"
    combined = data.expression({"filter": "~d a | ~d b", "url": "x.y", "hide_assets": "1"})
    assert combined is not None and combined.startswith("(~d a | ~d b) & (~u ")
    with pytest.raises(FilterError):
        flowtap.filters.compile_expression(data.expression({"filter": "~zz"}) or "")


@pytest.mark.parametrize(("body", "content_type", "kind"), [
    (b"", "text/plain", "empty"),
    (b'{"a": [1, 2]}', "application/json", "json"),
    (b'{"a": [1, 2', "application/json", "text"),
    ("café".encode("latin-1"), "text/plain; charset=latin-1", "text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png", "image"),
    (bytes(range(256)), "application/octet-stream", "binary"),
    (b"<svg onload=alert(1)/>", "image/svg+xml", "text"),  # shown as its text, not as an image
])
def test_bodies_are_classified_for_the_detail_view(body, content_type, kind):
    flow = make_flow(response_body=body, response_headers=[("Content-Type", content_type)])
    shown = data.body_json(flow.response)
    assert shown["kind"] == kind
    if kind == "text" and "latin-1" in content_type:
        assert shown["text"] == "café" and shown["charset"] == "latin-1"


def test_a_truncated_body_carries_its_real_size():
    flow = make_flow(response_body=b"x" * 10)
    flow.response.truncated, flow.response.body_size = True, 5_000_000
    shown = data.body_json(flow.response)
    assert (shown["captured"], shown["size"], shown["truncated"]) == (10, 5_000_000, True)


def test_the_cookie_jar_is_the_sessions_last_word_per_domain(tmp_path):
    path = tmp_path / "flowtap.db"
    set_cookies = [
        [("Content-Type", "text/plain"), ("Set-Cookie", "sid=1; Path=/"), ("Set-Cookie", "gone=x; Path=/")],
        [("Set-Cookie", "sid=2; Path=/; HttpOnly"), ("Set-Cookie", "gone=; Path=/; Max-Age=0")],
        [("Content-Type", "text/plain"), ("Set-Cookie", "lang=fr; Domain=example.org; Path=/")],
    ]
    with capture(config={"store": {"path": str(path)}, "session": {"name": "jar"}}, record=False) as cap:
        cap.feed(*[make_flow(url=f"https://{host}/", response_headers=headers) for host, headers in
                   zip(("a.example.com", "a.example.com", "www.example.org"), set_cookies, strict=True)])
    with flowtap.open_store(path) as store:
        jar = data.cookies(store, store.session("jar").id)
    shown = {domain: [(c["name"], c["value"], c["http_only"]) for c in cookies]
             for domain, cookies in jar.items()}
    assert shown == {"a.example.com": [("sid", "2", True)], "example.org": [("lang", "fr", False)]}
