"""The real service as a subprocess, killed with SIGKILL three times on a stream of tiles.

After each kill it is restarted; tiles keep arriving, some while it is down. In the
end every tile must have exactly one current version with exactly one result, and a
SIGTERM must stop it with exit status 0.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from focuswatch.ledger import DB_NAME

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


def result_count(state: Path) -> int:
    db = state / DB_NAME
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5.0) as conn:
            return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])
    except sqlite3.OperationalError:  # created but not migrated yet
        return 0


def poll(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)  # polling a condition with a deadline, not synchronising by sleep
    raise AssertionError(f"timed out waiting for {what}")


def start(watch: Path, state: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "focuswatch",
                "run",
                "--watch",
                str(watch),
                "--state",
                str(state),
                "--config",
                str(config),
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


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
        poll(
            lambda: result_count(state) >= len(plan),
            timeout=90,
            what=f"{len(plan)} results (log: {log})",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert len(written) == len(plan)
    with sqlite3.connect(f"{(state / DB_NAME).as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT v.path, v.state, count(r.id) FROM versions v "
            "LEFT JOIN results r ON r.version_id = v.id WHERE v.superseded = 0 GROUP BY v.id"
        ).fetchall()
        per_version = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM results GROUP BY version_id)"
        ).fetchone()[0]
        scoring_left = conn.execute(
            "SELECT count(*) FROM versions WHERE state = 'scoring'"
        ).fetchone()[0]
    by_path = {p: (st, n) for p, st, n in rows}
    assert sorted(by_path) == sorted(str(p) for p in written)
    assert all(n == 1 for _, n in by_path.values()), by_path
    assert all(st in ("scored", "failed") for st, _ in by_path.values())
    assert per_version == 1
    assert scoring_left == 0
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
