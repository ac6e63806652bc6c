"""Small file-system steps that durability rests on."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Make a rename (or a new file) in ``folder`` survive a crash: fsync the folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(f: BinaryIO, data: bytes) -> None:
    f.write(data)


def atomic_write(
    path: Path, data: bytes, *, write: Callable[[BinaryIO, bytes], None] = _write_all
) -> None:
    """Replace ``path`` with ``data`` all at once, or leave it as it was.

    ``write`` puts the bytes into the temporary file; tests pass one that fails the way
    a full disk does.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600 whatever the umask; the retake list is for the
        # operators' group too (the unit's UMask=0027 gives 0640), as is a calibration.
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself, durable


def _current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
