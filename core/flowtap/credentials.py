"""Which headers and parameters carry credentials: one rule for every sink that must not write them."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
_SECRET_EXACT = {"key", "sig", "signature", "sid", "auth"}
_SECRET_PARTS = ("token", "secret", "passw", "apikey", "api-key", "api_key", "session", "credential")


@functools.lru_cache(maxsize=4096)  # the same few names, over and over
def is_secret(name: str) -> bool:
    """Whether a header or parameter called ``name`` carries a credential.

    The headers Authorization, Proxy-Authorization, Cookie and Set-Cookie,
    and any name containing ``token``, ``secret``, ``passw``, ``apikey``,
    ``api-key``, ``api_key``, ``session``, ``credential`` or the word
    ``auth``, or that is ``key``, ``sig``, ``signature`` or ``sid``.
    """
    lower = unquote(name).strip().lower()
    if lower in _SECRET_HEADERS or lower in _SECRET_EXACT:
        return True
    if any(part in lower for part in _SECRET_PARTS):
        return True
    return "auth" in re.split(r"[-_.\s]+", lower)
