"""Every hook flowtap calls, grouped by the phase of a run in which it fires.

A plugin implements any of these with ``@flowtap.hookimpl`` on a module-level
function or a method; it may omit trailing arguments it does not need.
Sources and sinks are plain objects (see :mod:`flowtap.api`) registered
through the ``flowtap_register_*`` hooks. A source, once started, is
registered as a plugin too. A sink may implement the session and cookie
hooks below as methods: they are called on the thread that makes the sink's
calls, in order with its flows, not with the plugins' implementations.

Each implementation is called on its own: one that raises is logged with its
plugin's name and traceback, and the others still run.

Hook wrappers run as pluggy documents them, around the other implementations,
in pluggy's order (tryfirst/trylast; the first to run is the outermost):
``@flowtap.hookimpl(wrapper=True)`` (``result = yield``, then return the result
or a replacement) and ``@flowtap.hookimpl(hookwrapper=True)`` (``outcome =
yield``, ``outcome.get_result()``, ``outcome.force_result(...)``). Isolation
decides what they see: an implementation that raised has been reported and
counts as having returned nothing, so wrappers get the results of the others,
never its exception; a wrapper that raises, or makes the results something
other than a list, is reported and changes nothing. Only an exception that ends
the call reaches the wrappers (a :class:`flowtap.ConfigError` from
:func:`flowtap_config_validate`, KeyboardInterrupt), and they may catch it.
The historic hooks (configuration options, registration) cannot be wrapped:
pluggy refuses such a plugin when it is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from flowtap.config import Config
    from flowtap.cookies import Cookie
    from flowtap.model import Flow
    from flowtap.session import Session

hookspec = pluggy.HookspecMarker("flowtap")

# -------------------------------------------------------------------------
# Configuration: each plugin declares and validates its own table.
# -------------------------------------------------------------------------


@hookspec(historic=True)
def flowtap_config_options(declare: Callable[..., None]) -> None:
    """Declare the options of your config table(s).

    Called once when the plugin is registered, before the config is validated.

    :param declare: ``declare(table, *options)``; ``table`` is a dotted name
        such as ``"sinks.har"`` and each option a :class:`flowtap.Option`.
        Keys the file sets that no plugin declared are reported as errors.
    """


@hookspec
def flowtap_config_validate(config: Config) -> None:
    """Check rules that span several keys of your table(s).

    Called after every option passed its own type and value checks, before
    any source or sink is built.

    :param config: the validated :class:`flowtap.Config`.
    :raises flowtap.ConfigError: naming the table and key, and what was expected.
    """


# -------------------------------------------------------------------------
# Registration: what a plugin contributes to a run.
# -------------------------------------------------------------------------


@hookspec(historic=True)
def flowtap_register_sources(register: Callable[..., None]) -> None:
    """Register capture sources.

    Called once when the plugin is registered.

    :param register: ``register(name, factory, default=False, table=None, captures=True)``.
        ``name`` names the source, whose config table is ``[sources.NAME]``
        (or ``table``); the source runs when that table is in the config (or,
        with ``default=True``, unless the table sets ``enabled = false``).
        ``factory(options)`` gets the table's validated values and returns a
        :class:`flowtap.Source`. ``captures=False``: it emits no flows but runs
        beside them for the run's life (the web UI); ``flowtap run`` does not
        count it as a source to capture from.
    """


@hookspec(historic=True)
def flowtap_register_sinks(register: Callable[..., None]) -> None:
    """Register sinks: where kept flows go.

    Called once when the plugin is registered.

    :param register: ``register(name, factory, default=False, table=None)``.
        ``name`` names the sink, whose config table is ``[sinks.NAME]`` (or
        ``table``); the sink is built for each session when that table is in
        the config (or, with ``default=True``, unless the table sets
        ``enabled = false``). ``factory(options)`` gets the table's
        validated values and returns a :class:`flowtap.Sink`.
    """


@hookspec(historic=True)
def flowtap_register_commands(register: Callable[..., None]) -> None:
    """Add subcommands to the ``flowtap`` command line.

    Called when the command line starts, before arguments are parsed, so
    keep module imports light: import heavy libraries inside ``run``.

    :param register: ``register(name, help, setup, run)``: ``setup(parser)``
        adds arguments to an :class:`argparse.ArgumentParser`;
        ``run(args)`` performs the command and returns its exit code.
    """


# -------------------------------------------------------------------------
# Session lifecycle. These run on the dispatcher thread, in order with the
# flows: a sink sees every flow recorded before a clear before the clear.
# -------------------------------------------------------------------------


@hookspec
def flowtap_session_start(session: Session) -> None:
    """A debug session began; sources are about to start.

    :param session: the :class:`flowtap.Session` (name, id, state, counts).
    """


@hookspec
def flowtap_session_pause(session: Session) -> None:
    """The session was paused: sources keep serving, flows are not recorded.

    :param session: the :class:`flowtap.Session`.
    """


@hookspec
def flowtap_session_resume(session: Session) -> None:
    """The session records flows again after a pause.

    :param session: the :class:`flowtap.Session`.
    """


@hookspec
def flowtap_session_clear(session: Session) -> None:
    """Forget what was recorded so far; the session goes on.

    :param session: the :class:`flowtap.Session`, its counts already reset.
    """


@hookspec
def flowtap_session_mark(session: Session, text: str) -> None:
    """A marker was set in the session (``flowtap ctl mark``, ``m`` in the live view).

    :param session: the :class:`flowtap.Session`.
    :param text: the marker's text; it sits between the flows before and after it.
    """


@hookspec
def flowtap_session_end(session: Session) -> None:
    """The session ended: every flow has reached the sinks, which are closed next.

    :param session: the :class:`flowtap.Session`, in state ``ended``.
    """


# -------------------------------------------------------------------------
# Filtering: which flows the session records.
# -------------------------------------------------------------------------


@hookspec
def flowtap_filter(flow: Flow) -> bool | None:
    """Say whether to record a flow.

    Called for every flow that arrives while the session is running.

    :param flow: the :class:`flowtap.Flow`.
    :return: False to drop the flow; None (or True) to abstain. A flow is
        recorded only when no implementation returns False.
    """


# -------------------------------------------------------------------------
# Cookies.
# -------------------------------------------------------------------------


@hookspec
def flowtap_cookies_seen(cookies: list[Cookie], flow: Flow | None, source: str) -> None:
    """Cookies were seen, whether or not the session is paused.

    Called with the cookies a flow's headers carry (the request's ``Cookie``
    pairs, then the response's ``Set-Cookie``) and with cookie events a
    source reports directly (a browser extension's cookie store changes, with
    ``flow`` None).

    :param cookies: list of :class:`flowtap.Cookie`; one whose ``expires`` is
        in the past is a deletion.
    :param flow: the :class:`flowtap.Flow` they came from, or None.
    :param source: the name of the source that saw them.
    """
