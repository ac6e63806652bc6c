"""Pipeline benchmark: what the service adds on top of scoring, on this machine's CPU.

For each tile size (16-bit, default 2048² and 8192²) it measures, in one run:

1. scoring alone: ``scoring.score_path`` in this process, tile after tile
   (the floor any service could reach with one worker);
2. latency: tiles written one at a time into a folder the real ``Service`` watches
   (inotify, real worker processes, real ledger, built-in sinks); time from the
   writer's ``close()`` to the verdict reaching a sink;
3. sustained throughput: ``--count`` tiles dropped at once; first close to last verdict;
4. service overhead = sustained time per tile / scoring-alone time per tile − 1
   (target < 10 %), and the same against the read+score time the workers themselves
   reported for those tiles (separates the pipeline's cost from scoring running
   slower in a worker process, e.g. when other jobs share the CPU).

``--breakdown`` also prints where each latency tile's close → verdict time went, from
the service's own events (``tile_ready``, ``tile_scoring``, ``tile_scored``), the
moment the executor handed its outcome over and the sink's arrival, all on this
process's clock: the file seen and recorded; claimed and sent to a worker; the
worker's own read and score (its ``read_ms``, ``score_ms``); the rest of the trip to
the worker and back (pipes, pickling, the worker process's start-up of the job);
judged and recorded; delivered to the sink.

Usage: ``python bench/pipeline.py [--sizes 2048 8192] [--count 8] [--latency 3]
[--mode fast|exact] [--workers 1] [--breakdown]`` (mode: ``scoring.mode``'s default
unless given).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import tifffile

from focuswatch import logs, scoring, synth
from focuswatch.app import build_service
from focuswatch.choices import MODES
from focuswatch.config import Config, ScoringConfig, WatchConfig
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.ledger import Ledger
from focuswatch.scoring import ScoreSettings
from focuswatch.verdict import VerdictRecord
from focuswatch.worker import local_executor

#: The service's events a tile passes on its way (``--breakdown``).
_STAGES = ("tile_ready", "tile_scoring", "tile_scored")


class TimingSink:
    """Records when each tile's verdict arrives (perf_counter, same clock as the writer)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()

    def start(self) -> None:
        return None

    def on_verdict(self, record: VerdictRecord) -> None:
        with self.cond:
            self.arrived[record.path] = time.perf_counter()
            self.cond.notify_all()

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        return None

    def wait_for(self, paths: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(p in self.arrived for p in paths):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{sum(p in self.arrived for p in paths)}/{len(paths)}")
                self.cond.wait(left)


class Stamps:
    """When each tile passed each of the service's events (``_STAGES``) and when the
    executor handed its outcome over: ``(tile, stage) → perf_counter``. A structlog
    processor: the service thread logs synchronously, so the stamp is the moment."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.fields: dict[tuple[str, str], dict[str, Any]] = {}
        self.by_version: dict[int, str] = {}

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        name = event.get("event")
        if name in _STAGES and "tile" in event:
            self.at[event["tile"], name] = time.perf_counter()
            self.fields[event["tile"], name] = dict(event)
            self.by_version[int(event["version"])] = event["tile"]
        raise structlog.DropEvent

    def outcome(self, version_id: int) -> None:
        tile = self.by_version.get(version_id)
        if tile is not None:
            self.at[tile, "outcome"] = time.perf_counter()


@contextlib.contextmanager
def stamping() -> Iterator[Stamps]:
    """``Stamps`` of the service's events while the block runs: this process's structlog
    records them and prints nothing, and is set back after."""
    stamps = Stamps()
    old = structlog.get_config()
    structlog.configure(processors=[stamps], wrapper_class=structlog.BoundLogger)
    try:
        yield stamps
    finally:
        structlog.configure(**old)


class StampingExecutor:
    """The real local executor, stamping the moment each outcome is handed over."""

    def __init__(self, inner: Executor, stamps: Stamps) -> None:
        self._inner = inner
        self._stamps = stamps

    def submit(self, job: Job) -> None:
        self._inner.submit(job)

    def outcomes(self, timeout: float) -> Iterator[Outcome]:
        for o in self._inner.outcomes(timeout):
            self._stamps.outcome(o.version_id)
            yield o

    def in_flight(self) -> int:
        return self._inner.in_flight()

    def describe(self) -> dict[str, Any]:
        return self._inner.describe()

    def close(self) -> None:
        self._inner.close()


def breakdown(stamps: Stamps, tile: str, closed: float, arrived: float) -> dict[str, float]:
    """One tile's close → verdict time in its parts (seconds)."""
    at = {stage: stamps.at[tile, stage] for stage in (*_STAGES, "outcome")}
    scored = stamps.fields[tile, "tile_scored"]
    read_s, score_s = scored["read_ms"] / 1e3, scored["score_ms"] / 1e3
    return {
        "seen+recorded": at["tile_ready"] - closed,
        "claimed+sent": at["tile_scoring"] - at["tile_ready"],
        "worker read": read_s,
        "worker score": score_s,
        "trip to worker": at["outcome"] - at["tile_scoring"] - read_s - score_s,
        "judged+recorded": at["tile_scored"] - at["outcome"],
        "delivered": arrived - at["tile_scored"],
        "total": arrived - closed,
    }


def tile_bytes(size: int, *, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = synth.neuropil((min(size, 2048), min(size, 2048)), rng=rng)
    reps = max(1, size // base.shape[0])
    image = np.tile(base, (reps, reps))[:size, :size]
    noisy = rng.poisson(image * 30.0).astype(np.float32) / 30.0  # shot noise
    buf = io.BytesIO()
    tifffile.imwrite(buf, synth.to_uint(np.clip(noisy, 0, 1), 16), photometric="minisblack")
    return buf.getvalue()


def write(path: Path, data: bytes) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
    return time.perf_counter()  # the moment the writer closed the file


def run_size(
    size: int,
    *,
    count: int,
    latency_n: int,
    workers: int,
    mode: str,
    stamps: Stamps | None = None,
) -> dict[str, Any]:
    data = tile_bytes(size, seed=size)
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as tmp:
        root = Path(tmp)
        cfg = Config(
            state_dir=root / "state",
            watch=WatchConfig(path=root / "watch", observer="inotify", rescan_interval_s=3600.0),
            scoring=ScoringConfig(workers=workers, tile_timeout_s=3600.0, mode=mode),
        )
        (root / "watch").mkdir()
        # 1. scoring alone, in this process
        alone_dir = root / "alone"
        files = [write(alone_dir / f"t{i}.tif", data) for i in range(count)]
        del files
        settings = ScoreSettings.from_config(cfg.scoring)
        scoring.score_path(alone_dir / "t0.tif", settings)  # warm-up (FFT plans, imports)
        t0 = time.perf_counter()
        for i in range(count):
            scoring.score_path(alone_dir / f"t{i}.tif", settings)
        alone_per_tile = (time.perf_counter() - t0) / count

        sink = TimingSink()
        executor = None if stamps is None else StampingExecutor(local_executor(cfg), stamps)
        svc = build_service(cfg, sinks=[sink], clock=time.time, executor=executor)
        stop = threading.Event()
        thread = threading.Thread(target=svc.run_until, args=(stop,), name="service")
        thread.start()
        try:
            budget = 60 + 20 * alone_per_tile * (count + latency_n + 1)
            warm = root / "watch" / "S_000" / "Tile_r0-c0_S_000.tif"
            write(warm, data)  # warm-up: worker start-up is not part of the figures
            sink.wait_for([str(warm)], budget)
            # 2. latency, one tile at a time
            latencies = []
            parts = []
            for i in range(latency_n):
                p = root / "watch" / "S_001" / f"Tile_r0-c{i}_S_001.tif"
                closed = write(p, data)
                sink.wait_for([str(p)], budget)
                latencies.append(sink.arrived[str(p)] - closed)
                if stamps is not None:
                    parts.append(breakdown(stamps, str(p), closed, sink.arrived[str(p)]))
            # 3. sustained: a burst
            paths = [
                root / "watch" / "S_002" / f"Tile_r{i // 8}-c{i % 8}_S_002.tif"
                for i in range(count)
            ]
            first = time.perf_counter()
            for p in paths:
                write(p, data)
            sink.wait_for([str(p) for p in paths], budget)
            span = max(sink.arrived[str(p)] for p in paths) - first
        finally:
            stop.set()
            thread.join(120)
        # What the workers themselves spent reading and scoring each burst tile.
        led = Ledger.open(cfg.state_dir, readonly=True)
        worker_s = [
            (r["read_ms"] + r["score_ms"]) / 1000.0
            for v in (led.versions(str(p))[-1] for p in paths)
            if (r := led.result(v.id)) is not None
        ]
        led.close()
    per_tile = span / count
    return {
        "size": size,
        "score_alone_s": alone_per_tile,
        "latency_median_s": statistics.median(latencies) if latencies else float("nan"),
        "latency_max_s": max(latencies) if latencies else float("nan"),
        "sustained_tiles_per_s": count / span,
        "service_per_tile_s": per_tile,
        "overhead_pct": 100.0 * (per_tile / alone_per_tile - 1.0),
        "worker_per_tile_s": statistics.mean(worker_s),
        "overhead_vs_worker_pct": 100.0 * (per_tile / statistics.mean(worker_s) - 1.0),
        "parts": parts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--count", type=int, default=8, help="tiles per size for throughput")
    ap.add_argument("--latency", type=int, default=3, help="tiles written one by one")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--mode", choices=MODES, default=ScoringConfig().mode)
    ap.add_argument("--breakdown", action="store_true", help="where each latency tile's time went")
    args = ap.parse_args()
    logs.configure("error")  # the service's per-tile events and alerts would drown the table
    with stamping() if args.breakdown else contextlib.nullcontext() as stamps:
        table(args, stamps)


def table(args: argparse.Namespace, stamps: Stamps | None) -> None:
    print(f"mode {args.mode}, {args.workers} worker(s), {len(os.sched_getaffinity(0))} cores")
    print(
        f"{'size':>6} {'score alone':>12} {'latency med':>12} {'latency max':>12} "
        f"{'tiles/s':>8} {'Mpx/s':>7} {'svc/tile':>9} {'wkr/tile':>10} {'vs alone':>10} "
        f"{'vs worker':>10}"
    )
    for size in args.sizes:
        r = run_size(
            size,
            count=args.count,
            latency_n=args.latency,
            workers=args.workers,
            mode=args.mode,
            stamps=stamps,
        )
        print(
            f"{size:>6} {r['score_alone_s']:>11.3f}s {r['latency_median_s']:>11.3f}s "
            f"{r['latency_max_s']:>11.3f}s {r['sustained_tiles_per_s']:>8.3f} "
            f"{r['sustained_tiles_per_s'] * size * size / 1e6:>7.1f} "
            f"{r['service_per_tile_s']:>8.3f}s {r['worker_per_tile_s']:>9.3f}s "
            f"{r['overhead_pct']:>9.1f}% {r['overhead_vs_worker_pct']:>9.1f}%",
            flush=True,
        )
        for i, part in enumerate(r["parts"]):
            cells = ", ".join(f"{k} {1e3 * v:.0f}" for k, v in part.items())
            print(f"    latency tile {i} (ms): {cells}", flush=True)


if __name__ == "__main__":
    main()
