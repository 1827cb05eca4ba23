"""Each client `flowtap ca` names, made to trust flowtap's CA by the very steps it prints.

One real `flowtap run` (its proxy on a free loopback port; its flowtap.toml names that port, so
`flowtap ca` run beside it prints that address) sits in front of an HTTPS server on 127.0.0.1.
For each client the commands are taken from `flowtap ca`'s output and run as printed (so the text
and this test cannot drift apart); the client then fetches a page through the proxy and must get
it, and flowtap must have recorded the flow. Without the trust step the same client must fail on
the certificate, and flowtap must record that the client did not trust its CA.

A client is skipped only when its program is missing, with how to get it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from npmtools import npm_install
from test_end_to_end import can_isolate_dns, chromium_binary, loopback_dns
from upstream import Upstream, free_port, self_signed

pytestmark = pytest.mark.timeout(240)

#: What `flowtap ca` tells Node 20 users to install (it says "undici@7"), pinned.
NODE_PACKAGES = ("undici@7.30.2", "https-proxy-agent@7.0.6")
NOT_TRUSTED = "trust flowtap's CA"  # in the error flowtap records for a client that refused its certificate


@dataclass
class Rig:
    workdir: Path  # where the run's flowtap.toml and store are
    upstream: str  # https://127.0.0.1:PORT
    printed: str  # what `flowtap ca` printed there
    cert: Path  # the CA certificate `flowtap ca` names

    def url(self, client: str) -> str:
        return f"{self.upstream}/json?client={client}"

    def line(self, marker: str) -> str:
        """The one printed line that contains ``marker``, without surrounding blanks."""
        found = [line.strip() for line in self.printed.splitlines() if marker in line]
        assert len(found) == 1, (marker, found)
        return found[0]

    def recorded(self, client: str) -> dict:
        """The flow flowtap stored for ``client``'s request (waits for the store to have it)."""
        flows = self._wait_for(f"~u client={client}$", lambda found: len(found) >= 1)
        (flow,) = flows
        return flow

    def refusals(self) -> int:
        """How many flows flowtap recorded of a client that did not trust its CA."""
        return len([f for f in self._search("~e") if NOT_TRUSTED in (f["error"] or "")])

    def wait_for_refusal(self, before: int) -> None:
        """Wait until flowtap recorded one more refusal than ``before``."""
        self._wait_for("~e", lambda found: sum(NOT_TRUSTED in (f["error"] or "") for f in found) > before)

    def _wait_for(self, expression: str, done) -> list[dict]:
        deadline = time.monotonic() + 20
        found = self._search(expression)
        while not done(found) and time.monotonic() < deadline:
            time.sleep(0.2)  # the store commits in batches; polling it is the only way to see one
            found = self._search(expression)
        assert done(found), (expression, found)
        return found

    def _search(self, expression: str) -> list[dict]:
        result = subprocess.run([sys.executable, "-m", "flowtap", "search", expression, "--json"],
                                cwd=self.workdir, capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("run")
    port = free_port()
    (workdir / "flowtap.toml").write_text(f"""
[sources.proxy]
listen = "127.0.0.1:{port}"
ssl_insecure = true   # the upstream's own certificate is self-signed; the clients' side is the test
[store]
path = "store.db"
""")
    printed = subprocess.run([sys.executable, "-m", "flowtap", "ca"], cwd=workdir, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert printed.returncode == 0, printed.stderr
    named = re.search(r"^CA certificate: (.+)$", printed.stdout, re.M)
    assert named, printed.stdout
    cert = Path(named[1])
    command = [sys.executable, "-m", "flowtap", "run"]
    if can_isolate_dns():  # a browser's own background requests must not make flowtap look names up
        command = loopback_dns(command, workdir)
    with Upstream(self_signed(workdir)) as upstream:
        proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        assert proc.stdout and proc.stderr
        try:
            banner = ""
            while "listening on" not in banner:  # bounded: the run prints it or exits (the test's timeout)
                line = proc.stdout.readline()
                if not line:
                    break
                banner += line
            assert "listening on" in banner, banner + proc.stderr.read()
            assert f"http://127.0.0.1:{port}" in printed.stdout
            yield Rig(workdir, upstream.url, printed.stdout, cert)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)


def run(command: list[str] | str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """A bounded subprocess, its output as text, no stdin."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          **kwargs)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any proxy or CA setting of the caller's, plus ``extra``."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ssl_cert_file", "ssl_cert_dir",
            "requests_ca_bundle", "curl_ca_bundle", "node_extra_ca_certs", "node_use_env_proxy",
            "node_options"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    env.update(extra)
    return env


def exported(line: str) -> dict[str, str]:
    """``export A=1 B=2   (a remark)`` → ``{"A": "1", "B": "2"}``: the assignments after ``export``."""
    words = re.match(r"(?:\w+=\S+ ?)+", line[line.index("export ") + len("export "):])
    assert words, line
    return dict(word.split("=", 1) for word in words[0].split())


# -- Chrome/Chromium on Linux: the NSS database in $HOME/.pki/nssdb ----------------------------


@pytest.mark.skipif(shutil.which("certutil") is None,
                    reason="certutil is missing: apt-get install libnss3-tools (.ci/run installs it)")
@pytest.mark.skipif(chromium_binary() is None,
                    reason="Debian's chromium is missing: apt-get install chromium (.ci/run installs it)")
@pytest.mark.skipif(not can_isolate_dns(), reason="needs `unshare --mount` (root) to keep the browser's own "
                                                  "background lookups on loopback")
def test_chromium_trusts_the_ca_in_its_nss_database(rig, tmp_path):
    create = rig.line("(no database yet: ")
    create = create[create.index("no database yet: ") + len("no database yet: "):].rstrip(";")
    add = rig.line("certutil -d sql:$HOME/.pki/nssdb -A")
    flags = shlex.split(rig.line("start it with --proxy-server=")) + shlex.split(
        rig.line("--proxy-bypass-list=").rstrip(")"))
    flags = [f for f in flags if f.startswith("--proxy-")]
    assert [f.partition("=")[0] for f in flags] == ["--proxy-server", "--proxy-bypass-list"], flags

    def browse(home: Path, client: str) -> tuple[str, str]:
        netlog = home / "netlog.json"
        result = run(loopback_dns([
            chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={home / 'profile'}", f"--log-net-log={netlog}", *flags,
            "--dump-dom", rig.url(client),
        ], tmp_path), env=clean_env(HOME=str(home)), timeout=90)
        return result.stdout, netlog.read_text() if netlog.exists() else ""

    before = rig.refusals()
    (tmp_path / "untrusting").mkdir()
    page, netlog = browse(tmp_path / "untrusting", "chromium-untrusted")
    assert '"ok": true' not in page
    assert '"net_error":-202' in netlog  # ERR_CERT_AUTHORITY_INVALID
    rig.wait_for_refusal(before)

    home = tmp_path / "trusting"
    home.mkdir()
    for command in (create, add):  # as printed, in a shell where $HOME and ~ are the browser's home
        result = run(["sh", "-c", command], env=clean_env(HOME=str(home)), timeout=60)
        assert result.returncode == 0, (command, result.stderr)
    page, _ = browse(home, "chromium")
    assert '"ok": true' in page, page
    assert rig.recorded("chromium")["status"] == 200


# -- Java: a trust store made with keytool, given to the JVM ----------------------------------

FETCH_JAVA = """
import java.io.InputStream;
import java.net.URL;
import javax.net.ssl.HttpsURLConnection;

public class Fetch {
    public static void main(String[] args) throws Exception {
        HttpsURLConnection connection = (HttpsURLConnection) new URL(args[0]).openConnection();
        connection.setConnectTimeout(10000);
        connection.setReadTimeout(10000);
        try (InputStream body = connection.getInputStream()) {
            System.out.println(connection.getResponseCode() + " " + new String(body.readAllBytes(), "UTF-8"));
        }
    }
}
"""


@pytest.mark.skipif(not all(map(shutil.which, ("java", "javac", "keytool"))),  # `java Fetch.java` needs a JDK
                    reason="a JDK (java, javac, keytool) is missing: apt-get install default-jdk-headless "
                           "(.ci/run installs it)")
def test_java_trusts_the_ca_in_a_keytool_store(rig, tmp_path):
    keytool = shlex.split(rig.line("keytool -importcert -noprompt"))
    # the command, its continuation line, and the remark on loopback
    java_lines = rig.printed[rig.printed.index("    java -D"):].splitlines()[:3]
    assert "-Dhttp.nonProxyHosts=" in java_lines[2]
    options = re.findall(r"-D[\w.]+=[^\s)]*", " ".join(java_lines))
    trust = [o for o in options if o.startswith("-Djavax.net.ssl.")]
    assert len(trust) == 2 and len(options) == 7, options
    (tmp_path / "Fetch.java").write_text(FETCH_JAVA)

    before = rig.refusals()
    proxy_only = [o for o in options if o not in trust]
    untrusting = run(["java", *proxy_only, "Fetch.java", rig.url("java-untrusted")], cwd=tmp_path,
                     env=clean_env())
    assert untrusting.returncode != 0
    assert "PKIX path building failed" in untrusting.stderr, untrusting.stderr[-2000:]
    rig.wait_for_refusal(before)

    made = run(keytool, cwd=tmp_path, timeout=60)  # writes flowtap.p12 here, where the JVM looks for it
    assert made.returncode == 0, made.stdout + made.stderr
    trusting = run(["java", *options, "Fetch.java", rig.url("java")], cwd=tmp_path, env=clean_env())
    assert trusting.returncode == 0, trusting.stderr[-2000:]
    assert trusting.stdout.startswith('200 {"ok": true'), trusting.stdout
    assert rig.recorded("java")["status"] == 200


# -- Node.js: NODE_EXTRA_CA_CERTS, and a proxy agent on Node before 22.21 ---------------------

FETCH_JS = """
const response = await fetch(process.argv[2], { signal: AbortSignal.timeout(10000) });
console.log(response.status, await response.text());
"""

REQUEST_JS = """
const https = require("https");
const { HttpsProxyAgent } = require("https-proxy-agent");
const request = https.get(process.argv[2], { %s, timeout: 10000 }, (response) => {
  let body = "";
  response.on("data", (chunk) => { body += chunk; });
  response.on("end", () => console.log(response.statusCode, body));
});
request.on("timeout", () => request.destroy(new Error("timed out")));
request.on("error", (error) => { console.error(error.code, error.message); process.exit(1); });
"""


def node_version() -> tuple[int, int]:
    found = run(["node", "--version"], timeout=30).stdout.strip().lstrip("v").split(".")
    return int(found[0]), int(found[1])


def has_env_proxy(version: tuple[int, int]) -> bool:
    """Whether this Node has NODE_USE_ENV_PROXY for fetch(), as `flowtap ca` says (24.0+, 22.21+)."""
    return version >= (24, 0) or (version[0] == 22 and version >= (22, 21))


@pytest.mark.skipif(shutil.which("node") is None,
                    reason="node is missing: apt-get install nodejs npm (.ci/run installs them)")
def test_node_trusts_the_ca_from_node_extra_ca_certs(rig, tmp_path):
    extra = exported(rig.line("export NODE_EXTRA_CA_CERTS="))
    assert extra == {"NODE_EXTRA_CA_CERTS": str(rig.cert)}
    env_proxy = exported(rig.line("export NODE_USE_ENV_PROXY=1"))
    proxy = env_proxy["https_proxy"]
    if has_env_proxy(node_version()):
        scripts = {"fetch.mjs": FETCH_JS}  # the built-in fetch() with Node's own proxy switch
        env = env_proxy
    else:  # the steps printed for older Node: undici's global dispatcher, https-proxy-agent
        install = rig.line("npm install undici@7")
        assert f"export https_proxy={proxy}," in install
        assert NODE_PACKAGES[0].startswith("undici@7.") and "npm install https-proxy-agent" in rig.printed
        root = npm_install("ca-clients", NODE_PACKAGES)
        (tmp_path / "node_modules").symlink_to(root / "node_modules")
        scripts = {"fetch.mjs": rig.line('from "undici"') + "\n" + FETCH_JS,
                   "request.cjs": REQUEST_JS % rig.line("agent: new HttpsProxyAgent(")}
        env = {"https_proxy": proxy}
    for name, script in scripts.items():
        (tmp_path / name).write_text(script)

    for name in scripts:
        client = f"node-{name.partition('.')[0]}"
        before = rig.refusals()
        untrusting = run(["node", name, rig.url(f"{client}-untrusted")], cwd=tmp_path, env=clean_env(**env),
                         timeout=60)
        assert untrusting.returncode != 0
        assert "UNABLE_TO_VERIFY_LEAF_SIGNATURE" in untrusting.stdout + untrusting.stderr, untrusting
        rig.wait_for_refusal(before)
        trusting = run(["node", name, rig.url(client)], cwd=tmp_path, env=clean_env(**env, **extra),
                       timeout=60)
        assert trusting.returncode == 0, trusting.stderr[-2000:]
        assert trusting.stdout.startswith('200 {"ok": true'), trusting.stdout
        assert rig.recorded(client)["status"] == 200


# -- Python (requests, httpx, urllib) and curl -------------------------------------------------

PYTHON_CLIENTS = {
    "httpx": "import httpx, sys; r = httpx.get(sys.argv[1], timeout=10); print(r.status_code, r.text)",
    "urllib": "import urllib.request, sys; r = urllib.request.urlopen(sys.argv[1], timeout=10); "
              "print(r.status, r.read().decode())",
    "requests": "import requests, sys; r = requests.get(sys.argv[1], timeout=10); "
                "print(r.status_code, r.text)",
}


@pytest.mark.parametrize("library", PYTHON_CLIENTS)
def test_python_trusts_the_ca_from_the_variable_printed_for_it(rig, tmp_path, library):
    if library == "requests" and importlib.util.find_spec("requests") is None:
        pytest.skip("requests is not installed here (not a flowtap dependency): pip install requests")
    variable = "REQUESTS_CA_BUNDLE" if library == "requests" else "SSL_CERT_FILE"
    trust = exported(rig.line(f"export {variable}="))
    assert trust == {variable: str(rig.cert)}
    proxy = re.search(r"With https_proxy=(\S+) exported, requests, httpx and urllib use", rig.printed)
    assert proxy
    env = {"https_proxy": proxy[1]}

    def fetch(client: str, **extra: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-c", PYTHON_CLIENTS[library], rig.url(client)], cwd=tmp_path,
                   env=clean_env(**env, **extra), timeout=60)

    before = rig.refusals()
    untrusting = fetch(f"{library}-untrusted")
    assert untrusting.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusting.stderr, untrusting.stderr
    rig.wait_for_refusal(before)
    trusting = fetch(library, **trust)
    assert trusting.returncode == 0, trusting.stderr[-2000:]
    assert trusting.stdout.startswith('200 {"ok": true'), trusting.stdout
    assert rig.recorded(library)["status"] == 200

    # The bundle for sites reached directly too: certifi's list and the CA, made as printed
    bundle = rig.line("trust a bundle of both:")
    bundle = bundle[bundle.index("cat "):]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # python3: this one
    made = run(["sh", "-c", bundle], cwd=tmp_path, env=clean_env(PATH=path), timeout=60)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "bundle.pem").read_text().count("BEGIN CERTIFICATE") > 100
    both = fetch(f"{library}-bundle", **{variable: str(tmp_path / "bundle.pem")})
    assert both.returncode == 0, both.stderr[-2000:]
    assert rig.recorded(f"{library}-bundle")["status"] == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is missing: apt-get install curl")
def test_curl_trusts_the_ca_given_with_cacert(rig):
    line = rig.line("curl --cacert")
    command = shlex.split(line[line.index("curl --cacert"):])
    assert command[-1] == "https://..."
    command = [*command[:-1], "-sS", "--max-time", "10"]
    before = rig.refusals()
    without = [c for c in command if c not in ("--cacert", str(rig.cert))]
    untrusting = run([*without, rig.url("curl-untrusted")], env=clean_env(), timeout=30)
    assert untrusting.returncode == 60, untrusting  # "Peer certificate cannot be authenticated"
    rig.wait_for_refusal(before)
    trusting = run([*command, rig.url("curl")], env=clean_env(), timeout=30)
    assert trusting.returncode == 0 and trusting.stdout.startswith('{"ok": true'), trusting
    assert rig.recorded("curl")["status"] == 200
