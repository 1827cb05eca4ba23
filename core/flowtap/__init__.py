"""flowtap: capture HTTP and HTTPS traffic into debug sessions, through plugins.

The public API: :class:`Capture` runs a capture; :class:`Flow` and friends
are what sources produce and sinks read; :data:`hookimpl` marks a plugin's
hook implementations; :class:`Source`, :class:`Sink` and :class:`Option`
are what a plugin registers and declares.
"""

__version__ = "0.1.0"

from flowtap.api import Emitter, Sink, SinkError, SinkFailed, Source, SourceError, sink_plugin
from flowtap.capture import Capture, StartupError
from flowtap.config import (
    Config,
    ConfigError,
    Option,
    load_config,
    parse_address,
    parse_domains,
    parse_duration,
    parse_methods,
    parse_size,
)
from flowtap.cookies import Cookie
from flowtap.model import Flow, Headers, Request, Response, Timings, TLSInfo, WebSocketMessage
from flowtap.plugins import hookimpl
from flowtap.session import Session, State
from flowtap.terminal import terminal_safe


def open_store(path=None):
    """Open the session store for reading: list sessions, iterate flows matching a filter.

    ``path`` defaults to the store ``flowtap run`` writes (``[store] path``'s
    default). Returns a :class:`flowtap.store.Store`; see ``docs/store.md``.
    """
    from flowtap.store import open_store as _open_store

    return _open_store(path)


__all__ = [
    "Capture", "Config", "ConfigError", "Cookie", "Emitter", "Flow", "Headers", "Option",
    "Request", "Response", "Session", "Sink", "SinkError", "SinkFailed", "Source", "SourceError",
    "StartupError", "State", "TLSInfo", "Timings", "WebSocketMessage", "hookimpl",
    "load_config", "open_store", "parse_address", "parse_domains", "parse_duration", "parse_methods",
    "parse_size", "sink_plugin", "terminal_safe",
]
