"""Fast mode: levels on decimated grids, maxima counted per resolution band."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.choices import DEFAULT_MODE
from focuswatch.config import ScoringConfig
from focuswatch.score import maxima, mhfd, score_image
from focuswatch.score.maxima import count_band_maxima, count_maxima
from focuswatch.score.mhfd import PAPER_SIGMAS, fast_factors, mhfd_detail
from focuswatch.score.noise import noise_sigma
from focuswatch.score.patches import native_mhfd

CPU = get_backend("cpu")
# ``focuswatch.score.mhfd`` the attribute is the function; the module is needed for
# its private helpers and constants.
MHFD = sys.modules["focuswatch.score.mhfd"]


def smooth_field(shape: tuple[int, int], sigma: float, seed: int) -> np.ndarray:
    """White noise low-passed by a Gaussian of ``sigma`` px (circular), unit std."""
    rng = np.random.default_rng(seed)
    F = np.fft.rfft2(rng.normal(size=shape))
    wy = 2 * np.pi * np.fft.fftfreq(shape[0])[:, None]
    wx = 2 * np.pi * np.fft.rfftfreq(shape[1])[None, :]
    f = np.fft.irfft2(F * np.exp(-0.5 * sigma**2 * (wy**2 + wx**2)), s=shape)
    out: np.ndarray = (f / f.std()).astype(np.float32)
    return out


def test_band_count_matches_counting_at_full_resolution() -> None:
    """A coarse band that is the exact 2× subsample of a smooth field (σ 3 px, as a
    decimated level is): counting each band on its own grid finds about the maxima
    that counting max(fine, field) at full resolution finds."""
    shape = (256, 256)
    fine = smooth_field(shape, 1.5, seed=1)
    field = 1.1 * smooth_field(shape, 3.0, seed=2)
    full = np.maximum(fine, field)
    for level in (0.0, 1.0, 1.5):
        banded = count_band_maxima(fine, (2, field[::2, ::2]), CPU, level=level, shape=shape)
        reference = count_maxima(full, CPU, level=level)
        assert reference > 100
        assert banded == pytest.approx(reference, rel=0.03), (level, banded, reference)
    # The coarse band alone, counted on its grid: within 10 % of full resolution at
    # every threshold, and closer than the raw samples because each sampled peak's
    # height is refined (a parabola through its neighbours; a sample sits up to half
    # a coarse pixel from its peak, below it).
    refined, plain, truth = 0, 0, 0
    for level in (0.0, 0.5, 1.0, 1.5, 2.0):
        banded = count_band_maxima(None, (2, field[::2, ::2]), CPU, level=level, shape=shape)
        reference = count_maxima(field, CPU, level=level)
        assert banded == pytest.approx(reference, rel=0.1), (level, banded, reference)
        refined += banded
        plain += count_maxima(field[::2, ::2], CPU, level=level)
        truth += reference
    assert abs(refined - truth) < abs(plain - truth)


def test_band_count_of_a_single_band_is_the_plain_count() -> None:
    shape = (128, 96)
    fine = smooth_field(shape, 1.2, seed=3)
    assert count_band_maxima(fine, None, CPU, level=0.5, shape=shape) == count_maxima(
        fine, CPU, level=0.5
    )
    coarse = smooth_field((32, 24), 1.5, seed=4)
    # Level 0 minus: every sampled maximum counts whatever its refined height.
    assert count_band_maxima(None, (4, coarse), CPU, level=-10.0, shape=shape) == count_maxima(
        coarse, CPU, level=-10.0
    )
    with pytest.raises(ValueError, match="at least one band"):
        count_band_maxima(None, None, CPU, level=0.5, shape=shape)


def test_band_count_lets_the_larger_band_win() -> None:
    """A coarse peak under a higher fine one does not count, nor does a fine peak
    under a higher coarse one; each counts where it is the larger."""
    shape = (64, 64)
    fine = np.zeros(shape, np.float32)
    coarse = np.zeros((32, 32), np.float32)
    fine[10, 10] = 2.0  # fine wins here...
    coarse[5, 5] = 1.0  # ...over this coarse peak at (10, 10)
    coarse[20, 20] = 3.0  # coarse wins at (40, 40)...
    fine[41, 40] = 2.5  # ...over this fine peak next to it
    fine[50, 10] = 1.0  # lone fine peak
    coarse[5, 25] = 1.0  # lone coarse peak at (10, 50)
    assert count_band_maxima(fine, (2, coarse), CPU, level=0.5, shape=shape) == 4


def test_band_count_over_interiors_adds_up_to_the_whole() -> None:
    """Native tiling counts each block's interior: the interiors of a partition
    must add up to the count over the whole image."""
    shape = (128, 128)
    fine = smooth_field(shape, 1.5, seed=5)
    coarse = smooth_field((32, 32), 1.5, seed=6)
    total = count_band_maxima(fine, (4, coarse), CPU, level=0.3, shape=shape)
    parts = sum(
        count_band_maxima(fine, (4, coarse), CPU, level=0.3, shape=shape, interior=win)
        for win in ((0, 64, 0, 128), (64, 128, 0, 50), (64, 128, 50, 128))
    )
    assert parts == total


def test_fast_factors_keep_the_finest_level_and_coarse_sigma_resolved() -> None:
    factors = fast_factors(PAPER_SIGMAS, (1024, 1024))
    assert factors[0] == 1
    assert factors == sorted(factors)
    assert max(factors) >= 8
    for s, f in zip(PAPER_SIGMAS, factors, strict=False):
        assert s / f >= MHFD._FAST_MIN_SIGMA or f == 1
    # A grid that does not divide stays at full resolution.
    assert set(fast_factors(PAPER_SIGMAS, (1023, 1024))) == {1}


def test_sparser_noise_sampling_agrees_with_the_default() -> None:
    rng = np.random.default_rng(8)
    img = synth.degrade(synth.neuropil((512, 512), rng=rng), rng=rng, dose=30.0)
    u = (img - img.min()) / (img.max() - img.min())
    assert noise_sigma(u, CPU, subsample=4) == pytest.approx(noise_sigma(u, CPU), rel=0.05)
    with pytest.raises(ValueError, match="step"):
        noise_sigma(u, CPU, subsample=0)


@pytest.mark.parametrize("dose", [10.0, 200.0])
def test_fast_mode_ranks_a_through_focus_series_like_exact(dose: float) -> None:
    """Seven defocus steps on synthetic tissue: fast mode orders them as exact mode
    does, and each count is within 15 % of exact's (or 8 maxima for tiny counts)."""
    rng = np.random.default_rng(12)
    clean = synth.neuropil((512, 512), rng=rng)
    sigmas = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
    ims = synth.through_focus_series(clean, sigmas=sigmas, dose=dose, rng=rng)
    exact = [mhfd(im, backend=CPU) for im in ims]
    fast = [mhfd(im, backend=CPU, mode="fast") for im in ims]
    assert spearmanr(exact, fast)[0] == pytest.approx(1.0)
    assert spearmanr(fast, sigmas)[0] == pytest.approx(-1.0)
    for e, f in zip(exact, fast, strict=True):
        assert abs(e - f) <= max(0.15 * e, 8), (exact, fast)


@pytest.mark.parametrize("sparse_fraction", [0.0, 1.0])
def test_sparse_and_dense_maxima_search_find_what_count_maxima_counts(
    monkeypatch: pytest.MonkeyPatch, sparse_fraction: float
) -> None:
    """Fast mode finds fine maxima by gathering the neighbours of the pixels above the
    threshold (dense 3×3 passes when too many are): both give count_maxima's pixels,
    border pixels included."""
    monkeypatch.setattr(maxima, "_SPARSE_FRACTION", sparse_fraction)
    field = smooth_field((96, 80), 1.0, seed=9)
    field[0, 0] = field[-1, -1] = field[0, -1] = 10.0  # maxima on the border and corners
    for level in (-10.0, 0.5, 2.0):
        ys, xs = maxima._maxima_above(field, level, CPU)
        assert len(ys) == count_maxima(field, CPU, level=level)
        c = maxima.neighbourhood_max(field, CPU)
        assert np.all(field[ys, xs] >= c[ys, xs])
        assert np.all(field[ys, xs] >= level)
    # A strided view (gathered by coordinates, not flat offsets) finds the same pixels.
    view = np.concatenate([field, field], axis=1)[:, ::2]
    assert not view.flags.c_contiguous
    for level in (-10.0, 0.5, 2.0):
        got = maxima._maxima_above(view, level, CPU)
        want = maxima._maxima_above(np.ascontiguousarray(view), level, CPU)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_fast_mode_native_tiles_count_what_one_block_counts() -> None:
    """Native resolution in blocks with a halo: each block's bands are counted over its
    interior only; the blocks add up to about what one untiled block counts."""
    rng = np.random.default_rng(4)
    img = synth.to_uint(synth.degrade(synth.neuropil((300, 340), rng=rng), rng=rng, dose=30.0), 8)
    params = MHFD.params_for("fast")
    untiled = native_mhfd(img, params, backend=CPU, dtype=np.float32, block=4096)
    tiled = native_mhfd(img, params, backend=CPU, dtype=np.float32, block=96)
    exact = native_mhfd(img, MHFD.params_for("default"), backend=CPU, dtype=np.float32)
    assert untiled.count > 100
    # Block grids differ in size, hence in decimation: a little looser than exact
    # mode's 0.5 %.
    assert tiled.count == pytest.approx(untiled.count, rel=0.05)
    assert untiled.count == pytest.approx(exact.count, rel=0.15)


def test_fast_is_the_default_and_default_is_the_old_name_of_exact() -> None:
    """Scores of the two modes must never be mixed: the default (fast) has its own
    name, and a config or calibration that says "default" still gets exact's numbers."""
    rng = np.random.default_rng(5)
    image = synth.to_uint(
        synth.degrade(synth.neuropil((256, 256), rng=rng), rng=rng, dose=30.0, defocus_sigma=1.0),
        16,
    )
    assert DEFAULT_MODE == "fast"
    assert ScoringConfig().mode == "fast"
    served = score_image(image, backend=CPU)
    assert served.mode == "fast"
    assert served.score == score_image(image, backend=CPU, mode="fast").score
    old = mhfd_detail(image, backend=CPU, mode="default")
    exact = mhfd_detail(image, backend=CPU, mode="exact")
    assert (old.count, old.fine, old.thresholds) == (exact.count, exact.fine, exact.thresholds)
    fast = mhfd_detail(image, backend=CPU, mode="fast")
    assert mhfd_detail(image, backend=CPU).count == fast.count
    assert fast.count != exact.count


def test_flat_indices_split_into_rows_and_columns_as_divmod_does() -> None:
    """Rows and columns of flat indices (row, then ``idx − row·w``) are divmod's, from
    the first pixel to the last, for wide and one-pixel rows."""
    for w in (1, 7, 1024):
        idx = np.arange(0, 50 * w, max(1, w // 3), dtype=np.intp)
        ys, xs = maxima._rows_cols(idx, w)
        want_y, want_x = np.divmod(idx, w)
        assert np.array_equal(ys, want_y)
        assert np.array_equal(xs, want_x)
