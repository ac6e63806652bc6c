"""Policy: scores in context become verdicts; invariants checked with Hypothesis."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focuswatch import policy
from focuswatch.config import PolicyConfig
from focuswatch.errors import ConfigError
from focuswatch.policy import Evidence, decide, severity
from focuswatch.verdict import VerdictKind, format_score

CFG = PolicyConfig()

scores = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
contents = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
score_lists = st.lists(scores, max_size=12)
patch_maps = st.one_of(
    st.none(),
    st.integers(1, 3).flatmap(
        lambda cols: st.lists(st.lists(scores, min_size=cols, max_size=cols), max_size=3)
    ),
)
patch_histories = st.lists(patch_maps, max_size=4)
configs = st.builds(
    PolicyConfig,
    history_sections=st.integers(1, 20),
    drop_ratio=st.floats(0.05, 0.95),
    section_drop_ratio=st.floats(0.05, 0.95),
    min_score=st.floats(0.0, 1000.0),
    empty_contrast=st.floats(0.001, 0.2),
    sparse_contrast=st.floats(0.2, 0.6),
    min_baseline=st.floats(0.0, 100.0),
    partial_patch_drop=st.floats(0.05, 0.95),
    partial_min_patches=st.integers(1, 5),
)


class Linear:
    """A real (if simple) defocus model: 1 µm per 10 % of score lost."""

    def defocus_um(self, score: float, baseline: float) -> float | None:
        return max(0.0, 10.0 * (1.0 - score / baseline))


def test_drop_against_history_is_out_of_focus_with_a_readable_reason() -> None:
    """A tile far below its position's history is out of focus; the reason says why."""
    ev = Evidence(score=140, patch_scores=None, content=0.3, history=[420, 400, 430, 410, 450, 10])
    v = decide(ev, cfg=CFG, calibration=Linear())
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert v.baseline == 420  # median of the first 5 (most recent); the 6th is too old
    assert v.reason == (
        "score 140 is 67 % below the median of this tile position over the last 5 sections "
        "(420); estimated 6.7 µm out of focus"
    )
    assert v.defocus_um == pytest.approx(6.67, abs=0.01)


def test_history_wins_over_section_peers() -> None:
    """With history, the position's own past is the baseline, not other positions."""
    ev = Evidence(
        score=300, patch_scores=None, content=0.3, history=[310, 290], section_scores=[5000] * 8
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.IN_FOCUS
    assert v.baseline == 300


def test_section_peers_are_the_baseline_without_history() -> None:
    """The first time a position is seen, the section's other tiles are the baseline."""
    cfg = dataclasses.replace(CFG, section_drop_ratio=0.6)
    blurred = decide(
        Evidence(score=300, patch_scores=None, content=0.3, section_scores=[1000] * 8), cfg=cfg
    )
    fine = decide(
        Evidence(score=500, patch_scores=None, content=0.3, section_scores=[1000] * 8), cfg=cfg
    )
    assert blurred.kind is VerdictKind.OUT_OF_FOCUS
    assert "8 other tiles of this section" in blurred.reason
    assert fine.kind is VerdictKind.IN_FOCUS


def test_first_tile_ever_is_not_judged_and_only_the_floor_alerts() -> None:
    """No history and no peers: uncertain (never passed as in focus), min_score alerts."""
    cfg = dataclasses.replace(CFG, min_score=50)
    assert decide(Evidence(score=49, patch_scores=None, content=0.3), cfg=cfg).kind is (
        VerdictKind.OUT_OF_FOCUS
    )
    v = decide(Evidence(score=51, patch_scores=None, content=0.3), cfg=cfg)
    assert v.kind is VerdictKind.UNCERTAIN
    assert not v.kind.needs_retake
    assert "not judged, no earlier sections" in v.reason


def test_low_content_is_empty_whatever_the_score() -> None:
    """Resin or a hole is empty, not out of focus, even with a terrible score."""
    v = decide(Evidence(score=0, patch_scores=None, content=0.001, history=[500]), cfg=CFG)
    assert v.kind is VerdictKind.EMPTY
    assert not v.kind.needs_retake


USUAL = [[100.0, 300.0, 100.0], [40.0, 200.0, 0.0]]  # tissue, dense tissue, resin


def test_a_region_that_lost_its_score_is_partly_out_of_focus() -> None:
    """A wrinkle: the tile score is fine but one patch lost most of its usual score."""
    now = [[110.0, 330.0, 105.0], [44.0, 60.0, 0.0]]
    ev = Evidence(520, now, 0.3, history=[500], patch_history=[USUAL, USUAL])
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.PARTLY_OUT_OF_FOCUS
    assert "1 of 6 patches" in v.reason
    assert "r1-c1" in v.reason


def test_patches_that_differ_in_tissue_are_not_a_region() -> None:
    """Resin and sparse patches score low in every section: that is not blur."""
    now = [[95.0, 290.0, 104.0], [38.0, 210.0, 0.0]]
    ev = Evidence(520, now, 0.3, history=[500], patch_history=[USUAL])
    assert decide(ev, cfg=CFG).kind is VerdictKind.IN_FOCUS
    no_history = Evidence(520, USUAL, 0.3, history=[500])
    assert decide(no_history, cfg=CFG).kind is VerdictKind.IN_FOCUS


def test_too_few_patches_never_make_a_region() -> None:
    """Two patches cannot say which is the odd one out: no partial verdict."""
    ev = Evidence(520, [[100.0, 1.0]], 0.3, history=[500], patch_history=[[[100.0, 100.0]]])
    assert decide(ev, cfg=CFG).kind is VerdictKind.IN_FOCUS


def test_a_mostly_resin_tile_is_not_compared_with_other_positions() -> None:
    """Sparse tissue scores low however sharp: peers are no baseline for it."""
    sparse = Evidence(score=1.5, patch_scores=None, content=0.025, section_scores=[208, 220])
    v = decide(sparse, cfg=CFG)
    assert v.kind is VerdictKind.UNCERTAIN
    assert "too little tissue" in v.reason
    dense = dataclasses.replace(sparse, content=0.05)
    assert decide(dense, cfg=CFG).kind is VerdictKind.OUT_OF_FOCUS


def test_against_peers_the_best_patch_speaks_for_a_half_resin_tile() -> None:
    """Half resin, half sharp tissue is fine; blur everywhere is not."""
    peers = [211.0, 218.0, 227.0, 182.0]
    half_resin = Evidence(88.0, [[141.0, 1.0], [217.0, 35.0]], 0.05, section_scores=peers)
    assert decide(half_resin, cfg=CFG).kind is VerdictKind.IN_FOCUS
    blurred = Evidence(38.5, [[74.0, 58.0], [2.0, 19.0]], 0.06, section_scores=peers)
    v = decide(blurred, cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert v.reason.startswith("score 38.5, best patch 74, is 66 % below the median of 4 other")


def test_a_patch_that_changed_for_good_alerts_once() -> None:
    """Tissue that changes for good drops one patch once; the next section accepts it."""
    usual = [[210.0, 220.0], [350.0, 200.0]]
    changed = [[205.0, 74.0], [311.0, 204.0]]
    first = Evidence(204.0, changed, 0.06, history=[220.0] * 5, patch_history=[usual] * 5)
    assert decide(first, cfg=CFG).kind is VerdictKind.PARTLY_OUT_OF_FOCUS
    again = [changed, *[usual] * 4]
    second = Evidence(230.0, [[213.0, 72.0], [365.0, 247.0]], 0.06, [220.0] * 5, [], again)
    assert decide(second, cfg=CFG).kind is VerdictKind.IN_FOCUS


def test_a_featureless_baseline_is_not_used() -> None:
    """A position whose history has ~no features cannot say a tile lost features."""
    v = decide(Evidence(score=0.0, patch_scores=None, content=0.025, history=[1.5]), cfg=CFG)
    assert v.kind is VerdictKind.UNCERTAIN
    assert "score 0" in v.reason


def test_nan_score_is_unreadable() -> None:
    """A score that is not a number is reported, not compared."""
    v = decide(Evidence(score=float("nan"), patch_scores=None, content=0.3), cfg=CFG)
    assert v.kind is VerdictKind.UNREADABLE


def test_slow_drift_never_alerts() -> None:
    """Content drifting 1 % per section for 300 sections: the rolling median follows."""
    history: list[float] = []
    score = 1000.0
    for i in range(300):
        v = decide(Evidence(score=score, patch_scores=None, content=0.3, history=history), cfg=CFG)
        assert v.kind is (VerdictKind.UNCERTAIN if i == 0 else VerdictKind.IN_FOCUS)
        history = [score, *history][: CFG.history_sections]
        score *= 0.99
    assert score < 100  # it really did drift by an order of magnitude


def test_format_score() -> None:
    """Counts read as integers with thin grouping; small criteria values keep 3 digits."""
    assert format_score(140.0) == "140"
    assert format_score(12345.4) == "12 345"
    assert format_score(0.001234) == "0.00123"


@given(
    cfg=configs,
    a=scores,
    b=scores,
    content=contents,
    patches=patch_maps,
    history=score_lists,
    peers=score_lists,
    maps=patch_histories,
)
@settings(max_examples=300, deadline=None)
def test_sharper_twin_never_gets_a_worse_verdict(
    *,
    cfg: PolicyConfig,
    a: float,
    b: float,
    content: float,
    patches: list[list[float]] | None,
    history: list[float],
    peers: list[float],
    maps: list[list[list[float]] | None],
) -> None:
    """Monotonic: same context, higher score → a verdict no more severe."""
    low, high = sorted((a, b))
    blurry = decide(Evidence(low, patches, content, history, peers, maps), cfg=cfg)
    sharp = decide(Evidence(high, patches, content, history, peers, maps), cfg=cfg)
    assert severity(sharp.kind) <= severity(blurry.kind)


@given(
    cfg=configs,
    a=scores,
    b=scores,
    content=contents,
    patches=patch_maps,
    history=score_lists,
    peers=score_lists,
)
@settings(max_examples=200, deadline=None)
def test_empty_depends_on_content_alone(
    *,
    cfg: PolicyConfig,
    a: float,
    b: float,
    content: float,
    patches: list[list[float]] | None,
    history: list[float],
    peers: list[float],
) -> None:
    """Whether a tile is empty never depends on its score or its context."""
    va = decide(Evidence(a, patches, content, history, peers), cfg=cfg)
    vb = decide(Evidence(b, None, content, [], []), cfg=cfg)
    assert (va.kind is VerdictKind.EMPTY) == (vb.kind is VerdictKind.EMPTY)
    assert (va.kind is VerdictKind.EMPTY) == (content < cfg.empty_contrast)


@given(cfg=configs, score=scores, content=contents, patches=patch_maps)
@settings(max_examples=200, deadline=None)
def test_no_context_never_alerts_above_the_floor(
    *, cfg: PolicyConfig, score: float, content: float, patches: list[list[float]] | None
) -> None:
    """First section, first tile: above min_score there is nothing to alert on."""
    v = decide(Evidence(score, patches, content), cfg=cfg)
    if score >= cfg.min_score:
        assert not v.kind.needs_retake


@given(
    cfg=configs,
    score=scores,
    content=contents,
    patches=patch_maps,
    history=score_lists,
    peers=score_lists,
    maps=patch_histories,
)
@settings(max_examples=200, deadline=None)
def test_reason_is_never_empty_and_names_the_score(
    *,
    cfg: PolicyConfig,
    score: float,
    content: float,
    patches: list[list[float]] | None,
    history: list[float],
    peers: list[float],
    maps: list[list[list[float]] | None],
) -> None:
    """Every verdict says in words what the score was."""
    ev = Evidence(score, patches, content, history, peers, maps)
    v = decide(ev, cfg=cfg, calibration=Linear())
    assert f"score {format_score(score)}" in v.reason


def test_no_calibration_configured_gives_none() -> None:
    """Without policy.calibration there is no defocus estimate, and no error."""
    assert policy.load_calibration(CFG) is None


def test_a_saved_calibration_estimates_defocus_in_the_reason(tmp_path: Path) -> None:
    """policy.calibration loads a real calibration file; the reason says how far out."""
    from focuswatch.calibrate import Calibration

    path = tmp_path / "calibration.json"
    Calibration(best_focus_um=0.0, slope_per_um=-0.5, intercept=6.0, r=-0.97, n=9).save(path)
    model = policy.load_calibration(dataclasses.replace(CFG, calibration=path))
    assert model is not None
    v = decide(Evidence(140, None, 0.3, history=[420] * 5), cfg=CFG, calibration=model)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert v.defocus_um is not None
    assert f"estimated {v.defocus_um:.1f} µm out of focus" in v.reason


def test_unreadable_calibration_is_a_config_error_with_key_path(tmp_path: Path) -> None:
    """A calibration file that cannot be read is reported at 'policy.calibration'."""
    bad = tmp_path / "calibration.json"
    bad.write_text(json.dumps({"not": "a calibration"}))
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(ConfigError, match=r"at 'policy\.calibration'"):
            policy.load_calibration(dataclasses.replace(CFG, calibration=path))


fines = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)
kinds_of_past = st.sampled_from([k.value for k in VerdictKind if k is not VerdictKind.UNREADABLE])


@given(
    cfg=configs,
    a=fines,
    b=fines,
    score=scores,
    content=contents,
    past=st.lists(st.tuples(scores, fines, kinds_of_past), max_size=8),
    peers=st.lists(st.tuples(scores, fines), max_size=6),
)
@settings(max_examples=300, deadline=None)
def test_losing_fine_scale_features_never_gets_a_milder_verdict(
    *,
    cfg: PolicyConfig,
    a: float,
    b: float,
    score: float,
    content: float,
    past: list[tuple[float, float, str]],
    peers: list[tuple[float, float]],
) -> None:
    """Monotonic in the scale signature: same score and context, a lower fine-scale
    fraction (more defocus) never gives a less severe verdict."""
    low, high = sorted((a, b))

    def ev(fine: float) -> Evidence:
        return Evidence(
            score,
            None,
            content,
            history=[s for s, _, _ in past],
            section_scores=[s for s, _ in peers],
            history_kinds=[k for _, _, k in past],
            fine_fraction=fine,
            fine_history=[f for _, f, _ in past],
            section_fine=[f for _, f in peers],
        )

    blurry, sharp = decide(ev(low), cfg=cfg), decide(ev(high), cfg=cfg)
    assert severity(sharp.kind) <= severity(blurry.kind)


def test_fewer_features_with_the_fine_fraction_held_is_less_tissue_not_defocus() -> None:
    """Issue 10b: the reason tells less tissue from defocus."""

    def ev(fine: float) -> Evidence:
        return Evidence(156.0, None, 0.2, [400.0] * 5, fine_fraction=fine, fine_history=[0.7] * 5)

    less = decide(ev(0.69), cfg=CFG)
    assert less.kind is VerdictKind.IN_FOCUS
    assert "fewer features at every scale, less tissue here" in less.reason
    blur = decide(ev(0.5), cfg=CFG)
    assert blur.kind is VerdictKind.OUT_OF_FOCUS
    assert "fine-scale features lost, defocus" in blur.reason


def test_a_lower_count_with_fine_detail_and_signature_held_is_less_tissue() -> None:
    """A tile of one patch (no median over patches to steady its count) that kept its
    spectral ratio and its fine fraction but counts half its usual features has less
    tissue, not less focus (bench/verdicts.py at 1024 px patches, seed 3: a sharp
    r0-c0 in section 8, score 454 against 911, ratio 0.199 against 0.19, was "a slow
    drift"). A blur takes the ratio down and is still flagged by it."""

    def ev(spectral: float) -> Evidence:
        return Evidence(
            180.0,
            None,
            0.2,
            [400.0] * 5,
            fine_fraction=0.69,
            fine_history=[0.7] * 5,
            spectral=spectral,
            spectral_history=[0.2] * 5,
        )

    less = decide(ev(0.2), cfg=CFG)
    assert less.kind is VerdictKind.IN_FOCUS
    assert "fewer features at every scale, less tissue here" in less.reason
    blur = decide(ev(0.08), cfg=CFG)
    assert blur.kind is VerdictKind.OUT_OF_FOCUS
    assert "fine detail lost" in blur.reason


def test_a_tile_whose_every_feature_is_coarse_is_out_of_focus() -> None:
    """A fine-scale fraction of 0 (σ 3 blur at 200 e/px on ISBI) is the signature of
    defocus, not a missing one."""
    v = decide(
        Evidence(
            45.5,
            [[47.0, 59.0], [44.0, 35.0]],
            0.1,
            section_scores=[185.0, 161.0, 173.0, 140.0],
            fine_fraction=0.0,
            section_fine=[0.57, 0.56, 0.59, 0.58],
        ),
        cfg=CFG,
    )
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "fine-scale features lost" in v.reason


# --- first sections, blurred signatures, astigmatism (issue 10 items 2 and g) -------


def _tissue(fine: float, score: float = 300, **context: Any) -> Evidence:
    """A tile with tissue, its fine-scale fraction, and what it is compared with."""
    return Evidence(score=score, patch_scores=None, content=0.3, fine_fraction=fine, **context)


#: Three sharp sections after a position's first one.
NEXT: dict[str, Any] = {"later": [400, 380, 420], "later_fine": [0.80, 0.79, 0.81]}


def _peers_like(fine: float) -> dict[str, Any]:
    return {"section_scores": [310, 290, 305], "section_fine": [fine, fine + 0.01, fine - 0.01]}


def test_a_first_section_is_judged_against_its_next_sections() -> None:
    """No past here: the next sections are the reference. Their fine fraction 0.80 and
    this tile's 0.55 (31 % lower) is defocus, whatever the section's other tiles show
    (blurred with it, they look alike)."""
    v = decide(_tissue(0.55, 200, **_peers_like(0.55), **NEXT), cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "this tile position over the next 3 sections" in v.reason
    assert "fine-scale features lost" in v.reason


def test_a_first_section_like_its_next_sections_is_in_focus() -> None:
    v = decide(_tissue(0.79, 390, **NEXT), cfg=CFG)
    assert v.kind is VerdictKind.IN_FOCUS
    assert "next 3 sections" in v.reason


def test_next_sections_do_not_count_once_there_is_a_past() -> None:
    """Only a position's first section looks ahead: with history, the past decides."""
    ev = _tissue(0.60, 390, history=[400, 410], fine_history=[0.61, 0.60], **NEXT)
    assert decide(ev, cfg=CFG).kind is VerdictKind.IN_FOCUS


@pytest.mark.parametrize("fine", [0.30, 0.45])
def test_a_blurred_signature_with_nothing_to_compare_is_uncertain_not_in_focus(
    fine: float,
) -> None:
    """The first tile of a wafer, or one whose peers are all blurred with it: sharp
    tissue keeps half its features at fine scales or more, so a lower fraction is
    never passed as in focus (it would become the baseline); it is uncertain, and the
    reason says why."""
    for ev in (_tissue(fine), _tissue(fine, **_peers_like(fine))):
        v = decide(ev, cfg=CFG)
        assert v.kind is VerdictKind.UNCERTAIN
        assert "looks blurred" in v.reason


@pytest.mark.parametrize(
    ("fine", "score", "empty_fine", "empty_score"),
    [(0.80, 210, 0.996, 267), (0.72, 700, 0.85, 20)],
)
def test_an_empty_sections_fine_fraction_is_noise_not_a_reference(
    fine: float, score: float, empty_fine: float, empty_score: float
) -> None:
    """Resin at this position in the section before (judged empty): its few features
    are noise, nearly all at fine scales (fraction 1.0), or a handful that happen to
    be 85 % fine (bright resin at 30 e/px, x-correlated noise: 0.75-0.92 on 8-26
    maxima; a share of 20 features is no reference for 700). Sharp tissue here keeps
    its fraction like its next sections; it is in focus, not "fine-scale features
    lost" (found on a wafer: one empty first section flagged its position 14 sections
    running)."""
    ev = _tissue(
        fine,
        score,
        history=[empty_score],
        history_kinds=[str(VerdictKind.EMPTY)],
        fine_history=[empty_fine],
        **_peers_like(fine),
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.IN_FOCUS, v.reason


def test_a_fine_fraction_drop_must_exceed_the_positions_own_scatter() -> None:
    """A position whose fine fraction moves by ~0.06 from section to section by itself
    (2-D correlated noise at 30 e/px: the floor keeps only the tissue's strongest fine
    features): a tile 17 % below its reference is within that, not defocus; 45 % below
    still is. Where the fraction holds steady (white noise) the same 17 % is defocus."""
    wobbly = [0.70, 0.62, 0.74, 0.66, 0.75, 0.64, 0.72]
    steady = [0.70, 0.71, 0.70, 0.72, 0.71, 0.70, 0.71]
    scores = [400, 410, 395, 405, 400, 398, 402]

    def tile(fine: float, history: list[float]) -> Evidence:
        return _tissue(fine, 400, history=scores, fine_history=history)

    ref = max(sorted(wobbly)[4], statistics.median(wobbly[:5]))  # the guarded reference
    assert decide(tile(0.83 * ref, wobbly), cfg=CFG).kind is VerdictKind.IN_FOCUS
    assert decide(tile(0.55 * ref, wobbly), cfg=CFG).kind is VerdictKind.OUT_OF_FOCUS
    blurred = decide(tile(0.83 * 0.715, steady), cfg=CFG)
    assert blurred.kind is VerdictKind.OUT_OF_FOCUS
    assert "fine-scale features lost" in blurred.reason


def test_a_sharp_signature_against_sharp_peers_is_in_focus() -> None:
    assert decide(_tissue(0.8, **_peers_like(0.8)), cfg=CFG).kind is VerdictKind.IN_FOCUS


def _blurred_against_history(orientation: tuple[float, float] | None) -> Evidence:
    return _tissue(
        0.55,
        250,
        history=[400, 410, 395],
        fine_history=[0.80, 0.81, 0.79],
        orientation=orientation,
        orientation_history=[(0.05, 0.02), (0.06, 0.0), (0.04, 0.01)],
    )


def test_astigmatism_is_named_with_its_streak_direction() -> None:
    """The orientation turned by 0.37 against the position's history (which varies by
    0.02): streaks along 30° (x + iy ∝ −e^{2i·30°}), so "check stigmation"."""
    turn = 0.37
    ox = 0.05 - turn * math.cos(math.radians(60))
    oy = 0.01 - turn * math.sin(math.radians(60))
    v = decide(_blurred_against_history((ox, oy)), cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "astigmatic (streaks along ~30°" in v.reason
    assert "check stigmation" in v.reason


def test_an_anisotropic_position_blurred_round_is_defocus_not_astigmatism() -> None:
    """Tissue with its own orientation (|z| 0.3 every section) blurred round keeps it:
    against its history nothing turned, so the reason stays defocus."""
    ev = dataclasses.replace(
        _blurred_against_history((0.31, 0.02)),
        orientation_history=[(0.30, 0.0), (0.32, 0.03), (0.29, 0.01)],
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "astigmatic" not in v.reason
    assert "fine-scale features lost, defocus" in v.reason


def test_without_orientation_the_reason_is_defocus() -> None:
    v = decide(_blurred_against_history(None), cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "defocus" in v.reason
    assert "astigmatic" not in v.reason


def test_an_orientation_change_alone_is_not_an_alert() -> None:
    """Tissue can turn from one section to the next: with the fine fraction held, a
    changed orientation is no verdict."""
    ev = dataclasses.replace(_blurred_against_history((-0.3, -0.3)), fine_fraction=0.79)
    assert decide(ev, cfg=CFG).kind is VerdictKind.IN_FOCUS


def _four_patches(fine: float, count: float) -> Evidence:
    """A sharp tile (history agrees) whose patch r0-c0 has ``fine`` and ``count``."""
    return Evidence(
        score=60,
        patch_scores=[[count, 60.0], [62.0, 58.0]],
        content=0.3,
        fine_fraction=0.78,
        history=[60, 61, 59],
        fine_history=[0.80, 0.79, 0.80],
        patch_fine=[[fine, 0.80], [0.81, 0.79]],
    )


def test_a_sharp_patch_within_the_tissues_own_spread_is_not_a_wrinkle() -> None:
    """Measured on small tiles (384² px, 192 px patches of ~60 features): a sharp
    patch of smooth tissue read 32 % below its tile's typical fraction, 5 binomial
    standard errors, and was taken for a wrinkle. With the tissue's own spread
    between patches (6 %) it is 3.6: in focus. A σ 3 px wrinkle (0.25, fewer
    features) stays far beyond it."""
    assert decide(_four_patches(0.544, 60.0), cfg=CFG).kind is VerdictKind.IN_FOCUS
    wrinkle = decide(_four_patches(0.25, 40.0), cfg=CFG)
    assert wrinkle.kind is VerdictKind.PARTLY_OUT_OF_FOCUS
    assert "r0-c0" in wrinkle.reason


def _spectral_patches(ratio: float, fine: float = 0.66) -> Evidence:
    """A sharp tile (history and fine fractions agree) whose patch r0-c0 has the
    spectral ratio ``ratio`` against 0.30 in the others, and the fine fraction ``fine``
    against 0.80."""
    return dataclasses.replace(
        _four_patches(fine, 60.0), patch_spectral=[[ratio, 0.30], [0.31, 0.29]]
    )


def test_a_patch_that_lost_its_high_band_is_a_wrinkle() -> None:
    """A σ 3 px wrinkle under noise correlated in 2-D kept most of its fine fraction
    (0.66 against 0.80: its fine maxima are mostly noise) but its high band fell to
    0.40 of the tile's typical patch or less; sharp patches of ISBI tiles stay above
    0.52. A ratio that low with the fine fraction kept is texture (ISBI repeated 2×2
    under noise along x), not a wrinkle."""
    v = decide(_spectral_patches(0.12), cfg=CFG)
    assert v.kind is VerdictKind.PARTLY_OUT_OF_FOCUS, v.reason
    assert "r0-c0" in v.reason
    assert "fine detail" in v.reason
    assert decide(_spectral_patches(0.17), cfg=CFG).kind is VerdictKind.IN_FOCUS
    assert decide(_spectral_patches(math.nan), cfg=CFG).kind is VerdictKind.IN_FOCUS
    assert decide(_spectral_patches(0.12, fine=0.75), cfg=CFG).kind is VerdictKind.IN_FOCUS
    # With no fine signature to agree (review9), the ratio alone is no wrinkle.
    alone = dataclasses.replace(_spectral_patches(0.12), patch_fine=None)
    assert decide(alone, cfg=CFG).kind is VerdictKind.IN_FOCUS


@pytest.mark.parametrize("back", [1, 2])
def test_a_patch_as_weak_in_the_positions_last_sections_is_the_tissue_not_a_wrinkle(
    back: int,
) -> None:
    """``focuswatch demo``'s wafers: a patch at the section's edge (resin and a soft rim)
    reads as weak against its tile in most sections. Weak the same way in one of the
    position's last two sections with a map (``back`` sections ago, the others sharp
    all over), it is the tissue there: in focus, where a first time is a wrinkle. Three
    sections before with sharp ones between no longer counts: two wrinkles on one patch
    (bench/verdicts.py plants them all on the same quarter) are two."""
    now = _spectral_patches(0.12)
    weak_map = now.patch_scores
    sharp = ([[60.0, 60.0], [62.0, 58.0]], [[0.80, 0.80], [0.81, 0.79]], [[0.30] * 2] * 2)
    edge = (weak_map, now.patch_fine, now.patch_spectral)
    before = [sharp] * (back - 1) + [edge] + [sharp] * (2 - back)
    ev = dataclasses.replace(
        now,
        history=[60, 61],
        patch_history=[m for m, _, _ in before],
        patch_fine_history=[f for _, f, _ in before],
        patch_spectral_history=[r for _, _, r in before],
        history_kinds=["partly_out_of_focus" if b is edge else "in_focus" for b in before],
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.IN_FOCUS, v.reason
    first = decide(dataclasses.replace(ev, patch_spectral_history=[sharp[2]] * 2), cfg=CFG)
    assert first.kind is VerdictKind.PARTLY_OUT_OF_FOCUS, first.reason
    long_ago = dataclasses.replace(
        ev,
        history=[60, 61, 59],
        patch_history=[sharp[0]] * 2 + [weak_map],
        patch_fine_history=[sharp[1]] * 2 + [now.patch_fine],
        patch_spectral_history=[sharp[2]] * 2 + [now.patch_spectral],
        history_kinds=["in_focus"] * 2 + ["partly_out_of_focus"],
    )
    assert decide(long_ago, cfg=CFG).kind is VerdictKind.PARTLY_OUT_OF_FOCUS


def test_a_reason_names_what_each_rule_saw() -> None:
    """One patch lost its fine-scale features (its high band fell too, short of the
    spectral rule: not held), another its high band: the reason says both, not one
    rule's words for both patches."""
    ev = dataclasses.replace(
        _four_patches(0.25, 40.0),
        patch_fine=[[0.25, 0.80], [0.81, 0.55]],
        patch_spectral=[[0.20, 0.30], [0.31, 0.05]],
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.PARTLY_OUT_OF_FOCUS, v.reason
    assert "2 of 4 patches" in v.reason
    assert "lost their fine-scale features" in v.reason
    assert ", or lost their fine detail" in v.reason


def test_a_patch_spectrum_needs_tissue_in_the_rest_of_the_tile() -> None:
    """With fewer than three patches that have a ratio, none is the odd one out."""
    ev = dataclasses.replace(
        _four_patches(0.80, 60.0), patch_spectral=[[0.02, math.nan], [math.nan, 0.30]]
    )
    assert decide(ev, cfg=CFG).kind is VerdictKind.IN_FOCUS


def test_a_fine_fraction_of_a_handful_of_features_is_sampling_not_defocus() -> None:
    """Noise correlated in 2-D leaves a handful of fine features: 9 % of 60 against
    16 % is within the share's sampling scatter (3 binomial standard errors ≈ 0.14
    there), not a blur; the same loss over thousands of features is one."""

    def ev(fine: float, score: float) -> Evidence:
        return Evidence(score, None, 0.2, [score] * 5, fine_fraction=fine, fine_history=[0.16] * 5)

    few = decide(ev(0.09, 60.0), cfg=CFG)
    assert few.kind is VerdictKind.IN_FOCUS, few.reason
    assert decide(ev(0.09, 6000.0), cfg=CFG).kind is VerdictKind.OUT_OF_FOCUS


def test_a_tile_sharper_than_its_flagged_past_is_not_flagged_for_being_sharper() -> None:
    """A sparse position flagged against its peers in its last sections: a tile whose
    high-to-mid band ratio is now what its peers' is (0.45, its past 0.15) has not
    lost detail; it is left for a person to check, never flagged for gaining it."""
    peers = [2500.0] * 8
    ev = Evidence(
        score=850.0,
        patch_scores=None,
        content=0.15,
        history=[850.0] * 5,
        history_kinds=["out_of_focus"] * 5,
        fine_fraction=0.58,
        fine_history=[0.58] * 5,
        section_scores=peers,
        section_fine=[0.72] * 8,
        section_kinds=["in_focus"] * 8,
        spectral=0.45,
        spectral_history=[0.15] * 5,
        section_spectral=[0.45] * 8,
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.UNCERTAIN, v.reason


def test_the_sampling_check_weighs_the_references_count_not_only_the_blurred_tiles() -> None:
    """A blur lowers the tile's own count (100 features before, 55 now) and with it
    the weight of its fine fraction; against the reference's count 0.54 against 0.70
    is well beyond sampling, and the tile is out of focus."""
    ev = Evidence(55.0, None, 0.2, [100.0] * 5, fine_fraction=0.54, fine_history=[0.70] * 5)
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
    assert "fine-scale features lost" in v.reason


def test_a_fine_fraction_fall_with_the_spectrum_held_is_sampling_not_blur() -> None:
    """2-D correlated noise at 30 e/px leaves ~150 features on a 512² tile: a sharp tile's
    fine fraction falls 20 % by chance while its spectral ratio, summed over thousands
    of frequency bins, keeps its five sections' level: in focus. The same fall with the
    ratio down by a quarter (short of the spectral rule's own 36 %) is defocus, and a
    count that fell by half is out of focus whatever the spectrum says."""

    def tile(spectral: float, score: float = 300.0) -> Evidence:
        return _tissue(
            0.56,
            score,
            history=[300.0] * 5,
            fine_history=[0.70] * 5,
            spectral=spectral,
            spectral_history=[0.30] * 5,
        )

    held = decide(tile(0.29), cfg=CFG)
    assert held.kind is VerdictKind.IN_FOCUS, held.reason
    fell = decide(tile(0.225), cfg=CFG)
    assert fell.kind is VerdictKind.OUT_OF_FOCUS, fell.reason
    assert "fine-scale features lost" in fell.reason
    halved = decide(tile(0.29, score=140.0), cfg=CFG)
    assert halved.kind is VerdictKind.OUT_OF_FOCUS, halved.reason


def test_against_two_sections_the_spectrum_holds_within_its_own_scatter() -> None:
    """A second or third section (one or two before it): the fine fraction rests on as
    few, and under 2-D correlated noise at 30 e/px sharp tiles lost 20-27 % of it while
    their spectral ratio fell 13 % or rose (one section's ratio scatters ±20 % with its
    tissue): in focus. A ratio down by a third is still defocus by the fine fraction."""

    def tile(spectral: float, sections: int) -> Evidence:
        return _tissue(
            0.46,
            150.0,
            history=[150.0] * sections,
            fine_history=[0.62] * sections,
            spectral=spectral,
            spectral_history=[0.358] * sections,
        )

    for sections, spectral in ((1, 0.30), (2, 0.311), (2, 0.40)):
        v = decide(tile(spectral, sections), cfg=CFG)
        assert v.kind is VerdictKind.IN_FOCUS, (sections, spectral, v.reason)
    fell = decide(tile(0.24, 2), cfg=CFG)
    assert fell.kind is VerdictKind.OUT_OF_FOCUS, fell.reason
    assert "fine-scale features lost" in fell.reason


def test_a_slow_drift_the_recent_spectral_ratio_follows_has_not_held_the_spectrum() -> None:
    """A position drifting out of focus over twelve sections: its spectral ratio falls
    3 % a section (so the median of the last five lags only ~9 % behind, inside
    ``_SPECTRUM_HELD``), its fine fraction from 0.70 to 0.54 (17 % below the memory's
    upper quartile, past ``fine_drop``), its count only 13 % (σ 1.5 barely moves it at
    low dose). The fine fraction's memory guard exists for this drift; the spectrum
    "held" only against a reference that drifted with it, so it must not silence that
    guard (it did: in focus)."""
    n = 12
    spectral = [0.30 * 0.97 ** (n - i) for i in range(n)]  # most recent first
    fine = [0.70 - 0.012 * (n - i) for i in range(n)]
    score = [300.0 - 3 * (n - i) for i in range(n)]
    ev = Evidence(
        score=score[0] - 3,
        patch_scores=None,
        content=0.3,
        fine_fraction=fine[0] - 0.012,
        history=score,
        fine_history=fine,
        spectral=spectral[0] * 0.97,
        spectral_history=spectral,
    )
    v = decide(ev, cfg=CFG)
    assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
    assert "fine-scale features lost" in v.reason
