"""The session store: every debug session kept in an embedded SQLite database.

The store sink (:mod:`flowtap.store.sink`) writes it while a capture runs;
:func:`open_store` reads it afterwards::

    with flowtap.open_store() as store:
        for session in store.sessions():            # newest first
            print(session.name, session.flows)
        for flow in store.flows("~d api.example.com & ~c 500", session="last"):
            print(flow.request.url)

While a capture runs, ``session.mark(text)`` adds a marker that the store keeps.

The store lives in the core, not under ``plugins/`` with the other sinks: it is the
data the core's own commands (``sessions``, ``search``, ``show``, ``export``) and
:func:`flowtap.open_store` read, and the web UI and a PostgreSQL backend will build
on. Its sink is one part of it, fed by the same engine as any plugin's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowtap.store.db import StoreError, default_path
    from flowtap.store.reader import Event, FlowRow, SessionInfo, Store, open_store
    from flowtap.store.sink import StoreSink

# Spelled out, not computed from _WHERE, so that linters and type checkers see the re-exports.
__all__ = [
    "Event", "FlowRow", "SessionInfo", "Store", "StoreError", "StoreSink", "default_path", "open_store",
]

# Imported on first use, so that the command line stays quick to start.
_WHERE = {
    "StoreError": "db", "default_path": "db",
    "Event": "reader", "FlowRow": "reader", "SessionInfo": "reader", "Store": "reader",
    "open_store": "reader",
    "StoreSink": "sink",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"flowtap.store.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'flowtap.store' has no attribute {name!r}")
