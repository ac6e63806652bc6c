"""Noticing tiles: which files count, how the folder is watched, and when a file is complete.

- ``Matcher``: include/exclude patterns on the file name; hidden folders are skipped.
- ``choose_observer``: inotify on local disks, polling on network shares (inotify sees
  nothing that another host writes to an SMB/NFS share), from ``/proc/mounts``.
- ``Watcher``: a real watchdog observer whose handler only puts ``Change``s on a queue
  (watchdog's dispatch thread is shared; nothing slow runs there).
- ``Readiness``: pending paths become ready on close-write, or once size and mtime have
  been stable for ``quiet_s``; still changing after ``incomplete_timeout_s`` is reported
  as incomplete. Pure apart from the injected ``stat`` and clock.
- ``scan``: the recursive walk used at start-up and for reconciliation.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fnmatch
import logging
import os
import queue
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NETWORK_FSTYPES",
    "Change",
    "Matcher",
    "Readiness",
    "Settled",
    "SettledKind",
    "Watcher",
    "choose_observer",
    "fstype_of",
    "scan",
]

# Filesystems where inotify misses writes made by other hosts (or by the FUSE daemon).
NETWORK_FSTYPES = frozenset(
    {
        "cifs",
        "smb3",
        "smbfs",
        "nfs",
        "nfs4",
        "fuse.sshfs",
        "sshfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "virtiofs",
        "ncpfs",
    }
)


@dataclass(frozen=True)
class Change:
    """Something happened at ``path``: a file (maybe closed after writing) or a folder."""

    path: str
    closed: bool = False
    is_dir: bool = False
    #: The kernel's event queue overflowed: events were lost, the folder needs a rescan.
    overflow: bool = False


class Matcher:
    """Which files are tiles: name matches an include pattern and no exclude pattern."""

    def __init__(self, *, include: Iterable[str], exclude: Iterable[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)
        if not self.include:
            raise ValueError("include must name at least one pattern, e.g. '*.tif'")
        # One compiled regex per list: matching runs for every event and every scanned file.
        self._include = re.compile("|".join(fnmatch.translate(p) for p in self.include))
        self._exclude = (
            re.compile("|".join(fnmatch.translate(p) for p in self.exclude))
            if self.exclude
            else None
        )

    def matches(self, path: str | Path) -> bool:
        name = os.path.basename(os.fspath(path))
        if not self._include.match(name):
            return False
        return self._exclude is None or not self._exclude.match(name)

    def skip_dir(self, name: str) -> bool:
        """Hidden folders (``.Trash``, ``.snapshot``) are never descended into."""
        return name.startswith(".")

    def under_hidden_dir(self, path: str, root: str) -> bool:
        rel = os.path.relpath(path, root)
        parts = rel.split(os.sep)[:-1]
        return any(self.skip_dir(p) for p in parts)


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...).
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fstype_of(path: str | Path, *, mounts: str | None = None) -> str | None:
    """The filesystem type of the mount holding ``path`` (longest mount-point prefix)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]


def choose_observer(
    path: str | Path, requested: str = "auto", *, mounts: str | None = None
) -> tuple[str, str]:
    """``(observer, why)``: 'inotify' or 'polling' for ``watch.observer`` = auto/inotify/polling."""
    if requested not in ("auto", "inotify", "polling"):
        raise ValueError(f"observer must be 'auto', 'inotify' or 'polling', not {requested!r}")
    if requested != "auto":
        return requested, "set in the configuration"
    fstype = fstype_of(path, mounts=mounts)
    if fstype is None:
        return "polling", "filesystem type unknown"
    if fstype in NETWORK_FSTYPES or (fstype.startswith("fuse.") and fstype != "fuse.portal"):
        return "polling", f"{fstype} is a network/FUSE filesystem (inotify misses remote writes)"
    return "inotify", f"{fstype} is local"


def scan(root: str | Path, matcher: Matcher) -> Iterator[str]:
    """Every matching file under ``root``; symlinked folders are not followed (no loops)."""

    def onerror(exc: OSError) -> None:  # an unreadable folder is skipped, not fatal
        return None

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not matcher.skip_dir(d))
        for name in sorted(filenames):
            if matcher.matches(name):
                yield os.path.join(dirpath, name)


class _Handler:
    """watchdog handler: turns events into ``Change``s on a queue, nothing else."""

    def __init__(self, out: queue.Queue[Change]) -> None:
        self.out = out

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write", "deleted"):
            return
        if event.is_directory and kind not in ("created", "moved"):
            return  # a folder 'modified' by every file written in it says nothing new
        path = os.fsdecode(event.dest_path if kind == "moved" else event.src_path)
        if not path:
            return
        self.out.put(Change(path, closed=kind == "closed", is_dir=bool(event.is_directory)))


def _make_observer(kind: str, poll_interval_s: float) -> Any:
    """A real watchdog observer of ``kind`` ('inotify' or 'polling')."""
    if kind == "inotify":
        from watchdog.observers.inotify import InotifyObserver

        return InotifyObserver()
    if kind == "polling":
        from watchdog.observers.polling import PollingObserver

        return PollingObserver(timeout=poll_interval_s)
    raise ValueError(f"observer must be 'inotify' or 'polling', not {kind!r}")


_INOTIFY_LOG = logging.getLogger("watchdog.observers.inotify_c")


class _OverflowSignal(logging.Handler):
    """Turns watchdog's 'Inotify queue overflowed' log record into an overflow ``Change``."""

    def __init__(self, root: str, out: queue.Queue[Change]) -> None:
        super().__init__(logging.WARNING)
        self._root = root
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in str(record.msg).lower():
            self._out.put(Change(self._root, is_dir=True, overflow=True))


class Watcher:
    """A running watchdog observer on ``root`` feeding ``Change``s into ``changes``.

    If inotify cannot start (``OSError``: the per-user watch or instance limit,
    ``fs.inotify.max_user_watches``/``max_user_instances``, is reached), ``start``
    falls back to polling; ``kind`` then says 'polling' and ``fallback`` why.
    ``make_observer(kind, poll_interval_s)`` builds the observers (for tests).
    """

    def __init__(
        self,
        root: str | Path,
        changes: queue.Queue[Change],
        *,
        observer: str,
        poll_interval_s: float = 2.0,
        make_observer: Callable[[str, float], Any] = _make_observer,
    ) -> None:
        if observer not in ("inotify", "polling"):
            raise ValueError(f"observer must be 'inotify' or 'polling', not {observer!r}")
        self._root = os.fspath(root)
        self._handler = _Handler(changes)
        self._poll_interval_s = poll_interval_s
        self._make_observer = make_observer
        self.kind = observer
        self.fallback: str | None = None
        self._overflow = _OverflowSignal(self._root, changes)
        self._observer = self._scheduled(observer)

    def _scheduled(self, kind: str) -> Any:
        obs = self._make_observer(kind, self._poll_interval_s)
        obs.schedule(self._handler, self._root, recursive=True)
        return obs

    def start(self) -> None:
        # watchdog says that the kernel dropped events only in a log line; that line is
        # our signal to rescan at once instead of at the next periodic rescan.
        _INOTIFY_LOG.addHandler(self._overflow)
        if _INOTIFY_LOG.getEffectiveLevel() > logging.WARNING:
            _INOTIFY_LOG.setLevel(logging.WARNING)
        try:
            self._observer.start()
        except OSError as exc:
            if self.kind != "inotify":
                raise
            with contextlib.suppress(Exception):  # release what the failed start got
                self._observer.stop()
            self.fallback = (
                f"inotify unavailable ({exc.strerror or exc}; "
                "see fs.inotify.max_user_watches), polling instead"
            )
            self.kind = "polling"
            self._observer = self._scheduled("polling")
            self._observer.start()

    def stop(self, timeout: float = 10.0) -> None:
        _INOTIFY_LOG.removeHandler(self._overflow)
        self._observer.stop()
        self._observer.join(timeout)

    def is_alive(self) -> bool:
        return bool(self._observer.is_alive())


class SettledKind(enum.StrEnum):
    """What became of a pending path."""

    READY = "ready"  # complete: record it and score it
    INCOMPLETE = "incomplete"  # still being written after watch.incomplete_timeout_s
    VANISHED = "vanished"  # gone before it could be read
    ERROR = "error"  # cannot even be looked at (a symlink loop, no permission)


@dataclass(frozen=True)
class Settled:
    """A pending path that needs action."""

    path: str
    kind: SettledKind
    size: int = -1
    mtime_ns: int = -1
    reason: str = ""


@dataclass
class _Pending:
    first_seen: float
    last_change: float
    key: tuple[int, int] | None = None
    closed: bool = False


class Readiness:
    """Decides when a written file is complete. Not thread-safe: the main loop owns it."""

    def __init__(
        self,
        *,
        quiet_s: float,
        incomplete_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[str], os.stat_result] = os.stat,
    ) -> None:
        if quiet_s < 0 or incomplete_timeout_s <= 0:
            raise ValueError("quiet_s must be >= 0 and incomplete_timeout_s > 0")
        self.quiet_s = quiet_s
        self.incomplete_timeout_s = incomplete_timeout_s
        self._clock = clock
        self._stat = stat
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def note(self, path: str, *, closed: bool = False) -> None:
        """A file changed (or was closed after writing): check it on the next ``poll``."""
        entry = self._pending.get(path)
        if entry is None:
            now = self._clock()
            entry = self._pending[path] = _Pending(first_seen=now, last_change=now)
        entry.closed = entry.closed or closed

    def poll(self) -> list[Settled]:
        """Stat every pending file; return those that are ready or need recording."""
        now = self._clock()
        out: list[Settled] = []
        for path in list(self._pending):
            entry = self._pending[path]
            try:
                st = self._stat(path)
            except FileNotFoundError:
                del self._pending[path]
                out.append(
                    Settled(path, SettledKind.VANISHED, reason="file vanished before it was read")
                )
                continue
            except OSError as exc:
                del self._pending[path]
                out.append(Settled(path, SettledKind.ERROR, reason=_os_reason(exc)))
                continue
            key = (st.st_size, st.st_mtime_ns)
            if key != entry.key:
                entry.key = key
                entry.last_change = now
            if entry.closed or now - entry.last_change >= self.quiet_s:
                del self._pending[path]
                out.append(Settled(path, SettledKind.READY, size=key[0], mtime_ns=key[1]))
            elif now - entry.first_seen >= self.incomplete_timeout_s:
                # Reported once per timeout period; a later change still makes it ready.
                entry.first_seen = now
                out.append(
                    Settled(
                        path,
                        SettledKind.INCOMPLETE,
                        size=key[0],
                        mtime_ns=key[1],
                        reason=f"still being written after {self.incomplete_timeout_s:g} s "
                        f"(size {key[0]} bytes)",
                    )
                )
        return out


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop: the path never resolves to a file"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return f"cannot stat: {exc.strerror or exc}"
