"""Debug sessions: pause, resume, clear, end, time limit, counts, and the bounded queue."""

import threading
import time

import flowtap
from flowtap.session import State
from flowtap.testing import capture, make_flow


class Events:
    def __init__(self):
        self.seen = []

    @flowtap.hookimpl
    def flowtap_session_start(self, session):
        self.seen.append(("start", session.name))

    @flowtap.hookimpl
    def flowtap_session_pause(self, session):
        self.seen.append(("pause", session.counts.recorded))

    @flowtap.hookimpl
    def flowtap_session_resume(self, session):
        self.seen.append(("resume", session.counts.recorded))

    @flowtap.hookimpl
    def flowtap_session_clear(self, session):
        self.seen.append(("clear", session.counts.recorded))

    @flowtap.hookimpl
    def flowtap_session_end(self, session):
        self.seen.append(("end", session.counts.recorded))


def test_pause_resume_clear_end_in_order_with_the_flows():
    events = Events()
    with capture(events, config={"session": {"name": "login bug"}}) as cap:
        session = cap.session
        cap.feed(make_flow(url="https://a.test/1"), make_flow(url="https://a.test/2"))
        assert session.pause() and session.state is State.PAUSED
        assert not session.pause()  # already paused
        cap.feed(make_flow(url="https://a.test/while-paused"))
        assert session.resume() and session.recording
        cap.feed(make_flow(url="https://a.test/3"))
        assert [f.request.path for f in cap.recorded.flows] == ["/1", "/2", "/3"]
        assert session.clear()
        cap.feed(make_flow(url="https://a.test/4"))
        assert [f.request.path for f in cap.recorded.flows] == ["/4"]
        counts = session.counts
        assert (counts.recorded, counts.paused, counts.received) == (1, 1, 5)
        assert session.end() and session.state is State.ENDED
        assert not session.end()
        assert cap.recorded.closed
    assert events.seen == [("start", "login bug"), ("pause", 2), ("resume", 2), ("clear", 0), ("end", 1)]


def test_time_limit_ends_the_session_and_finalizes_sinks():
    with capture(config={"session": {"duration": "300ms"}}) as cap:
        assert cap.session.time_limit == 0.3
        cap.feed(make_flow())
        assert cap.capture.wait(timeout=5)
        assert cap.session.state is State.ENDED and cap.recorded.closed
        assert 0.25 < cap.session.elapsed < 3
        assert len(cap.recorded.flows) == 1


def test_a_new_session_begins_while_the_capture_keeps_running():
    with capture() as cap:
        cap.feed(make_flow(url="https://a.test/first"))
        first_sink, first = cap.recorded, cap.session
        second = cap.capture.begin(name="second")
        cap.feed(make_flow(url="https://a.test/second"))
        assert first.state is State.ENDED and first_sink.closed
        assert [f.request.path for f in first_sink.flows] == ["/first"]
        assert [f.request.path for f in cap.recorded.flows] == ["/second"] and second.name == "second"


def test_a_slow_sink_misses_flows_past_its_backlog_and_nothing_waits():
    release = threading.Event()

    class Slow(flowtap.Sink):
        def __init__(self, options):
            self.count = 0

        def write(self, flow):
            release.wait(10)
            self.count += 1

    class SlowPlugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register("slow", Slow, default=True)

    with capture(SlowPlugin(), config={"dispatch": {"backlog": 300}}) as cap:
        waited = 0.0
        for burst in range(4):
            started = time.monotonic()
            for i in range(100):
                cap.capture.emit(make_flow(url=f"https://a.test/{burst}/{i}"))
            waited = max(waited, time.monotonic() - started)
            deadline = time.monotonic() + 5
            while len(cap.recorded.flows) < 100 * (burst + 1) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert waited < 0.5, "a source never waits on a sink"
        assert len(cap.recorded.flows) == 400, "the other sinks get every flow meanwhile"
        release.set()
        cap.feed()
        (slow,) = [h for h in cap.capture.health() if h.name == "slow"]
        assert slow.written + slow.missed == 400 and 0 < slow.written <= 301 and slow.missed >= 99
        assert cap.sink("slow").count == slow.written
        assert cap.session.counts.recorded == 400
        assert not cap.capture.clean


def test_flows_after_the_session_ended_are_not_recorded():
    with capture() as cap:
        cap.session.end()
        cap.capture.emit(make_flow())
        cap.capture.sync(5)
        assert cap.recorded.flows == []


def test_cookies_are_seen_while_paused():
    with capture() as cap:
        cap.session.pause()
        cap.feed(make_flow(url="https://shop.test/login",
                           response_headers=[("Set-Cookie", "sid=abc; Path=/; Secure; HttpOnly")]))
        assert cap.recorded.flows == []
        (cookie,) = cap.recorded.cookies
        assert (cookie.name, cookie.value, cookie.domain, cookie.secure, cookie.httponly) == (
            "sid", "abc", "shop.test", True, True)
        cap.capture.emitter("browser").cookies([flowtap.Cookie("pref", "dark", "shop.test")])
        cap.feed()
        assert [c.name for c in cap.recorded.cookies] == ["sid", "pref"]
