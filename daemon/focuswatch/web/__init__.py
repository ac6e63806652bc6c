"""The operator console: a live web page served by the daemon, ``/metrics`` and ``/healthz``.

- ``data``: what the pages show, from the ledger's typed queries (``focuswatch.readmodel``),
  each kept until the ledger changes; the two writes (dismiss, reopen) are ``retakes``'.
- ``app``: the Starlette routes and the security checks (token, same origin, CSRF).
- ``svg``: layout of the wafer map, focus map and score history.
- ``metrics``: the Prometheus collector, read from the ledger at scrape time.
- ``server``: ``WebConsole``, uvicorn in a thread, held by the service as a sink.
"""

from __future__ import annotations

from focuswatch.web.app import build_app
from focuswatch.web.data import Console
from focuswatch.web.server import WebConsole

__all__ = ["Console", "WebConsole", "build_app"]
