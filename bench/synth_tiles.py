"""How fast synthetic tiles are made and real tile files are read.

Times, per tile size: ``synth.neuropil`` (texture), ``synth.degrade`` (blur, jitter,
shot noise), writing the TIFF (uncompressed and zstd), ``tiles.read_tile`` and a
patch-by-patch walk with ``TileReader.read_region`` (1024² patches, as the memory
guard in scoring does). Prints one table and the peak memory of the process.

    python bench/synth_tiles.py                 # 1024² and 2048²
    python bench/synth_tiles.py --sizes 8192    # one ATLAS-sized tile (about a minute)

Numbers measure this machine at this moment: other load on it lowers them.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from focuswatch import synth, tiles


def timed(func: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = func()
    return result, time.perf_counter() - t0


def walk_patches(path: Path, patch: int) -> int:
    """Read a tile patch by patch; returns the number of patches."""
    count = 0
    with tiles.open_tile(path) as tile:
        h, w = tile.shape
        for y in range(0, h, patch):
            for x in range(0, w, patch):
                tile.read_region(y, min(y + patch, h), x, min(x + patch, w))
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], metavar="PX")
    p.add_argument("--bits", type=int, choices=[8, 16], default=16)
    args = p.parse_args(argv)

    header = (
        f"{'size':>6} {'neuropil':>9} {'degrade':>8} {'write':>7} {'write zstd':>10} "
        f"{'read':>7} {'read zstd':>9} {'patches':>8} {'patches zstd':>12}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="focuswatch-bench-") as tmp:
        for size in args.sizes:
            rng = np.random.default_rng(0)
            clean, t_np = timed(lambda size=size, rng=rng: synth.neuropil((size, size), rng=rng))
            noisy, t_deg = timed(
                lambda clean=clean, rng=rng: synth.degrade(
                    clean, rng=rng, defocus_sigma=1.0, dose=30.0, jitter_px=0.15
                )
            )
            image = synth.to_uint(noisy, args.bits)
            row: list[float] = [t_np, t_deg]
            paths = {}
            for compression in (None, "zstd"):
                path = Path(tmp) / f"Tile_r1-c1_S_000_{size}_{compression}.tif"
                _, t_write = timed(
                    lambda path=path, compression=compression, image=image: synth.write_tile(
                        path,
                        image,
                        row=1,
                        col=1,
                        stage_x_um=0.0,
                        stage_y_um=0.0,
                        compression=compression,
                    )
                )
                row.append(t_write)
                paths[compression] = path
            for compression in (None, "zstd"):
                _, t_read = timed(lambda p=paths[compression]: tiles.read_tile(p))
                row.append(t_read)
            for compression in (None, "zstd"):
                _, t_walk = timed(lambda p=paths[compression]: walk_patches(p, 1024))
                row.append(t_walk)
            cells = [f"{t:.2f}s" for t in row]
            widths = [9, 8, 7, 10, 7, 9, 8, 12]
            print(f"{size:>6} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
