"""Fixtures shared by the whole test suite.

* ``isbi_dir``, ``isbi_slices``: the folder of real ISBI 2012 EM slices (``0.png`` ...
  ``29.png``) and the slices loaded once; tests that use them skip, saying why,
  where the data is not checked out.
* ``tmp_wafer``: writes a small synthetic ATLAS wafer (real TIFF files with
  FibicsXML) and returns ``(folder, tiles)`` with the truth for every tile.
* ``synth_tile``: writes one synthetic tile with a chosen defocus.
* ``make_service``: a started in-process service with a recording sink (``servicekit``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

import isbi
from browser import chromium  # noqa: F401  (a fixture: headless Chromium)
from focuswatch import synth
from servicekit import make_service  # noqa: F401  (a fixture: the service in-process)
from webkit import console_service  # noqa: F401  (a fixture: the service with its web page)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts with structlog's defaults.

    CLI tests configure structlog to print to a captured stream that pytest closes
    afterwards; without a reset, the next test's log lines would go there.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 slices folder; skips the test when it is not there."""
    path = isbi.default_dir()
    if not (path / "0.png").is_file():
        pytest.skip(f"ISBI 2012 slices not found at {path} (set FOCUSWATCH_ISBI_DIR)")
    return path


@pytest.fixture(scope="session")
def isbi_slices(isbi_dir: Path) -> isbi.Slices:
    """The ISBI slices, loaded once and read-only (a test that changes one copies it)."""
    slices = isbi.load(isbi_dir)
    for image in slices:
        image.flags.writeable = False
    return tuple(slices)


TmpWafer = Callable[..., tuple[Path, list[synth.SynthTile]]]


@pytest.fixture
def tmp_wafer(tmp_path: Path) -> TmpWafer:
    """Factory: ``tmp_wafer(**write_wafer_options) -> (folder, tiles)``.

    Defaults are small and fast (2 sections of 2x2 tiles of 128 px, seed 0);
    any :func:`focuswatch.synth.write_wafer` option can be passed. Each call
    writes a new folder under ``tmp_path``.
    """
    counter = itertools.count()

    def make(**options: Any) -> tuple[Path, list[synth.SynthTile]]:
        out = tmp_path / f"wafer{next(counter)}"
        settings: dict[str, Any] = {
            "sections": 2,
            "rows": 2,
            "cols": 2,
            "size": 128,
            "seed": 0,
        }
        settings.update(options)
        return out, synth.write_wafer(out, **settings)

    return make


SynthTileFactory = Callable[..., Path]


@pytest.fixture
def synth_tile(tmp_path: Path) -> SynthTileFactory:
    """Factory: ``synth_tile(name=..., sigma=0.0, size=256, dose=30.0, bits=8, seed=0)``.

    Writes one tissue tile blurred by ``sigma`` px, with FibicsXML, and returns
    its path (default name ``Tile_r1-c1_S_000_1752450056.tif`` in a section folder).
    """

    def make(
        name: str = "S_000_1752450056/Tile_r1-c1_S_000_1752450056.tif",
        *,
        sigma: float = 0.0,
        size: int = 256,
        dose: float | None = 30.0,
        bits: int = 8,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        clean = synth.neuropil((size, size), rng=rng)
        image = synth.degrade(clean, rng=rng, defocus_sigma=sigma, dose=dose)
        path = tmp_path / name
        synth.write_tile(
            path,
            synth.to_uint(image, bits),
            row=1,
            col=1,
            stage_x_um=100.0,
            stage_y_um=200.0,
        )
        return path

    return make
