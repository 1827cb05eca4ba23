"""Starting the UI's server: for ``flowtap web``, and as the ``[web]`` source beside a capture."""

from __future__ import annotations

import webbrowser
from collections.abc import Iterable
from typing import Any

from flowtap.api import Emitter, Source, SourceError
from flowtap.config import Config
from flowtap_web.server import WebServer, is_loopback


def make_server(options: dict[str, Any], config: Config, disable: Iterable[str] = ()) -> WebServer:
    """The server ``[web]`` (``options``) describes, over the store of ``config``."""
    from flowtap.store.commands import store_location

    return WebServer(store_location(config), config, options["host"], options["port"],
                     options["allowed_hosts"], disable)


def exposure(host: str) -> str | None:
    """The warning for a UI that other machines can reach, or None on loopback."""
    if is_loopback(host):
        return None
    return (f"warning: the web UI listens on {host or 'every address'}, not only on loopback: other machines "
            "can reach it (the token in its URL still guards it; [web] host = \"127.0.0.1\" keeps it local)")


def start(server: WebServer, open_browser: bool) -> str:
    """Start ``server``; its URL. Opens it in the default browser if asked.

    :raises OSError: the address cannot be listened on.
    """
    url = server.start()
    if open_browser:
        webbrowser.open(url)
    return url


class WebSource(Source):
    """``[web]`` in a run: the UI served beside the capture for as long as the run lasts.

    A source that emits nothing: sources live as long as the run (sinks live per session),
    and their :meth:`describe` lines are where the run says where to go.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.server: WebServer | None = None

    def start(self, emitter: Emitter) -> None:
        """Serve the store of the run's config (``emitter.config``) until :meth:`stop`."""
        self.server = make_server(self.options, emitter.config)
        try:
            start(self.server, self.options["open_browser"])
        except OSError as exc:
            where = f"{self.options['host']}:{self.options['port']}"
            raise SourceError(f"the web UI cannot listen on {where}: {exc.strerror or exc} "
                              "([web] port chooses another; 0: any free port)") from None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def describe(self) -> list[str]:
        warning = exposure(self.options["host"])
        url = self.server.url if self.server is not None else "not started"
        return [f"web UI: {url}", *([warning] if warning else [])]
