"""Score tiles from files: reading (``focuswatch.tiles``) plus the pure core (``focuswatch.score``).

Placeholder: the contract is fixed here, the body is not built yet (issue 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from focuswatch.errors import NotBuiltError

__all__ = ["ScoreSettings", "TileScore", "main", "score_path"]


@dataclass(frozen=True)
class ScoreSettings:
    criterion: str = "mhfd"
    mode: str = "default"
    resolution: str = "patches"
    patch_size: int = 1024
    backend: str = "auto"
    memory_limit_mb: int = 2048


@dataclass(frozen=True)
class TileScore:
    path: str
    score: float
    patch_scores: list[list[float]] | None
    content: float
    backend: str
    shape: tuple[int, int]
    dtype: str
    read_ms: float
    score_ms: float
    meta: Any  # focuswatch.tiles.TileMeta


def score_path(path: str | Path, settings: ScoreSettings) -> TileScore:
    raise NotBuiltError("scoring files (issue 3)")


def main(files: list[Path], **options: Any) -> int:
    raise NotBuiltError("scoring files from the command line (issue 3)")
