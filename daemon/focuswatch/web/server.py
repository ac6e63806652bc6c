"""The console server: uvicorn in a thread beside the service's main loop.

``WebConsole`` is a service sink (``on_verdict``/``tick``/``close``) so the service
holds it like the alert and retake sinks: built with them, closed with them. It binds
its socket itself before uvicorn runs, so a port already in use is one log line
(``web_unavailable``) and the service goes on without the page, never a traceback.
The server reads the ledger through its own read-only connection (``Console``) and
does nothing in the main loop: ``on_verdict`` and ``tick`` return at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
import uvicorn

from focuswatch.config import WebConfig
from focuswatch.errors import StateError
from focuswatch.verdict import VerdictRecord
from focuswatch.web.app import build_app, compile_templates
from focuswatch.web.data import Console
from focuswatch.web.hosts import allowed_hosts

__all__ = ["WebConsole", "bind"]

log = structlog.get_logger("focuswatch.web")

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (OSError when the address is taken or not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class WebConsole:
    """The web page, ``/metrics`` and ``/healthz``: served from ``start`` until ``close``."""

    def __init__(
        self,
        wcfg: WebConfig,
        state_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._wcfg = wcfg
        self._state_dir = state_dir
        self._clock = clock
        self.url: str | None = None
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._console: Console | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Bind the port and serve in a thread; a port in use is one log line, no more."""
        wcfg = self._wcfg
        try:
            sock = bind(wcfg.host, wcfg.port)
        except OSError as exc:
            why = "the port is already in use" if exc.errno == 98 else (exc.strerror or str(exc))
            log.warning(
                "web_unavailable",
                host=wcfg.host,
                port=wcfg.port,
                reason=why,
                consequence="the service runs on without its web page (set web.port)",
            )
            return
        self._sock = sock  # from here on, close() releases it whatever fails next
        try:
            self._console = Console(self._state_dir, clock=self._clock)
        except StateError as exc:
            log.warning("web_unavailable", reason=str(exc))
            return
        app = build_app(
            self._console, token=wcfg.token, clock=self._clock, hosts=allowed_hosts(wcfg)
        )
        config = uvicorn.Config(
            app,
            log_config=None,  # the service configured logging; uvicorn must not redo it
            access_log=False,
            log_level="warning",
            lifespan="off",
            ws="none",  # no websockets: their import alone costs ~0.3 s of CPU at start
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self.port = int(sock.getsockname()[1])
        shown = f"[{wcfg.host}]" if ":" in wcfg.host else wcfg.host
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(target=self._run, name="focuswatch-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        log.info("web_started", url=self.url, changes="on" if wcfg.token else "off (no web.token)")

    def _run(self) -> None:
        server, sock = self._server, self._sock
        if server is None or sock is None:
            return
        try:
            compile_templates()  # before the first page (start() waits): not in a poll
            asyncio.run(server.serve(sockets=[sock]))
        except Exception as exc:  # the page is a nicety: never take the service down
            log.error("web_failed", error=f"{type(exc).__name__}: {exc}")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the sink protocol: nothing to do in the main loop ----------------------------

    def on_verdict(self, record: VerdictRecord) -> None:
        return None

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("web_stop_slow", waited_s=_STOP_TIMEOUT_S)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self._console is not None:
            self._console.close()
            self._console = None
