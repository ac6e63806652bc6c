"""The systemd notify protocol: one datagram per message to ``$NOTIFY_SOCKET``.

``READY=1`` after the start-up scan, ``WATCHDOG=1`` from the main loop (when the unit
sets ``WatchdogSec=``), ``STOPPING=1`` on shutdown and ``STATUS=...`` for
``systemctl status``. Without ``NOTIFY_SOCKET`` (not under systemd) every call is a
no-op that returns False; a send failure is never fatal to the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends sd_notify messages; ``env`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # '@name' is an abstract-namespace socket (leading NUL byte).
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog period; without WatchdogSec, once every 10 s is plenty.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 10.0
        self._clock = clock
        self._last_watchdog: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one message; True when it was delivered."""
        if not self.address:
            return False
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(payload)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, rate-limited to half the watchdog period; True when sent."""
        now = self._clock()
        if self._last_watchdog is not None and now - self._last_watchdog < self.watchdog_interval_s:
            return False
        self._last_watchdog = now
        return self.send("WATCHDOG=1")
