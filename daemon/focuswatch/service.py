"""Placeholder: the watch-folder service (issue 4) is not built yet."""

from __future__ import annotations

from focuswatch.config import Config
from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(cfg: Config, *, once: bool = False) -> int:
    raise NotBuiltError("the watch-folder service (issue 4)")
