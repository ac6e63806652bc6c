"""The spectrum's orientation (``score.orientation``): astigmatism streaks the image
along one axis, round defocus does not. On real ISBI 2012 slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import score_image
from focuswatch.score.orientation import BLOCK, orientation, streak_deg
from isbi import Slices

CPU = get_backend("cpu")
SLICES = (2, 14, 27)


def _angle_gap(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def test_streak_direction_is_perpendicular_to_the_kept_frequencies() -> None:
    """x + iy = |z|·e^{2iθ} with θ the frequencies kept: kept along y (θ 90°, z = −1)
    means structure that runs along x (0°); kept along x means streaks along y."""
    assert streak_deg(-1.0, 0.0) == pytest.approx(0.0)
    assert streak_deg(1.0, 0.0) == pytest.approx(90.0)
    assert streak_deg(0.0, -1.0) == pytest.approx(45.0)


def test_lines_along_one_axis_read_as_streaks_along_it() -> None:
    """Synthetic check of the convention: stripes that run along x (rows constant)
    are streaks along 0°, stripes along y along 90°; strength near 1."""
    y = np.arange(256)[:, None] * np.ones((1, 256))
    along_x = np.sin(2 * math.pi * y / 7.0)
    o = orientation(along_x)
    assert o is not None
    assert o.strength > 0.9
    assert _angle_gap(o.streak_deg, 0.0) < 3
    o = orientation(along_x.T)
    assert o is not None
    assert _angle_gap(o.streak_deg, 90.0) < 3


def test_no_orientation_for_what_has_no_signal_band() -> None:
    assert orientation(np.ones((BLOCK - 1, 512))) is None
    assert orientation(np.zeros((256, 256))) is None


@pytest.mark.parametrize("dose", [8.0, 30.0, 200.0])
@pytest.mark.parametrize("angle", [30.0, 120.0])
def test_astigmatism_shows_its_streak_direction_round_blur_does_not(
    isbi_slices: Slices, dose: float, angle: float
) -> None:
    """Astigmatic blur (σ 2 px, ×1.5 along the angle, ×0.5 across) turns the spectrum:
    strength ≥ 0.2 and the streaks read within 10° of the angle; sharp and round-blurred
    tiles of the same slice stay below 0.15 (white shot noise: nothing turns them)."""
    slices = isbi_slices
    for k in SLICES:
        rng = np.random.default_rng([k, int(dose)])
        clean = slices[k]
        astig = synth.degrade(
            clean, rng=rng, defocus_sigma=2.0, astigmatism=0.5, astig_angle_deg=angle, dose=dose
        )
        result = score_image(astig, backend=CPU)
        assert result.orientation is not None
        o = orientation(astig)
        assert o is not None
        assert o.strength >= 0.2
        assert _angle_gap(o.streak_deg, angle) <= 10
        for sigma in (0.0, 2.0):
            plain = orientation(synth.degrade(clean, rng=rng, defocus_sigma=sigma, dose=dose))
            assert plain is not None
            assert plain.strength < 0.15


def test_scan_line_noise_is_not_read_as_structure(isbi_slices: Slices) -> None:
    """Noise correlated along x (AR(1) pole 0.5) has a spectrum of its own shape; the
    separable noise floor takes it out, so a round σ 1.5 px blur at 30 e/px does not
    look streaked along x (strength < 0.22; ~0.27 without the floor's shape)."""
    slices = isbi_slices
    for k in SLICES:
        rng = np.random.default_rng(k)
        img = synth.degrade(slices[k], rng=rng, defocus_sigma=1.5, dose=30.0, noise_pole_x=0.5)
        o = orientation(img)
        assert o is not None
        assert o.strength < 0.22
