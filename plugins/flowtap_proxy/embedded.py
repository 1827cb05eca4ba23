"""mitmproxy embedded: a ``Master`` on a thread and event loop of its own, in the proxy's process.

The master carries only the addons capture needs (not mitmdump's ~35), plus
flowtap's one addon, and an addon manager that finds each event's hooks
once. mitmproxy is imported when the proxy starts. The proxy source runs
this in a process of its own (:mod:`flowtap_proxy.host`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flowtap
from flowtap.memory import unmap_large_buffers
from flowtap_proxy import ca

#: mitmproxy keeps its master in a module-level global: one proxy per process.
_running = threading.Lock()
_START_TIMEOUT = 30


class EmbeddedProxy(flowtap.Source):
    """Runs mitmproxy (regular, upstream or reverse mode) in this process and emits every finished flow."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.host, self.port = options["listen"]
        self.mode: str = options["mode"]
        self.confdir = ca.ca_dir()
        self._thread: threading.Thread | None = None
        self._master: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._log_handler: logging.Handler | None = None
        self._log_level = logging.NOTSET
        self._owns_process_slot = False

    # -- flowtap.Source ------------------------------------------------------------

    def start(self, emitter: flowtap.Emitter) -> None:
        """Start mitmproxy; return once it listens (``self.port`` is then the bound port)."""
        if not _running.acquire(blocking=False):
            raise flowtap.SourceError("another proxy source is already running in this process")
        self._owns_process_slot = True
        unmap_large_buffers()  # bodies freed after the sinks are done with them leave RSS
        try:
            try:
                ca.ensure_ca(self.confdir)
            except ca.CAError as exc:
                raise flowtap.SourceError(f"flowtap's CA: {exc}") from None
            self._forward_logs(emitter.log)
            self._thread = threading.Thread(target=self._run, args=(emitter,), name="flowtap-proxy",
                                            daemon=True)
            self._thread.start()
            if not self._ready.wait(_START_TIMEOUT):
                self._error = f"mitmproxy did not start within {_START_TIMEOUT}s"
            if self._error:
                self.stop()
                raise flowtap.SourceError(self._error)
        except BaseException:
            self._release()
            raise

    def stop(self) -> None:
        """Stop listening, drop open connections, and wait for the proxy thread to end."""
        master, loop, thread = self._master, self._loop, self._thread
        if master is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(master.should_exit.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        self._release()

    # -- the proxy thread -------------------------------------------------------------

    def _run(self, emitter: flowtap.Emitter) -> None:
        try:
            asyncio.run(self._main(emitter))
        except flowtap.SourceError as exc:
            self._error = str(exc)
        except Exception as exc:  # a mitmproxy failure: report it, never die silently
            if not self._ready.is_set():
                self._error = f"mitmproxy failed to start: {exc!r}"
            else:
                emitter.log.exception("the proxy stopped unexpectedly")
        finally:
            self._ready.set()

    async def _main(self, emitter: flowtap.Emitter) -> None:
        from mitmproxy import exceptions, master, options
        from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig, upstream_auth
        from mitmproxy.utils import asyncio_utils

        from flowtap_proxy.addon import FlowtapAddon
        from flowtap_proxy.addon_manager import CachingAddonManager

        opts = options.Options(confdir=str(self.confdir))
        m = master.Master(opts)
        if CachingAddonManager.fits():  # else mitmproxy's own: slower, but a newer mitmproxy still runs
            m.addons = CachingAddonManager(m)  # before any addon is added
        m._legacy_log_events.uninstall()  # deprecated add_log events: a cost on every log record
        m.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            upstream_auth.UpstreamAuth(),
            disable_h2c.DisableH2C(),
            FlowtapAddon(emitter.emit, self.name or "proxy", self.options["max_body_size"],
                         self.options["upstream_auth"] or None),
        )
        try:
            opts.update(**self._mitmproxy_options())
        except exceptions.OptionsError as exc:
            raise flowtap.SourceError(f"[sources.proxy]: {exc}") from None

        with (
            asyncio_utils.install_exception_handler(m._asyncio_exception_handler),
            asyncio_utils.set_eager_task_factory(),
        ):
            ps = m.addons.get("proxyserver")
            # mitmproxy logs why a server did not start, with a hint for its own command line
            # ("--mode regular@8082"); flowtap says it in its own terms below instead.
            with _held_back("mitmproxy.addons.proxyserver") as held:
                await ps.setup_servers()
            failed = [s.last_exception for s in ps.servers if s.last_exception]
            if failed or not ps.listen_addrs():
                raise flowtap.SourceError(self._listen_error(failed[0] if failed else None))
            for record in held:
                logging.getLogger(record.name).handle(record)
            await m.running()
            self.port = ps.listen_addrs()[0][1]
            self._master, self._loop = m, asyncio.get_running_loop()
            self._ready.set()
            try:
                await m.should_exit.wait()
            finally:
                await ps.servers.update([])
                await m.done()

    def _mitmproxy_options(self) -> dict[str, Any]:
        o = self.options
        ignore, allow = list(o["ignore_hosts"]), list(o["allow_hosts"])
        if not o["https"]:
            ignore, allow = [".*"], []
        return {
            "listen_host": self.host,
            "listen_port": self.port,
            "mode": [self.mode],
            "ignore_hosts": ignore,
            "allow_hosts": allow,
            "ssl_insecure": o["ssl_insecure"],
            "upstream_auth": o["upstream_auth"] or None,
            "ssl_verify_upstream_trusted_ca": self._upstream_trust(),
        }

    def _upstream_trust(self) -> str | None:
        """The CA file mitmproxy verifies upstream servers with: None for its default (certifi's
        public CAs); with ``upstream_ca``, a bundle of those and the given CAs (mitmproxy's option
        replaces the default list; upstream_ca adds to it)."""
        extra = self.options["upstream_ca"]
        if not extra:
            return None
        import certifi

        bundle = self.confdir / "upstream-trust.pem"
        data = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + Path(extra).read_bytes()
        tmp = bundle.with_name(f".{bundle.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, bundle)  # runs sharing the data directory each see a whole file
        return str(bundle)

    def _listen_error(self, exc: BaseException | None) -> str:
        where = f"{self.host or '*'}:{self.port}"
        code = getattr(exc, "errno", None)
        # mitmproxy's message (its strerror) carries a hint for its own command line: not ours.
        exc = exc.__cause__ if isinstance(exc, OSError) and isinstance(exc.__cause__, OSError) else exc
        if code == errno.EADDRINUSE:
            return f"cannot listen on {where}: the port is in use; set [sources.proxy] listen to another port"
        if code == errno.EACCES:
            return f"cannot listen on {where}: permission denied; use a port above 1023"
        if code == errno.EADDRNOTAVAIL:
            return f"cannot listen on {where}: no such address on this machine"
        return f"cannot listen on {where}: {getattr(exc, 'strerror', None) or exc or 'unknown error'}"

    # -- plumbing -----------------------------------------------------------------------

    def _forward_logs(self, log: logging.Logger) -> None:
        """Route mitmproxy's log records to flowtap's logger for this source.

        Per-connection warnings (a client that does not trust the CA, an
        upstream certificate that does not verify) become INFO: each is also
        recorded as a flow with its error. Errors stay errors.
        """
        handler = _Forward(log)
        mitm = logging.getLogger("mitmproxy")
        self._log_level = mitm.level
        mitm.setLevel(logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
        mitm.addHandler(handler)
        mitm.propagate = False
        self._log_handler = handler

    def _release(self) -> None:
        if self._log_handler is not None:
            mitm = logging.getLogger("mitmproxy")
            mitm.removeHandler(self._log_handler)
            mitm.setLevel(self._log_level)
            mitm.propagate = True
            self._log_handler = None
        self._thread = None
        self._master = self._loop = None
        if self._owns_process_slot:
            self._owns_process_slot = False
            _running.release()


@contextlib.contextmanager
def _held_back(name: str) -> Iterator[list[logging.LogRecord]]:
    """Hold back the records logger ``name`` emits while the block runs; yields them."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger = logging.getLogger(name)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


class _Forward(logging.Handler):
    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else min(record.levelno, logging.INFO)
        if self.target.isEnabledFor(level):
            self.target.log(level, "mitmproxy: %s", record.getMessage(), exc_info=record.exc_info)
