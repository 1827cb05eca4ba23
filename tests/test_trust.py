"""Trust: flowtap ca names every place clients keep trusted CAs; upstream_ca verifies a server
signed by a private CA (a corporate TLS proxy's, an internal one) without ssl_insecure."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import httpx
import pytest

import flowtap
from flowtap.testing import capture
from flowtap_proxy import ca

from clirun import flowtap as run_cli
from upstream import Upstream

pytestmark = pytest.mark.timeout(60)


def private_ca(directory: Path) -> tuple[Path, tuple[Path, Path]]:
    """A CA, and a certificate for 127.0.0.1 it signed with its key: ``(ca.pem, (cert.pem, key.pem))``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp TLS Inspection CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "internal.example")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("corp-ca.pem", "server.pem", "server-key.pem"))
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, (cert_file, key_file)


@pytest.fixture(scope="module")
def internal(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose certificate a private CA signed; yields (server, CA file)."""
    ca_file, cert = private_ca(tmp_path_factory.mktemp("corp"))
    with Upstream(cert) as server:
        yield server, ca_file


def get_through(harness, url: str) -> httpx.Response:
    port = harness.capture.sources["proxy"].port
    verify = ssl.create_default_context(cafile=str(ca.cert_path()))
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", verify=verify, trust_env=False, timeout=10) as client:
        return client.get(url)


def test_upstream_ca_makes_a_server_signed_by_a_private_ca_verify(internal):
    server, ca_file = internal
    proxy = {"listen": "127.0.0.1:0", "ssl_insecure": False}
    with capture("proxy", config={"sources": {"proxy": proxy}}) as h:  # without it: refused
        assert get_through(h, f"{server.url}/json").status_code == 502
        h.capture.sync(10)
        (flow,) = h.recorded.flows
        assert "certificate" in flow.error.lower()
    with capture("proxy", config={"sources": {"proxy": {**proxy, "upstream_ca": str(ca_file)}}}) as h:
        response = get_through(h, f"{server.url}/json")
        assert response.status_code == 200 and response.json()["ok"] is True
        h.capture.sync(10)
        (flow,) = h.recorded.flows
        assert flow.response.status_code == 200 and not flow.error


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("not a certificate\n", "expected a PEM file of CA certificates"),
])  # fmt: skip
def test_upstream_ca_must_be_a_readable_pem_file(tmp_path, content, message):
    path = tmp_path / "corp-ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(flowtap.ConfigError, match=message):
        table = {"listen": "127.0.0.1:0", "upstream_ca": str(path)}
        with capture("proxy", config={"sources": {"proxy": table}}):
            pass


def test_port_in_use_says_it_in_flowtaps_terms_only(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "flowtap.toml").write_text(f"[sources.proxy]\nlisten = '127.0.0.1:{port}'\n")
        result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"flowtap: error: source 'proxy': cannot listen on 127.0.0.1:{port}: the port is in use; "
        "set [sources.proxy] listen to another port")
    assert "--mode" not in result.stderr and "Try specifying" not in result.stderr
    assert "mitmproxy" not in result.stderr


def test_ca_says_how_to_trust_it_where_people_get_stuck(tmp_path):
    result = run_cli("ca", env={"FLOWTAP_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    out, cert = result.stdout, tmp_path / "data" / "ca" / "mitmproxy-ca-cert.pem"
    for hint in [
        f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n 'flowtap CA' -i {cert}",  # Chrome on Linux
        f"keytool -importcert -noprompt -alias flowtap -file {cert} -keystore flowtap.p12",     # Java
        "-Djavax.net.ssl.trustStore=flowtap.p12",
        f"export NODE_EXTRA_CA_CERTS={cert}",                                                   # Node
        "Node ignores https_proxy unless told. Node 24.0+ or 22.21+: also",
        "export NODE_USE_ENV_PROXY=1 https_proxy=http://127.0.0.1:5555",
        "npm install undici@7", "setGlobalDispatcher(new EnvHttpProxyAgent())", "new HttpsProxyAgent(",
        f"export REQUESTS_CA_BUNDLE={cert}", f"export SSL_CERT_FILE={cert}",                     # Python
        "adb push", "emulator -avd NAME -writable-system -http-proxy 127.0.0.1:5555",          # Android
        "docker run --add-host=host.docker.internal:host-gateway",                              # containers
        "update-ca-certificates", "security add-trusted-cert", "certutil -addstore root", "Firefox", "iOS",
    ]:  # fmt: skip
        assert hint in out, hint


def test_ca_fills_in_the_proxy_address_the_config_names(tmp_path):
    env = {"FLOWTAP_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "flowtap.toml").write_text("[sources.proxy]\nlisten = '0.0.0.0:8081'\n")
    out = run_cli("ca", env=env, cwd=tmp_path).stdout
    assert "-x http://127.0.0.1:8081 " in out and "-Dhttps.proxyPort=8081" in out and "5555" not in out
    out = run_cli("--set", "sources.proxy.listen=127.0.0.1:0", "ca", env=env, cwd=tmp_path).stdout
    assert "-x http://127.0.0.1:5555 " in out  # any free port: the default is the best guess
