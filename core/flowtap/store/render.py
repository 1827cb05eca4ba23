"""Stored sessions and flows as text: tables, a flow in full, curl commands.

Captured text goes through :func:`flowtap.terminal.terminal_safe` on its way into every line here
(the curl commands quote it instead), so that it cannot drive the terminal it is printed on.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import TYPE_CHECKING

from flowtap.terminal import terminal_safe

if TYPE_CHECKING:
    from flowtap.model import Flow, Request, Response
    from flowtap.store.reader import Event, FlowRow, SessionInfo

_TEXT_TYPES = ("json", "xml", "javascript", "ecmascript", "x-www-form-urlencoded", "graphql", "yaml", "csv")
#: The timings ``flowtap show`` lists after the total, when known.
_PHASES = ("dns", "connect", "tls", "send", "wait", "receive")


def when(timestamp: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "-" if timestamp is None else time.strftime(fmt, time.localtime(timestamp))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def size(n: int | None) -> str:
    """A byte count for a table cell: ``512B``, ``1.5KB``, ``-`` for none."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


# -- sessions ---------------------------------------------------------------------------


def sessions_table(sessions: list[SessionInfo]) -> list[str]:
    rows = [("ID", "NAME", "STARTED", "DURATION", "STATE", "FLOWS")]
    for s in sessions:
        end = s.ended if s.ended is not None else (None if not s.live else time.time())
        took = duration(None if end is None else end - s.started)
        rows.append((s.id, terminal_safe(s.name), when(s.started), took, s.state, str(s.flows)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i == 5 else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def session_details(s: SessionInfo, events: list[Event], hosts: list[tuple[str, int]]) -> list[str]:
    end = s.ended if s.ended is not None else (time.time() if s.live else None)
    lines = [
        f"session {s.name!r} ({s.id})",
        f"  state:    {s.state}" + (f" (recorded by pid {s.pid})" if s.live else ""),
        f"  started:  {when(s.started)}",
        f"  ended:    {when(s.ended)}" + (f" ({duration(end - s.started)})" if end is not None else ""),
        f"  flows:    {s.flows} stored; {s.received} received: {s.recorded} recorded, "
        f"{s.filtered} filtered out, {s.paused} while paused",
    ]
    if s.machine or s.user:  # recorded since flowtap kept who did
        lines.append(f"  recorded: on {terminal_safe(s.machine or '?')} by {terminal_safe(s.user or '?')}")
    if s.seen is not None and s.state != "ended":  # how a session of another machine is judged
        lines.append(f"  seen:     {when(s.seen)} ({duration(max(0.0, time.time() - s.seen))} ago), "
                     "its run's last sign of life")
    config_file = (s.config or {}).get("file")
    lines.append(f"  config:   {config_file or '(none: defaults and --set)'}")
    if hosts:
        lines.append("  hosts:    " + ", ".join(f"{terminal_safe(host or '-')} ({n})" for host, n in hosts))
    if events:
        lines.append("  events:")
        for e in events:
            text = f"  {e.text!r}" if e.text else ""
            lines.append(f"    {when(e.time)}  {e.kind}{text}")
    return lines


# -- flows -------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_port(host: str, port: int | None, scheme: str) -> str:
    """``host`` with ``:port`` where the port is not the scheme's default (``api.test:8443``,
    ``[::1]:8080``): two services on one host are told apart."""
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


FLOW_HEADER = ("ID", "TIME", "METHOD", "STATUS", "HOST", "PATH", "SIZE", "DURATION")


def flow_cells(row: FlowRow, id_width: int = 12) -> tuple[str, ...]:
    status = str(row.status) if row.status is not None else ("ERR" if row.error else "-")
    return (row.id[:id_width], when(row.time, "%m-%d %H:%M:%S"), terminal_safe(row.method), status,
            terminal_safe(host_port(row.host, row.port, row.scheme)), terminal_safe(row.path),
            size(row.response_size), "-" if row.duration is None else f"{row.duration:.0f}ms")


def flow_line(cells: tuple[str, ...]) -> str:
    ident, at, method, status, host, path, length, took = cells
    return f"{ident:<12}  {at:<14}  {method:<7} {status:>6}  {length:>8} {took:>8}  {host} {path}"


def header_line() -> str:
    ident, at, method, status, host, path, length, took = FLOW_HEADER
    return f"{ident:<12}  {at:<14}  {method:<7} {status:>6}  {length:>8} {took:>8}  {host} {path}"


def is_text(message: Request | Response) -> bool:
    """Whether a body is text to show (by its Content-Type, else by its bytes)."""
    ct = message.content_type
    if ct.startswith("text/") or ct.endswith(("+json", "+xml")) or any(t in ct for t in _TEXT_TYPES):
        return True
    if ct:
        return False
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\x00" not in text


def body_text(message: Request | Response) -> str:
    """The body for reading: decoded with its charset, JSON indented."""
    text = message.text()
    if "json" in message.content_type or (not message.content_type and text.lstrip()[:1] in ("{", "[")):
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    return text


def _message_lines(first: str, message: Request | Response, raw: bool) -> tuple[list[str], bytes | None]:
    lines = [terminal_safe(first), *(terminal_safe(f"{k}: {v}") for k, v in message.headers.fields), ""]
    note = None
    if message.truncated:
        note = f"[body truncated: {len(message.body)} of {message.body_size} bytes kept]"
    if raw:
        return lines + ([note] if note else []), message.body
    if message.body:
        if is_text(message):
            lines.append(terminal_safe(body_text(message), lines=True))
        else:
            kind = terminal_safe(message.content_type or "unknown type")
            lines.append(f"[{len(message.body)} bytes of {kind}; "
                         "`flowtap show --raw` prints them as they are]")
    elif message.body_size:
        lines.append(f"[body not captured: {message.body_size} bytes]")
    if note:
        lines.append(note)
    return lines, None


def flow_parts(flow: Flow, row: FlowRow, session: SessionInfo | None, raw: bool = False) -> list[str | bytes]:
    """``flowtap show``: a summary, the request, the response; bytes where ``raw`` wants them as they are."""
    t = flow.timings
    took = "-" if t.duration is None else f"{t.duration:.0f} ms"
    where = f"session {session.name!r} ({session.id})" if session else f"session {row.session}"
    timing = f"{when(t.start)}  {took}"
    phases = [f"{name} {getattr(t, name):.0f}ms" for name in _PHASES if getattr(t, name) is not None]
    if phases:
        timing += "  (" + ", ".join(phases) + ")"
    out: list[str | bytes] = [f"flow {flow.id}  {where}  source {terminal_safe(flow.source)}", timing]
    peers = []
    if flow.client_address:
        peers.append(f"client {flow.client_address[0]}:{flow.client_address[1]}")
    if flow.server_address:
        host, port = flow.server_address[0], flow.server_address[1]
        peers.append(f"server {host}:{port}"
                     + (f" ({flow.server_ip})" if flow.server_ip and flow.server_ip != host else ""))
    if flow.tls:
        peers.append("TLS " + " ".join(v for v in (flow.tls.version, flow.tls.alpn, flow.tls.cipher) if v))
    if peers:
        out.append(terminal_safe("  ".join(peers)))
    if flow.error:
        out.append(f"error: {terminal_safe(flow.error)}")
    out.append("")
    req = flow.request
    lines, body = _message_lines(f"{req.method} {req.url} {req.http_version}", req, raw)
    out += lines
    if body:
        out.append(body)
    if flow.response is not None:
        resp = flow.response
        out.append("")
        status_line = f"{resp.http_version} {resp.status_code} {resp.reason}".rstrip()
        lines, body = _message_lines(status_line, resp, raw)
        out += lines
        if body:
            out.append(body)
    if flow.websocket:
        out += ["", f"WebSocket: {len(flow.websocket)} messages"]
        for m in flow.websocket:
            arrow = "->" if m.from_client else "<-"
            content = m.content.decode("utf-8", "replace") if m.is_text else f"[{len(m.content)} bytes]"
            out.append(f"  {when(m.timestamp, '%H:%M:%S')} {arrow} {terminal_safe(content)}")
    return out


# -- curl ------------------------------------------------------------------------------------------


def _wire(text: str) -> bytes:
    """Captured text as the bytes it was: UTF-8, and bytes that were not UTF-8 (which the proxy keeps as
    lone surrogates, ``surrogateescape``) as they were sent."""
    return text.encode("utf-8", "surrogateescape")


def _printable(data: bytes) -> bool:
    """Whether ``data`` is UTF-8 text without a control character (safe in plain quotes, on a terminal)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return terminal_safe(text) == text


def _ansi_c(data: bytes) -> str:
    """Bytes as a bash/zsh ``$'...'`` word on one line: every control byte, C1 control and byte that is
    not UTF-8 as an escape; readable UTF-8 text stays as it is."""
    out = []
    for char in data.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if char in "\\'":
            out.append("\\" + char)
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif 32 <= code < 127 or (code > 0x9F and not 0xD800 <= code <= 0xDFFF):
            out.append(char)
        else:  # a control character, or a byte that was not UTF-8 (a surrogate): its bytes
            out.extend(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogateescape"))
    return "$'" + "".join(out) + "'"


def _word(data: bytes) -> str:
    """One shell word holding ``data`` exactly: single-quoted when printable, ``$'...'`` otherwise."""
    return shlex.quote(data.decode("utf-8")) if _printable(data) else _ansi_c(data)


def _origin_and_target(url: str) -> tuple[str, str]:
    """``("http://host:port/", "/path?query")`` out of a URL, the target exactly as it was."""
    scheme, _, rest = url.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[cut:]
    return f"{scheme}://{rest[:cut]}/", target if target.startswith("/") else "/" + target


def curl(flow: Flow) -> str:
    """A curl command line that sends the flow's request again, byte for byte where a command line can.

    Every word is quoted so that the shell reads it back exactly and the text is safe to print:
    control characters and bytes that are not UTF-8 in ``$'...'`` (bash, zsh), a body holding NUL
    through ``printf``. A header holding NUL cannot be an argument: it is left out, with a comment.
    """
    req = flow.request
    args: list[bytes] = [b"curl"]
    notes: list[str] = []
    if req.method == "HEAD":
        args.append(b"--head")
    elif req.method != ("POST" if req.body else "GET"):
        args += [b"-X", _wire(req.method)]
    default_port = {"http": 80, "https": 443}.get(req.scheme)
    authority = req.host if req.port in (None, default_port) else f"{req.host}:{req.port}"
    for name, value in req.headers.fields:
        lower = name.lower()
        if name.startswith(":") or lower in ("content-length", "transfer-encoding") or (
                lower == "host" and value.lower() == authority.lower()):
            continue
        if lower == "accept-encoding":
            args.append(b"--compressed")
            continue
        # curl takes "Name:" as "leave Name out", and "Name;" as "send Name empty"
        header = _wire(name) + (b": " + _wire(value) if value.strip(" \t") else b";")
        if b"\0" in header:
            notes.append(f"# the header {name} was left out: it holds a NUL byte, which no command-line "
                         "argument can carry")
        else:
            args += [b"-H", header]
    url = req.url
    if any(not "!" <= c <= "~" for c in url):
        # curl refuses a URL holding control characters, spaces or non-ASCII: send its target as it was
        url, target = _origin_and_target(url)
        args += [b"--request-target", _wire(target)]
    if any(c in url for c in "[]{}"):
        args.append(b"--globoff")  # brackets and braces are the URL's own, not curl's ranges
    words = [_word(a) for a in args] + [_word(_wire(url))]
    prefix = ""
    if req.body:
        if _printable(req.body):
            words += ["--data-raw", shlex.quote(req.body.decode("utf-8"))]
        elif b"\0" in req.body:  # a shell word cannot hold NUL: printf writes the bytes
            escaped = "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\0{b:03o}" for b in req.body)
            prefix = f"printf %b {shlex.quote(escaped)} | "
            words += ["--data-binary", "@-"]
        else:
            words += ["--data-binary", _ansi_c(req.body)]
    if req.truncated:
        notes.append(f"# {req.method} {req.url}: the body was truncated when captured "
                     f"({len(req.body)} of {req.body_size} bytes)")
    return "\n".join([*(terminal_safe(note) for note in notes), prefix + " ".join(words)])
