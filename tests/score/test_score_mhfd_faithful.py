"""Faithful mode: the authors' algorithm and defaults, pinned on constructed images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import PAPER_SIGMAS, mhfd, mhfd_detail, sigma_schedule
from focuswatch.score.mhfd import PAPER_THRESHOLD, params_for

CPU = get_backend("cpu")


def blobs(
    shape: tuple[int, int], centres: list[tuple[float, float]], amps: list[float], s: float
) -> np.ndarray:
    """Dark image with Gaussian bright blobs of standard deviation ``s``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape)
    for (cy, cx), a in zip(centres, amps, strict=True):
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return img


def grid_centres(n: int, size: int) -> list[tuple[float, float]]:
    """An n×n grid that is also evenly spaced across the periodic border."""
    step = size // n
    return [(step * i + step // 2, step * j + step // 2) for i in range(n) for j in range(n)]


def test_sigma_schedule_is_the_papers() -> None:
    expected = np.linspace(1, 30 + 29 / 28, 30)
    np.testing.assert_array_equal(np.array(PAPER_SIGMAS), expected)
    np.testing.assert_array_equal(np.array(sigma_schedule()), expected)
    assert len(PAPER_SIGMAS) == 30
    assert params_for("faithful").sigmas == PAPER_SIGMAS


def test_n_separated_bright_discs_give_n_maxima() -> None:
    """Nine well-separated bright blobs on a dark 1024² field: exactly nine maxima."""
    img = blobs((1024, 1024), grid_centres(3, 1024), [1.0] * 9, 8.0)
    assert mhfd(img, backend=CPU, mode="faithful") == 9


def test_features_below_the_threshold_are_not_counted() -> None:
    """Five strong blobs and four at 1/20 of their contrast: the weak ones fall below
    1e-4·sqrt(H·W) = 0.1024 of the stretched range and only the strong ones count."""
    centres = grid_centres(3, 1024)
    amps = [1.0 if i % 2 == 0 else 0.05 for i in range(9)]
    img = blobs((1024, 1024), centres, amps, 8.0)
    assert mhfd(img, backend=CPU, mode="faithful") == 5  # the grid has 5 even indices
    # ...and with a threshold 10 times lower all nine count.
    assert mhfd(img, backend=CPU, mode="faithful", threshold=PAPER_THRESHOLD / 10) == 9


def test_threshold_is_in_orthonormal_units_and_counts_fall_as_it_rises() -> None:
    """threshold t (orthonormal units) equals an absolute threshold t·sqrt(H·W)."""
    rng = np.random.default_rng(0)
    img = synth.neuropil((1024, 1024), rng=rng)
    d = mhfd_detail(img, backend=CPU, mode="faithful")
    assert d.thresholds == pytest.approx([PAPER_THRESHOLD * 1024] * 29)
    counts = [
        mhfd(img, backend=CPU, mode="faithful", threshold=t) for t in (0.5e-4, 1e-4, 2e-4, 4e-4)
    ]
    assert counts[1] == d.count
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_faithful_resizes_to_1024_first() -> None:
    """A 512² image is scored at 1024² (bilinear, pixel-area aligned), so the threshold
    is 0.1024. Blob centres sit where the resized grid has a pixel centre (x.75 → 2x+1),
    else each would be a 2×2 plateau of tied maxima, which the paper's rule counts 4 times."""
    centres = [(c - 0.25, d - 0.25) for c, d in grid_centres(2, 512)]
    img = blobs((512, 512), centres, [1.0] * 4, 4.0)
    d = mhfd_detail(img, backend=CPU, mode="faithful")
    assert d.shape == (1024, 1024)
    assert d.count == 4


def paper_reference(u: np.ndarray, threshold: float) -> int:
    """The published algorithm, materialising every level (float64), for comparison."""
    F = scipy.fft.rfft2(u)
    wy = 2 * np.pi * np.fft.fftfreq(u.shape[0])[:, None]
    wx = 2 * np.pi * np.fft.rfftfreq(u.shape[1])[None, :]
    levels = [
        scipy.fft.irfft2(F * np.exp(-0.5 * s * s * (wy**2 + wx**2)), s=u.shape)
        for s in PAPER_SIGMAS
    ]
    dog = np.stack(
        [PAPER_SIGMAS[i] * (levels[i] - levels[i + 1]) for i in range(len(PAPER_SIGMAS) - 1)]
    )
    m = dog.max(axis=0)
    m[m < threshold] = 0
    peaks = (m == scipy.ndimage.maximum_filter(m, size=3, mode="nearest")) & (m > 0)
    return int(peaks.sum())


def stretch(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.175, 99.825], method="lower")
    return (np.clip(img, lo, hi) - lo) / (hi - lo)


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_equals_materialising_every_level(seed: int) -> None:
    """The streaming core (one level at a time, running maximum) counts exactly what
    the materialise-all implementation counts on a small float64 image."""
    rng = np.random.default_rng(seed)
    img = synth.degrade(synth.neuropil((128, 160), rng=rng), rng=rng, dose=200.0).astype(np.float64)
    t = PAPER_THRESHOLD * math.sqrt(128 * 160)
    expected = paper_reference(stretch(img), t)
    got = mhfd_detail(img, backend=CPU, mode="faithful", resize=0, dtype="float64")
    assert got.shape == (128, 160)
    assert got.count == expected
    assert expected > 20
