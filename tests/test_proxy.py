"""The proxy source end to end: real mitmproxy, real curl and httpx, real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import httpx
import pytest

import flowtap
from flowtap.testing import capture, make_flow
from flowtap_proxy import ca

from upstream import JSON_BODY, JSON_HEADERS, Upstream, free_port, self_signed, websocket_exchange

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def http_upstream():
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def upstream_cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("upstream-cert"))


@pytest.fixture(scope="module")
def https_upstream(upstream_cert):
    with Upstream(upstream_cert) as server:
        yield server


@pytest.fixture
def proxy():
    """``proxy(**options)``: a started capture with the proxy source on a free port."""
    with contextlib.ExitStack() as stack:
        def start(**options):
            table = {"listen": "127.0.0.1:0", "ssl_insecure": True, **options}
            return stack.enter_context(capture("proxy", config={"sources": {"proxy": table}}))
        yield start


def port(harness) -> int:
    return harness.capture.sources["proxy"].port


def recorded(harness, expect: int | None = None) -> list[flowtap.Flow]:
    """The flows recorded so far; with ``expect``, wait (up to 10 s) until there are that many.

    Waiting is needed where mitmproxy's hook may run after the client is done:
    a failed TLS handshake, a closed WebSocket, a client that went away, a streamed body.
    """
    deadline = time.monotonic() + 10
    while True:
        assert harness.capture.sync(10)
        flows = list(harness.recorded.flows)
        if expect is None or len(flows) >= expect or time.monotonic() > deadline:
            return flows
        time.sleep(0.02)


def client(harness, trust_ca: bool = True, **kwargs) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(ca.cert_path())) if trust_ca else True
    return httpx.Client(proxy=f"http://127.0.0.1:{port(harness)}", verify=verify, trust_env=False,
                        timeout=10, **kwargs)


def curl(harness, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{port(harness)}",
         "--cacert", str(ca.cert_path()), *args],
        capture_output=True, timeout=20,
    )


# -- HTTP and HTTPS ------------------------------------------------------------------------


def test_curl_http_get_records_headers_in_order_with_duplicates(proxy, http_upstream):
    h = proxy()
    out = curl(h, "-H", "X-Trace: a", "-H", "X-Trace: b", f"{http_upstream.url}/json?page=2")
    assert out.returncode == 0 and out.stdout == JSON_BODY, out.stderr

    (flow,) = recorded(h)
    assert flow.source == "proxy"
    assert (flow.request.method, flow.request.url) == ("GET", f"{http_upstream.url}/json?page=2")
    assert flow.request.http_version == "HTTP/1.1"
    assert flow.request.headers.get_all("x-trace") == ["a", "b"]
    assert flow.response.status_code == 200 and flow.response.reason == "OK"
    sent = [(k, v) for k, v in flow.response.headers.fields if k in {"Content-Type", "X-Dup", "Set-Cookie"}]
    assert sent == JSON_HEADERS
    assert flow.response.body == JSON_BODY and flow.response.body_size == len(JSON_BODY)
    assert not flow.response.truncated
    assert flow.server_ip == "127.0.0.1"
    assert flow.server_address == ("127.0.0.1", http_upstream.server_port)
    assert flow.client_address[0] == "127.0.0.1"
    assert flow.tls is None and flow.error is None
    t = flow.timings
    assert t.connect is not None and t.tls is None
    assert None not in (t.send, t.wait, t.receive) and t.end >= t.start
    assert [c.name for c in flow.response_cookies] == ["session", "theme"]


def test_curl_https_with_the_ca_trusted(proxy, https_upstream):
    h = proxy()
    out = curl(h, "--http1.1", "-d", "a=1&b=2", f"{https_upstream.url}/echo")
    assert out.returncode == 0 and out.stdout == b"a=1&b=2", out.stderr

    (flow,) = recorded(h)
    assert (flow.request.method, flow.request.url) == ("POST", f"{https_upstream.url}/echo")
    assert flow.request.body == b"a=1&b=2"
    assert flow.response.body == b"a=1&b=2"
    assert flow.tls.version in ("TLSv1.2", "TLSv1.3")
    assert flow.tls.alpn == "http/1.1"
    assert flow.timings.connect is not None and flow.timings.tls is not None


def test_httpx_https_decodes_bodies_and_reports_connection_reuse(proxy, https_upstream):
    h = proxy()
    with client(h) as c:
        first = c.get(f"{https_upstream.url}/gzip")
        second = c.post(f"{https_upstream.url}/echo", content=b"\x00\xffbinary")
    assert first.status_code == second.status_code == 200

    gz, echo = recorded(h)
    expected = json.loads(first.content)
    assert json.loads(gz.response.body) == expected
    assert gz.response.headers["Content-Encoding"] == "gzip"
    assert gz.response.encoded_size == len(gzip.compress(json.dumps(expected).encode()))
    assert gz.response.body_size == len(gz.response.body) > gz.response.encoded_size
    assert echo.request.body == echo.response.body == b"\x00\xffbinary"
    # The second request reused the connection: no connect or TLS time of its own.
    assert gz.timings.connect is not None and gz.timings.tls is not None
    assert echo.timings.connect is None and echo.timings.tls is None
    assert echo.tls.sni is None or echo.tls.sni == "127.0.0.1"


def test_http2(proxy, https_upstream):
    h = proxy()
    with client(h, http2=True) as c:
        r = c.get(f"{https_upstream.url}/json")
    assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert r.headers.get_list("set-cookie") == ["session=abc123; Path=/; HttpOnly", "theme=dark; Path=/"]

    (flow,) = recorded(h)
    assert flow.request.http_version == flow.response.http_version == "HTTP/2.0"
    assert flow.tls.alpn == "h2"
    assert flow.response.headers.get_all("x-dup") == ["one", "two"]
    assert flow.response.body == JSON_BODY
    assert flow.request.url == f"{https_upstream.url}/json"


def test_upstream_mode_chains_to_another_proxy(proxy, http_upstream):
    # The test server answers absolute-form requests by path, as a forward proxy would.
    h = proxy(mode=f"upstream:{http_upstream.url}", upstream_auth="alice:s3cret")
    with client(h) as c:
        r = c.get("http://api.example.invalid/json")
    assert r.status_code == 200 and r.content == JSON_BODY
    method, target, headers, _ = http_upstream.seen[-1]
    assert target == "http://api.example.invalid/json"
    assert ("Proxy-Authorization", "Basic YWxpY2U6czNjcmV0") in headers
    (flow,) = recorded(h)
    assert flow.request.url == "http://api.example.invalid/json"
    assert flow.server_address == ("api.example.invalid", 80)
    assert flow.metadata["via"] == http_upstream.url
    assert "proxy-authorization" not in flow.request.headers  # flowtap's own credentials are not recorded


def test_reverse_mode(proxy, http_upstream):
    h = proxy(mode=f"reverse:{http_upstream.url}")
    r = httpx.get(f"http://127.0.0.1:{port(h)}/json", trust_env=False, timeout=10)
    assert r.status_code == 200 and r.content == JSON_BODY
    (flow,) = recorded(h)
    assert flow.request.url == f"{http_upstream.url}/json"


# -- WebSocket and bodies ------------------------------------------------------------------------


def test_websocket_messages_are_recorded_once_when_it_closes(proxy, http_upstream):
    h = proxy()
    replies = websocket_exchange(port(h), "127.0.0.1", http_upstream.server_port, ["hello", b"\x01\x02"])
    assert replies == ["hello", b"\x01\x02"]

    (flow,) = recorded(h, expect=1)
    assert flow.response.status_code == 101
    assert sorted((m.from_client, m.content, m.is_text) for m in flow.websocket) == [
        (False, b"\x01\x02", False), (False, b"hello", True),
        (True, b"\x01\x02", False), (True, b"hello", True),
    ]
    times = [m.timestamp for m in flow.websocket]
    assert times == sorted(times)
    close_code = flow.metadata["websocket_close_code"]
    assert type(close_code) is int and close_code == 1000
    assert flow.timings.end >= flow.timings.start


def test_bodies_over_max_body_size_are_streamed_and_recorded_as_omitted(proxy, http_upstream):
    h = proxy(max_body_size="1kb")
    with client(h) as c:
        big = c.get(f"{http_upstream.url}/big?n=200000")
        chunked = c.get(f"{http_upstream.url}/chunked?n=50000")
        small_chunked = c.get(f"{http_upstream.url}/chunked?n=100")
        upload = c.post(f"{http_upstream.url}/echo", content=b"u" * 5000)
    assert big.content == b"x" * 200000 and chunked.content == b"y" * 50000
    assert small_chunked.content == b"y" * 100 and upload.content == b"u" * 5000

    big_f, chunked_f, small_f, upload_f = recorded(h, expect=4)  # streamed: the client may finish first
    assert (big_f.response.truncated, big_f.response.body, big_f.response.body_size) == (True, b"", 200000)
    assert (chunked_f.response.truncated, chunked_f.response.body_size) == (True, 50000)
    assert (small_f.response.truncated, small_f.response.body) == (False, b"y" * 100)
    assert (upload_f.request.truncated, upload_f.request.body_size) == (True, 5000)
    assert upload_f.response.truncated and upload_f.response.body_size == 5000
    assert http_upstream.seen[-1][3] == b"u" * 5000  # the server got the whole upload


def test_a_body_of_unknown_length_reaches_the_client_as_it_comes(proxy, http_upstream):
    h = proxy()
    http_upstream.release.clear()
    with client(h) as c, c.stream("GET", f"{http_upstream.url}/stream") as r:
        chunks = r.iter_raw()
        assert next(chunks) == b"data: first\n\n"  # before the server sends the rest
        http_upstream.release.set()
        assert b"".join(chunks) == b"data: second\n\n"
    (flow,) = recorded(h, expect=1)
    assert http_upstream.released is True  # the first event was not held back by the proxy
    assert flow.response.body == b"data: first\n\ndata: second\n\n" and not flow.response.truncated


# -- failures --------------------------------------------------------------------------------


def test_upstream_down_http(proxy):
    h = proxy()
    dead = free_port()
    with client(h) as c:
        r = c.get(f"http://127.0.0.1:{dead}/x")
    assert r.status_code == 502

    (flow,) = recorded(h)
    assert flow.response is None
    assert flow.request.url == f"http://127.0.0.1:{dead}/x"
    assert "refused" in flow.error.lower() or "connect" in flow.error.lower()


def test_upstream_down_https(proxy):
    h = proxy()
    dead = free_port()
    with client(h) as c, pytest.raises(httpx.ProxyError):
        c.get(f"https://127.0.0.1:{dead}/x")

    (flow,) = recorded(h)
    assert flow.request.method == "CONNECT"
    assert flow.request.url == f"https://127.0.0.1:{dead}/"
    assert flow.error.startswith(f"cannot connect to 127.0.0.1:{dead}: ")


def test_client_that_does_not_trust_the_ca_is_told_plainly(proxy, https_upstream):
    h = proxy()
    with client(h, trust_ca=False) as c, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        c.get(f"{https_upstream.url}/json")

    (flow,) = recorded(h, expect=1)
    assert flow.request.method == "CONNECT"
    assert flow.request.url == f"https://127.0.0.1:{https_upstream.server_port}/"
    assert flow.error.startswith("client does not trust flowtap's CA (tlsv1 alert unknown ca); ")
    assert flow.error.endswith("run `flowtap ca` to see how to trust it")
    assert flow.response is None


def test_upstream_certificate_is_verified_unless_ssl_insecure(proxy, https_upstream):
    h = proxy(ssl_insecure=False)
    with client(h) as c:
        r = c.get(f"{https_upstream.url}/json")
    assert r.status_code == 502
    (flow,) = recorded(h)
    assert flow.response is None and "certificate" in flow.error.lower()


def test_client_abort_is_recorded(proxy, http_upstream):
    h = proxy()
    with socket.create_connection(("127.0.0.1", port(h)), timeout=10) as sock:
        sock.sendall(f"GET {http_upstream.url}/slow?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        threading.Event().wait(0.1)
    # The server answers after 400 ms, to a client that is gone.
    (flow,) = recorded(h, expect=1)
    assert flow.request.url == f"{http_upstream.url}/slow?ms=400"
    assert flow.error and flow.response is None


@pytest.mark.parametrize("options", [
    {"https": False}, {"ignore_hosts": [r"^127\.0\.0\.1:"]}, {"allow_hosts": [r"^api\.example\.com:"]},
], ids=["https-false", "ignore_hosts", "allow_hosts"])
def test_tls_passed_through_unseen(proxy, https_upstream, upstream_cert, options):
    h = proxy(**options)
    verify = ssl.create_default_context(cafile=str(upstream_cert[0]))  # the server's own cert, not flowtap's
    with httpx.Client(proxy=f"http://127.0.0.1:{port(h)}", verify=verify, trust_env=False, timeout=10) as c:
        assert c.get(f"{https_upstream.url}/json").content == JSON_BODY
    assert recorded(h) == []


# -- session semantics -------------------------------------------------------------------------


def test_pause_resume_clear_while_traffic_flows(proxy, http_upstream):
    h = proxy()
    statuses: list[int] = []
    stop = threading.Event()

    def traffic():
        with client(h) as c:
            while not stop.is_set():
                statuses.append(c.get(f"{http_upstream.url}/big?n=10").status_code)

    background = threading.Thread(target=traffic)
    background.start()
    try:
        with client(h) as c:
            c.get(f"{http_upstream.url}/json")
            h.session.pause()
            paused_before = recorded(h)
            for _ in range(3):
                assert c.get(f"{http_upstream.url}/json").status_code == 200  # still proxied
            paused_after = recorded(h)
            h.session.resume()
            c.get(f"{http_upstream.url}/echo")
            h.session.clear()
            c.get(f"{http_upstream.url}/gzip")
    finally:
        stop.set()
        background.join(10)

    assert paused_after == paused_before  # nothing recorded while paused
    assert h.session.counts.paused >= 3
    flows = recorded(h)  # once the dispatcher has caught up
    assert [f.request.url for f in flows if "/big" not in f.request.url] == [f"{http_upstream.url}/gzip"]
    assert "clear" in h.recorded.events and statuses and set(statuses) == {200}
    # Cookies are still seen while paused.
    assert {c.name for c in h.recorded.cookies} >= {"session", "theme"}


# -- start-up ------------------------------------------------------------------------------------


def test_port_in_use_is_a_plain_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(flowtap.StartupError,
                           match=f"cannot listen on 127.0.0.1:{taken}: the port is in use"):
            with capture("proxy", config={"sources": {"proxy": {"listen": f"127.0.0.1:{taken}"}}}):
                pass
    # The failed start released everything: a proxy starts again.
    with capture("proxy", config={"sources": {"proxy": {"listen": "127.0.0.1:0"}}}) as h:
        assert port(h) > 0


def test_each_capture_runs_its_proxy_in_a_process_of_its_own(proxy, http_upstream):
    """mitmproxy keeps its master in a global: one per process. Each proxy source has a process."""
    first, second = proxy(), proxy()
    assert port(first) != port(second)
    for harness, page in ((first, 1), (second, 2)):
        with client(harness) as c:
            assert c.get(f"{http_upstream.url}/json?page={page}").status_code == 200
    assert [f.request.url for f in recorded(first)] == [f"{http_upstream.url}/json?page=1"]
    assert [f.request.url for f in recorded(second)] == [f"{http_upstream.url}/json?page=2"]


def test_a_pause_falls_after_the_flows_the_proxy_finished_before_it(proxy, http_upstream):
    """The proxy's process hands its flows over a pipe: a pause waits for those finished before it."""
    h = proxy()
    with client(h) as c:
        for page in range(20):
            c.get(f"{http_upstream.url}/json?page={page}")
        h.session.pause()  # no sync first: the pause itself waits for the 20 flows
        c.get(f"{http_upstream.url}/json?page=paused")
        h.session.resume()
    flows = recorded(h)
    assert [f.request.url for f in flows] == [f"{http_upstream.url}/json?page={page}" for page in range(20)]
    assert h.session.counts.paused == 1


def test_a_proxy_process_that_dies_is_reported_and_the_capture_goes_on(proxy, http_upstream, caplog):
    h = proxy()
    with client(h) as c:
        assert c.get(f"{http_upstream.url}/json?before").status_code == 200
    assert h.capture.sync(10)  # handed over: a killed process loses only what it was gathering (20 ms)
    h.capture.sources["proxy"]._process.kill()
    deadline = time.monotonic() + 10
    while "ended unexpectedly" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "source 'proxy' failed: the proxy's process ended unexpectedly (exit code -9)" in caplog.text
    assert h.capture.host.errors.count == 1  # the run's exit code says so
    assert [f.request.url for f in recorded(h)] == [f"{http_upstream.url}/json?before"]
    h.feed(make_flow())  # the session and its sinks go on
    assert len(recorded(h)) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_proxys_process_ends_with_the_capture_however_it_ends(tmp_path):
    """kill -9 of the capture's process: the proxy's process sees its standard input end and exits."""
    config = tmp_path / "c.toml"
    config.write_text('[sources.proxy]\nlisten = "127.0.0.1:0"\n[store]\nenabled = false\n')
    env = {**os.environ, "FLOWTAP_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "flowtap"), "-c", str(config),
                            "run", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        children = []
        deadline = time.monotonic() + 30
        while not children and time.monotonic() < deadline:
            time.sleep(0.1)
            children = [int(pid) for task in os.listdir(f"/proc/{run.pid}/task")
                        for pid in open(f"/proc/{run.pid}/task/{task}/children").read().split()]
        assert children, "the capture started no proxy process"
        run.kill()
        run.wait(10)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{children[0]}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(children[0], os.WNOHANG)
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{children[0]}") or "Z" in open(f"/proc/{children[0]}/stat").read()
    finally:
        if run.poll() is None:
            run.kill()


@pytest.mark.parametrize("table, message", [
    ({"ignore_hosts": ["a"], "allow_hosts": ["b"]}, "not both"),
    ({"ignore_hosts": ["("]}, "not a valid regular expression"),
    ({"mode": "socks"}, "expected \"regular\""),
    ({"listen": "5555"}, "HOST:PORT"),
    ({"upstream_auth": "alice"}, "USER:PASSWORD"),
])
def test_config_errors(table, message):
    with pytest.raises(flowtap.ConfigError, match=message):
        with capture("proxy", config={"sources": {"proxy": table}}):
            pass


def test_describe_tells_how_to_point_a_client(proxy):
    h = proxy()
    lines = h.capture.sources["proxy"].describe()
    address = f"http://127.0.0.1:{port(h)}"
    assert f"export http_proxy={address} https_proxy={address}" in lines
    assert any(str(ca.cert_path()) in line and "flowtap ca" in line for line in lines)


def test_ca_lives_in_the_data_dir_with_an_owner_only_key(proxy):
    proxy()
    directory = ca.ca_dir()
    assert str(directory.parent) == os.environ["FLOWTAP_DATA_DIR"]  # never ~/.mitmproxy
    assert ca.cert_path().is_file()
    for name in ca.SECRET_FILES:
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" not in ca.cert_path().read_bytes()


def test_a_response_reset_mid_body_records_the_bytes_that_arrived(proxy):
    """Issue 11 item 10: Content-Length said 100,000, 5,000 bytes came, then a reset."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
                             + b"z" * 5000)
                time.sleep(0.2)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        h = proxy()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/reset"
        with socket.create_connection(("127.0.0.1", port(h)), timeout=10) as sock:
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        thread.join(10)
    (flow,) = recorded(h, expect=1)
    assert flow.error
    response = flow.response
    assert response is not None and not response.truncated  # the body holds all that arrived
    assert response.body_size == 5000 and response.encoded_size == 5000
    assert response.body == b"z" * 5000


def test_the_proxys_process_bounds_what_waits_for_the_pipe_by_bytes(monkeypatch):
    """A capture that takes the flows slower than the proxy finishes them: past BACKLOG_BYTES of
    bodies waiting, the proxy's process drops flows, counts them, and says so on the pipe."""
    from flowtap_proxy import host

    monkeypatch.setattr(host, "BACKLOG_BYTES", 3000)
    read, write = os.pipe()
    sender = host._Sender(host._Channel(write))  # its thread not started yet: nothing leaves
    for page in range(5):
        sender.emit(make_flow(f"http://127.0.0.1/big?page={page}", response_body=b"x" * 1000))
    assert sender.dropped == 2
    sender.thread.start()
    sender.finish()
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        messages = list(host.read_messages(pipe))
    flows = [flow for kind, payload in messages if kind == "flows" for flow in payload]
    assert [f.request.url for f in flows] == [f"http://127.0.0.1/big?page={page}" for page in range(3)]
    assert ("dropped", 2) in messages
    with open(os.devnull, "wb") as devnull:
        sender = host._Sender(host._Channel(devnull.fileno()))
        sender.emit(make_flow(response_body=b"x" * 5000))  # alone, a flow above the bound still goes
        assert sender.dropped == 0 and sender.queued == 1


def _proxy_answers(sender, flows: int, body: int) -> tuple[int, float]:
    """Emit ``flows`` flows as the proxy's event loop does, awaiting what emit returns before the next
    (mitmproxy answers the client only then); how many were held back, and the seconds it took."""
    import asyncio

    async def answer_all() -> int:
        held = 0
        for page in range(flows):
            waiting = sender.emit(make_flow(f"http://127.0.0.1/big?page={page}", response_body=b"x" * body))
            if waiting is not None:
                held += 1
                await waiting
        return held

    began = time.monotonic()
    held = asyncio.run(answer_all())
    return held, time.monotonic() - began


def test_the_proxy_waits_for_a_capture_that_takes_flows_slower_than_it_makes_them(monkeypatch):
    """flowtap's process busy (CPU bound by the sinks' work) takes flows slowly: past PAUSE_BYTES
    waiting, the proxy holds its answers back until it catches up, and loses none."""
    from flowtap_proxy import host

    monkeypatch.setattr(host, "PAUSE_BYTES", 300_000)
    monkeypatch.setattr(host, "GATHER", 0)
    read, write = os.pipe()
    sender = host._Sender(host._Channel(write))
    sender.thread.start()
    most = []

    def take_slowly() -> list:  # a message of 100 KB fills the pipe: each waits for this read
        taken = []
        with os.fdopen(read, "rb") as pipe:
            for kind, payload in host.read_messages(pipe):
                taken.extend(payload if kind == "flows" else [kind])
                most.append(sender.queued_bytes - sender.written_bytes)
                time.sleep(0.02)
        return taken

    taker = ThreadResult(take_slowly)
    held, _ = _proxy_answers(sender, 20, 100_000)
    sender.finish()
    os.close(write)
    taken = taker.result()
    assert held > 0 and sender.dropped == 0
    assert [f.request.url for f in taken] == [f"http://127.0.0.1/big?page={page}" for page in range(20)]
    assert max(most) <= 300_000 + 100_000  # the bound, and the flow that crossed it


def test_the_proxy_does_not_wait_for_a_capture_that_takes_nothing(monkeypatch):
    """flowtap's process stuck (it reads nothing for STALL seconds): the proxy answers again, and
    past BACKLOG_BYTES drops flows, counted, as before."""
    from flowtap_proxy import host

    monkeypatch.setattr(host, "PAUSE_BYTES", 150_000)
    monkeypatch.setattr(host, "BACKLOG_BYTES", 600_000)
    monkeypatch.setattr(host, "STALL", 0.3)
    read, write = os.pipe()
    sender = host._Sender(host._Channel(write))
    sender.thread.start()  # its first message fills the pipe: nothing more leaves until it is read
    held, took = _proxy_answers(sender, 20, 100_000)
    assert held > 0 and 0.25 < took < 2
    assert sender.dropped > 0
    assert not sender._held()  # the next answer does not wait either
    drained = ThreadResult(lambda: list(host.read_messages(os.fdopen(read, "rb"))))
    sender.finish()
    os.close(write)
    messages = drained.result()
    assert ("dropped", sender.dropped) in messages


class ThreadResult:
    """Runs ``target`` in a thread; :meth:`result` joins it and returns what it returned."""

    def __init__(self, target) -> None:
        self._value: list = []
        self._thread = threading.Thread(target=lambda: self._value.append(target()), daemon=True)
        self._thread.start()

    def result(self, timeout: float = 10):
        self._thread.join(timeout)
        assert self._value, "the thread did not finish"
        return self._value[0]


def test_flows_the_proxys_process_dropped_are_a_failure_of_the_run(caplog):
    """What the proxy's process reports dropped reaches the run's errors: its end and exit code say so."""
    from flowtap_proxy import host
    from flowtap_proxy.source import ProxySource

    read, write = os.pipe()
    host.write_message(write, "flows", [make_flow("http://127.0.0.1/kept")])
    host.write_message(write, "dropped", 3)
    os.close(write)
    source = ProxySource({"listen": ("127.0.0.1", 0), "mode": "regular"})
    source.name = "proxy"
    source._ready.set()  # as if it had listened, and were being stopped: only the messages count
    source._stopping = True
    with capture() as h:
        source._read(os.fdopen(read, "rb"), h.capture.emitter("proxy"))
        assert [f.request.url for f in recorded(h, 1)] == ["http://127.0.0.1/kept"]
        assert h.capture.host.errors.count == 1
    assert "source 'proxy' failed: 3 flow(s) dropped" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_GETPIPE_SZ is Linux's")
def test_the_pipe_from_the_proxys_process_holds_a_large_body_whole(proxy):
    """Read in 64 KiB pieces, each a wait for the capture's GIL, 1 MiB bodies piled up in the proxy's
    process (issue 16's budget, on Python 3.13)."""
    import fcntl

    from flowtap_proxy.source import PIPE_SIZE

    h = proxy()
    pipe = h.capture.sources["proxy"]._process.stdout
    assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_SIZE


def test_the_proxys_process_collects_garbage_cycles_by_the_bytes_of_bodies_it_sent(monkeypatch):
    """mitmproxy's streams are reference cycles holding their flows' bodies, and the collector counts
    objects, not bytes: the proxy's process collects once COLLECT_BYTES of bodies have been sent."""
    import gc
    import weakref

    from flowtap_proxy import host

    class Stream:
        pass

    def send(flows: int) -> None:
        with open(os.devnull, "wb") as devnull:
            sender = host._Sender(host._Channel(devnull.fileno()))
            sender.thread.start()
            for _ in range(flows):
                sender.emit(make_flow(response_body=b"x" * 1000))
            sender.finish()

    monkeypatch.setattr(host, "COLLECT_BYTES", 4000)
    stream = Stream()
    stream.cycle = stream
    garbage = weakref.ref(stream)
    del stream
    gc.disable()  # only the sender's collection may free it
    try:
        send(3)  # 3,000 bytes of bodies: not yet
        assert garbage() is not None
        send(4)
        assert garbage() is None
    finally:
        gc.enable()
