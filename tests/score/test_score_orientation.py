"""The spectrum's orientation (``score.orientation``): astigmatism streaks the image
along one axis, round defocus does not. On real ISBI 2012 slices."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.config import PolicyConfig
from focuswatch.policy import Evidence, decide
from focuswatch.score import ScoreResult, score_image
from focuswatch.score.orientation import BLOCK, MAX_ERROR, orientation, reading, streak_deg
from focuswatch.verdict import VerdictKind
from isbi import Slices

CPU = get_backend("cpu")
CFG = PolicyConfig()
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


def _serial_tile(slices: Slices, k: int, corner: int, **blur: float) -> ScoreResult:
    """Slice ``k`` upsampled ×2 (cubic) as the verdict bench's serial wafer, a 512² crop
    from ``corner``, shot noise at 200 e/px correlated along the scan line (AR(1) pole
    0.45), written as 8 bits and scored at 256 px patches."""
    clean = synth.resample(slices[k], 2.0, order=3)[corner : corner + 512, corner : corner + 512]
    seed = [k, corner, round(10 * blur.get("defocus_sigma", 0.0))]
    img = synth.degrade(
        clean, rng=np.random.default_rng(seed), dose=200.0, noise_pole_x=0.45, **blur
    )
    return score_image(synth.to_uint(img, 8), backend=CPU, patch_size=256)


def _against(now: ScoreResult, past: list[ScoreResult]) -> Evidence:
    """The policy's evidence for ``now`` with ``past`` as its position's earlier sections
    (most recent first)."""

    def grid(r: ScoreResult) -> list[list[float]]:
        assert r.patch_scores is not None
        return r.patch_scores.tolist()

    return Evidence(
        score=now.score,
        patch_scores=grid(now),
        content=now.content,
        fine_fraction=now.fine_fraction,
        orientation=now.orientation,
        spectral=now.spectral,
        history=[p.score for p in past],
        fine_history=[p.fine_fraction for p in past],
        orientation_history=[p.orientation for p in past],
        spectral_history=[p.spectral for p in past],
        patch_history=[grid(p) for p in past],
    )


@pytest.mark.parametrize(("k", "corner"), [(20, 512), (27, 0)])
def test_a_round_blur_under_scan_line_noise_is_defocus_and_astigmatism_is_named(
    isbi_slices: Slices, k: int, corner: int
) -> None:
    """Three sharp sections, then the next one blurred round (σ 3 px) under noise
    correlated along x at 200 e/px: flagged as defocus, not sent to the stigmators
    (scorer revision 6 named both "astigmatic", streaks along x (~5°): the power
    above the floor clipped at 0 is shaped like the scan noise's floor wherever the
    tissue's band is weak). The same section blurred astigmatically (σ 2 px, ×1.5
    along the angle) is still named, the streaks within 10° of the angle."""
    past = [_serial_tile(isbi_slices, s, corner) for s in (k - 1, k - 2, k - 3)]
    blurred = _serial_tile(isbi_slices, k, corner, defocus_sigma=3.0)
    round_blur = decide(_against(blurred, past), cfg=CFG)
    assert round_blur.kind is VerdictKind.OUT_OF_FOCUS
    assert "astigmatic" not in round_blur.reason
    assert "defocus" in round_blur.reason
    for angle in (20.0, 110.0):
        astig = _serial_tile(
            isbi_slices, k, corner, defocus_sigma=2.0, astigmatism=0.5, astig_angle_deg=angle
        )
        v = decide(_against(astig, past), cfg=CFG)
        assert v.kind is VerdictKind.OUT_OF_FOCUS
        m = re.search(r"astigmatic \(streaks along ~(\d+)°", v.reason)
        assert m is not None, v.reason
        assert _angle_gap(float(m.group(1)), angle) <= 10


def test_a_direction_is_not_read_from_noise_alone(isbi_slices: Slices) -> None:
    """Noise alone (a flat image, white or correlated along x) has no signal band to
    read a direction from: its standard error is far over ``MAX_ERROR`` and there is no
    orientation; a sharp slice at the same dose reads one well within it."""
    rng = np.random.default_rng(4)
    for pole in (0.0, 0.45):
        flat = synth.degrade(np.full((256, 256), 0.5), rng=rng, dose=30.0, noise_pole_x=pole)
        read = reading(flat)
        assert read is None or read[1] > 2 * MAX_ERROR
        assert orientation(flat) is None
        sharp = synth.degrade(isbi_slices[14][:256, :256], rng=rng, dose=30.0, noise_pole_x=pole)
        read = reading(sharp)
        assert read is not None
        assert read[1] < MAX_ERROR / 2
        assert orientation(sharp) is not None
