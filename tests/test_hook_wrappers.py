"""Hook wrappers (``wrapper=True``, ``hookwrapper=True``) run as pluggy documents, isolated."""

import contextlib

import pluggy
import pytest

import flowtap
from flowtap.plugins import PluginHost
from flowtap.testing import capture, make_flow

hookimpl = flowtap.hookimpl
SESSION = object()  # notification hooks only hand it on


@contextlib.contextmanager
def capture_with(*plugins):
    """A real started capture (flows go through ``Capture.emit``) with ``plugins`` under their names."""
    with capture() as cap:
        for plugin in plugins:
            cap.capture.register(plugin, name=plugin.name)
        yield cap


def host_with(*plugins):
    host = PluginHost()
    for plugin in plugins:
        host.register(plugin, name=plugin.name)
    return host


class Plain:
    """A plain implementation of a notification hook and of the filter (``keep``)."""

    def __init__(self, name, events, keep=None, **opts):
        self.name = name

        @hookimpl(**opts)
        def flowtap_session_mark(session, text):
            events.append(name)

        @hookimpl(**opts)
        def flowtap_filter(flow):
            events.append(name)
            return keep

        self.flowtap_session_mark, self.flowtap_filter = flowtap_session_mark, flowtap_filter


class NewStyle:
    """``wrapper=True``: ``result = yield``, returns ``replace(flow, result)`` around the filter."""

    def __init__(self, name, events, replace=None, **opts):
        self.name = name

        @hookimpl(wrapper=True, **opts)
        def flowtap_session_mark(session, text):
            events.append(f"{name} before")
            result = yield
            events.append(f"{name} after {result!r}")
            return result

        @hookimpl(wrapper=True, **opts)
        def flowtap_filter(flow):
            result = yield
            events.append(f"{name} saw {result!r}")
            return replace(flow, result) if replace else result

        self.flowtap_session_mark, self.flowtap_filter = flowtap_session_mark, flowtap_filter


class OldStyle:
    """``hookwrapper=True``: ``outcome = yield``, ``outcome.force_result(replace(flow, result))``."""

    def __init__(self, name, events, replace=None, **opts):
        self.name = name

        @hookimpl(hookwrapper=True, **opts)
        def flowtap_session_mark(session, text):
            events.append(f"{name} before")
            outcome = yield
            events.append(f"{name} after {outcome.get_result()!r}")

        @hookimpl(hookwrapper=True, **opts)
        def flowtap_filter(flow):
            outcome = yield
            events.append(f"{name} saw {outcome.get_result()!r}")
            if replace:
                outcome.force_result(replace(flow, outcome.get_result()))

        self.flowtap_session_mark, self.flowtap_filter = flowtap_session_mark, flowtap_filter


def test_both_styles_wrap_a_notification_hook():
    events = []
    host = host_with(Plain("a", events), NewStyle("new", events), OldStyle("old", events), Plain("b", events))
    host.call("flowtap_session_mark", session=SESSION, text="here")
    # Registered last is called first, wrappers around everything else: pluggy's order.
    assert events == ["old before", "new before", "b", "a", "new after []", "old after []"]


def test_the_order_is_pluggys_with_tryfirst_and_trylast():
    events = []
    plugins = [
        NewStyle("w-first", events, tryfirst=True), Plain("p-last", events, trylast=True),
        OldStyle("w", events), Plain("p-first", events, tryfirst=True),
        NewStyle("w-last", events, trylast=True), Plain("p", events), OldStyle("w2", events),
    ]  # fmt: skip
    host_with(*plugins).call("flowtap_session_mark", session=SESSION, text="here")
    ours, events[:] = list(events), []
    pm = pluggy.PluginManager("flowtap")
    pm.add_hookspecs(flowtap.hookspecs)
    for plugin in plugins:
        pm.register(plugin, name=plugin.name)
    pm.hook.flowtap_session_mark(session=SESSION, text="here")
    assert ours == events
    assert ours[:4] == ["w-first before", "w2 before", "w before", "w-last before"]
    assert ours[4:7] == ["p-first", "p", "p-last"]


def drop_secrets(flow, result):
    return [*result, False] if "secret" in flow.request.url else result


def keep_everything(flow, result):
    return [keep for keep in result if keep is not False]


@pytest.mark.parametrize("style", [NewStyle, OldStyle])
def test_a_wrapper_turns_a_keep_into_a_drop_in_a_real_capture(style):
    events = []
    flows = [make_flow(url="https://a.test/public"), make_flow(url="https://a.test/secret")]
    wrapper = style("wrapper", events, replace=drop_secrets)
    with capture_with(Plain("keeper", events, keep=True), wrapper) as cap:
        cap.feed(*flows)
        assert [f.request.url for f in cap.recorded.flows] == ["https://a.test/public"]
        assert cap.session.counts.filtered == 1
    assert events == ["keeper", "wrapper saw [True]"] * 2


@pytest.mark.parametrize("style", [NewStyle, OldStyle])
def test_a_wrapper_turns_a_drop_into_a_keep(style):
    events = []
    host = host_with(Plain("dropper", events, keep=False), style("wrapper", events, replace=keep_everything))
    assert list(host.each("flowtap_filter", flow=make_flow())) == []
    assert events == ["dropper", "wrapper saw [False]"]


def test_a_replacement_is_attributed_to_the_wrapper_and_results_kept_otherwise():
    events = []
    host = host_with(Plain("a", events, keep=True), Plain("b", events), NewStyle("w", events))
    assert list(host.each("flowtap_filter", flow=make_flow())) == [("b", None), ("a", True)]

    def add_in_place(flow, result):
        result.append(False)
        return result

    host.register(OldStyle("appender", events, replace=add_in_place), name="appender")
    assert list(host.each("flowtap_filter", flow=make_flow())) == [("appender", True), ("appender", False)]


class Raising:
    name = "raising"

    @hookimpl
    def flowtap_filter(self, flow):
        raise ValueError("inner trouble")


class BadWrappers:
    name = "bad-wrappers"

    @hookimpl(wrapper=True, tryfirst=True)
    def flowtap_filter(self, flow):
        yield
        raise RuntimeError("wrapper trouble after yield")

    @hookimpl(hookwrapper=True)
    def flowtap_session_mark(self, session, text):
        raise RuntimeError("wrapper trouble before yield")
        yield


def test_a_raising_wrapper_is_named_and_the_call_goes_on(caplog):
    events = []
    good = OldStyle("good", events, replace=drop_secrets)
    with capture_with(BadWrappers(), good, Plain("keeper", events)) as cap:
        cap.feed(make_flow(url="https://a.test/public"), make_flow(url="https://a.test/secret"))
        assert [f.request.url for f in cap.recorded.flows] == ["https://a.test/public"]
    assert events == ["keeper", "good saw []"] * 2
    assert "plugin 'bad-wrappers' raised in flowtap_filter" in caplog.text
    assert "wrapper trouble after yield" in caplog.text

    events.clear()
    host = host_with(BadWrappers(), NewStyle("good", events), Plain("p", events))
    host.call("flowtap_session_mark", session=SESSION, text="here")
    assert events == ["good before", "p", "good after []"]
    assert "plugin 'bad-wrappers' raised in flowtap_session_mark" in caplog.text
    assert "wrapper trouble before yield" in caplog.text


def test_a_raising_implementation_is_isolated_and_wrappers_see_the_others_results(caplog):
    events = []
    keeper = Plain("keeper", events, keep=True)
    host = host_with(keeper, Raising(), NewStyle("new", events), OldStyle("old", events))
    assert list(host.each("flowtap_filter", flow=make_flow())) == [("keeper", True)]
    assert events == ["keeper", "new saw [True]", "old saw [True]"]
    assert "plugin 'raising' raised in flowtap_filter" in caplog.text and "inner trouble" in caplog.text


class Mistakes:
    name = "mistakes"

    @hookimpl(wrapper=True)
    def flowtap_filter(self, flow):
        yield  # forgot to return the result

    @hookimpl(hookwrapper=True)
    def flowtap_session_mark(self, session, text):
        yield
        yield


def test_wrapper_mistakes_are_reported_and_change_nothing(caplog):
    events = []
    host = host_with(Plain("dropper", events, keep=False), Mistakes())
    assert list(host.each("flowtap_filter", flow=make_flow())) == [("dropper", False)]
    assert "plugin 'mistakes' raised in flowtap_filter" in caplog.text
    assert "made the results None, not a list (return (yield)?)" in caplog.text
    host.call("flowtap_session_mark", session=SESSION, text="here")
    assert "has a second yield" in caplog.text


class Refuse(Exception):
    pass


class Validator:
    name = "validator"

    @hookimpl
    def flowtap_config_validate(self, config):
        raise Refuse("bad key")


def test_an_exception_that_escapes_the_call_goes_through_the_wrappers():
    events = []

    class Watch:
        name = "watch"

        @hookimpl(wrapper=True)
        def flowtap_config_validate(self, config):
            try:
                return (yield)
            except Refuse as exc:
                events.append(f"new saw {exc}")
                raise

    class Outer:
        name = "outer"

        @hookimpl(hookwrapper=True, tryfirst=True)
        def flowtap_config_validate(self, config):
            outcome = yield
            events.append(f"old saw {outcome.exception}")

    host = host_with(Validator(), Watch(), Outer())
    with pytest.raises(Refuse, match="bad key"):
        list(host.each("flowtap_config_validate", reraise=Refuse, config=None))
    assert events == ["new saw bad key", "old saw bad key"]

    class Forgive:
        name = "forgive"

        @hookimpl(wrapper=True)
        def flowtap_config_validate(self, config):
            try:
                return (yield)
            except Refuse:
                return ["forgiven"]

    host.register(Forgive(), name="forgive")
    results = list(host.each("flowtap_config_validate", reraise=Refuse, config=None))
    assert results == [("forgive", "forgiven")]


class Spec:
    @pluggy.HookspecMarker("flowtap")(firstresult=True)
    def flowtap_pick(self, options):
        """Pick one."""


def test_firstresult_stops_at_the_first_answer_and_wrappers_see_one_value():
    events = []

    class Picker:
        def __init__(self, name, answer):
            self.name, self.answer = name, answer

        @hookimpl
        def flowtap_pick(self, options):
            events.append(self.name)
            return self.answer

    class Around:
        name = "around"

        @hookimpl(wrapper=True)
        def flowtap_pick(self, options):
            result = yield
            events.append(f"around saw {result!r}")
            return result

    host = PluginHost()
    host.pm.add_hookspecs(Spec)
    for plugin in [Picker("never", "z"), Picker("first", "a"), Picker("silent", None)]:
        host.register(plugin, name=plugin.name)
    assert list(host.each("flowtap_pick", options=[])) == [("silent", None), ("first", "a")]
    host.register(Around(), name="around")
    assert list(host.each("flowtap_pick", options=[])) == [("silent", None), ("first", "a")]
    assert events == ["silent", "first", "silent", "first", "around saw 'a'"]


def test_a_wrapper_on_a_historic_hook_is_refused_at_registration():
    class Historic:
        @hookimpl(wrapper=True)
        def flowtap_register_sinks(self, register):
            yield

    with pytest.raises(pluggy.PluginValidationError, match="historic incompatible"):
        PluginHost().register(Historic(), name="historic")
