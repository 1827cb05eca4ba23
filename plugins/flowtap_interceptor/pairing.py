"""The pairing key: a random secret shared by the bridge and the extension, kept owner-only.

Each side proves it holds the key over fresh nonces from both sides (see
:mod:`flowtap_interceptor.bridge` for the handshake): the bridge answers the
extension's nonce with :func:`bridge_proof`, the extension the bridge's with
:func:`extension_proof`. The two are HMAC-SHA256 under distinct labels, so
one side's answer is never a valid answer for the other; the key itself never
crosses the connection.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

KEY_FILENAME = "interceptor.key"
#: Labels that keep the two directions' proofs apart.
BRIDGE_LABEL = "flowtap-bridge"
EXTENSION_LABEL = "flowtap-extension"
#: A nonce is 32 random bytes as lowercase hex; so is a proof (an HMAC-SHA256).
_HEX64 = re.compile(r"[0-9a-f]{64}")


class PairingError(Exception):
    """The key file cannot be read or written; the message names the path."""


def default_key_path() -> Path:
    """``<user config dir>/interceptor.key`` (on Linux ``~/.config/flowtap/interceptor.key``)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("flowtap")) / KEY_FILENAME


def key_path(configured: str = "") -> Path:
    """The key file ``[sources.interceptor] key_file`` names, else the default one."""
    return Path(configured).expanduser() if configured else default_key_path()


def read_key(path: Path) -> str | None:
    """The key stored at ``path``; None when there is none yet.

    :raises PairingError: the file exists but cannot be read, or is empty.
    """
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise PairingError(f"{path}: cannot read the pairing key: {reason}") from None
    if not key:
        raise PairingError(f"{path}: the pairing key file is empty; run `flowtap interceptor pair --new`")
    return key


def new_key() -> str:
    """A fresh random key (192 bits, URL-safe text, easy to paste)."""
    return secrets.token_urlsafe(24)


def write_key(path: Path, key: str) -> None:
    """Store ``key`` at ``path``, readable and writable by the owner only.

    :raises PairingError: the directory or file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise PairingError(f"{exc.filename or path}: cannot write the pairing key: {exc.strerror}") from None


def ensure_key(path: Path) -> tuple[str, bool]:
    """The key at ``path``, created now if there was none; and whether it was created.

    An existing key file readable by others is made owner-only.
    """
    key = read_key(path)
    if key is not None:
        try:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError as exc:
            raise PairingError(f"{path}: cannot make the key file owner-only: {exc.strerror}") from None
        return key, False
    key = new_key()
    write_key(path, key)
    return key, True


def new_nonce() -> str:
    """A fresh nonce: 32 random bytes as 64 lowercase hex digits."""
    return secrets.token_hex(32)


def is_hex64(value: str) -> bool:
    """Whether ``value`` has the shape of a nonce or a proof (64 lowercase hex digits)."""
    return _HEX64.fullmatch(value) is not None


def bridge_proof(key: str, extension_nonce: str, bridge_nonce: str) -> str:
    r"""The bridge's answer to the extension's hello: hex HMAC-SHA256 of
    ``"flowtap-bridge\n" + extension_nonce + "\n" + bridge_nonce`` keyed with ``key``."""
    return _mac(key, BRIDGE_LABEL, extension_nonce, bridge_nonce)


def extension_proof(key: str, bridge_nonce: str, extension_nonce: str) -> str:
    r"""The extension's answer to the bridge's challenge: hex HMAC-SHA256 of
    ``"flowtap-extension\n" + bridge_nonce + "\n" + extension_nonce`` keyed with ``key``."""
    return _mac(key, EXTENSION_LABEL, bridge_nonce, extension_nonce)


def matches(expected: str, answer: str) -> bool:
    """Whether ``answer`` is the ``expected`` proof, compared in constant time."""
    return is_hex64(answer) and hmac.compare_digest(expected.encode(), answer.encode())


def _mac(key: str, label: str, first: str, second: str) -> str:
    message = f"{label}\n{first}\n{second}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
