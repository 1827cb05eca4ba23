"""Each sink on its own: a failing, hung, slow or lagging sink costs the others nothing; reported once."""

from __future__ import annotations

import logging
import threading
import time

import flowtap
from flowtap.testing import capture, make_flow
from flowtap.view import health_table


def _plugin(name, factory):
    class Plugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register(name, factory, default=True)

    plugin = Plugin()
    plugin.__name__ = name  # the plugin's name: messages say "sink 'NAME'" when sink and plugin share it
    return plugin


class Raising(flowtap.Sink):
    def __init__(self, options):
        self.calls = 0

    def write(self, flow):
        self.calls += 1
        raise ValueError(f"bad flow {self.calls}")


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_raising_sink_is_reported_once_then_summarised_and_the_others_get_every_flow(caplog):
    with capture(_plugin("faulty", Raising)) as cap:
        for i in range(50):
            cap.capture.emit(make_flow(url=f"https://a.test/{i}"))
        cap.feed()
        assert len(cap.recorded.flows) == 50
        (faulty,) = [h for h in cap.capture.health() if h.name == "faulty"]
        assert (faulty.written, faulty.errors, faulty.state) == (0, 50, "failing")
        assert faulty.last_error == "write: bad flow 50"
        assert not cap.capture.clean
    errors = _errors(caplog)
    first = [r for r in errors if r.exc_info]
    assert len(first) == 1
    assert "sink 'faulty'" in first[0].getMessage() and "bad flow 1" in first[0].getMessage()
    summaries = [r.getMessage() for r in errors if "more time" in r.getMessage()]
    assert summaries == ["sink 'faulty': 49 more times; last: raised in write: ValueError: bad flow 50"]
    assert len(errors) == 2, "never one line per flow"


def test_a_clean_run_is_clean():
    with capture() as cap:
        cap.feed(make_flow())
        assert cap.capture.clean
        (recorded,) = cap.capture.health()
        assert recorded.clean and recorded.written == 1 and recorded.state == "ok"


class Hanging(flowtap.Sink):
    release = threading.Event()

    def __init__(self, options):
        self.count = 0

    def write(self, flow):
        self.count += 1
        if self.count == 3:
            self.release.wait(30)


class Waiting(flowtap.Sink):
    """Says its remote end is away while flows 3 to 5 come, as the PostgreSQL store does."""

    def __init__(self, options):
        self.seen = 0

    def write(self, flow):
        self.seen += 1
        self.status = "remote unreachable: flows wait" if 3 <= self.seen <= 5 else ""


def test_a_sinks_status_is_shown_with_its_health_while_set_and_is_no_failure():
    with capture(_plugin("waiting", Waiting)) as cap:
        cap.feed(*[make_flow(url=f"https://a.test/{i}") for i in range(4)])
        (waiting,) = [h for h in cap.capture.health() if h.name == "waiting"]
        assert waiting.note == "remote unreachable: flows wait" and waiting.state == "ok"
        assert waiting.as_dict()["note"] == waiting.note  # what `flowtap ctl status --json` sends
        assert "remote unreachable: flows wait" in "\n".join(health_table([waiting]))
        cap.feed(*[make_flow(url=f"https://a.test/{i}") for i in range(4, 6)])
        (waiting,) = [h for h in cap.capture.health() if h.name == "waiting"]
        assert waiting.note == "" and waiting.written == 6
        assert cap.capture.clean


def test_a_hung_sink_is_detached_with_where_it_is_stuck_and_the_others_go_on(caplog):
    config = {"dispatch": {"call_timeout": "0.5s", "close_timeout": "0.5s"}}
    Hanging.release.clear()
    try:
        with capture(_plugin("stuck", Hanging), config=config) as cap:
            for i in range(20):
                cap.capture.emit(make_flow(url=f"https://a.test/{i}"))
            waited = time.monotonic()
            assert cap.capture.sync(10), "a sync behind the stuck call ends when it is detached"
            assert time.monotonic() - waited < 3
            deadline = time.monotonic() + 5
            while len(cap.recorded.flows) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(cap.recorded.flows) == 20
            while time.monotonic() < deadline:
                (stuck,) = [h for h in cap.capture.health() if h.name == "stuck"]
                if stuck.state == "detached":
                    break
                time.sleep(0.05)
            assert stuck.state == "detached" and stuck.written == 2 and stuck.missed == 18
            assert stuck.stuck_in.startswith("write at ") and "test_sink_workers.py" in stuck.stuck_in
            cap.feed(make_flow(url="https://a.test/after"))  # sync does not wait on a detached sink
            assert len(cap.recorded.flows) == 21
            started = time.monotonic()
        assert time.monotonic() - started < 2, "stop does not wait on a detached sink"
    finally:
        Hanging.release.set()

    def reported():  # the watchdog logs just after it marks the sink detached, on its own thread
        return [r.getMessage() for r in _errors(caplog) if "call_timeout" in r.getMessage()]

    deadline = time.monotonic() + 5
    while not reported() and time.monotonic() < deadline:
        time.sleep(0.02)
    (message,) = reported()
    assert message.startswith("sink 'stuck'") and "detached" in message and "self.release.wait(30)" in message


class SlowToClose(flowtap.Sink):
    release = threading.Event()

    def __init__(self, options):
        pass

    def write(self, flow):
        pass

    def close(self):
        self.release.wait(30)


def test_a_sink_stuck_in_close_is_abandoned_within_close_timeout(caplog):
    SlowToClose.release.clear()
    try:
        config = {"dispatch": {"close_timeout": "0.5s"}}
        with capture(_plugin("slowclose", SlowToClose), config=config) as cap:
            cap.feed(make_flow())
            recorder = cap.recorded
            started = time.monotonic()
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 2.5
        assert recorder.closed, "the healthy sink was closed all the same"
        (health,) = [h for h in cap.capture.health() if h.name == "slowclose"]
        assert health.state == "abandoned" and health.stuck_in.startswith("close at ")
        assert not cap.capture.clean
    finally:
        SlowToClose.release.set()
    (message,) = [r.getMessage() for r in _errors(caplog) if "abandoned" in r.getMessage()]
    assert message.startswith("sink 'slowclose'") and "close_timeout (0.5 s)" in message


class SlowToDrain(flowtap.Sink):
    """Every call quick enough (0.1 s), its backlog at the end far too long to write (10 s)."""

    def __init__(self, options):
        self.written = 0

    def write(self, flow):
        time.sleep(0.1)
        self.written += 1


def test_a_sink_whose_backlog_cannot_drain_in_close_timeout_is_abandoned_and_counts_the_rest():
    config = {"dispatch": {"close_timeout": "0.5s"}}
    with capture(_plugin("slowdrain", SlowToDrain), config=config) as cap:
        for i in range(100):
            cap.capture.emit(make_flow(url=f"https://a.test/{i}"))
        time.sleep(0.3)  # the dispatcher handed them over; the sink writes its first few
        recorder = cap.recorded
        started = time.monotonic()
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.5, f"the end took {elapsed:.1f} s"
    assert len(recorder.flows) == 100 and recorder.closed, "the healthy sink got every flow and closed"
    (health,) = [h for h in cap.capture.health() if h.name == "slowdrain"]
    assert health.state == "abandoned" and 0 < health.written < 100
    assert health.written + health.missed == 100
    assert not cap.capture.clean


class Losing(flowtap.Sink):
    def __init__(self, options):
        self.pending = 0

    def write(self, flow):
        self.pending += 1

    def flush(self):
        lost, self.pending = self.pending, 0
        if lost:
            raise flowtap.SinkFailed("disk full: cannot commit", lost=lost)


def test_sink_failed_counts_lost_flows_without_a_traceback(caplog):
    with capture(_plugin("losing", Losing)) as cap:
        cap.feed(make_flow(), make_flow())
        (health,) = [h for h in cap.capture.health() if h.name == "losing"]
        assert (health.written, health.missed, health.errors) == (2, 2, 1)
        assert health.last_error == "flush: disk full: cannot commit"
    (record,) = _errors(caplog)
    assert record.exc_info is None and record.getMessage() == (
        "sink 'losing' failed in flush: disk full: cannot commit")


class Threaded(flowtap.Sink):
    """Records the thread of every call, and uses call_later."""

    def __init__(self, options):
        self.threads = set()
        self.log = []
        self.fired = threading.Event()

    def _note(self, what):
        self.threads.add(threading.get_ident())
        self.log.append(what)

    def open(self, session):
        self.cancelled = self.call_later(0.05, lambda: self._note("cancelled"))
        self.cancelled.cancel()

    def write(self, flow):
        self._note(f"write {flow.request.path}")
        if flow.request.path == "/later":
            self.call_later(0.05, lambda: (self._note("later"), self.fired.set()))

    @flowtap.hookimpl
    def flowtap_session_clear(self, session):
        self._note("clear")

    @flowtap.hookimpl
    def flowtap_cookies_seen(self, cookies):
        self._note("cookies " + ",".join(c.name for c in cookies))


def test_every_call_of_a_sink_comes_on_a_sink_thread_in_order_with_its_flows():
    with capture(_plugin("threaded", Threaded)) as cap:
        sink = cap.sink("threaded")
        cap.capture.emit(make_flow(url="https://a.test/one"))
        cap.session.clear()
        cap.capture.emit(make_flow(url="https://a.test/later", response_headers=[("Set-Cookie", "sid=1")]))
        cap.feed()
        assert sink.fired.wait(5)
        assert sink.log == ["write /one", "clear", "cookies sid", "write /later", "later"]
        assert len(sink.threads) == 1 and threading.get_ident() not in sink.threads
        (runner,) = [t for t in threading.enumerate() if t.ident in sink.threads]
        assert runner.name.startswith("flowtap-sink")


class Lagging(flowtap.Sink):
    """Sleeps in its first write (slow, not hung: well within call_timeout)."""

    def __init__(self, options):
        self.threads = set()
        self.written = []

    def write(self, flow):
        self.threads.add(threading.get_ident())
        if not self.written:
            time.sleep(1.5)
        self.written.append(flow.request.path)


class Timed(flowtap.Sink):
    """Notes when each flow reached it, and on which thread."""

    def __init__(self, options):
        self.arrived = []

    def write(self, flow):
        self.arrived.append((flow.request.path, time.monotonic(), threading.get_ident()))


def test_a_sink_that_lags_gets_its_thread_alone_and_holds_the_others_back_only_a_moment():
    """The sinks share a thread while they keep up; once one's turn runs past STALL, the others move."""
    with capture(_plugin("lagging", Lagging), _plugin("timed", Timed)) as cap:
        lagging, timed = cap.sink("lagging"), cap.sink("timed")
        emitted = {}
        for i in range(3):
            emitted[f"/{i}"] = time.monotonic()
            cap.capture.emit(make_flow(url=f"https://a.test/{i}"))
            time.sleep(0.3)
        assert not lagging.written, "the lagging sink is still in its first write"
        assert [path for path, _, _ in timed.arrived] == ["/0", "/1", "/2"]
        for path, arrived, _ in timed.arrived:
            assert arrived - emitted[path] < 0.5, f"{path} waited {arrived - emitted[path]:.2f} s"
        assert {thread for _, _, thread in timed.arrived[1:]}.isdisjoint(lagging.threads)
        cap.feed()
        assert lagging.written == ["/0", "/1", "/2"] and len(lagging.threads) == 1


def test_call_later_needs_a_running_capture():
    sink = Threaded({})
    try:
        sink.call_later(1, lambda: None)
    except RuntimeError as exc:
        assert "call_later needs one" in str(exc)
    else:
        raise AssertionError("call_later outside a capture should say why it cannot run")
