"""Placeholder: the status report (issue 4) is not built yet."""

from __future__ import annotations

from focuswatch.config import Config
from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(cfg: Config, *, as_json: bool = False, last: int = 10) -> int:
    raise NotBuiltError("the status report (issue 4)")
