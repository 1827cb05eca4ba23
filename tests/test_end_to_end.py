"""A real capture, as a user runs it: `flowtap run`, real clients, every sink, judged by outside tools.

curl and httpx (and a headless Chromium) go through the proxy to local HTTP and HTTPS
servers; the HAR, the Postman collection, the cookie jar and the store that result are
judged by tools nobody here wrote: har-schema, mitmproxy's HAR reader, Postman's collection
schema, newman replaying the collection, curl using the jar.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from flowtap_proxy import ca

from npmtools import HAR_SCHEMA, POSTMAN, Judge, load_json, npm_install
from test_har import mitmdump
from upstream import Upstream, free_port, self_signed

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    cert = self_signed(tmp_path_factory.mktemp("cert"))
    with Upstream() as plain, Upstream(cert) as secure:
        yield plain, secure


def loopback_dns(command: list[str], tmp_path: Path) -> list[str]:
    """``command`` run where the name resolver is 127.0.0.1, so no lookup leaves the machine.

    A browser makes requests of its own (updates, sign-in); through the proxy they would
    make flowtap look their names up. In a private mount namespace, /etc/resolv.conf
    names a resolver on loopback where nothing answers, so each lookup fails at once.
    """
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    return ["unshare", "--mount", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh",
            *command]


def can_isolate_dns() -> bool:
    try:
        probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind /dev/null /etc/hostname"],
                               capture_output=True, timeout=10)
    except OSError:
        return False
    return probe.returncode == 0


def start_run(tmp_path: Path, port: int, *extra: str, wrap=lambda command: command) -> subprocess.Popen:
    (tmp_path / "flowtap.toml").write_text(f"""
[session]
name = "e2e"
[sources.proxy]
listen = "127.0.0.1:{port}"
ssl_insecure = true
[sinks.har]
path = "out/{{session}}.har"
[sinks.collection]
path = "out/{{session}}.postman_collection.json"
organize = "domain+endpoint"
[sinks.cookiejar]
path = "out/cookies.txt"
[store]
path = "out/store.db"
""")
    proc = subprocess.Popen(wrap([sys.executable, "-m", "flowtap", "run", *extra]), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    banner = ""
    while "listening on" not in banner and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner += line
    assert "listening on" in banner, banner + proc.stderr.read()
    return proc


def stop_run(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def test_a_capture_judged_by_outside_tools(tmp_path, servers):
    plain, secure = servers
    har_judge, postman_judge = Judge(npm_install("har", HAR_SCHEMA)), Judge(npm_install("postman", POSTMAN))
    port = free_port()
    proc = start_run(tmp_path, port)
    try:
        proxy = f"http://127.0.0.1:{port}"
        curl = ["curl", "-sS", "--max-time", "10", "-x", proxy, "--cacert", str(ca.cert_path())]
        subprocess.run([*curl, f"{plain.url}/json"], check=True, capture_output=True, timeout=20)
        subprocess.run([*curl, "-H", "Content-Type: application/json", "--data", '{"name":"ann"}',
                        f"{secure.url}/echo"], check=True, capture_output=True, timeout=20)
        with httpx.Client(proxy=proxy, verify=str(ca.cert_path()), trust_env=False, timeout=10) as client:
            assert client.get(f"{secure.url}/gzip").json()["message"].startswith("hello")
            assert client.post(f"{plain.url}/echo", data={"a": "1", "b": "two words"}).status_code == 200
    finally:
        out = stop_run(proc)
    assert "4 recorded" in out, out

    har = tmp_path / "out" / "e2e.har"
    assert har_judge.har_errors(har) == ""
    entries = load_json(har)["log"]["entries"]
    assert [(e["request"]["method"], e["request"]["url"]) for e in entries] == [
        ("GET", f"{plain.url}/json"), ("POST", f"{secure.url}/echo"),
        ("GET", f"{secure.url}/gzip"), ("POST", f"{plain.url}/echo")]
    assert entries[1]["request"]["postData"]["text"] == '{"name":"ann"}'
    assert "hello" in entries[2]["response"]["content"]["text"]
    read = mitmdump(har, tmp_path)
    assert read.returncode == 0, read.stderr

    collection = tmp_path / "out" / "e2e.postman_collection.json"
    assert postman_judge.postman_errors(collection) == ""
    plain.seen.clear()
    secure.seen.clear()
    replay = postman_judge.newman(collection, "--insecure")
    assert replay.returncode == 0, replay.stdout[-3000:]
    assert sorted((m, p) for m, p, *_ in plain.seen + secure.seen) == [
        ("GET", "/gzip"), ("GET", "/json"), ("POST", "/echo"), ("POST", "/echo")]

    jar = tmp_path / "out" / "cookies.txt"
    sent = subprocess.run(["curl", "-sS", "-b", str(jar), "-o", "/dev/null", f"{plain.url}/json"],
                          capture_output=True, timeout=20)
    assert sent.returncode == 0
    assert any("session=abc123" in dict(headers).get("Cookie", "") for _, _, headers, _ in plain.seen[-1:])

    assert sorted(flow["url"] for flow in stored(tmp_path, "~m POST")) == [f"{plain.url}/echo",
                                                                           f"{secure.url}/echo"]


def stored(tmp_path: Path, expression: str) -> list[dict]:
    """What `flowtap search EXPRESSION --json` finds in the run's store (its flowtap.toml names it)."""
    found = subprocess.run([sys.executable, "-m", "flowtap", "search", expression, "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=30)
    assert found.returncode == 0, found.stderr
    return [json.loads(line) for line in found.stdout.splitlines()]


def chromium_binary() -> str | None:
    for path in ("/usr/lib/chromium/chromium",):
        if os.access(path, os.X_OK):
            return path
    return None


def spki_hash(cert: Path) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list wants for a CA."""
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.mark.skipif(chromium_binary() is None,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(not can_isolate_dns(), reason="needs `unshare --mount` (root) to keep the browser's own "
                                                  "background lookups on loopback")
def test_a_browser_through_the_proxy(tmp_path, servers):
    plain, secure = servers
    port = free_port()
    proc = start_run(tmp_path, port, wrap=lambda command: loopback_dns(command, tmp_path))
    profile = tmp_path / "profile"
    browser = subprocess.Popen(loopback_dns([
        chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--no-first-run", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
        f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
        f"--ignore-certificate-errors-spki-list={spki_hash(ca.cert_path())}", "--remote-debugging-port=0",
        "about:blank",
    ], tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (profile / "DevToolsActivePort").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        devtools = (profile / "DevToolsActivePort").read_text().split()[0]
        for url in (f"{plain.url}/json", f"{secure.url}/json"):
            request = urllib.request.Request(f"http://127.0.0.1:{devtools}/json/new?{url}", method="PUT")
            urllib.request.urlopen(request, timeout=10).close()
        deadline = time.monotonic() + 30
        while len(stored(tmp_path, "~u /json$ & ~c 200")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        browser.kill()
        browser.wait(10)
        out = stop_run(proc)
    lines = [line for line in out.splitlines() if "/json" in line and " GET " in f" {line} "]
    assert len(lines) >= 2, out
    entries = load_json(tmp_path / "out" / "e2e.har")["log"]["entries"]
    urls = {e["request"]["url"] for e in entries}
    assert {f"{plain.url}/json", f"{secure.url}/json"} <= urls
    agent = next(e for e in entries if e["request"]["url"] == f"{secure.url}/json")["request"]["headers"]
    assert any(h["name"].lower() == "user-agent" and "Chrome" in h["value"] for h in agent)
