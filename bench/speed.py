"""How fast is MHFD here? Per 1024² tile: the materialise-all baseline, then each mode.

    .venv/bin/python bench/speed.py                 # CPU
    .venv/bin/python bench/speed.py --backend gpu   # CuPy: 1024² (30 scales) and native 8192²
    .venv/bin/python bench/speed.py --against ../main/daemon   # this tree vs another, A/B
    .venv/bin/python bench/speed.py --against ../main/daemon --size 8192 --patches \
        --pairs fast:default                       # this default vs the old one, 8192² tiles

Prints the machine, the median of ``--repeat`` runs per variant (after a warm-up
run that fills the FFT plan and transfer-function caches) and each variant's
speed-up over the baseline, all from one run. On a shared machine the figures
move with the load: run it when the machine is quiet. The fast-vs-exact ratio
(the issue's "≥ 3× faster") is measured separately with the two modes alternated
call by call, so that load from elsewhere hits both alike: median of the per-pair
ratios. ``--against DIR`` times this tree's modes against another checkout's
(``DIR`` is its ``daemon`` folder), each in its own worker process on the same tile,
alternated call by call: the median of the per-pair ratios (this / other).
``--file`` (with ``--against``) scores the tile from an uncompressed TIFF through
``scoring.score_path`` (reading included, as a worker does). ``--threads N`` (with
``--patches`` or ``--file``) scores N patches at once instead of one per core
(1: no two threads competing for the GIL or for memory bandwidth, the steadiest CPU
figure on a shared machine). ``--pairs THIS:OTHER ...`` names the mode each tree runs
(default ``default:default fast:fast``); ``--patches`` scores the tile as the service
does (``score_image``, 1024² patches, all cores) instead of one ``mhfd`` call. Each
worker also reports its CPU seconds, which other jobs on the machine do not inflate as
much as wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline_paper import paper_mhfd
from focuswatch import synth
from focuswatch.backend import Backend, get_backend
from focuswatch.score import score_image
from focuswatch.score.mhfd import mhfd


def machine(backend: Backend) -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = f"CPU: {model}, {cores} cores available, load average {load:.2f}"
    if backend.is_gpu:
        text += f"\nGPU: {backend.device}"
    return text


def timed(fn: Callable[[], Any], backend: Backend, repeat: int) -> float:
    """Median wall time in ms of ``fn`` (GPU work synchronised), after one warm-up."""
    sync = backend.xp.cuda.Device().synchronize if backend.is_gpu else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], backend: Backend, repeat: int
) -> tuple[float, float, list[float]]:
    """Median ms of ``a`` and of ``b`` run alternately, and each pair's ratio a/b."""
    sync = backend.xp.cuda.Device().synchronize if backend.is_gpu else (lambda: None)
    ta: list[float] = []
    tb: list[float] = []
    for fn in (a, b):  # warm-up
        fn()
    sync()
    for _ in range(repeat):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    return (
        statistics.median(ta),
        statistics.median(tb),
        [x / y for x, y in zip(ta, tb, strict=True)],
    )


_WORKER = r"""
import sys, time
import numpy as np
from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import score_image
from focuswatch.score.mhfd import mhfd
backend = get_backend(sys.argv[1])
size, mode, how = int(sys.argv[2]), sys.argv[3], sys.argv[4]
threads = int(sys.argv[5]) or None
rng = np.random.default_rng(0)
side = min(size, 1024)
base = synth.to_uint(
    synth.degrade(synth.neuropil((side, side), rng=rng), rng=rng, dose=30.0), 16
)
tile = np.tile(base, (size // side, size // side))
dev = backend.xp.asarray(tile)
sync = backend.xp.cuda.Device().synchronize if backend.is_gpu else (lambda: None)
if how == "file":
    import tempfile, tifffile
    from focuswatch import scoring
    path = tempfile.mkdtemp(prefix="fw-speed-") + "/tile.tif"
    tifffile.imwrite(path, tile)
    settings = scoring.ScoreSettings(backend=sys.argv[1], mode=mode, threads=threads)
def run():
    if how == "file":
        scoring.score_path(path, settings)
    elif how == "patches":
        score_image(dev, backend=backend, mode=mode, threads=threads)
    else:
        mhfd(dev, backend=backend, mode=mode)
run()
sync()
print("ready", flush=True)
for _ in sys.stdin:
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    sync()
    print((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3, flush=True)
if how == "file":
    import shutil
    shutil.rmtree(path.rsplit("/", 1)[0])
"""


def against(
    other: str,
    *,
    backend: str,
    size: int,
    modes: tuple[str, str],
    patches: bool,
    repeat: int,
    threads: int | None = None,
    from_file: bool = False,
) -> None:
    """This tree's ``modes[0]`` against another checkout's ``modes[1]``, alternated
    (``threads``: patches at once with ``patches``; None: a core each; ``from_file``:
    the tile read from an uncompressed TIFF and scored as a worker does)."""
    here = str(Path(__file__).resolve().parents[1] / "daemon")
    procs = {}
    how = "file" if from_file else "patches" if patches else "unit"
    for (name, root), mode in zip(
        (("this", here), ("other", str(Path(other).resolve()))), modes, strict=True
    ):
        env = {**os.environ, "PYTHONPATH": root}
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _WORKER, backend, str(size), mode, how, str(threads or 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
    times: dict[str, list[float]] = {name: [] for name in procs}
    cpu: dict[str, list[float]] = {name: [] for name in procs}
    try:
        for p in procs.values():
            assert p.stdout is not None
            p.stdout.readline()
        for r in range(repeat):
            # Each pair in turn starts with the other tree (no order effect).
            for name, p in sorted(procs.items(), reverse=bool(r % 2)):
                assert p.stdin is not None
                assert p.stdout is not None
                p.stdin.write("go\n")
                p.stdin.flush()
                wall, cpu_ms = p.stdout.readline().split()
                times[name].append(float(wall))
                cpu[name].append(float(cpu_ms))
    finally:
        for p in procs.values():
            if p.stdin is not None:
                p.stdin.close()
            p.wait()
    ratios = [a / b for a, b in zip(times["this"], times["other"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpu["this"], cpu["other"], strict=True)]
    mpx = size * size / 1e3
    t_this, t_other = statistics.median(times["this"]), statistics.median(times["other"])
    print(
        f"\n{size}x{size} {how}{f' ({threads} thread)' if threads else ''}: this tree "
        f"{modes[0]} vs {other} {modes[1]}, alternated "
        f"x{repeat}: this {t_this:.1f} ms ({mpx / t_this:.1f} Mpx/s), other {t_other:.1f} ms "
        f"({mpx / t_other:.1f} Mpx/s) (medians); this/other {statistics.median(ratios):.3f} "
        f"(median of pairs; range {min(ratios):.2f}-{max(ratios):.2f}); CPU s per tile: "
        f"this {statistics.median(cpu['this']) / 1e3:.2f}, other "
        f"{statistics.median(cpu['other']) / 1e3:.2f}, this/other "
        f"{statistics.median(cpu_ratios):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--size", type=int, default=1024, help="tile side for the per-tile figures")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--native",
        type=int,
        default=None,
        help="also score a native tile this size (GPU default 8192)",
    )
    ap.add_argument(
        "--against",
        metavar="DIR",
        help="only compare with another checkout's daemon folder (A/B, see --pairs)",
    )
    ap.add_argument(
        "--pairs",
        nargs="+",
        default=["default:default", "fast:fast"],
        metavar="THIS:OTHER",
        help="with --against: the mode this tree runs and the mode the other runs",
    )
    ap.add_argument(
        "--patches", action="store_true", help="with --against: score_image (patches, as served)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="with --against --patches: patches scored at once (default: a core each)",
    )
    ap.add_argument(
        "--file",
        action="store_true",
        help="with --against: the tile from a TIFF through scoring.score_path (read + score)",
    )
    args = ap.parse_args(argv)
    backend = get_backend(args.backend)
    print(machine(backend))
    if args.against:
        for pair in args.pairs:
            this_mode, _, other_mode = pair.partition(":")
            against(
                args.against,
                backend=args.backend,
                size=args.size,
                modes=(this_mode, other_mode or this_mode),
                patches=args.patches,
                repeat=args.repeat,
                threads=args.threads,
                from_file=args.file,
            )
        return 0
    rng = np.random.default_rng(0)
    tile = synth.to_uint(
        synth.degrade(synth.neuropil((args.size, args.size), rng=rng), rng=rng, dose=30.0), 16
    )
    dev = backend.xp.asarray(tile)
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("baseline: materialise all levels (paper)", lambda: paper_mhfd(dev, backend=backend)),
        (
            "faithful (streaming, 30 scales)",
            lambda: mhfd(dev, backend=backend, mode="faithful", resize=0),
        ),
        (
            "exact (noise floor, 30 scales; was 'default')",
            lambda: mhfd(dev, backend=backend, mode="exact"),
        ),
        (
            "fast (decimated bands, per-band maxima)",
            lambda: mhfd(dev, backend=backend, mode="fast"),
        ),
    ]
    print(f"\nper {args.size}x{args.size} uint16 tile, median of {args.repeat} ({backend.name}):")
    base = None
    for name, fn in variants:
        ms = timed(fn, backend, args.repeat)
        base = base or ms
        print(f"  {name:44s} {ms:9.1f} ms   {base / ms:5.2f}x vs baseline")
    exact_ms, fast_ms, ratios = interleaved(
        lambda: mhfd(dev, backend=backend, mode="exact"),
        lambda: mhfd(dev, backend=backend, mode="fast"),
        backend,
        max(args.repeat, 9),
    )
    print(
        f"\nfast vs exact, alternated x{len(ratios)}: exact {exact_ms:.1f} ms, "
        f"fast {fast_ms:.1f} ms (medians); speed-up {statistics.median(ratios):.2f}x "
        f"(median of pairs; range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    native = args.native if args.native is not None else (8192 if backend.is_gpu else 0)
    if native:
        reps = max(1, args.repeat // 2)
        big = np.tile(tile, (native // args.size + 1, native // args.size + 1))[:native, :native]
        print(f"\nnative {native}x{native} uint16, whole tile (halo-tiled), median of {reps}:")
        for mode in ("exact", "fast"):
            ms = timed(
                lambda m=mode: score_image(big, backend=backend, mode=m, resolution="native"),
                backend,
                reps,
            )
            print(f"  {mode:44s} {ms:9.1f} ms   {native * native / ms / 1e3:7.1f} Mpx/s")
        ms = timed(lambda: score_image(big, backend=backend, resolution="patches"), backend, reps)
        label = "fast (the default), 1024² patches (focus map)"
        print(f"  {label:44s} {ms:9.1f} ms   {native * native / ms / 1e3:7.1f} Mpx/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
