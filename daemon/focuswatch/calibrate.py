"""Placeholder: calibration from a through-focus series (issue 3) is not built yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from focuswatch.errors import NotBuiltError

__all__ = ["main"]


def main(inputs: list[Path], **options: Any) -> int:
    raise NotBuiltError("calibration from a through-focus series (issue 3)")
