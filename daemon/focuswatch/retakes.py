"""Placeholder: the retake list is not built yet (issue 5)."""

from __future__ import annotations

from focuswatch.config import Config
from focuswatch.errors import NotBuiltError

__all__ = ["dismiss_main", "list_main"]


def list_main(cfg: Config, *, fmt: str, section: str | None, only_open: bool) -> int:
    raise NotBuiltError("the retake list (issue 5)")


def dismiss_main(cfg: Config, entry_id: int, *, note: str) -> int:
    raise NotBuiltError("the retake list (issue 5)")
