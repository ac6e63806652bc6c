"""GPU serving: the lane reads and copies one tile while another is scored.

The choreography is checked on a recording stand-in for CuPy (``fake_cupy``: no GPU
runs here); the tests marked ``gpu`` run the same lane on real CuPy.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from fake_cupy import HAS_GPU, FakeCupy, fake_backend
from focuswatch import scoring
from focuswatch.errors import BackendError, TileError
from focuswatch.gpu import GpuLane, require_gpu, score_path_gpu
from focuswatch.scoring import ScoreSettings, TileScore, score_path

needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and an NVIDIA GPU")

CPU = ScoreSettings(backend="cpu", patch_size=256)


def write_tiles(folder: Path, shapes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate(shapes):
        path = folder / f"Tile_r1-c{i + 1}_S_001.tif"
        tifffile.imwrite(path, rng.integers(0, 65535, shape, dtype=np.uint16))
        paths.append(path)
    return paths


class HostScore:
    """The lane's scoring step on the stand-in: checks the 'device' holds the file's
    pixels, logs the call and scores on the CPU; ``during`` runs while it holds the GPU."""

    def __init__(self, cp: FakeCupy, during: Any = None) -> None:
        self.cp = cp
        self.during = during
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, image: Any, *, name: str, settings: ScoreSettings, **kw: Any) -> TileScore:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.cp.note("score", name)
            np.testing.assert_array_equal(np.asarray(image), tifffile.imread(name))
            if self.during is not None:
                self.during(name)
            return scoring.score_array(np.array(image), name=name, settings=settings, **kw)
        finally:
            with self._lock:
                self.active -= 1


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; the no-GPU answer cannot be seen")
def test_without_a_gpu_the_worker_says_it_has_none(tmp_path: Path) -> None:
    (path,) = write_tiles(tmp_path, [(256, 256)])
    with pytest.raises(BackendError, match=r"^this worker has no usable GPU: "):
        require_gpu()
    with pytest.raises(BackendError, match=r"^this worker has no usable GPU: "):
        score_path_gpu(path, ScoreSettings())


def test_each_tile_is_copied_on_a_non_blocking_stream_and_scored_after_its_own_copy(
    tmp_path: Path,
) -> None:
    """Per tile: pinned buffer → copy on the slot's non-blocking stream → event →
    the compute stream waits for that event → scoring sees exactly the file's pixels.
    The pinned block is reused for every tile that fits and grows for one that does not."""
    backend, cp = fake_backend()
    lane = GpuLane(backend, score=HostScore(cp))
    shapes = [(256, 384), (512, 512), (512, 512), (256, 384), (512, 512)]
    paths = write_tiles(tmp_path, shapes)
    for p in paths:
        assert lane.score_path(p, CPU).score == pytest.approx(score_path(p, CPU).score)
    steps = [e for e in cp.log if e[0] != "pinned"]
    assert len(steps) == 4 * len(paths)
    for i, p in enumerate(paths):
        copy, record, wait, score = steps[4 * i : 4 * i + 4]
        assert copy[0] == "copy"
        assert copy[1].non_blocking
        assert record[0] == "record"
        assert record[1] is copy[1]
        assert wait[0] == "wait"
        assert wait[1].null
        assert wait[2] is record[2]
        assert score == ("score", str(p))
    pinned = [e[1] for e in cp.log if e[0] == "pinned"]
    assert pinned == [256 * 384 * 2, 512 * 512 * 2]


@pytest.mark.parametrize(
    ("depth", "overlaps", "wait_s"),
    [
        (2, True, 30.0),  # the default: B reaches the device while A holds the GPU
        (1, False, 0.5),  # gpu_overlap = false: B waits for A (a bounded wait that must pass)
    ],
)
def test_the_next_tile_is_read_and_copied_while_the_current_one_is_scored(
    tmp_path: Path, depth: int, overlaps: bool, wait_s: float
) -> None:
    a, b = write_tiles(tmp_path, [(512, 512), (512, 512)])
    backend, cp = fake_backend()
    a_scoring, b_copied = threading.Event(), threading.Event()
    cp.on_note = lambda e: b_copied.set() if e[0] == "copy" and a_scoring.is_set() else None
    seen: dict[str, bool] = {}

    def during(name: str) -> None:
        if name == str(a):
            a_scoring.set()
            seen["b copied while a scored"] = b_copied.wait(wait_s)

    lane = GpuLane(backend, depth=depth, score=HostScore(cp, during))
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(lane.score_path, a, CPU)
        assert a_scoring.wait(30.0)
        fb = pool.submit(lane.score_path, b, CPU)
        assert fa.result(60).path == str(a)
        assert fb.result(60).path == str(b)
    assert seen == {"b copied while a scored": overlaps}
    assert b_copied.is_set()  # ... and in any case afterwards


def test_two_callers_score_one_at_a_time_and_a_bad_tile_harms_no_other(tmp_path: Path) -> None:
    """Eight tiles (one corrupt) from two threads: scoring never runs twice at once,
    every good tile scores as ``score_path`` does, the corrupt one says why."""
    paths = write_tiles(tmp_path, [(512, 512)] * 4 + [(256, 512)] * 3)
    bad = tmp_path / "Tile_r9-c9_S_001.tif"
    bad.write_bytes(b"not a tiff")
    backend, cp = fake_backend()
    step = HostScore(cp)
    lane = GpuLane(backend, score=step)
    with ThreadPoolExecutor(2) as pool:
        futures = {p: pool.submit(lane.score_path, p, CPU) for p in [*paths[:3], bad, *paths[3:]]}
        with pytest.raises(TileError) as err:
            futures.pop(bad).result(60)
        got = {p: f.result(60).score for p, f in futures.items()}
    assert err.value.reason == "not a TIFF file despite its name"
    assert got == {p: pytest.approx(score_path(p, CPU).score) for p in paths}
    assert step.max_active == 1


def test_a_tile_over_the_memory_limit_is_scored_from_the_file_in_patches(tmp_path: Path) -> None:
    (path,) = write_tiles(tmp_path, [(1024, 1024)])
    backend, cp = fake_backend()
    lane = GpuLane(backend, score=HostScore(cp))
    guarded = ScoreSettings(backend="cpu", patch_size=256, memory_limit_mb=1)
    ts = lane.score_path(path, guarded)
    assert ts.score == pytest.approx(score_path(path, guarded).score)
    assert not [e for e in cp.log if e[0] in ("copy", "score")]  # never sent whole


def test_a_lane_needs_at_least_one_slot() -> None:
    backend, _ = fake_backend()
    with pytest.raises(ValueError, match="depth"):
        GpuLane(backend, depth=0)


@pytest.mark.gpu
@needs_gpu
def test_on_a_gpu_two_callers_score_like_score_path(tmp_path: Path) -> None:
    paths = write_tiles(tmp_path, [(1024, 1024)] * 3 + [(512, 768)] * 2)
    settings = ScoreSettings(backend="gpu", patch_size=512)
    expected = [score_path(p, settings).score for p in paths]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda p: score_path_gpu(p, settings), paths))
    assert [g.score for g in got] == pytest.approx(expected)
    assert all(g.backend == "cupy" for g in got)
