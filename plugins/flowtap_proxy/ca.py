"""flowtap's certificate authority: where it lives, creating it, and the ``flowtap ca`` command.

The CA is mitmproxy's certificate store in ``<data dir>/ca`` (the platformdirs
user data dir, or ``$FLOWTAP_DATA_DIR``), never ``~/.mitmproxy``. mitmproxy
names its files after its fixed basename, ``mitmproxy-ca*.pem``; the certificate
inside is issued to "flowtap CA". mitmproxy is imported inside functions only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: mitmproxy's tlsconfig addon looks for ``<confdir>/<BASENAME>-ca.pem``; it cannot be changed.
BASENAME = "mitmproxy"
CA_NAME = "flowtap CA"
KEY_SIZE = 2048
#: Files holding the private key: readable by the owner only.
SECRET_FILES = (f"{BASENAME}-ca.pem", f"{BASENAME}-ca.p12")
ALL_FILES = (*SECRET_FILES, f"{BASENAME}-ca-cert.pem", f"{BASENAME}-ca-cert.cer",
             f"{BASENAME}-ca-cert.p12", f"{BASENAME}-dhparam.pem")


class CAError(Exception):
    """The CA cannot be created or read; the message names the path."""


def ca_dir() -> Path:
    """The directory of flowtap's CA: ``$FLOWTAP_DATA_DIR/ca`` or ``<user data dir>/ca``."""
    base = os.environ.get("FLOWTAP_DATA_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_data_dir("flowtap")
    return Path(base) / "ca"


def cert_path(confdir: Path | None = None) -> Path:
    """The CA certificate (PEM, no key): the file clients must trust."""
    return (confdir or ca_dir()) / f"{BASENAME}-ca-cert.pem"


def ensure_ca(confdir: Path | None = None) -> tuple[Path, bool]:
    """Create the CA on first use and keep its key files owner-only.

    Returns the certificate path and whether the CA was created now.
    :raises CAError: the directory is not writable or the CA file is unreadable.
    """
    from mitmproxy import certs

    confdir = confdir or ca_dir()
    created = False
    try:
        if not (confdir / f"{BASENAME}-ca.pem").exists():
            confdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            certs.CertStore.create_store(confdir, BASENAME, KEY_SIZE, organization="flowtap", cn=CA_NAME)
            created = True
        os.chmod(confdir, 0o700)
        for name in SECRET_FILES:
            if (confdir / name).exists():
                os.chmod(confdir / name, 0o600)
        certs.CertStore.from_store(confdir, BASENAME, KEY_SIZE)
    except OSError as exc:
        raise CAError(f"{exc.filename or confdir}: {exc.strerror}") from None
    except ValueError as exc:
        raise CAError(f"{confdir / (BASENAME + '-ca.pem')}: cannot read the CA ({exc}); "
                      "run `flowtap ca regenerate` to replace it") from None
    return cert_path(confdir), created


def load_cert(confdir: Path | None = None):
    """The CA certificate as a :class:`mitmproxy.certs.Cert`, creating the CA if needed."""
    from mitmproxy import certs

    path, _ = ensure_ca(confdir)
    return certs.Cert.from_pem(path.read_bytes())


def regenerate(confdir: Path | None = None) -> Path:
    """Replace the CA with a new one; clients must trust the new certificate."""
    confdir = confdir or ca_dir()
    for name in ALL_FILES:
        try:
            (confdir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CAError(f"{confdir / name}: {exc.strerror}") from None
    return ensure_ca(confdir)[0]


def trust_instructions(path: Path, proxy: str = "http://127.0.0.1:5555") -> list[str]:
    """How to make each kind of client trust the certificate at ``path`` (and use the proxy at ``proxy``).

    Systems, then browsers, then languages and tools (each of which may keep a list of its own,
    ignoring the system's), then devices and containers. docs/guide.md ("Trusting the CA")
    says the same with more words.
    """
    cer = path.with_suffix(".cer")
    host, _, port = proxy.removeprefix("http://").rpartition(":")
    return [
        "Clients must trust this certificate for flowtap to see their HTTPS traffic.",
        "",
        "The system's store (curl, wget, Go, Ruby, most programs; Chrome on macOS and Windows):",
        f"  Debian/Ubuntu:   sudo cp {path} /usr/local/share/ca-certificates/flowtap.crt"
        " && sudo update-ca-certificates",
        f"  Fedora/RHEL:     sudo cp {path} /etc/pki/ca-trust/source/anchors/flowtap.pem"
        " && sudo update-ca-trust",
        "  macOS:           sudo security add-trusted-cert -d -r trustRoot"
        f" -k /Library/Keychains/System.keychain {path}",
        f"  Windows:         certutil -addstore root {cer}   (in an administrator prompt)",
        "",
        "Browsers:",
        "  Chrome/Chromium on Linux: its own NSS database, not the system's (certutil is in libnss3-tools",
        "                  on Debian/Ubuntu, nss-tools on Fedora); then restart the browser:",
        f"    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n 'flowtap CA' -i {path}",
        "    (no database yet: mkdir -p ~/.pki/nssdb && certutil -d sql:$HOME/.pki/nssdb -N"
        " --empty-password;",
        "    Chromium as a snap: ~/snap/chromium/current/.pki/nssdb)",
        f"    start it with --proxy-server={proxy}",
        "  Firefox:         Settings > Privacy & Security > Certificates > View Certificates > Authorities >",
        f"                   Import {path}, tick \"Trust this CA to identify websites\"",
        "",
        "Languages and tools (each with a list of its own):",
        f"  curl:            curl --cacert {path} -x {proxy} https://...",
        f"  Python requests: export REQUESTS_CA_BUNDLE={path}",
        f"  Python httpx, urllib, aiohttp (the ssl module): export SSL_CERT_FILE={path}",
        "                   Both replace the usual list: sites reached directly (no_proxy) then fail; for",
        "                   those, trust a bundle of both:"
        f" cat \"$(python3 -m certifi)\" {path} > bundle.pem",
        f"  Node.js:         export NODE_EXTRA_CA_CERTS={path}   (added to Node's list; read at start-up)",
        "                   Node's fetch() ignores https_proxy: on Node 24.0+ or 22.21+ also",
        f"                   export NODE_USE_ENV_PROXY=1 https_proxy={proxy}   (http/https.request too",
        "                   on 24.5+); older Node: a proxy agent, e.g. undici's",
        "                   setGlobalDispatcher(new EnvHttpProxyAgent()), or https-proxy-agent for axios/got",
        "  Java:            keytool keeps its own store; make one with the CA and point the JVM at it:",
        f"    keytool -importcert -noprompt -alias flowtap -file {path} -keystore flowtap.p12"
        " -storepass changeit",
        "    java -Djavax.net.ssl.trustStore=flowtap.p12 -Djavax.net.ssl.trustStorePassword=changeit \\",
        f"         -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.proxyHost={host}"
        f" -Dhttp.proxyPort={port} ...",
        f"    (or into the JDK's own list: keytool -importcert -cacerts -storepass changeit -alias flowtap"
        f" -file {path})",
        "",
        "Devices and containers:",
        "  Android emulator (7 to 13): apps trust only system CAs unless they opt in, so make it one; a",
        "                   Google APIs image (not Google Play), started with -writable-system, the first",
        "                   time: adb root; adb disable-verity; adb reboot. Then:",
        f"    adb root && adb remount && adb push {path} /system/etc/security/cacerts/"
        f"$(openssl x509 -subject_hash_old -noout -in {path}).0 && adb reboot",
        f"    emulator -avd NAME -writable-system -http-proxy {host}:{port}",
        "                   (Android 14 reads system CAs from a read-only module: there, only apps that",
        "                   opt in to user CAs, as on a device, can be captured)",
        f"  Android device:  copy {cer} to it; Settings > Security > Encryption & credentials >",
        "                   Install a certificate > CA certificate (only apps that opt in trust user CAs);",
        "                   set the Wi-Fi proxy to this machine's address (flowtap must listen on it)",
        f"  iOS:             send {path} to the device, install it in Settings > General > VPN & Device",
        "                   Management, then enable it in Settings > General > About >"
        " Certificate Trust Settings",
        "  Docker containers: mount it, trust it, and reach the proxy on the host (flowtap must listen",
        "                   where containers can reach it, e.g. [sources.proxy]"
        f" listen = \"0.0.0.0:{port}\"):",
        f"    docker run --add-host=host.docker.internal:host-gateway -v {path}:/flowtap-ca.pem:ro \\",
        f"      -e https_proxy=http://host.docker.internal:{port}"
        f" -e http_proxy=http://host.docker.internal:{port} \\",
        "      -e SSL_CERT_FILE=/flowtap-ca.pem -e REQUESTS_CA_BUNDLE=/flowtap-ca.pem"
        " -e NODE_EXTRA_CA_CERTS=/flowtap-ca.pem IMAGE",
        "    (for every program in a Debian-based image: copy it to"
        " /usr/local/share/ca-certificates/flowtap.crt",
        "    and run update-ca-certificates in the image)",
    ]


# -- the `flowtap ca` command ---------------------------------------------------------


def setup(parser: argparse.ArgumentParser) -> None:
    from flowtap.commandline import describe

    describe(parser, "Where flowtap's CA certificate is, and how to make each kind of client trust it: the "
                     "system stores, Chrome/Chromium on Linux, Firefox, Java, Node.js, Python, Android "
                     "emulators and devices, iOS, containers. The CA is created on first use.",
             "flowtap ca", "flowtap ca export --format pem -o flowtap-ca.pem",
             "curl --cacert flowtap-ca.pem -x http://127.0.0.1:5555 https://api.example.com/")
    actions = parser.add_subparsers(dest="ca_action", metavar="ACTION")
    export = actions.add_parser("export", help="write the CA certificate (never its key) to a file")
    describe(export, "Write the CA certificate, never its private key, to a file or stdout.",
             "flowtap ca export -o flowtap-ca.pem", "flowtap ca export --format der -o flowtap-ca.cer",
             "flowtap ca export --format p12 -o flowtap-ca.p12   # Windows, some Java tools")
    export.add_argument("--format", choices=("pem", "der", "p12"), default="pem",
                        help="pem (default), der (binary), or p12 (PKCS#12, e.g. for Windows)")
    export.add_argument("-o", "--output", required=True, metavar="FILE",
                        help='the file to write ("-" for stdout)')
    regenerate = actions.add_parser("regenerate",
                                    help="replace the CA with a new one (clients must trust it again)")
    describe(regenerate, "Replace the CA with a new key and certificate (when it expired, or its key may "
                         "have leaked). Every client that trusted the old one must be given the new one.",
             "flowtap ca regenerate && flowtap ca export -o flowtap-ca.pem")


def run(args: argparse.Namespace) -> int:
    try:
        action = getattr(args, "ca_action", None)
        if action == "export":
            return _export(args.format, args.output)
        if action == "regenerate":
            path = regenerate()
            print(f"flowtap: a new CA was created: {path}")
            print("Clients that trusted the old one must now trust this one.")
            _describe(path)
            return 0
        path, created = ensure_ca()
        if created:
            print("flowtap: created a new CA.")
        _describe(path)
        return 0
    except CAError as exc:
        print(f"flowtap: error: {exc}", file=sys.stderr)
        return 1


def _describe(path: Path) -> None:
    cert = load_cert(path.parent)
    print(f"CA certificate: {path}")
    print(f"  issued to {cert.cn!r}, valid until {cert.notafter:%Y-%m-%d}, "
          f"SHA-256 {cert.fingerprint().hex(':').upper()}")
    if cert.has_expired():
        print("  EXPIRED: run `flowtap ca regenerate` and trust the new certificate")
    print()
    for line in trust_instructions(path):
        print(line)


def _export(fmt: str, output: str) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    path, _ = ensure_ca()
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if fmt == "pem":
        data = cert.public_bytes(serialization.Encoding.PEM)
    elif fmt == "der":
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = pkcs12.serialize_key_and_certificates(
            name=b"flowtap CA", key=None, cert=cert, cas=None,
            encryption_algorithm=serialization.NoEncryption(),
        )
    if output == "-":
        if fmt != "pem" and sys.stdout.isatty():
            print(f"flowtap: error: refusing to write {fmt} (binary) to a terminal; use -o FILE",
                  file=sys.stderr)
            return 2
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        print(f"flowtap: error: {output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"flowtap: wrote the CA certificate ({fmt}) to {output}", file=sys.stderr)
    return 0
