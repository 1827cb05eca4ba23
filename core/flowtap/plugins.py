"""Finding, loading and calling plugins: one :class:`PluginHost` per capture."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, NamedTuple

import attrs
import pluggy

from flowtap import hookspecs
from flowtap.health import ErrorLog

log = logging.getLogger("flowtap.plugins")

GROUP = "flowtap"
hookimpl = pluggy.HookimplMarker("flowtap")


class PluginLoadError(Exception):
    """A plugin failed to load and ``FLOWTAP_STRICT_PLUGINS=1`` makes that fatal."""


@attrs.define
class PluginInfo:
    """What ``flowtap plugins`` shows about one plugin."""

    name: str
    status: str  # "enabled", "disabled" or "failed"
    distribution: str = ""
    version: str = ""
    module: str = ""
    hooks: list[str] = attrs.field(factory=list)
    error: str = ""
    reason: str = ""
    #: For a plugin that failed to load: the traceback of its failure.
    traceback: str = ""
    #: ``flowtap_*`` functions it has that are no hook (misspelled?), each with the hook it probably meant.
    unknown_hooks: dict[str, str | None] = attrs.field(factory=dict)


def hook_names() -> list[str]:
    """The names of every flowtap hook."""
    return sorted(name for name in vars(hookspecs) if name.startswith("flowtap_"))


def closest_hook(name: str) -> str | None:
    """The hook ``name`` probably meant (``flowtap_register_sink`` -> ``flowtap_register_sinks``), if any."""
    import difflib

    close = difflib.get_close_matches(name, hook_names(), n=1, cutoff=0.6)
    return close[0] if close else None


def misspelled(unknown: dict[str, str | None]) -> str:
    """``flowtap_register_sink is not a flowtap hook (did you mean flowtap_register_sinks?)``, for each."""
    return "; ".join(f"{name} is not a flowtap hook" + (f" (did you mean {meant}?)" if meant else "")
                     for name, meant in unknown.items())


class _Manager(pluggy.PluginManager):
    """A PluginManager that counts registrations, so that callers can cache hook implementations."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.version = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self.version += 1

    def unregister(self, plugin: object = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self.version += 1

    def add_hookspecs(self, module_or_class: ModuleType | type) -> None:  # pluggy's _Namespace
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self.version += 1


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _bundled(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == "flowtap"


class PluginHost:
    """A pluggy manager plus what flowtap needs around it.

    Loads the ``flowtap`` entry points one by one, each behind its own error
    handling; honours disabling and allow-listing; calls every hook
    implementation on its own so that one failing plugin is named and the
    others still run.
    """

    def __init__(self, disable: Iterable[str] = ()) -> None:
        self.pm = _Manager("flowtap")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        env_disable = _env_list("FLOWTAP_DISABLE_PLUGINS") or set()
        self.disabled: set[str] = set(disable) | env_disable
        self.strict = os.environ.get("FLOWTAP_STRICT_PLUGINS", "") not in ("", "0")
        #: Every error a plugin, source or sink raised: the first of each logged, repeats summarised.
        self.errors = ErrorLog()
        self._history: dict[str, dict[str, Any]] = {}
        #: The plugin whose hook implementation is running (for register callbacks).
        self.calling: str | None = None
        self._impls: dict[str, _Plan] = {}  # hook -> how to call it
        self._unknown: dict[str, dict[str, str | None]] = {}  # plugin -> its misspelled hooks, for its info

    # -- loading ------------------------------------------------------------

    def load_entrypoints(self, only: Iterable[str] | None = None) -> None:
        """Load every ``flowtap`` entry point that is allowed and not disabled.

        ``FLOWTAP_LOAD_PLUGINS`` (comma-separated names) restricts third-party
        plugins to those named; set but empty, it loads none of them. The
        bundled plugins always load unless disabled by name.

        :param only: load just these entry points, by name (for tests).
        """
        allow = _env_list("FLOWTAP_LOAD_PLUGINS")
        wanted = None if only is None else set(only)
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in self.infos or (wanted is not None and ep.name not in wanted):
                continue
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            info = PluginInfo(ep.name, "enabled", dist, version, ep.value)
            self.infos[ep.name] = info
            if ep.name in self.disabled:
                info.status, info.reason = "disabled", "disabled by name"
                continue
            if allow is not None and not _bundled(ep) and ep.name not in allow:
                info.status, info.reason = "disabled", "not in FLOWTAP_LOAD_PLUGINS"
                continue
            try:
                plugin = ep.load()
                self._register(plugin, ep.name)
            except Exception as exc:  # a plugin may raise anything while importing
                info.status = "failed"
                info.error = f"{type(exc).__name__}: {exc}"
                info.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                message = (f"plugin {ep.name!r} (from {dist or 'unknown distribution'}) failed to load: "
                           f"{info.error}")
                if self.strict:
                    raise PluginLoadError(message) from exc
                log.warning("%s", message, exc_info=log.isEnabledFor(logging.DEBUG),
                            extra={"plugin": ep.name})
                continue
            info.hooks = self._hooks_of(plugin)
            info.unknown_hooks = self._unknown.pop(ep.name, {})

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an object or module with ``@flowtap.hookimpl`` functions; returns its name."""
        name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        if name in self.disabled:
            self.infos[name] = PluginInfo(name, "disabled", module=_module_of(plugin),
                                          reason="disabled by name")
            return name
        self._register(plugin, name)
        self.infos[name] = PluginInfo(name, "enabled", module=_module_of(plugin),
                                      hooks=self._hooks_of(plugin), unknown_hooks=self._unknown.pop(name, {}))
        return name

    def _register(self, plugin: object, name: str) -> None:
        self.pm.register(plugin, name=name)
        unknown = {c.name: closest_hook(c.name)
                   for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()}
        if unknown:  # a misspelled hook would otherwise never be called, silently
            self._unknown[name] = unknown
            message = f"plugin {name!r}: {misspelled(unknown)}; flowtap never calls it"
            if self.strict:
                self.pm.unregister(plugin)
                raise PluginLoadError(message)
            log.warning("%s", message, extra={"plugin": name})
        for hook, kwargs in self._history.items():
            for _ in self._call_impls(hook, kwargs, only=plugin):
                pass

    def unregister(self, plugin: object) -> None:
        """Stop calling the hooks of ``plugin``."""
        if self.pm.is_registered(plugin):
            self.pm.unregister(plugin)

    def _hooks_of(self, plugin: object) -> list[str]:
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ())

    # -- calling ------------------------------------------------------------

    def each(self, hook: str, reraise: type[Exception] | tuple = (),
             **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call every implementation of ``hook`` on its own; yield ``(plugin name, result)``.

        An implementation that raises is logged with the plugin's name and a
        traceback and skipped; the others still run. Exceptions of the
        ``reraise`` types (a ConfigError, say) propagate instead.

        Hook wrappers (``wrapper=True``, ``hookwrapper=True``) run around the
        other implementations as pluggy documents. A wrapper that replaces the
        results makes this yield ``(wrapper's plugin name, value)`` for each
        value of its replacement instead.
        """
        yield from self._call_impls(hook, kwargs, reraise=reraise)

    def _call_impls(
        self, hook: str, kwargs: dict[str, Any], only: object = None, reraise: type[Exception] | tuple = ()
    ) -> Iterator[tuple[str, Any]]:
        plan = self._plan(hook)
        wrappers, plain = plan.wrappers, plan.plain
        if only is not None:
            wrappers = tuple(impl for impl in wrappers if impl.plugin is only)
            plain = tuple(impl for impl in plain if impl.plugin is only)
        if wrappers:
            return self._call_wrapped(hook, wrappers, plain, kwargs, reraise, plan.firstresult)
        return self._call_plain(hook, plain, kwargs, reraise, plan.firstresult)

    def _call_plain(
        self, hook: str, impls: tuple[Any, ...], kwargs: dict[str, Any], reraise: Any, firstresult: bool
    ) -> Iterator[tuple[str, Any]]:
        """Call ``impls`` one by one, lazily: a caller that stops early stops the calls."""
        for impl in impls:
            self.calling = impl.plugin_name
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
            except reraise:
                raise
            except Exception:
                self.report_error(f"plugin {impl.plugin_name!r}", hook)
                continue
            finally:
                self.calling = None
            yield impl.plugin_name, result
            if firstresult and result is not None:
                return

    def _call_wrapped(
        self,
        hook: str,
        wrappers: tuple[Any, ...],
        plain: tuple[Any, ...],
        kwargs: dict[str, Any],
        reraise: Any,
        firstresult: bool,
    ) -> Iterator[tuple[str, Any]]:
        """Run the wrappers up to their ``yield`` (outermost first), every plain implementation on
        its own, then the rest of each wrapper (innermost first), as pluggy's own loop does.

        Only exceptions that escape the call (the ``reraise`` types, KeyboardInterrupt) reach the
        wrappers; any other one is reported with the plugin's name and its raiser left out: an
        implementation returned nothing, a wrapper changed nothing.
        """
        error: BaseException | None = None  # the exception the call ends with, if any
        started = []
        for impl in wrappers:
            self.calling = impl.plugin_name
            try:
                gen = impl.function(*[kwargs[name] for name in impl.argnames])
                if next(gen, _NO_YIELD) is _NO_YIELD:
                    raise RuntimeError(f"hook wrapper {impl.function.__qualname__} returned before its yield")
                started.append((impl, gen))
            except BaseException as exc:
                if not _escapes(exc, reraise):
                    self.report_error(f"plugin {impl.plugin_name!r}", hook)
                    continue
                error = exc
                break
            finally:
                self.calling = None
        pairs: list[tuple[str, Any]] = []
        if error is None:
            try:
                pairs = list(self._call_plain(hook, plain, kwargs, reraise, firstresult))
            except BaseException as exc:  # only what escapes gets out of _call_plain
                error = exc
        values = [value for _, value in pairs if value is not None]
        result: Any = (values[0] if values else None) if firstresult else values
        owner = None  # the plugin whose wrapper replaced the results last
        for impl, gen in reversed(started):
            before, snapshot = result, list(result) if isinstance(result, list) else None
            self.calling = impl.plugin_name
            try:
                result, error = _finish_wrapper(impl, gen, result, error, firstresult)
            except BaseException as exc:
                if not _escapes(exc, reraise):
                    self.report_error(f"plugin {impl.plugin_name!r}", hook)
                elif exc is not error:  # a new exception, not the one it was handed
                    result, error = None, exc
            finally:
                self.calling = None
            if result is not before or (snapshot is not None and result != snapshot):
                owner = impl.plugin_name
        if error is not None:
            raise error
        if owner is None:
            yield from pairs
        elif firstresult:
            yield owner, result
        else:
            for value in result:
                yield owner, value

    def impls(self, hook: str) -> tuple[Any, ...]:
        """The implementations of ``hook`` in calling order: wrappers (outermost first), then the
        others (cached until a plugin (un)registers)."""
        return self._plan(hook).impls

    def _plan(self, hook: str) -> _Plan:
        plan = self._impls.get(hook)
        if plan is None or plan.version != self.pm.version:
            caller = getattr(self.pm.hook, hook)
            impls = tuple(reversed(caller.get_hookimpls()))  # pluggy keeps them in reverse calling order
            wrappers = tuple(impl for impl in impls if impl.wrapper or impl.hookwrapper)
            plain = tuple(impl for impl in impls if not (impl.wrapper or impl.hookwrapper))
            firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
            plan = self._impls[hook] = _Plan(self.pm.version, wrappers + plain, wrappers, plain, firstresult)
        return plan

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a notification hook, isolating failures."""
        for _ in self._call_impls(hook, kwargs):
            pass

    def call_historic(self, hook: str, **kwargs: Any) -> None:
        """Call a registration hook now, and on each plugin registered later, isolating failures."""
        self._history[hook] = kwargs
        self.call(hook, **kwargs)

    def report_error(self, who: str, where: str) -> None:
        """Report the exception being handled, naming the culprit; a traceback the first time, then summaries.

        :param who: e.g. ``"plugin 'har'"`` or ``"source 'proxy'"``.
        :param where: the hook or method that raised.
        """
        exc = sys.exc_info()[1]
        if exc is not None:
            self.errors.report(who, where, exc)

    @property
    def error_count(self) -> int:
        """How many times plugins, sources and sinks have raised so far."""
        return self.errors.count


class _Plan(NamedTuple):
    """How to call one hook, worked out once per registration change."""

    version: int  # the manager's version it was made for
    impls: tuple[Any, ...]  # calling order: wrappers, outermost first, then the others
    wrappers: tuple[Any, ...]
    plain: tuple[Any, ...]
    firstresult: bool


_NO_YIELD = object()


def _escapes(exc: BaseException, reraise: Any) -> bool:
    """Whether ``exc`` ends the hook call rather than being reported and isolated."""
    return not isinstance(exc, Exception) or isinstance(exc, reraise)


def _finish_wrapper(impl: Any, gen: Any, result: Any, error: BaseException | None, firstresult: bool) -> Any:
    """Resume a hook wrapper after its ``yield``; return the call's ``(result, error)`` after it."""
    outcome = pluggy.Result(None, error) if error is not None else pluggy.Result(result, None)
    try:
        if impl.hookwrapper:  # old style: ``outcome = yield``
            gen.send(outcome)
        elif error is not None:  # new style: ``result = yield`` raises the call's exception
            gen.throw(error)
        else:
            gen.send(result)
    except StopIteration as stop:
        if impl.wrapper:
            outcome.force_result(stop.value)
    else:
        gen.close()
        raise RuntimeError(f"hook wrapper {impl.function.__qualname__} has a second yield")
    if outcome.exception is not None:  # handed on, or one of its own (old style: force_exception)
        if outcome.exception is not error:
            raise outcome.exception
        return None, error
    result = outcome.get_result()
    if not firstresult and not isinstance(result, list):
        fix = "return (yield)" if impl.wrapper else "outcome.force_result(a list)"
        name = impl.function.__qualname__
        raise TypeError(f"hook wrapper {name} made the results {result!r}, not a list ({fix}?)")
    return result, None


def _module_of(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__
