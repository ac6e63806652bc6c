"""The ISBI 2012 EM slices: 30 consecutive serial sections of one volume, 512² px, 8-bit.

Real tissue for the benches and the tests (they are not part of the daemon). Where
they are: ``$FOCUSWATCH_ISBI_DIR``, else ``shared/data/isbi2012`` beside the checkout
(or beside the folder holding a git worktree).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["Slices", "default_dir", "load"]

#: The slices, in section order.
Slices = Sequence[npt.NDArray[np.float32]]


def default_dir() -> Path:
    """Where the slices are looked for when no folder is named."""
    env = os.environ.get("FOCUSWATCH_ISBI_DIR")
    if env:
        return Path(env)
    near = [up / "shared" / "data" / "isbi2012" for up in Path(__file__).resolve().parents[1:4]]
    return next((d for d in near if d.is_dir()), near[1])


def load(directory: str | Path | None = None) -> list[npt.NDArray[np.float32]]:
    """The slices in ``directory`` (``0.png``, ``1.png``, ...) as float32 in [0, 1].

    Sorted by their numeric index; ``FileNotFoundError`` if there are none.
    """
    from PIL import Image

    folder = Path(directory) if directory is not None else default_dir()
    files = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no ISBI slices (<index>.png) in {folder}")
    slices = []
    for path in files:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"), dtype=np.float32)
        slices.append(pixels / np.float32(255.0))
    return slices
