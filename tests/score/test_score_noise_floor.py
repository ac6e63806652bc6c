"""Default mode's noise floor follows the noise that is there: white, correlated along
the scan line (x) or correlated in 2-D (a resampled image)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import spearmanr

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import mhfd, mhfd_detail
from focuswatch.score.mhfd import PAPER_SIGMAS, dog_gains
from focuswatch.score.noise import (
    NOISE_FACTORS,
    NOISE_LAGS,
    level_noise,
    noise_model,
    spectral_level_noise,
)
from isbi import Slices

CPU = get_backend("cpu")
MHFD = sys.modules["focuswatch.score.mhfd"]
SIGMAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)


def _resampled(factor: float, order: int) -> Callable[[np.ndarray], np.ndarray]:
    def post(image: np.ndarray) -> np.ndarray:
        big = synth.resample(image, factor, order=order)
        y0, x0 = (big.shape[0] - image.shape[0]) // 2, (big.shape[1] - image.shape[1]) // 2
        return big[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]]

    return post


#: name -> (``degrade`` options, what happens to the image after)
NOISE: dict[str, tuple[dict[str, float], Callable[[np.ndarray], np.ndarray] | None]] = {
    "white": ({}, None),
    "x AR(1) 0.45": ({"noise_pole_x": 0.45}, None),
    "x AR(1) 0.6": ({"noise_pole_x": 0.6}, None),
    "x detector low-pass 0.4": ({"scan_pole": 0.4}, None),
    "x FIR": ({}, lambda im: synth.filter_lines(im, (0.45, 0.35, 0.2))),
    "2-D Gaussian 0.6": ({"noise_sigma_2d": 0.6}, None),
    "2-D bilinear x1.4": ({}, _resampled(1.4, 1)),
}


def noisy(
    clean: np.ndarray, noise: str, *, dose: float, seed: int, blur: float = 0.0
) -> np.ndarray:
    options, post = NOISE[noise]
    im = synth.degrade(
        clean, rng=np.random.default_rng(seed), dose=dose, defocus_sigma=blur, **options
    )
    return post(im) if post is not None else im


def level_std(u: np.ndarray, levels: range) -> np.ndarray:
    """Measured standard deviation of DoG levels of ``u`` (circular, float64)."""
    F = np.fft.rfft2(u - u.mean())
    return np.array(
        [
            np.fft.irfft2(
                F * MHFD._transfer(CPU, u.shape, PAPER_SIGMAS, i, np.float64), s=u.shape
            ).std()
            for i in levels
        ]
    )


@pytest.mark.parametrize("noise", list(NOISE))
def test_each_fine_level_is_held_to_its_own_noise(noise: str) -> None:
    """Pure noise at 30 e/px: the noise model's prediction for each fine level is
    within 12 % of that level's measured noise, whatever the correlation (the
    white-noise estimate alone is off by up to 5× at the finest level)."""
    flat = np.full((384, 384), 0.5, np.float32)
    u = noisy(flat, noise, dose=30.0, seed=1).astype(np.float64)
    levels = range(6)
    true = level_std(u, levels)
    model = noise_model(u.astype(np.float32), CPU)
    assert len(model) == len(NOISE_FACTORS) + 2 * NOISE_LAGS + 1
    predicted = spectral_level_noise(u.shape, PAPER_SIGMAS, model)[: len(levels)]
    assert np.all(np.abs(predicted / true - 1) < 0.12), (predicted / true).round(3)


def test_white_noise_keeps_the_white_noise_floor() -> None:
    """White noise: no correlation is read into it, and the per-level noise is the
    white-noise estimate's (the old floor) to within 4 %."""
    flat = np.full((512, 512), 0.5, np.float32)
    u = noisy(flat, "white", dose=10.0, seed=2)
    model = noise_model(u, CPU)
    rho = np.asarray(model[len(NOISE_FACTORS) : len(NOISE_FACTORS) + 2 * NOISE_LAGS])
    assert np.all(np.abs(rho) < 0.03), rho
    assert model[-1] == pytest.approx(1.0, abs=0.03)
    old = level_noise(PAPER_SIGMAS, model[: len(NOISE_FACTORS)]) * dog_gains(u.shape, PAPER_SIGMAS)
    new = spectral_level_noise(u.shape, PAPER_SIGMAS, model)
    assert np.allclose(new[:8], old[:8], rtol=0.04)


@pytest.mark.parametrize("noise", [n for n in NOISE if n != "white"])
def test_correlated_noise_alone_scores_almost_nothing(noise: str) -> None:
    """A tile of nothing but correlated shot noise at 8 e/px (flat resin, fast scan):
    a handful of maxima, not the thousands a white-noise floor lets through."""
    flat = np.full((512, 512), 0.6, np.float32)
    count = mhfd(noisy(flat, noise, dose=8.0, seed=3), backend=CPU)
    assert count < 80, count


@pytest.mark.parametrize("noise", ["x AR(1) 0.45", "2-D Gaussian 0.6"])
@pytest.mark.parametrize("level", [0.85, 0.9])
def test_saturated_resin_is_still_measured_as_correlated_noise(noise: str, level: float) -> None:
    """Bright resin at 30 e/px written as 8-bit, saturated in 19-28 % of its pixels all
    over the tile: no block of it is nearly unclipped, and the correlation must still be
    measured (read as white noise, such a tile counted 300-4 700 noise maxima: an
    "empty" tile that looked richer than any tissue and became its position's score)."""
    flat = np.full((512, 512), level, np.float32)
    tile = synth.to_uint(noisy(flat, noise, dose=30.0, seed=3), 8)
    assert float(np.mean(tile == 255)) > 0.15
    assert mhfd(tile, backend=CPU) < 40


@pytest.mark.parametrize(
    "noise", ["x AR(1) 0.45", "x FIR", "2-D Gaussian 0.6", "2-D bilinear x1.4"]
)
@pytest.mark.parametrize("dose", [8.0, 30.0])
def test_score_falls_with_blur_on_real_em_under_correlated_noise(
    isbi_slices: Slices, noise: str, dose: float
) -> None:
    """Through-focus series of real EM slices with correlated noise: the default score
    falls with blur (Spearman ≤ −0.9 on every slice), every sharp image (σ 0)
    outscores every image blurred by σ ≥ 2 px of the same slice, and what is left at
    σ 6 px (noise maxima, mostly) is under a sixth of the sharp count."""
    slices = isbi_slices
    for k in (2, 21):
        scores = [
            mhfd(noisy(slices[k], noise, dose=dose, seed=10 * k + i, blur=s), backend=CPU)
            for i, s in enumerate(SIGMAS)
        ]
        assert spearmanr(scores, SIGMAS)[0] <= -0.9, (k, scores)
        assert scores[0] > max(scores[2:]), (k, scores)
        assert scores[-1] < scores[0] / 6, (k, scores)


def test_fast_mode_ranks_correlated_noise_series_like_exact(isbi_slices: Slices) -> None:
    clean = isbi_slices[12]
    images = [
        noisy(clean, noise, dose=8.0, seed=i, blur=s)
        for noise in ("x AR(1) 0.45", "2-D bilinear x1.4")
        for i, s in enumerate(SIGMAS)
    ]
    exact = [mhfd(im, backend=CPU) for im in images]
    fast = [mhfd(im, backend=CPU, mode="fast") for im in images]
    assert spearmanr(exact, fast)[0] >= 0.97


def test_noise_model_ignores_a_clipped_margin_and_reads_the_scan_axis() -> None:
    """x-correlated noise is read along x only; a saturated margin (no noise) over a
    third of the tile changes nothing."""
    flat = np.full((512, 512), 0.5, np.float32)
    u = noisy(flat, "x AR(1) 0.45", dose=30.0, seed=4)
    u = (u - u.min()) / (u.max() - u.min())
    with_margin = u.copy()
    with_margin[:, :170] = 0.0
    for v in (u, with_margin):
        model = noise_model(v.astype(np.float32), CPU)
        rx = model[len(NOISE_FACTORS) : len(NOISE_FACTORS) + NOISE_LAGS]
        ry = model[len(NOISE_FACTORS) + NOISE_LAGS : len(NOISE_FACTORS) + 2 * NOISE_LAGS]
        assert rx[0] == pytest.approx(0.45, abs=0.05)
        assert rx[1] == pytest.approx(0.45**2, abs=0.05)
        assert abs(ry[0]) < 0.03


def test_noiseless_structure_is_not_taken_for_correlated_noise() -> None:
    """A noiseless sharp image's smooth texture looks like strongly correlated noise
    to the correlation estimate; held to plausible correlations, it does not raise
    the floor above the contrast threshold there."""
    clean = synth.neuropil((256, 256), rng=np.random.default_rng(0))
    d = mhfd_detail(clean, backend=CPU)
    assert max(d.thresholds) == pytest.approx(min(d.thresholds))
