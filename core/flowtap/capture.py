"""Capture: the object that runs flowtap — plugins, config, sources, sessions, sinks."""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from flowtap.api import SinkError, Source, SourceError
from flowtap.config import Config, ConfigError, Option
from flowtap.cookies import Cookie
from flowtap.coreplugin import NAME as CORE, CorePlugin
from flowtap.dispatch import Dispatcher
from flowtap.health import SUMMARY_INTERVAL, SinkHealth
from flowtap.model import Flow
from flowtap.plugins import PluginHost, misspelled
from flowtap.scheduler import Scheduler
from flowtap.session import Session, State
from flowtap.sinkworker import Limits, SinkWorker

log = logging.getLogger("flowtap")

#: Seconds between the watchdog's looks at the sinks' calls (a lagging sink holds the others back
#: for at most this plus sinkworker.STALL).
WATCH_INTERVAL = 0.05
#: Seconds a pause, clear, marker or end waits for the sources to emit the flows they finished.
SETTLE_TIMEOUT = 2.0


def _version() -> str:
    from flowtap import __version__

    return __version__


class StartupError(Exception):
    """The run cannot start; the message names the plugin and the reason."""


@attrs.define(frozen=True)
class _Factory:
    owner: str  # the plugin that registered it
    factory: Callable[[dict], Any]
    default: bool  # runs even when the config has no table for it
    table: str  # its config table, e.g. "sinks.har"
    captures: bool = True  # a source that emits flows (False: one that runs beside them, e.g. a UI)

    def enabled(self, config: Config) -> bool:
        return config.enabled(self.table, self.default)


class _Emitter:
    """What one source is given: emit flows and cookies into the current session."""

    def __init__(self, capture: Capture, name: str) -> None:
        self._dispatcher = capture.dispatcher
        self._errors = capture.host.errors
        self.name = name
        self.log = logging.getLogger(f"flowtap.{name}")
        self.config = capture.config

    @property
    def recording(self) -> bool:
        session = self._dispatcher.current
        return session is not None and session.recording

    def emit(self, flow: Flow) -> None:
        self._dispatcher.emit(flow)

    def cookies(self, cookies: list[Cookie]) -> None:
        self._dispatcher.cookies(cookies, self.name)

    def failed(self, message: str) -> None:
        self._errors.report(f"source {self.name!r}", "failed", SourceError(message), trace=False)


class Capture:
    """Runs sources into debug sessions whose flows reach the sinks.

    >>> capture = Capture({"sinks": {"har": {"path": "out.har"}}})
    >>> capture.register(my_plugin)      # any object or module with hookimpls
    >>> session = capture.start()        # sources start, the first session begins
    >>> session.pause(); session.resume(); session.clear()
    >>> capture.stop()                   # ends the session, stops the sources

    :param config: a :class:`Config`, or nested dicts shaped like the TOML file.
    :param load_entrypoints: discover plugins in the ``flowtap`` entry-point
        group (False: only the core and what you register).
    :param disable: plugin names not to load, besides ``[plugins] disable``.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        load_entrypoints: bool = True,
        disable: Iterable[str] = (),
    ) -> None:
        self.config = config if isinstance(config, Config) else Config.from_dict(config or {})
        disabled = set(disable) | set(self.config.raw.get("plugins", {}).get("disable", []) or [])
        self.host = PluginHost(disable=disabled - {CORE})
        self.options: dict[str, list[Option]] = {}
        self.source_factories: dict[str, _Factory] = {}
        self.sink_factories: dict[str, _Factory] = {}
        self.sources: dict[str, Source] = {}
        self.scheduler = Scheduler()
        self.dispatcher = Dispatcher(self.host, self.host.errors)
        self.session: Session | None = None
        #: The sinks of the current (or last) session, each on its worker.
        self.workers: list[SinkWorker] = []
        self._started = False
        self._validated = False
        self._lock = threading.RLock()

        self.host.call_historic("flowtap_config_options", declare=self._declare)
        self.host.call_historic("flowtap_register_sources", register=self._registrar("sources"))
        self.host.call_historic("flowtap_register_sinks", register=self._registrar("sinks"))
        self.host.register(CorePlugin(), name=CORE)
        self.host.infos[CORE].distribution = "flowtap"
        self.host.infos[CORE].version = _version()
        if load_entrypoints:
            self.host.load_entrypoints()

    # -- plugins ---------------------------------------------------------------

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register an object or module with ``@flowtap.hookimpl`` functions.

        Works before and after :meth:`start`: a sink registered into a running
        capture is built (if configured) and joins the current session.
        Returns the name the plugin was registered under.
        """
        with self._lock:
            before = set(self.sink_factories)
            name = self.host.register(plugin, name)
            if self._validated:
                self._validate()
            if self.session is not None and self.session.state is not State.ENDED:
                added = [s for s in self.sink_factories if s not in before]
                workers = self._build_sinks(added, self.session)
                self.workers = self.workers + workers
                self.dispatcher.add_workers(workers)
        return name

    def _declare(self, table: str, *options: Option) -> None:
        self.options.setdefault(table, []).extend(options)

    def _registrar(self, kind: str) -> Callable[[str, Callable[[dict], Any]], None]:
        factories = self.source_factories if kind == "sources" else self.sink_factories

        def register(name: str, factory: Callable[[dict], Any], default: bool = False,
                     table: str | None = None, captures: bool = True) -> None:
            """Register a source or sink factory; its table is ``[KIND.NAME]`` unless ``table`` says."""
            owner = self.host.calling or ""
            if name in factories and factories[name].owner != owner:
                raise ValueError(
                    f"{kind[:-1]} {name!r} is already registered by plugin {factories[name].owner!r}")
            factories[name] = _Factory(owner, factory, default, table or f"{kind}.{name}", captures)
            self.options.setdefault(factories[name].table, [])

        return register

    # -- config --------------------------------------------------------------------

    def validate(self) -> Config:
        """Validate the config against every declared option; raise ConfigError."""
        with self._lock:
            self._validate()
        return self.config

    def _validate(self) -> None:
        ignored = [
            f"{kind}.{info.name}"
            for info in self.host.infos.values()
            if info.status != "enabled"
            for kind in ("sources", "sinks")
        ]
        problem = self.unserved_table()
        if problem is not None:
            raise ConfigError(problem[0])
        self.config.validate(self.options, ignored=ignored)
        for _ in self.host.each("flowtap_config_validate", config=self.config, reraise=ConfigError):
            pass
        self._validated = True

    def unserved_table(self) -> tuple[str, str | None] | None:
        """The first configured ``[sinks.NAME]`` or ``[sources.NAME]`` table that no plugin serves.

        Its plugin (the one named NAME, as entry points name plugins) failed to
        import, has a misspelled hook, registers no such sink or source, or is not
        installed. A disabled plugin's table is left alone, as is ``enabled = false``.

        :returns: None, or one line naming the table's place, the plugin and the
            reason, and the plugin to blame (None when none is installed).
        """
        for kind, factories in (("sources", self.source_factories), ("sinks", self.sink_factories)):
            tables = self.config.raw.get(kind)
            if not isinstance(tables, dict):
                continue
            served = {entry.table for entry in factories.values()}
            for name, table in tables.items():
                dotted = f"{kind}.{name}"
                if not isinstance(table, dict) or dotted in served or table.get("enabled", True) is False:
                    continue
                problem = self._why_unserved(kind, name)
                if problem is not None:
                    return f"{self.config.where(dotted)}: {problem[0]}", problem[1]
        return None

    def _why_unserved(self, kind: str, name: str) -> tuple[str, str | None] | None:
        what = kind[:-1]  # "sink", "source"
        factories = self.source_factories if kind == "sources" else self.sink_factories
        info = self.host.infos.get(name)
        if info is not None and info.status == "disabled":
            return None
        if info is None:
            installed = sorted(factories)
            close = difflib.get_close_matches(name, installed, n=1)
            hint = f"; did you mean [{kind}.{close[0]}]?" if close else ""
            failed = [i.name for i in self.host.infos.values() if i.status == "failed"]
            also = f"; failed to load: {', '.join(map(repr, failed))}" if failed else ""
            return (f"no installed plugin provides the {what} {name!r}{hint} (installed {kind}: "
                    f"{', '.join(installed) or 'none'}{also}; `flowtap plugins` lists plugins)", None)
        who = f"plugin {name!r}" + (f" ({info.distribution} {info.version})" if info.distribution else "")
        if info.status == "failed":
            return f"{who} failed to load: {info.error}", name
        if info.unknown_hooks:
            return f"{who} registers no {what} {name!r}: {misspelled(info.unknown_hooks)}", name
        return (f"{who} registers no {what} named {name!r} (it has no flowtap_register_{kind} hook for it; "
                f"{kind}: {', '.join(sorted(factories)) or 'none'})"), name

    # -- running ---------------------------------------------------------------------

    def start(self, started: float | None = None, replay: bool = False) -> Session:
        """Validate the config, begin the first session, start the configured sources.

        :param started: the first session's start time (Unix seconds); default now.
            Replaying a stored session passes the time it was captured.
        :param replay: the first session replays stored flows (:attr:`Session.replay`).
        :raises ConfigError: the config is wrong.
        :raises StartupError: a sink or source could not start (nothing keeps running).
        """
        with self._lock:
            if self._started:
                raise RuntimeError("this capture has already started")
            self.validate()
            self.dispatcher.start()
            self.scheduler.every(WATCH_INTERVAL, self._watch)
            self.scheduler.every(SUMMARY_INTERVAL, self.host.errors.summarize)
            self._started = True
            try:
                session = self.begin(started=started, replay=replay)
                self._start_sources()
            except BaseException:
                self.stop()
                raise
            return session

    def begin(self, name: str | None = None, duration: float | None = None,
              started: float | None = None, replay: bool = False) -> Session:
        """End the current session (if any) and begin a new one; sources keep serving.

        :param name: the session's name; default ``[session] name`` or the start time.
        :param duration: seconds until it ends by itself; default ``[session] duration``.
        :param started: its start time (Unix seconds); default now.
        :param replay: it replays stored flows (:attr:`Session.replay`).
        """
        with self._lock:
            if self.session is not None:
                self.session.end()
            table = self.config.table("session")
            name = name or table["name"] or time.strftime("session %Y-%m-%d %H:%M:%S")
            session = Session(name=name, time_limit=duration if duration is not None else table["duration"],
                              started=time.time() if started is None else started, replay=replay)
            workers = self._build_sinks(self.sink_factories, session)
            self.session, self.workers = session, workers
            session._settle = self._settle_sources
            self.dispatcher.attach(session, workers)
            if session.time_limit:
                self.scheduler.call_later(session.time_limit, lambda: session.end(wait=False))
            return session

    def _limits(self) -> Limits:
        table = self.config.table("dispatch")
        return Limits(table["backlog"], table["backlog_size"], table["call_timeout"], table["close_timeout"])

    def _build_sinks(self, names: Iterable[str], session: Session) -> list[SinkWorker]:
        """Build, open and wrap in a worker each enabled sink of ``names`` (workers start when attached)."""
        built: list[SinkWorker] = []
        limits = self._limits()
        try:
            for name in names:
                entry = self.sink_factories[name]
                if not entry.enabled(self.config):
                    continue
                owner = entry.owner
                sink = self._build(entry, "sink", name)
                worker = SinkWorker(sink, owner, limits, self.scheduler, self.host.errors)
                try:
                    sink.open(session)
                except SinkError as exc:
                    raise StartupError(f"sink {name!r}: {exc}") from None
                except Exception as exc:
                    raise StartupError(f"sink {name!r} (plugin {owner!r}) failed to open: {exc!r}") from exc
                built.append(worker)
        except BaseException:
            for worker in built:
                try:
                    worker.sink.close()
                except Exception:
                    log.exception("%s raised in close", worker.who)
            raise
        return built

    def _build(self, entry: _Factory, kind: str, name: str) -> Any:
        try:
            obj = entry.factory(self.config.table(entry.table))
        except (SinkError, SourceError) as exc:
            raise StartupError(f"{kind} {name!r}: {exc}") from None
        except Exception as exc:
            raise StartupError(
                f"{kind} {name!r} (plugin {entry.owner!r}) could not be built: {exc!r}") from exc
        obj.name = name
        return obj

    def configured_sources(self, capturing: bool = False) -> list[str]:
        """Names of the sources this config runs (``capturing``: only those that emit flows)."""
        return [
            name for name, entry in self.source_factories.items()
            if entry.enabled(self.config) and (entry.captures or not capturing)
        ]

    def _start_sources(self) -> None:
        for name in self.configured_sources():
            entry = self.source_factories[name]
            source = self._build(entry, "source", name)
            try:
                source.start(_Emitter(self, name))
            except SourceError as exc:
                raise StartupError(f"source {name!r}: {exc}") from None
            except Exception as exc:
                raise StartupError(
                    f"source {name!r} (plugin {entry.owner!r}) failed to start: {exc!r}") from exc
            self.sources[name] = source
            self.host.pm.register(source, name=f"source:{name}")

    def emitter(self, source: str = "code") -> _Emitter:
        """An emitter for feeding flows from code, as a source would."""
        return _Emitter(self, source)

    def emit(self, flow: Flow) -> None:
        """Hand a flow to the current session, as a source would."""
        self.dispatcher.emit(flow)

    def sync(self, timeout: float | None = None, only: Collection[str] | None = None) -> bool:
        """Block until every flow the sources finished so far is handled and flushed by every healthy sink
        (``only``: the sinks of these names); False after ``timeout`` seconds (each wait)."""
        return self._settle_sources(timeout) and self.dispatcher.sync(timeout, only)

    def _settle_sources(self, timeout: float | None = SETTLE_TIMEOUT) -> bool:
        """Wait until each source has emitted the flows it finished (see :meth:`Source.sync`)."""
        settled = True
        for name, source in list(self.sources.items()):
            try:
                settled = source.sync(timeout) and settled
            except Exception:
                self.host.report_error(f"source {name!r}", "sync")
        return settled

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current session ends (time limit, ``end()``); False on timeout."""
        session = self.session
        return True if session is None else session.wait(timeout)

    def stop(self) -> None:
        """Stop the sources, end the session (sinks finalized, or abandoned if stuck), stop the dispatcher."""
        with self._lock:
            for name, source in reversed(list(self.sources.items())):
                try:
                    source.stop()
                except Exception:
                    self.host.report_error(f"source {name!r}", "stop")
                self.host.unregister(source)
            self.sources.clear()
            if self.session is not None:
                self.session.end()
            close_timeout = self._limits().close_timeout if self._validated else None
            self.dispatcher.stop(timeout=close_timeout + 1.0 if close_timeout else None)
            self.host.errors.summarize()
            self.scheduler.close()

    # -- health --------------------------------------------------------------------

    def health(self) -> list[SinkHealth]:
        """How each sink of the current (or last) session is doing: written, errors, missed, state."""
        return [worker.snapshot() for worker in self.workers]

    @property
    def clean(self) -> bool:
        """True while no sink or plugin has failed, missed a flow or been detached during the run."""
        return (not self.host.errors.count and not self.dispatcher.dropped
                and all(w.snapshot().clean for w in self.dispatcher.history))

    def _watch(self) -> None:
        """The watchdog: give a sink that lags its thread alone; detach each sink whose call has run past
        ``[dispatch] call_timeout``."""
        workers = list(self.dispatcher.workers)
        for runner in {w.runner for w in workers if w.runner is not None}:
            runner.isolate_lagging()
        for worker in workers:
            timeout = worker.limits.call_timeout
            if timeout and worker.stuck_for() > timeout:
                worker.detach("detached", f"did not return within [dispatch] call_timeout ({timeout:g} s): "
                                          "detached, it gets no more flows; the other sinks go on")
