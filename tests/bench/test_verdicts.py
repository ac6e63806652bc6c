"""bench/verdicts.py: the truth of the serial wafer's tiles, with the sections' own blur."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

import intrinsic
import isbi
import verdicts
from focuswatch.verdict import Verdict, VerdictKind
from verdicts import Planted, classify


def _wafer(b: list[float], planted: dict[int, tuple[float, str]] | None = None) -> list[Planted]:
    """One position, one tile per section, with its section's own blur ``b``."""
    planted = planted or {}
    return [
        Planted(
            Path(f"/w/S_{s:03d}/Tile_r0-c0_S_{s:03d}.tif"),
            f"{s:03d}",
            0,
            0,
            *planted.get(s, (0.0, "sharp")),
            30.0,
            intrinsic_b=bs,
        )
        for s, bs in enumerate(b)
    ]


def _truths(tiles: list[Planted]) -> list[str]:
    sig = verdicts.effective(tiles)
    return [classify(t.how, sig[t.path], t.sigma) for t in tiles]


@pytest.mark.parametrize(
    ("how", "sigma", "truth"),
    [
        ("sharp", 0.0, "sharp"),
        ("drift", 0.4, "sharp (drift σ ≤ 0.5)"),
        ("drift", 0.6, "between"),
        ("drift", 1.6, "blurred"),
        ("sudden", 1.5, "blurred"),
        ("sudden", 1.0, "between"),
        ("section-wide", 2.0, "blurred"),
        ("wrinkle", 3.0, "wrinkle"),
        ("empty", 0.0, "empty"),
        ("corrupt", 0.0, "corrupt"),
    ],
)
def test_the_truth_by_planted_sigma_is_as_before(how: str, sigma: float, truth: str) -> None:
    assert classify(how, sigma, sigma) == truth


def test_a_sharp_tile_on_a_blurrier_section_is_grey_zone_not_sharp() -> None:
    assert classify("sharp", 1.2, 0.0) == "between"
    assert classify("sharp", 0.4, 0.0) == "sharp"
    assert classify("drift", 1.6, 1.2) == "blurred"


@pytest.fixture(scope="module")
def isbi_blur(isbi_dir: Path) -> list[float]:
    return [float(x) for x in intrinsic.intrinsic_blur(isbi.load(isbi_dir))]


def test_forward_the_sections_getting_sharper_never_make_a_sharp_tile_grey(
    isbi_blur: list[float],
) -> None:
    tiles = _wafer(isbi_blur)
    truths = _truths(tiles)
    # From slice 15 on the stack is sharper than all before it: every tile is sharp.
    assert truths[15:] == ["sharp"] * 15
    sig = verdicts.effective(tiles)
    for s, t in enumerate(tiles):
        if t.intrinsic_b is not None and t.intrinsic_b <= min(isbi_blur[: s + 1]):
            assert sig[t.path] == 0.0


def test_reversed_the_blurrier_half_is_grey_zone_and_a_planted_blur_stays_blurred(
    isbi_blur: list[float],
) -> None:
    b = isbi_blur[::-1]  # section s shows slice 29 − s
    tiles = _wafer(b, {15: (1.5, "sudden"), 20: (0.4, "drift"), 3: (1.5, "sudden")})
    truths = _truths(tiles)
    assert truths[15] == "blurred"  # slice 14 with σ 1.5 planted
    assert truths[20] == "between"  # a drift at σ 0.4 on a slice ~1.2 px blurrier
    assert truths[3] == "blurred"
    grey = [truths[s] for s in range(15, 30) if s not in (15, 20)]
    assert grey == ["between"] * 13
    assert [truths[s] for s in range(15) if s != 3] == ["sharp"] * 14


def test_an_empty_tile_is_not_part_of_the_positions_history() -> None:
    tiles = _wafer([0.0, 0.6, 0.6], {0: (0.0, "empty")})
    sig = verdicts.effective(tiles)
    assert [sig[t.path] for t in tiles] == [0.0, 0.0, 0.0]


def test_a_kept_wafer_without_the_sections_blur_gets_it_from_the_slices(
    isbi_dir: Path, isbi_blur: list[float]
) -> None:
    old = [
        Planted(Path(f"/w/{sec:03d}.tif"), f"{sec:03d}", row, 0, 0.0, "sharp", 30.0)
        for sec, row in ((0, 0), (14, 0), (115, 100))  # the second dose's sections: +100
    ]
    args = argparse.Namespace(wafer="serial", isbi=str(isbi_dir), sections=30, reverse=True)
    filled = verdicts.with_intrinsic(old, args)
    assert [t.intrinsic_b for t in filled] == pytest.approx(
        [isbi_blur[29], isbi_blur[15], isbi_blur[14]]
    )


def test_the_naming_table_counts_round_blurs_named_astigmatic_and_astigmatism_at_its_angle() -> (
    None
):
    """Per planted kind: tiles, flagged, named astigmatic, and (astigmatic tiles) named
    with the streaks within 15° of the planted angle."""
    tiles = _wafer(
        [0.0] * 5,
        {0: (2.0, "sudden"), 1: (2.0, "sudden"), 2: (3.0, "drift"), 3: (2.0, "sudden")},
    )
    tiles[3] = replace(tiles[3], astig_deg=30.0)
    tiles[4] = replace(tiles[4], sigma=2.0, how="sudden", astig_deg=90.0)
    astig = "astigmatic (streaks along ~{}°, against this position's history): check stigmation"
    said = {
        0: Verdict(VerdictKind.OUT_OF_FOCUS, astig.format(0)),
        1: Verdict(VerdictKind.OUT_OF_FOCUS, "fine detail lost, defocus"),
        2: Verdict(VerdictKind.UNCERTAIN, "fine detail lost, defocus"),
        3: Verdict(VerdictKind.OUT_OF_FOCUS, astig.format(40)),
        4: Verdict(VerdictKind.OUT_OF_FOCUS, astig.format(120)),
    }
    lines = verdicts.naming_table(tiles, {t.path: said[i] for i, t in enumerate(tiles)})
    rows = {line[:30].strip(): line[30:].split() for line in lines[1:]}
    assert rows == {
        "round, sudden": ["2", "2", "1", "-"],
        "round, drift": ["1", "0", "0", "-"],
        "astigmatic σ 2": ["2", "2", "2", "1"],
    }
