"""Top-level scoring functions the pipeline tests inject into worker processes.

They are real code run in real worker processes (picklable by reference), standing in
for ``scoring.score_path`` so a test can make one tile crash or hang its worker:
the tile's path says what to do.

- ``CRASH``: the worker kills itself with SIGKILL; ``SEGV``: SIGSEGV; ``EXIT``: os._exit(3)
- ``HANG``: never returns (the executor's timeout must kill it)
- ``ONCE``: crashes the first time only (a marker file next to the tile remembers)
- ``BAD``: raises TileError (a bad tile, not a worker failure)
- ``NOGPU``: raises BackendError (this worker cannot use the GPU asked for)
- ``BUG``: raises RuntimeError (a bug in scoring)
- ``MARK``: leaves ``<path>.ran`` next to the tile when it starts
- ``STALLFIRST``: like ``MARK``, then hangs the first time only
- ``QUIT``: raises SystemExit (not an Exception: a worker thread must not swallow it)
- ``TRACE``: appends ``start <name>`` / ``end <name>`` to ``ran-in-<pid>`` next to the
  tile, so a test can see which tiles shared a worker process
- ``AFTER``: first waits (at most 20 s) for ``<other>.ran``, where the tile's content
  is the other tile's path: it runs only if the other tile runs at the same time
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from focuswatch import tiles
from focuswatch.choices import DEFAULT_MODE, scorer_revision
from focuswatch.errors import BackendError, TileError
from focuswatch.scoring import ScoreSettings, TileScore


def _wait_for(marker: Path, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def fake_score(path: str, settings: ScoreSettings) -> TileScore:
    name = os.path.basename(path)
    if "TRACE" in name:
        trace = Path(path).parent / f"ran-in-{os.getpid()}"
        with trace.open("a") as f:
            f.write(f"start {name}\n")
        result = _fake_score(path, name)
        with trace.open("a") as f:
            f.write(f"end {name}\n")
        return result
    return _fake_score(path, name)


def _fake_score(path: str, name: str) -> TileScore:
    if "AFTER" in name:
        other = Path(path).read_text()
        if not _wait_for(Path(other + ".ran")):
            raise TileError(path, f"{os.path.basename(other)} never ran meanwhile")
    if "MARK" in name or "STALLFIRST" in name:
        ran = Path(path + ".ran")
        first = not ran.exists()
        ran.write_text("x")
        if first and "STALLFIRST" in name:
            time.sleep(3600)
    if "ONCE" in name:
        marker = Path(path + ".crashed")
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
    if "CRASH" in name:
        os.kill(os.getpid(), signal.SIGKILL)
    if "SEGV" in name:
        # Aimed at this thread, as a real fault is: a process-wide SIGSEGV may land on
        # another thread while this one runs on and reports a score before the core dump.
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    if "EXIT" in name:
        os._exit(3)
    if "HANG" in name:
        time.sleep(3600)
    if "BAD" in name:
        raise TileError(path, "not a TIFF file")
    if "NOGPU" in name:
        raise BackendError("GPU requested but CuPy/an NVIDIA GPU is not available: no device")
    if "QUIT" in name:
        sys.exit(5)
    if "BUG" in name:
        raise RuntimeError("scoring bug")
    size = os.path.getsize(path)
    return TileScore(
        # OLDREL: a worker running a release whose scorer gave other numbers.
        revision=1 if "OLDREL" in name else scorer_revision("mhfd", DEFAULT_MODE),
        path=path,
        score=float(100 + size % 7),
        patch_scores=None,
        content=0.5,
        backend="fake",
        shape=(1, 1),
        dtype="uint8",
        read_ms=0.0,
        score_ms=0.0,
        meta=None,
    )


def read_score(path: str, settings: ScoreSettings) -> TileScore:
    """Reads the tile with the real reader (``tiles.read_tile``); the score is its std."""
    image, meta = tiles.read_tile(path)
    return TileScore(
        revision=scorer_revision("mhfd", DEFAULT_MODE),
        path=path,
        score=float(np.std(image)) + 1.0,
        patch_scores=None,
        content=0.5,
        backend="test-std",
        shape=(int(image.shape[0]), int(image.shape[1])),
        dtype=str(image.dtype),
        read_ms=0.0,
        score_ms=0.0,
        meta=meta,
    )


def read_score_unprivileged(path: str, settings: ScoreSettings) -> TileScore:
    """``read_score`` in a worker that has dropped root (so chmod 000 really denies)."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    return read_score(path, settings)
