"""How many tiles a running service has judged, from its own ledger connection (the
benches' loops ask every turn: no second connection opened each time)."""

from __future__ import annotations

from focuswatch.ledger import VersionState
from focuswatch.service import Service


def judged(svc: Service) -> int:
    """Current tile versions with a verdict (scored, or failed with a reason)."""
    counts = svc.ledger.counts()
    return counts[VersionState.SCORED] + counts[VersionState.FAILED]
