"""The OpenAPI sink on real traffic: httpx through `flowtap run`'s proxy to an API written here.

The description is judged by tools nobody here wrote: openapi-spec-validator says it is
OpenAPI 3.1, and openapi-core validates every request and response the session's HAR holds
against it. Two sessions merge into one file, hand edits survive, and no credential the
clients sent (or the server returned) is in it.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate
from ruamel.yaml import YAML

from clirun import flowtap
from test_end_to_end import start_run, stop_run
from upstream import free_port

pytestmark = pytest.mark.timeout(180)

BEARER = "tok-3f9a8b7c6d5e4f"
API_KEY = "key-a1b2c3d4e5f6"
QUERY_KEY = "qk-998877665544"
PASSWORD = "pw-s3cr3t-w0rd"
SESSION = "sess-0a1b2c3d4e"
ISSUED = "jwt-issued-7g8h9i"
SECRETS = (BEARER, API_KEY, QUERY_KEY, PASSWORD, SESSION, ISSUED,
           base64.b64encode(f"alice:{PASSWORD}".encode()).decode())

USERS = {n: {"id": n, "name": name, "email": f"{name}@example.com", "role": role,
             "created": f"2024-0{n % 9 + 1}-1{n % 9}T10:00:00Z", "manager": None if n == 1 else 1}
         for n, name, role in ((1, "ann", "admin"), (2, "bob", "member"), (3, "cy", "member"),
                               (4, "dee", "guest"), (5, "eve", "member"))}
ORDERS = {str(uuid.UUID(int=n)): {"id": str(uuid.UUID(int=n)), "total": 9.5 * n,
                                  "items": [{"sku": f"SKU-{n}{i}", "qty": i} for i in range(1, n % 3 + 2)],
                                  "status": ("open", "paid", "shipped")[n % 3], "placed": f"2024-05-0{n}"}
          for n in range(1, 7)}


class Api(http.server.BaseHTTPRequestHandler):
    """users (bearer), orders (an API key in a header, or ?api_key=), a health check, a login
    (basic, sets a session cookie), a CSV receipt, 4xx and 5xx."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: object, content_type: str = "application/json", headers=()) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def route(self, method: str) -> None:
        url = urlsplit(self.path)
        parts, query = url.path.strip("/").split("/"), parse_qs(url.query)
        body = self.body()
        if parts == ["health"]:
            return self.send(200, "ok", "text/plain; charset=utf-8")
        if parts == ["login"] and method == "POST":
            if self.headers.get("Authorization") != "Basic " + SECRETS[-1]:
                return self.send(401, {"error": "bad credentials"})
            return self.send(200, {"token": ISSUED, "expires": "2030-01-01T00:00:00Z"},
                             headers=[("Set-Cookie", f"session={SESSION}; Path=/; HttpOnly")])
        if parts[0] == "users":
            if self.headers.get("Authorization") != f"Bearer {BEARER}" and f"session={SESSION}" not in (
                    self.headers.get("Cookie") or ""):
                return self.send(401, {"error": "unauthorized"})
            if parts == ["users"] and method == "GET":
                limit = int(query.get("limit", ["10"])[0])
                return self.send(200, list(USERS.values())[:limit])
            if parts == ["users"] and method == "POST":
                sent = json.loads(body)
                if "name" not in sent:
                    return self.send(400, {"error": "a name is required"})
                return self.send(201, {"id": 6, "name": sent["name"], "email": sent.get("email"),
                                       "role": "member", "created": "2024-06-01T00:00:00Z", "manager": 1})
            user = USERS[1] if parts[1:] == ["me"] else USERS.get(int(parts[1]) if parts[1].isdigit() else 0)
            if user is None:
                return self.send(404, {"error": "no such user"})
            if method == "DELETE":
                return self.send(204, "")
            return self.send(200, user)
        if parts[0] == "orders":
            if API_KEY not in (self.headers.get("X-API-Key"), *query.get("api_key", [])):
                return self.send(403, {"error": "forbidden"})
            if len(parts) == 1:
                chosen = [o for o in ORDERS.values() if o["status"] in query.get("status", [o["status"]])]
                return self.send(200, {"orders": chosen, "count": len(chosen)})
            order = ORDERS.get(parts[1])
            if order is None:
                return self.send(404, {"error": "no such order"})
            if parts[2:] == ["receipt"]:
                return self.send(200, f"sku,qty\n{order['items'][0]['sku']},1\n", "text/csv")
            return self.send(200, order)
        if parts == ["boom"]:
            return self.send(500, {"error": "it broke", "trace": None})
        return self.send(404, {"error": "not found"})


@pytest.fixture(scope="module")
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def first_session(client: httpx.Client, api: str) -> None:
    bearer = {"Authorization": f"Bearer {BEARER}"}
    assert client.get(f"{api}/health").text == "ok"
    assert client.get(f"{api}/users").status_code == 401
    assert len(client.get(f"{api}/users", params={"limit": 3}, headers=bearer).json()) == 3
    for n in (1, 2, 3, 4, 5, 9, 3, 4):
        client.get(f"{api}/users/{n}", headers=bearer)
    assert client.get(f"{api}/users/me", headers=bearer).json()["id"] == 1
    assert client.post(f"{api}/users", json={"name": "fay", "email": "fay@example.com"},
                       headers=bearer).status_code == 201
    assert client.post(f"{api}/users", json={"email": "x@example.com"}, headers=bearer).status_code == 400
    assert client.delete(f"{api}/users/2", headers=bearer).status_code == 204
    for status in ("open", "paid", "shipped", "open", "paid", "shipped"):
        client.get(f"{api}/orders", params={"status": status}, headers={"X-API-Key": API_KEY})
    assert client.get(f"{api}/orders", params={"api_key": QUERY_KEY}).status_code == 403
    for order in list(ORDERS)[:3]:
        assert client.get(f"{api}/orders/{order}", headers={"X-API-Key": API_KEY}).status_code == 200
    assert client.get(f"{api}/orders/{list(ORDERS)[0]}/receipt",
                      headers={"X-API-Key": API_KEY}).text.startswith("sku,qty")
    assert client.get(f"{api}/boom").status_code == 500


def second_session(client: httpx.Client, api: str) -> None:
    login = client.post(f"{api}/login", auth=("alice", PASSWORD))
    assert login.json()["token"] == ISSUED
    assert client.get(f"{api}/users/me").status_code == 200  # with the session cookie
    assert client.get(f"{api}/users/6", headers={"Authorization": f"Bearer {BEARER}"}).status_code == 404
    assert client.get(f"{api}/orders", params={"api_key": API_KEY, "status": "paid"}).status_code == 200
    assert client.get(f"{api}/orders/{list(ORDERS)[4]}", headers={"X-API-Key": API_KEY}).status_code == 200


def capture(tmp_path: Path, api: str, traffic) -> Path:
    """Run `flowtap run` with the OpenAPI sink (and the HAR) while ``traffic`` goes through it; the HAR."""
    port = free_port()
    before = set((tmp_path / "out").glob("*.har")) if (tmp_path / "out").exists() else set()
    proc = start_run(tmp_path, port, "--set", "sinks.openapi.path=out/api.yaml")
    try:
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as client:
            traffic(client, api)
    finally:
        stop_run(proc)
    (har,) = set((tmp_path / "out").glob("*.har")) - before
    return har


def check_against_har(spec_path: Path, har: Path) -> int:
    """Validate every request and response of ``har`` against the description; how many there were."""
    spec = OpenAPI.from_file_path(str(spec_path))
    entries = json.loads(har.read_text())["log"]["entries"]
    for entry in entries:
        request, response = entry["request"], entry["response"]
        url = urlsplit(request["url"])
        posted = request.get("postData") or {}
        mock_request = MockRequest(
            f"{url.scheme}://{url.netloc}", request["method"], url.path,
            args={q["name"]: q["value"] for q in request["queryString"]},
            headers={h["name"]: h["value"] for h in request["headers"]},
            cookies={c["name"]: c["value"] for c in request["cookies"]},
            data=posted.get("text", "").encode(), content_type=posted.get("mimeType", ""))
        content = response["content"]
        data = content.get("text", "")
        data = base64.b64decode(data) if content.get("encoding") == "base64" else data.encode()
        mock_response = MockResponse(data, response["status"],
                                     headers={h["name"]: h["value"] for h in response["headers"]},
                                     content_type=content.get("mimeType", ""))
        where = f"{request['method']} {request['url']} → {response['status']}"
        try:
            spec.validate_request(mock_request)
            spec.validate_response(mock_request, mock_response)
        except Exception as exc:  # openapi-core's errors nest their reasons
            reasons = getattr(exc, "schema_errors", None) or getattr(exc, "__cause__", None)
            raise AssertionError(f"{where}: {exc!r}: {reasons!r}") from exc
    return len(entries)


def no_secret_in(path: Path) -> None:
    text = path.read_text()
    for secret in SECRETS:
        assert secret not in text, secret


def test_a_description_from_real_traffic_judged_by_openapi_tools(tmp_path, api):
    har = capture(tmp_path, api, first_session)
    spec_path = tmp_path / "out" / "api.yaml"
    text = spec_path.read_text()
    doc = YAML(typ="safe").load(text)
    validate(doc)  # OpenAPI 3.1, by openapi-spec-validator
    assert "&id" not in text  # no YAML anchors: each part written out, as a person reads it
    assert check_against_har(spec_path, har) == 27
    no_secret_in(spec_path)

    paths = doc["paths"]
    assert sorted(paths) == ["/boom", "/health", "/orders", "/orders/{orderId}", "/orders/{orderId}/receipt",
                             "/users", "/users/me", "/users/{userId}"]
    assert doc["servers"] == [{"url": api}]
    user = paths["/users/{userId}"]["get"]
    assert user["parameters"] == [{"name": "userId", "in": "path", "required": True,
                                   "schema": {"type": "integer"}}]
    assert set(user["responses"]) == {"200", "404"}
    schema = user["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["properties"]["created"] == {"type": "string", "format": "date-time"}
    assert schema["properties"]["email"] == {"type": "string", "format": "email"}
    assert schema["properties"]["manager"] == {"type": ["integer", "null"]}
    assert schema["properties"]["role"] == {"type": "string", "enum": ["admin", "guest", "member"]}
    assert set(schema["required"]) == {"id", "name", "email", "role", "created", "manager"}
    assert set(paths["/users/{userId}"]["delete"]["responses"]) == {"204"}
    orders = paths["/orders"]["get"]
    assert {"name": "status", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["open", "paid", "shipped"]}} in orders["parameters"]
    assert not any(p["name"] == "api_key" for p in orders["parameters"])  # a credential, not a parameter
    listed = orders["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["orders"]
    assert listed["items"]["properties"]["id"] == {"type": "string", "format": "uuid"}
    assert listed["items"]["properties"]["items"]["items"]["required"] == ["sku", "qty"]
    order_id = paths["/orders/{orderId}"]["get"]["parameters"][0]
    assert order_id["schema"] == {"type": "string", "format": "uuid"}
    receipt = paths["/orders/{orderId}/receipt"]["get"]["responses"]["200"]["content"]["text/csv"]
    assert receipt == {"example": "sku,qty\nSKU-11,1\n"}  # text, but not text/plain: any content
    assert paths["/health"]["get"]["responses"]["200"]["content"]["text/plain"]["example"] == "ok"
    assert set(paths["/users"]["post"]["responses"]) == {"201", "400"}
    assert paths["/users"]["post"]["requestBody"]["required"] is True
    sent = paths["/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert sent == {"type": "object", "properties": {"name": {"type": "string"},
                                                     "email": {"type": "string", "format": "email"}},
                    "required": ["email"]}

    schemes = doc["components"]["securitySchemes"]
    assert schemes == {"bearerAuth": {"type": "http", "scheme": "bearer"},
                       "xApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                       "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"}}
    assert paths["/users"]["get"]["security"] == [{"bearerAuth": []}, {}]  # one call went without
    assert paths["/users/{userId}"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/orders"]["get"]["security"] == [{"apiKeyQuery": []}, {"xApiKey": []}]
    assert "security" not in paths["/health"]["get"]


def test_a_second_session_merges_and_keeps_hand_edits(tmp_path, api):
    capture(tmp_path, api, first_session)
    spec_path = tmp_path / "out" / "api.yaml"
    yaml = YAML()
    doc = yaml.load(spec_path.read_text())
    # What a person does next: a title, descriptions, an operationId, a better parameter name, a comment.
    doc["info"]["title"] = "Shop API"
    doc["paths"]["/users/{userId}"]["get"]["summary"] = "One user"
    doc["paths"]["/users/{userId}"]["get"]["operationId"] = "getUser"
    doc["paths"]["/users/{uid}"] = doc["paths"].pop("/users/{userId}")
    for op in doc["paths"]["/users/{uid}"].values():
        op["parameters"][0]["name"] = "uid"
        op["parameters"][0]["description"] = "The user's number"
    props = doc["paths"]["/orders/{orderId}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"]["properties"]
    props["total"]["description"] = "In euros"
    doc.yaml_set_comment_before_after_key("paths", before="Reviewed by hand")
    with spec_path.open("w") as fh:
        yaml.dump(doc, fh)

    har = capture(tmp_path, api, second_session)
    text = spec_path.read_text()
    doc = YAML(typ="safe").load(text)
    validate(doc)
    assert check_against_har(spec_path, har) == 5
    no_secret_in(spec_path)
    assert "# Reviewed by hand" in text
    assert doc["info"]["title"] == "Shop API"
    users = doc["paths"]["/users/{uid}"]
    assert "/users/{userId}" not in doc["paths"]
    assert (users["get"]["summary"], users["get"]["operationId"]) == ("One user", "getUser")
    assert users["get"]["parameters"][0] == {"name": "uid", "in": "path", "required": True,
                                             "description": "The user's number",
                                             "schema": {"type": "integer"}}
    assert set(users["get"]["responses"]) == {"200", "404"}
    order = doc["paths"]["/orders/{orderId}"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"]
    assert order["properties"]["total"] == {"type": "number", "description": "In euros"}
    # Added by the second session: the login, the cookie, Basic auth; the first session's operations stay.
    assert doc["paths"]["/login"]["post"]["security"] == [{"basicAuth": []}]
    assert doc["components"]["securitySchemes"]["sessionCookie"] == {"type": "apiKey", "in": "cookie",
                                                                     "name": "session"}
    assert {"sessionCookie": []} in doc["paths"]["/users/me"]["get"]["security"]
    assert "/boom" in doc["paths"] and "/health" in doc["paths"]
    login = doc["paths"]["/login"]["post"]["responses"]["200"]["content"]["application/json"]
    assert login["example"]["token"] == "REDACTED"
    # The first session's HAR still validates against the widened description.
    (first,) = set((tmp_path / "out").glob("*.har")) - {har}
    assert check_against_har(spec_path, first) == 27


def test_export_of_a_stored_session_merges_into_the_file(tmp_path, api):
    capture(tmp_path, api, first_session)
    target = tmp_path / "exported.json"
    health = {"get": {"summary": "Is it up?", "responses": {"200": {"description": "Up"}}}}
    target.write_text(json.dumps({"openapi": "3.1.0", "info": {"title": "Mine", "version": "2"},
                                  "paths": {"/health": health}}))
    done = flowtap("export", "last", "--sink", "openapi", "-o", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(target.read_text())
    validate(doc)
    assert doc["info"] == {"title": "Mine", "version": "2", "description": doc["info"]["description"]}
    assert doc["paths"]["/health"]["get"]["summary"] == "Is it up?"
    assert doc["paths"]["/health"]["get"]["responses"]["200"]["description"] == "Up"
    assert "/orders/{orderId}" in doc["paths"]
    no_secret_in(target)
