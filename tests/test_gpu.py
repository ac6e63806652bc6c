"""GPU serving: prefetching into pinned memory on a copy stream; clear errors without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from focuswatch.backend import get_backend
from focuswatch.errors import BackendError, TileError
from focuswatch.gpu import Prefetcher, require_gpu, score_paths_gpu
from focuswatch.scoring import ScoreSettings, TileScore, score_path


def _gpu_available() -> bool:
    try:
        get_backend("gpu")
    except BackendError:
        return False
    return True


HAS_GPU = _gpu_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and an NVIDIA GPU")


def write_tiles(folder: Path, shapes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate(shapes):
        path = folder / f"Tile_r1-c{i + 1}_S_001.tif"
        tifffile.imwrite(path, rng.integers(0, 65535, shape, dtype=np.uint16))
        paths.append(path)
    return paths


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; the no-GPU answer cannot be seen")
def test_without_a_gpu_the_worker_says_it_has_none(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"^this worker has no usable GPU: "):
        require_gpu()
    with pytest.raises(BackendError, match=r"^this worker has no usable GPU: "):
        Prefetcher(write_tiles(tmp_path, [(256, 256)]))
    with pytest.raises(BackendError, match=r"^this worker has no usable GPU: "):
        score_paths_gpu([], ScoreSettings())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("overlap", [True, False])
def test_prefetched_tiles_equal_the_files_even_when_shapes_change(
    tmp_path: Path, overlap: bool
) -> None:
    """Buffers are reused between same-shaped tiles and replaced when the shape changes;
    every yielded device array holds exactly its file's pixels."""
    shapes = [(512, 512), (512, 512), (256, 384), (512, 512), (512, 512)]
    paths = write_tiles(tmp_path, shapes)
    bad = tmp_path / "Tile_r9-c9_S_001.tif"
    bad.write_bytes(b"not a tiff")
    order = [*paths[:2], bad, *paths[2:]]
    seen = []
    for tile in Prefetcher(order, overlap=overlap):
        if tile.path == str(bad):
            assert isinstance(tile.error, TileError)
            continue
        host = tile.image.get()  # on the current stream, after the copy event
        np.testing.assert_array_equal(host, tifffile.imread(tile.path))
        seen.append(tile.path)
    assert seen == [str(p) for p in paths]


@pytest.mark.gpu
@needs_gpu
def test_gpu_loop_scores_like_score_path_with_and_without_overlap(tmp_path: Path) -> None:
    paths = write_tiles(tmp_path, [(1024, 1024)] * 3)
    settings = ScoreSettings(backend="gpu", patch_size=512)
    expected = [score_path(p, settings).score for p in paths]
    for overlap in (True, False):
        got = score_paths_gpu(paths, settings, overlap=overlap)
        assert all(isinstance(g, TileScore) for g in got)
        assert [g.score for g in got if isinstance(g, TileScore)] == pytest.approx(expected)
