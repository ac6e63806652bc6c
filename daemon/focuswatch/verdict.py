"""What the operator acts on: a verdict per tile, with a reason a person can read, and
where the tile is (``Placement``, from ``focuswatch.tiles.layouts``).

Produced by ``focuswatch.policy``, stored by ``focuswatch.ledger``, consumed by
``focuswatch.alerts`` and ``focuswatch.retakes`` (as ``VerdictRecord``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Placement",
    "RetakeAction",
    "RetakeStatus",
    "Verdict",
    "VerdictKind",
    "VerdictRecord",
    "format_score",
    "grid_cell",
    "grid_position",
    "name_positions",
    "position_words",
]


class VerdictKind(enum.StrEnum):
    IN_FOCUS = "in_focus"
    OUT_OF_FOCUS = "out_of_focus"
    PARTLY_OUT_OF_FOCUS = "partly_out_of_focus"
    EMPTY = "empty"
    UNREADABLE = "unreadable"
    #: Readable tissue that cannot be judged yet (nothing trustworthy to compare it
    #: with): never passed as in focus, never alerted, never trusted as context.
    UNCERTAIN = "uncertain"

    @property
    def needs_retake(self) -> bool:
        return self in (VerdictKind.OUT_OF_FOCUS, VerdictKind.PARTLY_OUT_OF_FOCUS)


class RetakeStatus(enum.StrEnum):
    """Where a retake-list entry stands (the ``retakes.status`` column)."""

    OPEN = "open"
    RETAKEN_FIXED = "retaken_fixed"
    RETAKEN_STILL_BAD = "retaken_still_bad"
    DISMISSED = "dismissed"

    @property
    def still_to_do(self) -> bool:
        """The operator still has to re-image the tile."""
        return self in (RetakeStatus.OPEN, RetakeStatus.RETAKEN_STILL_BAD)

    @property
    def words(self) -> str:
        return self.value.replace("_", " ")


class RetakeAction(enum.StrEnum):
    """One change in a retake entry's history (the ``retake_events.action`` column)."""

    OPENED = "opened"
    RETAKEN_STILL_BAD = "retaken_still_bad"
    RETAKEN_FIXED = "retaken_fixed"
    DISMISSED = "dismissed"
    REOPENED = "reopened"

    @property
    def words(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class Verdict:
    """The policy's decision for one tile version."""

    kind: VerdictKind
    reason: str
    baseline: float | None = None
    defocus_um: float | None = None


@dataclass(frozen=True)
class VerdictRecord:
    """A verdict with everything an alert or a retake entry shows about the tile."""

    version_id: int
    path: str
    tile_name: str
    placement: Placement
    score: float | None
    verdict: Verdict
    at: float  # seconds since the epoch, from the injected clock

    @property
    def section(self) -> str | None:
        return self.placement.section

    @property
    def position(self) -> str:
        """Where the tile sits in its section (``r3-c4``, ``mFoV 12, beam 7``), else its name.

        The key that makes two versions "the same tile" (a retake under a new name
        lands at the same position) for the retake list and the section summaries.
        """
        key = self.placement.key()
        return self.tile_name if key is None else key

    @property
    def where(self) -> str | None:
        """The position in the layout's own words (``row 3, col 4``; ``mFoV 12, beam 7``)."""
        key = self.placement.key()
        return None if key is None else position_words(key)


_GRID_KEY = re.compile(r"^r(\d+)-c(\d+)$")


def position_words(position: str) -> str:
    """A position key as an operator reads it: ``r3-c4`` → ``row 3, col 4``; others as is
    (the MultiSEM and SBEMimage keys are already words: ``mFoV 12, beam 7``)."""
    m = _GRID_KEY.match(position)
    return f"row {m.group(1)}, col {m.group(2)}" if m else position


_BEAM_KEY = re.compile(r"^(?P<region>region \d+, )?mFoV (?P<mfov>\d+), beam (?P<beam>\d+)$")
_SBEM_KEY = re.compile(r"^grid (\d+), tile (\d+)$")


def grid_cell(position: str) -> tuple[int, int] | None:
    """Where a position sits on a map of its section: (row, col) of a grid tile, (mFoV,
    beam) of a MultiSEM beam image of region 1, (grid, tile) of an SBEMimage tile; None
    for any other key (a pattern's own ``position``)."""
    for pattern in (_GRID_KEY, _SBEM_KEY):
        m = pattern.match(position)
        if m:
            return int(m.group(1)), int(m.group(2))
    m = _BEAM_KEY.match(position)
    if m and m["region"] is None:
        return int(m["mfov"]), int(m["beam"])
    return None


def name_positions(bad: Sequence[str], every: Sequence[str]) -> tuple[list[str], list[str]]:
    """``bad`` positions of a section for a summary line, and the beams bad throughout.

    MultiSEM positions are grouped by beam: a beam out of focus in every mFoV of the
    section (``every`` has them all) is one finding, ``beam 7 (all 12 mFoVs)``, not one
    per mFoV; a beam bad in some is ``beam 7 (mFoV 1, 4)``. Other keys are kept as they
    are, in order. Returns ``(items, whole beams)``.
    """
    mfovs: dict[str, set[int]] = {}
    for key in every:
        m = _BEAM_KEY.match(key)
        if m:
            mfovs.setdefault(f"{m['region'] or ''}beam {int(m['beam'])}", set()).add(int(m["mfov"]))
    grouped: dict[str, set[int]] = {}
    items: list[str] = []
    for key in bad:
        m = _BEAM_KEY.match(key)
        if m is None:
            items.append(key)
            continue
        beam = f"{m['region'] or ''}beam {int(m['beam'])}"
        if beam not in grouped:
            grouped[beam] = set()
            items.append(beam)  # a placeholder, worded below
        grouped[beam].add(int(m["mfov"]))
    whole = [b for b, got in grouped.items() if len(got) >= 2 and got >= mfovs.get(b, got)]
    words = {
        b: f"{b} (all {len(got)} mFoVs)"
        if b in whole
        else f"{b} (mFoV {', '.join(str(n) for n in sorted(got))})"
        for b, got in grouped.items()
    }
    return [words.get(i, i) for i in items], whole


@dataclass(frozen=True)
class Placement:
    """Where one file sits: what its path (and side files) say; ``None`` where silent."""

    section: str | None = None
    #: Stable across sections in this layout: the key of a tile's position history.
    position: str | None = None
    row: int | None = None
    col: int | None = None
    stage_x_um: float | None = None
    stage_y_um: float | None = None
    stage_z_um: float | None = None
    pixel_size_um: float | None = None
    working_distance_um: float | None = None
    dwell_ns: float | None = None
    #: Orders files of one (section, position) that the microscope writes under new
    #: names (MultiSEM's timestamp): the latest is the tile, earlier ones are retaken.
    taken: str | None = None

    def key(self) -> str | None:
        """The position key: the layout's, else the grid cell's; ``None`` where neither."""
        if self.position is not None:
            return self.position
        if self.row is not None and self.col is not None:
            return grid_position(self.row, self.col)
        return None


def grid_position(row: int, col: int) -> str:
    """The position key of a grid tile (ATLAS, a pattern with row and col)."""
    return f"r{row}-c{col}"


def format_score(score: float) -> str:
    """A score as a person reads it: counts as integers, small values to 3 digits."""
    if not math.isfinite(score):
        return str(score)
    if abs(score) >= 100:
        return f"{score:,.0f}".replace(",", " ")
    return f"{score:.3g}"
