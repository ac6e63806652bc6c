"""What the operator acts on: a verdict per tile, with a reason a person can read.

Produced by ``focuswatch.policy``, stored by ``focuswatch.ledger``, consumed by
``focuswatch.alerts`` and ``focuswatch.retakes`` (as ``VerdictRecord``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Verdict", "VerdictKind", "VerdictRecord"]


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
    section: str | None
    row: int | None
    col: int | None
    stage_x_um: float | None
    stage_y_um: float | None
    pixel_size_um: float | None
    score: float | None
    verdict: Verdict
    at: float  # seconds since the epoch, from the injected clock
    working_distance_um: float | None = None  # the microscope's focus (FibicsXML Scan/Focus)

    @property
    def position(self) -> str:
        """Where the tile sits in its section (``r3-c4``), else its name.

        The key that makes two versions "the same tile" (a retake under a new name
        lands at the same row/col) for the retake list and the section summaries.
        """
        if self.row is not None and self.col is not None:
            return f"r{self.row}-c{self.col}"
        return self.tile_name
