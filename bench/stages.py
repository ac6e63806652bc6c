"""Where one 1024² patch's scoring time goes, stage by stage (default mode, CPU).

    .venv/bin/python bench/stages.py [--patches 16] [--rounds 4]

Scores ``--patches`` 1024² patches of ``bench/pipeline.py``'s 8192² 16-bit tile as
one scoring thread does (single-threaded FFTs), each stage called on its own in
the order ``mhfd_detail`` runs them, and prints each stage's CPU time per patch: the
least over ``--rounds`` rounds (other jobs on a shared machine only ever add time),
with its share. "fine level" is the full-resolution band (σ = 1), "decimated
levels" the rest of ``_dog_bands``. Stage times do not depend on the neighbours as
much as a whole tile's wall time does, but compare trees with ``bench/speed.py
--against``: this is for finding what to make cheaper.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from focuswatch.backend import get_backend
from focuswatch.score.maxima import band_counts
from focuswatch.score.noise import noise_model
from focuswatch.score.orientation import orientation
from focuswatch.score.spectrum import band_powers
from pipeline import tile_bytes
from speed import machine

# The stages are the module's own steps (its internals, as the tests reach them).
MHFD = importlib.import_module("focuswatch.score.mhfd")
DTYPES = importlib.import_module("focuswatch.score._dtypes")

PATCH = 1024


def stages(patch: np.ndarray[Any, Any], clock: Callable[[str, Callable[[], Any]], Any]) -> None:
    """One patch through every stage of default-mode scoring, each timed by ``clock``."""
    backend = dataclasses.replace(get_backend("cpu"), fft_workers=1)
    params = MHFD.params_for("fast")
    clock("orientation", lambda: orientation(patch))
    minmax = clock("input checks", lambda: DTYPES.validate_image(patch, backend))
    sample = patch[:: MHFD._FAST_STRETCH_STEP, :: MHFD._FAST_STRETCH_STEP]
    limits = clock(
        "stretch",
        lambda: DTYPES.stretch_limits(sample, backend, saturation=params.saturation, minmax=minmax),
    )
    u = clock("stretch", lambda: DTYPES.stretched(patch, backend, limits=limits, dtype=np.float32))
    noise = clock("noise model", lambda: noise_model(u, backend, step=MHFD._FAST_NOISE_STEP))
    F = clock("rfft2 + periodic", lambda: MHFD.periodic_spectrum(u, backend))
    t = clock("thresholds", lambda: MHFD._level_thresholds(params, u.shape, noise))
    scales = t.min() / t
    factors = MHFD.fast_factors(params.sigmas, u.shape)
    fine, coarse, snap = clock(
        "DoG levels",
        lambda: MHFD._dog_bands(
            F,
            u.shape,
            sigmas=params.sigmas,
            scales=scales,
            backend=backend,
            dtype=np.float32,
            factors=factors,
            n_fine=MHFD.fine_levels(params.sigmas),
        ),
    )
    clock(
        "maxima",
        lambda: band_counts(
            fine,
            coarse,
            backend,
            level=float(t.min()),
            shape=u.shape,
            interior=None,
            snap=snap,
        ),
    )
    clock("content", lambda: MHFD.content_of(F, u.shape, backend, np.float32))
    clock("content", lambda: MHFD.band_noise(u.shape, *MHFD._CONTENT_SIGMAS, noise))
    clock("band powers", lambda: band_powers(F, u.shape, backend))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=16, help="patches of the 8192² tile (≤ 64)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    tile = tifffile.imread(io.BytesIO(tile_bytes(8192, seed=8192)))
    grid = [
        tile[y : y + PATCH, x : x + PATCH]
        for y in range(0, tile.shape[0], PATCH)
        for x in range(0, tile.shape[1], PATCH)
    ]
    patches = grid[:: max(1, len(grid) // max(1, args.patches))][: args.patches]
    best: dict[str, float] = {}
    for r in range(args.rounds + 1):  # round 0 warms the caches and FFT plans
        spent: dict[str, float] = {}

        def clock(name: str, fn: Callable[[], Any], spent: dict[str, float] = spent) -> Any:
            t0 = time.process_time()
            out = fn()
            spent[name] = spent.get(name, 0.0) + time.process_time() - t0
            return out

        for p in patches:
            stages(p, clock)
        if r:
            best = {k: min(best.get(k, v), v) for k, v in spent.items()}
    total = sum(best.values())
    print(machine(get_backend("cpu")))
    n = len(patches)
    print(f"{n} patches of {PATCH}², one thread; least CPU time over {args.rounds} rounds")
    print(f"total {total / n * 1e3:.1f} ms per patch ({total / n * 64:.2f} s per 8192² tile)")
    for name, v in sorted(best.items(), key=lambda kv: -kv[1]):
        print(f"  {name:18s} {v / n * 1e3:6.2f} ms  {100 * v / total:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
