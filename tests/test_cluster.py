"""Scoring on a real multi-process Dask cluster on 127.0.0.1: faults, fallback, one outcome each."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import tifffile

from fake_cupy import HAS_GPU
from focuswatch.choices import DEFAULT_MODE, scorer_revision
from focuswatch.cluster import (
    DaskExecutor,
    TaskResult,
    connect,
    default_score_fn,
    run_task,
)
from focuswatch.cluster.executor import _Restarts, _Throughput
from focuswatch.config import parse
from focuswatch.errors import BackendError, TileError
from focuswatch.executor import Job, Outcome
from focuswatch.gpu import score_path_gpu
from focuswatch.scoring import ScoreSettings, TileScore, score_path
from loopback import local_cluster
from pipeline_jobs import fake_score

# Real multi-process Dask clusters on 127.0.0.1: seconds per test (make check skips them).
pytestmark = pytest.mark.slow

distributed = pytest.importorskip("distributed")

SETTINGS = ScoreSettings(backend="cpu")
GATE_TIMEOUT_S = 30.0
HANG_BOUND_S = 600.0


# ----------------------------------------------------------- injected scoring functions
# Top-level so that they pickle by reference; the spawned Dask workers and the fallback
# pool import this module from the sys.path they inherit.


def gated_score(path: str, settings: ScoreSettings) -> TileScore:
    """Score by pixel spread; a tile named ``*gate*`` first reports this process's pid and
    then waits (bounded) for a ``release`` file, so a test knows which worker holds it."""
    p = Path(path)
    if "gate" in p.name:
        (p.parent / f"started-{os.getpid()}").write_text(p.name)
        release = p.parent / "release"
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released the gate")
            time.sleep(0.01)  # a bounded poll on a file in another process
    image = tifffile.imread(p)
    return TileScore(
        revision=scorer_revision("mhfd", DEFAULT_MODE),
        path=path,
        score=float(image.std()),
        patch_scores=None,
        content=float(image.std()),
        backend=settings.backend,
        shape=(int(image.shape[0]), int(image.shape[1])),
        dtype=str(image.dtype),
        read_ms=0.0,
        score_ms=0.0,
        meta=None,
    )


def hang_score(path: str, settings: ScoreSettings) -> TileScore:
    """``gated_score``, except that a tile named ``*hang*`` reports this process's pid and
    then hangs, as a call stuck in a driver or on a dead mount would, until a ``release``
    file appears (bounded, so that a forgotten worker does not hang for ever)."""
    p = Path(path)
    if "hang" in p.name:
        (p.parent / f"started-{os.getpid()}").write_text(p.name)
        release = p.parent / "release"
        deadline = time.monotonic() + HANG_BOUND_S
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # a bounded poll on a file in another process
    return gated_score(path, settings)


def restrictions_of(prefix: str, dask_scheduler: Any) -> list[tuple[Any, str]]:
    """(resource restrictions, state) of the scheduler's tasks whose key starts with prefix."""
    return [
        (ts.resource_restrictions, ts.state)
        for key, ts in dask_scheduler.tasks.items()
        if str(key).startswith(prefix)
    ]


def bad_tile_score(path: str, settings: ScoreSettings) -> TileScore:
    raise TileError(path, "not a TIFF file")


def no_gpu_score(path: str, settings: ScoreSettings) -> TileScore:
    raise BackendError("GPU requested but CuPy/an NVIDIA GPU is not available: no CUDA device")


def bad_shape_score(path: str, settings: ScoreSettings) -> TileScore:
    raise ValueError("image must be 2-D, got shape (3, 4, 5)")


# ------------------------------------------------------------------------ helpers


def write_tiles(folder: Path, names: list[str]) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        path = folder / name
        tifffile.imwrite(path, rng.integers(0, 65535, (256, 256), dtype=np.uint16))
        paths.append(path)
    return paths


def jobs_for(paths: list[Path], first_id: int = 1) -> list[Job]:
    return [
        Job(version_id=first_id + i, path=str(p), settings=SETTINGS) for i, p in enumerate(paths)
    ]


def observer_client(address: str) -> Any:
    """A second client that only looks at the scheduler (a context manager).

    distributed's handshake asserts that its first batch holds just "stream-start"; a
    broadcast the scheduler sends in the same 2 ms batch (our executor cancelling a
    timed-out key at that moment) breaks it, in distributed, not in focuswatch. So
    connect again, a bounded number of times.
    """
    for attempt in range(3):
        try:
            return distributed.Client(address, set_as_default=False)
        except AssertionError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def wait_for(predicate: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def started_pids(folder: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in folder.glob("started-*")}


def collect(ex: DaskExecutor, n: int, *, timeout: float) -> list[Outcome]:
    got: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(ex.outcomes(0.5))
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster(2) as c:
        yield c


@pytest.fixture(scope="module")
def one_worker() -> Iterator[Any]:
    """One single-threaded worker process under a nanny (what restarts need)."""
    with local_cluster(1) as c:
        yield c


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hang_config(address: str, **cluster: Any) -> Any:
    return parse(
        {
            "scoring": {"tile_timeout_s": 2.0},
            "cluster": {
                "scheduler": "dask",
                "address": address,
                "connect_timeout_s": 5.0,
                **cluster,
            },
        }
    )


def assert_timed_out(o: Outcome, seconds: str) -> None:
    assert o.result is None
    assert o.retryable
    assert o.error is not None
    assert o.error.startswith(f"timed out after {seconds} s (scoring.tile_timeout_s)")
    assert o.worker.startswith("tcp://127.0.0.1:")


# ------------------------------------------------------------------ pure task logic


def test_task_reports_tile_errors_as_not_retryable(tmp_path: Path) -> None:
    res = run_task("x.tif", name="x.tif", settings=SETTINGS, score_fn=bad_tile_score)
    assert res == TaskResult(None, "not a TIFF file", retryable=False, worker="")
    res = run_task("x.tif", name="x.tif", settings=SETTINGS, score_fn=bad_shape_score)
    assert res.error is not None
    assert "2-D" in res.error
    assert not res.retryable


def test_a_worker_without_the_gpu_it_was_asked_for_says_so() -> None:
    res = run_task(
        "x.tif", name="x.tif", settings=ScoreSettings(backend="gpu"), score_fn=no_gpu_score
    )
    assert res.error is not None
    assert res.error.startswith("this worker has no usable GPU: ")
    assert res.retryable  # another worker may have the GPU


def test_bytes_are_scored_under_the_tile_s_own_name(tmp_path: Path) -> None:
    (path,) = write_tiles(tmp_path, ["Tile_r1-c2_S_007.tif"])
    res = run_task(path.read_bytes(), name=str(path), settings=SETTINGS, score_fn=gated_score)
    assert res.score is not None
    assert res.score.path == str(path)
    assert res.score.shape == (256, 256)
    bad = run_task(b"not a tiff", name=str(path), settings=SETTINGS, score_fn=bad_tile_score)
    assert bad.error == "not a TIFF file"


def test_throughput_counts_tiles_and_rates_over_the_window() -> None:
    now = [1000.0]
    tp = _Throughput(window_s=60.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 3.0
        tp.record("w1")
    assert tp.tiles("w1") == 10
    assert tp.per_min("w1") == pytest.approx(10 * 60 / 30)  # 10 tiles in 30 s since start
    now[0] += 120.0  # nothing for two minutes: the window forgets
    assert tp.per_min("w1") == 0.0
    assert tp.tiles("w1") == 10
    assert tp.per_min("nobody") == 0.0


def test_one_hang_means_one_restart_of_its_worker() -> None:
    """Tiles that started before their worker's last restart request do not ask again
    (that restart ends them); a hang that started after it does, even at the same
    address (a fixed --worker-port); memory is bounded."""
    r = _Restarts(keep=2)
    assert r.claim("w1", started_at=10.0, now=15.0)
    assert not r.claim("w1", started_at=12.0, now=15.5)  # same hang era: one restart
    assert r.claim("w2", started_at=12.0, now=15.5)  # another worker
    assert r.claim("w1", started_at=16.0, now=21.0)  # a new hang on the fresh process
    assert not r.claim("w1", started_at=20.0, now=22.0)
    assert r.claim("w3", started_at=20.0, now=22.0)  # w2 is the oldest: forgotten
    assert r.claim("w2", started_at=12.0, now=22.0)
    with pytest.raises(ValueError, match="keep"):
        _Restarts(keep=0)


def test_bad_parameters_are_rejected_with_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="on_unreachable"):
        DaskExecutor("tcp://127.0.0.1:1", on_unreachable="sometimes")
    with pytest.raises(ValueError, match="queue_size"):
        DaskExecutor("tcp://127.0.0.1:1", queue_size=0)
    with pytest.raises(ValueError, match="tile_timeout_s"):
        DaskExecutor("tcp://127.0.0.1:1", tile_timeout_s=0)
    with pytest.raises(ValueError, match="scheduler = 'dask'"):
        connect(parse({}))


# ------------------------------------------------------------------ a real cluster


def test_killed_worker_tile_is_rerun_elsewhere_and_each_job_has_one_outcome(
    cluster: Any, tmp_path: Path
) -> None:
    """SIGKILL the worker scoring a tile: Dask re-runs it on another worker, and the
    executor yields exactly one successful outcome per job."""
    paths = write_tiles(tmp_path, ["gate.tif"] + [f"t{i}.tif" for i in range(5)])
    jobs = jobs_for(paths)
    ex = DaskExecutor(cluster.scheduler_address, score_fn=gated_score, connect_timeout_s=5)
    try:
        for job in jobs:
            ex.submit(job)
        (victim,) = wait_for(lambda: started_pids(tmp_path), timeout=30, what="the gated tile")
        os.kill(victim, signal.SIGKILL)
        rerun = wait_for(
            lambda: started_pids(tmp_path) - {victim}, timeout=30, what="the re-run elsewhere"
        )
        assert victim not in rerun
        (tmp_path / "release").write_text("")
        outcomes = collect(ex, len(jobs), timeout=30)
        assert sorted(o.version_id for o in outcomes) == [j.version_id for j in jobs]
        assert all(o.result is not None and o.error is None for o in outcomes)
        assert all(o.worker.startswith("tcp://127.0.0.1:") for o in outcomes)
        assert list(ex.outcomes(0.3)) == []  # no late duplicate
        assert ex.in_flight() == 0
        # Dask re-ran the same task (same key): one submission per job, and the gated
        # tile started exactly twice (killed, then re-run).
        assert [o.extra["attempt"] for o in outcomes] == [1] * len(jobs)
        assert started_pids(tmp_path) == {victim} | rerun
        assert len(rerun) == 1
        desc = ex.describe()
        assert desc["backend"] == "dask"
        assert desc["address"] == cluster.scheduler_address
        assert sum(w["tiles"] for w in desc["workers"]) == len(jobs)
        assert all(
            {"address", "nthreads", "resources", "tiles", "tiles_per_min"} <= set(w)
            for w in desc["workers"]
        )
        assert any(w["alive"] and w["nthreads"] == 1 for w in desc["workers"])
    finally:
        ex.close()


def test_a_tile_that_kills_every_worker_it_runs_on_is_a_retryable_outcome(
    tmp_path: Path,
) -> None:
    """Past allowed-failures (0 here), Dask gives up with KilledWorker: the executor
    reports a retryable error (the service retries up to scoring.max_attempts)."""
    import dask

    (gate,) = write_tiles(tmp_path, ["gate.tif"])
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        local_cluster(1) as small,
    ):
        ex = DaskExecutor(small.scheduler_address, score_fn=gated_score, connect_timeout_s=5)
        try:
            ex.submit(Job(version_id=9, path=str(gate), settings=SETTINGS))
            (victim,) = wait_for(lambda: started_pids(tmp_path), timeout=30, what="the gate")
            os.kill(victim, signal.SIGKILL)
            (outcome,) = collect(ex, 1, timeout=30)
            assert outcome.version_id == 9
            assert outcome.result is None
            assert outcome.retryable
            assert outcome.error is not None
            assert outcome.error.startswith("KilledWorker")
        finally:
            ex.close()


def test_send_bytes_scores_tiles_whose_path_the_worker_cannot_see(
    cluster: Any, tmp_path: Path
) -> None:
    """The real scorer on the workers, fed bytes: same names, metadata parsed from them."""
    paths = write_tiles(tmp_path, ["Tile_r1-c1_S_003.tif", "Tile_r1-c2_S_003.tif"])
    ex = DaskExecutor(cluster.scheduler_address, send_bytes=True, connect_timeout_s=5)
    try:
        jobs = jobs_for(paths)
        for job in jobs:
            ex.submit(job)
        outcomes = collect(ex, 2, timeout=20)
        assert sorted((o.version_id, o.result.path) for o in outcomes if o.result) == [
            (1, str(paths[0])),
            (2, str(paths[1])),
        ]
        assert all(o.result.score > 0 and o.result.backend == "numpy" for o in outcomes if o.result)
        assert sorted(o.result.meta.placement.col for o in outcomes if o.result) == [1, 2]
    finally:
        ex.close()


def test_send_bytes_unreadable_tile_is_one_final_outcome_with_the_reason(
    cluster: Any, tmp_path: Path
) -> None:
    """A tile the daemon cannot read to ship (gone, a directory) gets one non-retryable
    outcome worded as focuswatch.tiles words it; it does not hold a queue slot forever."""
    (ok,) = write_tiles(tmp_path, ["ok.tif"])
    gone = tmp_path / "gone.tif"
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    ex = DaskExecutor(
        cluster.scheduler_address, send_bytes=True, score_fn=gated_score, connect_timeout_s=5
    )
    try:
        for job in jobs_for([gone, folder, ok]):
            ex.submit(job)
        by_id = {o.version_id: o for o in collect(ex, 3, timeout=20)}
        assert sorted(by_id) == [1, 2, 3]
        assert (
            by_id[1].error
            == "file not found: it vanished before it could be read (moved or deleted)"
        )
        assert by_id[2].error == "is a directory, not an image file"
        assert not by_id[1].retryable
        assert not by_id[2].retryable
        assert by_id[1].result is None
        assert by_id[2].result is None
        assert by_id[3].result is not None
        assert by_id[3].error is None
        assert list(ex.outcomes(0.3)) == []  # answered once, not re-placed
        assert ex.in_flight() == 0
    finally:
        ex.close()


def test_send_bytes_reads_tiles_without_stalling_the_executor(cluster: Any, tmp_path: Path) -> None:
    """A read that blocks (a FIFO nobody writes yet, standing in for a huge or slow
    tile) does not block submit, outcomes or other tiles; once written, it is scored."""
    fifo = tmp_path / "Tile_r1-c1_S_001.tif"
    os.mkfifo(fifo)
    (other,) = write_tiles(tmp_path, ["Tile_r1-c2_S_001.tif"])
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    ex = DaskExecutor(
        cluster.scheduler_address, send_bytes=True, score_fn=gated_score, connect_timeout_s=5
    )
    writer: threading.Thread | None = None
    try:
        first, second = jobs_for([fifo, other])
        submitted = threading.Event()

        def submit_first() -> None:
            ex.submit(first)
            submitted.set()

        threading.Thread(target=submit_first, daemon=True).start()
        assert submitted.wait(10), "submit blocked on the tile's read"
        ex.submit(second)
        (done,) = collect(ex, 1, timeout=20)  # while the FIFO's read is still waiting
        assert done.version_id == 2
        assert done.result is not None
        assert ex.in_flight() == 1

        def write_fifo() -> None:
            with open(fifo, "wb") as f:  # opens once the executor's reader has it open
                f.write(buf.getvalue())

        writer = threading.Thread(target=write_fifo, daemon=True)
        writer.start()
        (late,) = collect(ex, 1, timeout=20)
        assert late.version_id == 1
        assert late.result is not None
        assert late.result.path == str(fifo)
        assert late.result.shape == (64, 64)
    finally:
        if writer is None:  # unblock a reader still waiting in open(): it reads EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        ex.close()


def test_a_hung_tile_times_out_from_its_start_and_its_late_result_is_dropped(
    cluster: Any, tmp_path: Path
) -> None:
    """connect() passes scoring.tile_timeout_s: two tiles that hang on both workers
    become retryable "timed out" outcomes and are cancelled on the cluster; the tile
    queued behind them waits past the timeout without timing out (it had not started),
    and the hung tiles' late results, once they come, are dropped. (Workers are not
    restarted here, so that the late results do come.)"""
    paths = write_tiles(tmp_path, ["gate1.tif", "gate2.tif", "queued.tif"])
    cfg = parse(
        {
            "scoring": {"tile_timeout_s": 1.0},
            "cluster": {
                "scheduler": "dask",
                "address": cluster.scheduler_address,
                "connect_timeout_s": 5.0,
                "restart_hung_workers": False,
            },
        }
    )
    ex = connect(cfg, score_fn=gated_score)
    assert isinstance(ex, DaskExecutor)
    try:
        t0 = time.monotonic()
        for job in jobs_for(paths):
            ex.submit(job)
        wait_for(lambda: len(started_pids(tmp_path)) == 2, timeout=30, what="both gates")
        timed_out = collect(ex, 2, timeout=20)
        assert time.monotonic() - t0 >= 1.0
        assert sorted(o.version_id for o in timed_out) == [1, 2]
        for o in timed_out:
            assert o.result is None
            assert o.retryable
            assert o.error is not None
            assert o.error.startswith("timed out after 1 s (scoring.tile_timeout_s)")
            assert o.worker.startswith("tcp://127.0.0.1:")
        with observer_client(cluster.scheduler_address) as c:
            for vid in (1, 2):
                wait_for(
                    lambda vid=vid: (
                        not c.run_on_scheduler(restrictions_of, f"focuswatch-score-{vid}-")
                    ),
                    timeout=10,
                    what="the hung task to be cancelled on the scheduler",
                )
        # The queued tile has waited longer than the timeout, but never started.
        assert list(ex.outcomes(1.5)) == []
        assert time.monotonic() - t0 > 2.0
        (tmp_path / "release").write_text("")
        (last,) = collect(ex, 1, timeout=20)
        assert last.version_id == 3
        assert last.result is not None
        assert last.error is None
        assert list(ex.outcomes(0.5)) == []  # the gates' late results were dropped
        assert ex.in_flight() == 0
    finally:
        ex.close()


def test_a_hung_worker_is_restarted_and_the_tile_queued_behind_it_is_scored(
    one_worker: Any, tmp_path: Path
) -> None:
    """connect() passes cluster.restart_hung_workers (default true): the only worker
    hangs on a tile; past tile_timeout_s that tile is a retryable timeout, the worker's
    process is restarted through its nanny (logged, counted in describe()), and the tile
    queued behind it is scored by the fresh process. One outcome per job."""
    hang, good = write_tiles(tmp_path, ["hang.tif", "good.tif"])
    ex = connect(hang_config(one_worker.scheduler_address), score_fn=hang_score)
    assert isinstance(ex, DaskExecutor)
    try:
        with structlog.testing.capture_logs() as logs:
            for job in jobs_for([hang, good]):
                ex.submit(job)
            (victim,) = wait_for(lambda: started_pids(tmp_path), timeout=30, what="the hang")
            outcomes = collect(ex, 2, timeout=40)
            by_id = {o.version_id: o for o in outcomes}
            assert len(outcomes) == len(by_id) == 2, outcomes
            timed_out, scored = by_id[1], by_id[2]
            assert_timed_out(timed_out, "2")
            assert scored.result is not None
            assert scored.error is None
            assert scored.worker.startswith("tcp://127.0.0.1:")
            assert scored.worker != timed_out.worker  # a fresh worker process
            wait_for(lambda: not pid_alive(victim), timeout=10, what="the hung process to end")
            restarted = wait_for(
                lambda: [e for e in logs if e["event"] == "cluster_worker_restarted"],
                timeout=10,
                what="the restart to be logged",
            )
        assert [e["worker"] for e in restarted] == [timed_out.worker]
        assert [e for e in logs if e["event"] == "cluster_worker_restart_failed"] == []
        assert ex.describe()["worker_restarts"] == 1
        assert list(ex.outcomes(0.3)) == []  # no late duplicate
        assert ex.in_flight() == 0
    finally:
        (tmp_path / "release").write_text("")
        ex.close()


def test_without_restarts_a_hung_worker_holds_the_tile_queued_behind_it(
    one_worker: Any, tmp_path: Path
) -> None:
    """restart_hung_workers = false: the hung tile still times out, but its worker's
    thread stays busy, so the tile queued behind it is not scored until the hung call
    returns, on the same worker."""
    hang, good = write_tiles(tmp_path, ["hang.tif", "good.tif"])
    cfg = hang_config(one_worker.scheduler_address, restart_hung_workers=False)
    ex = connect(cfg, score_fn=hang_score)
    assert isinstance(ex, DaskExecutor)
    try:
        with structlog.testing.capture_logs() as logs:
            for job in jobs_for([hang, good]):
                ex.submit(job)
            (timed_out,) = collect(ex, 1, timeout=30)
            assert timed_out.version_id == 1
            assert_timed_out(timed_out, "2")
            assert list(ex.outcomes(3.0)) == []  # the good tile waits behind the hung thread
        assert not [e for e in logs if e["event"].startswith("cluster_worker_restart")]
        assert ex.describe()["worker_restarts"] == 0
        (tmp_path / "release").write_text("")
        (scored,) = collect(ex, 1, timeout=30)
        assert scored.version_id == 2
        assert scored.result is not None
        assert scored.worker == timed_out.worker  # the same, freed, worker
        assert list(ex.outcomes(0.3)) == []
    finally:
        (tmp_path / "release").write_text("")
        ex.close()


def test_submit_blocks_at_queue_size_until_a_job_finishes(cluster: Any, tmp_path: Path) -> None:
    """Backpressure: with queue_size=1 and a gated job running, the next submit waits."""
    paths = write_tiles(tmp_path, ["gate.tif", "next.tif"])
    jobs = jobs_for(paths)
    ex = DaskExecutor(cluster.scheduler_address, score_fn=gated_score, queue_size=1)
    try:
        ex.submit(jobs[0])
        wait_for(lambda: started_pids(tmp_path), timeout=30, what="the gated tile")
        submitted = threading.Event()

        def second() -> None:
            ex.submit(jobs[1])
            submitted.set()

        t = threading.Thread(target=second)
        t.start()
        assert not submitted.wait(0.5)  # blocked while the first job is unfinished
        (tmp_path / "release").write_text("")
        assert submitted.wait(20)
        t.join(5)
        outcomes = collect(ex, 2, timeout=20)
        assert sorted(o.version_id for o in outcomes) == [1, 2]
    finally:
        ex.close()


@pytest.mark.parametrize(("tiles_per_gpu", "share"), [(2, 0.5), (1, 1.0)])
def test_gpu_jobs_ask_for_a_gpu_resource(
    cluster: Any, tmp_path: Path, tiles_per_gpu: int, share: float
) -> None:
    """backend = "gpu" tasks ask for half a GPU (two tiles share one GPU worker, see
    below), or all of it with ``gpu_overlap = false``: on CPU-only workers they wait."""
    (path,) = write_tiles(tmp_path, ["g.tif"])
    ex = DaskExecutor(
        cluster.scheduler_address, score_fn=gated_score, gpu_tiles_per_worker=tiles_per_gpu
    )
    try:
        with structlog.testing.capture_logs() as logs:
            ex.submit(Job(version_id=7, path=str(path), settings=ScoreSettings(backend="gpu")))
        assert any(e["event"] == "cluster_no_gpu_worker" for e in logs)
        with observer_client(cluster.scheduler_address) as c:
            waiting = wait_for(
                lambda: c.run_on_scheduler(restrictions_of, "focuswatch-score-7-"),
                timeout=10,
                what="the task on the scheduler",
            )
        assert waiting == [({"GPU": share}, "no-worker")]  # no worker offers GPU=1
        assert list(ex.outcomes(0.2)) == []
        assert ex.in_flight() == 1
    finally:
        ex.close()


def test_two_gpu_tiles_run_at_once_on_a_two_thread_gpu_worker(tmp_path: Path) -> None:
    """A worker started with ``--nthreads 2 --resources GPU=1`` takes two GPU tiles at a
    time (one is read and copied while the other is scored): the first tile below only
    finishes if the second starts while it runs."""
    b = tmp_path / "b_MARK.tif"
    b.write_bytes(b"abc")
    a = tmp_path / "a_AFTER.tif"
    a.write_text(str(b))
    gpu = ScoreSettings(backend="gpu")
    with local_cluster(1, threads=2, resources={"GPU": 1}) as c:
        ex = DaskExecutor(c.scheduler_address, score_fn=fake_score)
        try:
            ex.submit(Job(1, str(a), gpu))
            ex.submit(Job(2, str(b), gpu))
            got = {o.version_id: o for o in collect(ex, 2, timeout=40)}
        finally:
            ex.close()
    assert sorted(got) == [1, 2]
    assert (got[1].error, got[2].error) == (None, None)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="gpu_tiles_per_worker must be 1 or 2"):
            DaskExecutor("tcp://127.0.0.1:1", gpu_tiles_per_worker=bad)


def test_gpu_tasks_score_through_the_gpu_lane_by_default() -> None:
    assert default_score_fn(ScoreSettings(backend="gpu")) is score_path_gpu
    assert default_score_fn(SETTINGS) is score_path


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; the no-GPU answer cannot be seen")
def test_a_gpu_task_on_a_worker_without_a_gpu_says_so_once(tmp_path: Path) -> None:
    (path,) = write_tiles(tmp_path, ["g.tif"])
    res = run_task(str(path), name=str(path), settings=ScoreSettings(backend="gpu"))
    assert res.error is not None
    assert res.error.startswith("this worker has no usable GPU: GPU requested but")
    assert res.retryable


# ------------------------------------------------------------ unreachable scheduler


def test_unreachable_scheduler_at_start_falls_back_to_local_scoring(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    paths = write_tiles(tmp_path, ["a.tif", "b.tif"])
    with structlog.testing.capture_logs() as logs:
        ex = DaskExecutor(address, score_fn=gated_score, connect_timeout_s=1)
    try:
        assert [e["address"] for e in logs if e["event"] == "cluster_unreachable_fallback"] == [
            address
        ]
        for job in jobs_for(paths):
            ex.submit(job)
        outcomes = collect(ex, 2, timeout=30)
        assert sorted(o.version_id for o in outcomes) == [1, 2]
        assert all(
            o.result is not None and o.extra["backend"] == "local-fallback" for o in outcomes
        )
        assert ex.describe()["state"] != "connected"
    finally:
        ex.close()


def test_unreachable_scheduler_with_wait_is_a_clear_error() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    cfg = parse(
        {
            "cluster": {
                "scheduler": "dask",
                "address": address,
                "on_unreachable": "wait",
                "connect_timeout_s": 1.0,
            }
        }
    )
    with pytest.raises(BackendError, match=rf"cannot reach the Dask scheduler at {address}"):
        connect(cfg)


def start_scheduler(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
        env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def start_worker(address: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
         "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
        env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


# The workers must import this module (gated_score) and focuswatch as the test does.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def standalone_cluster(
    **executor_kwargs: Any,
) -> Iterator[tuple[DaskExecutor, list[subprocess.Popen[bytes]]]]:
    """A scheduler and a ``--no-nanny`` worker in processes of their own (a test may kill
    either), and an executor connected to them once the worker has joined."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [start_scheduler(port), start_worker(address)]
    ex: DaskExecutor | None = None
    try:
        wait_for(lambda: port_open(port), timeout=30, what="the scheduler to listen")
        ex = DaskExecutor(address, **executor_kwargs)
        wait_for(lambda: ex.describe()["workers"], timeout=30, what="the worker to join")
        yield ex, procs
    finally:
        if ex is not None:
            ex.close()
        stop(procs)


def test_scheduler_lost_mid_run_moves_unfinished_jobs_to_the_fallback(tmp_path: Path) -> None:
    """The scheduler dies while a tile is being scored: after the client gives up
    reconnecting (connect_timeout_s), every unfinished job is scored locally, once."""
    # connect_timeout_s also bounds the client's reconnection attempts after a drop.
    with standalone_cluster(score_fn=gated_score, connect_timeout_s=2) as (ex, procs):
        paths = write_tiles(tmp_path, ["gate.tif", "a.tif", "b.tif"])
        jobs = jobs_for(paths)
        for job in jobs:
            ex.submit(job)
        wait_for(lambda: started_pids(tmp_path), timeout=30, what="the gated tile")
        stop(procs[:1])
        (tmp_path / "release").write_text("")
        outcomes = collect(ex, len(jobs), timeout=40)
        by_id = {o.version_id: o for o in outcomes}
        assert len(outcomes) == len(by_id) == len(jobs)
        assert all(o.result is not None for o in outcomes)
        assert by_id[1].extra["backend"] == "local-fallback"  # gate was unfinished
        assert list(ex.outcomes(0.3)) == []


def test_scheduler_lost_with_wait_holds_jobs_until_it_is_back(tmp_path: Path) -> None:
    """on_unreachable = "wait": unfinished jobs are neither lost nor scored locally; the
    executor logs each failed reconnection and resubmits them when a scheduler returns.
    (The first scheduler has no worker, so the jobs are still queued when it dies.)"""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [start_scheduler(port)]
    ex: DaskExecutor | None = None
    try:
        wait_for(lambda: port_open(port), timeout=30, what="the scheduler to listen")
        ex = DaskExecutor(
            address,
            score_fn=gated_score,
            connect_timeout_s=1,
            on_unreachable="wait",
            reconnect_max_s=0.5,
        )
        jobs = jobs_for(write_tiles(tmp_path, ["a.tif", "b.tif"]))
        for job in jobs:
            ex.submit(job)
        early: list[Outcome] = []
        with structlog.testing.capture_logs() as logs:
            stop(procs)
            procs.clear()

            def retrying() -> bool:
                early.extend(ex.outcomes(0.1))  # outcomes() is where the executor checks health
                return any(e["event"] == "cluster_unreachable" for e in logs)

            wait_for(retrying, timeout=30, what="a logged reconnection attempt")
        assert early == []
        assert ex.in_flight() == len(jobs)
        assert ex.describe()["state"] == "disconnected"
        procs += [start_scheduler(port), start_worker(address)]
        outcomes = collect(ex, len(jobs), timeout=60)
        assert sorted(o.version_id for o in outcomes) == [1, 2]
        assert all(o.result is not None and o.worker.startswith("tcp://") for o in outcomes)
        assert all(o.extra["attempt"] == 2 for o in outcomes)  # resubmitted once, to the cluster
        assert list(ex.outcomes(0.3)) == []
    finally:
        if ex is not None:
            ex.close()
        stop(procs)


def test_a_hung_worker_without_a_nanny_is_a_warning_and_the_service_goes_on(
    tmp_path: Path,
) -> None:
    """A worker started with --no-nanny cannot be restarted: the hung tile is still a
    retryable timeout, the failed restart is one warning that says why and that the
    worker stays busy, nothing raises, and the worker is neither restarted nor removed."""
    cluster = standalone_cluster(score_fn=hang_score, tile_timeout_s=1, connect_timeout_s=5)
    with cluster as (ex, procs):
        try:
            (hang,) = write_tiles(tmp_path, ["hang.tif"])
            with structlog.testing.capture_logs() as logs:
                ex.submit(Job(version_id=1, path=str(hang), settings=SETTINGS))
                (timed_out,) = collect(ex, 1, timeout=30)
                (failed,) = wait_for(
                    lambda: [e for e in logs if e["event"] == "cluster_worker_restart_failed"],
                    timeout=20,
                    what="the failed restart to be logged",
                )
            assert_timed_out(timed_out, "1")
            assert failed["worker"] == timed_out.worker
            assert failed["log_level"] == "warning"
            assert "requires a nanny" in failed["reason"]
            assert "stays busy until its scoring call returns" in failed["detail"]
            desc = ex.describe()
            assert desc["worker_restarts"] == 0
            assert [(w["address"], w["alive"]) for w in desc["workers"]] == [
                (timed_out.worker, True)
            ]
            assert started_pids(tmp_path) == {procs[1].pid}  # hung, not restarted
            assert procs[1].poll() is None
        finally:
            (tmp_path / "release").write_text("")
