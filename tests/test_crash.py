"""The real service as a subprocess, killed with SIGKILL three times on a stream of tiles.

After each kill it is restarted; tiles keep arriving, some while it is down. In the
end every tile must have exactly one current version, the file as it is on disk, with
its result delivered, nothing may be left waiting, and a SIGTERM must stop it with
exit status 0.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from focuswatch.ledger import DB_NAME
from servicekit import run_service

pytestmark = pytest.mark.slow

SECTIONS = 3
PER_SECTION = 12
CONFIG = """\
[watch]
observer = "inotify"
quiet_s = 0.1
poll_interval_s = 0.1
rescan_interval_s = 2.0
incomplete_timeout_s = 60.0

[scoring]
workers = 1
patch_size = 64
tile_timeout_s = 60.0
queue_size = 4

[alerts]
section_summary = false
"""


def write_tile(root: Path, section: int, index: int, rng: np.random.Generator) -> Path:
    folder = root / f"S_{section:03d}_1752450056"
    folder.mkdir(parents=True, exist_ok=True)
    r, c = divmod(index, 4)
    path = folder / f"Tile_r{r + 1}-c{c + 1}_S_{section:03d}_1752450056.tif"
    image = rng.integers(0, 65535, (96, 96), dtype=np.uint16)
    if index % 3 == 0:  # written as *.tmp and renamed, as some acquisition software does
        tmp = path.with_name(path.name + ".tmp")
        tifffile.imwrite(tmp, image)
        tmp.rename(path)
    else:
        tifffile.imwrite(path, image)
    return path


def _query(state: Path, sql: str) -> list[tuple[Any, ...]]:
    db = state / DB_NAME
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # created but not migrated yet
        return []


def result_count(state: Path) -> int:
    """Results of any version (for 'some progress was made')."""
    rows = _query(state, "SELECT count(*) FROM results")
    return int(rows[0][0]) if rows else 0


def scored_current_paths(state: Path) -> set[str]:
    """Paths whose current (non-superseded) version has its result."""
    rows = _query(
        state,
        "SELECT v.path FROM versions v JOIN results r ON r.version_id = v.id "
        "WHERE v.superseded = 0",
    )
    return {str(r[0]) for r in rows}


def poll(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # polling a condition with a deadline, not synchronising by sleep
    raise AssertionError(f"timed out waiting for {what}")


def start(watch: Path, state: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    return run_service(watch, state, log, config=config)


def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    chooser = random.Random(7)
    watch, state = tmp_path / "watch", tmp_path / "state"
    watch.mkdir()
    config = tmp_path / "focuswatch.toml"
    config.write_text(CONFIG)
    log = tmp_path / "service.log"
    plan = [(s, i) for s in range(SECTIONS) for i in range(PER_SECTION)]
    batches = [plan[i : i + 9] for i in range(0, len(plan), 9)]  # 4 batches
    written: list[Path] = []
    proc = start(watch, state, config, log)
    try:
        for kill_round in range(3):
            before = result_count(state)
            written += [write_tile(watch, s, i, rng) for s, i in batches[kill_round]]
            # Kill at a random point once the service has made some progress on this batch.
            target = before + chooser.randint(1, 6)
            poll(lambda t=target: result_count(state) >= t, timeout=60, what="progress")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            if kill_round == 1:  # tiles written while the service is down
                written += [write_tile(watch, s, i, rng) for s, i in batches[3]]
            proc = start(watch, state, config, log)
        # Every planned tile's current version scored: superseded or partial versions'
        # results do not count, so the SIGTERM cannot come before the last tile is done.
        planned = {str(p) for p in written}
        poll(
            lambda: planned <= scored_current_paths(state),
            timeout=90,
            what=f"a result for the current version of all {len(plan)} tiles (log: {log})",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert len(written) == len(plan)
    with sqlite3.connect(f"{(state / DB_NAME).as_uri()}?mode=ro", uri=True) as conn:
        current = conn.execute(
            "SELECT v.path, v.size, v.mtime_ns, v.state, count(r.id), min(r.delivered), "
            "min(r.score IS NOT NULL) FROM versions v LEFT JOIN results r "
            "ON r.version_id = v.id WHERE v.superseded = 0 GROUP BY v.id"
        ).fetchall()
        scoring_left = conn.execute(
            "SELECT count(*) FROM versions WHERE state IN ('scoring', 'seen', 'ready')"
        ).fetchone()[0]
    paths = [row[0] for row in current]
    # No tile missing, none extra, and exactly one current version per tile.
    assert sorted(paths) == sorted(str(p) for p in written)
    for path, size, mtime_ns, st, results, delivered, has_score in current:
        on_disk = os.stat(path)
        # The current version is the file as it is on disk, not a partial write of it.
        assert (size, mtime_ns) == (on_disk.st_size, on_disk.st_mtime_ns), path
        assert results == 1, path  # scored, not left waiting
        assert (st, has_score) == ("scored", 1), path  # every tile is a valid TIFF
        assert delivered == 1, path  # verdicts reached the sinks (replayed after a kill)
    assert scoring_left == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    # The SIGTERM was noticed and logged by the main loop (not inside the handler).
    assert '"signal": "SIGTERM"' in text
    assert '"event": "stop_requested"' in text
