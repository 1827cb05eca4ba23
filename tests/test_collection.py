"""The collection sink: Postman Collection v2.1.0 judged by its schema and replayed by newman."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

import flowtap
from flowtap import Headers
from flowtap.testing import capture, make_flow

from npmtools import POSTMAN, Judge, load_json, npm_install

MULTIPART = (b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello\r\n"
             b"--XyZ\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nt0k\r\n"
             b"--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.bin\"\r\n"
             b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\x02\r\n--XyZ--\r\n")


@pytest.fixture(scope="session")
def judge():
    return Judge(npm_install("postman", POSTMAN))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops mid-request cannot hold a server thread for ever

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append((self.command, self.path, dict(self.headers.items()), body))
        reply = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.received = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def config(path, **options):
    return {"sinks": {"collection": {"path": str(path), **options}}, "session": {"name": "demo"}}


def run_collection(tmp_path, *flows, **options) -> dict:
    out = tmp_path / "out.postman_collection.json"
    out.unlink(missing_ok=True)  # a run never overwrites an earlier run's collection (or its bodies)
    shutil.rmtree(tmp_path / (out.name + ".bodies"), ignore_errors=True)
    with capture("collection", config=config(out, **options)) as cap:
        cap.feed(*flows)
    return load_json(out)


def api_flows(base: str, other: str) -> list[flowtap.Flow]:
    """What a client of a small API sends, captured at ``base`` (and one call to ``other``)."""
    return [
        make_flow(url=f"{base}/users/42?api_key=K3Y&expand=all",
                  request_headers=[("Authorization", "Bearer s3cret"), ("Accept", "application/json")]),
        make_flow(url=f"{base}/users/43?api_key=K3Y&expand=all",
                  request_headers=[("Authorization", "Bearer s3cret"), ("Accept", "application/json")]),
        make_flow(url=f"{base}/users", method="POST", request_body=b'{"name": "ann"}', status=201),
        make_flow(url=f"{base}/login", method="POST", request_body=b"user=ann&password=pw%26d",
                  request_headers=[("Content-Type", "application/x-www-form-urlencoded")]),
        make_flow(url=f"{base}/upload", method="POST", request_body=MULTIPART.replace(
                      b'--XyZ\r\nContent-Disposition: form-data; name="doc"; filename="a.bin"\r\n'
                      b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\x02\r\n", b""),
                  request_headers=[("Content-Type", "multipart/form-data; boundary=XyZ")]),
        make_flow(url=f"{base}/graphql", method="POST",
                  request_body=b'{"query": "query { user(id: 1) { name } }", "variables": {"v": 1}}'),
        make_flow(url=f"{base}/notes/550e8400-e29b-41d4-a716-446655440000", method="PUT",
                  request_body=b"<note>hi</note>", request_headers=[("Content-Type", "application/xml"),
                                                                   ("Cookie", "sid=c00kie")]),
        make_flow(url=f"{base}/users/42", method="DELETE", status=204, response_body=b""),
        make_flow(url=f"{other}/health", response_body=b"ok",
                  response_headers=[("Content-Type", "text/plain")]),
    ]


def test_newman_replays_the_collection_against_the_original_server(tmp_path, server, judge):
    port = server.server_address[1]
    flows = api_flows(f"http://127.0.0.1:{port}", f"http://localhost:{port}")
    out = tmp_path / "api.json"
    with capture("collection", config=config(out, organize="domain+endpoint", include_secrets=True)) as cap:
        cap.feed(*flows)
    assert judge.postman_errors(out) == ""
    variables = {v["key"]: v["value"] for v in load_json(out)["variable"]}
    assert variables["baseUrl"] == f"http://127.0.0.1:{port}" and variables["baseUrl2"] == f"http://localhost:{port}"

    proc = judge.newman(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    received = server.received
    # folders in order of their first request; requests in capture order within each
    assert [(m, p) for m, p, _, _ in received] == [
        ("GET", "/users/42?api_key=K3Y&expand=all"), ("GET", "/users/43?api_key=K3Y&expand=all"),
        ("POST", "/users"), ("POST", "/login"), ("POST", "/upload"), ("POST", "/graphql"),
        ("PUT", "/notes/550e8400-e29b-41d4-a716-446655440000"), ("DELETE", "/users/42"), ("GET", "/health"),
    ]
    by_path = {(m, p): (h, b) for m, p, h, b in received}
    headers, _ = by_path[("GET", "/users/42?api_key=K3Y&expand=all")]
    assert headers["Authorization"] == "Bearer s3cret"
    assert json.loads(by_path[("POST", "/users")][1]) == {"name": "ann"}
    assert parse_qsl(by_path[("POST", "/login")][1].decode()) == [("user", "ann"), ("password", "pw&d")]
    upload_headers, upload = by_path[("POST", "/upload")]
    assert upload_headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="title"\r\n\r\nHello' in upload and b"t0k" in upload
    graphql = json.loads(by_path[("POST", "/graphql")][1])
    assert graphql["query"] == "query { user(id: 1) { name } }" and graphql["variables"] == {"v": 1}
    note_headers, note = by_path[("PUT", "/notes/550e8400-e29b-41d4-a716-446655440000")]
    assert note == b"<note>hi</note>" and note_headers["Cookie"] == "sid=c00kie"


def test_structure_variables_and_secrets(tmp_path, judge):
    flows = api_flows("https://api.example.com", "http://localhost:8080")
    out = tmp_path / "out.json"
    with capture("collection", config=config(out, organize="endpoint", name="My API")) as cap:
        cap.feed(*flows)
    assert judge.postman_errors(out) == ""
    text = out.read_text()
    for secret in ("s3cret", "K3Y", "pw&d", "pw%26d", "t0k", "c00kie"):
        assert secret not in text
    doc = json.loads(text)
    info = doc["info"]
    assert info["name"] == "My API" and info["schema"].endswith("/v2.1.0/collection.json")
    assert len(info["_postman_id"]) == 36
    assert [f["name"] for f in doc["item"]] == [
        "GET /users/:userId", "POST /users", "POST /login", "POST /upload", "POST /graphql",
        "PUT /notes/:noteId", "DELETE /users/:userId", "GET /health"]
    first, second = doc["item"][0]["item"]
    assert (first["name"], second["name"]) == ("GET api.example.com/users/42?api_key={{apiKey}}&expand=all",
                                               "GET api.example.com/users/43?api_key={{apiKey}}&expand=all")
    url = first["request"]["url"]
    assert url["raw"] == "{{baseUrl}}/users/:userId?api_key={{apiKey}}&expand=all"
    assert url["host"] == ["{{baseUrl}}"] and url["path"] == ["users", ":userId"]
    assert url["variable"] == [{"key": "userId", "value": "42"}]
    assert url["query"] == [{"key": "api_key", "value": "{{apiKey}}"}, {"key": "expand", "value": "all"}]
    assert {"key": "Authorization", "value": "{{authorization}}"} in first["request"]["header"]
    example = first["response"][0]
    assert (example["code"], example["status"], example["name"]) == (200, "OK", "200 OK")
    assert example["body"] == '{"ok": true}' and example["_postman_previewlanguage"] == "json"
    assert example["originalRequest"]["url"]["raw"] == url["raw"]
    variables = {v["key"]: v for v in doc["variable"]}
    assert variables["baseUrl"]["value"] == "https://api.example.com"
    assert variables["baseUrl2"]["value"] == "http://localhost:8080"
    assert {k for k in variables if not k.startswith("baseUrl")} == {
        "authorization", "apiKey", "password", "accessToken", "cookie"}
    assert all(variables[k]["value"] == "" for k in ("authorization", "apiKey", "password", "cookie"))

    bodies = {f["name"]: f["item"][0]["request"].get("body") for f in doc["item"]}
    assert bodies["POST /users"] == {"mode": "raw", "raw": '{"name": "ann"}',
                                     "options": {"raw": {"language": "json"}}}
    assert bodies["POST /login"]["urlencoded"] == [{"key": "user", "value": "ann"},
                                                   {"key": "password", "value": "{{password}}"}]
    assert bodies["POST /upload"]["formdata"] == [{"key": "title", "value": "Hello", "type": "text"},
                                                  {"key": "access_token", "value": "{{accessToken}}",
                                                   "type": "text"}]
    assert bodies["POST /graphql"] == {"mode": "graphql", "graphql": {
        "query": "query { user(id: 1) { name } }", "variables": '{\n  "v": 1\n}'}}
    assert bodies["PUT /notes/:noteId"]["options"]["raw"]["language"] == "xml"


@pytest.mark.parametrize("organize", ["none", "domain", "endpoint", "domain+endpoint"])
@pytest.mark.parametrize("variables", [True, False])
def test_every_layout_is_valid(tmp_path, judge, organize, variables):
    doc = run_collection(tmp_path, *api_flows("https://api.example.com:8443", "http://[::1]:8080"),
                         organize=organize, variables=variables, dedupe=organize == "endpoint")
    assert judge.postman_errors(tmp_path / "out.postman_collection.json") == ""
    if organize == "domain":
        assert [f["name"] for f in doc["item"]] == ["api.example.com:8443", "::1:8080"]
    if not variables:
        url = (doc["item"][0] if organize == "none" else doc["item"][0]["item"][0])
        while "item" in url:
            url = url["item"][0]
        url = url["request"]["url"]
        assert (url["protocol"], url["host"], url["port"]) == ("https", ["api", "example", "com"], "8443")
        assert url["raw"].startswith("https://api.example.com:8443/users/")
        assert not [v for v in doc["variable"] if v["key"].startswith("baseUrl")]
    if organize == "endpoint":  # deduped: /users/42 and /users/43 are one request with two examples
        users = doc["item"][0]["item"]
        assert len(users) == 1 and len(users[0]["response"]) == 2


def test_multipart_files_binary_bodies_and_media_responses(tmp_path, judge):
    upload = make_flow(url="https://api.example.com/upload", method="POST", request_body=MULTIPART,
                       request_headers=[("Content-Type", "multipart/form-data; boundary=XyZ")])
    binary = make_flow(url="https://api.example.com/raw", method="POST", request_body=b"\x00\xffdata",
                       request_headers=[("Content-Type", "application/octet-stream")],
                       response_body=b"\x01\x02\xff",
                       response_headers=[("Content-Type", "application/octet-stream")])
    image = make_flow(url="https://api.example.com/logo.png", response_body=b"\x89PNG\r\n\x1a\n",
                      response_headers=[("Content-Type", "image/png")])
    doc = run_collection(tmp_path, upload, binary, image)
    assert judge.postman_errors(tmp_path / "out.postman_collection.json") == ""
    form = doc["item"][0]["request"]
    field = form["body"]["formdata"][2]
    assert field["src"].startswith("out.postman_collection.json.bodies/") and field["src"].endswith("/a.bin")
    assert field == {"key": "doc", "type": "file", "src": field["src"],
                     "contentType": "application/octet-stream"}
    assert (tmp_path / field["src"]).read_bytes() == b"\x00\x01\x02"
    assert (tmp_path / field["src"]).stat().st_mode & 0o777 == 0o600
    assert not any(h["key"].lower() == "content-type" for h in form["header"])  # newman sets the boundary
    raw = doc["item"][1]["request"]
    assert raw["body"]["mode"] == "file" and "description" not in raw
    assert (tmp_path / raw["body"]["file"]["src"]).read_bytes() == b"\x00\xffdata"
    assert doc["item"][1]["response"][0]["body"] == "AQL/"
    assert "body" not in doc["item"][2]["response"][0]  # Postman keeps no image bodies
    assert run_collection(tmp_path, image, save_responses=False)["item"][0]["response"] == []


def test_an_example_body_above_max_example_size_is_cut_and_says_its_size(tmp_path, judge):
    """Text stays text (the cut never splits a UTF-8 character); the real size is in the name."""
    text = ('{"name": "' + "é" * 100_000 + '"}').encode()  # 200 kB, é is 2 bytes: 999 splits one
    big = make_flow(url="https://api.example.com/big", response_body=text,
                    response_headers=[("Content-Type", "application/json")])
    binary = make_flow(url="https://api.example.com/blob", response_body=b"\xff" * 5000,
                       response_headers=[("Content-Type", "application/octet-stream")])
    small = make_flow(url="https://api.example.com/small", response_body=b'{"ok": true}',
                      response_headers=[("Content-Type", "application/json")])
    doc = run_collection(tmp_path, big, binary, small, max_example_size="999")
    assert judge.postman_errors(tmp_path / "out.postman_collection.json") == ""
    cut, blob, whole = (item["response"][0] for item in doc["item"])
    assert cut["body"] == text[:998].decode() and cut["name"] == "200 OK (body cut to 998 B of 195.3 KiB)"
    assert len(blob["body"]) == 1332 and blob["name"].endswith("(body cut to 999 B of 4.9 KiB)")  # base64
    assert whole["body"] == '{"ok": true}' and whole["name"] == "200 OK"
    assert doc["item"][0]["request"]["url"]["raw"].endswith("/big")  # the request is as it was
    default = run_collection(tmp_path, big)["item"][0]["response"][0]
    assert len(default["body"].encode()) <= 64 * 1024 and "of 195.3 KiB)" in default["name"]


def test_file_is_valid_after_every_flush_and_clear_empties_it(tmp_path):
    out = tmp_path / "live.json"

    def wait_for(count):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if out.exists() and len(load_json(out)["item"]) == count:  # always parses: atomic rewrites
                return
            time.sleep(0.05)
        raise AssertionError(f"{out} never held {count} items")

    with capture("collection", config=config(out)) as cap:
        cap.feed(make_flow(url="https://a.example/1"))
        wait_for(1)
        cap.feed(make_flow(url="https://a.example/2"), make_flow(url="https://a.example/3"))
        wait_for(3)
        cap.session.clear()
        cap.feed()
        wait_for(0)
        cap.feed(make_flow(url="https://a.example/4"))
    doc = load_json(out)
    assert [i["name"] for i in doc["item"]] == ["GET a.example/4"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_unwritable_path_fails_at_start_up(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(flowtap.StartupError) as info:
        with capture("collection", config=config(blocker / "out.json")):
            pass
    assert "sink 'collection'" in str(info.value) and str(blocker) in str(info.value)
    assert f"{blocker} is not a directory" in str(info.value)


def test_weird_flows_never_stop_the_sink(tmp_path, judge, caplog):
    flows = [
        make_flow(url="https://ok.example/1"),
        make_flow(url="https://w.example/bytes", request_headers=Headers([("X-Raw", "caf\udce9")])),
        make_flow(url="https://w.example/huge", response_headers=[("X-Big", "v" * 2_000_000)]),
        make_flow(url="https://w.example/none", status=None),
        make_flow(url="https://w.example/charset", method="POST", request_body=b"x=1",
                  request_headers=[("Content-Type", "text/plain; charset=nope")]),
        make_flow(url="https://w.example/badport:99999/x?&&a"),
        make_flow(url="https://w.example/multipart", method="POST", request_body=b"not multipart",
                  request_headers=[("Content-Type", "multipart/form-data")]),
        make_flow(url="https://w.example/graphql", method="POST", request_body=b'{"query": 5}'),
        make_flow(url="https://ok.example/2"),
    ]
    out = tmp_path / "out.json"
    with capture("collection", config=config(out, organize="domain+endpoint")) as cap:
        cap.feed(*flows)
    assert "sink 'collection'" not in caplog.text  # nothing raised
    assert judge.postman_errors(out) == ""
    doc = load_json(out)
    names = [item["name"] for host in doc["item"] for endpoint in host["item"] for item in endpoint["item"]]
    assert len(names) == len(flows)
    weird = doc["item"][1]["item"][0]["item"][0]["request"]
    assert {"key": "X-Raw", "value": "café"} in weird["header"]
    assert doc["item"][1]["item"][2]["item"][0]["response"] == []  # no response, no example


class _Rewrites:
    """Watches the collection sink's rewrites from the inside, to drive them from a test.

    Wraps the sink's ``atomic_writer``: ``during(data)`` runs on the sink's
    thread after each write into a rewrite's temporary file (the rewrite is
    under way, its file half written), and ``done`` is set each time a rewrite
    has replaced the collection on disk; ``snapshots`` holds the file as each
    rewrite left it.
    """

    def __init__(self, monkeypatch, during=None):
        import contextlib

        import flowtap_collection.sink as module

        self.during = during  # called with the data of each write
        self.done = threading.Event()
        self.snapshots: list[bytes] = []
        real = module.atomic_writer
        rewrites = self

        class Out:
            def __init__(self, fh):
                self.fh = fh

            def write(self, data):
                result = self.fh.write(data)
                if rewrites.during is not None:
                    rewrites.during(bytes(data))
                return result

            def __getattr__(self, name):
                return getattr(self.fh, name)

        @contextlib.contextmanager
        def watched(path, *args, **kwargs):
            with real(path, *args, **kwargs) as fh:
                yield Out(fh)
            rewrites.snapshots.append(path.read_bytes())
            rewrites.done.set()

        monkeypatch.setattr(module, "atomic_writer", watched)

    def wait(self, timeout=10):
        assert self.done.wait(timeout), "no rewrite in time"
        self.done.clear()


def test_a_response_added_during_a_rewrite_leaves_valid_json(tmp_path, monkeypatch, judge):
    """dedupe = true: a second response to a request arrives while the collection is being rewritten."""
    import flowtap_collection.sink as module

    monkeypatch.setattr(module, "INTERVAL", 0.0)  # rewrite at each flush: the test needs no waiting
    out = tmp_path / "live.json"
    later = [make_flow(url="https://a.example/users/1", response_body=b'{"n": 2}')]

    def respond(data):  # once, at the rewrite's first write into its temporary file
        if later:
            cap.sink("collection").write(later.pop())

    rewrites = _Rewrites(monkeypatch)
    with capture("collection", config=config(out, dedupe=True)) as cap:
        cap.feed(make_flow(url="https://a.example/users/1", response_body=b'{"n": 1}'))
        while b"users/1" not in (rewrites.snapshots or [b""])[-1]:
            rewrites.wait()  # the request and its first response are on disk; no rewrite is due
        first = len(rewrites.snapshots)
        rewrites.during = respond
        cap.feed(make_flow(url="https://a.example/users/2"))
        while later:  # a rewrite that had written all before `during` was set may end first
            rewrites.wait()
        rewrites.wait()  # the rewrite it arrived during (if still under way), or the next
        for snapshot in rewrites.snapshots[first:]:  # the file as each rewrite left it: whole, valid JSON
            doc = json.loads(snapshot)
            assert [r["body"] for r in doc["item"][0]["response"]] in (['{"n": 1}'], ['{"n": 1}', '{"n": 2}'])
        assert judge.postman_errors(out) == ""
    doc = load_json(out)
    assert [r["body"] for r in doc["item"][0]["response"]] == ['{"n": 1}', '{"n": 2}']


def _requests(doc):
    """Every request of a collection, folders flattened."""
    for item in doc["item"]:
        yield from (_requests(item) if "item" in item else [item])


@pytest.mark.parametrize(("organize", "dedupe"), [("none", False), ("none", True), ("endpoint", False),
                                                  ("domain+endpoint", True)])
def test_the_file_is_a_whole_collection_whenever_it_is_read(tmp_path, monkeypatch, judge, organize, dedupe):
    """Flows arrive while rewrites are under way (one at each write into the rewrite's file), and a
    reader reads the file all along: every read, and the file each rewrite leaves, is a valid collection."""
    import flowtap_collection.sink as module

    monkeypatch.setattr(module, "INTERVAL", 0.0)
    monkeypatch.setattr(module, "BUDGET", 0)  # a rewrite as soon as one is due
    out = tmp_path / "live.json"
    flows = [make_flow(url=f"https://{'ab'[i % 2]}.example/{('users', 'items', 'v1/orders')[i % 3]}/{i % 5}",
                       method=("GET", "POST")[i % 4 == 3], response_body=f'{{"i": {i}}}') for i in range(90)]
    during = flows[1::2]  # added by the sink's own thread, at a random write of a rewrite
    fed = flows[::2]
    rng = random.Random(organize)
    added_in = []  # the rewrites during which one was added

    def arrive(data):  # one flow in each rewrite, after a random write (at the latest, its last)
        rewrite = len(rewrites.snapshots)
        if during and rewrite not in added_in and (rng.random() < 0.3 or data.endswith(b"}\n")):
            added_in.append(rewrite)
            cap.sink("collection").write(during.pop(0))

    reads, bad = [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                data = out.read_bytes()
            except FileNotFoundError:  # not written yet
                continue
            try:
                reads.append(len(list(_requests(json.loads(data)))))
            except ValueError as exc:
                bad.append((exc, data))
            time.sleep(0.001)

    rewrites = _Rewrites(monkeypatch, during=arrive)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with capture("collection", config=config(out, organize=organize, dedupe=dedupe)) as cap:
            for flow in fed:
                done = len(rewrites.snapshots)
                cap.feed(flow)
                while len(rewrites.snapshots) == done:
                    rewrites.wait()
    finally:
        stop.set()
        thread.join(10)
    assert not bad, bad[0]
    assert reads and len(rewrites.snapshots) > len(fed) and not during
    counts = []
    for snapshot in rewrites.snapshots:
        doc = json.loads(snapshot)
        requests = list(_requests(doc))
        counts.append(sum(len(r["response"]) for r in requests))
        for request in requests:
            assert request["response"] and all(e["body"].startswith('{"i": ') for e in request["response"])
    assert counts == sorted(counts)  # nothing a rewrite wrote is missing from a later one
    for number in (len(rewrites.snapshots) // 2, -1):
        (tmp_path / "snapshot.json").write_bytes(rewrites.snapshots[number])
        assert judge.postman_errors(tmp_path / "snapshot.json") == ""

    requests = list(_requests(load_json(out)))
    bodies = sorted(int(json.loads(e["body"])["i"]) for r in requests for e in r["response"])
    assert bodies == list(range(len(flows)))  # every flow, once
    keys = [(r["request"]["method"], r["request"]["url"]["raw"]) for r in requests]
    assert len(keys) == (len(set(keys)) if dedupe else len(flows))


def test_a_rewrite_the_disk_refuses_is_reported_and_tried_again(tmp_path, monkeypatch, caplog):
    """A full disk at a rewrite: said with the reason, the file left as it was, written in full once
    the disk has room; at the end, the flows the last collection on disk lacks count as lost."""
    import contextlib
    import errno

    import flowtap_collection.sink as module

    monkeypatch.setattr(module, "INTERVAL", 0.0)
    monkeypatch.setattr(module, "BUDGET", 0)
    out = tmp_path / "live.json"
    real, full = module.atomic_writer, threading.Event()
    tried = threading.Semaphore(0)  # released after each rewrite, done or refused

    @contextlib.contextmanager
    def writer(path, *args, **kwargs):
        try:
            if full.is_set():
                raise OSError(errno.ENOSPC, "No space left on device")
            with real(path, *args, **kwargs) as fh:
                yield fh
        finally:
            tried.release()

    def rewritten(items):
        while True:
            assert tried.acquire(timeout=10), "no rewrite in time"
            if out.exists() and len(load_json(out)["item"]) == items:
                return

    def health():
        cap.feed()  # the worker has reported what the rewrite raised
        (found,) = [h for h in cap.capture.health() if h.name == "collection"]
        return found

    monkeypatch.setattr(module, "atomic_writer", writer)
    with capture("collection", config=config(out)) as cap:
        cap.feed(make_flow(url="https://a.example/1"))
        rewritten(1)
        full.set()
        cap.feed(make_flow(url="https://a.example/2"), make_flow(url="https://a.example/3"))
        assert tried.acquire(timeout=10)
        assert health().state == "failing" and "No space left on device" in health().last_error
        assert str(out) in health().last_error and health().missed == 0
        assert [i["name"] for i in load_json(out)["item"]] == ["GET a.example/1"]
        full.clear()
        cap.feed(make_flow(url="https://a.example/4"))
        rewritten(4)
        full.set()
        cap.feed(make_flow(url="https://a.example/5"))
    (found,) = [h for h in cap.capture.health() if h.name == "collection"]
    assert found.missed == 1  # the 5th: the session ended before the disk had room for it
    assert not cap.capture.clean
    assert len(load_json(out)["item"]) == 4
    assert "No space left on device" in caplog.text


def test_a_rerun_after_a_crash_never_overwrites_the_crashed_sessions_collection(tmp_path):
    """Issue 11, item 10: 941 requests were lost to a rerun that wrote 1."""
    out = tmp_path / "api.postman_collection.json"
    crashed = {"info": {"name": "crashed", "schema": "x"}, "item": [{"name": f"r{i}"} for i in range(941)]}
    out.write_text(json.dumps(crashed))  # what a killed run leaves: its last atomic rewrite
    with capture("collection", config=config(out)) as cap:
        cap.feed(make_flow(url="https://a.example/one"))
    assert load_json(out) == crashed
    rerun = load_json(tmp_path / "api-2.postman_collection.json")
    assert len(rerun["item"]) == 1 and "/one" in json.dumps(rerun["item"])


def test_newman_replays_secrets_cookies_bytes_and_field_order_as_captured(tmp_path, server, judge):
    """Issue 11 item 8: what newman sends is what was captured, judged by a server that logs it."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    octets = bytes(range(251, 256)) + b"\x00bin\x01\x02\x03"  # 11 bytes, not text
    latin1 = "café crème".encode("latin-1")  # 10 bytes; as UTF-8 it would be 12
    utf16 = "hi ☃".encode("utf-16-le")
    flows = [
        make_flow(url=f"{base}/me", request_headers=[("Authorization", "Bearer B")]),
        make_flow(url=f"{base}/me", request_headers=[("Authorization", "Bearer D")]),
        make_flow(url=f"{base}/me", request_headers=[("Authorization", "Bearer B")]),
        make_flow(url=f"{base}/status/404", status=404, response_headers=[
            ("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]),
        make_flow(url=f"{base}/blob", method="POST", request_body=octets,
                  request_headers=[("Content-Type", "application/octet-stream")]),
        make_flow(url=f"{base}/latin", method="POST", request_body=latin1,
                  request_headers=[("Content-Type", "text/plain; charset=iso-8859-1")]),
        make_flow(url=f"{base}/utf16", method="POST", request_body=utf16,
                  request_headers=[("Content-Type", "text/plain; charset=utf-16le")]),
        make_flow(url=f"{base}/login", method="POST", request_body=b"user=alice&pass=p%40ss&remember=1",
                  request_headers=[("Content-Type", "application/x-www-form-urlencoded")]),
        make_flow(url=f"{base}/tags", method="POST", request_body=b"tag=a&2=two&tag=b&password=x%2By",
                  request_headers=[("Content-Type", "application/x-www-form-urlencoded")]),
        make_flow(url=f"{base}/upload", method="POST", request_body=MULTIPART,
                  request_headers=[("Content-Type", "multipart/form-data; boundary=XyZ")]),
    ]
    out = tmp_path / "api.postman_collection.json"
    with capture("collection", config=config(out, organize="endpoint", include_secrets=True)) as cap:
        cap.feed(*flows)
    assert judge.postman_errors(out) == ""
    doc = load_json(out)
    folders = {f["name"]: f["item"] for f in doc["item"]}
    assert "GET /status/:status" in folders
    variables = {v["key"]: v["value"] for v in doc["variable"]}
    assert (variables["authorization"], variables["authorization2"]) == ("Bearer B", "Bearer D")
    sent = [h["value"] for item in folders["GET /me"] for h in item["request"]["header"]
            if h["key"] == "Authorization"]
    assert sent == ["{{authorization}}", "{{authorization2}}", "{{authorization}}"]
    cookies = [h["value"] for h in folders["GET /status/:status"][0]["response"][0]["header"]
               if h["key"] == "Set-Cookie"]
    assert [variables[c.strip("{}")] for c in cookies] == ["a=1; Path=/", "b=2; Path=/"]
    assert folders["POST /tags"][0]["request"]["body"]["raw"] == "tag=a&2=two&tag=b&password={{password}}"

    try:
        proc = judge.newman(out, "--working-dir", str(tmp_path), "--timeout-request", "20000", timeout=60)
    except subprocess.TimeoutExpired as exc:
        # Once in a CI run on a loaded machine newman hung here (at 90 s) after its first requests and
        # never again in isolation: the replay is judged on a second, clean run, and the first one's
        # output is kept for whoever looks into it.
        warnings.warn(f"newman hung; running it again. Its output so far:\n{exc.output!r}", stacklevel=1)
        server.received.clear()
        proc = judge.newman(out, "--working-dir", str(tmp_path), "--timeout-request", "20000", timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    received = server.received
    assert [headers.get("Authorization") for method, path, headers, _ in received if path == "/me"] == [
        "Bearer B", "Bearer D", "Bearer B"]
    got = {path: (headers, body) for method, path, headers, body in received}
    assert got["/blob"][1] == octets and got["/blob"][0]["Content-Type"] == "application/octet-stream"
    assert got["/latin"][1] == latin1 and got["/latin"][0]["Content-Type"] == "text/plain; charset=iso-8859-1"
    assert got["/utf16"][1] == utf16
    assert got["/login"][1] == b"user=alice&pass=p%40ss&remember=1"  # the page's order, its escapes
    assert got["/tags"][1] == b"tag=a&2=two&tag=b&password=x%2By"
    upload = got["/upload"][1]
    assert b'name="doc"; filename="a.bin"' in upload and b"\x00\x01\x02" in upload
    assert upload.index(b'name="title"') < upload.index(b'name="access_token"') < upload.index(b'name="doc"')


def test_path_variable_names():
    from flowtap.endpoints import template

    cases = {
        "users/42": "users/:userId", "status/404": "status/:status", "categories/7": "categories/:categoryId",
        "addresses/3/boxes/2": "addresses/:addressId/boxes/:boxId", "statuses/1": "statuses/:statusId",
        "user-groups/5": "user-groups/:userGroupId", "page/2": "page/:page", "42": ":id",
        "v2/1/2": "v2/:id/:id2", "news/9": "news/:news", "classes/3": "classes/:classId",
        "files/550e8400-e29b-41d4-a716-446655440000": "files/:fileId",
    }
    for path, expected in cases.items():
        assert "/".join(template(path.split("/"))[0]) == expected, path


def test_a_rebuilt_form_body_says_its_field_order_is_lost(tmp_path):
    flow = make_flow(url="https://example.com/login", method="POST", request_body=b"pass=x&user=alice",
                     request_headers=[("Content-Type", "application/x-www-form-urlencoded")],
                     metadata={"request_body_rebuilt": "form-data"})
    request = run_collection(tmp_path, flow)["item"][0]["request"]
    assert "field order is lost" in request["description"]


def test_a_flow_the_spool_refuses_leaves_no_trace_in_the_collection(tmp_path, monkeypatch):
    """A full disk when a flow's piece is kept: that flow is lost (counted), and no empty folder for it
    appears in the collection; the next flows are kept."""
    import errno
    import os

    import flowtap_collection.sink as module

    real, refuse = os.pwrite, threading.Event()

    def pwrite(fd, data, offset):
        if refuse.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(module.os, "pwrite", pwrite)
    out = tmp_path / "c.json"
    with capture("collection", config=config(out, organize="domain")) as cap:
        cap.feed(make_flow(url="https://a.example/1"))
        refuse.set()
        cap.feed(make_flow(url="https://b.example/lost"))
        refuse.clear()
        cap.feed(make_flow(url="https://c.example/3"))
        (health,) = [h for h in cap.capture.health() if h.name == "collection"]
        assert health.missed == 1 and "No space left on device" in health.last_error
    assert [folder["name"] for folder in load_json(out)["item"]] == ["a.example", "c.example"]
