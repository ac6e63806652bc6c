"""Placeholder: scoring files from the command line (issue 3) is not built yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(files: list[Path], **options: Any) -> int:
    raise NotBuiltError("scoring files from the command line (issue 3)")
