"""The jar's two file formats: Netscape cookies.txt and JSON.

Netscape is the format curl (``-b``/``-c``), wget and Python's
``http.cookiejar.MozillaCookieJar`` read: one cookie a line, seven
tab-separated fields (domain, with a leading dot when subdomains match;
TRUE/FALSE for subdomains; path; TRUE/FALSE for secure; expiry as a Unix time,
0 for a session cookie; name; value), an ``#HttpOnly_`` prefix for HttpOnly
cookies. It has no place for SameSite. JSON keeps every field of
:class:`flowtap.Cookie`, ``expires`` null for a session cookie.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import attrs

from flowtap.cookies import MAX_EXPIRES, Cookie

NETSCAPE_HEADER = (
    "# Netscape HTTP Cookie File\n"
    "# https://curl.se/docs/http-cookies.html\n"
    "# Written by flowtap, which rewrites this file while it captures.\n"
    "\n"
)
HTTPONLY_PREFIX = "#HttpOnly_"
FIELDS = [field.name for field in attrs.fields(Cookie)]


class FormatError(Exception):
    """An existing jar file cannot be read; ``where`` says where (``line 3``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


# -- Netscape -------------------------------------------------------------------


def netscape_line(cookie: Cookie) -> str | None:
    """The cookie's cookies.txt line, or None when the format cannot hold it.

    A tab in any field would split it, and a file that is not valid UTF-8
    makes ``MozillaCookieJar`` refuse the whole jar.
    """
    fields = (cookie.domain, cookie.path, cookie.name, cookie.value)
    if any("\t" in field for field in fields):
        return None
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:
        return None
    expiry = 0 if cookie.expires is None else max(1, int(min(cookie.expires, MAX_EXPIRES)))
    return "".join((
        HTTPONLY_PREFIX if cookie.httponly else "",
        "" if cookie.host_only else ".", cookie.domain, "\t",
        "FALSE" if cookie.host_only else "TRUE", "\t",
        cookie.path, "\t",
        "TRUE" if cookie.secure else "FALSE", "\t",
        str(expiry), "\t",
        cookie.name, "\t",
        cookie.value, "\n",
    ))


def dump_netscape(cookies: Iterable[Cookie]) -> tuple[str, list[Cookie]]:
    """The text of a cookies.txt file, and the cookies it could not hold."""
    lines, skipped = [NETSCAPE_HEADER], []
    for cookie in cookies:
        line = netscape_line(cookie)
        if line is None:
            skipped.append(cookie)
        else:
            lines.append(line)
    return "".join(lines), skipped


def _flag(value: str, number: int, field: str) -> bool:
    if value.upper() not in ("TRUE", "FALSE"):
        raise FormatError(f"line {number}", f"{field} must be TRUE or FALSE, not {value[:40]!r}")
    return value.upper() == "TRUE"


def load_netscape(text: str) -> list[Cookie]:
    """The cookies of a cookies.txt file (as curl reads it); raise FormatError."""
    cookies = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        httponly = line.startswith(HTTPONLY_PREFIX)
        if httponly:
            line = line[len(HTTPONLY_PREFIX):]
        elif not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) == 6:  # curl reads a missing value field as an empty value
            fields.append("")
        if len(fields) != 7:
            raise FormatError(
                f"line {number}",
                f"expected 7 tab-separated fields (domain, subdomains, path, secure, expiry, name, value), "
                f"found {len(fields)}",
            )
        domain, subdomains, path, secure, expiry, name, value = fields
        host_only = not _flag(subdomains, number, "the subdomains field")
        try:
            expires = int(expiry)
        except ValueError:
            message = f"expiry must be a whole number of seconds, not {expiry[:40]!r}"
            raise FormatError(f"line {number}", message) from None
        cookies.append(Cookie(
            name=name, value=value, domain=domain.lstrip(".").lower(), path=path or "/",
            expires=float(expires) if expires else None, secure=_flag(secure, number, "the secure field"),
            httponly=httponly, host_only=host_only,
        ))
    return cookies


# -- JSON -----------------------------------------------------------------------


def dump_json(cookies: Iterable[Cookie]) -> tuple[str, list[Cookie]]:
    """A JSON list of cookie objects, one a line; it can hold every cookie."""
    items = [json.dumps(attrs.asdict(cookie)) for cookie in cookies]
    return ("[\n" + ",\n".join(items) + "\n]\n" if items else "[]\n"), []


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "value": (str,), "domain": (str,), "path": (str,),
    "expires": (int, float, type(None)), "secure": (bool,), "httponly": (bool,),
    "samesite": (str, type(None)), "host_only": (bool,),
}
_REQUIRED = ("name", "value", "domain")


def load_json(text: str) -> list[Cookie]:
    """The cookies of a JSON jar; raise FormatError."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise FormatError("line 1", "expected a JSON list of cookie objects")
    cookies = []
    for number, item in enumerate(data, 1):
        where = f"cookie #{number}"
        if not isinstance(item, dict):
            raise FormatError(where, "expected an object with name, value and domain")
        for key in _REQUIRED:
            if key not in item:
                raise FormatError(where, f"{key!r} is missing")
        for key, types in _TYPES.items():
            value = item.get(key)
            wrong_type = not isinstance(value, types) or (bool not in types and isinstance(value, bool))
            if key in item and wrong_type:
                raise FormatError(where, f"{key!r} has the wrong type: {item[key]!r:.40}")
        cookies.append(Cookie(**{key: item[key] for key in FIELDS if key in item}))
    return cookies


FORMATS = {"netscape": (dump_netscape, load_netscape), "json": (dump_json, load_json)}
