"""bench/pipeline.py --breakdown: a tile's close → verdict time in its parts."""

from __future__ import annotations

import math

import pytest

import pipeline


@pytest.mark.slow
def test_the_breakdown_of_a_tile_through_the_real_service_adds_up_to_its_latency() -> None:
    """A 512² tile through the real service (inotify, a worker process, the ledger):
    every stage was stamped, none took negative time (beyond clock rounding), the worker's
    read and score are the ones it reported, and the parts add up to close → verdict."""
    with pipeline.stamping() as stamps:
        r = pipeline.run_size(512, count=1, latency_n=2, workers=1, mode="fast", stamps=stamps)
    parts = r["parts"]
    assert len(parts) == 2
    for part in parts:
        assert part["worker score"] > 0
        assert part["worker read"] > 0
        assert all(v > -0.005 for v in part.values()), part
        total = sum(v for k, v in part.items() if k != "total")
        assert math.isclose(total, part["total"], abs_tol=1e-6)
    assert max(p["total"] for p in parts) == pytest.approx(r["latency_max_s"])
