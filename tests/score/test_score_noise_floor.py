"""Default mode's noise floor follows the noise that is there: white, correlated along
the scan line (x) or correlated in 2-D (a resampled image)."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.config import PolicyConfig
from focuswatch.score import mhfd, mhfd_detail, score_image
from focuswatch.score.mhfd import PAPER_SIGMAS, dog_gains
from focuswatch.score.noise import (
    NOISE_FACTORS,
    NOISE_LAGS,
    PAIRED,
    TAILS,
    level_noise,
    noise_model,
    spectral_level_noise,
    tile_noise_models,
)
from isbi import Slices

CPU = get_backend("cpu")
MHFD = sys.modules["focuswatch.score.mhfd"]
NOISE_MODULE = sys.modules["focuswatch.score.noise"]
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
    assert len(model) == len(NOISE_FACTORS) + 2 * NOISE_LAGS + 2
    assert model[PAIRED] == 0.0
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
    assert model[TAILS] == pytest.approx(1.0, abs=0.03)
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


@pytest.mark.parametrize("tile", [(3, 0, 3, 0, 1), (3, 0, 13, 2, 0), (3, 0, 23, 0, 1)])
def test_resin_under_2d_correlated_noise_is_below_the_empty_limit(tile: tuple[int, ...]) -> None:
    """Bare resin at 30 e/px with noise correlated in 2-D (σ 0.7 px), as
    ``bench/verdicts.py --noise 2d`` writes it: the noise keeps power in the content
    band (σ 8-32 px), and its share is taken out, so the content stays below the
    policy's empty limit (0.02); read with the noise in, these tiles measured
    0.021-0.023, were judged as tissue and alerted as out of focus."""
    rng = np.random.default_rng(list(tile))
    resin = synth.resin((512, 512), rng=rng)
    image = synth.to_uint(synth.degrade(resin, rng=rng, dose=30.0, noise_sigma_2d=0.7), 8)
    result = score_image(image, backend=CPU, patch_size=256)
    assert result.content < PolicyConfig().empty_contrast, result.content


@pytest.mark.parametrize("k", [3, 17])
def test_a_tiles_count_is_steady_between_noise_draws_under_2d_correlated_noise(
    isbi_slices: Slices, k: int
) -> None:
    """One 512² crop of an ISBI slice (upsampled ×2, band-limited) at 30 e/px with noise
    correlated in 2-D, six noise draws: the count varies by under 5 % and the fine
    fraction by under 6 % (relative standard deviations). The floor binds at the fine
    levels there, and its threshold follows the measured correlation ~2.5-fold: read on
    every 8th line, the count varied by 7-9 % and the fine fraction by up to 11 %."""
    crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768]
    details = [
        mhfd_detail(
            synth.degrade(crop, rng=np.random.default_rng(100 + d), dose=30.0, noise_sigma_2d=0.7),
            backend=CPU,
        )
        for d in range(6)
    ]
    counts = np.array([d.count for d in details])
    fines = np.array([d.fine_fraction for d in details], dtype=float)
    assert counts.std(ddof=1) / counts.mean() < 0.05, counts
    assert fines.std(ddof=1) / fines.mean() < 0.06, fines


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


@pytest.mark.parametrize("noise", ["x AR(1) 0.45", "2-D Gaussian 0.6"])
@pytest.mark.parametrize("margin", [0.55, 0.7])
def test_a_black_margin_over_half_the_tile_does_not_hide_the_correlation(
    noise: str, margin: float
) -> None:
    """A tile at the section's edge: a black margin (clipped, no noise) over more than
    half of it, resin with correlated noise on the rest. The correlation is measured on
    the resin, as with a smaller margin: the margin's flat blocks, clipped all over, are
    not "the less clipped half" (taken as that, the quietest of them had no energy, the
    tile read as white noise and counted 190-720 noise maxima instead of 40-60)."""
    flat = np.full((512, 512), 0.5, np.float32)
    tile = synth.to_uint(noisy(flat, noise, dose=30.0, seed=3), 8).copy()
    tile[:, : int(margin * 512)] = 0
    assert mhfd(tile, backend=CPU) < 80


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


def _repeated(clean: np.ndarray, offset: int) -> np.ndarray:
    """``clean`` upsampled ×2 by repeating each pixel 2×2, a 512² crop from ``offset``."""
    big = np.kron(clean, np.ones((2, 2), np.float32))
    return big[offset : offset + 512, offset : offset + 512]


def _correlations(image: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    u = image.astype(np.float32)
    u = (u - u.min()) / (u.max() - u.min())
    model = noise_model(u, CPU)
    nf = len(NOISE_FACTORS)
    return tuple(model[nf : nf + NOISE_LAGS]), tuple(model[nf + NOISE_LAGS : nf + 2 * NOISE_LAGS])


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize(("dose", "pole"), [(30.0, 0.45), (200.0, 0.45), (200.0, 0.0)])
def test_texture_repeated_in_2x2_pixels_is_not_taken_for_correlated_noise(
    isbi_slices: Slices, offset: int, dose: float, pole: float
) -> None:
    """Tissue upsampled ×2 by repeating pixels, then noise: the block texture survives
    the differencing across the lines and read as noise correlated along both axes
    (ρ₁ across the scan lines 0.15 at 30 e/px and 0.44 at 200 for a true 0, along them
    0.58 for 0.45), which halved a sharp tile's count. The difference of the two lines
    of a pair cancels it, whichever pixel the crop starts on."""
    image = synth.degrade(
        _repeated(isbi_slices[20], offset),
        rng=np.random.default_rng(int(dose) + offset),
        dose=dose,
        noise_pole_x=pole,
    )
    rx, ry = _correlations(image)
    assert rx[0] == pytest.approx(pole, abs=0.04)
    assert abs(ry[0]) < 0.04
    assert abs(ry[1]) < 0.04


def test_a_sharp_tile_of_repeated_pixels_outscores_its_blurred_self(isbi_slices: Slices) -> None:
    """Under noise correlated along x at 30 e/px, the sharp ×2 pixel-repeated tile
    counted about as much as the same tile blurred by σ 1.5 px (the floor raised by
    the texture read as noise): now clearly more, as a cubic upsampling does."""
    clean = _repeated(isbi_slices[25], 0)
    sharp, blurred = (
        mhfd(
            synth.degrade(
                clean, rng=np.random.default_rng(3), dose=30.0, defocus_sigma=s, noise_pole_x=0.45
            ),
            backend=CPU,
            mode="fast",
        )
        for s in (0.0, 1.5)
    )
    assert sharp > 1.4 * blurred, (sharp, blurred)


def test_pixels_repeated_with_their_noise_read_as_correlated_noise(isbi_slices: Slices) -> None:
    """Pixels repeated after the noise (an image exported at twice its size): the
    lines of a pair are identical, noise and all, so their difference says nothing;
    the repetition is correlated noise (ρ₁ ≈ 0.5 both ways) and read as such."""
    image = synth.degrade(isbi_slices[20][:256, :256], rng=np.random.default_rng(5), dose=30.0)
    rx, ry = _correlations(np.kron(image, np.ones((2, 2), np.float32)))
    assert rx[0] > 0.4
    assert ry[0] > 0.4


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (8-bit) through a real JPEG encoder and decoder."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


@pytest.mark.parametrize(
    ("dose", "after"),
    [(30.0, "jpeg 85"), (30.0, "jpeg 75"), (200.0, "jpeg 85"), (30.0, "noise 0.3")],
)
def test_pixels_repeated_with_their_noise_then_a_weaker_noise_stay_correlated_noise(
    isbi_slices: Slices, dose: float, after: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image exported at twice its size by repeating pixels, then saved as JPEG (or
    given a weaker independent noise): the lines of a pair differ only by that weaker
    noise, which reads as white, while the repeated noise, correlated and most of it,
    is what the noise level sees. Read on the pairs, the floor fell to the weaker
    noise's and a sharp tile counted 9-14× as much (JPEG 85 at 30 e/px: 2595 for 181),
    its σ 1.5 px blurred self 7×. Its differences then hold a fraction of the noise
    the pairs' reading implies (0.2-0.6, texture repeated under the noise: 0.7-0.95),
    and the fourth difference's reading stands."""
    clean = isbi_slices[20][:256, :256]
    image = synth.degrade(clean, rng=np.random.default_rng(int(dose)), dose=dose)
    repeated = np.kron(image, np.ones((2, 2), np.float32))
    kind, amount = after.split()
    if kind == "jpeg":
        base = synth.to_uint(repeated, 8)
        later = _jpeg(base, int(amount))
    else:
        base = synth.to_uint(repeated, 16)
        rng = np.random.default_rng(1)
        extra = rng.normal(
            0.0, float(amount) * np.std(np.diff(image, axis=1)) / math.sqrt(2), repeated.shape
        )
        later = synth.to_uint(np.clip(repeated + extra.astype(np.float32), 0, 1), 16)
    u = later.astype(np.float32)
    u = (u - u.min()) / (u.max() - u.min())
    model = noise_model(u, CPU)
    assert model[PAIRED] == 0.0
    monkeypatch.setattr(NOISE_MODULE, "_PAIR_MARGIN", math.inf)
    assert noise_model(u, CPU) == model
    monkeypatch.undo()
    if kind == "jpeg":
        assert mhfd(later, backend=CPU) < 2.5 * mhfd(base, backend=CPU)


def test_resin_does_not_outvote_the_tissue_of_a_tile_of_repeated_pixels(
    isbi_slices: Slices,
) -> None:
    """A 1024² tile of pixels repeated 2×2, its right half resin, 256 px patches: the
    resin's noise reads alike on pairs and on the fourth difference, which says
    nothing about repetition; pooled as "not paired" it outvoted the tissue, and two
    tissue patches kept the spectrum's floor beyond 0.4 cycles/px (the tissue's mirror:
    their ratios 0.37 and 0.50 for 0.59 and 0.64). Tissue at its own resolution still
    speaks against pairs (the first difference leaves more of its texture)."""
    clean = np.kron(isbi_slices[17], np.ones((2, 2), np.float32))
    clean[:, 512:] = np.median(clean)
    native = np.tile(isbi_slices[17], (2, 2))
    native[:, 512:] = np.median(native)
    for tissue, paired in ((clean, 1.0), (native, 0.0)):
        image = synth.degrade(tissue, rng=np.random.default_rng(17), dose=30.0, noise_pole_x=0.45)
        models, widths = [], []
        for y in range(0, 1024, 256):
            for x in range(0, 1024, 256):
                patch = image[y : y + 256, x : x + 256]
                lo, hi = np.percentile(patch, [0.1, 99.9])
                u = np.clip((patch - lo) / (hi - lo), 0, 1).astype(np.float32)
                models.append(noise_model(u, CPU, mark_unmeasured=True))
                widths.append(float(hi - lo))
        resin = [m[PAIRED] for i, m in enumerate(models) if i % 4 >= 2]
        assert all(math.isnan(v) for v in resin), resin
        pooled = tile_noise_models(models, widths)
        flags = [m[PAIRED] for m in pooled if m is not None]
        assert flags == [paired] * 16, (paired, flags)


@pytest.mark.parametrize("noise", ["white", "x AR(1) 0.45", "2-D Gaussian 0.6"])
@pytest.mark.parametrize("dose", [30.0, 200.0])
def test_images_without_repeated_pixels_keep_the_fourth_difference(
    isbi_slices: Slices, noise: str, dose: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real EM at its own resolution and upsampled with a cubic spline: a pairing of
    lines reads more correlation than the fourth difference (more texture left in it),
    so the model is the one the fourth difference alone gives, bit for bit."""
    for clean in (isbi_slices[7], np.clip(synth.resample(isbi_slices[7], 2.0, order=3), 0, 1)):
        image = noisy(clean[:512, :512], noise, dose=dose, seed=int(dose))
        with_pairs = _correlations(image)
        monkeypatch.setattr(NOISE_MODULE, "_PAIR_MARGIN", math.inf)
        assert _correlations(image) == with_pairs
        monkeypatch.undo()


@pytest.mark.parametrize(
    ("shape", "lines"),
    [
        ((256, 256), (128, 128)),
        ((512, 512), (128, 128)),
        ((1024, 1024), (64, 64)),
        ((1024, 8192), (64, 64)),
        ((8192, 1024), (64, 64)),
        ((768, 1024), (64, 85)),
    ],
)
def test_the_correlation_is_measured_on_64_lines_or_64k_pixels_whichever_is_more(
    shape: tuple[int, int], lines: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Along each axis on its own: a long strip's long axis keeps ~64 of its lines,
    not as many as its short one needs (1024×8192: 512 columns, a third more time)."""
    seen: dict[int, int] = {}
    real = NOISE_MODULE._axis_correlation

    def spy(
        u: np.ndarray, backend: object, *, axis: int, step: int, **kw: float
    ) -> tuple[float, ...]:
        seen[axis] = u.shape[0 if axis == 1 else 1] // step
        return real(u, backend, axis=axis, step=step, **kw)

    monkeypatch.setattr(NOISE_MODULE, "_axis_correlation", spy)
    noise_model(np.full(shape, 0.5, np.float32), CPU)
    assert (seen[1], seen[0]) == lines


_UNDER = "review7: the noise model's share of the content band is too small here"


@pytest.mark.parametrize(
    ("seed", "dose", "sigma_2d"),
    [
        pytest.param(1, 8.0, 0.7, marks=pytest.mark.xfail(strict=True, reason=_UNDER)),
        pytest.param(1, 15.0, 0.7, marks=pytest.mark.xfail(strict=True, reason=_UNDER)),
        pytest.param(2, 30.0, 1.0, marks=pytest.mark.xfail(strict=True, reason=_UNDER)),
    ],
)
def test_resin_under_2d_correlated_noise_is_empty_at_other_doses_and_sigmas(
    seed: int, dose: float, sigma_2d: float
) -> None:
    """The test above checks 30 e/px and σ 0.7 px only. Bare resin at 8 and 15 e/px
    (σ 0.7) and at 30 e/px with σ 1 px (a resampled image) still reads as tissue
    (0.023, 0.022, 0.027 against the 0.02 limit) and is alerted: on a field of pure
    noise the model's share at σ 1 is 0.016 where the measure reads 0.032, so most of
    the noise stays in. Known, not fixed (review7)."""
    rng = np.random.default_rng([seed, int(dose)])
    resin = synth.resin((512, 512), rng=rng)
    image = synth.to_uint(synth.degrade(resin, rng=rng, dose=dose, noise_sigma_2d=sigma_2d), 8)
    result = score_image(image, backend=CPU, patch_size=256)
    assert result.content < PolicyConfig().empty_contrast, result.content


def test_a_sharp_tiles_patches_keep_one_fine_fraction_under_2d_correlated_noise(
    isbi_slices: Slices,
) -> None:
    """30 sharp 512² crops of ISBI slices (upsampled ×2, band-limited) at 30 e/px with
    noise correlated in 2-D, as 256 px patches: every patch's fine fraction within 20 %
    of its tile's median patch, 6 % apart on average. With a noise floor per patch
    (each following its own brightness and texture) the worst patches were 31 % and
    38 % below theirs, beyond the policy's wrinkle limit (30 %), and 8.8 % apart on
    average: sharp tiles alerted as wrinkles."""
    worst, spread = [], []
    for k in range(0, 30, 2):
        big = synth.resample(isbi_slices[k], 2.0, order=3)
        for y in (0, 512):
            crop = big[y : y + 512, y : y + 512]
            rng = np.random.default_rng([7, k, y])
            image = synth.to_uint(synth.degrade(crop, rng=rng, dose=30.0, noise_sigma_2d=0.7), 8)
            fine = np.asarray(score_image(image, backend=CPU, patch_size=256).patch_fine_fraction)
            typical = float(np.median(fine))
            worst.append(1.0 - float(fine.min()) / typical)
            spread.append(float(fine.std() / fine.mean()))
    assert max(worst) < 0.2, sorted(worst)[-3:]
    assert float(np.mean(spread)) < 0.06, np.mean(spread)


@pytest.mark.parametrize("noise", [{"noise_sigma_2d": 0.7}, {"noise_pole_x": 0.45}])
@pytest.mark.parametrize("level", [0.75, 0.9])
def test_resin_beside_tissue_does_not_move_the_tissues_floor(
    isbi_slices: Slices, noise: dict[str, float], level: float
) -> None:
    """A tile half bright resin (0.9 saturates at 30 e/px), half tissue: the tissue's
    patches count within 12 % of what they count when the whole tile is tissue. Pooled
    with the resin's level (the median of all four patches), they moved by 15-40 %."""
    for k in (3, 17):
        crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768]
        tissue = synth.degrade(crop, rng=np.random.default_rng(k), dose=30.0, **noise)
        resin = synth.degrade(
            np.full_like(crop, level), rng=np.random.default_rng(k + 1), dose=30.0, **noise
        )
        half = tissue.copy()
        half[:, :256] = resin[:, :256]
        alone, beside = (
            np.asarray(score_image(synth.to_uint(im, 8), backend=CPU, patch_size=256).patch_scores)
            for im in (tissue, half)
        )
        assert np.all(np.abs(beside[:, 1] / alone[:, 1] - 1) < 0.12), (k, alone, beside)


def _model(
    level: float, rho: float = 0.5, tails: float = 1.0, paired: float = 0.0
) -> tuple[float, ...]:
    return (level, level, level, level, *([rho] * (2 * NOISE_LAGS)), tails, paired)


def test_a_tiles_patches_share_the_median_noise_level_in_raw_units() -> None:
    """Levels are pooled in the tile's raw units (a patch stretched over half the range
    has twice the level in its own units) over the patches within 15 % of a patch's own
    level, correlations and tail factor by the same patches' median; a patch whose own
    level is far from the rest (resin) pools with none of them, nor they with it."""
    own = [_model(0.10, 0.50), _model(0.21, 0.56), _model(0.10, 0.52, 1.1), _model(0.14, 0.2)]
    widths = [100.0, 50.0, 105.0, 100.0]  # raw levels 10, 10.5, 10.5, 14
    pooled = tile_noise_models([*own, None], [*widths, 0.0])
    assert pooled[4] is None
    raw = [m[0] * w for m, w in zip(pooled[:4], widths, strict=True) if m is not None]
    assert raw == pytest.approx([10.5, 10.5, 10.5, 14.0])
    for m in pooled[:3]:
        assert m is not None
        assert m[len(NOISE_FACTORS) :] == pytest.approx(
            _model(0.0, 0.52, 1.0)[len(NOISE_FACTORS) :]
        )
    assert pooled[3] == own[3]


def test_a_lone_patch_keeps_its_own_noise_model() -> None:
    """Nothing to pool with (one full model; a white-noise profile alone): unchanged."""
    lone = [_model(0.1), None]
    assert tile_noise_models(lone, [100.0, 0.0]) == lone
    short = [(0.1, 0.1, 0.1, 0.1), (0.2, 0.2, 0.2, 0.2)]
    assert tile_noise_models(list(short), [100.0, 100.0]) == short


def test_a_black_margin_beside_tissue_does_not_move_the_tissues_floor(
    isbi_slices: Slices,
) -> None:
    """An edge tile: the right column of 256 px patches lies 90 % beyond the section
    (black), 2-D correlated noise at 30 e/px. Over three noise draws the tissue column
    counts within 20 % of what it counts when the whole tile is tissue (a patch's own
    floor: within 6 %; one draw's patch counts scatter by ~10 % here). The margin
    patches' correlation cannot be measured (too few unclipped blocks: ``noise_model``
    says zeros); pooled as if it were white noise measured, it halved the tissue's lag-1
    correlation and the tissue counted 2.8-3.0× as much (an edge tile scoring 3× its
    neighbours, and its fine fraction making theirs look defocused)."""
    for k in (3, 17):
        crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768]
        edge = crop.copy()
        edge[:, 512 - int(256 * 0.9) :] = 0.0
        alone, beside = (
            sum(
                float(
                    np.asarray(
                        score_image(
                            synth.to_uint(
                                synth.degrade(
                                    im,
                                    rng=np.random.default_rng([k, draw]),
                                    dose=30.0,
                                    noise_sigma_2d=0.7,
                                ),
                                8,
                            ),
                            backend=CPU,
                            patch_size=256,
                        ).patch_scores
                    )[:, 0].sum()
                )
                for draw in range(3)
            )
            for im in (crop, edge)
        )
        assert abs(beside / alone - 1) < 0.2, (k, alone, beside)


def test_a_black_margin_does_not_take_a_resampled_tiles_tail_factor_down(
    isbi_slices: Slices,
) -> None:
    """An edge tile of a resampled image (noisy, then bilinear ×1.3: a tail factor ~1.35,
    ``noise._immerkaer``), its right column of patches 90 % black: the tissue column
    counts within 12 % of what it counts when the whole tile is tissue. The margin
    patches cannot measure the tail factor (too few unclipped blocks); pooled as their
    1.0, it took the tissue's to ~1.17 and its counts up by 8-27 %."""
    for k in (10, 26):
        crop = synth.resample(isbi_slices[k], 1.6, order=3)[:400, :400]
        noisy = synth.degrade(crop, rng=np.random.default_rng(k), dose=30.0)
        tissue = synth.resample(noisy, 1.3, order=1)[:512, :512]
        edge = tissue.copy()
        edge[:, 512 - int(256 * 0.9) :] = 0.0
        alone, beside = (
            float(
                np.asarray(
                    score_image(synth.to_uint(im, 8), backend=CPU, patch_size=256).patch_scores
                )[:, 0].sum()
            )
            for im in (tissue, edge)
        )
        assert abs(beside / alone - 1) < 0.12, (k, alone, beside)


def test_a_patch_whose_correlation_was_not_measured_does_not_dilute_the_others() -> None:
    """A patch mostly clipped (a black margin) cannot measure its noise's correlation
    or tail factor (``noise_model(..., mark_unmeasured=True)``: NaN); that is no
    evidence of white noise: the patches pool those of the patches that measured them,
    and a measured zero (white noise along y) still counts as one. None measured: white
    noise of one variance, as ``noise_model`` says by default."""
    measured = [_model(0.10, 0.55, 1.3), _model(0.10, 0.57, 1.4)]
    margin = [_model(0.105, math.nan, math.nan), _model(0.105, math.nan, math.nan)]
    pooled = tile_noise_models([*measured, *margin], [100.0] * 4)
    for m in pooled:
        assert m is not None
        assert m[len(NOISE_FACTORS) :] == pytest.approx([0.56] * (2 * NOISE_LAGS) + [1.35, 0.0])
    nx = len(NOISE_FACTORS) + NOISE_LAGS
    white_y = [(*m[:nx], 0.0, 0.0, 0.0, 1.0, 0.0) for m in measured]
    with_y = (*white_y[0][:nx], 0.04, 0.04, 0.0, 1.0, 0.0)
    pooled = tile_noise_models([white_y[0], white_y[1], with_y, *margin], [100.0] * 5)
    assert pooled[3] is not None
    assert pooled[3][nx:] == pytest.approx([0.0, 0.0, 0.0, 1.0, 0.0])
    alone = tile_noise_models(list(margin), [100.0, 100.0])
    assert alone == [(0.105,) * 4 + (0.0,) * 6 + (1.0, 0.0)] * 2


def _immerkaer_reference(u: np.ndarray, step: int) -> tuple[float, float]:
    """Immerkær's level and tail factor as the three-term expressions compute them (the
    code before it was written for fewer passes)."""
    d = u[:, 0:-2:step] - 2 * u[:, 1:-1:step] + u[:, 2::step]
    e = d[0:-2:step] - 2 * d[1:-1:step] + d[2::step]
    centre = u[1:-1:step, 1:-1:step][: e.shape[0], : e.shape[1]]
    inside = (centre > 0) & (centre < 1)
    a = np.abs(e)
    a[~inside] = np.inf
    k = int(np.count_nonzero(inside)) // 2
    mad = float(np.partition(a.ravel(), k)[k])
    br, bc = max(1, 32 // step), max(1, 64 // step)
    w = inside.astype(e.dtype)
    n = NOISE_MODULE._block_sums(w, br, bc)
    energy = NOISE_MODULE._block_sums(e * e * w, br, bc)
    full = n >= (1 - NOISE_MODULE._CLIPPED_SHARE) * (br * bc)
    sigma = mad / (0.6744897501960817 * 6.0)
    if int(np.count_nonzero(full)) < 8:
        return sigma, 1.0
    ms = np.sort(energy[full] / n[full])
    ratio = float(np.sqrt(max(float(ms[(ms.size - 1) // 4]), 0.0))) / (mad / 0.6744897501960817)
    return sigma, min(max(ratio, 1.0), NOISE_MODULE._MAX_TAILS)


@pytest.mark.parametrize("step", [1, 2, 4])
@pytest.mark.parametrize("shape", [(256, 256), (301, 517)])
def test_immerkaer_gives_the_three_term_expressions_numbers_exactly(
    step: int, shape: tuple[int, int]
) -> None:
    """The level and the tail factor come out bit for bit as the plain three-term
    differences, the masked median and ``e·e·w`` give them, clipped pixels, odd sizes
    and every sampling step included: the faster passes change no score."""
    rng = np.random.default_rng(step)
    image = synth.degrade(synth.neuropil(shape, rng=rng), rng=rng, dose=8.0, scan_pole=0.3)
    u = np.clip(image, 0.0, 1.0).astype(np.float32)
    u[:, : shape[1] // 5] = 0.0  # a black margin
    u[: shape[0] // 7] = 1.0  # and a saturated one
    assert NOISE_MODULE._immerkaer(u, CPU, subsample=step) == _immerkaer_reference(u, step)


def test_the_lag_spectrum_is_its_cosine_sum() -> None:
    """The noise spectrum along an axis, from cosines computed once per length, is the
    cosine sum itself (to the bit), and the cached cosines cannot be written to."""
    rho = (0.4, -0.1, 0.05)
    for n in (256, 1000):
        w = NOISE_MODULE.freqs(n, real=False)
        want = np.ones(n)
        for k, r in enumerate(rho, start=1):
            want += 2 * r * np.cos(k * w)
        assert np.array_equal(NOISE_MODULE._lag_spectrum(n, rho), np.clip(want, 0.0, None))
    with pytest.raises(ValueError, match="read-only"):
        NOISE_MODULE._lag_cosines(256, 3)[0][0] = 2.0
