"""bench/intrinsic.py: a section's own blur read from its spectrum, and the truth rule
that measures a tile's blur against the sharpest section its position has seen."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

import intrinsic
import isbi


def gaussian_blur(img: npt.NDArray[np.floating], sigma: float) -> npt.NDArray[np.float64]:
    """A Gaussian blur by its transfer function exp(−2π²σ²f²), exact at any σ: a kernel
    sampled on the pixel grid is not a Gaussian below σ ≈ 0.8 px (at σ 0.4 it keeps
    0.84 of the amplitude at Nyquist, where the true blur keeps 0.45)."""
    a = np.asarray(img, dtype=np.float64)
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.rfftfreq(a.shape[1])[None, :]
    gain = np.exp(-2 * math.pi**2 * sigma**2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(a) * gain, s=a.shape)


def test_a_blur_planted_on_real_sections_is_recovered(isbi_slices: isbi.Slices) -> None:
    sharp = [np.asarray(s, dtype=np.float64) for s in isbi_slices[15:30]]
    planted = {1: 0.4, 4: 0.8, 7: 0.4, 10: 0.8, 13: 0.4}
    slices = [gaussian_blur(s, planted[i]) if i in planted else s for i, s in enumerate(sharp)]
    b = intrinsic.intrinsic_blur(slices)
    for i, sigma in planted.items():
        assert b[i] == pytest.approx(sigma, abs=0.15), (i, sigma, b[i])
    others = [b[i] for i in range(len(slices)) if i not in planted]
    assert max(others) <= 0.2, others


def test_the_isbi_stack_is_blurrier_in_its_first_half(isbi_slices: isbi.Slices) -> None:
    # Measured: slices 0-14 carry about σ 0.6 native px more blur than 15-29.
    b = intrinsic.intrinsic_blur(isbi_slices)
    assert all(0.45 <= x <= 0.75 for x in b[:15]), b[:15]
    assert all(x <= 0.2 for x in b[15:]), b[15:]


def test_a_slice_sharper_than_the_reference_has_no_blur(isbi_slices: isbi.Slices) -> None:
    blurred = [gaussian_blur(s, 1.0) for s in isbi_slices[15:21]]
    b = intrinsic.intrinsic_blur([*blurred, np.asarray(isbi_slices[22], np.float64)])
    assert b[-1] == 0.0
    assert min(b[:-1]) >= 0.0


def test_the_spectrum_is_normalised_and_falls_with_blur(isbi_slices: isbi.Slices) -> None:
    f, p = intrinsic.radial_spectrum(isbi_slices[20])
    _, q = intrinsic.radial_spectrum(gaussian_blur(isbi_slices[20], 1.0))
    assert p.sum() == pytest.approx(1.0)
    assert q.sum() == pytest.approx(1.0)
    assert f[0] > 0
    assert f[-1] < 0.5
    high = f > 0.3
    assert np.all(q[high] < p[high])


def test_one_slice_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="at least two slices"):
        intrinsic.intrinsic_blur([np.zeros((8, 8))])


def test_blur_counts_only_beyond_the_sharpest_section_seen_so_far() -> None:
    # One position; b in native px, scale 2 tile px per native px.
    tiles = [("p", s, 0.0, b) for s, b in enumerate([0.6, 0.0, 0.6, 0.3])]
    got = intrinsic.effective_sigmas(tiles, 2.0)
    assert got == pytest.approx([0.0, 0.0, 1.2, 0.6])


def test_getting_sharper_is_never_a_loss() -> None:
    tiles = [("p", s, 0.0, b) for s, b in enumerate([0.6, 0.5, 0.0, 0.0])]
    assert intrinsic.effective_sigmas(tiles, 2.0) == [0.0, 0.0, 0.0, 0.0]


def test_a_planted_blur_adds_in_quadrature() -> None:
    tiles = [("p", 0, 0.0, 0.0), ("p", 1, 1.5, 0.6)]
    assert intrinsic.effective_sigmas(tiles, 2.0)[1] == pytest.approx(math.hypot(1.5, 1.2))


def test_each_position_has_its_own_history_in_section_order() -> None:
    # Listed out of order: the rule follows the section index, per position.
    tiles = [("a", 1, 0.0, 0.6), ("b", 1, 0.0, 0.6), ("a", 0, 0.0, 0.0), ("b", 2, 0.0, 0.0)]
    got = intrinsic.effective_sigmas(tiles, 2.0)
    assert got == pytest.approx([1.2, 0.0, 0.0, 0.0])
