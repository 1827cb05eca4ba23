"""The OpenAPI sink's parts: path templating, schema summaries, merging into a document, options, secrets.

(Real traffic through the proxy, judged by openapi-spec-validator and openapi-core, is in
test_openapi_e2e.py.)
"""

from __future__ import annotations

import json
import time

import pytest
from openapi_spec_validator import validate
from ruamel.yaml import YAML

import flowtap
from flowtap.endpoints import EndpointTree, kind
from flowtap.testing import capture, make_flow
from flowtap_openapi.document import update
from flowtap_openapi.operation import scrub
from flowtap_openapi.schema import MAX_DEPTH, MAX_PROPERTIES, Shape, formats_of

from clirun import flowtap as run_cli


def learn(*paths: str) -> EndpointTree:
    tree = EndpointTree(lambda a, b: a + b)
    for path in paths:
        node, _ = tree.add(path)
        node.payload = (node.payload or 0) + 1
    return tree


def endpoints(tree: EndpointTree) -> dict[str, int]:
    return {node.path(): node.payload for node in tree.endpoints()}


# -- templating -----------------------------------------------------------------------------------------

def test_identifier_segments_become_named_parameters():
    assert [kind(s) for s in ("42", "550e8400-e29b-41d4-a716-446655440000", "2024-05-01",
                              "5f2b9c0d1e3a4b6c7d8e9f00", "ord_8f2k3j9q", "users", "v2", "oauth2")] == [
        "integer", "uuid", "date", "hex", "token", None, None, None]
    tree = learn("/users/42", "/users/43/orders/ord_8f2k3j9q", "/statuses/7", "/status/404",
                 "/files/2024-05-01", "/v2/1/2")
    assert endpoints(tree) == {"/files/{fileId}": 1, "/status/{status}": 1, "/statuses/{statusId}": 1,
                               "/users/{userId}": 1, "/users/{userId}/orders/{orderId}": 1,
                               "/v2/{id}/{id2}": 1}
    node, values = tree.add("/users/7/orders/ord_1a2b3c4d")
    assert node.path() == "/users/{userId}/orders/{orderId}"
    assert values == [("userId", "7"), ("orderId", "ord_1a2b3c4d")]


def test_literal_siblings_stay_literal_beside_a_parameter():
    tree = learn("/users/1", "/users/2", "/users/me", "/users/me", "/users/3/avatar", "/users/search")
    assert endpoints(tree) == {"/users/me": 2, "/users/search": 1, "/users/{userId}": 2,
                               "/users/{userId}/avatar": 1}


def test_many_words_sharing_what_follows_become_a_parameter():
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"]
    tree = learn("/repos/new", *(f"/repos/{name}/settings" for name in names), "/repos/zed/hooks")
    assert endpoints(tree) == {"/repos/new": 1, "/repos/{repo}/hooks": 1, "/repos/{repo}/settings": 9}
    node, values = tree.add("/repos/someone-else/settings")
    assert (node.path(), values) == ("/repos/{repo}/settings", [("repo", "someone-else")])
    # Collections side by side are no values: a word followed by identifiers names one.
    resources = ["users", "orders", "products", "invoices", "carts", "reviews", "teams", "projects", "tags"]
    api = learn(*(f"/v1/{name}" for name in resources), *(f"/v1/{name}/7" for name in resources),
                *(f"/v1/{name}/7/events" for name in resources))
    assert len(endpoints(api)) == 27 and "/v1/users/{userId}/events" in endpoints(api)
    # A few words are endpoints of their own; so are words that lead to different places.
    few = learn("/docs/intro", "/docs/install", "/docs/usage", "/a/x/one", "/a/y/two", "/a/z/three")
    assert set(endpoints(few)) == {"/docs/intro", "/docs/install", "/docs/usage", "/a/x/one", "/a/y/two",
                                   "/a/z/three"}


def test_a_position_with_very_many_words_is_a_parameter_whatever_follows():
    tree = learn(*(f"/wiki/page{chr(97 + i % 26)}{chr(97 + i // 26)}/{i % 5}x" for i in range(80)))
    assert {path.split("/")[2] for path in endpoints(tree)} == {"{wiki}"}
    assert len(list(tree.root.walk())) < 20  # the tree holds the API, not the traffic


def test_hand_written_paths_are_kept_and_their_parameters_take_new_values():
    tree = EndpointTree(lambda a, b: a + b)
    tree.add_template("/users/{uid}").payload = 0
    for name in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"]:
        tree.add_template(f"/teams/{name}").payload = 0
    node, values = tree.add("/users/42")
    assert (node.path(), values) == ("/users/{uid}", [("uid", "42")])
    assert tree.add("/teams/judy")[0].path() == "/teams/judy"  # hand-written siblings are never folded


# -- schemas --------------------------------------------------------------------------------------------

def test_schemas_merge_types_null_required_items_formats_and_enums():
    shape = Shape()
    samples = [
        {"id": 1, "when": "2024-01-02T03:04:05Z", "day": "2024-01-02", "mail": "a@example.com", "site":
         "https://example.com/x", "ip": "10.0.0.1", "uid": "550e8400-e29b-41d4-a716-446655440000",
         "state": "open", "tags": ["a"], "score": 1, "parent": None, "extra": True},
        {"id": 2, "when": "2024-01-03T00:00:00+02:00", "day": "2024-02-29", "mail": "b@example.org", "site":
         "http://x.example", "ip": "192.168.1.1", "uid": "550e8400-e29b-41d4-a716-446655440001",
         "state": "closed", "tags": [], "score": 1.5, "parent": {"id": 1}},
        {"id": 3, "when": "yesterday", "day": "2024-03-01", "mail": "c@example.net", "site": "https://a.b",
         "ip": "999.1.1.1", "uid": "550e8400-e29b-41d4-a716-446655440002", "state": "open",
         "tags": ["b", "c"], "score": 2, "parent": None},
        {"id": 4, "day": "2024-03-02", "mail": "d@example.com", "site": "https://a.b", "ip": "10.0.0.2",
         "uid": "550e8400-e29b-41d4-a716-446655440003", "state": "closed", "tags": [], "score": 0,
         "parent": None},
    ]
    for sample in samples:
        shape.add(sample)
    schema = shape.schema()
    props = schema["properties"]
    assert props["id"] == {"type": "integer"}
    assert props["when"] == {"type": "string"}  # one was not a date-time
    assert props["day"] == {"type": "string", "format": "date"}
    assert props["mail"] == {"type": "string", "format": "email"}
    assert props["site"] == {"type": "string", "format": "uri"}
    assert props["ip"] == {"type": "string"}  # 999.1.1.1 is no address
    assert props["uid"] == {"type": "string", "format": "uuid"}
    assert props["state"] == {"type": "string", "enum": ["closed", "open"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["score"] == {"type": "number"}
    assert props["parent"] == {"type": ["object", "null"], "properties": {"id": {"type": "integer"}},
                               "required": ["id"]}
    assert props["extra"] == {"type": "boolean"}
    assert schema["required"] == ["id", "day", "mail", "site", "ip", "uid", "state", "tags", "score",
                                  "parent"]
    assert [sorted(formats_of(text)) for text in (
        "2024-02-30", "2024-02-29", "2024-01-02T24:00:00Z", "2024-01-02 03:04:05Z",
        "2024-01-02t03:04:05.5+01:00",
        "https://a.example/x?q=1#f", "https://a.example/{x}", "http:/x", "255.255.255.255", "1.2.3.256",
        "a@b.example", "550E8400-E29B-41D4-A716-446655440000")] == [
        [], ["date"], [], [], ["date-time"], ["uri"], [], [], ["ipv4"], [], ["email"], ["uuid"]]
    # Distinct values seen once each are no closed set.
    names = Shape()
    for name in ("ann", "bob", "cy"):
        names.add(name)
    assert names.schema() == {"type": "string"}


def test_objects_with_too_many_keys_are_maps():
    shape = Shape()
    shape.add({str(n): {"count": n} for n in range(MAX_PROPERTIES + 1)})
    assert shape.schema() == {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}}


def test_deep_values_are_described_by_their_type_below_a_depth():
    deep: object = "leaf"
    for _ in range(500):
        deep = {"a": [deep]}
    shape = Shape()
    shape.add(deep)
    schema, depth = shape.schema(), 0
    while "properties" in schema or "items" in schema:
        schema = schema["properties"]["a"] if "properties" in schema else schema["items"]
        depth += 1
    assert schema == {"type": "object"} and depth == MAX_DEPTH
    with pytest.raises(RecursionError):  # no example, then: nobody reads one that deep
        scrub(deep, set())


def test_a_schema_read_back_is_widened_by_new_samples():
    written = {"type": "object", "properties": {"a": {"type": "string", "format": "date"},
                                                "b": {"type": "string", "enum": ["x", "y"]},
                                                "c": {"type": "integer"}},
               "required": ["a", "b"]}
    shape = Shape.from_schema(written)
    assert shape.schema() == written
    shape.add({"a": "not a date", "b": "z", "d": None})
    assert shape.schema() == {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "enum": ["x", "y", "z"]}, "c": {"type": "integer"},
        "d": {"type": "null"}}, "required": ["a", "b"]}
    shape.add({"b": "x"})
    assert shape.schema()["required"] == ["b"]


def test_update_keeps_what_a_person_wrote():
    target = {"openapi": "3.1.1", "info": {"title": "Mine", "version": "7", "x-owner": "team"},
              "paths": {"/a": {"get": {"summary": "Get A", "parameters": [
                  {"name": "q", "in": "query", "description": "what to find", "schema": {"type": "integer"}}],
                  "responses": {"200": {"description": "The A", "content": {"application/json": {"schema": {
                      "type": "object", "description": "An A", "properties": {
                          "n": {"type": "integer", "description": "how many"}}, "required": ["n"]}}}}}}}}}
    generated = {"openapi": "3.1.0", "info": {"title": "API seen by flowtap", "version": "0.1.0"},
                 "paths": {"/a": {"get": {"parameters": [
                     {"name": "q", "in": "query", "required": False, "schema": {"type": "string"}},
                     {"name": "page", "in": "query", "required": False, "schema": {"type": "integer"}}],
                     "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                         "type": "object",
                         "properties": {"n": {"type": "number"}, "m": {"type": "string"}}}}}},
                                   "404": {"description": "Not Found"}}}},
                           "/b": {"post": {"responses": {"201": {"description": "Created"}}}}}}
    update(target, generated)
    assert target["openapi"] == "3.1.1"
    assert target["info"] == {"title": "Mine", "version": "7", "x-owner": "team"}
    get = target["paths"]["/a"]["get"]
    assert get["summary"] == "Get A"
    assert get["parameters"] == [
        {"name": "q", "in": "query", "description": "what to find", "schema": {"type": "string"},
         "required": False},
        {"name": "page", "in": "query", "required": False, "schema": {"type": "integer"}}]
    assert get["responses"]["200"]["description"] == "The A"
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "object", "description": "An A", "properties": {
            "n": {"type": "number", "description": "how many"}, "m": {"type": "string"}}}  # required: gone
    assert set(get["responses"]) == {"200", "404"} and "/b" in target["paths"]


def test_credentials_are_replaced_in_examples():
    body = {"user": "ann", "access_token": "abc", "session_count": 3,
            "nested": [{"password": "p", "pin": 1234, "note": "key k-123456"}]}
    assert scrub(body, {"k-123456"}) == {
        "user": "ann", "access_token": "REDACTED", "session_count": 0,
        "nested": [{"password": "REDACTED", "pin": 1234, "note": "key REDACTED"}]}


# -- the sink -------------------------------------------------------------------------------------------

def openapi_config(path, **options):
    return {"sinks": {"openapi": {"path": str(path), **options}}}


def test_the_sink_leaves_out_failed_flows_assets_and_other_origins(tmp_path, caplog):
    out = tmp_path / "api.json"
    flows = [
        make_flow(url="https://api.example.com/v1/items/1"),
        make_flow(url="https://api.example.com/v1/items/2", status=None, error="connection refused"),
        make_flow(url="https://api.example.com/app.js", response_body="x()",
                  response_headers=[("Content-Type", "text/javascript")]),
        make_flow(url="https://api.example.com/logo", response_headers=[("Content-Type", "image/png")],
                  response_body=b"\x89PNG"),
        make_flow(url="https://cdn.other.net/v1/things"),
        make_flow(url="https://eu.api.example.com:8443/v1/items/3"),
        make_flow(url="https://api.example.com/v1/items/9", status=404, response_body="<h1>Not Found</h1>",
                  response_headers=[("Content-Type", "text/html; charset=utf-8")]),  # an error page: no asset
        make_flow(url="https://eu.api.example.com:8443/v1/regions?limit=5", request_headers=[
            ("X-Client-Version", "2.1"), ("X-Forwarded-For", "10.0.0.1"), ("X-Auth-Token", "t0k3n-9z")]),
    ]
    caplog.set_level("INFO", logger="flowtap.openapi")
    config = openapi_config(out, origins=["https://api.example.com", "*.api.example.com"])
    with capture("openapi", config=config) as cap:
        cap.feed(*flows)
        cap.end()
    doc = json.loads(out.read_text())
    validate(doc)
    assert list(doc["paths"]) == ["/v1/items/{itemId}", "/v1/regions"]
    assert doc["servers"] == [{"url": "https://api.example.com"}, {"url": "https://eu.api.example.com:8443"}]
    regions = doc["paths"]["/v1/regions"]
    assert regions["servers"] == [{"url": "https://eu.api.example.com:8443"}]  # served by one origin only
    assert "servers" not in doc["paths"]["/v1/items/{itemId}"]
    assert regions["get"]["parameters"] == [
        {"name": "limit", "in": "query", "required": True, "schema": {"type": "integer"}},
        {"name": "X-Client-Version", "in": "header", "required": True, "schema": {"type": "string"}}]
    assert regions["get"]["security"] == [{"xAuthToken": []}]
    assert "t0k3n-9z" not in out.read_text()
    origins = [make_flow(url=url).request.origin for url in (
        "http://[::1]:8080/x", "https://API.example.com:443/", "http://h.test:80", "https://h.test:8443?q")]
    assert origins == ["http://[::1]:8080", "https://api.example.com", "http://h.test", "https://h.test:8443"]
    items = doc["paths"]["/v1/items/{itemId}"]["get"]["responses"]
    assert items["404"]["content"] == {"text/html": {"schema": {"type": "string"},
                                                     "example": "<h1>Not Found</h1>"}}
    assert "described 4 flows; left out: 1 failed (no response), 2 static assets (assets = false), " \
           "1 of other origins" in caplog.text


def test_odd_parts_of_a_hand_written_file_are_kept_as_they_are(tmp_path):
    out = tmp_path / "api.yaml"
    out.write_text("openapi: 3.1.0\ninfo: {title: Odd, version: '1'}\ncomponents: {securitySchemes: [x]}\n"
                   "paths:\n  /a:\n    get:\n      parameters: {not: a list}\n      responses: [200]\n"
                   "      requestBody: {content: text}\n  /b: just text\n")
    with capture("openapi", config=openapi_config(out)) as cap:
        cap.feed(make_flow(url="https://api.example.com/c"))
        cap.end()
    doc = YAML(typ="safe").load(out.read_text())
    assert doc["paths"]["/b"] == "just text" and doc["paths"]["/a"]["get"]["parameters"] == {"not": "a list"}
    assert "/c" in doc["paths"]


def test_the_description_is_written_while_the_session_runs(tmp_path):
    out = tmp_path / "api.json"
    with capture("openapi", config=openapi_config(out)) as cap:
        cap.feed(make_flow(url="https://api.example.com/first"))
        deadline = time.monotonic() + 10  # rewrites come at most once a second
        while "/first" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(json.loads(out.read_text())["paths"]) == ["/first"]
        cap.feed(make_flow(url="https://api.example.com/second"))
        cap.end()  # due within a second; the end writes it at once
    assert list(json.loads(out.read_text())["paths"]) == ["/first", "/second"]
    assert not list(tmp_path.glob(".api.json.*"))  # no temporary file left behind


def test_clear_forgets_the_session_but_not_the_file(tmp_path):
    out = tmp_path / "api.yaml"
    out.write_text("openapi: 3.1.0\ninfo: {title: Kept, version: '1'}\npaths:\n  /kept:\n    get:\n"
                   "      responses: {'200': {description: OK}}\n")
    with capture("openapi", config=openapi_config(out)) as cap:
        cap.feed(make_flow(url="https://api.example.com/forgotten"))
        cap.session.clear()
        cap.feed(make_flow(url="https://api.example.com/remembered"))
        cap.end()
    doc = YAML(typ="safe").load(out.read_text())
    assert sorted(doc["paths"]) == ["/kept", "/remembered"]
    assert doc["info"]["title"] == "Kept"


@pytest.mark.parametrize(("text", "message"), [
    ("openapi: 3.0.3\ninfo: {title: x, version: '1'}\npaths: {}\n",
     "expected an OpenAPI 3.1 document to merge with (openapi: 3.1.x), found openapi: 3.0.3"),
    ("openapi: [3.1\n", "not valid YAML, so it cannot be merged with this session"),
    ("- a list\n", "expected an OpenAPI document (a mapping), found"),
    ("openapi: 3.1.0\npaths: [/a]\n", "paths: expected a mapping, found"),
])
def test_a_file_that_cannot_be_merged_stops_the_start_with_its_name(tmp_path, text, message):
    out = tmp_path / "api.yaml"
    out.write_text(text)
    with pytest.raises(flowtap.StartupError) as info:
        with capture("openapi", config=openapi_config(out)):
            pass
    assert f"sink 'openapi': {out}: " in str(info.value) and message in str(info.value)
    assert out.read_text() == text  # never overwritten


def test_a_bad_origin_is_a_config_error_naming_the_key(tmp_path):
    config = tmp_path / "flowtap.toml"
    config.write_text('[sinks.openapi]\npath = "api.yaml"\norigins = ["https://api.example.com/v1/"]\n')
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2, result.stdout
    assert "origins" in result.stderr and "https://api.example.com/v1/" in result.stderr
    assert 'expected origins such as "https://api.example.com"' in result.stderr
