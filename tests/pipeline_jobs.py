"""Top-level scoring functions the pipeline tests inject into worker processes.

They are real code run in real worker processes (picklable by reference), standing in
for ``scoring.score_path`` so a test can make one tile crash or hang its worker:
the tile's path says what to do.

- ``CRASH``: the worker kills itself with SIGKILL; ``SEGV``: SIGSEGV; ``EXIT``: os._exit(3)
- ``HANG``: never returns (the executor's timeout must kill it)
- ``ONCE``: crashes the first time only (a marker file next to the tile remembers)
- ``BAD``: raises TileError (a bad tile, not a worker failure)
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from focuswatch.errors import TileError
from focuswatch.scoring import ScoreSettings, TileScore


def fake_score(path: str, settings: ScoreSettings) -> TileScore:
    name = os.path.basename(path)
    if "ONCE" in name:
        marker = Path(path + ".crashed")
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
    if "CRASH" in name:
        os.kill(os.getpid(), signal.SIGKILL)
    if "SEGV" in name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "EXIT" in name:
        os._exit(3)
    if "HANG" in name:
        time.sleep(3600)
    if "BAD" in name:
        raise TileError(path, "not a TIFF file")
    size = os.path.getsize(path)
    return TileScore(
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
