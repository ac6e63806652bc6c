"""Scoring throughput: tiles per second against the number of Dask workers (and the GPU).

Runs each configuration through the real path the daemon uses (``DaskExecutor`` on a
``distributed.LocalCluster`` of N single-threaded worker processes on 127.0.0.1,
``scoring.score_path`` on each worker) and prints one table, with the machine it
ran on. With ``--gpu`` (and a GPU present) it also times the daemon's GPU path, a
``LocalExecutor`` GPU worker scoring through ``gpu.score_path_gpu``, on 8192² tiles
with the copy/compute overlap (two tiles in flight: ``scoring.gpu_overlap = true``)
and without (one), alternating the two settings.

    python bench/throughput.py                      # 1 and 2 workers, 2048² uint16 tiles
    python bench/throughput.py --workers 1 2 4 8    # on a bigger machine
    python bench/throughput.py --large              # 8192² tiles as well
    python bench/throughput.py --gpu                # GPU tiles/s, overlap on and off
    python bench/throughput.py --large --cores 1 2 --threads 1 2   # the scaling table

``--cores N``: the cluster's processes may run on the first N cores only (CPU
affinity, inherited by the workers); ``--threads T``: patches each worker scores at
once (``ScoreSettings.threads``; default: one per core it may use).

Numbers measure this machine at this moment: other load on it lowers them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import tifffile

from focuswatch.choices import DEFAULT_MODE
from focuswatch.cluster import DaskExecutor
from focuswatch.errors import BackendError
from focuswatch.executor import Executor, Job
from focuswatch.scoring import ScoreSettings


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_tiles(folder: Path, *, side: int, count: int, seed: int = 0) -> list[Path]:
    """``count`` different 16-bit tiles with EM-like blobs over shot-like noise."""
    rng = np.random.default_rng(seed)
    base = scipy.ndimage.gaussian_filter(rng.standard_normal((side, side)), 3.0)
    base = (base - base.min()) / (np.ptp(base) or 1.0)
    paths = []
    for i in range(count):
        noisy = np.roll(base, (97 * i, 131 * i), axis=(0, 1)) * 40000 + 8000
        noisy += rng.normal(0.0, 1500.0, noisy.shape)
        path = folder / f"Tile_r{i // 8 + 1}-c{i % 8 + 1}_S_000_bench.tif"
        tifffile.imwrite(path, np.clip(noisy, 0, 65535).astype(np.uint16))
        paths.append(path)
    return paths


def dask_tiles_per_s(
    paths: list[Path], *, workers: int, settings: ScoreSettings, timeout_s: float
) -> float:
    """Tiles/s through DaskExecutor on ``workers`` local worker processes (after warm-up)."""
    import distributed

    with distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787: may be taken
    ) as cluster:
        ex = DaskExecutor(cluster.scheduler_address, queue_size=4 * workers)
        try:
            # Warm-up: one tile per worker (imports, FFT plans) is not timed.
            run(ex, paths[:workers], settings, first_id=1, timeout_s=timeout_s)
            t0 = time.perf_counter()
            run(ex, paths, settings, first_id=1000, timeout_s=timeout_s)
            return len(paths) / (time.perf_counter() - t0)
        finally:
            ex.close()


def run(
    ex: Executor, paths: list[Path], settings: ScoreSettings, *, first_id: int, timeout_s: float
) -> None:
    jobs = [Job(first_id + i, str(p), settings) for i, p in enumerate(paths)]
    done = 0
    deadline = time.monotonic() + timeout_s

    def drain(wait: float) -> int:
        n = 0
        for o in ex.outcomes(wait):
            if o.result is None:
                raise SystemExit(f"tile {o.version_id} failed: {o.error}")
            n += 1
        return n

    for job in jobs:
        ex.submit(job)  # blocks at queue_size: the executor's own backpressure
        done += drain(0)
    while done < len(jobs):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s} s with {done}/{len(jobs)} tiles")
        done += drain(1.0)


def gpu_tiles_per_s(
    paths: list[Path], settings: ScoreSettings, *, overlap: bool, timeout_s: float
) -> float:
    """Tiles/s through one GPU worker process, as the daemon runs it (after warm-up)."""
    from focuswatch.gpu import score_path_gpu
    from focuswatch.worker import LocalExecutor

    with LocalExecutor(
        workers=1,
        devices=[0],
        score_fn=score_path_gpu,
        tiles_per_worker=2 if overlap else 1,
        queue_size=4,
        tile_timeout_s=timeout_s,
    ) as ex:
        run(ex, paths[:2], settings, first_id=1, timeout_s=timeout_s)  # kernels, FFT plans
        t0 = time.perf_counter()
        run(ex, paths, settings, first_id=1000, timeout_s=timeout_s)
        return len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    ap.add_argument("--tiles", type=int, default=12, help="tiles per CPU measurement")
    ap.add_argument("--large", action="store_true", help="also 8192² tiles on the CPU")
    ap.add_argument("--gpu", action="store_true", help="GPU tiles/s for 8192², overlap on/off")
    ap.add_argument("--gpu-tiles", type=int, default=16, help="tiles per GPU measurement")
    ap.add_argument("--criterion", default="mhfd")
    ap.add_argument("--mode", default=DEFAULT_MODE)
    ap.add_argument("--cores", type=int, nargs="+", default=[0], help="0: every core")
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="patches at once; 0: a core each"
    )
    ap.add_argument("--patch-size", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per measurement, seconds")
    args = ap.parse_args(argv)
    if any(w < 1 for w in args.workers) or args.tiles < 1 or args.gpu_tiles < 1:
        ap.error("--workers, --tiles and --gpu-tiles must be >= 1")

    all_cores = sorted(os.sched_getaffinity(0))
    rows: list[tuple[str, str, str, float]] = []
    sides = [2048, 8192] if args.large else [2048]
    with tempfile.TemporaryDirectory(prefix="focuswatch-bench-") as tmp:
        for side in sides:
            folder = Path(tmp) / f"cpu{side}"
            folder.mkdir()
            count = args.tiles if side == 2048 else max(2, args.tiles // 4)
            paths = write_tiles(folder, side=side, count=count)
            for cores in args.cores:
                use = all_cores[: cores or len(all_cores)]
                os.sched_setaffinity(0, use)  # the cluster's processes inherit it
                try:
                    for threads in args.threads:
                        cpu = ScoreSettings(
                            criterion=args.criterion,
                            mode=args.mode,
                            patch_size=args.patch_size,
                            backend="cpu",
                            threads=threads or None,
                        )
                        for w in args.workers:
                            rate = dask_tiles_per_s(
                                paths, workers=w, settings=cpu, timeout_s=args.timeout
                            )
                            setting = (
                                f"{len(use)} core(s), {w} worker(s) x "
                                f"{threads or len(use)} thread(s)"
                            )
                            rows.append((f"{side}²", "dask cpu", setting, rate))
                            msg = f"  measured {side}² {setting}: {rate:.3f} tiles/s"
                            print(msg, file=sys.stderr)
                finally:
                    os.sched_setaffinity(0, all_cores)
        gpu_note = ""
        if args.gpu:
            try:
                from focuswatch.gpu import require_gpu

                device = require_gpu().device
            except BackendError as exc:
                gpu_note = f"GPU skipped: {exc}"
            else:
                folder = Path(tmp) / "gpu8192"
                folder.mkdir()
                paths = write_tiles(folder, side=8192, count=args.gpu_tiles)
                gpu = ScoreSettings(
                    criterion=args.criterion, mode=args.mode, patch_size=args.patch_size
                )
                for overlap in (False, True, False, True):  # alternated: drift hits both
                    rate = gpu_tiles_per_s(paths, gpu, overlap=overlap, timeout_s=args.timeout)
                    label = "overlap" if overlap else "no overlap"
                    rows.append(("8192²", f"gpu {device}", label, rate))

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.platform()}")
    print(
        f"scoring: criterion={args.criterion} mode={args.mode} patch_size={args.patch_size}, "
        "16-bit tiles"
    )
    print(f"{'tile':>7}  {'backend':<28}  {'setting':<34}  {'tiles/s':>8}  {'Mpx/s':>8}")
    for tile, backend, setting, rate in rows:
        side = int(tile.rstrip("²"))
        mpx = rate * side * side / 1e6
        print(f"{tile:>7}  {backend:<28}  {setting:<34}  {rate:8.3f}  {mpx:8.1f}")
    if gpu_note:
        print(gpu_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
