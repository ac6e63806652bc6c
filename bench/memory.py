"""Peak memory of scoring one huge tile at native resolution (target: 16384² uint16 < 1.5 GB).

    .venv/bin/python bench/memory.py                       # CPU, 16384², the default mode
    .venv/bin/python bench/memory.py --size 8192 --mode exact --resolution patches
    .venv/bin/python bench/memory.py --backend gpu         # also the GPU memory-pool peak
    .venv/bin/python bench/memory.py --baseline --size 2048  # the materialise-all baseline
    .venv/bin/python bench/memory.py --resolution patches --file  # as the service: from a TIFF

Each measurement runs in a fresh subprocess, so ``ru_maxrss`` (peak resident set
size) is that run's alone; it includes the decoded tile itself (512 MiB for
16384² uint16), Python, NumPy and SciPy. The tile is built block by block from a
synthetic 1024² tissue tile with fresh shot noise, never as one float array. On a
GPU the peak of CuPy's memory pool is recorded through an allocator hook. ``--file``
writes the tile to an uncompressed TIFF first (another process) and scores the file as
a worker does (``scoring.score_path``); the peak then holds what the reading keeps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from focuswatch.choices import DEFAULT_MODE, MODES

HERE = Path(__file__).resolve().parent


def build_tile(size: int, seed: int = 0) -> np.ndarray:
    from focuswatch import synth

    rng = np.random.default_rng(seed)
    clean = synth.neuropil((1024, 1024), rng=rng)
    out = np.empty((size, size), np.uint16)
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            block = synth.to_uint(synth.degrade(clean, rng=rng, dose=30.0), 16)
            h, w = min(1024, size - y), min(1024, size - x)
            out[y : y + h, x : x + w] = block[:h, :w]
    return out


def child(args: argparse.Namespace) -> dict[str, Any]:
    from focuswatch.backend import get_backend
    from focuswatch.score import score_image

    backend = get_backend(args.backend)
    gpu_peak = [0]
    if backend.is_gpu:
        cupy = backend.xp
        pool = cupy.cuda.MemoryPool()

        def alloc(n: int) -> Any:
            mem = pool.malloc(n)
            gpu_peak[0] = max(gpu_peak[0], pool.used_bytes())
            return mem

        cupy.cuda.set_allocator(alloc)
    if args.file is not None:
        from focuswatch import scoring

        rss_tile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        settings = scoring.ScoreSettings(
            mode=args.mode, resolution=args.resolution, backend=args.backend
        )
        t0 = time.perf_counter()
        score = scoring.score_path(args.file, settings).score
        return {
            "size": args.size,
            "tile_bytes": args.size * args.size * 2,
            "rss_after_tile": rss_tile,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "gpu_pool_peak": gpu_peak[0] if backend.is_gpu else None,
            "score": score,
            "seconds": time.perf_counter() - t0,
            "backend": backend.name,
        }
    tile = build_tile(args.size)
    rss_tile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if args.baseline:
        sys.path.insert(0, str(HERE))
        from _baseline_paper import paper_mhfd

        score = float(paper_mhfd(tile, backend=backend))
    else:
        score = score_image(tile, backend=backend, mode=args.mode, resolution=args.resolution).score
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "size": args.size,
        "tile_bytes": tile.nbytes,
        "rss_after_tile": rss_tile,
        "peak_rss": peak,
        "gpu_pool_peak": gpu_peak[0] if backend.is_gpu else None,
        "score": score,
        "seconds": secs,
        "backend": backend.name,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    ap.add_argument("--resolution", choices=["native", "patches"], default="native")
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--baseline", action="store_true", help="materialise-all baseline instead")
    ap.add_argument("--limit-gb", type=float, default=1.5)
    ap.add_argument(
        "--file",
        nargs="?",
        const="",
        default=None,
        help="score the tile from a TIFF file, as a worker does (optional: its path)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write:
        import tifffile

        tifffile.imwrite(args.write, build_tile(args.size))
        return 0
    if args.child:
        print(json.dumps(child(args)))
        return 0
    rest = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="fw-memory-") as tmp:
        if args.file is not None:
            path = args.file or str(Path(tmp) / "tile.tif")
            if not args.file:
                made = [sys.executable, __file__, "--write", path, "--size", str(args.size)]
                subprocess.run(made, check=True)
            rest = [a for a in rest if not a.startswith("--file") and a != args.file]
            rest += ["--file", path]
        cmd = [sys.executable, __file__, "--child", *rest]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    r = json.loads(done.stdout.strip().splitlines()[-1])
    gib = 2**30
    what = "materialise-all baseline" if args.baseline else f"{args.mode}, {args.resolution}"
    if args.file is not None:
        what += ", from a TIFF file (scoring.score_path)"
    print(
        f"{r['size']}x{r['size']} uint16 ({r['tile_bytes'] / gib:.2f} GiB), {what}, {r['backend']}"
    )
    peak, before = r["peak_rss"] / gib, r["rss_after_tile"] / gib
    at = "before scoring" if args.file is not None else "after building the tile"
    print(f"  peak RSS {peak:.2f} GiB ({at}: {before:.2f} GiB)")
    if r["gpu_pool_peak"] is not None:
        print(f"  GPU memory-pool peak {r['gpu_pool_peak'] / gib:.2f} GiB")
    print(f"  score {r['score']:.0f} in {r['seconds']:.1f} s")
    ok = r["peak_rss"] < args.limit_gb * 1e9
    print(f"  {'within' if ok else 'OVER'} the {args.limit_gb} GB limit")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
