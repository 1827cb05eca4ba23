"""The cookiejar sink: browser jar semantics, both file formats, continuous sync, and the jar read by curl
and by Python's MozillaCookieJar."""

import http.cookiejar
import http.server
import json
import os
import shutil
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import attrs
import pytest

import flowtap
from flowtap.cookies import Cookie
from flowtap.testing import capture, make_flow
from flowtap_cookiejar.formats import FormatError, dump_json, dump_netscape, load_json, load_netscape
from flowtap_cookiejar.jar import Jar

NOW = time.time()
LATER = float(int(NOW) + 86400)
PAST = NOW - 10


def cookie(name="sid", value="1", domain="example.com", **kw):
    return Cookie(name=name, value=value, domain=domain, **kw)


def jar_of(*cookies):
    jar = Jar()
    for c in cookies:
        jar.set(c, NOW)
    return jar


def config(path, **options):
    """The cookiejar alone (the session store, tested elsewhere, is off)."""
    return {"store": {"enabled": False}, "sinks": {"cookiejar": {"path": str(path), **options}}}


def set_cookie_flow(url, *set_cookies, cookie_header=None):
    request_headers = [("Host", url.split("/")[2])] + ([("Cookie", cookie_header)] if cookie_header else [])
    return make_flow(url=url, request_headers=request_headers,
                     response_headers=[("Set-Cookie", value) for value in set_cookies])  # fmt: skip


def wait_for(predicate, timeout=1.0):
    """Poll until ``predicate()`` is true; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def names_in(path):
    try:
        return {c.name: c.value for c in load_netscape(Path(path).read_text())}
    except FileNotFoundError:
        return {}


# -- the jar ------------------------------------------------------------------------


def test_an_update_replaces_the_same_domain_path_and_name():
    jar = jar_of(cookie(value="1", secure=True), cookie(value="2", path="/v1"),
                 cookie(value="3", domain="other.com"))
    assert not jar.set(cookie(value="2", path="/v1"), NOW)  # the same cookie again: no change
    assert jar.set(cookie(value="9", httponly=True), NOW)
    assert len(jar) == 3
    assert jar.get("example.com", "/", "sid") == cookie(value="9", httponly=True)
    assert jar.get("example.com", "/v1", "sid").value == "2"


def test_max_age_zero_and_a_past_expires_delete_the_namesake_only():
    flow = set_cookie_flow("https://example.com/", "a=1; Max-Age=3600", "b=2", "c=3; Path=/x")
    jar = jar_of(*flow.response_cookies)
    deletions = set_cookie_flow("https://example.com/", "a=; Max-Age=0",
                                "b=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT", "c=; Max-Age=0")
    assert [jar.set(c, NOW) for c in deletions.response_cookies] == [True, True, False]
    assert [(c.name, c.path) for c in jar] == [("c", "/x")]  # c at /x is not the namesake of c at /
    assert not jar.set(cookie("never-there", expires=PAST), NOW)


def test_request_cookies_only_update_the_value_of_a_known_cookie():
    rich = cookie("sid", "old", "example.com", expires=LATER, secure=True, httponly=True, samesite="Strict")
    jar = jar_of(rich)
    assert jar.sent("sid", "new", "api.example.com", "/", secure=True, now=NOW)
    assert list(jar) == [attrs.evolve(rich, value="new")]
    assert not jar.sent("sid", "new", "API.example.com", "/", secure=True, now=NOW)  # already known


def test_unknown_request_cookies_are_added_host_only_for_the_host():
    jar = jar_of(cookie("sid", "x", "example.com", secure=True))
    jar.sent("theme", "dark", "api.example.com", "/v1/users", secure=True, now=NOW)
    # a secure cookie is never sent over plain HTTP: this one is another cookie
    jar.sent("sid", "plain", "api.example.com", "/", secure=False, now=NOW)
    assert jar.get("api.example.com", "/", "theme") == cookie("theme", "dark", "api.example.com",
                                                              host_only=True)
    assert jar.get("api.example.com", "/", "sid") == cookie("sid", "plain", "api.example.com", host_only=True)
    assert jar.get("example.com", "/", "sid").value == "x"


def test_request_cookies_respect_host_only_and_path():
    host_only = cookie("sid", "h", "api.example.com", host_only=True)
    by_path = [cookie("tok", "root"), cookie("tok", "app", path="/app")]
    jar = jar_of(host_only, *by_path)
    jar.sent("sid", "w", "www.api.example.com", "/", now=NOW)  # not sent to a subdomain: a new cookie
    assert jar.get("api.example.com", "/", "sid").value == "h"
    assert jar.get("www.api.example.com", "/", "sid").value == "w"
    jar.sent("tok", "app2", "example.com", "/app/page", now=NOW)  # the most specific path takes the value
    assert (jar.get("example.com", "/app", "tok").value,
            jar.get("example.com", "/", "tok").value) == ("app2", "root")
    jar.sent("tok", "root2", "example.com", "/application", now=NOW)  # /app does not path-match /application
    assert jar.get("example.com", "/", "tok").value == "root2"


def test_expired_cookies_are_purged():
    jar = jar_of(cookie("a", expires=NOW + 0.05), cookie("b"))
    assert len(jar) == 2
    assert jar.purge(NOW + 1) and [c.name for c in jar] == ["b"]


# -- the formats ------------------------------------------------------------------------

EVERYTHING = [
    Cookie("sid", "s3cr=t", "example.com", "/", LATER, True, True, "Lax", False),
    Cookie("host", "", "api.example.com", "/v1", None, False, False, None, True),
    Cookie("uni", "caf\u00e9 \u2603", "127.0.0.1", "/", None, False, True, "None", True),
]


def test_netscape_lines_as_curl_writes_them():
    text, skipped = dump_netscape(EVERYTHING)
    assert text.startswith("# Netscape HTTP Cookie File\n") and not skipped
    assert text.splitlines()[4:] == [
        f"#HttpOnly_.example.com\tTRUE\t/\tTRUE\t{int(LATER)}\tsid\ts3cr=t",
        "api.example.com\tFALSE\t/v1\tFALSE\t0\thost\t",
        "#HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t0\tuni\tcaf\u00e9 \u2603",
    ]


def test_netscape_round_trip_keeps_all_but_samesite():
    loaded = load_netscape(dump_netscape(EVERYTHING)[0])
    assert loaded == [attrs.evolve(c, samesite=None) for c in EVERYTHING]


def test_json_round_trip_keeps_everything():
    text, skipped = dump_json(EVERYTHING)
    assert not skipped and load_json(text) == EVERYTHING
    first = json.loads(text)[0]
    assert first == {"name": "sid", "value": "s3cr=t", "domain": "example.com", "path": "/", "expires": LATER,
                     "secure": True, "httponly": True, "samesite": "Lax", "host_only": False}  # fmt: skip
    assert json.loads(text)[1]["expires"] is None


def test_what_netscape_cannot_hold_is_left_out_but_json_keeps_it():
    odd = [cookie("tab", "a\tb"), cookie("bytes", "caf\udce9")]  # a tab; a byte that was not UTF-8
    text, skipped = dump_netscape(odd + [cookie("ok")])
    assert skipped == odd and load_netscape(text) == [cookie("ok")]
    assert load_json(dump_json(odd)[0]) == odd


@pytest.mark.parametrize("text, where", [
    ("# Netscape HTTP Cookie File\n\nexample.com\tFALSE\t/\n", "line 3"),
    ("example.com\tMAYBE\t/\tFALSE\t0\ta\tb\n", "line 1"),
    ("#HttpOnly_example.com\tFALSE\t/\tFALSE\tsoon\ta\tb\n", "line 1"),
    ('{"log": {"entries": []}}', "line 1"),  # a HAR file is no jar
])  # fmt: skip
def test_malformed_netscape_files_name_the_line(text, where):
    with pytest.raises(FormatError, match=f"^{where}: "):
        load_netscape(text)


@pytest.mark.parametrize("text, where", [
    ('[\n{"name": "a", "value": "b",\n "domain": }\n]', "line 3 column 12"),
    ('{"log": {}}', "line 1"),
    ('[{"name": "a", "value": "b", "domain": "x.com"}, {"name": "a", "value": "b"}]', "cookie #2"),
    ('[{"name": "a", "value": 1, "domain": "x.com"}]', "cookie #1"),
    ('[{"name": "a", "value": "b", "domain": "x.com", "secure": "yes"}]', "cookie #1"),
])  # fmt: skip
def test_malformed_json_files_name_the_place(text, where):
    with pytest.raises(FormatError, match=f"^{where}: "):
        load_json(text)


def test_netscape_reader_takes_what_curl_accepts():
    text = "example.com\tfalse\t/\tTRUE\t0\tempty\n.Example.com\tTRUE\t/\tFALSE\t2000000000\ta\tb\r\n"
    assert load_netscape(text) == [
        cookie("empty", "", "example.com", secure=True, host_only=True),
        cookie("a", "b", "example.com", expires=2000000000.0),
    ]


# -- the sink, through a capture ---------------------------------------------------------


def test_sync_shows_a_change_within_a_second_without_ending_the_session(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        for value in ("1", "2", "3"):  # quick changes are throttled, not lost
            start = time.monotonic()
            harness.feed(set_cookie_flow("https://api.example.com/login", f"sid={value}; Path=/"))
            assert wait_for(lambda value=value: names_in(path) == {"sid": value})
            assert time.monotonic() - start < 1.0
        assert harness.session.state.value == "running"


def test_sync_goes_on_while_paused_and_clear_keeps_the_jar(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        harness.session.pause()
        harness.feed(set_cookie_flow("http://example.com/", "paused=yes"))
        assert wait_for(lambda: names_in(path) == {"paused": "yes"})
        assert harness.recorded.flows == []  # the flow was not recorded, its cookie was synced
        harness.session.resume()
        harness.session.clear()
        harness.feed(set_cookie_flow("http://example.com/", "after=clear"))
        assert wait_for(lambda: names_in(path) == {"paused": "yes", "after": "clear"})


def test_cookie_events_from_a_source_without_a_flow(tmp_path):
    path = tmp_path / "jar.json"
    with capture("cookiejar", config=config(path, format="json")) as harness:
        emitter = harness.capture.emitter("interceptor")
        emitter.cookies([Cookie("ext", "1", "app.example.com", "/", LATER, True, True, "Strict", True)])
        assert wait_for(lambda: path.exists() and len(load_json(path.read_text())) == 1)
        assert load_json(path.read_text())[0].samesite == "Strict"
        time.sleep(0.3)  # past the throttle: the next write comes at once
        emitter.cookies([Cookie("ext", "", "app.example.com", "/", PAST, host_only=True)])
        assert wait_for(lambda: load_json(path.read_text()) == [])


def test_request_cookies_merge_in_the_sink(tmp_path):
    path = tmp_path / "jar.json"
    with capture("cookiejar", config=config(path, format="json")) as harness:
        harness.feed(set_cookie_flow("https://api.example.com/",
                                     "sid=1; Domain=example.com; Secure; HttpOnly; "
                                     "SameSite=Strict; Max-Age=3600"))  # fmt: skip
        harness.feed(set_cookie_flow("https://www.example.com/x", cookie_header="sid=2; lang=en"))
    cookies = {c.name: c for c in load_json(path.read_text())}
    assert cookies["sid"].value == "2"
    assert (cookies["sid"].domain, cookies["sid"].secure, cookies["sid"].httponly,
            cookies["sid"].samesite) == (
        "example.com", True, True, "Strict")
    assert cookies["sid"].expires is not None
    assert cookies["lang"] == cookie("lang", "en", "www.example.com", host_only=True)


def test_the_domain_list_covers_subdomains_only(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path, domains=[".Example.com", "127.0.0.1"])) as harness:
        harness.feed(
            set_cookie_flow("https://api.example.com/", "a=1"),
            set_cookie_flow("https://example.com/", "b=1"),
            set_cookie_flow("https://notexample.com/", "c=1"),
            set_cookie_flow("https://example.org/", "d=1", cookie_header="e=1"),
            set_cookie_flow("http://127.0.0.1:9/", "f=1"),
            set_cookie_flow("http://127.0.0.2/", "g=1"),
        )
    assert names_in(path) == {"a": "1", "b": "1", "f": "1"}


def test_a_bad_domain_entry_is_a_config_error(tmp_path):
    with pytest.raises(flowtap.ConfigError, match=r"\[sinks\.cookiejar\] domains: .*'https://example.com'"):
        with capture("cookiejar", config=config(tmp_path / "j.txt", domains=["https://example.com"])):
            pass


def test_without_sync_the_file_is_written_at_the_end(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path, sync=False)) as harness:
        harness.feed(set_cookie_flow("http://example.com/", "a=1"))
        time.sleep(0.4)
        assert not path.exists()
    assert names_in(path) == {"a": "1"}


@pytest.mark.parametrize("fmt", ["netscape", "json"])
def test_an_existing_jar_is_updated_not_clobbered(tmp_path, fmt):
    path = tmp_path / "jar"
    kept = [cookie("keep", "me", "elsewhere.org", expires=LATER), cookie("sid", "old", "example.com")]
    gone = cookie("stale", "x", "example.com", expires=PAST + 5)
    dump = dump_netscape if fmt == "netscape" else dump_json
    path.write_text(dump(kept + [gone])[0])
    os.chmod(path, 0o640)
    with capture("cookiejar", config=config(path, format=fmt, domains=["example.com"])) as harness:
        harness.feed(set_cookie_flow("https://example.com/", "sid=new; Domain=example.com"))
        load = load_netscape if fmt == "netscape" else load_json
        assert wait_for(lambda: {c.name: c.value for c in load(path.read_text())}
                        == {"keep": "me", "sid": "new"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's permissions are kept


def test_a_new_jar_is_private_and_written_at_once(tmp_path):
    path = tmp_path / "sub" / "dir" / "jar.txt"
    with capture("cookiejar", config=config(path)):
        assert wait_for(path.exists)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert load_netscape(path.read_text()) == []


def test_a_new_session_keeps_the_jar(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        harness.feed(set_cookie_flow("http://example.com/", "first=1"))
        harness.capture.begin("second")
        harness.feed(set_cookie_flow("http://example.com/", "second=2"))
        assert wait_for(lambda: names_in(path) == {"first": "1", "second": "2"})


@pytest.mark.parametrize("fmt, text, where", [
    ("netscape", "# Netscape HTTP Cookie File\nexample.com\tFALSE\t/\tFALSE\t0\ta\tb\nnot a cookie line\n",
     "line 3"),
    ("json", "[\n  {\"name\": \"a\",\n", "line 3"),
])  # fmt: skip
def test_a_malformed_existing_jar_stops_the_run_and_is_left_alone(tmp_path, fmt, text, where):
    path = tmp_path / "jar"
    path.write_text(text)
    with pytest.raises(flowtap.StartupError, match=f"{path}: not a {fmt} cookie jar: {where}"):
        with capture("cookiejar", config=config(path, format=fmt)):
            pass
    assert path.read_text() == text


def test_an_unwritable_path_fails_at_start_up_with_the_path_and_reason(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    expected = f"sink 'cookiejar': {blocker}/jar.txt: cannot create directory {blocker}"
    with pytest.raises(flowtap.StartupError, match=expected):
        with capture("cookiejar", config=config(blocker / "jar.txt")):
            pass
    with pytest.raises(flowtap.StartupError, match=f"{tmp_path}: is a directory"):
        with capture("cookiejar", config=config(tmp_path)):
            pass


def test_no_jar_is_left_behind_when_another_sink_refuses_to_start(tmp_path):
    path = tmp_path / "jar.txt"

    class Refuses(flowtap.Sink):
        def open(self, session):
            raise flowtap.SinkError("nope: refused")

    class Plugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register("refuses", lambda options: Refuses(), default=True)

    with pytest.raises(flowtap.StartupError, match="nope: refused"):
        with capture("cookiejar", Plugin(), config=config(path)):
            pass
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_jar_fails_at_start_up(tmp_path):
    path = tmp_path / "jar.txt"
    path.write_text("")
    path.chmod(0o400)
    with pytest.raises(flowtap.StartupError, match=f"{path}: .*not writable"):
        with capture("cookiejar", config=config(path)):
            pass


def test_weird_input_never_stops_the_sink(tmp_path):
    path = tmp_path / "jar.json"
    weird = [
        set_cookie_flow("http://example.com/", "no-equals-sign", "=nameless", "; ;", ""),
        set_cookie_flow("http://example.com/", "bytes=caf\udce9; Path=/\udcff", "ctl=a\x01b", "snow=\u2603"),
        set_cookie_flow("http://example.com/", "huge=" + "x" * 1_000_000, "age=1; Max-Age=" + "9" * 5000),
        set_cookie_flow("http://example.com/", "date=1; Expires=\udcff\x00 99999",
                        cookie_header="\udce9=\x00; ;="),
        make_flow(url="http://[::1]:8/", response_headers=[("Set-Cookie", "v6=1")]),
        make_flow(url="not a url", response_headers=[("Set-Cookie", "nohost=1")]),
    ]
    with capture("cookiejar", config=config(path, format="json")) as harness:
        harness.capture.emitter("interceptor").cookies([
            cookie("none", None), cookie("surrogate", "\ud800"), cookie("", "x"),
            cookie("nan", expires=float("nan")),
            cookie("nodomain", "1", None), "not a cookie",
        ])
        harness.feed(*weird)
        harness.feed(set_cookie_flow("http://example.com/", "after=fine"))
        assert len(harness.recorded.flows) == len(weird) + 1
        assert harness.capture.host.error_count == 0
        assert wait_for(lambda: "after" in path.read_text())
    cookies = {c.name: c for c in load_json(path.read_text())}
    assert cookies["bytes"].value == "caf\udce9" and cookies["snow"].value == "\u2603"
    assert cookies["age"].expires == flowtap.cookies.MAX_EXPIRES
    assert cookies["v6"].domain == "::1"
    # what a browser refuses: control characters, a name and value over 4096 bytes, a value that is not text
    assert not {"ctl", "huge", "none", "surrogate", "nan", ""} & set(cookies)


# -- real readers: Python's MozillaCookieJar and curl -----------------------------------------


def test_mozilla_cookie_jar_loads_the_file(tmp_path):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        harness.feed(set_cookie_flow(
            "https://api.example.com/v1/login",
            "sid=abc; Domain=example.com; Path=/; Secure; HttpOnly; Max-Age=3600",
            "pref=dark",
        ))
        assert wait_for(lambda: len(names_in(path)) == 2)
        jar = http.cookiejar.MozillaCookieJar(str(path))
        jar.load(ignore_discard=True, ignore_expires=True)
    got = {c.name: c for c in jar}
    sid, pref = got["sid"], got["pref"]
    assert (sid.value, sid.domain, sid.domain_specified, sid.path, sid.secure) == (
        "abc", ".example.com", True, "/", True)
    assert sid.has_nonstandard_attr("HTTPOnly") and abs(sid.expires - (time.time() + 3600)) < 60
    assert (pref.value, pref.domain, pref.domain_specified, pref.path, pref.secure, pref.expires) == (
        "dark", "api.example.com", False, "/v1", False, 0)
    assert not pref.has_nonstandard_attr("HTTPOnly")


class _Echo(http.server.BaseHTTPRequestHandler):
    """Echoes the Cookie header; /set sets cookies (for curl -c)."""

    def do_GET(self):
        body = (self.headers.get("Cookie") or "").encode()
        self.send_response(200)
        if self.path == "/set":
            self.send_header("Set-Cookie", "made=bycurl; Path=/; HttpOnly")
            self.send_header("Set-Cookie", "wide=1; Domain=127.0.0.1; Max-Age=600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def curl(*args):
    result = subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_curl_sends_the_synced_cookies(tmp_path, echo_server):
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        harness.feed(set_cookie_flow(
            f"{echo_server}/login",
            "sid=abc; Path=/; HttpOnly",  # host-only for 127.0.0.1
            "wide=1; Domain=127.0.0.1; Max-Age=600",  # host-only: an IP covers no other host
            "deep=1; Path=/only/here",
            "dead=1; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ))
        assert wait_for(lambda: "wide" in names_in(path))
        sent = dict(pair.split("=", 1) for pair in curl("-b", str(path), f"{echo_server}/echo").split("; "))
        assert sent == {"sid": "abc", "wide": "1"}
        assert "deep=1" in curl("-b", str(path), f"{echo_server}/only/here/x")
        harness.feed(set_cookie_flow(f"{echo_server}/logout", "sid=; Path=/; Max-Age=0"))
        assert wait_for(lambda: "sid" not in names_in(path))
        assert curl("-b", str(path), f"{echo_server}/echo") == "wide=1"


@needs_curl
def test_a_jar_curl_wrote_is_read_and_kept(tmp_path, echo_server):
    path = tmp_path / "jar.txt"
    curl("-c", str(path), f"{echo_server}/set")
    assert "made" in path.read_text()
    with capture("cookiejar", config=config(path)) as harness:
        harness.feed(set_cookie_flow(f"{echo_server}/", "ours=1"))
        assert wait_for(lambda: names_in(path).keys() == {"made", "wide", "ours"})
        assert sorted(curl("-b", str(path), f"{echo_server}/echo").split("; ")) == ["made=bycurl", "ours=1",
                                                                                    "wide=1"]


def test_a_failed_write_is_logged_and_retried(tmp_path, caplog):
    folder = tmp_path / "jars"
    path = folder / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        assert wait_for(path.exists)
        folder.rename(tmp_path / "moved")  # the folder disappears under the running sink
        time.sleep(0.3)
        harness.feed(set_cookie_flow("http://example.com/", "a=1"))
        assert wait_for(lambda: f"{path}: cannot write the cookie jar" in caplog.text)
        folder.mkdir()
        harness.feed(set_cookie_flow("http://example.com/", "b=2"))
        assert wait_for(lambda: names_in(path) == {"a": "1", "b": "2"})


def test_a_flow_with_an_unparsable_url_still_reaches_the_other_sinks(tmp_path):
    with capture("cookiejar", config=config(tmp_path / "jar.txt")) as harness:
        harness.feed(make_flow(url="http://[::1/x", response_headers=[("Set-Cookie", "a=1")]))
        assert len(harness.recorded.flows) == 1


@needs_curl
def test_cookies_captured_by_the_proxy_reach_curl(tmp_path, echo_server):
    path = tmp_path / "jar.txt"
    settings = {"sources": {"proxy": {"listen": "127.0.0.1:0"}}, **config(path)}
    with capture("proxy", "cookiejar", config=settings) as harness:
        proxy = f"http://127.0.0.1:{harness.capture.sources['proxy'].port}"
        curl("-x", proxy, "--noproxy", "", "-b", "client=sent", f"{echo_server}/set")
        assert wait_for(lambda: names_in(path).keys() == {"made", "wide", "client"}, timeout=5)
        assert sorted(curl("-b", str(path), f"{echo_server}/echo").split("; ")) == [
            "client=sent", "made=bycurl", "wide=1"]


@needs_curl
def test_a_single_label_or_ip_domain_is_host_only_and_curl_agrees_with_python(tmp_path, echo_server):
    """Issue 11, item 7: ``Domain=localhost`` was ``.localhost TRUE``, so curl sent it where browsers
    and Python's policy do not. Browsers keep it host-only."""
    port = echo_server.rsplit(":", 1)[1]
    path = tmp_path / "jar.txt"
    with capture("cookiejar", config=config(path)) as harness:
        harness.feed(set_cookie_flow(f"http://localhost:{port}/",
                                     "lh=1; Domain=localhost; Path=/; Max-Age=600",
                                     "other=1; Domain=example; Path=/"),  # not this host's: refused
                     set_cookie_flow(f"{echo_server}/", "ip=1; Domain=127.0.0.1; Path=/; Max-Age=600",
                                     "near=1; Domain=0.0.1; Path=/"))
        assert wait_for(lambda: names_in(path).keys() == {"lh", "ip"})
    lines = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert sorted((f[0], f[1]) for f in lines) == [("127.0.0.1", "FALSE"), ("localhost", "FALSE")]

    def python_sends(url: str) -> str:
        # Python's default policy sends a host-only cookie to subdomains too; this flag makes it
        # honour the file's FALSE as browsers and curl do.
        policy = http.cookiejar.DefaultCookiePolicy(
            strict_ns_domain=http.cookiejar.DefaultCookiePolicy.DomainStrictNonDomain)
        jar = http.cookiejar.MozillaCookieJar(str(path), policy=policy)
        jar.load(ignore_discard=True, ignore_expires=True)
        request = urllib.request.Request(url)
        jar.add_cookie_header(request)
        return request.get_header("Cookie") or ""

    for host, expected in (("localhost", "lh=1"), ("127.0.0.1", "ip=1"), ("sub.localhost", "")):
        url = f"http://{host}:{port}/echo"
        sent = curl("-b", str(path), "--resolve", f"sub.localhost:{port}:127.0.0.1", url)
        assert sent == expected, host
        if host != "localhost":  # Python's policy takes a dotless host as "localhost.local": it sends none
            assert python_sends(url) == expected, host


def _mozilla(path):
    jar = http.cookiejar.MozillaCookieJar(str(path))
    jar.load(ignore_discard=True, ignore_expires=True)
    return {(c.domain, c.path, c.name, c.value) for c in jar}


def test_an_export_has_the_cookies_seen_while_paused_before_a_clear_and_from_sources(tmp_path, capsys):
    """Issue 11 item 9: the exported jar is the live jar, read by MozillaCookieJar."""
    from flowtap.cli import main

    live, store = tmp_path / "live.txt", tmp_path / "store.db"
    settings = {"store": {"path": str(store)}, "session": {"name": "jarred"},
                "sinks": {"cookiejar": {"path": str(live)}}}
    with capture("cookiejar", config=settings) as harness:
        harness.feed(set_cookie_flow("http://example.com/", "x=1", "y=1", "cleared=1"))
        harness.session.pause()
        harness.feed(set_cookie_flow("http://example.com/p", "x=2", "y=; Max-Age=0", "paused=yes"))
        harness.session.resume()
        harness.feed(set_cookie_flow("http://example.com/", "recorded=1"))
        harness.session.clear()  # "cleared" came in a flow the clear forgets
        harness.capture.emitter("interceptor").cookies(
            [Cookie("ext", "1", "app.example.com", "/", LATER, True, True, "Strict", True)])
        harness.feed(set_cookie_flow("http://example.com/", "after=clear"))
    expected = {("example.com", "/", name, value) for name, value in (
        ("x", "2"), ("paused", "yes"), ("recorded", "1"), ("cleared", "1"), ("after", "clear"))}
    expected.add(("app.example.com", "/", "ext", "1"))
    assert _mozilla(live) == expected

    with flowtap.open_store(store) as opened:  # cookie events are not listed as session events
        session = opened.session("jarred")
        assert [e.kind for e in opened.events(session.id)] == ["pause", "resume", "clear"]
        assert any(e.kind == "cookies" for e in opened.events(session.id, cookies=True))

    exported = tmp_path / "exported.txt"
    export = ["export", "jarred", "--sink", "cookiejar", "-o", str(exported), "--set", f"store.path={store}"]
    code = main(export)
    assert code == 0, capsys.readouterr().err
    assert _mozilla(exported) == expected
    # -o names the file the export writes: an existing jar is replaced by the session's cookies (as -o
    # replaces a HAR or a collection), not merged into; the live sink is what merges into a jar.
    exported.write_text("# Netscape HTTP Cookie File\nother.test\tFALSE\t/\tFALSE\t0\tstale\t1\n")
    code = main(export)
    assert code == 0 and _mozilla(exported) == expected
    result = subprocess.run(["curl", "-s", "-o", os.devnull, "-w", "%{http_code}", "-b", str(exported),
                             "file:///dev/null"], capture_output=True, timeout=30)
    assert result.returncode == 0  # curl reads the exported jar


def test_the_store_keeps_a_cookie_event_only_when_a_cookie_changes(tmp_path, capsys):
    """A server that sets the same cookie with every response makes one event, not one per flow; the
    exported jar is still the live one."""
    from flowtap.cli import main

    live, store = tmp_path / "live.txt", tmp_path / "store.db"
    settings = {"store": {"path": str(store)}, "session": {"name": "repeated"},
                "sinks": {"cookiejar": {"path": str(live)}}}
    with capture("cookiejar", config=settings) as harness:
        harness.feed(set_cookie_flow("http://example.com/", "visit=1"))
        harness.feed(set_cookie_flow("http://example.com/", "visit=2"))
        harness.session.pause()
        harness.feed(set_cookie_flow("http://example.com/", "visit=1", "other=a"))  # changed, not stored
        harness.feed(set_cookie_flow("http://example.com/", "visit=1", "other=a"))
        harness.session.resume()
        for _ in range(20):
            harness.feed(set_cookie_flow("http://example.com/", "visit=1", "other=a"))
    expected = {("example.com", "/", "visit", "1"), ("example.com", "/", "other", "a")}
    assert _mozilla(live) == expected

    with flowtap.open_store(store) as opened:
        session = opened.session("repeated")
        events = [json.loads(e.text) for e in opened.events(session.id, cookies=True) if e.kind == "cookies"]
        assert [[(c["name"], c["value"]) for c in e["cookies"]] for e in events] == [
            [("visit", "1")], [("visit", "2")], [("visit", "1"), ("other", "a")]]
        assert session.flows == 22

    exported = tmp_path / "exported.txt"
    code = main(["export", "repeated", "--sink", "cookiejar", "-o", str(exported),
                 "--set", f"store.path={store}"])
    assert code == 0, capsys.readouterr().err
    assert _mozilla(exported) == expected


def test_a_cookie_event_lost_with_a_failed_commit_is_recorded_at_the_cookie_s_next_sight(tmp_path,
                                                                                        monkeypatch):
    import contextlib
    import sqlite3

    import flowtap.store.sink as store_sink

    store, failing = tmp_path / "store.db", threading.Event()
    real = store_sink.db.transaction

    @contextlib.contextmanager
    def transaction(conn):
        if failing.is_set():
            failing.clear()
            raise sqlite3.OperationalError("disk I/O error")
        with real(conn):
            yield

    monkeypatch.setattr(store_sink.db, "transaction", transaction)
    settings = {"store": {"path": str(store), "batch_interval": 0}, "session": {"name": "lost"},
                "sinks": {"cookiejar": {"path": str(tmp_path / "jar.txt")}}}  # a commit at every flush
    with capture("cookiejar", config=settings) as harness:
        harness.feed(make_flow())  # the session's row, committed
        failing.set()
        harness.feed(set_cookie_flow("http://example.com/", "visit=1"))  # its commit fails: event lost
        harness.feed(set_cookie_flow("http://example.com/", "visit=1"))
    with flowtap.open_store(store) as opened:
        session = opened.session("lost")
        events = [json.loads(e.text) for e in opened.events(session.id, cookies=True) if e.kind == "cookies"]
        assert [[(c["name"], c["value"]) for c in e["cookies"]] for e in events] == [[("visit", "1")]]
