"""The task a Dask worker runs for one tile: small, pure and picklable.

``run_task`` gets a path (or the tile's bytes) and ``ScoreSettings`` and returns a
``TaskResult``; it never touches the ledger, so running it twice is harmless (the
daemon keeps one result per tile version). It reports its start on the Dask event
topic ``STARTED_TOPIC``, which is how the daemon times a tile from its start, not
from its submission. This module is what workers import: it stays light (no
executor, no client-side state).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath

import structlog

from focuswatch import gpu, scoring
from focuswatch.errors import BackendError, TileError
from focuswatch.executor import classify
from focuswatch.scoring import ScoreFn, ScoreSettings, TileScore

__all__ = [
    "NO_GPU",
    "STARTED_TOPIC",
    "TaskResult",
    "default_score_fn",
    "run_reporting_start",
    "run_task",
    "score_bytes",
]

_log = structlog.get_logger("focuswatch.cluster")

# The Dask event topic on which each task reports its start (for tile_timeout_s).
STARTED_TOPIC = "focuswatch-task-started"
# How ``gpu.require_gpu`` starts its error; ``run_task`` says it once, naming the worker.
NO_GPU = "this worker has no usable GPU: "


@dataclass(frozen=True)
class TaskResult:
    """What one scoring task returns: small and picklable (exceptions are flattened).

    Tile problems come back as values rather than raised, because ``TileError``'s
    two-argument constructor does not survive pickling and Dask must not count a bad
    tile as a failed task.
    """

    score: TileScore | None
    error: str | None = None
    retryable: bool = False
    worker: str = ""


def _worker_address() -> str:
    """The Dask worker running this task, or "" outside Dask (local fallback)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


def score_bytes(
    data: bytes, *, name: str, settings: ScoreSettings, score_fn: ScoreFn | None = None
) -> TileScore:
    """Score a tile from its file's bytes (``cluster.send_bytes``), on this worker.

    Used when the tile's path does not resolve on the worker: the daemon reads the file
    and ships its bytes. They are written to a private temporary file with the tile's
    own name and scored by ``score_fn`` (``scoring.score_path``), so that decoding,
    metadata (FibicsXML, CZ_SEM, ATLAS names) and error reasons are exactly those of
    the path route; the result names the original path.
    """
    # The daemon read the bytes inside its watch folder; this private copy is not there.
    settings = dataclasses.replace(settings, within=None)
    fn = score_fn or default_score_fn(settings)
    with tempfile.TemporaryDirectory(prefix="focuswatch-") as tmp:
        local = Path(tmp) / (PurePath(name).name or "tile.tif")
        local.write_bytes(data)
        try:
            result = fn(str(local), settings)
        except TileError as exc:
            raise TileError(name, exc.reason) from None
    return dataclasses.replace(result, path=name)


def default_score_fn(settings: ScoreSettings) -> ScoreFn:
    """What a task runs unless told otherwise: the GPU lane for ``backend = "gpu"``."""
    return gpu.score_path_gpu if settings.backend == "gpu" else scoring.score_path


def run_task(
    source: str | bytes,
    *,
    name: str,
    settings: ScoreSettings,
    score_fn: ScoreFn | None = None,
) -> TaskResult:
    """Score one tile (a path, or its TIFF bytes) and say how it went; the Dask task body.

    Pure apart from reading the tile: no ledger, no alerts. A failure is classified by
    ``executor.classify``, as in local worker processes: ``TileError`` and ``ValueError``
    are the tile's fault (not retryable); ``BackendError`` is this worker's fault
    (retryable: another worker may have the GPU). A task whose worker dies still
    becomes a retryable outcome in the executor.
    """
    worker = _worker_address()
    try:
        if isinstance(source, bytes):
            result = score_bytes(source, name=name, settings=settings, score_fn=score_fn)
        else:
            result = (score_fn or default_score_fn(settings))(source, settings)
    except Exception as exc:
        reason, retryable = classify(exc)
        if isinstance(exc, BackendError):  # say which worker lacks it
            where = f"this worker ({worker})" if worker else "this worker"
            reason = (
                f"{where} has no usable GPU: {reason.removeprefix(NO_GPU)}"
                if settings.backend == "gpu"
                else f"{where}: {reason}"
            )
        return TaskResult(None, reason, retryable=retryable, worker=worker)
    return TaskResult(result, worker=worker)


def run_reporting_start(
    source: str | bytes,
    *,
    report_as: str,
    name: str,
    settings: ScoreSettings,
    score_fn: ScoreFn | None = None,
) -> TaskResult:
    """``run_task``, after telling the daemon that this task (key ``report_as``) started.

    The start report is what ``tile_timeout_s`` is measured from: time spent queued
    behind other tiles must not count. Best effort: a lost report only means the
    task is not timed.
    """
    try:
        from distributed import get_worker

        w = get_worker()
        w.log_event(STARTED_TOPIC, {"key": report_as, "worker": str(w.address)})
    except (ImportError, ValueError):
        pass  # not on a Dask worker (called directly)
    except Exception as exc:  # a closing worker; scoring goes on untimed
        _log.debug("cluster_start_report_failed", key=report_as, error=repr(exc))
    return run_task(source, name=name, settings=settings, score_fn=score_fn)
