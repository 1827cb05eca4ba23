"""The proxy plugin on the command line: `flowtap ca`, `flowtap run` with the proxy, the light import."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from clirun import flowtap
from upstream import Upstream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def run(data_dir, *args):
    return flowtap("ca", *args, env={"FLOWTAP_DATA_DIR": str(data_dir)})


def test_ca_creates_the_ca_on_first_use_and_says_how_to_trust_it(data_dir):
    out = run(data_dir)
    assert out.returncode == 0, out.stderr
    cert = data_dir / "ca" / "mitmproxy-ca-cert.pem"
    assert f"CA certificate: {cert}" in out.stdout
    assert "created a new CA" in out.stdout
    for hint in ("update-ca-certificates", "security add-trusted-cert", "certutil -addstore root",
                 "Firefox", "Android", "iOS"):
        assert hint in out.stdout
    issued = x509.load_pem_x509_certificate(cert.read_bytes())
    common_names = issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == ["flowtap CA"]
    assert (data_dir / "ca").stat().st_mode & 0o777 == 0o700
    assert (data_dir / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600

    again = run(data_dir)
    assert again.returncode == 0 and "created a new CA" not in again.stdout


def test_ca_fixes_key_permissions(data_dir):
    assert run(data_dir).returncode == 0
    key = data_dir / "ca" / "mitmproxy-ca.pem"
    key.chmod(0o644)
    assert run(data_dir).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("fmt", ["pem", "der", "p12"])
def test_ca_export(data_dir, tmp_path, fmt):
    target = tmp_path / f"flowtap.{fmt}"
    out = run(data_dir, "export", "--format", fmt, "-o", str(target))
    assert out.returncode == 0, out.stderr
    original = x509.load_pem_x509_certificate((data_dir / "ca" / "mitmproxy-ca-cert.pem").read_bytes())
    data = target.read_bytes()
    if fmt == "pem":
        exported = x509.load_pem_x509_certificate(data)
    elif fmt == "der":
        exported = x509.load_der_x509_certificate(data)
    else:
        key, cert, extra = pkcs12.load_key_and_certificates(data, None)
        assert key is None  # never the private key
        exported = cert or extra[0]
    assert exported == original
    assert b"PRIVATE KEY" not in data


def test_ca_export_to_an_unwritable_path_is_a_plain_error(data_dir, tmp_path):
    out = run(data_dir, "export", "-o", str(tmp_path / "missing" / "dir" / "ca.pem"))
    assert out.returncode == 2
    assert out.stderr.startswith("flowtap: error: ") and "No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_ca_regenerate_replaces_the_certificate(data_dir):
    assert run(data_dir).returncode == 0
    cert = data_dir / "ca" / "mitmproxy-ca-cert.pem"
    before = cert.read_bytes()
    out = run(data_dir, "regenerate")
    assert out.returncode == 0, out.stderr
    assert "must now trust this one" in out.stdout
    assert cert.read_bytes() != before
    assert (data_dir / "ca" / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600


def test_a_corrupt_ca_is_reported_with_its_path(data_dir):
    assert run(data_dir).returncode == 0
    key = data_dir / "ca" / "mitmproxy-ca.pem"
    key.write_text("garbage")
    out = run(data_dir)
    assert out.returncode == 1
    assert str(key) in out.stderr and "flowtap ca regenerate" in out.stderr
    assert "Traceback" not in out.stderr


def test_importing_the_plugin_does_not_import_mitmproxy():
    code = ("import sys, flowtap_proxy, flowtap_proxy.source, flowtap_proxy.ca; "
            "assert 'mitmproxy' not in sys.modules, 'mitmproxy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_flowtap_run_prints_the_proxy_settings_and_captures(tmp_path):
    config = tmp_path / "flowtap.toml"
    config.write_text('[sources.proxy]\nlisten = "127.0.0.1:0"\n')
    env = {**os.environ, "FLOWTAP_DATA_DIR": str(tmp_path / "data")}
    lines: queue.Queue[str] = queue.Queue()
    with Upstream() as upstream:
        proc = subprocess.Popen([sys.executable, "-m", "flowtap", "-c", str(config), "run", "--plain"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, env=env, cwd=tmp_path)
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
        try:
            seen = _until(lines, "export http_proxy=")
            proxy = re.search(r"export http_proxy=(http://127\.0\.0\.1:\d+) https_proxy=\1",
                              seen[-1]).group(1)
            ca_cert = str(tmp_path / "data" / "ca" / "mitmproxy-ca-cert.pem")
            assert any(ca_cert in line for line in seen + [_next(lines)])
            out = subprocess.run(["curl", "-sS", "-x", proxy, f"{upstream.url}/json"], capture_output=True,
                                 timeout=20)
            assert out.returncode == 0, out.stderr
            _until(lines, "/json")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
    assert proc.returncode == 0


def _next(lines: queue.Queue[str], timeout: float = 20) -> str:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("flowtap run printed nothing more") from None


def _until(lines: queue.Queue[str], text: str) -> list[str]:
    """Lines read up to and including the first containing ``text``."""
    seen = []
    while not seen or text not in seen[-1]:
        seen.append(_next(lines))
    return seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tgkill and /proc/PID/task are Linux's")
def test_ctrl_c_delivered_to_another_thread_still_ends_the_run(tmp_path):
    """The kernel may hand a process's SIGINT to any of its threads; run must end all the same."""
    import ctypes

    config = tmp_path / "flowtap.toml"
    config.write_text('[sources.proxy]\nlisten = "127.0.0.1:0"\n[store]\nenabled = false\n')
    env = {**os.environ, "FLOWTAP_DATA_DIR": str(tmp_path / "data")}
    lines: queue.Queue[str] = queue.Queue()
    proc = subprocess.Popen([sys.executable, "-m", "flowtap", "-c", str(config), "run", "--plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=tmp_path)
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        _until(lines, "Ctrl-C ends the session")
        others = [int(tid) for tid in os.listdir(f"/proc/{proc.pid}/task") if int(tid) != proc.pid]
        assert others, "flowtap run has no threads besides the main one"
        tgkill = 234 if os.uname().machine == "x86_64" else 131  # the syscall number (aarch64: 131)
        assert ctypes.CDLL(None, use_errno=True).syscall(tgkill, proc.pid, others[0], signal.SIGINT) == 0
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
