"""The proxy's caching addon manager calls what mitmproxy's own would, in the same order."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import addonmanager, exceptions, master, options
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.test import tflow

from flowtap_proxy.addon_manager import CachingAddonManager


class Recorder:
    def __init__(self, name, calls, children=(), fail=None, halt=False):
        self.name, self.calls, self.addons = name, calls, list(children)
        self.fail, self.halt = fail, halt

    def request(self, flow):
        self.calls.append(self.name)
        if self.fail:
            raise self.fail
        if self.halt:
            raise exceptions.AddonHalt()

    async def response(self, flow):  # an async hook is awaited
        await asyncio.sleep(0)
        self.calls.append(self.name + ":response")


def run(manager_class, build, events):
    """Trigger ``events`` on a fresh master whose addons ``build(calls)`` returns; the calls seen."""
    calls: list[str] = []

    async def main():
        m = master.Master(options.Options())
        m._legacy_log_events.uninstall()  # as the proxy source does; it would outlive this loop
        m.addons = manager_class(m)
        m.addons.add(*build(calls))
        flow = tflow.tflow(resp=True)
        for event in events:
            if event == "add-late":
                m.addons.add(Recorder("late", calls))
            elif event == "remove-first":
                m.addons.remove(m.addons.chain[0])
            else:
                await m.addons.handle_lifecycle(event(flow))

    asyncio.run(main())
    return calls


@pytest.mark.parametrize("build", [
    lambda calls: [Recorder("a", calls, [Recorder("a.child", calls)]), Recorder("b", calls)],
    lambda calls: [Recorder("a", calls, fail=ValueError("boom")), Recorder("b", calls)],
    lambda calls: [Recorder("a", calls, halt=True), Recorder("b", calls)],
], ids=["children-in-order", "an-error-is-isolated", "halt-stops-the-chain"])
def test_the_same_hooks_run_as_with_mitmproxys_manager(build, caplog):
    assert CachingAddonManager.fits(), "mitmproxy's AddonManager changed: check addon_manager.py against it"
    events = [http_layer.HttpRequestHook, http_layer.HttpResponseHook, http_layer.HttpRequestHook,
              "add-late", http_layer.HttpRequestHook, "remove-first", http_layer.HttpRequestHook]
    with caplog.at_level(logging.ERROR, logger="mitmproxy"):
        stock = run(addonmanager.AddonManager, build, events)
        stock_errors = [r.getMessage() for r in caplog.records]
        caplog.clear()
        cached = run(CachingAddonManager, build, events)
        cached_errors = [r.getMessage() for r in caplog.records]
    assert cached == stock and "late" in stock and "b:response" in stock
    assert cached_errors == stock_errors


def test_the_proxy_runs_with_the_caching_manager():
    """In the proxy's process (here run in this one, as flowtap_proxy.host runs it)."""
    import flowtap
    from flowtap_proxy.embedded import EmbeddedProxy

    capture = flowtap.Capture({"sources": {"proxy": {"listen": "127.0.0.1:0"}}}, load_entrypoints=True)
    capture.validate()
    options = capture.config.table("sources.proxy")
    proxy = EmbeddedProxy(options)

    class Emitter:
        log = logging.getLogger("flowtap.test")
        recording = True

        def emit(self, flow):
            pass

    proxy.start(Emitter())
    try:
        assert isinstance(proxy._master.addons, CachingAddonManager)
    finally:
        proxy.stop()
