"""The scale signature (``fine_fraction``): defocus removes fine-scale maxima first,
less tissue removes maxima at every scale, so only defocus moves the fraction."""

from __future__ import annotations

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import mhfd_detail, score_image
from focuswatch.score.mhfd import FINE_SIGMA, PAPER_SIGMAS, fine_levels
from isbi import Slices

CPU = get_backend("cpu")
SLICES = (3, 17, 26)


def test_fine_levels_are_the_paper_levels_up_to_fine_sigma() -> None:
    assert fine_levels(PAPER_SIGMAS) == 3
    assert all(s <= FINE_SIGMA for s in PAPER_SIGMAS[:3])
    assert fine_levels((5.0, 6.0, 7.0)) == 0


@pytest.mark.parametrize("mode", ["default", "fast"])
@pytest.mark.parametrize("dose", [30.0, 200.0])
def test_blur_lowers_fine_fraction_while_less_tissue_keeps_it(
    isbi_slices: Slices, mode: str, dose: float
) -> None:
    """On real EM slices: covering half the tile with flat resin and a σ 2 px defocus
    both cost the count a fifth of its maxima or more (the count alone cannot tell
    them apart; the resin half keeps the noise maxima a 4σ floor lets through at 30
    e/px), but only defocus moves the fine fraction: down by a quarter or more at σ 2
    px and by half at σ 3 px, while the half-resin tile keeps it within 0.06."""
    slices = isbi_slices
    for k in SLICES:
        clean = slices[k]
        rng = np.random.default_rng(k)
        sharp = score_image(synth.degrade(clean, rng=rng, dose=dose), backend=CPU, mode=mode)
        blur2, blur3 = (
            score_image(
                synth.degrade(clean, rng=rng, defocus_sigma=s, dose=dose), backend=CPU, mode=mode
            )
            for s in (2.0, 3.0)
        )
        sparse = clean.copy()
        sparse[:, clean.shape[1] // 2 :] = np.median(clean)
        half = score_image(synth.degrade(sparse, rng=rng, dose=dose), backend=CPU, mode=mode)
        assert sharp.fine_fraction is not None
        assert half.fine_fraction is not None
        assert blur2.fine_fraction is not None
        assert blur3.fine_fraction is not None
        # Both lost a fifth of the maxima or more ...
        assert half.score < 0.8 * sharp.score, (k, half.score, sharp.score)
        assert blur2.score < 0.8 * sharp.score, (k, blur2.score, sharp.score)
        # ... but only defocus moved the signature.
        assert abs(half.fine_fraction - sharp.fine_fraction) < 0.06, (k, half, sharp)
        assert blur2.fine_fraction < 0.75 * sharp.fine_fraction, (k, blur2, sharp)
        assert blur3.fine_fraction < 0.5 * sharp.fine_fraction, (k, blur3, sharp)


def test_patch_fine_fraction_maps_a_blurred_half(isbi_slices: Slices) -> None:
    """Per patch: the blurred half of a tile has the low fractions, the tile's value
    is the pooled one (fine maxima over all maxima)."""
    clean = isbi_slices[8]
    rng = np.random.default_rng(2)
    tile = np.concatenate([clean, clean[:, ::-1]], axis=1)
    left = synth.degrade(tile[:, :512], rng=rng, dose=30.0)
    right = synth.degrade(tile[:, 512:], rng=rng, defocus_sigma=3.0, dose=30.0)
    r = score_image(np.concatenate([left, right], axis=1), backend=CPU, patch_size=512)
    assert r.patch_fine_fraction is not None
    assert r.patch_scores is not None
    sharp, blurred = r.patch_fine_fraction[0]
    assert blurred < 0.6 * sharp
    pooled = float(np.sum(r.patch_fine_fraction * r.patch_scores) / np.sum(r.patch_scores))
    assert r.fine_fraction == pytest.approx(pooled)


def test_fine_fraction_is_none_without_maxima_or_for_other_criteria() -> None:
    flat = np.zeros((64, 64), np.float32)
    flat[0, 0] = 1.0  # not constant, but no structure above the contrast floor
    d = mhfd_detail(synth.degrade(flat, rng=np.random.default_rng(0)), backend=CPU)
    assert d.count == 0
    assert d.fine_fraction is None
    ramp = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    r = score_image(ramp, backend=CPU, criterion="tenengrad")
    assert r.fine_fraction is None
    assert r.patch_fine_fraction is None


def test_native_resolution_fine_fraction_is_the_blocks_pooled(isbi_slices: Slices) -> None:
    clean = isbi_slices[5]
    im = synth.degrade(clean, rng=np.random.default_rng(4), dose=30.0)
    whole = score_image(im, backend=CPU, resolution="native")
    patches = score_image(im, backend=CPU)
    assert whole.fine_fraction is not None
    assert whole.fine_fraction == pytest.approx(patches.fine_fraction, abs=0.02)
