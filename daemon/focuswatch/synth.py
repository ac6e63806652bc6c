"""Placeholder: the synthetic tile generator (issue 2) is not built yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(out: Path, **options: Any) -> int:
    raise NotBuiltError("the synthetic tile generator (issue 2)")
