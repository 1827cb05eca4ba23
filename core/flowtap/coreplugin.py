"""The core's own config tables and filters, registered like any other plugin.

``[session]`` names the debug session and may limit its duration;
``[dispatch]`` bounds how far each sink may fall behind and how long its calls may take;
``[filters]`` holds the capture filters; ``[plugins]`` disables plugins;
``[store]`` configures the session store, a sink that runs by default.
It also registers the core's commands (``run``, ``plugins``, ``config``,
``sessions``, ``search``, ``show``, ``export``, ``ctl``) through the hook
plugins add theirs with. This plugin is essential: it cannot be disabled.
"""

from __future__ import annotations

from flowtap.config import ConfigError, Option, parse_duration, parse_methods, parse_size
from flowtap.plugins import hookimpl

NAME = "core"


class CorePlugin:
    """Declares ``[session]``, ``[filters]``, ``[plugins]``, ``[store]``; applies the filters; registers
    the store."""

    def __init__(self) -> None:
        self._filters: list = []
        self._config = None

    @hookimpl
    def flowtap_config_options(self, declare):
        declare(
            "session",
            Option("name", str, "", "Name of the debug session; default: the start time."),
            Option("duration", (str, int, float), "",
                   'End the session after this long ("90s", "30m", "2h"); empty: until stopped.',
                   convert=parse_duration),
        )
        declare(
            "filters",
            Option("expression", str, "",
                   "mitmproxy filter expression a flow must match to be recorded, "
                   'e.g. "~d api.example.com & !~t image".'),
            Option("url_contains", str, "", "Record only URLs containing this text (or regex)."),
            Option("url_not_contains", str, "", "Do not record URLs containing this text (or regex)."),
            Option("url_regex", bool, False,
                   "Treat url_contains and url_not_contains as regular expressions."),
            Option("methods", list, [], 'Record only these methods, e.g. ["GET", "POST"]; empty: all.',
                   convert=parse_methods),
            Option("skip_resources", bool, False, "Do not record images, JavaScript and CSS."),
        )
        declare(
            "plugins",
            Option("disable", list, [], "Plugins not to load, by name (as `flowtap plugins` lists them)."),
        )
        declare(
            "dispatch",
            Option("backlog", int, 10000,
                   "Flows one sink may fall behind (each sink is fed on its own) before it misses "
                   "flows; each missed flow is counted and reported. The other sinks are not affected."),
            Option("backlog_size", (str, int), "256mb",
                   "Bytes of bodies one sink may have waiting before it misses flows (as backlog).",
                   convert=parse_size),
            Option("call_timeout", (str, int, float), "30s",
                   "A sink call (write, flush, a hook) still running after this long is reported with where "
                   "it is stuck, and the sink is detached; the others go on. Empty or 0: never.",
                   convert=parse_duration),
            Option("close_timeout", (str, int, float), "5s",
                   "When a session ends, a sink that has not finished its output (its backlog written, "
                   "then closed) this long after is abandoned with a message naming it, so that Ctrl-C "
                   "ends the run promptly; the flows it did not write are counted as missed.",
                   convert=parse_duration),
        )
        declare(
            "store",
            Option("path", str, "",
                   "The session store (an SQLite database) every session is kept in; empty: flowtap.db "
                   "in the user data directory ($FLOWTAP_DATA_DIR if set). `enabled = false` keeps nothing."),
            Option("body_file_threshold", (str, int), "256kb",
                   "Bodies larger than this are kept in files beside the database (in <name>-bodies/), "
                   "not in its rows.",
                   convert=parse_size),
            Option("url", str, "",
                   "A PostgreSQL database to keep sessions in instead (a team's shared store), as a libpq "
                   "URL: "
                   "\"postgresql://user@host/db?sslmode=verify-full\"; the password from PGPASSWORD or "
                   "~/.pgpass. Needs pip install 'flowtap[postgres]'. Flows wait in a local spool until "
                   "the database has them.",
                   convert=_store_url),
            Option("spool_limit", (str, int), "1gb",
                   "With url: bytes of flows that may wait in the local spool while the database is "
                   "unreachable; past it, flows are lost (and counted).",
                   convert=parse_size),
            Option("batch_interval", (str, int, float), "100ms",
                   "Recorded flows are committed together at most this often (\"100ms\", \"1s\"); a crash "
                   "loses at most the last such interval. 0: commit whenever the dispatcher flushes.",
                   convert=parse_duration),
        )

    @hookimpl
    def flowtap_register_commands(self, register):
        # Light modules: each imports what its command needs when it runs.
        from flowtap import corecommands as core
        from flowtap.control import client
        from flowtap.store import commands as store

        register("init", "write a commented flowtap.toml to start from (never overwrites)",
                 core.setup_init, core.cmd_init)
        register("run", "capture with the configured sources until Ctrl-C or the time limit",
                 core.setup_run, core.cmd_run)
        register("plugins", "list plugins: name, version, origin, hooks, status",
                 core.setup_plugins, core.cmd_plugins)
        register("config", "work with the config file", core.setup_config, core.cmd_config)
        register("sessions", "list stored sessions (newest first); show, rename, delete them",
                 store.setup_sessions, store.cmd_sessions)
        register("search", "stored flows matching a filter expression, newest first",
                 store.setup_search, store.cmd_search)
        register("show", "a stored flow in full: request, response, bodies", store.setup_show, store.cmd_show)
        register("export", "a stored session through a sink (HAR, collection, ...) or as curl",
                 store.setup_export, store.cmd_export)
        register("store", "the store itself: sync a PostgreSQL store's spool, copy sessions between stores",
                 store.setup_store, store.cmd_store)
        register("ctl", "control a running capture: status, pause, resume, clear, stop, mark",
                 client.setup_ctl, client.cmd_ctl)
        register("completion", "print a shell completion script: bash, zsh or fish",
                 core.setup_completion, core.cmd_completion)

    @hookimpl
    def flowtap_register_sinks(self, register):
        register("store", self._store, default=True, table="store")

    def _store(self, options):
        if options["url"]:
            from flowtap.store.spool import PostgresSink

            return PostgresSink(options, self._config)
        from flowtap.store.sink import StoreSink

        return StoreSink(options, self._config)

    @hookimpl
    def flowtap_config_validate(self, config):
        from flowtap.filters import FilterError, compile_expression, simple_filter

        self._config = config
        table = config.table("filters")
        self._filters = []
        if table["expression"]:
            try:
                self._filters.append(compile_expression(table["expression"]))
            except FilterError as exc:
                raise ConfigError(f"{config.where('filters', 'expression')}: {exc}") from None
        try:
            simple = simple_filter(
                url_contains=table["url_contains"],
                url_not_contains=table["url_not_contains"],
                url_regex=table["url_regex"],
                methods=table["methods"],
                skip_resources=table["skip_resources"],
            )
        except FilterError as exc:
            key = "url_not_contains" if "url_not_contains" in exc.detail else "url_contains"
            raise ConfigError(f"{config.where('filters', key)}: {exc}") from None
        if simple is not None:
            self._filters.append(simple)

    @hookimpl
    def flowtap_filter(self, flow):
        for keep in self._filters:
            if not keep(flow):
                return False
        return None


def _store_url(value: str) -> str:
    """``[store] url``: empty, or a PostgreSQL URL."""
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ValueError("expected a PostgreSQL URL such as \"postgresql://user@db.example.com/flowtap\" "
                         "(or nothing: the SQLite store at [store] path)")
    return value
