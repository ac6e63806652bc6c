"""Scores to verdicts: a pure decision with a reason a person can read.

A focus score means little on its own: it depends on how much structure the tile
shows, so the policy compares each tile with its own context. Every earlier score of
the position is evidence (whatever its verdict then); which of them are *trusted* as
a reference is decided here, from the scores themselves, so a verdict depends on the
scores of its context and never on the order in which tiles arrived:

1. **Empty** when the tile's content (contrast) is below ``policy.empty_contrast``:
   resin, a hole, the edge of the section. Decided by content alone, never alerted.
2. **Trusted history.** Of the position's earlier sections (most recent
   ``policy.memory_sections``), those not judged out of focus are *confirmed*; a
   section counts as trusted when its score (and, when scored, its fine-scale
   fraction) is not far below the upper quartile of the confirmed ones
   (``drop_ratio``, ``fine_drop``). A tile that was flagged is
   trusted once later confirmed sections show it was normal here (a false alert
   does not repeat forever); a blurred tile never is.
3. **Baselines** from the trusted history: the median of the last
   ``policy.history_sections`` (follows tissue as it changes) and the upper
   quartile over the whole memory (does not follow a slow focus drift down).
   A position's first section (no past at all) is first judged against the median
   of its next sections (``Evidence.later``: a first section blurred as a whole has
   no sharp peers). Without trusted history, the median of this section's other tiles (a looser
   ``policy.section_drop_ratio``, since different positions show different tissue),
   only for a tile with enough tissue to be compared with other positions
   (content ≥ ``policy.sparse_contrast``), and represented by its best patch (a
   tile that is half resin still has sharp tissue somewhere). A baseline below
   ``policy.min_baseline`` has too few features to compare against.
4. **Fine detail lost.** With a spectral ratio (``Evidence.spectral``: the tile's
   high-to-mid band power above its own noise floor, ``focuswatch.score.spectrum``),
   a tile that kept less than ``1 − policy.spectral_drop`` of the median of its
   position's last ``history_sections`` sections with tissue not judged out of focus
   (never a flagged one) is out of focus: blur takes that ratio down
   steeply (σ 1.5 px: to ~0.3-0.5) where tissue barely moves it, and it rests on
   thousands of frequency bins where the count rests on a few hundred features.
   Against fewer than ``_SPECTRAL_SURE`` sections more must be lost. For a tile that
   gained nothing against its own position, the reference is raised by the
   section's lift (the gain nearly all its other tiles made against theirs, their
   lower quartile, when that is clear: ≥ 1/(1 − ``spectral_drop``)): a session imaged sharper as a
   whole leaves a tile that kept its old ratio behind. Against its peers alone (a flagged past
   that this tile resembles) it is out of focus when it kept less than
   ``1 − _PEER_SPECTRAL_DROP`` of their median ratio.
   **Defocus or less tissue.** With a scale signature (``fine_fraction``: the share
   of features found at fine scales), defocus is a fine fraction ``fine_drop`` or
   more below the baseline's (the higher of the recent median and the memory's upper
   quartile of the trusted fractions; with no history, the section's median), and
   by more than its sampling (binomial, at its feature count) and the position's own
   scatter from one trusted section to the next allow, and not while the spectral
   ratio held its reference and the memory's median ratio (lost at most
   ``_SPECTRUM_HELD`` of each against three or more sections, what one section's ratio
   scatters by against fewer: the fraction rests on the few features a high noise
   floor leaves, the ratio on thousands of bins; the memory, because a slow drift
   drags the recent reference with it); a
   lower score with the fine fraction held is less tissue, said so in the reason
   and not alerted. Without one, a score
   ``drop_ratio`` below either baseline is out of focus. **Astigmatism** rather than
   defocus when the spectrum's orientation (``Evidence.orientation``) moved clearly
   away from the reference's (tissue and scan noise have their own), or, with no
   history, is strong by itself: the reason names the streak direction.
5. **Uncertain** when there is nothing trustworthy to compare with (first section,
   too little tissue, a signature that looks blurred by itself (fine fraction below
   ``_SHARP_FINE``) with nothing but its peers to compare with, or far below the
   section's other tiles exactly as this
   position's flagged earlier sections were): never passed as in focus, never
   alerted; its score is evidence for later sections like any unflagged one.
   ``score < policy.min_score`` is out of focus regardless.
6. **Section-wide**: a tile out of focus together with ``section_wide_fraction`` of
   the section's other tiles judged against their own positions says so (an
   autofocus failure, not one tile; the reason starts with ``SECTION_WIDE``).
   **A lasting change** (detector, dwell, a new session) looks the same in its first
   section, and is told there, once. A later tile that would be out of focus but
   holds the level this position had in that section (its fine detail neither fell
   further, as a drift does, nor came back, as after an autofocus failure), in a
   section that holds it too (the tile keeps its peers' spectral ratio), is *uncertain*
   ("still out of focus, or a lasting change in imaging"). Once
   ``policy.regime_sections`` sections held it, the position's history starts at the
   failed section, taken as in focus: every reference (recent median, memory's upper
   quartile, fine fraction, spectral ratio) is the new level, and the first tile in
   focus against it says so. Not at a position flagged in its two sections before (a
   drift the failure met), and not from a failure within another's pending stretch.
   Derived from the verdicts stored (kind, ``SECTION_WIDE``), so it needs no state and
   a late tile revises it like any other context.
7. **Partly out of focus** when the whole tile is fine but at least
   ``policy.partial_min_patches`` patches are weak (a wrinkle, dirt, a tilted
   region): with a per-patch scale signature, a patch whose fine fraction is
   ``2 × fine_drop`` below the tile's typical patch and significantly so for its
   feature count and the tissue's own spread between patches (no history needed:
   within a tile the fraction does not follow the tissue), unless its spectral ratio
   held (at least ``1 − _SPECTRUM_HELD`` of the typical patch's); without one, a patch
   that lost ``partial_patch_drop`` or more of its own score at this position in
   trusted sections, relative to the tile's median change. Either way also a patch
   whose spectral ratio is below ``_PATCH_SPECTRAL_DROP`` of the tile's typical patch
   and whose fine fraction is below the typical one by ``fine_drop`` (both needed):
   the high band is where blur shows first, and under noise correlated in 2-D a σ 3 px
   wrinkle's few fine maxima are mostly noise (its fine fraction 0.66 against 0.77).
   Not a patch that was weak the same way against its tile in one of the position's
   last ``_LASTING_SECTIONS`` sections with a focus map of this shape: that is the
   tissue there (a section's edge), told once, where a wrinkle is one section's.
8. Otherwise **in focus**.

Unreadable tiles never reach ``decide``: the service makes their verdict with
``unreadable``. Nothing here does I/O except ``load_calibration``.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from focuswatch.config import PolicyConfig
from focuswatch.errors import ConfigError
from focuswatch.score.orientation import streak_deg
from focuswatch.verdict import Verdict, VerdictKind, format_score

__all__ = [
    "SECTION_WIDE",
    "DefocusModel",
    "Evidence",
    "decide",
    "load_calibration",
    "severity",
    "unreadable",
]

# A focus map needs this many patches before "a region is worse than the rest"
# means anything: with fewer, the median is one of the patches being judged.
_MIN_PATCHES_FOR_REGION = 3
# A patch that usually shows less than this fraction of the tile's typical patch
# score is mostly resin or sparse tissue: its score swings as the tissue drifts
# from section to section, so it is not judged on its own.
_SPARSE_PATCH = 0.5
# The long-memory baseline: this quantile of the trusted scores (a high one, so a
# drift that has taken over part of the memory does not drag it down).
_UPPER = 0.75
# A patch's fine fraction rests on fewer features than the tile's: its margin is
# this many times ``fine_drop``.
_PATCH_FINE_MARGIN = 2.0
# ... and it must be this many standard errors (binomial, from its feature count,
# and the tissue's spread) below the tile's typical patch (4: every patch of every
# tile is tested).
_PATCH_FINE_Z = 4.0
# The spread of a sharp tile's patch fractions around its typical one that is tissue,
# not sampling (relative; ISBI serial sections: worst sharp patch within 3.6 standard
# errors at 6 %, a σ 3 px wrinkle 6 or more; 0 made sharp patches reach 5.9).
_PATCH_FINE_TISSUE = 0.06
# A patch whose spectral ratio is below this share of the tile's typical patch lost its
# fine detail (ISBI serial sections, 512² tiles of 256 px patches, white and correlated
# noise at 30 and 200 e/px: sharp patches ≥ 0.52 of their tile's median, σ 3 px
# wrinkles 0.003-0.40; a Gaussian of σ 3 px keeps ~1 % of the high band's power).
_PATCH_SPECTRAL_DROP = 0.45
# A patch weak against its tile in any of the position's last this many sections with a
# focus map is the tissue's, not a wrinkle (``_lasting_weak``): a section's rim reads weak
# in most sections, not always in consecutive ones (demo --seed 10: weak, not, weak), and
# two wrinkles on one patch three sections apart (bench/verdicts.py's x-0.6 wafer, which
# plants every wrinkle on the same quarter) are two wrinkles.
_LASTING_SECTIONS = 2
# Astigmatism: the orientation (|z| from 0 to 1) moved at least this far from the
# reference's, and this many times the reference's own spread; without history, a
# tile oriented at least this strongly by itself (ISBI tissue: |z| ≤ 0.12 sharp,
# 0.2-0.6 at astigmatism 0.3-0.5). 0.18, not 0.12: a round blur's orientation is
# unbiased since scorer revision 7 but noisier where little signal is left. Set on the
# verdict bench's x, x-0.6, 2d and white wafers: astigmatic tiles named 45/54 with it
# as with revision 6 at 0.12, round blurs 4/404 against 43/404 (0.16: as many
# astigmatic, a few more round; see README).
_ASTIG_SHIFT = 0.18
_ASTIG_SPREAD = 2.0
_ASTIG_ALONE = 0.25
# Sharp tissue keeps at least this share of its features at fine scales (absolute,
# for a tile with nothing to compare with).
_SHARP_FINE = 0.5
# A spectral reference of this many sections or more is sure (``_spectral_margin``).
_SPECTRAL_SURE = 3
# After this many sections flagged by the spectral ratio alone at one level, a tile at
# that level is left to a person (uncertain) instead of flagged again.
_SPECTRAL_REPEAT = 3
# A tile's fine fraction flags it only when it fell by this many binomial standard
# errors at its number of features, as well as by ``fine_drop``.
_FINE_Z = 3.0
# Against its section's other tiles (no trusted history here), a tile must lose this
# much of their median spectral ratio (positions differ: ISBI sharp tiles keep ≥ 0.67
# of their peers' ratio, σ 1.5 ≤ 0.57 of it).
_PEER_SPECTRAL_DROP = 0.5
# The section's lift (``_spectral_reference``) needs this many other tiles' changes.
_MIN_LIFT_PEERS = 2
# A fine fraction that fell while the spectral ratio held (lost at most this share of a
# sure reference) is the count's sampling, not blur.
_SPECTRUM_HELD = 0.1
# How much one section's spectral ratio scatters with its tissue (relative).
_SPECTRAL_SCATTER_ONE = 0.2
# A section-wide failure needs at least this many other tiles out of focus with it.
_SECTION_WIDE_MIN = 2
# An empty section's fine fraction at or above this is its noise's (resin, 512² at
# 8-200 e/px: 0.86-1.0; sharp ISBI tissue 0.63-0.89), not a tissue signature.
_NOISE_FINE = 0.9
#: How a section-wide failure's reason starts (alerts may group on it).
SECTION_WIDE = "section-wide"

_SEVERITY = {
    VerdictKind.EMPTY: 0,
    VerdictKind.IN_FOCUS: 0,
    VerdictKind.UNCERTAIN: 1,
    VerdictKind.PARTLY_OUT_OF_FOCUS: 1,
    VerdictKind.OUT_OF_FOCUS: 2,
    VerdictKind.UNREADABLE: 3,
}
# Earlier verdicts whose scores are confirmed evidence of what this position looks
# like in focus (empty is decided by content, not by focus; None: not recorded).
# Uncertain counts too: readable tissue nobody flagged, and without it a position with
# no other tiles in its sections (one tile per section) could never be judged. Out
# of focus does not: such a score is trusted only once confirmed sections agree.
_CONFIRMED = frozenset(
    {
        str(VerdictKind.IN_FOCUS),
        str(VerdictKind.PARTLY_OUT_OF_FOCUS),
        str(VerdictKind.EMPTY),
        str(VerdictKind.UNCERTAIN),
    }
)


class DefocusModel(Protocol):
    """What a calibration offers the policy (``focuswatch.calibrate.Calibration``)."""

    def defocus_um(self, score: float, baseline: float) -> float | None: ...


@dataclass(frozen=True)
class Evidence:
    """Everything the policy looks at for one tile version.

    ``history``: scores of the same row/col in earlier sections, most recent first,
    whatever their verdict (``history_kinds``, aligned, gives it; missing entries
    count as in focus); ``fine_history`` their fine-scale fractions and
    ``patch_history`` their focus maps (maps of another shape are ignored).
    ``section_scores``: scores of this section's other readable, non-empty tiles;
    ``section_fine`` their fine-scale fractions; ``section_kinds`` the verdicts of
    those judged against their own position's earlier sections. ``patch_scores``:
    the tile's focus map, or None when the tile was scored whole.
    ``fine_fraction``: the share of the tile's features at
    fine scales (None when the scorer gives none); ``patch_fine`` the same per patch.
    ``orientation``: the spectrum's
    orientation (``focuswatch.score.orientation``, x and y), ``orientation_history``
    aligned with ``history``. ``later``, ``later_fine``: the
    position's next sections (oldest first), given only for a tile with no earlier
    section here (the first section of a wafer has no past to compare with).
    ``spectral``: the spectral ratio (``focuswatch.score.spectrum``: high-to-mid band
    power above the noise floor); ``spectral_history`` and ``later_spectral`` aligned
    with ``history`` and ``later``; ``section_spectral_history`` each other tile of the
    section's ratio with its own position's recent sections (ratio, verdict; most
    recent first): how much the section as a whole changed (imaging conditions, not
    one tile); ``section_spectral`` their ratios. ``history_wide``: whether each
    earlier section here was flagged as part of a section-wide failure, and
    ``history_sections`` their section numbers (aligned with ``history``).
    ``patch_spectral``: the spectral ratio per patch (grid of ``patch_scores``);
    ``patch_fine_history`` and ``patch_spectral_history`` the earlier sections' maps of
    both (aligned with ``history``).
    """

    score: float
    patch_scores: list[list[float]] | None
    content: float
    history: Sequence[float] = ()
    section_scores: Sequence[float] = ()
    patch_history: Sequence[list[list[float]] | None] = ()
    history_kinds: Sequence[str | None] = ()
    fine_fraction: float | None = None
    fine_history: Sequence[float | None] = ()
    section_fine: Sequence[float | None] = ()
    section_kinds: Sequence[str] = ()
    patch_fine: list[list[float]] | None = None
    orientation: tuple[float, float] | None = None
    orientation_history: Sequence[tuple[float, float] | None] = ()
    later: Sequence[float] = ()
    later_fine: Sequence[float | None] = ()
    spectral: float | None = None
    spectral_history: Sequence[float | None] = ()
    later_spectral: Sequence[float | None] = ()
    section_spectral_history: Sequence[tuple[float, Sequence[tuple[float | None, str | None]]]] = ()
    section_spectral: Sequence[float | None] = ()
    history_wide: Sequence[bool] = ()
    history_sections: Sequence[int | None] = ()
    patch_spectral: list[list[float]] | None = None
    patch_fine_history: Sequence[list[list[float]] | None] = ()
    patch_spectral_history: Sequence[list[list[float]] | None] = ()


@dataclass(frozen=True)
class _Past:
    score: float
    kind: str | None
    fine: float | None
    patches: list[list[float]] | None
    turn: tuple[float, float] | None = None
    spectral: float | None = None
    wide: bool = False  # judged out of focus as part of a section-wide failure
    section: int | None = None


@dataclass(frozen=True)
class _Reference:
    """What the tile is compared with."""

    recent: float  # median of the recent trusted scores (or of the peers)
    long: float | None  # upper quartile of the trusted scores over the memory
    where: str  # "this tile position over the last 3 sections", "8 other tiles ..."
    n_long: int
    fine: float | None  # the reference fine-scale fraction
    peers: bool
    drop: float
    turns: tuple[tuple[float, float], ...] = ()  # the reference's orientations
    spectral: float | None = None  # the reference spectral ratio
    n_spectral: int = _SPECTRAL_SURE  # how many sections it is the median of
    #: Nearly all the section's other tiles gained this factor of spectral ratio (their
    #: lower quartile) against their own positions (1: no clear gain).
    lift: float = 1.0
    #: How much the position's fine fraction moves from one trusted section to the next
    #: by itself (a standard deviation; 0: not known).
    fine_scatter: float = 0.0
    #: The median spectral ratio over the memory: a slow drift drags the recent
    #: reference along with it, so the spectrum "held" only if it held against this too.
    spectral_memory: float | None = None


def severity(kind: VerdictKind) -> int:
    """Order verdicts by how much the operator must do: 0 nothing, 2 retake the tile."""
    return _SEVERITY[kind]


def unreadable(reason: str) -> Verdict:
    """The verdict for a tile that could not be read or scored."""
    return Verdict(VerdictKind.UNREADABLE, f"could not be read or scored: {reason}")


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _fine(value: float | None) -> float | None:
    """A usable fine-scale fraction; 0 is one (every feature coarse: a blurred tile)."""
    return float(value) if value is not None and math.isfinite(value) and value >= 0 else None


def _positive(value: float | None) -> float | None:
    """A usable spectral ratio (``score.spectrum`` gives None, not 0, where the high
    band has nothing above its floor)."""
    return float(value) if value is not None and math.isfinite(value) and value >= 0 else None


def _median_positive(values: Sequence[float]) -> float | None:
    m = statistics.median(values) if values else 0.0
    return m if m > 0 else None


def _upper(values: Sequence[float]) -> float:
    """The upper quartile (linear interpolation; the value itself for one)."""
    s = sorted(values)
    pos = _UPPER * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _best_patch(ev: Evidence) -> float | None:
    cells = _finite([v for line in ev.patch_scores or [] for v in line])
    return max(cells) if len(cells) > 1 else None


def _at(values: Sequence[Any], i: int) -> Any:
    return values[i] if i < len(values) else None


def _past(ev: Evidence, cfg: PolicyConfig) -> list[_Past]:
    n = min(len(ev.history), cfg.memory_sections)
    kinds = list(ev.history_kinds)
    fines = list(ev.fine_history)
    maps = list(ev.patch_history)
    out = []
    for i in range(n):
        score = float(ev.history[i])
        if not math.isfinite(score):
            continue
        kind = kinds[i] if i < len(kinds) else None
        if kind == str(VerdictKind.UNREADABLE):
            continue
        fine = _fine(fines[i]) if i < len(fines) else None
        if kind == str(VerdictKind.EMPTY) and not _tissue_signature(fine, score, ev, cfg):
            fine = None
        out.append(
            _Past(
                score,
                kind,
                fine,
                maps[i] if i < len(maps) else None,
                _turn(_at(ev.orientation_history, i)),
                _positive(_at(ev.spectral_history, i)),
                bool(_at(ev.history_wide, i)),
                _at(ev.history_sections, i),
            )
        )
    return out


def _tissue_signature(fine: float | None, score: float, ev: Evidence, cfg: PolicyConfig) -> bool:
    """Whether an earlier section judged empty has a fine fraction of tissue: resin's
    few features are noise, nearly all at fine scales (as a reference, that flagged the
    next sharp tiles as "fine-scale features lost"), while a faint position judged
    empty by content has as many features as tissue and tissue's signature (without
    it, a σ 1.5 px blur there kept half its count and passed). A share of features
    far fewer than the tile's own is the noise's too."""
    if fine is None or fine >= _NOISE_FINE:
        return False
    return score >= (1.0 - cfg.drop_ratio) * ev.score


def _turn(value: Any) -> tuple[float, float] | None:
    if value is None or len(value) != 2 or not all(math.isfinite(float(v)) for v in value):
        return None
    return float(value[0]), float(value[1])


def _trusted(past: list[_Past], cfg: PolicyConfig) -> list[_Past]:
    """Earlier sections trusted as a reference (most recent first); see the docstring."""
    confirmed = [p for p in past if p.kind is None or p.kind in _CONFIRMED]
    if not confirmed:
        return []
    top = _upper([p.score for p in confirmed])
    fines = _finite([p.fine for p in confirmed])
    fine_top = _upper(fines) if fines else None

    def ok(p: _Past) -> bool:
        if p.score < (1.0 - cfg.drop_ratio) * top:
            return False
        return fine_top is None or p.fine is None or p.fine >= (1.0 - cfg.fine_drop) * fine_top

    return [p for p in past if ok(p)]


def _position_reference(
    trusted: list[_Past], past: list[_Past], ev: Evidence, cfg: PolicyConfig
) -> _Reference | None:
    recent = trusted[: cfg.history_sections]
    median = statistics.median(p.score for p in recent)
    if median < cfg.min_baseline:
        return None
    n = len(recent)
    where = (
        "this tile position in the previous section"
        if n == 1
        else f"this tile position over the last {n} sections"
    )
    # The fine fraction barely follows tissue, so the memory's upper quartile guards
    # against a drift that the recent median follows: even a drift that began a few
    # sections into the wafer leaves enough sharp sections at the top of the memory.
    fine = _guarded([p.fine for p in trusted], cfg)
    long = _upper([p.score for p in trusted]) if len(trusted) > n else None
    turns = tuple(p.turn for p in recent if p.turn is not None)
    spectral, n_spectral, lift = _spectral_reference(past, ev, cfg)
    return _Reference(
        median,
        long,
        where,
        len(trusted),
        fine,
        False,
        cfg.drop_ratio,
        turns,
        spectral,
        n_spectral,
        lift,
        _scatter([p.fine for p in trusted]),
        _median_positive(_spectral_window([(p.spectral, p.kind) for p in past], cfg, whole=True)),
    )


def _scatter(values: Sequence[float | None]) -> float:
    """How much a fraction moves from one section to the next by itself: the median
    absolute difference between consecutive sections (most recent first) over 0.6745·√2,
    the standard deviation of one section's value for independent scatter. Differences,
    not the spread about the median: a slow drift moves each section a little and must
    not widen the margin it is caught by. Fewer than four sections: 0 (not known)."""
    fines = _finite(values)
    if len(fines) < 4:
        return 0.0
    steps = [abs(a - b) for a, b in itertools.pairwise(fines)]
    return statistics.median(steps) / (0.6744897501960817 * math.sqrt(2.0))


def _spectral_reference(
    past: list[_Past], ev: Evidence, cfg: PolicyConfig
) -> tuple[float | None, int, float]:
    """The reference spectral ratio and the section's lift.

    The reference is the median of the position's last ``history_sections`` sections
    with tissue that were not judged out of focus: a blurred section does not drag
    the reference down, and one position's lasting blur never becomes its normal (a
    lasting change of the whole section is taken as the new level by ``_regimes``).

    The lift is the gain nearly all of the section's other tiles made against their
    own positions (their lower quartile), only upwards: a section imaged sharper as a
    whole (a new detector setting, a better-focused session) raises every tile's
    ratio, and one tile that kept its old ratio then lost focus. Downwards it is not
    used: a whole section losing detail is a section-wide failure, which must be
    flagged.
    """
    values = _spectral_window([(p.spectral, p.kind) for p in past], cfg)
    if not values:
        return None, 0, 1.0
    changes = []
    for now, history in ev.section_spectral_history:
        usual = _median_positive(_spectral_window(history, cfg))
        if usual is not None and _positive(now) is not None:
            changes.append(float(now) / usual)
    # Only a clear gain: a window that straddles the change (some sections before it,
    # some after) gives a peer a middling one, and a lift from those would leave
    # sharp tiles behind.
    # Nearly every peer must have gained (their lower quartile, not their median): a
    # section where only some positions' tissue got richer leaves the rest unlifted.
    gain = sorted(changes)[len(changes) // 4] if len(changes) >= _MIN_LIFT_PEERS else 1.0
    lift = gain if gain >= 1.0 / (1.0 - cfg.spectral_drop) else 1.0
    return _median_positive(values), len(values), lift


def _spectrum_only_again(
    ev: Evidence, ref: _Reference, past: list[_Past], cfg: PolicyConfig
) -> bool:
    """Whether only the spectral ratio flags this tile (its count and fine fraction
    hold) and it flagged this position at the same level in each of its last
    ``_SPECTRAL_REPEAT`` sections: a false alert must not repeat for the whole memory,
    and a lasting slight blur must not pass either, so the tile is left to a person."""
    now = _positive(ev.spectral)
    loss = _fine_loss(ev, ref)
    if now is None or (loss is not None and loss >= cfg.fine_drop):
        return False
    if ev.score < (1.0 - cfg.drop_ratio) * ref.recent:
        return False
    flagged = (str(VerdictKind.OUT_OF_FOCUS), str(VerdictKind.UNCERTAIN))
    last = [p for p in past if p.kind != str(VerdictKind.EMPTY)][:_SPECTRAL_REPEAT]
    keep = 1.0 - cfg.spectral_drop
    return len(last) == _SPECTRAL_REPEAT and all(
        p.kind in flagged
        and not p.wide
        and p.spectral is not None
        and keep * now <= p.spectral <= now / keep
        for p in last
    )


def _spectral_window(
    history: Sequence[tuple[float | None, str | None]],
    cfg: PolicyConfig,
    *,
    whole: bool = False,
) -> list[float]:
    """The spectral ratios a position's reference is the median of (most recent first;
    see ``_spectral_reference``): the same for the tile and for each of its peers."""
    # Never a flagged section: one position's lasting blur must not become its normal
    # (a lasting change of the whole section is ``_regime``'s, told once).
    skip = (
        str(VerdictKind.EMPTY),
        str(VerdictKind.UNREADABLE),
        str(VerdictKind.OUT_OF_FOCUS),
        str(VerdictKind.UNCERTAIN),  # not judged: not a reference either
    )
    clean = [f for v, kind in history if (f := _positive(v)) is not None and kind not in skip]
    return clean if whole else clean[: cfg.history_sections]


def _guarded(values: Sequence[float | None], cfg: PolicyConfig) -> float | None:
    """A reference fraction: the higher of the recent median and the memory's upper
    quartile (the fraction barely follows tissue, so the upper quartile guards against
    a drift the recent median follows)."""
    fines = _finite(values)
    if not fines:
        return None
    return max(statistics.median(fines[: cfg.history_sections]), _upper(fines))


def _future_reference(ev: Evidence, cfg: PolicyConfig) -> _Reference | None:
    """The position's next sections as the reference of its first section (a first
    section blurred as a whole has no past and no sharp peers). Their median: one of
    them blurred does not make this tile look sharp, one unusually rich does not make
    it look blurred."""
    later = _finite(list(ev.later)[: cfg.history_sections])
    if not later or statistics.median(later) < cfg.min_baseline:
        return None
    n = len(later)
    fines = _finite([_fine(f) for f in list(ev.later_fine)[:n]])
    spectral = _finite([_positive(v) for v in list(ev.later_spectral)[:n]])
    where = (
        "this tile position in the next section"
        if n == 1
        else f"this tile position over the next {n} sections"
    )
    return _Reference(
        statistics.median(later),
        None,
        where,
        0,
        statistics.median(fines) if fines else None,
        False,
        cfg.drop_ratio,
        spectral=_median_positive(spectral),
        n_spectral=len(spectral),
    )


def _peer_reference(ev: Evidence, cfg: PolicyConfig) -> _Reference | str:
    """The section's other tiles as the reference; without one, why not."""
    peers = _finite(ev.section_scores)
    if ev.content < cfg.sparse_contrast:
        return "too little tissue to compare with other tile positions"
    if _section_wide(ev, cfg) is not None:
        return "most other tiles of this section are out of focus too: nothing to compare with"
    if peers and statistics.median(peers) >= cfg.min_baseline:
        n = len(peers)
        noun = "tile" if n == 1 else "tiles"
        fines = _finite([_fine(f) for f in ev.section_fine])
        fine = statistics.median(fines) if fines else None
        where = f"{n} other {noun} of this section"
        return _Reference(
            statistics.median(peers), None, where, 0, fine, True, cfg.section_drop_ratio
        )
    if peers or ev.history:
        return "too few features here to compare with"
    return "no earlier sections or other tiles to compare with yet"


def _section_wide(ev: Evidence, cfg: PolicyConfig) -> tuple[int, int] | None:
    """(out of focus, judged) among the section's other tiles when most lost focus."""
    judged = [k for k in ev.section_kinds if k != str(VerdictKind.EMPTY)]
    bad = sum(1 for k in judged if k == str(VerdictKind.OUT_OF_FOCUS))
    if bad >= _SECTION_WIDE_MIN and bad >= cfg.section_wide_fraction * len(judged):
        return bad, len(judged)
    return None


def _defocus(model: DefocusModel | None, score: float, baseline: float | None) -> float | None:
    if model is None or baseline is None or baseline <= 0:
        return None
    value = model.defocus_um(score, baseline)
    return value if value is not None and math.isfinite(value) else None


def _defocus_text(defocus: float | None) -> str:
    return "" if defocus is None else f"; estimated {defocus:.1f} µm out of focus"


def _shape(patches: list[list[float]]) -> tuple[int, ...]:
    return tuple(len(line) for line in patches)


#: A focus map's cells (row, col, value, count) and their typical value (``_patch_values``).
_PatchValues = tuple[list[tuple[int, int, float, float]], float] | None


def _patch_values(now: list[list[float]] | None, grid: list[list[float]] | None) -> _PatchValues:
    """The patches (row, col, value, count) where ``grid``, aligned with the focus map
    ``now`` (patch scores), has a value, and its typical value: the median over the
    patches with tissue (a count at least ``_SPARSE_PATCH`` of the median patch's: not
    resin). None when too few patches have one to say which is the odd one out."""
    if not now or not grid or _shape(now) != _shape(grid):
        return None
    cells = [
        (r, c, float(v), float(q))
        for r, (line, grid_line) in enumerate(zip(now, grid, strict=True))
        for c, (q, v) in enumerate(zip(line, grid_line, strict=True))
        if math.isfinite(v) and math.isfinite(q)
    ]
    if len(cells) < _MIN_PATCHES_FOR_REGION:
        return None
    typical_score = statistics.median(q for *_, q in cells)
    solid = [v for _, _, v, q in cells if q >= _SPARSE_PATCH * typical_score and v > 0]
    if len(solid) < _MIN_PATCHES_FOR_REGION - 1:
        return None
    return cells, statistics.median(solid)


def _fine_weak_patches(
    signature: _PatchValues, spectra: _PatchValues, cfg: PolicyConfig
) -> list[tuple[int, int]] | None:
    """Patches whose fine-scale fraction is far below the tile's other patches
    (``signature``: ``_patch_values`` of the fine fractions, ``spectra`` of the spectral
    ratios).

    Within one tile the fine fraction does not follow the tissue (a patch of sparse
    tissue keeps it, a blurred patch loses it), so no history is needed. None when
    the tile has no usable per-patch signature.
    """
    if signature is None:
        return None
    cells, typical = signature
    # A patch whose high band held (its spectral ratio at least the typical patch's,
    # less _SPECTRUM_HELD) is not blurred whatever its fine fraction: at a section's
    # edge, tissue beside resin under 2-D correlated noise read 0.33-0.38 against 0.73
    # with a ratio 1.5-5.6 times the typical one (σ 3 px wrinkles: at most 0.40 times).
    held = (
        {(r, c) for r, c, s, _ in spectra[0] if s >= (1.0 - _SPECTRUM_HELD) * spectra[1]}
        if spectra is not None
        else set()
    )
    # A patch is weak when its fine fraction is far below the typical one (twice the
    # tile's margin: fewer features) and significantly so for its number of features
    # (a blurred patch also loses features; a patch of resin has too few to say).
    limit = (1.0 - _PATCH_FINE_MARGIN * cfg.fine_drop) * typical
    weak = []
    for r, c, f, q in cells:
        if q < cfg.min_baseline or f >= limit or (r, c) in held:
            continue
        # Binomial sampling of the patch's q features, and the tissue's own spread
        # between patches of a sharp tile (_PATCH_FINE_TISSUE of the fraction: a
        # patch of big, smooth structures has fewer fine features by itself).
        se = math.sqrt(
            max(typical * (1.0 - typical), 1e-6) / q + (_PATCH_FINE_TISSUE * typical) ** 2
        )
        if typical - f > _PATCH_FINE_Z * se:
            weak.append((r, c))
    return weak


def _spectral_weak_patches(
    spectra: _PatchValues, signature: _PatchValues, cfg: PolicyConfig
) -> list[tuple[int, int]]:
    """Patches whose spectral ratio is far below the tile's typical patch and whose
    fine fraction is below the typical one by the tile's margin (``fine_drop``): a region
    that lost its fine detail, in its spectrum and in its features' scales, while the
    rest kept it. (The ratio alone took 28 sharp patches of ISBI texture repeated 2×2
    under noise correlated along x for wrinkles, their fine fractions 0.70-1.05 of the
    typical; the wrinkles' were at most 0.78.)"""
    # Without a usable fine signature to agree, the ratio alone does not say wrinkle.
    if spectra is None or signature is None:
        return []
    cells, typical = spectra
    fine_cells, fine_typical = signature
    fine = {(r, c): f for r, c, f, _ in fine_cells}
    return [
        (r, c)
        for r, c, s, q in cells
        if q >= cfg.min_baseline
        and s < _PATCH_SPECTRAL_DROP * typical
        and (r, c) in fine
        and fine[r, c] < (1.0 - cfg.fine_drop) * fine_typical
    ]


def _within_tile_weak(
    scores: list[list[float]] | None,
    fine: list[list[float]] | None,
    spectral: list[list[float]] | None,
    cfg: PolicyConfig,
) -> tuple[list[tuple[int, int]] | None, list[tuple[int, int]]]:
    """The patches of one focus map weak against the tile's other patches: by their
    fine fraction (None without a usable per-patch signature) and by their spectral
    ratio (``_fine_weak_patches``, ``_spectral_weak_patches``)."""
    signature = _patch_values(scores, fine)
    spectra = _patch_values(scores, spectral)
    return (
        _fine_weak_patches(signature, spectra, cfg),
        _spectral_weak_patches(spectra, signature, cfg),
    )


def _lasting_weak(ev: Evidence, cfg: PolicyConfig) -> set[tuple[int, int]]:
    """The patches that were weak against their tile (``_within_tile_weak``) in any of
    the position's last ``_LASTING_SECTIONS`` sections with a focus map like this one (empty
    and unreadable sections skipped, whatever the others' verdicts): within one tile
    that is the tissue's own texture (on ``focuswatch demo``'s wafers the section's edge,
    resin with a soft rim, read so in 3-5 sections of a position), where a wrinkle is one
    section's. Told once, in the first section of a run of them."""
    now = ev.patch_scores
    if not now:
        return set()
    skip = (str(VerdictKind.EMPTY), str(VerdictKind.UNREADABLE))
    out: set[tuple[int, int]] = set()
    seen = 0
    for maps, fine, spectral, kind in itertools.zip_longest(
        ev.patch_history, ev.patch_fine_history, ev.patch_spectral_history, ev.history_kinds
    ):
        if seen >= _LASTING_SECTIONS:
            break
        if kind in skip or maps is None or _shape(maps) != _shape(now):
            continue
        seen += 1
        by_fine, by_spectrum = _within_tile_weak(maps, fine, spectral, cfg)
        out.update(by_fine or [], by_spectrum)
    return out


def _weak_patches(ev: Evidence, trusted: list[_Past], cfg: PolicyConfig) -> list[tuple[int, int]]:
    """Patches (row, col) that lost much more of their usual score than the tile did."""
    now = ev.patch_scores
    if not now:
        return []
    maps = [
        p.patches
        for p in trusted[: cfg.history_sections]
        if p.patches is not None and _shape(p.patches) == _shape(now)
    ]
    if not maps:
        return []
    usual: dict[tuple[int, int], float] = {}
    for r, line in enumerate(now):
        for c, value in enumerate(line):
            past = _finite([m[r][c] for m in maps])
            if past and math.isfinite(value):
                # The latest section counts when it is lower: tissue that changed for
                # good (a vessel, resin coming in) is the new normal at once.
                usual[r, c] = min(statistics.median(past), past[0])
    if not usual:
        return []
    floor = max(cfg.min_baseline, _SPARSE_PATCH * statistics.median(usual.values()), 1e-12)
    ratios = [(r, c, float(now[r][c]) / u) for (r, c), u in usual.items() if u >= floor]
    if len(ratios) < _MIN_PATCHES_FOR_REGION:
        return []
    typical = statistics.median(q for _, _, q in ratios)
    limit = (1.0 - cfg.partial_patch_drop) * typical
    return [(r, c) for r, c, q in ratios if q < limit]


def _fine_loss(ev: Evidence, ref: _Reference) -> float | None:
    fine = _fine(ev.fine_fraction)
    if fine is None or ref.fine is None or ref.fine <= 0:
        return None
    return 1.0 - fine / ref.fine


def _features(ev: Evidence) -> float:
    """How many features the tile's fine fraction is a share of (its patches' counts)."""
    counts = _finite([q for line in ev.patch_scores or [] for q in line])
    return sum(counts) if counts else ev.score


def _fine_significant(ev: Evidence, ref: _Reference) -> bool:
    """Whether the fine fraction fell by more than its sampling and the tissue allow:
    with few features (a small tile, or noise correlated in 2-D, where the floor leaves a
    handful of fine ones) a share scatters by √(p(1−p)/n) from tile to tile, and where
    the floor is high the share follows the tissue's fine contrast, which changes from
    section to section (ISBI serial sections, 2-D correlated noise at 30 e/px: a sharp
    position's fraction moves by ~8 % between sections, under white noise ~2 %); that
    scatter is the position's own (``_scatter``)."""
    fine = _fine(ev.fine_fraction)
    # The reference's count too: a blur lowers the tile's own, and with it its weight.
    cells = sum(len(line) for line in ev.patch_scores or []) or 1
    n = max(_features(ev), ref.recent * cells)
    if fine is None or ref.fine is None or n <= 0:
        return True
    se2 = max(ref.fine * (1.0 - ref.fine), 1e-6) / n + ref.fine_scatter**2
    return ref.fine - fine > _FINE_Z * math.sqrt(se2)


def _fine_text(ev: Evidence, ref: _Reference) -> str:
    return f"fine-scale fraction {ev.fine_fraction:.2f} against {ref.fine:.2f} of {ref.where}"


def _astigmatism(ev: Evidence, ref: _Reference) -> str | None:
    """ "astigmatic (streaks along ~30°)" when the tile's spectrum turned clearly one
    way against the reference's (the position's history: tissue and scan noise have
    their own orientation), or, without one, is strongly oriented by itself."""
    now = _turn(ev.orientation)
    if now is None:
        return None
    if ref.turns:
        mx = statistics.median(t[0] for t in ref.turns)
        my = statistics.median(t[1] for t in ref.turns)
        spread = max(math.hypot(t[0] - mx, t[1] - my) for t in ref.turns)
        dx, dy = now[0] - mx, now[1] - my
        if math.hypot(dx, dy) < max(_ASTIG_SHIFT, _ASTIG_SPREAD * spread):
            return None
        what = "against this position's history"
    else:
        dx, dy = now
        if math.hypot(dx, dy) < _ASTIG_ALONE:
            return None
        what = "no history here to compare its orientation with"
    angle = streak_deg(dx, dy)
    # Round to 5°: the estimate is good to a few degrees, not to one.
    return f"astigmatic (streaks along ~{5 * round(angle / 5) % 180:.0f}°, {what})"


def _looks_blurred(ev: Evidence) -> str | None:
    """Why the tile's own scale signature looks like a blurred image's, without any
    reference: sharp EM tissue keeps most of its features at fine scales at every
    dose (ISBI: a fine fraction ≥ ``_SHARP_FINE``), a blur of σ ≥ 2-3 px does not."""
    fine = _fine(ev.fine_fraction)
    if fine is None or fine >= _SHARP_FINE:
        return None
    return (
        f"its own scale signature looks blurred (fine-scale fraction {fine:.2f}, sharp "
        f"tissue keeps ≥ {_SHARP_FINE:.2f}): check it"
    )


def _lifted(ev: Evidence, ref: _Reference) -> float:
    """The lift that applies to this tile: its section's, when the tile itself gained
    nothing against its own position (it was left behind); else none."""
    now = _positive(ev.spectral)
    if now is None or ref.spectral is None or now >= ref.spectral:
        return 1.0
    return ref.lift


def _spectral_loss(ev: Evidence, ref: _Reference) -> float | None:
    """How much of the reference's spectral ratio (lifted with its section) is lost."""
    now = _positive(ev.spectral)
    if now is None or ref.spectral is None:
        return None
    return 1.0 - now / (ref.spectral * _lifted(ev, ref))


def _spectral_memory_loss(ev: Evidence, ref: _Reference) -> float:
    """How much of the memory's median spectral ratio (lifted) is lost; 0 without one."""
    now = _positive(ev.spectral)
    if now is None or ref.spectral_memory is None:
        return 0.0
    return 1.0 - now / (ref.spectral_memory * _lifted(ev, ref))


def _spectral_margin(ref: _Reference, cfg: PolicyConfig) -> float:
    """The loss that flags a tile: ``spectral_drop`` against ``_SPECTRAL_SURE`` or more
    sections; against fewer, the reference is less sure (one section's ratio scatters
    ±20 % with its tissue), so more must be lost (keep ``√(n/3)`` of the ratio kept)."""
    n = min(max(ref.n_spectral, 1), _SPECTRAL_SURE)
    return 1.0 - (1.0 - cfg.spectral_drop) * math.sqrt(n / _SPECTRAL_SURE)


def _spectrum_held(ref: _Reference) -> float:
    """The most of its reference the spectral ratio may lose and still have held:
    ``_SPECTRUM_HELD`` against a sure reference; against one or two sections, what one
    section's ratio scatters by with its tissue (±20 %, over √n): the fine fraction
    rests on as few sections then, and under 2-D correlated noise at 30 e/px it fell by
    20-27 % on sharp second sections whose ratio held or rose (a σ 1.5 px blur takes
    48-70 % of the ratio)."""
    if ref.n_spectral >= _SPECTRAL_SURE:
        return _SPECTRUM_HELD
    return _SPECTRAL_SCATTER_ONE / math.sqrt(max(ref.n_spectral, 1))


def _spectral_text(ev: Evidence, ref: _Reference) -> str:
    lift = _lifted(ev, ref)
    expected = (ref.spectral or 0.0) * lift
    lifted = (
        ""
        if lift == 1.0
        else f", raised ×{lift:.1f} as this section's other tiles gained against theirs"
    )
    return f"high-frequency power {ev.spectral:.3f} against {expected:.3f} of {ref.where}{lifted}"


def _out_of_focus(
    ev: Evidence, ref: _Reference, cfg: PolicyConfig, calibration: DefocusModel | None
) -> Verdict | None:
    """The out-of-focus verdict against ``ref``, or None when the tile holds up."""
    score_text = f"score {format_score(ev.score)}"
    defocus = _defocus(calibration, ev.score, ref.recent)
    lost = _spectral_loss(ev, ref)
    if lost is not None and lost >= _spectral_margin(ref, cfg):
        # Fine detail gone above the noise floor: the spectrum's own evidence of blur,
        # stronger than the count where the count barely moves (σ 1.5 at low dose).
        astig = _astigmatism(ev, ref)
        what = (
            "fine detail lost, defocus"
            if astig is None
            else f"{astig}: check stigmation; fine detail lost"
        )
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{score_text}: {what} ({_spectral_text(ev, ref)}, {100 * lost:.0f} % lower)"
            f"{_defocus_text(defocus)}",
            baseline=ref.recent,
            defocus_um=defocus,
        )
    loss = _fine_loss(ev, ref)
    # The spectrum held: a fall of the fine fraction is the count's sampling (at few
    # features), and only the count itself can still say blur (below).
    # Held against the memory too: a slow drift that the recent ratio follows has not
    # "held" (the fine fraction's reference is guarded against drift the same way).
    limit = _spectrum_held(ref)
    held = lost is not None and lost <= limit and _spectral_memory_loss(ev, ref) <= limit
    if loss is not None and not held:
        if loss < cfg.fine_drop or not _fine_significant(ev, ref):
            return None
        evidence = f"{_fine_text(ev, ref)}, {100 * loss:.0f} % lower"
        astig = _astigmatism(ev, ref)
        what = (
            "fine-scale features lost, defocus"
            if astig is None
            else (f"{astig}: check stigmation; fine-scale features lost")
        )
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{score_text}: {what} ({evidence}){_defocus_text(defocus)}",
            baseline=ref.recent,
            defocus_um=defocus,
        )
    if held and loss is not None and loss < cfg.fine_drop:
        # Fine detail and the scale signature both held: a lower count is less tissue,
        # not blur (a tile of one patch has no median over patches to steady its count).
        return None
    # Against other positions, the tile's best patch speaks for it (see the docstring).
    best = _best_patch(ev) if ref.peers else None
    judged = ev.score if best is None else max(best, ev.score)
    subject = score_text if best is None else f"{score_text}, best patch {format_score(best)},"
    if judged < (1.0 - ref.drop) * ref.recent:
        below = 100.0 * (1.0 - judged / ref.recent)
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{subject} is {below:.0f} % below the median of {ref.where} "
            f"({format_score(ref.recent)}){_defocus_text(defocus)}",
            baseline=ref.recent,
            defocus_um=defocus,
        )
    if ref.long is not None and judged < (1.0 - ref.drop) * ref.long:
        below = 100.0 * (1.0 - judged / ref.long)
        defocus = _defocus(calibration, ev.score, ref.long)
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{subject} is {below:.0f} % below the upper quartile of this tile position "
            f"over the last {ref.n_long} sections ({format_score(ref.long)}): a slow drift"
            f"{_defocus_text(defocus)}",
            baseline=ref.long,
            defocus_um=defocus,
        )
    return None


def _judge(
    ev: Evidence, cfg: PolicyConfig, calibration: DefocusModel | None, past: list[_Past]
) -> tuple[Verdict, list[_Past]]:
    score_text = f"score {format_score(ev.score)}"
    trusted = _trusted(past, cfg)
    ref = _position_reference(trusted, past, ev, cfg) if trusted else None
    if ref is not None:
        out = _out_of_focus(ev, ref, cfg, calibration)
        if out is not None and _spectrum_only_again(ev, ref, past, cfg):
            n = _SPECTRAL_REPEAT
            return Verdict(
                VerdictKind.UNCERTAIN,
                f"{score_text}: not judged; fine detail as low as in this tile position's "
                f"last {n} sections, which were flagged for it while its count and "
                "scale signature held (less fine texture in this tissue, or the same "
                "slight blur every time: check it once)",
                baseline=ref.recent,
            ), trusted
        if out is not None:
            return out, trusted
        context = f"median of {ref.where} {format_score(ref.recent)}"
        if _fine_loss(ev, ref) is not None:
            if ev.score < (1.0 - cfg.drop_ratio) * ref.recent:
                context = (
                    f"{100 * (1 - ev.score / ref.recent):.0f} % below the {context}, but "
                    f"{_fine_text(ev, ref)}: fewer features at every scale, less tissue here"
                )
            else:
                context += f"; fine-scale fraction {ev.fine_fraction:.2f} against {ref.fine:.2f}"
        if _spectral_loss(ev, ref) is not None:
            context += f"; {_spectral_text(ev, ref)}"
        return Verdict(
            VerdictKind.IN_FOCUS, f"{score_text} ({context})", baseline=ref.recent
        ), trusted

    # The position's first section: its next sections, then its peers, may flag it.
    # (Only the first: a tile whose past was all flagged looking ahead would make the
    # next one's past flagged too, a cascade along a position whose tissue changes.)
    future = _future_reference(ev, cfg) if not past else None
    if future is not None:
        out = _out_of_focus(ev, future, cfg, calibration)
        if out is not None:
            return out, []
    peers = _peer_reference(ev, cfg)
    blurred = _looks_blurred(ev)
    if isinstance(peers, str) and future is not None and blurred is None:
        context = f"median of {future.where} {format_score(future.recent)}"
        return Verdict(
            VerdictKind.IN_FOCUS, f"{score_text} ({context})", baseline=future.recent
        ), []
    if isinstance(peers, str):
        if past and not trusted:
            peers = (
                "no earlier section here was judged in focus; nothing trustworthy to compare with"
            )
        if blurred is not None:
            peers = f"{peers}; {blurred}"
        return Verdict(VerdictKind.UNCERTAIN, f"{score_text}: not judged, {peers}"), trusted
    out = _out_of_focus(ev, peers, cfg, calibration)
    if out is None:
        context = f"median of {peers.where} {format_score(peers.recent)}"
        if blurred is not None:
            # Its peers may all be blurred with it (the first section of a wafer out
            # of focus): passing it as in focus would make it a baseline.
            return Verdict(
                VerdictKind.UNCERTAIN,
                f"{score_text}: not judged; like the {context}, but {blurred}",
                baseline=peers.recent,
            ), []
        return Verdict(VerdictKind.IN_FOCUS, f"{score_text} ({context})", baseline=peers.recent), []
    recent = past[: cfg.history_sections]
    fines = _finite([p.fine for p in recent])
    fine = _fine(ev.fine_fraction)
    spectra = _finite([p.spectral for p in recent])
    now = _positive(ev.spectral)
    if spectra and now is not None:
        # Like its flagged past by the spectrum (the same tissue flagged again), or
        # sharper: not judged; one far blurrier than that past is blurred, and the
        # peers' verdict stands.
        usual = statistics.median(spectra)
        alike = now >= (1.0 - cfg.spectral_drop) * usual
    elif fines and fine is not None:  # ... by the scale signature ...
        alike = fine >= (1.0 - cfg.fine_drop) * statistics.median(fines)
    else:  # ... or by the score
        alike = bool(recent) and ev.score >= (1.0 - cfg.drop_ratio) * statistics.median(
            p.score for p in recent
        )
    unconfirmed = [p.score for p in recent]
    peer_spectra = _finite([_positive(v) for v in ev.section_spectral])
    usual_peer = _median_positive(peer_spectra) if len(peer_spectra) >= _MIN_LIFT_PEERS else None
    if alike and now is not None and usual_peer is not None:
        lost = 1.0 - now / usual_peer
        if lost >= _PEER_SPECTRAL_DROP:
            # Far below its peers' fine detail as well as their count, again: different
            # tissue keeps its high-to-mid band ratio near its peers' (ISBI: ≥ 0.67 of
            # it), a blur does not; the same blur twice is still a blur.
            return Verdict(
                VerdictKind.OUT_OF_FOCUS,
                f"{score_text}: fine detail lost, defocus (high-frequency power {now:.3f} "
                f"against {usual_peer:.3f} of the {peers.where}, {100 * lost:.0f} % lower, "
                "as this tile position was in its last sections)",
                baseline=peers.recent,
            ), []
    if alike:
        n = len(unconfirmed)
        sections = "section" if n == 1 else f"{n} sections"
        return (
            Verdict(
                VerdictKind.UNCERTAIN,
                f"{score_text}: not judged; far below the {peers.where}, as this tile "
                f"position was in its last {sections} (less tissue here, or the same blur "
                "every time: check it once)",
                baseline=peers.recent,
            ),
            [],
        )
    return out, []


@dataclass(frozen=True)
class _Regime:
    """A section-wide loss of fine detail at this position (``past[start]``) and the
    sections after it that held its level (``held``, up to ``regime_sections``)."""

    start: int
    held: int

    def settled(self, cfg: PolicyConfig) -> bool:
        return self.held >= cfg.regime_sections


def _at_level(p: _Past, start: _Past, before: float | None, cfg: PolicyConfig) -> bool:
    """``p`` about where ``start`` (the section-wide failure) left this position: its
    fine detail did not fall further (a drift keeps falling) and did not come back to
    ``before``, the level before the failure (an autofocus failure that recovered)."""
    now, then, drop = _levels(p, start, cfg)
    if now < (1.0 - drop) * then:
        return False
    if before is not None and _came_back(p, start, before, cfg):
        return False
    return p.fine is None or start.fine is None or p.fine >= (1.0 - cfg.fine_drop) * start.fine


def _before(past: list[_Past], i: int) -> float | None:
    """The level this position fell from into the section-wide failure at ``past[i]``:
    its latest section before it with tissue, not judged out of focus (within a new
    level not yet taken as normal, a failure falls from that level)."""
    by_spectrum = past[i].spectral is not None
    for q in past[i + 1 :]:
        if q.kind not in (str(VerdictKind.OUT_OF_FOCUS), str(VerdictKind.EMPTY)):
            value = q.spectral if by_spectrum else q.score
            return value if value is not None and value > 0 else None
    return None


def _regimes(past: list[_Past], cfg: PolicyConfig) -> Iterator[tuple[_Regime, float | None]]:
    """Section-wide failures here, latest first, whose level the sections after them
    held (each of them, up to ``regime_sections``; empty tiles and tiles flagged in
    between do not count), with the level before each. Not at a position flagged in
    its two sections before (a drift that the section's failure met on its way), nor
    one that fell from a stretch not judged (another failure's, still pending)."""
    oof, empty = str(VerdictKind.OUT_OF_FOCUS), str(VerdictKind.EMPTY)
    for i, p in enumerate(past):
        if not (p.wide and p.kind == oof):
            continue
        older = [q for q in past[i + 1 :] if q.kind != empty]
        if len(older) >= 2 and older[0].kind == oof and older[1].kind == oof:
            continue
        last = next((q for q in older if q.kind != oof), None)
        if last is not None and last.kind == str(VerdictKind.UNCERTAIN):
            continue  # a failure within the stretch of an earlier one, still pending
        before = _before(past, i)
        if before is None or not _sudden(p, before, cfg) or _blurred_level(p, past, i, cfg):
            continue
        after = [q for q in reversed(past[:i]) if q.kind not in (empty, oof)]
        if any(_came_back(q, p, before, cfg) for q in after):
            continue  # it came back to the level before: an episode, not a new normal
        first = after[: cfg.regime_sections]
        if all(_at_level(q, p, before, cfg) for q in first):
            yield _Regime(i, len(first)), before


def _levels(q: _Past, start: _Past, cfg: PolicyConfig) -> tuple[float, float, float]:
    """``q``'s and ``start``'s level in one measure (the spectral ratio where both have
    one, else the score) and that measure's flagging margin."""
    if q.spectral is not None and start.spectral is not None:
        return q.spectral, start.spectral, cfg.spectral_drop
    return q.score, start.score, cfg.drop_ratio


def _came_back(q: _Past, start: _Past, before: float, cfg: PolicyConfig) -> bool:
    """``q`` is back within a margin of ``before``, the level ``start`` fell from (in
    ``start``'s measure: ``_before``). One without that measure cannot be compared,
    and counts as back: no new level is read from it."""
    if start.spectral is not None and q.spectral is None:
        return True
    now, _, drop = _levels(q, start, cfg)
    return now >= (1.0 - drop) * before


def _sudden(start: _Past, before: float, cfg: PolicyConfig) -> bool:
    """A new level begins with a sudden fall: the failed section lost at least a
    flagging margin against the level just before it. A drift of the whole section
    falls a little each section (the sections before it already low) and never is one."""
    return not _came_back(start, start, before, cfg)


def _blurred_level(start: _Past, past: list[_Past], i: int, cfg: PolicyConfig) -> bool:
    """A level that looks blurred by itself is never a new normal: a scale signature
    below sharp tissue's (``_SHARP_FINE``), or one that lost twice ``fine_drop``
    against the position's section before the failure (an autofocus that stays off)."""
    if start.fine is None:
        return False
    if start.fine < _SHARP_FINE:
        return True
    earlier = next(
        (q.fine for q in past[i + 1 :] if q.kind != str(VerdictKind.OUT_OF_FOCUS) and q.fine),
        None,
    )
    return earlier is not None and start.fine < (1.0 - 2.0 * cfg.fine_drop) * earlier


def _section_held(ev: Evidence, cfg: PolicyConfig) -> bool:
    """The level is held section-wide, not by one position still blurred after its
    section recovered: the tile keeps at least ``1 − spectral_drop`` of its section's
    other tiles' median spectral ratio (ISBI: sharp tiles keep ≥ 0.67 of their peers',
    σ 1.5 ≤ 0.57); without ratios, most of the other judged tiles are not in focus."""
    now = _positive(ev.spectral)
    peers = _finite([_positive(v) for v in ev.section_spectral])
    usual = _median_positive(peers) if len(peers) >= _MIN_LIFT_PEERS else None
    if now is not None and usual is not None:
        return now >= (1.0 - cfg.spectral_drop) * usual
    judged = [k for k in ev.section_kinds if k != str(VerdictKind.EMPTY)]
    sharp = sum(
        1 for k in judged if k in (str(VerdictKind.IN_FOCUS), str(VerdictKind.PARTLY_OUT_OF_FOCUS))
    )
    return sharp < cfg.section_wide_fraction * len(judged) or not judged


def _section_name(p: _Past) -> str:
    return "an earlier section" if p.section is None else f"section {p.section:03d}"


def _as_new_level(past: list[_Past], regime: _Regime) -> list[_Past]:
    """The position's history from the section-wide failure on, that section taken as
    in focus: the imaging's new level."""
    start = past[regime.start]
    return [*past[: regime.start], replace(start, kind=str(VerdictKind.IN_FOCUS), wide=False)]


def _judge_with_regime(
    ev: Evidence, cfg: PolicyConfig, calibration: DefocusModel | None
) -> tuple[Verdict, list[_Past]]:
    """``_judge``, after a lasting section-wide change: against the new level once it
    held for ``regime_sections`` sections; until then a tile that holds it too, in a
    section that holds it, is not judged (still failing, or the new normal: told
    once, with the failed section)."""
    past = _past(ev, cfg)
    now = _Past(ev.score, None, _fine(ev.fine_fraction), None, spectral=_positive(ev.spectral))
    pending: tuple[_Regime, float | None] | None = None
    settled: _Regime | None = None
    for regime, before in _regimes(past, cfg):
        if regime.settled(cfg):
            settled = regime
            break
        # A failure this tile came back from (or fell further than) is not its level.
        if pending is None and _at_level(now, past[regime.start], before, cfg):
            pending = regime, before
    base = past if settled is None else _as_new_level(past, settled)
    verdict, trusted = _judge(ev, cfg, calibration, base)
    if pending is not None and verdict.kind is VerdictKind.OUT_OF_FOCUS and _section_held(ev, cfg):
        regime, _ = pending
        start = past[regime.start]
        level = (
            f"high-frequency power {now.spectral:.3f} against {start.spectral:.3f} there"
            if now.spectral is not None and start.spectral is not None
            else f"score {format_score(start.score)} there"
        )
        return Verdict(
            VerdictKind.UNCERTAIN,
            f"score {format_score(ev.score)}: not judged; fine detail as low as in "
            f"{_section_name(start)} ({level}), which lost it with its whole section: "
            f"still out of focus, or a lasting change in imaging ({regime.held + 1} of "
            f"{cfg.regime_sections} sections at that level; then it is the new level)",
            baseline=verdict.baseline,
        ), trusted
    if settled is not None and verdict.kind is VerdictKind.IN_FOCUS:
        first = not any(
            p.kind in (str(VerdictKind.IN_FOCUS), str(VerdictKind.PARTLY_OUT_OF_FOCUS))
            for p in past[: settled.start]
        )
        if first:
            verdict = replace(
                verdict,
                reason=f"{verdict.reason}; fine detail as in the {settled.start + 1} sections "
                f"since {_section_name(past[settled.start])}, which lost it together: taken "
                "as the imaging's new level",
            )
    return verdict, trusted


def decide(ev: Evidence, *, cfg: PolicyConfig, calibration: DefocusModel | None = None) -> Verdict:
    """The verdict for one tile; see the module docstring for the rules."""
    score_text = f"score {format_score(ev.score)}"
    if not math.isfinite(ev.score):
        return unreadable(f"{score_text} is not a number")
    if ev.content < cfg.empty_contrast:
        return Verdict(
            VerdictKind.EMPTY,
            f"{score_text}; content {ev.content:.3f} is below {cfg.empty_contrast:g}: "
            "no tissue to judge (resin, a hole or the section's edge)",
        )

    verdict, trusted = _judge_with_regime(ev, cfg, calibration)
    if verdict.kind is not VerdictKind.OUT_OF_FOCUS and ev.score < cfg.min_score:
        defocus = _defocus(calibration, ev.score, verdict.baseline)
        verdict = Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{score_text} is below the minimum score {format_score(cfg.min_score)}"
            f"{_defocus_text(defocus)}",
            baseline=verdict.baseline,
            defocus_um=defocus,
        )
    if verdict.kind is VerdictKind.OUT_OF_FOCUS:
        wide = _section_wide(ev, cfg)
        if wide is not None:
            bad, judged = wide
            verdict = Verdict(
                verdict.kind,
                f"{SECTION_WIDE}: {bad} of the {judged} other judged tiles of this section "
                f"are out of focus too (autofocus failure?); {verdict.reason}",
                baseline=verdict.baseline,
                defocus_um=verdict.defocus_um,
            )
        return verdict
    if verdict.kind is not VerdictKind.IN_FOCUS:
        return verdict

    by_fine, by_spectrum = _within_tile_weak(ev.patch_scores, ev.patch_fine, ev.patch_spectral, cfg)
    # A patch that was as weak against its tile in the position's last sections is the
    # tissue's (a section's edge, a smooth region), not a wrinkle of this section.
    lasting = _lasting_weak(ev, cfg)
    by_spectrum = [rc for rc in by_spectrum if rc not in lasting]
    if by_fine is not None:
        by_fine = [rc for rc in by_fine if rc not in lasting]
    by_features = by_fine if by_fine is not None else _weak_patches(ev, trusted, cfg)
    weak = sorted({*by_features, *by_spectrum})
    if len(weak) >= cfg.partial_min_patches:
        total = sum(len(line) for line in ev.patch_scores or [])
        cells = ", ".join(f"r{r}-c{c}" for r, c in weak[:8]) + (" …" if len(weak) > 8 else "")
        # Each rule that flagged a patch says what it saw.
        said = []
        if by_features:
            said.append(
                "lost their fine-scale features while the rest of the tile kept them"
                if by_fine is not None
                else f"lost more than {100 * cfg.partial_patch_drop:.0f} % of their usual "
                "score at this position while the rest did not"
            )
        if set(by_spectrum) - set(by_features):
            said.append(
                "lost their fine detail (high-frequency power below "
                f"{100 * _PATCH_SPECTRAL_DROP:.0f} % of the tile's typical patch) while the "
                "rest of the tile kept it"
            )
        what = ", or ".join(said)
        return Verdict(
            VerdictKind.PARTLY_OUT_OF_FOCUS,
            f"{score_text} is fine for the whole tile, but {len(weak)} of {total} patches "
            f"{what} (patches {cells}): a wrinkle, dirt or a tilted region",
            baseline=verdict.baseline,
        )
    return verdict


def load_calibration(pcfg: PolicyConfig) -> DefocusModel | None:
    """The calibration named by ``policy.calibration``, or None when it is not set.

    An unreadable or invalid file is a configuration error, reported with its key path.
    """
    if pcfg.calibration is None:
        return None
    from focuswatch import calibrate

    path = Path(pcfg.calibration)
    try:
        return calibrate.Calibration.load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"at 'policy.calibration': {exc}") from None
