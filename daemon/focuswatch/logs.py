"""Logging, configured once at start: JSON lines for journald, a readable console on a TTY.

Modules log with ``structlog.get_logger()`` and bind context (``tile=``,
``section=``, ``row=``, ``col=``); tests assert on captured events with
``structlog.testing.capture_logs``, never on formatted strings.

Libraries that log through the standard ``logging`` module (watchdog, apprise, Dask's
``distributed``) reach the same output as events ``library_log`` with the library's
logger name and message, so a JSON log holds only JSON lines.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

__all__ = ["configure"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a terminal).
    Logs go to stderr so that command output on stdout stays machine-readable.
    """
    out = stream if stream is not None else sys.stderr
    # tifffile reports damaged files on the stdlib logger; focuswatch records its own
    # reason for every unreadable tile, so those lines would only be noise.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    _route_stdlib(_LEVELS[level])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


class _ToStructlog(logging.Handler):
    """Hands standard-library log records to structlog (one output, one format)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not lose the line
            message = str(record.msg)
        fields = {"library": record.name, "message": message}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = repr(record.exc_info[1])
        structlog.get_logger("focuswatch.library").log(record.levelno, "library_log", **fields)


def _route_stdlib(level: int) -> None:
    """One handler on the root logger; libraries' own chatter only from WARNING up."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    # At the handler too: libraries that set their own loggers' level (distributed logs
    # every client connection at INFO) would otherwise reach it below WARNING.
    root.addHandler(_ToStructlog(max(level, logging.WARNING)))
    root.setLevel(max(level, logging.WARNING))
