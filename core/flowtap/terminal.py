"""Captured text made safe to print on a terminal.

Whatever a client sent (a header, a URL, a body, an error) reaches the
terminal only through :func:`terminal_safe`: a captured ESC could otherwise
recolour, retitle or clear the terminal, and a bare CR overwrite a line to
forge what the reader sees.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls (U+0080..U+009F: some terminals obey them like ESC sequences), the
# bidirectional marks, embeddings, overrides and isolates (they reorder what the reader sees: a
# right-to-left override makes "txt.exe" read "exe.txt"), and lone surrogates (bytes that were not
# UTF-8, kept by "surrogateescape", which a strict UTF-8 stream cannot even write).
_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]")
# The same, but line breaks (LF, CRLF) and TAB stay: for text shown as lines, like a body.
_CONTROLS_BUT_LINES = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]|\r(?!\n)")
_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMES:
        return _NAMES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: str, lines: bool = False) -> str:
    r"""``text`` with every control character written as a visible escape, fit for a terminal.

    ESC becomes ``\x1b``, NUL ``\x00``, CR ``\r``, LF ``\n``, TAB ``\t``, DEL ``\x7f``, a C1 control
    ``\x9b``, a right-to-left override ``\u202e``; a byte that was not UTF-8 (a lone surrogate
    ``\udc9b``) is shown as the byte, ``\x9b``.
    Everything else, backslashes and non-ASCII letters included, is left as it is. With
    ``lines=True`` (text shown as lines, like a body) LF, CRLF and TAB stay; a bare CR is still
    escaped. Applying it twice changes nothing more.
    """
    pattern = _CONTROLS_BUT_LINES if lines else _CONTROLS
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape, text)
