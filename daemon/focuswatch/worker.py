"""Scoring in worker processes on this machine: the local ``Executor``.

Each worker is a separate process (``forkserver`` by default, or ``spawn``; never
threads, never a plain fork of the multi-threaded service), so a tile
that crashes its worker (segfault, SIGKILL, ``os._exit``) or hangs it cannot take
the service down. The parent talks to each worker over its own pipe and knows which
job each one runs, so a death or a timeout is pinned on the right tile:

* worker died → a *retryable* ``Outcome`` naming the exit code or signal, and a
  fresh worker takes the slot;
* a job running past ``tile_timeout_s`` → the worker is killed and replaced, and
  the job gets a retryable ``Outcome`` saying so.

``tiles_per_worker`` > 1 lets a worker hold that many jobs at once, each in its own
thread: a GPU worker (``gpu.score_path_gpu``) reads and copies the next tile while the
current one is scored. The clock of a job starts when it is the oldest in its
worker. A timeout blames the oldest job only; the others go back to the queue
uncharged. A worker that dies holding several jobs cannot say which one killed it, so
each of them is retried *alone* on a worker, uncharged, and the one that kills its
worker then is blamed. A ``SystemExit`` (or other ``BaseException``) in a scoring
thread ends the worker with exit code 70 rather than vanishing with the thread.

The service decides whether to retry (``scoring.max_attempts``). The scoring
function is injected as a picklable top-level function (``ScoreFn``: path and
settings in, ``TileScore`` out; ``TileError`` for a bad tile), which is how tests
make a tile crash or hang a worker without touching production code.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from focuswatch.executor import Job, Outcome, classify
from focuswatch.gpu import score_path_gpu, tiles_in_flight
from focuswatch.scoring import ScoreFn, score_path

__all__ = ["LocalExecutor", "describe_exit", "local_executor"]

if TYPE_CHECKING:
    from focuswatch.config import Config


_log = structlog.get_logger("focuswatch.worker")


def describe_exit(exitcode: int | None) -> str:
    """A worker's exit status as a person reads it ('killed by SIGKILL', 'exit code 3')."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _worker_main(
    conn: multiprocessing.connection.Connection,
    score_fn: ScoreFn,
    name: str,
    env: dict[str, str],
    *,
    log_setup: tuple[str, str] | None = None,
    tiles: int = 1,
) -> None:
    """Worker process: score jobs from the pipe until told to stop (None) or orphaned.

    Up to ``tiles`` jobs run at once, one per thread; the parent never sends more.
    """
    os.environ.update(env)
    if log_setup is not None:  # log like the service (JSON lines under systemd)
        from focuswatch import logs

        logs.configure(*log_setup)
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Start-up (imports, unpickling score_fn) must not count against a tile's time limit.
    try:
        conn.send("ready")
    except (EOFError, OSError):
        return
    send_lock = threading.Lock()  # results go back from several threads

    def score(job: Job) -> Outcome:
        try:
            return Outcome(job.version_id, score_fn(job.path, job.settings), worker=name)
        except Exception as exc:  # never fatal to the worker; executor.classify says why
            reason, retryable = classify(exc)
            return Outcome(job.version_id, None, error=reason, retryable=retryable, worker=name)

    def run(job: Job) -> None:
        try:
            out = score(job)
            with send_lock:
                try:
                    conn.send(out)
                except (EOFError, OSError):
                    os._exit(0)  # orphaned: the parent is gone
                except Exception as exc:  # e.g. an unpicklable result from a custom score_fn
                    conn.send(Outcome(job.version_id, None, error=f"result not sendable: {exc}"))
        except BaseException:  # SystemExit & co. in a pool thread would vanish unseen:
            os._exit(_EXIT_ABANDONED)  # die as a single-threaded worker would, loudly

    with ThreadPoolExecutor(tiles, thread_name_prefix=f"focuswatch-{name}") as pool:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # orphaned: do not wait for tiles nobody will collect
            if job is None:
                return  # the parent sends None only to an idle worker
            pool.submit(run, job)


# A worker thread met SystemExit or another BaseException while scoring (EX_SOFTWARE).
_EXIT_ABANDONED = 70


@dataclass
class _Running:
    job: Job
    started: float  # when its time limit started: sent, or when it became the oldest


@dataclass
class _Slot:
    name: str
    env: dict[str, str]
    proc: Any = None
    conn: multiprocessing.connection.Connection | None = None
    jobs: dict[int, _Running] = field(default_factory=dict)  # by version_id, oldest first
    ready: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.jobs)


class LocalExecutor:
    """Runs jobs in ``workers`` processes; implements ``focuswatch.executor.Executor``.

    ``queue_size`` bounds jobs waiting for a free worker (``submit`` blocks, still
    collecting outcomes, when it is full). ``devices`` pins worker *i* to GPU
    ``devices[i % len(devices)]`` through ``CUDA_VISIBLE_DEVICES`` (one worker per GPU).
    ``log_setup`` is ``(level, format)`` for ``focuswatch.logs.configure`` in each worker.
    ``tiles_per_worker`` jobs run at once in each worker, one per thread (see the module
    docstring).
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        tile_timeout_s: float = 300.0,
        queue_size: int = 64,
        score_fn: ScoreFn = score_path,
        start_method: str = "forkserver",
        devices: Sequence[int] | None = None,
        log_setup: tuple[str, str] | None = None,
        tiles_per_worker: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if tiles_per_worker < 1:
            raise ValueError(f"tiles_per_worker must be >= 1, got {tiles_per_worker}")
        if tile_timeout_s <= 0:
            raise ValueError(f"tile_timeout_s must be > 0, got {tile_timeout_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError("start_method must be 'spawn' or 'forkserver' (fork is unsafe)")
        self._ctx: Any = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports NumPy, SciPy and the scorer once; every worker (and
            # every replacement after a crash) is then a cheap fork of that clean process.
            self._ctx.set_forkserver_preload(["focuswatch.worker", "focuswatch.scoring"])
        self._score_fn = score_fn
        self._log_setup = log_setup
        self._timeout = tile_timeout_s
        self._queue_size = queue_size
        self._per_worker = tiles_per_worker
        # Jobs that were in a worker that died holding several: each runs alone next.
        self._suspects: set[int] = set()
        self._clock = clock
        self._pending: collections.deque[Job] = collections.deque()
        self._ready: collections.deque[Outcome] = collections.deque()
        self._done_times: collections.deque[float] = collections.deque(maxlen=256)
        self.restarts = 0
        self.completed = 0
        self._closed = False
        self._slots = []
        for i in range(workers):
            env = {}
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = str(devices[i % len(devices)])
            self._slots.append(_Slot(name=f"local-{i}", env=env))
        for slot in self._slots:
            self._start(slot)

    # -- worker lifecycle --------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self._score_fn, slot.name, slot.env),
            kwargs={"log_setup": self._log_setup, "tiles": self._per_worker},
            name=f"focuswatch-{slot.name}",
            daemon=True,
        )
        proc.start()
        child.close()
        slot.proc, slot.conn, slot.jobs, slot.ready = proc, parent, {}, False

    def _replace(self, slot: _Slot) -> None:
        if slot.proc is not None and slot.proc.is_alive():
            slot.proc.kill()
        if slot.proc is not None:
            slot.proc.join(5.0)
            slot.proc.close()
        if slot.conn is not None:
            slot.conn.close()
        self.restarts += 1
        self._start(slot)

    def _finish(self, slot: _Slot, outcome: Outcome) -> None:
        was_oldest = next(iter(slot.jobs), None) == outcome.version_id
        if slot.jobs.pop(outcome.version_id, None) is None:
            return  # not this worker's job (cannot happen with a sane worker)
        self._suspects.discard(outcome.version_id)
        now = self._clock()
        if was_oldest and slot.jobs:  # the next one's time limit starts now, not when sent
            nxt = next(iter(slot.jobs.values()))
            nxt.started = max(nxt.started, now)
        self._ready.append(outcome)
        self.completed += 1
        self._done_times.append(now)

    def _requeue(self, slot: _Slot, *, suspects: bool) -> None:
        """Give a dead or killed worker's other jobs back to the queue, uncharged."""
        for running in reversed(list(slot.jobs.values())):
            self._pending.appendleft(running.job)
            if suspects:
                self._suspects.add(running.job.version_id)
        slot.jobs = {}

    # -- the Executor protocol ---------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("executor is closed")
        while len(self._pending) >= self._queue_size:
            self._pump(0.1)
        self._pending.append(job)
        self._dispatch()

    def outcomes(self, timeout: float) -> Iterator[Outcome]:
        if not self._ready:
            self._pump(timeout)
        while self._ready:
            yield self._ready.popleft()

    def in_flight(self) -> int:
        running = sum(len(s.jobs) for s in self._slots)
        return len(self._pending) + running + len(self._ready)

    def describe(self) -> dict[str, Any]:
        rate = 0.0
        if len(self._done_times) >= 2:
            span = self._done_times[-1] - self._done_times[0]
            rate = (len(self._done_times) - 1) / span if span > 0 else 0.0
        return {
            "backend": "local",
            "workers": len(self._slots),
            "tiles_per_worker": self._per_worker,
            "start_method": self._ctx.get_start_method(),
            "completed": self.completed,
            "worker_restarts": self.restarts,
            "tiles_per_s": round(rate, 3),
            "in_flight": self.in_flight(),
        }

    def close(self) -> None:
        """Stop the workers; jobs still running or waiting are dropped (the ledger keeps them)."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        for slot in self._slots:
            if slot.conn is not None and not slot.busy:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        deadline = time.monotonic() + 5.0
        for slot in self._slots:
            if slot.proc is None:
                continue
            if slot.busy:
                slot.proc.kill()  # mid-tile: its result would be discarded anyway
            slot.proc.join(max(0.0, deadline - time.monotonic()))
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(5.0)
            slot.proc.close()
            if slot.conn is not None:
                slot.conn.close()
            slot.proc = slot.conn = None
            slot.jobs = {}

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        for slot in self._slots:
            while self._pending and slot.ready and slot.conn is not None:
                if len(slot.jobs) >= self._per_worker:
                    break
                alone = any(vid in self._suspects for vid in slot.jobs)
                if alone or (slot.jobs and self._pending[0].version_id in self._suspects):
                    break  # a suspect runs alone on its worker
                job = self._pending.popleft()
                try:
                    slot.conn.send(job)
                except OSError:  # the worker died; this job never reached it
                    self._pending.appendleft(job)
                    self._died(slot)
                    break
                slot.jobs[job.version_id] = _Running(job, self._clock())

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for results, deaths or timeouts; then refill workers."""
        self._dispatch()
        busy = [s for s in self._slots if s.busy]
        starting = [s for s in self._slots if not s.ready and s.conn is not None]
        if busy or (starting and self._pending):
            wait_s = timeout
            if busy:
                oldest = min(next(iter(s.jobs.values())).started for s in busy)
                wait_s = max(0.0, min(timeout, oldest + self._timeout - self._clock()))
            handles: list[Any] = []
            for s in busy + starting:
                handles += [s.conn, s.proc.sentinel]
            multiprocessing.connection.wait(handles, wait_s)
            for slot in starting:
                self._check_start(slot)
            for slot in busy:
                self._check(slot)
        elif timeout > 0 and not self._pending:
            time.sleep(min(timeout, 0.05))  # nothing to wait on; keep the caller's loop calm
        self._dispatch()

    def _check_start(self, slot: _Slot) -> None:
        if slot.conn is None:
            return
        try:
            if slot.conn.poll():
                slot.ready = slot.conn.recv() == "ready"
                return
        except (EOFError, OSError):
            pass
        if not slot.proc.is_alive():  # died while starting (e.g. a broken install)
            self._replace(slot)

    def _check(self, slot: _Slot) -> None:
        if not slot.busy or slot.conn is None:
            return
        self._collect(slot)
        if not slot.jobs:
            return
        if not slot.proc.is_alive():
            self._died(slot)
            return
        oldest = next(iter(slot.jobs.values()))
        if self._clock() - oldest.started >= self._timeout:
            self._blame(
                slot,
                f"scoring took longer than {self._timeout:g} s "
                "(scoring.tile_timeout_s); worker killed",
            )
            self._requeue(slot, suspects=False)
            self._replace(slot)

    def _died(self, slot: _Slot) -> None:
        """The worker is gone: collect what it sent, pin the death on its tile, replace it.

        One tile in flight: that tile is blamed. Several: which one killed it is
        unknown, so each is retried alone, uncharged (see the module docstring).
        """
        self._collect(slot)
        slot.proc.join(1.0)
        why = describe_exit(slot.proc.exitcode)
        if len(slot.jobs) > 1:
            _log.warning(
                "worker_died_holding_several_tiles",
                worker=slot.name,
                exit=why,
                tiles=[r.job.path for r in slot.jobs.values()],
                action="each is retried alone",
            )
            self._requeue(slot, suspects=True)
        elif slot.jobs:
            self._blame(slot, f"worker process died while scoring ({why})")
        self._replace(slot)

    def _collect(self, slot: _Slot) -> None:
        """Finish every job whose result the worker has sent."""
        try:
            while slot.jobs and slot.conn is not None and slot.conn.poll():
                self._finish(slot, slot.conn.recv())
        except (EOFError, OSError):
            pass  # the pipe broke: the worker is gone (the caller checks)

    def _blame(self, slot: _Slot, error: str) -> None:
        """A retryable outcome for the oldest job of a worker about to be replaced."""
        job = next(iter(slot.jobs.values())).job
        self._finish(
            slot, Outcome(job.version_id, None, error=error, retryable=True, worker=slot.name)
        )


def local_executor(cfg: Config, *, score_fn: ScoreFn | None = None) -> LocalExecutor:
    """The executor ``cluster.scheduler = "local"`` runs, from the configuration.

    The one place that turns ``[scoring]`` and ``[logging]`` into worker processes:
    used by the service and by the Dask executor's local fallback alike. With the GPU
    backend, worker *i* is pinned to device *i* (one worker per GPU) and scores through
    that GPU's lane (``gpu.score_path_gpu``), two tiles at a time with
    ``scoring.gpu_overlap``; workers log like the service.
    """
    s = cfg.scoring
    gpu = s.backend == "gpu"
    if score_fn is None:
        score_fn = score_path_gpu if gpu else score_path
    return LocalExecutor(
        workers=s.workers,
        tile_timeout_s=s.tile_timeout_s,
        queue_size=s.queue_size,
        score_fn=score_fn,
        devices=list(range(s.workers)) if gpu else None,
        log_setup=(cfg.logging.level, cfg.logging.format),
        tiles_per_worker=tiles_in_flight(s.gpu_overlap) if gpu else 1,
    )
