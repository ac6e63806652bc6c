"""One service per state folder: an exclusive ``flock`` held for the service's life.

Two services on one ledger each think the other's in-flight tiles were left by a crash
(start-up recovery hands them back to 'ready': scored twice) and both senders deliver
the same alerts. The lock file ``<state>/focuswatch.lock`` holds who has it (pid, host,
since when) so the second one can say so. ``flock`` is released by the kernel when
the holder dies, however it dies (SIGKILL included): no stale lock to clean up. Read-only
commands (``status``, ``retakes``) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from focuswatch.errors import StateError

__all__ = ["LOCK_NAME", "StateLock"]

LOCK_NAME = "focuswatch.lock"


class StateLock:
    """``acquire`` takes the lock (StateError naming the holder if it is taken)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StateError(f"cannot open lock file {self.path}: {exc.strerror or exc}") from None
        if not _lock_within(fd, ACQUIRE_S):
            holder = _read(fd)
            os.close(fd)
            raise StateError(
                f"state folder {self.path.parent} is in use by another focuswatch service "
                f"({holder}); one service per state folder: stop it, or give this one "
                "another --state"
            ) from None
        # Who holds it, for the next one to report; best effort (a full disk must not
        # keep the service from starting: the lock is the flock, not the text).
        with contextlib.suppress(OSError):
            text = json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            ).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        self._fd = fd

    def holder(self) -> str | None:
        """Who holds the lock now (None: nobody): for read-only commands, takes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def keep(self) -> str | None:
        """Take the lock again if its file is gone (the state folder was deleted).

        The kernel lock stays on the deleted file, where no second service looks; a
        new lock file at the same path keeps the state folder taken. Returns why that
        failed, or None.
        """
        if self._fd is None:
            return None
        mine = os.fstat(self._fd)
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return None
        except FileNotFoundError:
            pass
        except OSError as exc:
            return str(exc)
        old, self._fd = self._fd, None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.acquire()
        except (OSError, StateError) as exc:
            self._fd = old  # hold on to what we have
            return str(exc)
        os.close(old)
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock


#: How long ``acquire`` tries: ``holder()`` (a ``status`` beside a starting service) holds
#: a shared lock for an instant, which must not turn a start away.
ACQUIRE_S = 2.0


def _lock_within(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)  # a bounded retry of a non-blocking lock
        else:
            return True


def _read(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
