"""The real service on a real multi-process Dask cluster on 127.0.0.1, real scoring.

``cluster.scheduler = "dask"``: the service watches a folder of small synthetic
ATLAS tiles, every tile is scored on the cluster's workers (by path, or shipped as
bytes with ``send_bytes``), gets exactly one result with a verdict in the ledger,
and ``focuswatch status`` reports the Dask backend and its workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from focuswatch import status, synth
from focuswatch.app import build_service
from focuswatch.config import Config, parse
from focuswatch.ledger import Ledger
from focuswatch.sdnotify import Notifier
from loopback import local_cluster

# The service on a real Dask cluster: seconds per test (make check skips them).
pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")

DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster(2) as c:
        yield c


def dask_cfg(tmp_path: Path, folder: Path, address: str, *, send_bytes: bool) -> Config:
    return parse(
        {
            "state_dir": str(tmp_path / "state"),
            "watch": {
                "path": str(folder),
                "poll_interval_s": 0.05,
                "quiet_s": 0.1,
                "rescan_interval_s": 3600.0,
            },
            "scoring": {"tile_timeout_s": 60.0, "queue_size": 4},
            "cluster": {
                "scheduler": "dask",
                "address": address,
                "connect_timeout_s": 5.0,
                "send_bytes": send_bytes,
            },
        }
    )


def results_by_path(state: Path) -> dict[str, list[str | None]]:
    """Each current tile version's result verdicts (one per result row)."""
    led = Ledger.open(state, readonly=True)
    try:
        rows = led.connection.execute(
            "SELECT v.path, r.verdict FROM versions v LEFT JOIN results r ON r.version_id = v.id "
            "WHERE v.superseded = 0"
        ).fetchall()
    finally:
        led.close()
    out: dict[str, list[str | None]] = {}
    for path, verdict in rows:
        out.setdefault(path, [])
        if verdict is not None:
            out[path].append(verdict)
    return out


@pytest.mark.parametrize("send_bytes", [False, True], ids=["by-path", "send-bytes"])
def test_every_tile_is_scored_once_on_the_cluster_and_status_shows_its_workers(
    send_bytes: bool, cluster: Any, tmp_path: Path
) -> None:
    """Tiles there at start and tiles written while running each get one verdict,
    scored on the Dask workers; status reports backend "dask" and both workers."""
    folder = tmp_path / "wafer"
    before = synth.write_wafer(folder, sections=1, rows=2, cols=2, size=128, seed=1)
    cfg = dask_cfg(tmp_path, folder, cluster.scheduler_address, send_bytes=send_bytes)
    svc = build_service(cfg, builtin_sinks=False, notifier=Notifier(env={}))
    try:
        svc.start()
        after = synth.write_wafer(
            folder, sections=1, rows=2, cols=2, size=128, seed=2, section_start=1
        )
        expected = {str(Path(t.path).absolute()) for t in before + after}
        assert len(expected) == 8
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            svc.turn(0.05)
            if svc.idle() and len(results_by_path(cfg.state_dir)) == len(expected):
                break
        described = svc.executor.describe()
    finally:
        svc.stop(grace_s=2.0)

    results = results_by_path(cfg.state_dir)
    assert set(results) == expected
    assert all(len(verdicts) == 1 for verdicts in results.values()), results
    assert all(v[0] for v in results.values())  # a verdict, not an empty one

    assert described["backend"] == "dask"
    assert described["state"] == "connected"
    workers = described["workers"]
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        live = set(client.scheduler_info(n_workers=-1)["workers"])
    assert len(live) == 2
    assert {w["address"] for w in workers} == live
    assert all(w["alive"] and w["nthreads"] == 1 for w in workers)
    assert sum(w["tiles"] for w in workers) == len(expected)

    report = status.summary(cfg)  # what `focuswatch status` prints, from the ledger
    assert report["executor"]["backend"] == "dask"
    assert report["executor"]["address"] == cluster.scheduler_address
    assert sum(w["tiles"] for w in report["executor"]["workers"]) == len(expected)
    assert sum(report["verdicts"].values()) == len(expected)
    assert f"backend: dask (address={cluster.scheduler_address}" in status.format_text(report)
