"""Patch grids (the focus map) and the halo-tiled native mode."""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import Backend, get_backend
from focuswatch.score import score_image, score_patches
from focuswatch.score.mhfd import params_for
from focuswatch.score.patches import (
    default_threads,
    each_patch,
    halo_for,
    native_mhfd,
    patch_bounds,
    reflect_index,
)

CPU = get_backend("cpu")


@pytest.mark.parametrize(
    ("n", "patch", "sizes"),
    [
        (8192, 1024, [1024] * 8),
        (1000, 1024, [1000]),
        (100, 1024, [100]),
        (2500, 1024, [1250, 1250]),
        (3000, 1024, [1000, 1000, 1000]),
        (1025, 512, [512, 513]),
    ],
)
def test_patch_bounds_cover_the_axis_with_near_equal_parts(
    n: int, patch: int, sizes: list[int]
) -> None:
    bounds = patch_bounds(n, patch)
    assert [b - a for a, b in bounds] == sizes
    assert bounds[0][0] == 0
    assert bounds[-1][1] == n
    assert all(b0[1] == b1[0] for b0, b1 in itertools.pairwise(bounds))


def test_reflect_index_mirrors_any_distance() -> None:
    np.testing.assert_array_equal(
        reflect_index(np.arange(-5, 9), 4), [3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]
    )


def test_patch_grid_shape_and_median_score() -> None:
    rng = np.random.default_rng(0)
    img = synth.degrade(synth.neuropil((256, 384), rng=rng), rng=rng, dose=50.0)
    r = score_image(img, backend=CPU, patch_size=128)
    assert r.patch_scores is not None
    assert r.patch_scores.shape == (2, 3)
    assert r.patch_scores.dtype == np.float64
    assert r.score == float(np.median(r.patch_scores))
    assert r.patch_content is not None
    assert r.patch_content.shape == (2, 3)
    assert r.resolution == "patches"
    assert r.shape == (256, 384)


def test_small_image_is_one_patch() -> None:
    rng = np.random.default_rng(1)
    img = synth.neuropil((200, 300), rng=rng)
    r = score_image(img, backend=CPU, patch_size=1024)
    assert r.patch_scores is not None
    assert r.patch_scores.shape == (1, 1)


def test_focus_map_shows_a_partly_blurred_tile() -> None:
    """The left half in focus, the right half blurred (a wrinkle): right patches drop."""
    rng = np.random.default_rng(2)
    clean = synth.neuropil((512, 1024), rng=rng)
    sharp = synth.degrade(clean, rng=rng, dose=30.0)
    blurred = synth.degrade(clean, rng=rng, defocus_sigma=4.0, dose=30.0)
    img = np.concatenate([sharp[:, :512], blurred[:, 512:]], axis=1)
    r = score_image(img, backend=CPU, patch_size=256)
    assert r.patch_scores is not None
    left, right = r.patch_scores[:, :2], r.patch_scores[:, 2:]
    assert right.max() < 0.5 * left.min()


def test_a_blank_patch_scores_zero_without_failing_the_tile() -> None:
    rng = np.random.default_rng(3)
    img = synth.degrade(synth.neuropil((256, 256), rng=rng), rng=rng, dose=30.0)
    img[:, 128:] = 0.0  # a saturated-black margin
    r = score_image(img, backend=CPU, patch_size=128)
    assert r.patch_scores is not None
    assert (r.patch_scores[:, 1] == 0).all()
    assert (r.patch_scores[:, 0] > 0).all()


@pytest.mark.parametrize("mode", ["default", "faithful"])
def test_native_tiled_equals_untiled(mode: str) -> None:
    """Blocks of 96 px with a full halo count what one untiled block counts: within
    0.5 % (the halo cuts Gaussian tails beyond 4σ). In float64, on a 600 × 680 image of
    ~1 800-6 700 features: the transforms of other sizes round otherwise, and in float32
    that alone moved a 300 × 340 image's ~550 counts by 1-2 % (float32 against float64:
    554 against 544 with pocketfft, 559 against 545 with ducc0); a tie between
    neighbouring responses then goes either way (±3 features: 0.55 % of 550, 0.17 % of
    1 800). Measured in float64 here: within 0.17 % with either FFT."""
    rng = np.random.default_rng(4)
    img = synth.to_uint(synth.degrade(synth.neuropil((600, 680), rng=rng), rng=rng, dose=30.0), 8)
    params = params_for(mode)
    untiled = native_mhfd(img, params, backend=CPU, dtype=np.float64, block=4096)
    tiled = native_mhfd(img, params, backend=CPU, dtype=np.float64, block=96)
    assert untiled.count > 1000
    assert tiled.count == pytest.approx(untiled.count, rel=0.005, abs=1)
    assert halo_for(params.sigmas) >= 3 * max(params.sigmas)


def test_native_resolution_scores_the_whole_tile() -> None:
    rng = np.random.default_rng(5)
    clean = synth.neuropil((256, 256), rng=rng)
    sharp = score_image(synth.degrade(clean, rng=rng, dose=30.0), backend=CPU, resolution="native")
    blurred = score_image(
        synth.degrade(clean, rng=rng, defocus_sigma=3.0, dose=30.0),
        backend=CPU,
        resolution="native",
    )
    assert sharp.patch_scores is None
    assert sharp.resolution == "native"
    assert sharp.score > 2 * blurred.score


def test_resized_resolution_scores_at_1024() -> None:
    rng = np.random.default_rng(6)
    img = synth.degrade(synth.neuropil((512, 512), rng=rng), rng=rng, dose=200.0)
    r = score_image(img, backend=CPU, resolution="resized")
    assert r.patch_scores is None
    assert r.resolution == "resized"
    assert r.score > 0


def _tissue(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synth.to_uint(synth.degrade(synth.neuropil(shape, rng=rng), rng=rng, dose=30.0), 16)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_patches_on_threads_score_exactly_as_one_at_a_time(mode: str) -> None:
    image = _tissue((384, 512))
    image[:128, :128] = 7  # a blank patch among scored ones
    one = score_patches(
        image, backend=CPU, criterion="mhfd", mode=mode, patch_size=128, dtype=np.float32, threads=1
    )
    two = score_patches(
        image, backend=CPU, criterion="mhfd", mode=mode, patch_size=128, dtype=np.float32, threads=3
    )
    assert one.patch_scores is not None
    assert one.patch_scores.shape == (3, 4)
    assert one.patch_scores[0, 0] == 0.0
    assert two.patch_scores is not None
    np.testing.assert_array_equal(two.patch_scores, one.patch_scores)
    np.testing.assert_array_equal(two.patch_content, one.patch_content)
    np.testing.assert_array_equal(two.patch_fine_fraction, one.patch_fine_fraction)
    assert (two.score, two.noise, two.fine_fraction) == (one.score, one.noise, one.fine_fraction)


def test_each_patch_reads_in_order_on_the_calling_thread_and_keeps_order() -> None:
    bounds = [(i, i + 1, 0, 1) for i in range(12)]
    reads: list[tuple[int, str]] = []
    seen: list[tuple[int, int]] = []

    def read(y0: int, y1: int, x0: int, x1: int) -> int:
        reads.append((y0, threading.current_thread().name))
        return y0

    def work(value: int, backend: Backend) -> int:
        seen.append((value, backend.fft_workers))
        time.sleep(0.002 * (12 - value))  # later patches finish first
        return value * 10

    out = each_patch(bounds, read, work, backend=CPU, threads=3)
    assert out == [10 * i for i in range(12)]
    assert reads == [(i, threading.current_thread().name) for i in range(12)]
    # Each thread's FFTs are single-threaded (the cores are shared out by patches).
    assert sorted(seen) == [(i, 1) for i in range(12)]
    assert each_patch(bounds, read, work, backend=CPU, threads=1) == out


def test_each_patch_raises_the_first_failure_and_rejects_no_threads() -> None:
    def work(value: int, backend: Backend) -> int:
        if value == 5:
            raise ValueError("patch 5 is bad")
        return value

    bounds = [(i, i + 1, 0, 1) for i in range(9)]
    with pytest.raises(ValueError, match="patch 5 is bad"):
        each_patch(bounds, lambda y0, *_: y0, work, backend=CPU, threads=2)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        each_patch(bounds, lambda y0, *_: y0, work, backend=CPU, threads=0)


def test_default_threads_is_a_patch_per_core_on_the_cpu() -> None:
    assert default_threads(CPU) == len(os.sched_getaffinity(0))
