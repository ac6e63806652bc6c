"""Default and fast modes: noise-robust MHFD; input checks; the numeric policy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import mhfd, mhfd_detail, score_image
from focuswatch.score.mhfd import (
    PAPER_SIGMAS,
    dog_gains,
    dog_max,
)
from focuswatch.score.noise import noise_sigma
from isbi import Slices

CPU = get_backend("cpu")
SIGMAS = (0.0, 1.0, 2.0, 4.0, 6.0)


def series(clean: np.ndarray, dose: float | None, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return synth.through_focus_series(clean, sigmas=SIGMAS, dose=dose, rng=rng)


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return synth.neuropil((384, 384), rng=np.random.default_rng(11))


@pytest.mark.parametrize("dose", [10.0, 30.0, 200.0])
def test_default_falls_strictly_with_defocus_on_synthetic_tissue(
    tissue: np.ndarray, dose: float
) -> None:
    counts = [mhfd(im, backend=CPU) for im in series(tissue, dose)]
    assert all(a > b for a, b in itertools.pairwise(counts)), counts


@pytest.mark.parametrize("dose", [10.0, 30.0])
def test_default_falls_with_defocus_on_real_em_where_faithful_counts_noise(
    isbi_slices: Slices, dose: float
) -> None:
    """On a real EM slice with shot noise the paper's fixed threshold counts noise
    maxima (its count does not fall with blur); the default mode's noise floor
    restores a strictly falling count."""
    clean = isbi_slices[4]
    ims = series(clean, dose, seed=3)
    default = [mhfd(im, backend=CPU) for im in ims]
    faithful = [mhfd(im, backend=CPU, mode="faithful") for im in ims]
    assert all(a > b for a, b in itertools.pairwise(default)), default
    assert spearmanr(faithful, SIGMAS)[0] > -0.9, faithful  # the failure we fixed


def test_fast_mode_agrees_with_exact(tissue: np.ndarray) -> None:
    """Decimated levels: same ranking through focus, counts within 15 % (or 8 maxima,
    where a badly blurred image has only a few dozen). A level on a coarse grid
    (σ ≥ 1 coarse px) resolves fewer close pairs of maxima, so moderately blurred
    images, whose maxima come from those levels, count up to ~12 % fewer."""
    ims = series(tissue, 30.0, seed=5)
    exact = [mhfd(im, backend=CPU) for im in ims]
    fast = [mhfd(im, backend=CPU, mode="fast") for im in ims]
    assert spearmanr(exact, fast)[0] == pytest.approx(1.0)
    for e, f in zip(exact, fast, strict=True):
        assert abs(e - f) <= max(0.15 * e, 8), (exact, fast)


def test_fast_mode_samples_coarse_levels_to_within_aliasing() -> None:
    """Cropping the spectrum samples a level on a coarse grid; what its Gaussian leaves
    beyond the coarse Nyquist frequency (≤ exp(-π²/2) at σ = 1 coarse px) aliases:
    on the pixels of the coarsest grid the fast maximum equals the exact one to ~1 %
    of its range; in between it is linearly interpolated."""
    rng = np.random.default_rng(2)
    u = synth.neuropil((256, 256), rng=rng).astype(np.float64)
    F = CPU.fft.rfft2(u)
    sig = PAPER_SIGMAS[12:]  # all coarse: σ ≥ 13 px, decimated 8 or 16 times
    ones = np.ones(len(sig) - 1)
    exact = dog_max(F, u.shape, sigmas=sig, scales=ones, backend=CPU, dtype=np.float64)
    fast = dog_max(
        F, u.shape, sigmas=sig, scales=ones, backend=CPU, dtype=np.float64, decimate=True
    )
    step = 16  # the coarsest grid used for σ ≥ 13 px on 256²
    scale = np.abs(exact).max()
    np.testing.assert_allclose(fast[::step, ::step], exact[::step, ::step], atol=0.01 * scale)
    assert np.abs(exact - fast).max() < 0.3 * scale
    assert not np.array_equal(exact, fast)  # it really was decimated


def test_content_separates_empty_resin_from_badly_blurred_tissue() -> None:
    rng = np.random.default_rng(4)
    size = (512, 512)
    resin = synth.degrade(synth.resin(size, rng=rng), rng=rng, dose=30.0)
    blurred = synth.degrade(synth.neuropil(size, rng=rng), rng=rng, defocus_sigma=8.0, dose=30.0)
    sharp = synth.degrade(synth.neuropil(size, rng=rng), rng=rng, dose=30.0)
    c_resin = score_image(resin, backend=CPU).content
    c_blurred = score_image(blurred, backend=CPU).content
    c_sharp = score_image(sharp, backend=CPU).content
    assert c_resin < 0.015
    assert c_blurred > 0.025
    assert c_blurred > 2.5 * c_resin
    assert c_sharp == pytest.approx(c_blurred, rel=0.5)  # blur-invariant, roughly


def test_noise_estimate_recovers_added_gaussian_noise() -> None:
    rng = np.random.default_rng(6)
    smooth = synth.degrade(synth.neuropil((512, 512), rng=rng), rng=rng, defocus_sigma=3.0)
    for s in (0.02, 0.05, 0.1):
        noisy = smooth + rng.normal(0, s, smooth.shape)
        assert noise_sigma(noisy, CPU) == pytest.approx(s, rel=0.1)


def test_dog_noise_gain_matches_white_noise() -> None:
    rng = np.random.default_rng(7)
    noise = rng.normal(0, 1, (256, 256))
    F = CPU.fft.rfft2(noise)
    g = dog_gains((256, 256), PAPER_SIGMAS)
    for i in (0, 3, 10):
        sig = PAPER_SIGMAS[i : i + 2]
        level = dog_max(F, noise.shape, sigmas=sig, scales=np.ones(1), backend=CPU, dtype=float)
        assert level.std() == pytest.approx(g[i], rel=0.05)


def test_8_bit_16_bit_and_float_input_score_alike(tissue: np.ndarray) -> None:
    rng = np.random.default_rng(8)
    img = synth.degrade(tissue, rng=rng, dose=30.0)
    s8 = mhfd(synth.to_uint(img, 8), backend=CPU)
    s16 = mhfd(synth.to_uint(img, 16), backend=CPU)
    sf = mhfd(img, backend=CPU)
    assert s16 == pytest.approx(sf, rel=0.02)
    assert s8 == pytest.approx(sf, rel=0.03)


def test_float64_and_float32_agree(tissue: np.ndarray) -> None:
    img = series(tissue, 30.0)[1]
    a = mhfd_detail(img, backend=CPU, dtype="float32").count
    b = mhfd_detail(img, backend=CPU, dtype="float64").count
    assert a == pytest.approx(b, rel=0.002)


def test_float64_beyond_float32_range_scores_like_the_same_image_in_range(
    tissue: np.ndarray,
) -> None:
    """Only relative intensities matter: ±1e300 data must not overflow on the way to [0, 1]."""
    img = series(tissue, 30.0)[1].astype(np.float64)
    assert mhfd(img * 2e300 - 1e300, backend=CPU) == mhfd(img, backend=CPU)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros((64, 0)), "empty"),
        (np.full((64, 64), 7, np.uint8), "constant image"),
        (np.ones((8, 200)), "too small"),
        (np.zeros((4, 64, 64)), "2-D"),
        (np.zeros(100), "2-D"),
        (np.ones((64, 64), np.complex64), "dtype"),
        ([[1, 2], [3, 4]], "array"),
    ],
)
def test_bad_images_raise_a_clear_value_error(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_image(image, backend=CPU)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_raise_a_clear_value_error(bad: float) -> None:
    img = np.random.default_rng(0).random((64, 64))
    img[5, 7] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        score_image(img, backend=CPU)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"criterion": "sharpness"}, "criterion must be one of"),
        ({"mode": "quick"}, "mode must be one of"),
        ({"resolution": "full"}, "resolution must be one of"),
        ({"patch_size": 8}, "patch_size"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_options_raise_a_clear_value_error(options: dict[str, object], message: str) -> None:
    img = np.random.default_rng(0).random((64, 64))
    with pytest.raises(ValueError, match=message):
        score_image(img, backend=CPU, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sigmas": (3.0, 2.0)}, "increasing"),
        ({"threshold": -1.0}, "threshold"),
        ({"noise_k": 0.0}, "noise_k"),
        ({"saturation": 0.6}, "saturation"),
        ({"resize": 4}, "resize"),
    ],
)
def test_bad_mhfd_parameters_raise(options: dict[str, object], message: str) -> None:
    img = np.random.default_rng(0).random((64, 64))
    with pytest.raises(ValueError, match=message):
        mhfd(img, backend=CPU, **options)  # type: ignore[arg-type]


def test_noise_estimate_ignores_a_flat_clipped_margin() -> None:
    """Half the tile saturated black (stretch-clipped to 0) must not halve the estimate."""
    rng = np.random.default_rng(9)
    img = synth.degrade(synth.neuropil((256, 256), rng=rng), rng=rng, dose=30.0)
    with_margin = img.copy()
    with_margin[:, 128:] = 0.0
    full = noise_sigma(img[:, :128], CPU)
    assert noise_sigma(with_margin, CPU) == pytest.approx(full, rel=0.1)
