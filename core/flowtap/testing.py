"""Helpers for testing flowtap plugins; the ``flowtap_capture`` fixture (in :mod:`flowtap_pytest`,
flowtap's pytest plugin) is built on :func:`capture`.

A plugin's test in three lines::

    def test_my_sink(flowtap_capture, tmp_path):
        cap = flowtap_capture(my_plugin, config={"sinks": {"jsonl": {"path": str(tmp_path / "f.jsonl")}}})
        cap.feed(make_flow(url="https://api.example.com/users"))
        cap.end()    # the sinks are finalized: read their output

``make_flow`` builds a realistic :class:`flowtap.Flow` without any network;
:func:`capture` builds a :class:`flowtap.Capture` with only the plugins
given (objects, modules, or entry-point names such as ``"har"``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from flowtap.api import Sink
from flowtap.capture import Capture
from flowtap.cookies import Cookie
from flowtap.model import Flow, Request, Response, Timings
from flowtap.plugins import hookimpl
from flowtap.session import Session


def make_flow(
    url: str = "https://api.example.com/items?page=1",
    method: str = "GET",
    status: int | None = 200,
    request_body: bytes | str = b"",
    response_body: bytes | str = b'{"ok": true}',
    request_headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
    response_headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = None,
    error: str | None = None,
    source: str = "test",
    duration: float = 0.05,
    **fields: Any,
) -> Flow:
    """A finished flow with sensible defaults; ``status=None`` means no response.

    Extra keyword arguments set :class:`flowtap.Flow` fields (``tls``,
    ``client_address``, ``metadata``, ...).
    """
    request_body = request_body.encode() if isinstance(request_body, str) else request_body
    response_body = response_body.encode() if isinstance(response_body, str) else response_body
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if request_headers is None:
        request_headers = [("Host", host), ("User-Agent", "flowtap-test"), ("Accept", "*/*")]
        if request_body:
            request_headers.append(("Content-Type", "application/json"))
            request_headers.append(("Content-Length", str(len(request_body))))
    if response_headers is None:
        response_headers = [("Content-Type", "application/json"), ("Content-Length", str(len(response_body)))]
    start = time.time()
    response = None
    if status is not None and error is None:
        response = Response(status_code=status, reason="", headers=response_headers, body=response_body)
    return Flow(
        request=Request(method=method, url=url, headers=request_headers, body=request_body),
        response=response,
        error=error,
        source=source,
        timings=Timings(start=start, end=start + duration, send=1.0, wait=duration * 1000 - 2, receive=1.0),
        **fields,
    )


class RecordingSink(Sink):
    """A sink that keeps what it is given, for assertions."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.flows: list[Flow] = []
        self.cookies: list[Cookie] = []
        self.events: list[str] = []
        self.closed = False

    def write(self, flow: Flow) -> None:
        self.flows.append(flow)

    def close(self) -> None:
        self.closed = True

    @hookimpl
    def flowtap_cookies_seen(self, cookies: list[Cookie]) -> None:
        self.cookies.extend(cookies)

    @hookimpl
    def flowtap_session_pause(self) -> None:
        self.events.append("pause")

    @hookimpl
    def flowtap_session_resume(self) -> None:
        self.events.append("resume")

    @hookimpl
    def flowtap_session_clear(self) -> None:
        self.events.append("clear")
        self.flows.clear()


class _Recorder:
    """Registers the ``recorded`` sink and remembers its instances."""

    def __init__(self) -> None:
        self.sinks: list[RecordingSink] = []

    def _build(self, options: Mapping[str, Any]) -> RecordingSink:
        sink = RecordingSink(options)
        self.sinks.append(sink)
        return sink

    @hookimpl
    def flowtap_register_sinks(self, register: Callable[..., None]) -> None:
        register("recorded", self._build, default=True)


class CaptureHarness:
    """A started :class:`flowtap.Capture` with a recording sink, fed from code."""

    def __init__(self, capture: Capture, recorder: _Recorder) -> None:
        self.capture = capture
        self._recorder = recorder

    @property
    def session(self) -> Session:
        """The current (or last ended) debug session."""
        session = self.capture.session
        if session is None:  # a harness is made only after its capture started
            raise RuntimeError("the capture has not started")
        return session

    @property
    def recorded(self) -> RecordingSink:
        """The recording sink of the current session: flows that passed the filters."""
        return self._recorder.sinks[-1]

    def sink(self, name: str) -> Sink:
        """The current session's sink registered as ``name``."""
        for worker in self.capture.workers:
            if worker.sink.name == name:
                return worker.sink
        raise KeyError(f"no sink {name!r} in this session")

    def feed(self, *flows: Flow, timeout: float = 10) -> None:
        """Emit flows and wait until every sink has them (and has flushed)."""
        for flow in flows:
            self.capture.emit(flow)
        if not self.capture.sync(timeout):
            raise TimeoutError("the dispatcher did not finish in time")

    def end(self) -> None:
        """End the session (sinks finalized) and stop the capture."""
        self.capture.stop()


@contextlib.contextmanager
def capture(
    *plugins: object | str,
    config: Mapping[str, Any] | None = None,
    record: bool = True,
) -> Iterator[CaptureHarness]:
    """A started capture with only the core and ``plugins``; stopped on exit.

    :param plugins: plugin objects or modules, or entry-point names (``"har"``).
    :param config: nested dicts shaped like the TOML file. The session store
        stays off unless it has a ``[store]`` table (tests never write to the
        user's real store).
    :param record: add the ``recorded`` sink (``harness.recorded``).
    """
    config = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (config or {}).items()}
    config.setdefault("store", {"enabled": False})
    recorder = _Recorder()
    cap = Capture(config, load_entrypoints=False)
    names = [p for p in plugins if isinstance(p, str)]
    if names:
        cap.host.load_entrypoints(only=names)
        missing = [n for n in names if n not in cap.host.infos]
        if missing:
            raise LookupError(f"no flowtap entry point named {', '.join(missing)}")
    for plugin in plugins:
        if not isinstance(plugin, str):
            cap.register(plugin)
    if record:
        cap.register(recorder, name="flowtap-testing-recorder")
    cap.start()
    harness = CaptureHarness(cap, recorder)
    try:
        yield harness
    finally:
        cap.stop()

