"""Placeholder: the demo (issue 2) is not built yet."""

from __future__ import annotations

from pathlib import Path

from focuswatch.config import Config
from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(cfg: Config, *, keep: Path | None = None, seed: int = 7) -> int:
    raise NotBuiltError("the demo (issue 2)")
