"""Judge: context from a real SQLite ledger, the policy's decision, the record, revisions.

Scores are given as ``TileScore`` values with the numbers the scorer measures on
ISBI serial sections (bench/verdicts.py): a sharp 512² tile counts ~150-400 maxima
with a fine-scale fraction ~0.55-0.85; σ 1.5 px blur keeps ~0.65-0.8 of that fraction,
σ 0.5 px ≥ 0.93; less tissue lowers the count and leaves the fraction.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focuswatch import synth
from focuswatch.config import PolicyConfig
from focuswatch.judge import judge
from focuswatch.ledger import Ledger
from focuswatch.policy import SECTION_WIDE
from focuswatch.scoring import ScoreSettings, TileScore, score_path
from focuswatch.synth.texture import serial_section
from focuswatch.verdict import VerdictKind
from isbi import Slices

CFG = PolicyConfig()

# How much of its fine-scale fraction a tile keeps at a blur of σ px (measured).
FINE_KEPT = {0.0: 1.0, 0.2: 0.99, 0.4: 0.97, 0.5: 0.95, 0.6: 0.94, 0.8: 0.91, 1.0: 0.87}
FINE_KEPT |= {1.2: 0.83, 1.4: 0.79, 1.5: 0.77, 1.6: 0.74, 1.8: 0.68, 2.0: 0.62, 4.0: 0.3}
# ... and of its score.
SCORE_KEPT = {0.0: 1.0, 0.5: 0.93, 1.0: 0.75, 1.5: 0.55, 2.0: 0.4, 4.0: 0.1}


def kept(table: dict[float, float], sigma: float) -> float:
    keys = sorted(table)
    lo = max(k for k in keys if k <= sigma)
    hi = min((k for k in keys if k >= sigma), default=lo)
    if hi == lo:
        return table[lo]
    return table[lo] + (table[hi] - table[lo]) * (sigma - lo) / (hi - lo)


def tile(
    score: float,
    *,
    fine: float | None = 0.7,
    content: float = 0.15,
    patches: list[list[float]] | None = None,
    patch_fine: list[list[float]] | None = None,
    spectral: float | None = None,
    patch_spectral: list[list[float]] | None = None,
) -> TileScore:
    return TileScore(
        path="",
        score=score,
        patch_scores=patches,
        content=content,
        backend="numpy",
        shape=(512, 512),
        dtype="uint8",
        read_ms=1.0,
        score_ms=1.0,
        meta=None,
        fine_fraction=fine,
        patch_fine_fraction=patch_fine,
        spectral=spectral,
        patch_spectral=patch_spectral,
    )


def blurred(sharp_score: float, sharp_fine: float, sigma: float) -> TileScore:
    return tile(sharp_score * kept(SCORE_KEPT, sigma), fine=sharp_fine * kept(FINE_KEPT, sigma))


@pytest.fixture
def led(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(tmp_path / "state")
    yield ledger
    ledger.close()


Feed = tuple[int, int, int, TileScore]  # section, row, col, score


def feed(
    ledger: Ledger, tiles: Sequence[Feed], cfg: PolicyConfig = CFG
) -> dict[tuple[int, int, int], int]:
    """Judge tiles in this order on the ledger; their version ids by (section, row, col)."""
    ids = {}
    for s, r, c, ts in tiles:
        name = f"Tile_r{r}-c{c}_S_{s:03d}"
        vid, _ = ledger.add_version(
            f"/w/S_{s:03d}/{name}.tif",
            size=1,
            mtime_ns=1,
            tile_name=name,
            section=f"{s:03d}",
            row=r,
            col=c,
        )
        judge(ledger, ledger.get(vid), ts, cfg=cfg)
        ids[s, r, c] = vid
    return ids


def judge_file(
    led: Ledger,
    folder: Path,
    img: np.ndarray,
    settings: ScoreSettings,
    *,
    section: int,
    row: int,
    col: int,
) -> int:
    """Write ``img`` as a real 8-bit TIFF tile, score it as the service does and judge it;
    its version id."""
    path = folder / f"S_{section:03d}" / f"Tile_r{row}-c{col}_S_{section:03d}.tif"
    synth.write_tile(path, synth.to_uint(img, 8), row=row, col=col, stage_x_um=0.0, stage_y_um=0.0)
    st_ = path.stat()
    vid, _ = led.add_version(
        str(path),
        size=st_.st_size,
        mtime_ns=st_.st_mtime_ns,
        tile_name=path.stem,
        section=f"{section:03d}",
        row=row,
        col=col,
    )
    judge(led, led.get(vid), score_path(path, settings), cfg=CFG)
    return vid


def kinds(ledger: Ledger, ids: dict[tuple[int, int, int], int]) -> dict[tuple[int, int, int], str]:
    return {k: ledger.verdict_record(v).verdict.kind.value for k, v in ids.items()}


def test_a_faint_position_judged_empty_is_still_the_baseline_for_a_blurred_tile(
    led: Ledger,
) -> None:
    """Issue 10 item 4: empty-by-content sections are evidence; σ 4 then σ 2 are flagged."""
    tiles: list[Feed] = []
    for s in range(7):
        for c in range(3):  # two ordinary positions next to the faint one (c = 0)
            faint = c == 0
            score = 1874.0 + 80 * s if faint else 2500.0
            tiles.append((s, 0, c, tile(score, fine=0.7, content=0.019 if faint else 0.15)))
    ids = feed(led, tiles)
    assert {kinds(led, ids)[s, 0, 0] for s in range(7)} == {"empty"}
    late = feed(
        led,
        [
            (7, 0, 0, tile(183.0, fine=0.25, content=0.021)),  # σ 4: barely any tissue left
            (7, 0, 1, tile(2500.0)),
            (8, 0, 0, tile(900.0, fine=0.45, content=0.03)),  # σ 2
            (8, 0, 1, tile(2500.0)),
        ],
    )
    for key in ((7, 0, 0), (8, 0, 0)):
        v = led.verdict_record(late[key]).verdict
        assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
    # Section 8 was compared with the faint tissue's own sharp past, not with σ 4.
    assert led.verdict_record(late[8, 0, 0]).verdict.baseline == pytest.approx(2194.0)


def test_a_faint_position_judged_empty_keeps_its_signature_for_a_slight_blur(
    led: Ledger,
) -> None:
    """Issue 10 item 4 with σ 1.5 px instead of 4: the blur keeps 55 % of the count
    (not below the drop ratio) and loses 23 % of the fine fraction. The faint tissue's
    own sections, judged empty by content, carry its scale signature (0.70, tissue's,
    not noise's ~1.0): without it the tile passed as in focus."""
    tiles: list[Feed] = []
    for s in range(7):
        for c in range(3):
            faint = c == 0
            score = 1874.0 + 80 * s if faint else 2500.0
            tiles.append((s, 0, c, tile(score, fine=0.7, content=0.019 if faint else 0.15)))
    feed(led, tiles)
    sharp = 1874.0 + 80 * 3
    late = feed(
        led,
        [
            (
                7,
                0,
                0,
                tile(sharp * kept(SCORE_KEPT, 1.5), fine=0.7 * kept(FINE_KEPT, 1.5), content=0.025),
            ),
            (7, 0, 1, tile(2500.0)),
            (7, 0, 2, tile(2500.0)),
        ],
    )
    v = led.verdict_record(late[7, 0, 0]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason


def test_a_blurred_first_section_is_never_trusted(led: Ledger) -> None:
    """Blurred first: flagged; the same blur again is not in focus; after a sharp
    section, the next blur is flagged against the sharp one."""
    peers = [(s, 0, c, tile(300.0, fine=0.7)) for s in range(4) for c in (1, 2)]
    first = [(0, 0, 0, blurred(300.0, 0.7, 3.0))]
    ids = feed(led, first + peers[:2])
    assert kinds(led, ids)[0, 0, 0] == "out_of_focus"
    again = feed(led, [(1, 0, 0, blurred(300.0, 0.7, 3.0)), *peers[2:4]])
    assert kinds(led, again)[1, 0, 0] in ("out_of_focus", "uncertain")
    sharp = feed(led, [(2, 0, 0, tile(300.0, fine=0.7)), *peers[4:6]])
    assert kinds(led, sharp)[2, 0, 0] == "in_focus"
    later = feed(led, [(3, 0, 0, blurred(300.0, 0.7, 2.0)), *peers[6:8]])
    v = led.verdict_record(later[3, 0, 0]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert v.baseline == pytest.approx(300.0)  # the sharp section, not the blurred ones


def test_slow_drift_is_flagged_by_sigma_1_5_and_never_at_sigma_0_5(led: Ledger) -> None:
    """+0.2 px σ per section from section 10 on, tissue changing under it all along."""
    rng = random.Random(3)
    tiles: list[Feed] = []
    sigma_of = {}
    for s in range(24):
        sigma = round(max(0.0, 0.2 * (s - 10)), 2)
        sigma_of[s] = sigma
        tissue = rng.uniform(150, 400)  # the count follows the tissue ...
        fine = rng.uniform(0.68, 0.72)  # ... the fine fraction barely does
        tiles.append((s, 0, 0, blurred(tissue, fine, sigma)))
        tiles.append((s, 0, 1, tile(rng.uniform(150, 400), fine=rng.uniform(0.68, 0.72))))
    ids = feed(led, tiles)
    got = kinds(led, ids)
    for s, sigma in sigma_of.items():
        if sigma <= 0.5:
            assert got[s, 0, 0] in ("in_focus", "uncertain"), (s, sigma)
        if sigma >= 1.5:
            assert got[s, 0, 0] == "out_of_focus", (s, sigma)
    assert all(got[s, 0, 1] != "out_of_focus" for s in sigma_of)


def test_a_sharp_tile_with_less_tissue_is_not_flagged_and_says_why(led: Ledger) -> None:
    """Issue 10 item 3: 61 % fewer features than the position's median, fine fraction held."""
    ids = feed(led, [(s, 0, 0, tile(400.0, fine=0.7)) for s in range(5)])
    ids |= feed(led, [(5, 0, 0, tile(156.0, fine=0.69))])
    v = led.verdict_record(ids[5, 0, 0]).verdict
    assert v.kind is VerdictKind.IN_FOCUS
    assert "less tissue here" in v.reason
    assert "61 % below" in v.reason


def test_an_identical_tile_gets_the_same_verdict_in_every_section(led: Ledger) -> None:
    """Issue 10 item 5: a position with far fewer features than its peers, same bytes
    every section, is never flagged (its fine fraction is that of its peers)."""
    tiles: list[Feed] = []
    for s in range(10):
        tiles += [(s, 0, c, tile(1000.0, fine=0.72)) for c in (1, 2, 3)]
        tiles.append((s, 0, 0, tile(180.0, fine=0.71)))
    got = kinds(led, feed(led, tiles))
    assert {got[s, 0, 0] for s in range(1, 10)} == {"in_focus"}
    assert got[0, 0, 0] == "in_focus"


def test_a_section_wide_failure_is_named_on_every_tile_of_it(led: Ledger) -> None:
    """Every tile of section 6 blurred (autofocus): each out of focus, each says so."""
    tiles = [
        (s, r, c, tile(300.0 + 20 * r + c, fine=0.7))
        for s in range(6)
        for r in range(3)
        for c in range(3)
    ]
    tiles += [(6, r, c, blurred(300.0 + 20 * r + c, 0.7, 2.0)) for r in range(3) for c in range(3)]
    tiles += [(7, r, c, tile(300.0 + 20 * r + c, fine=0.7)) for r in range(3) for c in range(3)]
    ids = feed(led, tiles)
    for r in range(3):
        for c in range(3):
            v = led.verdict_record(ids[6, r, c]).verdict
            assert v.kind is VerdictKind.OUT_OF_FOCUS
            assert v.reason.startswith(SECTION_WIDE), v.reason
            assert led.verdict_record(ids[7, r, c]).verdict.kind is VerdictKind.IN_FOCUS


def _wafer(seed: int) -> list[Feed]:
    rng = random.Random(seed)
    tiles = []
    for s in range(6):
        for r in range(2):
            for c in range(2):
                sigma = rng.choice([0.0, 0.0, 0.0, 0.0, 1.5, 3.0])
                tiles.append(
                    (s, r, c, blurred(rng.uniform(150, 400), rng.uniform(0.6, 0.8), sigma))
                )
    return tiles


def assert_same_verdicts(folder: Path, first: Sequence[Feed], second: Sequence[Feed]) -> None:
    """The same tiles fed to two fresh ledgers in two orders end in the same verdicts."""
    a, b = Ledger.open(folder / "a"), Ledger.open(folder / "b")
    try:
        assert kinds(a, feed(a, first)) == kinds(b, feed(b, second))
    finally:
        a.close()
        b.close()


def test_section_by_section_and_burst_give_the_same_verdicts(tmp_path: Path) -> None:
    """Issue 10 item 5: late sections first, each shuffled, against acquisition order."""
    tiles = _wafer(7)
    rnd = random.Random(1)
    burst = [t for t in tiles if t[0] >= 2] + [t for t in tiles if t[0] < 2]
    rnd.shuffle(burst)
    assert_same_verdicts(tmp_path, tiles, burst)


@given(seed=st.integers(0, 10_000), order=st.randoms(use_true_random=False))
@settings(max_examples=15, deadline=None)
def test_verdicts_never_depend_on_arrival_order(
    tmp_path_factory: pytest.TempPathFactory, seed: int, order: random.Random
) -> None:
    """Any arrival order of the same scored tiles ends in the same verdicts."""
    tiles = _wafer(seed)
    shuffled = list(tiles)
    order.shuffle(shuffled)
    assert_same_verdicts(tmp_path_factory.mktemp("order"), tiles, shuffled)


def test_a_revision_that_changes_the_retake_need_is_handed_to_the_sinks(led: Ledger) -> None:
    """A blurred tile judged before its earlier sections arrived is flagged once they do,
    and its result is marked undelivered for the sinks."""
    late = feed(led, [(5, 0, 0, blurred(300.0, 0.7, 2.0)), (5, 0, 1, blurred(300.0, 0.7, 2.0))])
    vid = late[5, 0, 0]
    assert led.verdict_record(vid).verdict.kind is not VerdictKind.OUT_OF_FOCUS
    led.mark_delivered(vid)
    name = "Tile_r0-c0_S_004"
    v4, _ = led.add_version(
        f"/w/S_004/{name}.tif", size=1, mtime_ns=1, tile_name=name, section="004", row=0, col=0
    )
    judged = judge(led, led.get(v4), tile(300.0, fine=0.7), cfg=CFG)
    assert vid in judged.revised
    assert led.verdict_record(vid).verdict.kind is VerdictKind.OUT_OF_FOCUS
    assert vid in led.undelivered()


def test_a_tile_whose_peer_gains_a_history_late_is_decided_again(tmp_path: Path) -> None:
    """A peer's verdict counts for a section only once that peer has a history at its
    position: an earlier section's tile arriving last gives it one, and the peers of
    that later tile are decided again (found by the property test: seed 287)."""
    tiles = _wafer(287)
    shuffled = list(tiles)
    random.Random(2).shuffle(shuffled)
    a, b = Ledger.open(tmp_path / "a"), Ledger.open(tmp_path / "b")
    try:
        assert kinds(a, feed(a, tiles)) == kinds(b, feed(b, shuffled))
    finally:
        a.close()
        b.close()


def _with_turn(ts: TileScore, turn: tuple[float, float]) -> TileScore:
    return dataclasses.replace(ts, orientation=turn)


def test_a_blurred_first_section_is_flagged_section_wide_by_the_sections_after_it(
    led: Ledger,
) -> None:
    """Issue 10 item 2: the wafer's very first section out of focus as a whole (σ 2 px:
    fine fraction 0.7 → 0.43). Its tiles look like each other and there is no past, so
    at first they are not passed as in focus (their own signature looks blurred:
    uncertain); once the next sections arrive they are out of focus against them,
    named section-wide, and never a baseline: the sharp sections after them are in
    focus. The same verdicts in any arrival order."""
    first = [(0, 0, c, blurred(300.0, 0.7, 2.0)) for c in range(4)]
    ids = feed(led, first)
    assert set(kinds(led, ids).values()) == {"uncertain"}
    assert "looks blurred" in led.verdict_record(ids[0, 0, 0]).verdict.reason
    later = [(s, 0, c, tile(300.0 + 10 * c, fine=0.7)) for s in (1, 2, 3) for c in range(4)]
    ids |= feed(led, later)
    got = kinds(led, ids)
    for c in range(4):
        assert got[0, 0, c] == "out_of_focus"
        reason = led.verdict_record(ids[0, 0, c]).verdict.reason
        assert reason.startswith(SECTION_WIDE)
        assert "next 3 sections" in reason or "next section" in reason
        assert all(got[s, 0, c] == "in_focus" for s in (1, 2, 3))


def test_first_section_verdicts_do_not_depend_on_arrival_order(tmp_path: Path) -> None:
    tiles = [(0, 0, c, blurred(300.0, 0.7, 2.0)) for c in range(3)]
    tiles += [(s, 0, c, tile(290.0 + 10 * c + s, fine=0.7)) for s in (1, 2, 3) for c in range(3)]
    results = []
    for i, order in enumerate((tiles, list(reversed(tiles)))):
        ledger = Ledger.open(tmp_path / f"state-{i}")
        try:
            results.append(kinds(ledger, feed(ledger, order)))
        finally:
            ledger.close()
    assert results[0] == results[1]
    assert results[0][0, 0, 0] == "out_of_focus"


def test_astigmatism_is_named_from_the_orientation_stored_in_the_ledger(led: Ledger) -> None:
    """Issue 10 item g: five sharp sections with their own slight orientation, then one
    blurred whose spectrum turned to streaks along ~30° (x + iy moved by 0.35 along
    −e^{2i·30°}): the reason says astigmatic and check stigmation. A round blur at the
    same position (orientation as before) is plain defocus."""
    history = [(s, 0, 0, _with_turn(tile(300.0, fine=0.7), (0.04, 0.01))) for s in range(5)]
    feed(led, history)
    turn = (0.04 - 0.35 * 0.5, 0.01 - 0.35 * 0.866)
    ids = feed(led, [(5, 0, 0, _with_turn(blurred(300.0, 0.7, 2.0), turn))])
    v = led.verdict_record(ids[5, 0, 0]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "astigmatic (streaks along ~30°" in v.reason
    assert "check stigmation" in v.reason
    assert led.result(ids[5, 0, 0])["orientation_x"] == pytest.approx(turn[0])
    ids = feed(led, [(6, 0, 0, _with_turn(blurred(300.0, 0.7, 2.0), (0.05, 0.0)))])
    v = led.verdict_record(ids[6, 0, 0]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS
    assert "astigmatic" not in v.reason
    assert "defocus" in v.reason


# The spectral ratio (score.spectrum) on ISBI serial sections, 256² patches: sharp
# sections of one position 0.13-0.21 (0.41-0.49 from ISBI section 15 on: the whole
# stack shows more fine detail there), σ 1.5 keeps ~0.3-0.5 of it, σ 0.5 ≥ 0.8.


def test_a_sigma_1_5_blur_the_count_misses_is_flagged_by_its_spectrum(led: Ledger) -> None:
    """The bench's miss: score and fine fraction within their margins (σ 1.5 at 30 e/px
    barely moves them on 512² tiles), the spectral ratio down to 0.4 of the history's."""
    rng = random.Random(5)
    tiles: list[Feed] = [
        (s, 0, 0, tile(rng.uniform(140, 170), fine=rng.uniform(0.72, 0.76), spectral=0.15))
        for s in range(6)
    ]
    tiles.append((6, 0, 0, tile(142.0, fine=0.65, spectral=0.06)))
    ids = feed(led, tiles)
    v = led.verdict_record(ids[6, 0, 0]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
    assert "fine detail lost, defocus" in v.reason
    assert "high-frequency power 0.060 against 0.150" in v.reason
    assert {kinds(led, ids)[s, 0, 0] for s in range(1, 6)} == {"in_focus"}


def test_a_lasting_blur_of_one_position_never_becomes_its_normal(led: Ledger) -> None:
    """The same σ 1.5 blur for six sections at one position, which only its spectral
    ratio shows (count and fine fraction within their margins): flagged three times,
    then left to a person (*uncertain*: the same slight blur, or less fine texture in
    this tissue), never passed: the flagged sections are not its reference."""
    rng = random.Random(5)
    tiles: list[Feed] = [
        (s, 0, 0, tile(rng.uniform(140, 170), fine=rng.uniform(0.72, 0.76), spectral=0.15))
        for s in range(6)
    ]
    tiles += [(s, 0, 0, tile(142.0, fine=0.65, spectral=0.06)) for s in range(6, 12)]
    ids = feed(led, tiles)
    got = kinds(led, ids)
    reasons = [led.verdict_record(ids[s, 0, 0]).verdict.reason for s in range(6, 12)]
    assert [got[s, 0, 0] for s in range(6, 12)] == ["out_of_focus"] * 3 + ["uncertain"] * 3, reasons
    assert "check it once" in reasons[3]


def test_a_section_where_only_some_tiles_gained_lifts_nobody(led: Ledger) -> None:
    """Five of nine positions' tissue got richer in fine detail (×1.7) in section 6, the
    others kept theirs (within a normal 3 % scatter): those are not left behind."""
    tiles: list[Feed] = []
    for s in range(7):
        for r in range(3):
            for c in range(3):
                gained = s == 6 and 3 * r + c < 5
                now = 1.7 if gained else 0.97 if s == 6 else 1.0
                spectral = 0.15 * now * (1 + 0.05 * (r - c))
                tiles.append((s, r, c, tile(200.0 + 10 * r + c, fine=0.72, spectral=spectral)))
    ids = feed(led, tiles)
    got = kinds(led, ids)
    unchanged = [(r, c) for r in range(3) for c in range(3) if 3 * r + c >= 5]
    assert {got[6, r, c] for r, c in unchanged} == {"in_focus"}, [
        led.verdict_record(ids[6, r, c]).verdict.reason for r, c in unchanged
    ]


def test_less_tissue_and_a_spectrum_that_holds_stay_in_focus(led: Ledger) -> None:
    """Sharp tissue that changed (40 % fewer features, fine fraction and spectral ratio
    held within their scatter) is in focus, and the reason gives the spectral evidence."""
    tiles: list[Feed] = [(s, 0, 0, tile(300.0, fine=0.72, spectral=0.17)) for s in range(5)]
    tiles.append((5, 0, 0, tile(180.0, fine=0.7, spectral=0.14)))
    ids = feed(led, tiles)
    v = led.verdict_record(ids[5, 0, 0]).verdict
    assert v.kind is VerdictKind.IN_FOCUS, v.reason
    assert "high-frequency power 0.140 against 0.170" in v.reason


def _sharper_session() -> list[Feed]:
    """3×3 positions; from section 6 on every tile shows 3× the fine detail (as ISBI's
    sections 15 on), except (1, 1) at section 6, which is blurred (σ 1.5: it keeps
    its old ratio, 0.14, instead of 0.45)."""
    tiles: list[Feed] = []
    for s in range(9):
        for r in range(3):
            for c in range(3):
                base = (0.15 if s < 6 else 0.45) * (1 + 0.05 * (r - c))
                spectral = 0.14 if (s, r, c) == (6, 1, 1) else base
                tiles.append((s, r, c, tile(200.0 + 10 * r + c, fine=0.72, spectral=spectral)))
    return tiles


def test_a_tile_that_missed_its_sections_gain_in_fine_detail_is_flagged(led: Ledger) -> None:
    """Against its own history alone the blurred tile looks normal (0.14 against 0.15);
    its section's other tiles all gained ×3 against theirs: lifted by that, it lost
    two thirds. The others are in focus throughout."""
    ids = feed(led, _sharper_session())
    got = kinds(led, ids)
    v = led.verdict_record(ids[6, 1, 1]).verdict
    assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
    assert "raised ×3.0" in v.reason
    assert [k for k, kind in got.items() if kind == "out_of_focus"] == [(6, 1, 1)]


def test_the_lift_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    tiles = _sharper_session()
    burst = [t for t in tiles if t[0] >= 5] + [t for t in tiles if t[0] < 5]
    random.Random(2).shuffle(burst)
    assert_same_verdicts(tmp_path, tiles, burst)


def test_a_section_losing_its_fine_detail_is_not_lifted_away(led: Ledger) -> None:
    """Every tile of section 6 down to 0.3 of its ratio (an autofocus failure the count
    barely shows): each is flagged, as section-wide; the lift only goes up."""
    tiles: list[Feed] = [
        (s, r, c, tile(200.0 + 10 * r + c, fine=0.72, spectral=0.15 if s != 6 else 0.045))
        for s in range(8)
        for r in range(3)
        for c in range(3)
    ]
    ids = feed(led, tiles)
    for r in range(3):
        for c in range(3):
            v = led.verdict_record(ids[6, r, c]).verdict
            assert v.kind is VerdictKind.OUT_OF_FOCUS, v.reason
            assert v.reason.startswith(SECTION_WIDE), v.reason
            assert led.verdict_record(ids[7, r, c]).verdict.kind is VerdictKind.IN_FOCUS


@pytest.mark.slow
def test_a_real_sigma_1_5_defocus_at_30_e_px_is_flagged(
    isbi_slices: Slices, tmp_path: Path
) -> None:
    """Real TIFF files of real serial sections (ISBI slices 4-9, ×2 upsampled, one 512²
    crop per section, shot noise at 30 e/px), scored as the service does (fast mode,
    256² patches): section 9 blurred σ 1.5 px. Its count (142 against a median of 144)
    and fine-scale fraction (0.65 against 0.74) kept it in focus before the spectral
    ratio; now it is flagged, and the sharp sections before it are in focus."""
    settings = ScoreSettings(resolution="patches", patch_size=256, backend="cpu")
    led = Ledger.open(tmp_path / "state")
    try:
        got = {}
        for s in range(4, 10):
            big = np.kron(isbi_slices[s], np.ones((2, 2), np.float32))
            img = synth.degrade(
                big[256:768, 256:768],
                rng=np.random.default_rng([3, 0, s, 1, 1]),
                defocus_sigma=1.5 if s == 9 else 0.0,
                dose=30.0,
            )
            got[s] = judge_file(led, tmp_path, img, settings, section=s, row=1, col=1)
        blurred_one = led.verdict_record(got[9]).verdict
        assert blurred_one.kind is VerdictKind.OUT_OF_FOCUS, blurred_one.reason
        assert "high-frequency power" in blurred_one.reason
        for s in range(5, 9):
            assert led.verdict_record(got[s]).verdict.kind is VerdictKind.IN_FOCUS, s
    finally:
        led.close()


def _spectral_kept(sigma: float) -> float:
    """The share of its spectral ratio a tile keeps at σ px (ISBI: σ 1.5 ~0.3-0.5,
    σ 0.5 ≥ 0.8)."""
    return float(np.exp(-0.37 * sigma**2))


def _lasting_drop(drift: dict[int, float] | None = None, sections: int = 12) -> list[Feed]:
    """3×3 positions; from section 6 on every tile shows a third of its fine detail
    (spectral ratio 0.45 → 0.15, fine fraction 0.82 → 0.70, fewer features), and stays
    there, with the tissue's own ±5 % from section to section (as ISBI's slices in
    reverse order). ``drift``: σ px of position (0, 0) by section."""
    tiles: list[Feed] = []
    for s in range(sections):
        for r in range(3):
            for c in range(3):
                wobble = 1 + 0.025 * ((s * 7 + r * 3 + c) % 5 - 2)
                spectral, fine, score = (0.45, 0.82, 300.0) if s < 6 else (0.15, 0.70, 180.0)
                sigma = (drift or {}).get(s, 0.0) if (r, c) == (0, 0) else 0.0
                tiles.append(
                    (
                        s,
                        r,
                        c,
                        tile(
                            score * wobble * kept(SCORE_KEPT, sigma) * (1 + 0.05 * (r - c)),
                            fine=fine * kept(FINE_KEPT, sigma),
                            spectral=spectral * wobble * _spectral_kept(sigma),
                        ),
                    )
                )
    return tiles


def test_a_lasting_section_wide_drop_is_told_once_then_taken_as_the_new_level(
    led: Ledger,
) -> None:
    """Section 6 lost fine detail on every tile: flagged, section-wide. Sections 7 and
    8 hold that level (policy.regime_sections = 2): not judged, never alerted; from
    section 9 on every tile is in focus against the new level, and section 9 says so."""
    ids = feed(led, _lasting_drop())
    got = kinds(led, ids)
    for (s, r, c), kind in got.items():
        v = led.verdict_record(ids[s, r, c]).verdict
        if s < 6 or s >= 9:
            assert kind == "in_focus", (s, r, c, v.reason)
        elif s == 6:
            assert kind == "out_of_focus", v.reason
            assert v.reason.startswith(SECTION_WIDE), v.reason
        else:
            assert kind == "uncertain", (s, r, c, v.reason)
            assert "lasting change in imaging" in v.reason
            assert f"{s - 6} of 2 sections" in v.reason
    for r in range(3):
        for c in range(3):
            first = led.verdict_record(ids[9, r, c]).verdict.reason
            assert "since section 006, which lost it together" in first, first
            assert "new level" not in led.verdict_record(ids[10, r, c]).verdict.reason


def test_regime_sections_sets_how_long_the_new_level_must_hold(led: Ledger) -> None:
    ids = feed(led, _lasting_drop(), dataclasses.replace(CFG, regime_sections=1))
    got = kinds(led, ids)
    assert {got[7, r, c] for r in range(3) for c in range(3)} == {"uncertain"}
    assert {got[s, r, c] for s in range(8, 12) for r in range(3) for c in range(3)} == {"in_focus"}


def test_a_lasting_drop_gives_the_same_verdicts_in_a_burst(tmp_path: Path) -> None:
    tiles = _lasting_drop()
    burst = [t for t in tiles if t[0] >= 4] + [t for t in tiles if t[0] < 4]
    random.Random(3).shuffle(burst)
    assert_same_verdicts(tmp_path, tiles, burst)


def test_a_position_drifting_after_a_lasting_drop_is_still_flagged(led: Ledger) -> None:
    """(0, 0) drifts +0.3 px σ per section from section 7 on, after the drop: every
    tile of it at σ ≥ 1.5 is out of focus; none of the others is."""
    drift = {s: 0.3 * (s - 6) for s in range(7, 14)}
    ids = feed(led, _lasting_drop(drift, sections=14))
    got = kinds(led, ids)
    for s in range(7, 14):
        if drift[s] >= 1.5:
            assert got[s, 0, 0] == "out_of_focus", (s, led.verdict_record(ids[s, 0, 0]).verdict)
    flagged = {k for k, kind in got.items() if kind == "out_of_focus" and k[0] != 6}
    assert {(r, c) for _, r, c in flagged} == {(0, 0)}


def _steady(drift: dict[int, float], failed: int | None, sections: int) -> list[Feed]:
    """3×3 positions of steady tissue; position (1, 1) at σ ``drift[s]``; every tile
    of section ``failed`` at σ 2 (an autofocus failure)."""
    tiles: list[Feed] = []
    for s in range(sections):
        for r in range(3):
            for c in range(3):
                wobble = 1 + 0.025 * ((s * 7 + r * 3 + c) % 5 - 2)
                sigma = 2.0 if s == failed else drift.get(s, 0.0) if (r, c) == (1, 1) else 0.0
                tiles.append(
                    (
                        s,
                        r,
                        c,
                        tile(
                            300.0 * wobble * kept(SCORE_KEPT, sigma),
                            fine=0.8 * kept(FINE_KEPT, sigma),
                            spectral=0.4 * wobble * _spectral_kept(sigma),
                        ),
                    )
                )
    return tiles


def _blurred(sigma_at: Callable[[int, int, int], float], sections: int) -> list[Feed]:
    """3×3 positions of steady tissue (as ``_steady``), each tile blurred by
    ``sigma_at(section, row, col)``."""
    tiles: list[Feed] = []
    for s in range(sections):
        for r in range(3):
            for c in range(3):
                wobble = 1 + 0.025 * ((s * 7 + r * 3 + c) % 5 - 2)
                sigma = sigma_at(s, r, c)
                signature = tile(
                    300.0 * wobble * kept(SCORE_KEPT, sigma),
                    fine=0.8 * kept(FINE_KEPT, sigma),
                    spectral=0.4 * wobble * _spectral_kept(sigma),
                )
                tiles.append((s, r, c, signature))
    return tiles


def _missed(led: Ledger, tiles: list[Feed], sigma_at: Callable[[int, int, int], float]) -> list:
    ids = feed(led, tiles)
    got = kinds(led, ids)
    return [
        (s, r, c, sigma_at(s, r, c), led.verdict_record(ids[s, r, c]).verdict.reason)
        for s, r, c, _ in tiles
        if sigma_at(s, r, c) >= 1.5 and got[s, r, c] != "out_of_focus"
    ]


def test_the_whole_section_drifting_slowly_is_never_a_new_level(led: Ledger) -> None:
    """Every tile blurs a little more each section (+0.1 px σ from section 4): no
    sudden fall, so no new level; every tile at σ ≥ 1.5 is flagged."""

    def sigma(s: int, r: int, c: int) -> float:
        return round(max(0.0, 0.1 * (s - 4)), 2)

    assert _missed(led, _blurred(sigma, 26), sigma) == []


def test_an_autofocus_failure_that_stays_is_flagged_in_every_section(led: Ledger) -> None:
    """Every tile at σ 2 from section 6 on: the level looks blurred by itself, so it is
    never taken as the new normal."""

    def sigma(s: int, r: int, c: int) -> float:
        return 2.0 if s >= 6 else 0.0

    assert _missed(led, _blurred(sigma, 14), sigma) == []


def test_a_tile_still_blurred_after_its_section_recovered_is_flagged(led: Ledger) -> None:
    """Sections 6-8 fail (σ 2), the section recovers in 9, but (1, 1) is still at σ 2 in
    9 and 10: the recovery ends the episode, (1, 1) is judged against its level before."""

    def sigma(s: int, r: int, c: int) -> float:
        return 2.0 if 6 <= s <= 8 or ((r, c) == (1, 1) and s in (9, 10)) else 0.0

    assert _missed(led, _blurred(sigma, 13), sigma) == []


def test_a_single_position_drifting_slowly_is_never_taken_as_a_new_level(led: Ledger) -> None:
    """(1, 1) loses +0.2 px σ per section from section 2 on: flagged at every σ ≥ 1.5,
    as one position, never section-wide; the others are in focus throughout."""
    drift = {s: 0.2 * (s - 1) for s in range(2, 16)}
    ids = feed(led, _steady(drift, None, 16))
    got = kinds(led, ids)
    for s in range(16):
        for r in range(3):
            for c in range(3):
                v = led.verdict_record(ids[s, r, c]).verdict
                assert not v.reason.startswith(SECTION_WIDE)
                if (r, c) == (1, 1) and drift.get(s, 0.0) >= 1.5:
                    assert got[s, r, c] == "out_of_focus", (s, v.reason)
                elif (r, c) != (1, 1):
                    assert got[s, r, c] == "in_focus", (s, r, c, v.reason)


def test_an_autofocus_failure_that_recovers_is_flagged_only_in_its_section(
    led: Ledger,
) -> None:
    """Every tile of section 6 at σ 2, sections 7-11 sharp again: section 6 flagged
    (section-wide), nothing after it, and no new level taken from it."""
    ids = feed(led, _steady({}, 6, 12))
    got = kinds(led, ids)
    for (s, r, c), kind in got.items():
        v = led.verdict_record(ids[s, r, c]).verdict
        if s == 6:
            assert kind == "out_of_focus", v.reason
            assert v.reason.startswith(SECTION_WIDE), v.reason
        else:
            assert kind == "in_focus", (s, r, c, v.reason)
            assert "new level" not in v.reason


def test_an_autofocus_failure_two_sections_long_is_not_a_new_level(led: Ledger) -> None:
    """Sections 6 and 7 both fail (σ 2), then it recovers: both are flagged (a σ 2
    level looks blurred by its own scale signature: never a new normal), 8 on in
    focus."""
    tiles = [t for t in _steady({}, 6, 12) if t[0] != 7]
    tiles += [t for t in _steady({}, 7, 12) if t[0] == 7]
    ids = feed(led, sorted(tiles, key=lambda t: t[:3]))
    got = kinds(led, ids)
    assert {got[s, r, c] for s in (6, 7) for r in range(3) for c in range(3)} == {"out_of_focus"}
    assert {got[s, r, c] for s in range(8, 12) for r in range(3) for c in range(3)} == {"in_focus"}


def test_a_patch_that_lost_its_high_band_is_stored_and_judged_partly_out_of_focus(
    led: Ledger,
) -> None:
    """The spectral ratio per patch goes into the ledger with the result and comes back
    for every later judgement of the tile (a late peer revises its section)."""
    patches = [[150.0, 160.0], [155.0, 158.0]]
    sharp = [[0.30, 0.31], [0.29, 0.32]]
    wrinkle = [[0.04, 0.31], [0.29, 0.32]]
    fine = [[0.72, 0.71], [0.70, 0.72]]
    low = [[0.55, 0.71], [0.70, 0.72]]  # the wrinkle's fine fraction agrees
    tiles = [
        (s, 0, 0, tile(155.0, patches=patches, patch_fine=fine, patch_spectral=sharp))
        for s in range(3)
    ]
    last = tile(150.0, patches=patches, patch_fine=low, patch_spectral=wrinkle)
    ids = feed(led, [*tiles, (3, 0, 0, last)])
    record = led.verdict_record(ids[3, 0, 0])
    assert record.verdict.kind is VerdictKind.PARTLY_OUT_OF_FOCUS, record.verdict.reason
    assert "fine detail" in record.verdict.reason
    assert led.result(ids[3, 0, 0])["patch_spectral"] == wrinkle
    feed(led, [(3, 0, 1, tile(152.0, patches=patches, patch_fine=fine, patch_spectral=sharp))])
    again = led.verdict_record(ids[3, 0, 0]).verdict
    assert again.kind is VerdictKind.PARTLY_OUT_OF_FOCUS, again.reason


def test_a_sharp_edge_tile_with_a_black_margin_is_not_a_wrinkle(
    isbi_slices: Slices, tmp_path: Path
) -> None:
    """Real TIFF files of real serial sections (ISBI slices 0-5, ×2 band-limited, one
    512² crop per section), 2-D correlated noise at 30 e/px, scored as the service does
    (256² patches): position c0 is an edge tile, its right column of patches 75 %
    beyond the section (black). Sharp in every section, it is never partly out of
    focus. The margin's straight edge puts its patches' high-to-mid ratio at 0-0.3 of
    the tissue's (the step's 1/f² spectrum is mostly mid band, and beside it the
    tissue's few high-band bins are within the floor's error): every section was
    flagged as a wrinkle on the margin's patches (on main: in focus). A patch whose
    stretch clips more than half its pixels now has no ratio."""
    settings = ScoreSettings(resolution="patches", patch_size=256, backend="cpu")
    led = Ledger.open(tmp_path / "state")
    try:
        got = {}
        for s in range(6):
            for c in range(2):
                crop = synth.resample(isbi_slices[s], 2.0, order=3)[128 * c : 128 * c + 512, :512]
                if c == 0:
                    crop = crop.copy()
                    crop[:, 320:] = 0.0
                img = synth.degrade(
                    crop, rng=np.random.default_rng([s, c]), dose=30.0, noise_sigma_2d=0.7
                )
                got[s, c] = judge_file(led, tmp_path, img, settings, section=s, row=0, col=c)
        for s in range(6):
            v = led.verdict_record(got[s, 0]).verdict
            assert v.kind is not VerdictKind.PARTLY_OUT_OF_FOCUS, (s, v.reason)
    finally:
        led.close()


def test_tissue_beside_resin_at_a_sections_edge_is_not_a_wrinkle(
    isbi_slices: Slices, tmp_path: Path
) -> None:
    """Real TIFFs of an ISBI slice (×2, band-limited, 768² px, 256² patches) whose
    bottom rows lie beyond the section (resin), 2-D correlated noise at 30 e/px, judged
    on a real ledger after three sharp sections of the same position: the edge row's
    patches, part tissue and part resin, read fine fractions of 0.16-0.42 against the
    tissue's 0.73-0.80 and were called partly out of focus, while their spectral ratio
    stood 1.5-5.6 times the typical patch's: their high band held, no blur."""
    settings = ScoreSettings(resolution="patches", patch_size=256, backend="cpu")
    big = synth.resample(isbi_slices[11], 2.0, order=3)[:768, :768]
    led = Ledger.open(tmp_path / "state")
    try:
        for edge in (560, 600, 640):
            image = synth.resin(big.shape, rng=np.random.default_rng(11)).copy()
            image[:edge] = big[:edge]
            ids = [
                judge_file(
                    led,
                    tmp_path,
                    synth.degrade(
                        image,
                        rng=np.random.default_rng([edge, s]),
                        dose=30.0,
                        noise_sigma_2d=0.7,
                    ),
                    settings,
                    section=s,
                    row=edge,
                    col=0,
                )
                for s in range(4)
            ]
            for vid in ids:
                v = led.verdict_record(vid).verdict
                assert v.kind is not VerdictKind.PARTLY_OUT_OF_FOCUS, (edge, v.reason)
    finally:
        led.close()


def _demo_edge_verdicts(
    tmp_path: Path, seed: int, row: int, col: int, density: float
) -> list[tuple[VerdictKind, str]]:
    """``focuswatch demo --seed``'s position ``row``/``col`` in four sections: real
    TIFFs, scored as the service scores them (the default settings: four 256 px
    patches), judged on a real ledger section by section."""
    settings = ScoreSettings(backend="cpu")
    led = Ledger.open(tmp_path / "state")
    out = []
    try:
        for s in range(4):
            image = synth.degrade(
                serial_section((512, 512), (seed, row, col), s * 0.02, density=density),
                rng=np.random.default_rng([seed, s, row, col]),
                dose=30.0,
                jitter_px=0.15,
            )
            vid = judge_file(led, tmp_path, image, settings, section=s, row=row, col=col)
            v = led.verdict_record(vid).verdict
            out.append((v.kind, v.reason))
    finally:
        led.close()
    return out


_DEMO_EDGES = [(1, 2, 3, 0.424), (10, 1, 2, 0.399)]


@pytest.mark.xfail(
    strict=True,
    reason="review11: revision 7's content guard (half the typical patch's content) "
    "misses this rim patch, at 0.6-0.7 of the typical content (seed 7's was 0.22-0.38); "
    "a σ 3 px wrinkle on ISBI keeps as little as 0.72, so no content share separates "
    "them; the first section it shows in is still called partly out of focus",
)
@pytest.mark.parametrize(("seed", "row", "col", "density"), _DEMO_EDGES)
def test_a_sharp_tile_at_the_sections_edge_is_never_a_wrinkle_on_the_demos_wafer(
    tmp_path: Path, seed: int, row: int, col: int, density: float
) -> None:
    """``focuswatch demo --seed 1``'s wafer, position r2-c3 (and seed 10's r1-c2): one
    256 px patch of the 512² tile is the section's soft rim beside resin with some
    tissue, whose spectral ratio reads 0.22-0.31 against the tissue's 0.71-0.85 and its
    fine fraction 0.71-0.81 against 0.85-0.96: the demo called the sharp tile partly out
    of focus in every section, its in-focus retake included (revision 7's motivation,
    seed 7's r3-c2, again)."""
    for s, (kind, reason) in enumerate(_demo_edge_verdicts(tmp_path, seed, row, col, density)):
        assert kind is not VerdictKind.PARTLY_OUT_OF_FOCUS, (s, reason)


@pytest.mark.parametrize(("seed", "row", "col", "density"), _DEMO_EDGES)
def test_a_section_edge_patch_is_called_partly_out_of_focus_once_not_every_section(
    tmp_path: Path, seed: int, row: int, col: int, density: float
) -> None:
    """The same positions: the patch is weak against its tile in every section, and
    after the first section that shows it, it is the tissue there (weak the same way
    in the position's last sections), not a wrinkle again and again."""
    kinds = [kind for kind, _ in _demo_edge_verdicts(tmp_path, seed, row, col, density)]
    partly = [s for s, kind in enumerate(kinds) if kind is VerdictKind.PARTLY_OUT_OF_FOCUS]
    assert len(partly) <= 1, kinds
    # (A single position has no context for its first section: not judged.)
    assert kinds[-2:] == [VerdictKind.IN_FOCUS, VerdictKind.IN_FOCUS], kinds


@pytest.mark.xfail(
    strict=True,
    reason="review11: at 8 e/px under 2-D correlated noise the wrinkle's patch reads a "
    "spectral ratio 1.25-1.79 against the typical 0.87-1.63 (the floor's error), so its "
    "high band 'held' and its fine fraction is not compared: 0 of 40 σ 3 px wrinkles "
    "flagged (40/40 and 38/40 under white and along-x noise)",
)
def test_a_wrinkle_at_8_electrons_per_pixel_under_2d_noise_is_flagged(
    isbi_slices: Slices, tmp_path: Path
) -> None:
    """Real TIFFs of ISBI slices (×2, band-limited, 512² px: four 256 px patches at the
    service's default settings), 8 e/px shot noise correlated in 2-D (σ 0.7 px), three
    sharp sections, then a fourth with one quarter blurred σ 3 px: a wrinkle, to be
    flagged partly (or wholly) out of focus, as it is under white noise."""
    settings = ScoreSettings(backend="cpu")
    led = Ledger.open(tmp_path / "state")
    try:
        for k in (3, 17):
            for s in range(4):
                clean = np.clip(synth.resample(isbi_slices[k + s], 2.0, order=3), 0, 1)[
                    256:768, 256:768
                ]
                rng = np.random.default_rng([k, s])
                image = synth.degrade(clean, rng=rng, dose=8.0, noise_sigma_2d=0.7)
                if s == 3:
                    image[:256, :256] = synth.degrade(
                        clean, rng=rng, dose=8.0, noise_sigma_2d=0.7, defocus_sigma=3.0
                    )[:256, :256]
                vid = judge_file(led, tmp_path, image, settings, section=s, row=k, col=0)
            v = led.verdict_record(vid).verdict
            assert v.kind in (VerdictKind.PARTLY_OUT_OF_FOCUS, VerdictKind.OUT_OF_FOCUS), (
                k,
                v.reason,
            )
    finally:
        led.close()
