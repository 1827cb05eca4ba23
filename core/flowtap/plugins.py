"""Finding, loading and calling plugins: one :class:`PluginHost` per capture."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

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

    def add_hookspecs(self, module_or_class: object) -> None:
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
        self._impls: dict[str, tuple[int, tuple[Any, ...]]] = {}  # hook -> (pm.version, implementations)
        self._unknown: dict[str, dict[str, str | None]] = {}  # plugin -> its misspelled hooks, until its info

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
                message = f"plugin {ep.name!r} (from {dist or 'unknown distribution'}) failed to load: {info.error}"
                if self.strict:
                    raise PluginLoadError(message) from exc
                log.warning("%s", message, exc_info=log.isEnabledFor(logging.DEBUG), extra={"plugin": ep.name})
                continue
            info.hooks = self._hooks_of(plugin)
            info.unknown_hooks = self._unknown.pop(ep.name, {})

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an object or module with ``@flowtap.hookimpl`` functions; returns its name."""
        name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        if name in self.disabled:
            self.infos[name] = PluginInfo(name, "disabled", module=_module_of(plugin), reason="disabled by name")
            return name
        self._register(plugin, name)
        self.infos[name] = PluginInfo(name, "enabled", module=_module_of(plugin), hooks=self._hooks_of(plugin),
                                      unknown_hooks=self._unknown.pop(name, {}))
        return name

    def _register(self, plugin: object, name: str) -> None:
        self.pm.register(plugin, name=name)
        unknown = {c.name: closest_hook(c.name) for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec()}
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

    def each(self, hook: str, reraise: type[Exception] | tuple = (), **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call every implementation of ``hook`` on its own; yield ``(plugin name, result)``.

        An implementation that raises is logged with the plugin's name and a
        traceback and skipped; the others still run. Exceptions of the
        ``reraise`` types (a ConfigError, say) propagate instead.
        """
        yield from self._call_impls(hook, kwargs, reraise=reraise)

    def _call_impls(
        self, hook: str, kwargs: dict[str, Any], only: object = None, reraise: type[Exception] | tuple = ()
    ) -> Iterator[tuple[str, Any]]:
        for impl in self.impls(hook):
            if only is not None and impl.plugin is not only:
                continue
            args = [kwargs[name] for name in impl.argnames]
            self.calling = impl.plugin_name
            try:
                result = impl.function(*args)
            except reraise:
                raise
            except Exception:
                self.report_error(f"plugin {impl.plugin_name!r}", hook)
                continue
            finally:
                self.calling = None
            yield impl.plugin_name, result

    def impls(self, hook: str) -> tuple[Any, ...]:
        """The implementations of ``hook`` in calling order (cached until a plugin (un)registers)."""
        cached = self._impls.get(hook)
        if cached is None or cached[0] != self.pm.version:
            impls = tuple(reversed(getattr(self.pm.hook, hook).get_hookimpls()))
            cached = self._impls[hook] = (self.pm.version, impls)
        return cached[1]

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


def _module_of(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__module__
