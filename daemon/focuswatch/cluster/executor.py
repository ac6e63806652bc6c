"""``DaskExecutor``: the daemon's side of scoring on a Dask cluster (see the package doc).

It submits one ``task.run_task`` per job, follows the futures, times each tile from
its start report, restarts workers a tile hangs on, ships bytes for ``send_bytes``,
falls back to local scoring when the scheduler is lost, and yields one ``Outcome``
per job.
"""

from __future__ import annotations

import enum
import itertools
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from focuswatch import gpu, scoring
from focuswatch.cluster.task import (
    STARTED_TOPIC,
    TaskResult,
    run_reporting_start,
)
from focuswatch.config import Config
from focuswatch.errors import BackendError
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.scoring import ScoreFn
from focuswatch.tiles import os_reason, outside
from focuswatch.worker import LocalExecutor, local_executor

__all__ = ["Connection", "DaskExecutor", "connect"]

_log = structlog.get_logger("focuswatch.cluster")

# How often waits wake up to check the cluster's health and the fallback's outcomes.
_POLL_S = 0.05
# Internal resubmissions of one job after its future was cancelled while the client
# stayed connected (rare: someone else cancelled it); past this, a retryable outcome.
_MAX_RESUBMITS = 3
# Threads that read and scatter tiles (send_bytes), cancel timed-out tasks and restart
# the workers they hang on.
_IO_THREADS = 2
# Bound on one worker restart: the nanny gives the worker 4 s to close, kills it, then
# the fresh process must start (importing numpy, scipy, ...) and join the scheduler.
_RESTART_TIMEOUT_S = 60.0
# Workers whose last restart request is remembered (oldest forgotten first).
_RESTARTS_KEPT = 256


def _outcome(job: Job, res: TaskResult, extra: dict[str, Any]) -> Outcome:
    return Outcome(
        version_id=job.version_id,
        result=res.score,
        error=res.error,
        retryable=res.retryable,
        worker=res.worker,
        extra=extra,
    )


def _failed(job: Job, exc: BaseException, worker: str, extra: dict[str, Any]) -> Outcome:
    """An outcome for a task that raised: killed workers, lost pools, unexpected bugs."""
    return Outcome(
        version_id=job.version_id,
        result=None,
        error=f"{type(exc).__name__}: {exc}",
        retryable=True,  # none of these say anything about the tile itself
        worker=worker,
        extra=extra,
    )


# --------------------------------------------------------------------- throughput


class _Throughput:
    """Tiles finished per worker: a total and a rate over a sliding window."""

    def __init__(self, *, window_s: float = 300.0, clock: Callable[[], float]) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self._window_s = window_s
        self._clock = clock
        self._start = clock()
        self._recent: dict[str, deque[float]] = {}
        self._totals: dict[str, int] = {}

    def record(self, worker: str) -> None:
        now = self._clock()
        self._totals[worker] = self._totals.get(worker, 0) + 1
        self._recent.setdefault(worker, deque()).append(now)
        self._prune(worker, now)

    def _prune(self, worker: str, now: float) -> None:
        times = self._recent.get(worker)
        while times and times[0] < now - self._window_s:
            times.popleft()

    def workers(self) -> list[str]:
        return sorted(self._totals)

    def tiles(self, worker: str) -> int:
        return self._totals.get(worker, 0)

    def per_min(self, worker: str) -> float:
        """Tiles per minute over the last window (or since start, if that is shorter)."""
        now = self._clock()
        self._prune(worker, now)
        span = max(min(self._window_s, now - self._start), 1.0)
        return len(self._recent.get(worker, ())) * 60.0 / span


class _Restarts:
    """When each worker was last asked to restart, so that one hang means one restart.

    A tile that timed out on a worker restarted (or being restarted) since the tile
    started needs no restart of its own: that restart ends it too. Comparing with the
    tile's start, not the address alone, keeps a worker whose restarted process gets
    the same address (a fixed ``--worker-port``) restartable for a later hang.
    """

    def __init__(self, *, keep: int = _RESTARTS_KEPT) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._keep = keep
        self._asked: dict[str, float] = {}  # insertion order: oldest request first

    def claim(self, worker: str, *, started_at: float, now: float) -> bool:
        """Whether to restart ``worker`` for a tile started at ``started_at``; if so,
        remember the request (made at ``now``)."""
        last = self._asked.get(worker)
        if last is not None and last >= started_at:
            return False
        self._asked.pop(worker, None)
        self._asked[worker] = now
        while len(self._asked) > self._keep:
            del self._asked[next(iter(self._asked))]
        return True


# ----------------------------------------------------------------------- executor


class _Where(enum.Enum):
    """Where a submitted job is."""

    NEW = "new"
    READING = "reading"  # its bytes being read for the cluster (send_bytes)
    DASK = "dask"
    FALLBACK = "fallback"  # scored locally while the scheduler is away
    ORPHAN = "orphan"  # waiting to be (re)placed


class Connection(enum.StrEnum):
    """The executor's link to the scheduler, as ``describe()["state"]`` reports it."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


@dataclass
class _Entry:
    """One submitted job until its outcome is produced; ``key`` is the current attempt."""

    job: Job
    key: str = ""
    where: _Where = _Where.NEW
    attempt: int = 0
    resubmits: int = 0
    future: Any = None
    data: Any = None  # the scattered bytes, with send_bytes
    extra: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None  # when the current key's task reported its start
    started_on: str = ""  # the worker it reported from


class DaskExecutor:
    """Runs scoring jobs on a Dask cluster; see the module docstring for the guarantees.

    ``fallback`` makes the local executor used while the scheduler is unreachable and
    ``on_unreachable = "fallback"`` (default: ``worker.LocalExecutor`` with
    ``fallback_workers`` processes calling ``score_fn``). ``score_fn`` replaces
    ``scoring.score_path`` in the tasks (a picklable top-level function; tests inject
    a slow one). Reconnection attempts back off from 1 s to ``reconnect_max_s``.
    A task running longer than ``tile_timeout_s`` is given up (retryable outcome) and,
    with ``restart_hung_workers``, the worker it hangs on is restarted through its
    nanny (see the module docstring). ``gpu_tiles_per_worker`` GPU tiles share one
    worker's GPU at a time (each asks for that fraction of its ``GPU`` resource).
    """

    def __init__(
        self,
        address: str,
        *,
        on_unreachable: str = "fallback",
        connect_timeout_s: float = 10.0,
        queue_size: int = 64,
        send_bytes: bool = False,
        score_fn: ScoreFn | None = None,
        fallback: Callable[[], Executor] | None = None,
        fallback_workers: int = 1,
        reconnect_max_s: float = 60.0,
        tile_timeout_s: float = 300.0,
        restart_hung_workers: bool = True,
        gpu_tiles_per_worker: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not address:
            raise ValueError("address must be a scheduler address such as 'tcp://host:8786'")
        if on_unreachable not in ("fallback", "wait"):
            raise ValueError(f"on_unreachable must be 'fallback' or 'wait', got {on_unreachable!r}")
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if reconnect_max_s <= 0:
            raise ValueError(f"reconnect_max_s must be > 0, got {reconnect_max_s}")
        if tile_timeout_s <= 0:
            raise ValueError(f"tile_timeout_s must be > 0, got {tile_timeout_s}")
        if gpu_tiles_per_worker not in (1, 2):  # halves add up exactly; thirds may not
            raise ValueError(f"gpu_tiles_per_worker must be 1 or 2, got {gpu_tiles_per_worker}")
        self._gpu_share = 1.0 / gpu_tiles_per_worker
        self._timeout = tile_timeout_s
        self._restart_hung = restart_hung_workers
        self._restarts = _Restarts()
        self._worker_restarts = 0  # successful ones
        self._clock = clock
        # Start reports arrive on Dask's event loop, which must never wait for our lock
        # (the main thread may hold it while calling the client): a lock-free queue.
        self._started: queue.SimpleQueue[tuple[str, str, float]] = queue.SimpleQueue()
        self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="focuswatch-dask-io")
        self.address = address
        self._on_unreachable = on_unreachable
        self._connect_timeout_s = connect_timeout_s
        self._queue_size = queue_size
        self._send_bytes = send_bytes
        self._reconnect_max_s = reconnect_max_s
        self._score_fn = score_fn
        self._make_fallback: Callable[[], Executor] = fallback or (
            lambda: LocalExecutor(
                workers=fallback_workers,
                queue_size=queue_size,
                score_fn=score_fn or scoring.score_path,
            )
        )
        self._fallback: Executor | None = None
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry] = {}
        self._done: deque[Outcome] = deque()
        self._seq = itertools.count(1)
        self._session = uuid.uuid4().hex[:8]
        self._throughput = _Throughput(clock=clock)
        self._closed = False
        self._stop = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._warned_no_gpu = False
        self._client: Any = None
        self._state = Connection.DISCONNECTED
        try:
            self._client = self._new_client()
            self._state = Connection.CONNECTED
            _log.info("cluster_connected", address=address)
        except Exception as exc:  # OSError / TimeoutError from distributed's connect
            if on_unreachable == "wait":
                raise BackendError(
                    f"cannot reach the Dask scheduler at {address} within "
                    f"{connect_timeout_s:g} s ({type(exc).__name__}: {exc}); start it with "
                    "`dask scheduler` there, or fix cluster.address "
                    "(cluster.on_unreachable = 'wait' makes this fatal at start)"
                ) from None
            _log.warning(
                "cluster_unreachable_fallback",
                address=address,
                error=f"{type(exc).__name__}: {exc}",
                detail="scoring locally meanwhile; retrying the scheduler in the background",
            )
            self._start_reconnector()

    # -- connection ------------------------------------------------------------

    def _new_client(self) -> Any:
        import distributed

        client_cls: Any = distributed.Client
        # ``timeout`` bounds the first connection and the client's own reconnection
        # attempts after the scheduler drops (after which it closes itself).
        client = client_cls(self.address, timeout=self._connect_timeout_s, set_as_default=False)
        client.subscribe_topic(STARTED_TOPIC, self._on_task_started)
        return client

    def _on_task_started(self, event: tuple[float, dict[str, Any]]) -> None:
        """Runs on the client's event loop: note the start, never take the lock."""
        _, msg = event
        self._started.put((str(msg.get("key", "")), str(msg.get("worker", "")), self._clock()))

    def _start_reconnector(self) -> None:
        if self._reconnector is not None and self._reconnector.is_alive():
            return
        self._reconnector = threading.Thread(
            target=self._reconnect_loop, name="focuswatch-dask-reconnect", daemon=True
        )
        self._reconnector.start()

    def _reconnect_loop(self) -> None:
        backoff = min(1.0, self._connect_timeout_s, self._reconnect_max_s)
        while not self._stop.is_set():
            try:
                client = self._new_client()
            except Exception as exc:
                _log.warning(
                    "cluster_unreachable",
                    address=self.address,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=backoff,
                    on_unreachable=self._on_unreachable,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._reconnect_max_s)
                continue
            with self._cond:
                if self._closed:
                    break
                self._client = client
                self._state = Connection.CONNECTED
                _log.info("cluster_reconnected", address=self.address)
                self._check_health_locked()
                self._cond.notify_all()
                return
        else:
            return
        client.close()  # closed while connecting

    def _check_health_locked(self) -> None:
        """Notice a lost scheduler, time out hung tasks, place orphaned jobs (lock held)."""
        self._enforce_timeout_locked()
        client = self._client
        if client is not None:
            status = client.status
            if status == "running":
                if self._state is not Connection.CONNECTED:
                    _log.info("cluster_reconnected", address=self.address)
                self._state = Connection.CONNECTED
            elif status in ("connecting", "newly-created"):
                # The client is retrying by itself, for at most connect_timeout_s.
                if self._state is Connection.CONNECTED:
                    _log.warning("cluster_connection_lost", address=self.address)
                self._state = Connection.RECONNECTING
            else:
                _log.error(
                    "cluster_scheduler_gone",
                    address=self.address,
                    unfinished=len(self._entries),
                    action="scoring locally"
                    if self._on_unreachable == "fallback"
                    else "waiting for the scheduler",
                )
                self._client = None
                self._state = Connection.DISCONNECTED
                self._start_reconnector()
        orphans = [e for e in self._entries.values() if e.where is _Where.ORPHAN]
        if not orphans:
            return
        if self._state is Connection.CONNECTED:
            for e in orphans:
                self._place_locked(e)
        elif self._state is Connection.DISCONNECTED and self._on_unreachable == "fallback":
            _log.warning("cluster_jobs_to_fallback", jobs=len(orphans), address=self.address)
            for e in orphans:
                self._place_locked(e)

    def _enforce_timeout_locked(self) -> None:
        """Give up on tasks running longer than ``tile_timeout_s`` (from their start report)."""
        starts: dict[str, tuple[str, float]] = {}
        while True:
            try:
                key, worker, at = self._started.get_nowait()
            except queue.Empty:
                break
            starts[key] = (worker, at)  # a re-run (same key, after a worker died) wins
        now = self._clock()
        for entry in list(self._entries.values()):
            if entry.key in starts:
                entry.started_on, entry.started_at = starts[entry.key]
            if entry.where is not _Where.DASK or entry.started_at is None:
                continue
            if now - entry.started_at < self._timeout:
                continue
            fut, started_at, worker = entry.future, entry.started_at, entry.started_on
            _log.warning(
                "cluster_tile_timeout",
                tile=entry.job.path,
                key=entry.key,
                worker=entry.started_on,
                timeout_s=self._timeout,
            )
            self._finish_locked(
                entry,
                Outcome(
                    version_id=entry.job.version_id,
                    result=None,
                    error=f"timed out after {self._timeout:g} s (scoring.tile_timeout_s) "
                    f"on Dask worker {entry.started_on or '?'}; task cancelled",
                    retryable=True,
                    worker=entry.started_on,
                    extra=dict(entry.extra),
                ),
            )
            if fut is None or self._closed:
                continue
            # Cancelling and restarting are round trips to the scheduler: not under the
            # lock. The done callback then finds no entry, as would a late result.
            client = self._client
            if (
                self._restart_hung
                and worker
                and client is not None
                and self._restarts.claim(worker, started_at=started_at, now=now)
            ):
                self._io.submit(
                    self._restart_hung_worker, fut, entry.key, worker, entry.job.path, client
                )
            else:
                self._io.submit(_cancel_quietly, fut)

    def _restart_hung_worker(self, fut: Any, key: str, worker: str, tile: str, client: Any) -> None:
        """Cancel a timed-out task, then restart the worker it hangs on (an I/O thread).

        Never raises: a restart that cannot be done is logged and the service goes on.
        """
        _cancel_quietly(fut)
        del fut
        # The cancel travels on the client's batched stream, the restart on another
        # connection: wait (bounded) until the scheduler has dropped the task from the
        # worker. Restarted first, the scheduler would re-run the hung task on the
        # fresh worker, where nothing times it any more.
        # Past the deadline, restart anyway: a worker that hangs is the worse outcome.
        deadline = time.monotonic() + self._connect_timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                # All workers: asking for one that has left raises on the scheduler.
                running = client.sync(
                    client.scheduler.processing, callback_timeout=self._connect_timeout_s
                )
            except Exception:  # no scheduler: the restart below says so
                break
            if worker not in running:  # it died or left meanwhile: nothing hangs there
                _log.info("cluster_worker_restart_skipped", worker=worker, reason="gone")
                return
            if key not in running[worker]:
                break
            self._stop.wait(_POLL_S)
        if self._stop.is_set():
            return  # closed meanwhile
        t0 = time.monotonic()
        try:
            answer = client.restart_workers(
                [worker], timeout=_RESTART_TIMEOUT_S, raise_for_error=False
            )
            status = str(answer.get(worker, "unknown"))
        except Exception as exc:  # no nanny, worker gone, scheduler unreachable
            status = f"{type(exc).__name__}: {exc}"
        if status == "OK":
            with self._cond:
                self._worker_restarts += 1
            _log.info(
                "cluster_worker_restarted",
                worker=worker,
                tile=tile,
                took_s=round(time.monotonic() - t0, 2),
            )
            return
        if self._stop.is_set():
            return  # the client was closed under the restart: not the worker's fault
        if status == "timed out":
            reason = (
                f"the worker did not shut down or come back within {_RESTART_TIMEOUT_S:g} s; "
                "the scheduler removed it"
            )
            detail = "if its process still runs, it stays busy until its scoring call returns"
        else:
            reason = status
            detail = (
                "the worker stays busy until its scoring call returns; hung workers can "
                "only be restarted through a nanny (the default of `dask worker`, not "
                "with --no-nanny)"
            )
        _log.warning(
            "cluster_worker_restart_failed", worker=worker, tile=tile, reason=reason, detail=detail
        )

    # -- placing jobs ----------------------------------------------------------

    def _place_locked(self, entry: _Entry) -> None:
        """Send a job to the cluster, or the fallback, or leave it orphaned (waiting)."""
        entry.attempt += 1
        entry.key = f"focuswatch-score-{entry.job.version_id}-{self._session}-{next(self._seq)}"
        entry.extra = {"attempt": entry.attempt, "key": entry.key}
        if self._state is Connection.CONNECTED:
            if self._send_bytes:
                # Read and scatter in the background; it submits when the bytes are there.
                entry.where = _Where.READING
                entry.future = entry.data = None
                self._io.submit(self._ship_bytes, entry, entry.key, self._client)
                return
            try:
                self._submit_dask_locked(entry)
                return
            except Exception as exc:  # the client broke between the check and the submit
                _log.warning("cluster_submit_failed", error=f"{type(exc).__name__}: {exc}")
                entry.where = _Where.ORPHAN
                return
        if self._state is Connection.DISCONNECTED and self._on_unreachable == "fallback":
            if self._fallback is None:
                self._fallback = self._make_fallback()
            entry.where = _Where.FALLBACK
            entry.future = None
            self._fallback.submit(entry.job)
            return
        entry.where = _Where.ORPHAN

    def _ship_bytes(self, entry: _Entry, key: str, client: Any) -> None:
        """Read a tile and scatter its bytes, outside the lock, then submit it (send_bytes)."""

        def current() -> bool:
            return (
                not self._closed
                and self._entries.get(entry.job.version_id) is entry
                and entry.key == key
                and entry.where is _Where.READING
            )

        reason: str | None = None
        try:
            with open(entry.job.path, "rb") as f:
                reason = outside(f.fileno(), entry.job.settings.within, entry.job.path)
                data = b"" if reason else f.read()
        except OSError as exc:  # the tile's problem, as the path route would say
            reason = os_reason(exc)
        if reason is not None:
            _log.warning("cluster_tile_unreadable", tile=entry.job.path, reason=reason)
            with self._cond:
                if current():
                    self._finish_locked(
                        entry,
                        Outcome(entry.job.version_id, None, reason, False, "", dict(entry.extra)),
                    )
            return
        try:
            # Scattered, not embedded: large tiles must not travel through the scheduler.
            scattered = client.scatter(data, hash=False, timeout=self._connect_timeout_s)
        except Exception as exc:  # the connection broke: place the job again
            scattered, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = ""
        del data
        with self._cond:
            if not current():
                return  # closed, or finished meanwhile: ``scattered`` is released here
            lost = self._client is not client or self._state is not Connection.CONNECTED
            if scattered is None or lost:
                if error:
                    _log.warning("cluster_submit_failed", error=error)
                entry.where = _Where.ORPHAN
                self._check_health_locked()
            else:
                entry.data = scattered
                try:
                    self._submit_dask_locked(entry)
                except Exception as exc:  # the client broke between the check and the submit
                    _log.warning("cluster_submit_failed", error=f"{type(exc).__name__}: {exc}")
                    entry.where = _Where.ORPHAN
            self._cond.notify_all()

    def _submit_dask_locked(self, entry: _Entry) -> None:
        client = self._client
        job = entry.job
        source: Any = entry.data if self._send_bytes else job.path
        resources = None
        if job.settings.backend == "gpu":
            resources = {"GPU": self._gpu_share}
            self._warn_if_no_gpu_worker_locked(client)
        fut = client.submit(
            run_reporting_start,
            source,
            report_as=entry.key,
            name=job.path,
            settings=job.settings,
            score_fn=self._score_fn,
            key=entry.key,
            pure=False,
            resources=resources,
        )
        entry.future = fut
        entry.where = _Where.DASK
        entry.started_at, entry.started_on = None, ""
        vid, key = job.version_id, entry.key
        fut.add_done_callback(lambda f: self._on_dask_done(f, vid, key))

    def _warn_if_no_gpu_worker_locked(self, client: Any) -> None:
        if self._warned_no_gpu:
            return
        self._warned_no_gpu = True
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except Exception:  # cosmetic check; the task still waits for a GPU worker
            return
        if not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            _log.warning(
                "cluster_no_gpu_worker",
                address=self.address,
                detail="scoring.backend = 'gpu' but no worker offers resources GPU=1; "
                "tiles wait until one joins (dask worker ... --resources GPU=1)",
            )

    def _on_dask_done(self, fut: Any, version_id: int, key: str) -> None:
        """Runs in Dask's callback thread when a future finishes, errs or is cancelled."""
        with self._cond:
            entry = self._entries.get(version_id)
            if entry is None or entry.key != key:
                return  # stale: an earlier attempt, or already yielded
            job, extra = entry.job, dict(entry.extra)
            if fut.status == "cancelled" and not self._closed:
                entry.resubmits += 1
                if entry.resubmits <= _MAX_RESUBMITS or self._state is not Connection.CONNECTED:
                    entry.where = _Where.ORPHAN
                    entry.future = None
                    self._check_health_locked()
                    self._cond.notify_all()
                    return
        # Fetch outside the lock: it is a round trip to the worker holding the result.
        try:
            if fut.status == "error":
                outcome = _failed(job, fut.exception(timeout=self._connect_timeout_s), "", extra)
            elif fut.status == "cancelled":
                outcome = _failed(job, RuntimeError("cancelled repeatedly"), "", extra)
            else:
                res = fut.result(timeout=self._connect_timeout_s)
                outcome = _outcome(job, res, extra)
        except Exception as exc:  # result lost with its worker, or connection lost
            with self._cond:
                entry = self._entries.get(version_id)
                if entry is not None and entry.key == key and not self._closed:
                    _log.warning("cluster_result_lost", key=key, error=repr(exc))
                    entry.where = _Where.ORPHAN
                    entry.future = None
                    self._check_health_locked()
                    self._cond.notify_all()
            return
        with self._cond:
            entry = self._entries.get(version_id)
            if entry is None or entry.key != key:
                return
            self._finish_locked(entry, outcome)

    def _finish_locked(self, entry: _Entry, outcome: Outcome) -> None:
        del self._entries[entry.job.version_id]
        entry.future = entry.data = None  # release the keys on the cluster
        if outcome.result is not None:
            self._throughput.record(outcome.worker or "local")
        self._done.append(outcome)
        self._cond.notify_all()

    def _pump_fallback_locked(self) -> None:
        if self._fallback is None:
            return
        for o in self._fallback.outcomes(0):
            entry = self._entries.get(o.version_id)
            if entry is None or entry.where is not _Where.FALLBACK:
                continue  # dedupe: the job already has an outcome
            extra = {**entry.extra, "backend": "local-fallback"}
            outcome = Outcome(o.version_id, o.result, o.error, o.retryable, o.worker, extra)
            self._finish_locked(entry, outcome)

    # -- the Executor protocol -------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; blocks while ``queue_size`` jobs are unfinished (backpressure)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("submit on a closed DaskExecutor")
            if job.version_id in self._entries:
                _log.debug("cluster_duplicate_submit", version_id=job.version_id)
                return  # one outcome per job: the running attempt will answer
            while len(self._entries) >= self._queue_size:
                self._pump_fallback_locked()
                self._check_health_locked()
                if len(self._entries) < self._queue_size:
                    break
                self._cond.wait(_POLL_S)
                if self._closed:
                    raise RuntimeError("DaskExecutor closed while waiting to submit")
            self._check_health_locked()  # before adding: it places every orphan it sees
            entry = _Entry(job=job)
            self._entries[job.version_id] = entry
            self._place_locked(entry)

    def outcomes(self, timeout: float) -> Iterator[Outcome]:
        """Yield the outcomes available now, or the first ones within ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._cond:
                self._pump_fallback_locked()
                self._check_health_locked()
                batch = list(self._done)
                self._done.clear()
                if not batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(min(remaining, _POLL_S))
                    continue
            yield from batch
            return

    def in_flight(self) -> int:
        with self._cond:
            return len(self._entries) + len(self._done)

    def describe(self) -> dict[str, Any]:
        """Backend, scheduler address, state, each worker's tiles and recent rate, and
        how many hung workers were restarted."""
        with self._cond:
            client, state = self._client, self._state
            fallback = self._fallback
        info: dict[str, Any] = {}
        if client is not None and state is Connection.CONNECTED:
            try:
                # Bounded: a status report must not hang on a stalled scheduler.
                ident = client.sync(
                    client.scheduler.identity,
                    n_workers=-1,
                    callback_timeout=self._connect_timeout_s,
                )
                info = dict(ident.get("workers", {}))
            except Exception as exc:  # a status report must not fail on a flaky network
                _log.warning("cluster_describe_failed", error=repr(exc))
        with self._cond:
            addresses = sorted(set(info) | set(self._throughput.workers()) - {"local"})
            workers = [
                {
                    "address": addr,
                    "nthreads": info.get(addr, {}).get("nthreads", 0),
                    "resources": dict(info.get(addr, {}).get("resources", {})),
                    "tiles": self._throughput.tiles(addr),
                    "tiles_per_min": round(self._throughput.per_min(addr), 2),
                    "alive": addr in info,
                }
                for addr in addresses
            ]
            unfinished = len(self._entries)
            restarts = self._worker_restarts
        out: dict[str, Any] = {
            "backend": "dask",
            "address": self.address,
            "state": str(state),
            "on_unreachable": self._on_unreachable,
            "workers": workers,
            "in_flight": unfinished,
            "worker_restarts": restarts,
        }
        if fallback is not None:
            out["fallback"] = fallback.describe()
        return out

    def close(self) -> None:
        """Disconnect (the cluster itself keeps running); unfinished jobs are dropped."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            client, fallback = self._client, self._fallback
            self._client = None
            self._entries.clear()
            self._cond.notify_all()
        # Reads in progress finish (not interruptible) and find the executor closed.
        self._io.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close(timeout=self._connect_timeout_s)
        if fallback is not None:
            fallback.close()
        if self._reconnector is not None:
            self._reconnector.join(timeout=self._connect_timeout_s + 1)


def _cancel_quietly(fut: Any) -> None:
    """Cancel a timed-out task; a scheduler that went away has forgotten it anyway."""
    try:
        fut.cancel(reason="focuswatch: scoring.tile_timeout_s")
    except Exception as exc:
        _log.debug("cluster_cancel_failed", key=str(fut.key), error=repr(exc))


def _local_fallback(cfg: Config, score_fn: ScoreFn | None) -> Callable[[], Executor]:
    """Makes the executor ``cluster.scheduler = "local"`` would use, for the fallback."""

    def make() -> Executor:
        return local_executor(cfg, score_fn=score_fn)  # same workers, pinning and logs

    return make


def connect(cfg: Config, *, score_fn: ScoreFn | None = None) -> Executor:
    """The executor for ``cluster.scheduler = "dask"``, connected to ``cluster.address``.

    An unreachable scheduler is, within ``cluster.connect_timeout_s``, a
    ``BackendError`` naming the address (``on_unreachable = "wait"``) or a logged
    switch to local scoring that keeps retrying the scheduler (``"fallback"``).
    """
    c = cfg.cluster
    if c.scheduler != "dask":
        raise ValueError(f"cluster.connect needs cluster.scheduler = 'dask', got {c.scheduler!r}")
    return DaskExecutor(
        c.address,
        on_unreachable=c.on_unreachable,
        connect_timeout_s=c.connect_timeout_s,
        queue_size=cfg.scoring.queue_size,
        send_bytes=c.send_bytes,
        score_fn=score_fn,
        tile_timeout_s=cfg.scoring.tile_timeout_s,
        restart_hung_workers=c.restart_hung_workers,
        gpu_tiles_per_worker=gpu.tiles_in_flight(cfg.scoring.gpu_overlap),
        fallback=_local_fallback(cfg, score_fn),
    )
