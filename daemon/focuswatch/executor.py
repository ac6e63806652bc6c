"""Where scoring runs: the contract between the service and its executors.

The service hands ``Job``s to an ``Executor`` and collects ``Outcome``s. The local
executor (``focuswatch.worker``) runs jobs in worker processes on this machine;
the Dask executor (``focuswatch.cluster``) runs them on a cluster. Jobs are pure
(path or bytes in, result out) and never touch the ledger: the service records
outcomes idempotently, so a job that runs twice still yields one result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from focuswatch.errors import BackendError, TileError
from focuswatch.scoring import ScoreSettings, TileScore

__all__ = ["Executor", "Job", "Outcome", "classify"]


def classify(exc: BaseException) -> tuple[str, bool]:
    """``(reason, retryable)`` for an exception raised while scoring one tile.

    The one rule every executor uses (local worker processes and Dask tasks alike):

    * ``TileError``: the tile's fault; its reason, not retryable;
    * ``BackendError``: this worker's fault (no usable GPU); retryable, as another
      worker (or a later attempt) may have one;
    * ``ValueError``: the pure core rejected the image (e.g. its shape); not retryable;
    * ``MemoryError``: said plainly; not retryable (the tile is too big for the budget);
    * anything else: the exception's type name and message; not retryable (a bug in
      scoring fails the same way every time).
    """
    if isinstance(exc, TileError):
        return exc.reason, False
    if isinstance(exc, BackendError):
        return str(exc), True
    if isinstance(exc, ValueError):
        return f"cannot score: {exc}", False
    if isinstance(exc, MemoryError):
        return "out of memory while scoring", False
    return f"{type(exc).__name__}: {exc}", False


@dataclass(frozen=True)
class Job:
    version_id: int
    path: str
    settings: ScoreSettings


@dataclass(frozen=True)
class Outcome:
    """The result of one job: a score, or an error with a reason for the operator."""

    version_id: int
    result: TileScore | None
    error: str | None = None
    # The job could not finish for reasons outside the tile (worker died, timed out);
    # the service retries these up to scoring.max_attempts.
    retryable: bool = False
    worker: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    def submit(self, job: Job) -> None:
        """Queue a job; may block when the executor's queue is full (backpressure)."""

    def outcomes(self, timeout: float) -> Iterator[Outcome]:
        """Yield outcomes that finish within ``timeout`` seconds (possibly none)."""

    def in_flight(self) -> int:
        """Jobs submitted whose outcome has not been yielded yet."""

    def describe(self) -> dict[str, Any]:
        """Backend name, workers and recent throughput, for ``focuswatch status``."""

    def close(self) -> None:
        """Stop workers; outcomes of jobs still running are lost (they are retried)."""
