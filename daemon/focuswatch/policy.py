"""Scores to verdicts: a pure decision with a reason a person can read.

A focus score means little on its own: it depends on how much structure the tile
shows, so the policy compares each tile with its own context:

1. **Empty** when the tile's content (contrast) is below ``policy.empty_contrast``:
   resin, a hole, the edge of the section. Decided by content alone, never alerted.
2. **Baseline**: the median score of the same tile position over the last
   ``policy.history_sections`` sections when there is history (tissue changes slowly
   from section to section, and a rolling median follows slow drift over hundreds
   of sections); otherwise the median of this section's other tiles (a looser
   ``policy.section_drop_ratio``, since different positions show different tissue),
   but only for a tile with enough tissue to be compared with other positions
   (content ≥ ``policy.sparse_contrast``: a tile that is mostly resin scores low
   however sharp it is). Against peers, a tile with a focus map is represented by
   its best patch: a tile that is half resin still has sharp tissue somewhere, a
   blurred tile has none anywhere. Otherwise no baseline, and only the absolute floor
   ``policy.min_score`` applies. A baseline below ``policy.min_baseline`` has too
   few features to compare against and is not used. The first section therefore
   cannot start an alert storm.
3. **Out of focus** when ``score < (1 - drop_ratio) · baseline`` or ``score < min_score``.
4. **Partly out of focus** when the whole-tile score is fine but at least
   ``policy.partial_min_patches`` patches of the focus map lost ``partial_patch_drop``
   or more of their own score at this position in earlier sections (the lower of the
   median and the latest), relative to the tile's median change (a wrinkle, dirt, a
   tilted region). Patches are compared with
   their own history, not with each other: within one tile, resin and tissue patches
   differ far more than blur makes them.
5. Otherwise **in focus**.

Unreadable tiles never reach ``decide``: the service makes their verdict with
``unreadable``. Nothing here does I/O except ``load_calibration``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from focuswatch.config import PolicyConfig
from focuswatch.errors import ConfigError
from focuswatch.verdict import Verdict, VerdictKind

__all__ = [
    "DefocusModel",
    "Evidence",
    "decide",
    "format_score",
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
_PEERS = " of this section"

_SEVERITY = {
    VerdictKind.EMPTY: 0,
    VerdictKind.IN_FOCUS: 0,
    VerdictKind.PARTLY_OUT_OF_FOCUS: 1,
    VerdictKind.OUT_OF_FOCUS: 2,
    VerdictKind.UNREADABLE: 3,
}


class DefocusModel(Protocol):
    """What a calibration offers the policy (``focuswatch.calibrate.Calibration``)."""

    def defocus_um(self, score: float, baseline: float) -> float | None: ...


@dataclass(frozen=True)
class Evidence:
    """Everything the policy looks at for one tile version.

    ``history``: scores of the same row/col in earlier sections, most recent first
    (readable, non-empty tiles; only the first ``history_sections`` are used).
    ``section_scores``: scores of this section's other tiles (readable, non-empty).
    ``patch_scores``: the tile's focus map (rows of patches), or None when the tile
    was scored whole. ``patch_history``: the focus maps of the same position in
    earlier sections, most recent first (maps of another shape are ignored).
    """

    score: float
    patch_scores: list[list[float]] | None
    content: float
    history: Sequence[float] = ()
    section_scores: Sequence[float] = ()
    patch_history: Sequence[list[list[float]] | None] = ()


def severity(kind: VerdictKind) -> int:
    """Order verdicts by how much the operator must do: 0 nothing, 2 retake the tile."""
    return _SEVERITY[kind]


def format_score(score: float) -> str:
    """A score as a person reads it: counts as integers, small values to 3 digits."""
    if not math.isfinite(score):
        return str(score)
    if abs(score) >= 100:
        return f"{score:,.0f}".replace(",", " ")
    return f"{score:.3g}"


def unreadable(reason: str) -> Verdict:
    """The verdict for a tile that could not be read or scored."""
    return Verdict(VerdictKind.UNREADABLE, f"could not be read or scored: {reason}")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if math.isfinite(v)]


def _best_patch(ev: Evidence) -> float | None:
    cells = _finite([v for line in ev.patch_scores or [] for v in line])
    return max(cells) if len(cells) > 1 else None


def _baseline(ev: Evidence, cfg: PolicyConfig) -> tuple[float | None, float, str]:
    """(baseline, allowed drop, where it comes from); without one, why not."""
    history = _finite(list(ev.history)[: cfg.history_sections])
    if history and statistics.median(history) >= cfg.min_baseline:
        n = len(history)
        where = (
            "this tile position in the previous section"
            if n == 1
            else f"this tile position over the last {n} sections"
        )
        return statistics.median(history), cfg.drop_ratio, where
    peers = _finite(ev.section_scores)
    if ev.content < cfg.sparse_contrast:
        return None, 0.0, "too little tissue to compare with other tile positions"
    if peers and statistics.median(peers) >= cfg.min_baseline:
        n = len(peers)
        noun = "tile" if n == 1 else "tiles"
        return statistics.median(peers), cfg.section_drop_ratio, f"{n} other {noun}{_PEERS}"
    if history or peers:
        return None, 0.0, "too few features here to compare with"
    return None, 0.0, "no earlier sections or other tiles to compare with yet"


def _defocus(model: DefocusModel | None, score: float, baseline: float | None) -> float | None:
    if model is None or baseline is None or baseline <= 0:
        return None
    value = model.defocus_um(score, baseline)
    return value if value is not None and math.isfinite(value) else None


def _defocus_text(defocus: float | None) -> str:
    return "" if defocus is None else f"; estimated {defocus:.1f} µm out of focus"


def _shape(patches: list[list[float]]) -> tuple[int, ...]:
    return tuple(len(line) for line in patches)


def _weak_patches(ev: Evidence, cfg: PolicyConfig) -> list[tuple[int, int]]:
    """Patches (row, col) that lost much more of their usual score than the tile did."""
    now = ev.patch_scores
    if not now:
        return []
    maps = [
        m
        for m in list(ev.patch_history)[: cfg.history_sections]
        if m is not None and _shape(m) == _shape(now)
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

    baseline, drop, where = _baseline(ev, cfg)
    defocus = _defocus(calibration, ev.score, baseline)

    # Against other positions, the tile's best patch speaks for it (see the docstring).
    best = _best_patch(ev) if where.endswith(_PEERS) else None
    judged = ev.score if best is None else max(best, ev.score)
    if baseline is not None and baseline > 0 and judged < (1.0 - drop) * baseline:
        below = 100.0 * (1.0 - judged / baseline)
        subject = score_text if best is None else f"{score_text}, best patch {format_score(best)},"
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{subject} is {below:.0f} % below the median of {where} "
            f"({format_score(baseline)}){_defocus_text(defocus)}",
            baseline=baseline,
            defocus_um=defocus,
        )
    if ev.score < cfg.min_score:
        return Verdict(
            VerdictKind.OUT_OF_FOCUS,
            f"{score_text} is below the minimum score {format_score(cfg.min_score)}"
            f"{_defocus_text(defocus)}",
            baseline=baseline,
            defocus_um=defocus,
        )

    weak = _weak_patches(ev, cfg)
    if len(weak) >= cfg.partial_min_patches:
        total = sum(len(line) for line in ev.patch_scores or [])
        cells = ", ".join(f"r{r}-c{c}" for r, c in weak[:8]) + (" …" if len(weak) > 8 else "")
        return Verdict(
            VerdictKind.PARTLY_OUT_OF_FOCUS,
            f"{score_text} is fine for the whole tile, but {len(weak)} of {total} patches "
            f"lost more than {100 * cfg.partial_patch_drop:.0f} % of their usual score at "
            f"this position while the rest did not (patches {cells}): a wrinkle, dirt or "
            "a tilted region",
            baseline=baseline,
        )

    context = where if baseline is None else f"median of {where} {format_score(baseline)}"
    return Verdict(VerdictKind.IN_FOCUS, f"{score_text} ({context})", baseline=baseline)


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
