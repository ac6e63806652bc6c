"""Classic criteria: selectable by name, and each falls with blur."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import CRITERIA, score_image

CPU = get_backend("cpu")


@pytest.fixture(scope="module")
def series() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    clean = synth.neuropil((256, 256), rng=rng)
    return synth.through_focus_series(clean, sigmas=(0.0, 1.0, 2.0, 3.0), dose=None, rng=rng)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_falls_with_blur(series: list[np.ndarray], criterion: str) -> None:
    """Noiseless, up to σ = 3 px: every measure falls with blur. (With noise the classic
    ones fail, and the spectrum slope saturates at stronger blur; see bench/accuracy.py.)"""
    scores = [score_image(im, backend=CPU, criterion=criterion).score for im in series]
    assert all(a > b for a, b in itertools.pairwise(scores)), scores


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_reports_content_and_patches(
    series: list[np.ndarray], criterion: str
) -> None:
    r = score_image(series[0], backend=CPU, criterion=criterion, patch_size=128)
    assert r.criterion == criterion
    assert r.patch_scores is not None
    assert r.patch_scores.shape == (2, 2)
    assert r.content > 0.02


@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c != "mhfd"])
def test_baselines_ignore_detector_gain_and_bit_depth(
    series: list[np.ndarray], criterion: str
) -> None:
    img = series[1]
    s16 = score_image(synth.to_uint(img, 16), backend=CPU, criterion=criterion).score
    sf = score_image(img, backend=CPU, criterion=criterion).score
    assert s16 == pytest.approx(sf, rel=1e-3)
    if criterion != "normalized_variance":  # var/mean scales with gain by definition
        half = score_image(img * 0.5, backend=CPU, criterion=criterion).score
        assert half == pytest.approx(sf, rel=1e-3)


def test_criteria_names_are_the_cli_choices() -> None:
    from focuswatch import cli

    parser = cli.build_parser()
    for name in CRITERIA:
        assert parser.parse_args(["score", "--criterion", name, "x.tif"]).criterion == name
