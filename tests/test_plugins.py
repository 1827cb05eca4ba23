"""Plugin discovery, isolation, disabling, allow-listing, programmatic registration."""

import pytest

import flowtap
from flowtap.plugins import PluginHost, PluginLoadError
from flowtap.testing import capture, make_flow

from clirun import flowtap as run_cli
from fakedist import make_distribution

GOOD = '''
import flowtap

@flowtap.hookimpl
def flowtap_filter(flow):
    return None if "keep" in flow.request.url else False
'''
BROKEN = '''
raise ImportError("this plugin needs a module nobody installed")
'''
BUNDLED = ["collection", "cookiejar", "har", "interceptor", "proxy"]


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "flowtap-goodplug", {"goodplug": "goodplug"},
                             {"goodplug": GOOD})
    make_distribution(root, "flowtap-badplug", {"badplug": "badplug"}, {"badplug": BROKEN}, version="0.3")
    monkeypatch.syspath_prepend(str(root))
    return root


def test_bundled_plugins_load_through_entry_points():
    host = PluginHost()
    host.load_entrypoints()
    for name in BUNDLED:
        info = host.infos[name]
        assert (info.status, info.distribution) == ("enabled", "flowtap"), info
        assert "flowtap_config_options" in info.hooks


def test_broken_plugin_is_reported_and_the_others_load(third_party, caplog):
    host = PluginHost()
    host.load_entrypoints()
    bad = host.infos["badplug"]
    assert bad.status == "failed"
    assert bad.distribution == "flowtap-badplug" and "nobody installed" in bad.error
    assert host.infos["goodplug"].status == "enabled"
    assert all(host.infos[n].status == "enabled" for n in BUNDLED)
    assert "'badplug' (from flowtap-badplug) failed to load" in caplog.text


def test_strict_mode_makes_a_load_failure_fatal(third_party, monkeypatch):
    monkeypatch.setenv("FLOWTAP_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="badplug"):
        PluginHost().load_entrypoints()


def test_allow_list_restricts_third_party_plugins(third_party, monkeypatch):
    monkeypatch.setenv("FLOWTAP_LOAD_PLUGINS", "goodplug")
    host = PluginHost()
    host.load_entrypoints()
    assert host.infos["goodplug"].status == "enabled"
    assert host.infos["badplug"].status == "disabled"
    monkeypatch.setenv("FLOWTAP_LOAD_PLUGINS", "")
    host = PluginHost()
    host.load_entrypoints()
    assert host.infos["goodplug"].status == "disabled"
    assert all(host.infos[n].status == "enabled" for n in BUNDLED)


def test_disable_by_env_and_by_config(third_party, monkeypatch):
    monkeypatch.setenv("FLOWTAP_DISABLE_PLUGINS", "badplug, har")
    cap = flowtap.Capture({"plugins": {"disable": ["goodplug"]}})
    statuses = {name: info.status for name, info in cap.host.infos.items()}
    assert statuses["badplug"] == statuses["har"] == statuses["goodplug"] == "disabled"
    assert "har" not in cap.sink_factories


def test_plugins_command_lists_everything_even_with_a_broken_plugin(third_party):
    result = run_cli("plugins", "-p", "no:proxy", pythonpath=[third_party])
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for name in ["collection", "cookiejar", "har", "interceptor"]:
        assert "enabled" in rows[name] and "flowtap" in rows[name]
    assert "disabled" in rows["proxy"]
    assert all(word in rows["goodplug"] for word in ("1.0.0", "flowtap-goodplug", "filter"))
    assert "failed" in rows["badplug"] and "nobody installed" in rows["badplug"]


def test_a_disabled_plugin_is_never_imported(tmp_path, monkeypatch):
    root = make_distribution(tmp_path / "site", "flowtap-loud", {"loud": "loudplug"},
                             {"loudplug": "raise SystemExit('imported!')"})
    result = run_cli("plugins", "-p", "no:loud", pythonpath=[root])
    assert result.returncode == 0 and "imported!" not in result.stderr
    assert "disabled" in [line for line in result.stdout.splitlines() if line.startswith("loud")][0]


class KeepOnlyPost:
    @flowtap.hookimpl
    def flowtap_filter(self, flow):
        return flow.request.method == "POST" or False


def test_register_an_object_before_start():
    with capture(KeepOnlyPost()) as cap:
        cap.feed(make_flow(method="GET"), make_flow(method="POST"))
        assert [f.request.method for f in cap.recorded.flows] == ["POST"]


def test_register_a_sink_plugin_after_start():
    class Late(flowtap.Sink):
        got = []

        def __init__(self, options):
            pass

        def write(self, flow):
            Late.got.append(flow.request.url)

    class LatePlugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register("late", Late, default=True)

    with capture() as cap:
        cap.feed(make_flow(url="https://a.test/before"))
        cap.capture.register(LatePlugin())
        cap.capture.register(KeepOnlyPost())
        cap.feed(make_flow(url="https://a.test/after", method="POST"), make_flow(url="https://a.test/get"))
        assert Late.got == ["https://a.test/after"]
        assert [f.request.url for f in cap.recorded.flows] == ["https://a.test/before", "https://a.test/after"]


def test_a_sink_that_always_raises_leaves_the_others_complete(caplog):
    class Broken(flowtap.Sink):
        def __init__(self, options):
            pass

        def write(self, flow):
            raise RuntimeError("disk on fire")

    class BrokenPlugin:
        @flowtap.hookimpl
        def flowtap_register_sinks(self, register):
            register("broken", Broken, default=True)

    flows = [make_flow(url=f"https://a.test/{i}") for i in range(50)]
    with capture() as cap:
        cap.capture.register(BrokenPlugin(), name="broken-plugin")
        cap.feed(*flows)
        assert [f.id for f in cap.recorded.flows] == [f.id for f in flows]
        assert cap.session.counts.recorded == 50
    assert "sink 'broken' (plugin 'broken-plugin') raised in write" in caplog.text
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text


def test_a_filter_that_raises_is_isolated(caplog):
    class BadFilter:
        @flowtap.hookimpl
        def flowtap_filter(self, flow):
            raise ValueError("bad filter")

    with capture(BadFilter(), KeepOnlyPost()) as cap:
        cap.feed(make_flow(method="POST"), make_flow(method="GET"))
        assert [f.request.method for f in cap.recorded.flows] == ["POST"]
    assert "raised in flowtap_filter" in caplog.text


def test_misspelled_hook_is_reported(caplog, monkeypatch):
    class Typo:
        @flowtap.hookimpl
        def flowtap_filtr(self, flow):
            return False

    PluginHost().register(Typo(), name="typo")
    assert ("plugin 'typo': flowtap_filtr is not a flowtap hook (did you mean flowtap_filter?); "
            "flowtap never calls it") in caplog.text
    monkeypatch.setenv("FLOWTAP_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="flowtap_filtr"):
        PluginHost().register(Typo(), name="typo")
