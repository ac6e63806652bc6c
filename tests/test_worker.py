"""The local executor: real worker processes; crashes and hangs are pinned on their tile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from focuswatch.errors import BackendError, TileError
from focuswatch.executor import Job, Outcome, classify
from focuswatch.scoring import ScoreSettings
from focuswatch.worker import LocalExecutor, describe_exit
from pipeline_jobs import fake_score

SETTINGS = ScoreSettings()


def collect(ex: LocalExecutor, n: int, *, deadline_turns: int = 400) -> dict[int, Outcome]:
    got: dict[int, Outcome] = {}
    for _ in range(deadline_turns):
        for o in ex.outcomes(0.1):
            assert o.version_id not in got, "one outcome per job"
            got[o.version_id] = o
        if len(got) >= n:
            return got
    raise AssertionError(f"only {len(got)} of {n} outcomes arrived")


@pytest.fixture(scope="module")
def ex() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2, tile_timeout_s=2.0, queue_size=4, score_fn=fake_score) as e:
        yield e


def tile(tmp_path: Path, name: str) -> str:
    p = tmp_path / name
    p.write_bytes(b"abc")
    return str(p)


def test_jobs_run_and_each_yields_one_outcome(ex: LocalExecutor, tmp_path: Path) -> None:
    for i in range(10):  # more than queue_size: submit blocks and keeps collecting
        ex.submit(Job(i, tile(tmp_path, f"t{i}.tif"), SETTINGS))
    got = collect(ex, 10)
    assert all(o.result is not None and o.error is None for o in got.values())
    assert {o.worker for o in got.values()} <= {"local-0", "local-1"}
    assert ex.in_flight() == 0


def test_crashing_tile_is_retryable_and_service_keeps_going(
    ex: LocalExecutor, tmp_path: Path
) -> None:
    restarts = ex.restarts
    ex.submit(Job(100, tile(tmp_path, "a_CRASH.tif"), SETTINGS))
    ex.submit(Job(101, tile(tmp_path, "b_SEGV.tif"), SETTINGS))
    ex.submit(Job(102, tile(tmp_path, "c_EXIT.tif"), SETTINGS))
    ex.submit(Job(103, tile(tmp_path, "fine.tif"), SETTINGS))
    got = collect(ex, 4)
    assert got[100].retryable
    assert "SIGKILL" in (got[100].error or "")
    assert got[101].retryable
    assert "SIGSEGV" in (got[101].error or "")
    assert got[102].retryable
    assert "exit code 3" in (got[102].error or "")
    assert got[103].result is not None
    assert ex.restarts == restarts + 3


def test_hanging_tile_is_killed_after_the_time_limit(ex: LocalExecutor, tmp_path: Path) -> None:
    ex.submit(Job(200, tile(tmp_path, "HANG.tif"), SETTINGS))
    ex.submit(Job(201, tile(tmp_path, "ok.tif"), SETTINGS))
    got = collect(ex, 2)
    assert got[200].retryable
    assert "longer than 2 s" in (got[200].error or "")
    assert got[201].result is not None


def test_bad_tile_is_a_final_error_not_a_retry(ex: LocalExecutor, tmp_path: Path) -> None:
    ex.submit(Job(300, tile(tmp_path, "BAD.tif"), SETTINGS))
    ex.submit(Job(301, str(tmp_path / "missing.tif"), SETTINGS))
    got = collect(ex, 2)
    assert (got[300].error, got[300].retryable) == ("not a TIFF file", False)
    assert got[301].error
    assert not got[301].retryable
    d = ex.describe()
    assert d["backend"] == "local"
    assert d["workers"] == 2


def test_a_tile_that_raises_systemexit_kills_its_worker_rather_than_vanishing(
    ex: LocalExecutor, tmp_path: Path
) -> None:
    """Worker threads must not swallow SystemExit: the tile's worker dies at once and
    the tile is told so, as a single-threaded worker did (not a timeout later)."""
    ex.submit(Job(450, tile(tmp_path, "QUIT.tif"), SETTINGS))
    got = collect(ex, 1)
    assert got[450].retryable
    assert got[450].error == "worker process died while scoring (exit code 70)"


def test_failures_are_classified_by_the_shared_rule(ex: LocalExecutor, tmp_path: Path) -> None:
    """No GPU is the worker's fault (retry elsewhere); a scoring bug is named, not retried."""
    ex.submit(Job(400, tile(tmp_path, "NOGPU.tif"), SETTINGS))
    ex.submit(Job(401, tile(tmp_path, "BUG.tif"), SETTINGS))
    got = collect(ex, 2)
    assert got[400].retryable
    assert "no device" in (got[400].error or "")
    assert (got[401].error, got[401].retryable) == ("RuntimeError: scoring bug", False)


def test_classify_tile_backend_value_and_other_errors() -> None:
    assert classify(TileError("x.tif", "not a TIFF file")) == ("not a TIFF file", False)
    assert classify(BackendError("no GPU")) == ("no GPU", True)
    assert classify(ValueError("image must be 2-D")) == ("cannot score: image must be 2-D", False)
    assert classify(MemoryError()) == ("out of memory while scoring", False)
    assert classify(KeyError("k")) == ("KeyError: 'k'", False)


@pytest.mark.parametrize("name", ["BAD.tif", "NOGPU.tif", "BUG.tif"])
def test_dask_task_classifies_a_failure_like_a_local_worker(
    ex: LocalExecutor, tmp_path: Path, name: str
) -> None:
    from focuswatch.cluster import run_task

    path = tile(tmp_path, name)
    ex.submit(Job(500, path, SETTINGS))
    local = collect(ex, 1)[500]
    task = run_task(path, name=path, settings=SETTINGS, score_fn=fake_score)
    assert task.retryable == local.retryable
    assert task.error is not None
    assert local.error is not None
    assert task.error.endswith(local.error)  # the task adds which worker it ran on


def test_service_and_dask_fallback_build_the_same_local_executor(tmp_path: Path) -> None:
    """Both pin worker i to GPU i and make workers log like the service."""
    from focuswatch import app, cluster
    from focuswatch.config import Config, LoggingConfig, ScoringConfig

    cfg = Config(
        state_dir=tmp_path,
        scoring=ScoringConfig(backend="gpu", workers=2),
        logging=LoggingConfig(level="debug", format="json"),
    )
    built = [app.build_executor(cfg), cluster.executor._local_fallback(cfg, None)()]
    try:
        for ex in built:
            assert isinstance(ex, LocalExecutor)
            assert [s.env for s in ex._slots] == [
                {"CUDA_VISIBLE_DEVICES": "0"},
                {"CUDA_VISIBLE_DEVICES": "1"},
            ]
            assert ex._log_setup == ("debug", "json")
    finally:
        for ex in built:
            ex.close()


@pytest.fixture(scope="module")
def pair_ex() -> Iterator[LocalExecutor]:
    """One worker that holds two tiles at once (a GPU worker with ``gpu_overlap``)."""
    with LocalExecutor(
        workers=1, tiles_per_worker=2, tile_timeout_s=2.0, queue_size=4, score_fn=fake_score
    ) as e:
        yield e


def pair(tmp_path: Path, first: str, second: str) -> tuple[str, str]:
    """Two tiles; the first one's content names the second (for ``AFTER``)."""
    b = tile(tmp_path, second)
    a = tmp_path / first
    a.write_text(b)
    return str(a), b


def test_a_worker_with_two_tiles_scores_them_at_the_same_time(
    pair_ex: LocalExecutor, tmp_path: Path
) -> None:
    """The first tile can only finish if the second one starts while it runs."""
    a, b = pair(tmp_path, "a_AFTER.tif", "b_MARK.tif")
    pair_ex.submit(Job(1, a, SETTINGS))
    pair_ex.submit(Job(2, b, SETTINGS))
    got = collect(pair_ex, 2)
    assert (got[1].error, got[2].error) == (None, None)
    assert pair_ex.describe()["tiles_per_worker"] == 2


def test_a_worker_that_dies_holding_two_tiles_has_each_retried_alone(
    pair_ex: LocalExecutor, tmp_path: Path
) -> None:
    """Which tile killed it? Neither is charged; each runs alone next, and the one that
    kills its worker then is blamed: the innocent tile (the older one) scores fine."""
    restarts = pair_ex.restarts
    crasher, innocent = pair(tmp_path, "a_AFTER_CRASH_TRACE.tif", "b_STALLFIRST_TRACE.tif")
    pair_ex.submit(Job(10, innocent, SETTINGS))  # the oldest: a naive rule would blame it
    pair_ex.submit(Job(11, crasher, SETTINGS))
    got = collect(pair_ex, 2)
    assert got[10].result is not None
    assert got[10].error is None
    assert got[11].retryable
    assert "killed by SIGKILL" in (got[11].error or "")
    assert pair_ex.restarts == restarts + 2  # both together, then the crasher alone
    a, b = "a_AFTER_CRASH_TRACE.tif", "b_STALLFIRST_TRACE.tif"
    runs = [p.read_text().splitlines() for p in tmp_path.glob("ran-in-*")]
    assert sorted(line for run in runs for line in run) == sorted(
        [f"start {a}", f"start {b}", f"start {a}", f"start {b}", f"end {b}"]
    )
    (finished,) = [run for run in runs if f"end {b}" in run]
    end = finished.index(f"end {b}")
    assert finished[end - 1] == f"start {b}"  # nothing else started while it ran


def test_the_oldest_tile_times_out_even_while_its_neighbour_keeps_finishing_tiles(
    pair_ex: LocalExecutor, tmp_path: Path
) -> None:
    """A tile's time limit restarts only when it becomes the oldest, not whenever the
    other thread finishes something: a hung tile is caught under a steady stream."""
    pair_ex.submit(Job(30, tile(tmp_path, "HANG.tif"), SETTINGS))
    quick, hung = 0, None
    deadline = time.monotonic() + 20.0
    while hung is None and time.monotonic() < deadline:
        if pair_ex.in_flight() < 2:
            quick += 1
            pair_ex.submit(Job(1000 + quick, tile(tmp_path, f"q{quick}.tif"), SETTINGS))
        for o in pair_ex.outcomes(0.05):
            if o.version_id == 30:
                hung = o
    assert hung is not None, f"the hung tile was never timed out ({quick} quick tiles ran)"
    assert "longer than 2 s" in (hung.error or "")
    collect(pair_ex, pair_ex.in_flight())  # leave the worker idle for the next test


def test_a_timeout_blames_the_oldest_tile_and_requeues_the_other_uncharged(
    pair_ex: LocalExecutor, tmp_path: Path
) -> None:
    pair_ex.submit(Job(20, tile(tmp_path, "HANG.tif"), SETTINGS))
    pair_ex.submit(Job(21, tile(tmp_path, "x_STALLFIRST.tif"), SETTINGS))
    got = collect(pair_ex, 2)
    assert got[20].retryable
    assert "longer than 2 s" in (got[20].error or "")
    assert got[21].result is not None  # ran again after the kill, and finished
    assert got[21].error is None


def test_gpu_workers_score_through_the_gpu_lane_two_tiles_at_a_time(tmp_path: Path) -> None:
    from focuswatch import gpu
    from focuswatch.config import Config, ScoringConfig
    from focuswatch.worker import local_executor

    for overlap, tiles in ((True, 2), (False, 1)):
        cfg = Config(state_dir=tmp_path, scoring=ScoringConfig(backend="gpu", gpu_overlap=overlap))
        with local_executor(cfg) as ex:
            assert ex._score_fn is gpu.score_path_gpu
            assert ex.describe()["tiles_per_worker"] == tiles
    with local_executor(Config(state_dir=tmp_path)) as ex:  # CPU: one tile per process
        assert ex.describe()["tiles_per_worker"] == 1


def test_describe_exit_names_signals() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exit code 2"
    assert describe_exit(None) == "still running"


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(workers=0)
    with pytest.raises(ValueError, match="fork is unsafe"):
        LocalExecutor(start_method="fork")
    with pytest.raises(ValueError, match="tiles_per_worker"):
        LocalExecutor(tiles_per_worker=0)


def test_spawn_start_method_also_works(tmp_path: Path) -> None:
    with LocalExecutor(workers=1, start_method="spawn", score_fn=fake_score) as ex:
        ex.submit(Job(1, tile(tmp_path, "a.tif"), SETTINGS))
        got = collect(ex, 1)
    assert got[1].result is not None
    assert ex.describe()["start_method"] == "spawn"
