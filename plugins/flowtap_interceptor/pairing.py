"""The pairing key: a random secret shared by the bridge and the extension, kept owner-only.

The extension proves it knows the key by answering the bridge's random
nonce with ``HMAC-SHA256(key, nonce)``; the key itself never crosses the
connection.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILENAME = "interceptor.key"


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


def proof(key: str, nonce: str) -> str:
    """What a paired extension answers to ``nonce``: hex HMAC-SHA256 keyed with ``key``."""
    return hmac.new(key.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def verify(key: str, nonce: str, answer: str) -> bool:
    """True when ``answer`` proves knowledge of ``key`` for ``nonce`` (constant-time)."""
    return hmac.compare_digest(proof(key, nonce), answer.lower())
