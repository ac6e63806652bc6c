"""Judge a scored tile: its context from the ledger, the policy's decision, the record.

One step that the service and the verdict bench both call (``judge``)::

    context (ledger: same position in earlier sections, the section's other tiles)
        ─► policy.decide (pure) ─► ledger result (one per version)
        ─► revise: tiles whose context this score changed are decided again

A verdict is a function of the scores in its context, never of arrival order: a
tile whose earlier section arrives late (written before its folder was watched, a
burst scored out of order, a section's other tiles still on their way) is decided
again when that score lands, and its result is updated; when that changes whether
the tile needs a retake, the result is marked undelivered and handed to the sinks
again (alerts, retake list). Revisions go in section order, so the state after the
last tile is the one a section-by-section feed reaches.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from focuswatch import policy
from focuswatch.config import PolicyConfig
from focuswatch.errors import StateError
from focuswatch.ledger import Ledger, PastTile, TileVersion
from focuswatch.policy import DefocusModel, Evidence
from focuswatch.verdict import Verdict, VerdictKind

__all__ = ["Judged", "evidence", "judge", "revise"]

Decide = Callable[..., Verdict]

# Beyond this many other tiles, one more tile cannot move a section's median or its
# share of failed tiles enough to change a peer's verdict: peers are not revised (a
# 1000-tile MultiSEM section would otherwise cost a million decisions).
_REVISE_PEERS_MAX = 64
# A section's lift (policy: how much its other tiles gained against their own
# positions) is read from at most this many of them (by position key: the same ones
# whatever the arrival order), each one history query.
_LIFT_PEERS_MAX = 16
# A revision that keeps going is a bug; stop it rather than the service.
_REVISE_BUDGET = 20


@dataclass(frozen=True)
class Judged:
    """What ``judge`` did: the verdict, whether it was recorded now, what was revised."""

    verdict: Verdict
    created: bool
    revised: list[int]
    error: str | None = None
    #: The ledger could not be written while revising (e.g. a full disk): the verdict
    #: is recorded; the caller hands it on, then raises this.
    revise_error: StateError | None = None


def _fine(score: Any) -> float | None:
    value = getattr(score, "fine_fraction", None)
    return None if value is None else float(value)


def _peer_spectra(
    ledger: Ledger, peers: list[PastTile], section_index: int | None, cfg: PolicyConfig
) -> list[tuple[float, list[tuple[float | None, str]]]]:
    """Each other tile's spectral ratio with its own position's recent sections
    (ratio, verdict; most recent first), for the policy's lift."""
    if section_index is None:
        return []
    usable = sorted(
        (p for p in peers if p.position is not None and p.spectral is not None),
        key=lambda p: str(p.position),
    )
    return [
        (
            float(p.spectral or 0.0),
            [
                (h.spectral, h.verdict)
                for h in ledger.position_history(
                    str(p.position), before_section_index=section_index, limit=cfg.history_sections
                )
            ],
        )
        for p in usable[:_LIFT_PEERS_MAX]
    ]


def evidence(
    ledger: Ledger,
    v: TileVersion,
    *,
    score: float,
    patch_scores: list[list[float]] | None,
    content: float,
    fine_fraction: float | None,
    cfg: PolicyConfig,
    patch_fine: list[list[float]] | None = None,
    orientation: tuple[float, float] | None = None,
    spectral: float | None = None,
    patch_spectral: list[list[float]] | None = None,
) -> Evidence:
    """What the policy weighs for one tile version: its numbers and its context."""
    history = []
    later = []
    if v.position is not None and v.section_index is not None:
        history = ledger.position_history(
            v.position,
            before_section_index=v.section_index,
            limit=max(cfg.memory_sections, cfg.history_sections),
        )
        if not history:  # the position's first section: its next ones are the reference
            later = ledger.position_future(
                v.position, after_section_index=v.section_index, limit=cfg.history_sections
            )
    peers = [] if v.section is None else ledger.section_peers(v.section, exclude_version=v.id)
    return Evidence(
        score=float(score),
        patch_scores=patch_scores,
        content=float(content),
        history=[p.score for p in history],
        section_scores=[p.score for p in peers],
        patch_history=[p.patch_scores for p in history],
        patch_fine_history=[p.patch_fine_fraction for p in history],
        patch_spectral_history=[p.patch_spectral for p in history],
        history_kinds=[p.verdict for p in history],
        history_wide=[p.reason.startswith(policy.SECTION_WIDE) for p in history],
        history_sections=[p.section_index for p in history],
        fine_fraction=fine_fraction,
        fine_history=[p.fine_fraction for p in history],
        section_fine=[p.fine_fraction for p in peers],
        # Only verdicts against their own position's history: a verdict against the
        # section would make two tiles of one section each other's context.
        section_kinds=[p.verdict for p in peers if p.has_history],
        patch_fine=patch_fine,
        orientation=orientation,
        orientation_history=[p.orientation for p in history],
        later=[p.score for p in later],
        later_fine=[p.fine_fraction for p in later],
        spectral=spectral,
        patch_spectral=patch_spectral,
        spectral_history=[p.spectral for p in history],
        later_spectral=[p.spectral for p in later],
        section_spectral=[p.spectral for p in peers],
        section_spectral_history=_peer_spectra(ledger, peers, v.section_index, cfg)
        if spectral is not None and history
        else [],
    )


def _stored(ledger: Ledger, v: TileVersion, cfg: PolicyConfig) -> tuple[Evidence, str] | None:
    """The evidence for a judged version, and the gist of its recorded verdict."""
    r = ledger.result(v.id)
    if r is None or r["score"] is None or r["verdict"] is None:
        return None
    fine = r.get("fine_fraction")
    ox, oy = r.get("orientation_x"), r.get("orientation_y")
    ev = evidence(
        ledger,
        v,
        score=float(r["score"]),
        patch_scores=r["patch_scores"],
        content=float(r["content"]),
        fine_fraction=None if fine is None else float(fine),
        cfg=cfg,
        patch_fine=r.get("patch_fine_fraction"),
        orientation=None if ox is None or oy is None else (float(ox), float(oy)),
        spectral=r.get("spectral"),
        patch_spectral=r.get("patch_spectral"),
    )
    return ev, _gist(str(r["verdict"]), r["reason"] or "")


def _gist(kind: str, reason: str) -> str:
    """What a revision must change to be written: the kind, and whether it is section-wide.

    A reason that only words the same conclusion against more context (one more peer
    in a section's median) is not worth a write per tile per peer.
    """
    return f"{kind} {reason.startswith(policy.SECTION_WIDE)}"


def _peers(ledger: Ledger, v: TileVersion) -> list[int]:
    if v.section is None:
        return []
    peers = ledger.section_peers(v.section, exclude_version=v.id)
    return [p.version_id for p in peers] if len(peers) <= _REVISE_PEERS_MAX else []


def _affected(ledger: Ledger, v: TileVersion, cfg: PolicyConfig) -> list[int]:
    """Versions whose context includes ``v``: later sections here, and its section; and
    the sections of those later tiles, whose peers count a tile's verdict only once it
    has a history here (``section_kinds``), which ``v`` may have just given it; and
    the position's first section when ``v`` is one of the next sections it is judged
    against (a changed one brings its peers along)."""
    out: list[int] = []
    if v.position is not None and v.section_index is not None:
        later = ledger.later_at_position(v.position, after_section_index=v.section_index)
        out += later
        for vid in later:
            out += _peers(ledger, ledger.get(vid))
        earlier = ledger.position_history(
            v.position, before_section_index=v.section_index, limit=cfg.history_sections + 1
        )
        if 0 < len(earlier) <= cfg.history_sections:
            out.append(earlier[-1].version_id)
    out += _peers(ledger, v)
    return out


def revise(
    ledger: Ledger,
    v: TileVersion,
    *,
    cfg: PolicyConfig,
    calibration: DefocusModel | None = None,
    decide: Decide = policy.decide,
) -> list[int]:
    """Decide again the verdicts whose context ``v``'s score is part of.

    A changed kind (or section-wide naming) is recorded, not a reworded reason;
    returns the versions whose need for a retake changed
    (for the sinks: alerts and the retake list), in the order they were revised. A
    changed verdict is itself context for others: they are decided again in turn,
    lowest section first.
    """
    heap: list[tuple[int, int]] = []
    queued: set[int] = set()

    def push(ids: list[int]) -> None:
        for vid in ids:
            if vid not in queued:  # v itself too: a revised peer is context for it
                w = ledger.get(vid)
                heapq.heappush(heap, (w.section_index if w.section_index is not None else -1, vid))
                queued.add(vid)

    push(_affected(ledger, v, cfg))
    changed: list[int] = []
    budget = _REVISE_BUDGET * (len(heap) + 10)
    while heap and budget > 0:
        budget -= 1
        _, vid = heapq.heappop(heap)
        queued.discard(vid)
        w = ledger.get(vid)
        if w.superseded:
            continue
        stored = _stored(ledger, w, cfg)
        if stored is None:
            continue
        ev, gist = stored
        verdict = decide(ev, cfg=cfg, calibration=calibration)
        if _gist(str(verdict.kind), verdict.reason) == gist:
            continue  # the same conclusion: nothing for others' context either
        if ledger.revise_verdict(vid, verdict) and vid not in changed:
            changed.append(vid)
        push(_affected(ledger, w, cfg))
    return changed


def judge(
    ledger: Ledger,
    v: TileVersion,
    score: Any,
    *,
    cfg: PolicyConfig,
    calibration: DefocusModel | None = None,
    decide: Decide = policy.decide,
    worker: str = "",
) -> Judged:
    """Decide and record the verdict of a scored version, then revise its context.

    ``score`` is a ``focuswatch.scoring.TileScore``. A policy that raises does not
    lose the score: the version is recorded as unreadable with the error (``error``).
    """
    error = None
    try:
        ev = evidence(
            ledger,
            v,
            score=float(score.score),
            patch_scores=score.patch_scores,
            content=float(score.content),
            fine_fraction=_fine(score),
            cfg=cfg,
            patch_fine=getattr(score, "patch_fine_fraction", None),
            orientation=getattr(score, "orientation", None),
            spectral=getattr(score, "spectral", None),
            patch_spectral=getattr(score, "patch_spectral", None),
        )
        verdict = decide(ev, cfg=cfg, calibration=calibration)
    except StateError:
        raise  # the ledger, not the policy: the service's to handle
    except Exception as exc:  # a policy bug must not lose the score or stop the service
        error = repr(exc)
        verdict = Verdict(VerdictKind.UNREADABLE, f"no verdict: policy failed: {exc!r}")
    created = ledger.record_result(v.id, verdict=verdict, score=score, worker=worker)
    revised: list[int] = []
    revise_error = None
    if created and error is None:
        try:
            revised = revise(ledger, v, cfg=cfg, calibration=calibration, decide=decide)
        except StateError as exc:  # e.g. LedgerWriteError: after v's own verdict is out
            revise_error = exc
        except Exception as exc:
            error = f"revising the tiles after it failed: {exc!r}"
    return Judged(verdict, created, revised, error, revise_error)
