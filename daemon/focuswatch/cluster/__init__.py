"""Scoring on a Dask cluster: the ``Executor`` for ``cluster.scheduler = "dask"``.

The service hands ``Job``s to ``DaskExecutor`` exactly as to the local executor.
Each job becomes one Dask task, ``run_task``: pure (a path, or the tile's bytes, in;
a ``TaskResult`` out), it never touches the ledger. The daemon records outcomes
idempotently, so at-least-once execution is safe.

Fault tolerance, in layers:

* a worker that dies mid-tile: the Dask scheduler re-runs its tasks on another
  worker (``distributed.scheduler.allowed-failures``, default 3); only when a tile
  has killed that many workers does its future fail with ``KilledWorker``, which
  becomes a *retryable* ``Outcome`` (the service retries up to ``scoring.max_attempts``);
* the scheduler goes away: the client cancels every future. Those jobs are kept
  ("orphans", never lost) and, once the client has given up reconnecting (bounded by
  ``cluster.connect_timeout_s``), either go to a local fallback executor
  (``on_unreachable = "fallback"``) or wait while a background thread keeps trying
  to reconnect (``"wait"``); on reconnection they are resubmitted to the cluster;
* one outcome per job: every submission gets a fresh key, the executor remembers
  which key is current for each job, and drops any late or duplicate completion;
* a tile that hangs: each task reports its start (a Dask event on
  ``focuswatch-task-started``); one running longer than ``tile_timeout_s`` becomes a
  *retryable* outcome ("timed out after N s") and its future is cancelled, so a late
  result is dropped. A task still queued (no start report) is not timed. Python
  cannot stop the worker's thread, so with ``restart_hung_workers`` (default) the
  worker is then restarted through its nanny (``Client.restart_workers``, in the
  background, after the cancel has reached the scheduler; once per hang: a tile that
  started before its worker's last restart request does not ask again). The nanny
  gives the worker 4 s to close, kills it and starts a fresh one; the scheduler
  re-runs the worker's other tasks (running or waiting there) as for a worker that
  died, which is safe: tasks are pure and outcomes deduplicated per key. It removes
  the worker with ``expected=False``, so the restart counts against
  ``allowed-failures`` for each of those tasks, and one caught in more restarts than
  that comes back as ``KilledWorker`` (retryable). With ``send_bytes``, bytes
  scattered only to that worker are lost: their futures are cancelled and the
  executor reads and resubmits those tiles. A worker without a nanny
  (``--no-nanny``) cannot be restarted: ``cluster_worker_restart_failed`` says so
  and the worker stays busy until the scoring call returns. ``describe()`` counts
  the restarts (``worker_restarts``).

``send_bytes``: the daemon reads each tile and scatters its bytes in a background
thread, never under the executor's lock (an 800 MB read must not stall the main
loop); a tile it cannot read is a non-retryable outcome with the reason
``focuswatch.tiles`` gives for the same error.

GPU: a job whose ``settings.backend`` is ``"gpu"`` is submitted with
``resources={"GPU": 1 / gpu_tiles_per_worker}``, so it only runs on workers started
with ``--resources GPU=1`` (one worker per GPU), and scores through that process's
``gpu.GpuLane``. With two tiles per worker (``scoring.gpu_overlap``, on a worker with
``--nthreads 2``) one tile is read and copied to the GPU while the other is scored;
each stays its own task, with its own time limit and retries. A GPU worker without a
usable GPU answers with an error that says so.

Backpressure: ``submit`` blocks while ``queue_size`` jobs are unfinished on the
cluster (or the fallback); finished outcomes wait in memory until ``outcomes``
yields them.

Modules: ``task`` (what a worker runs: light and picklable) and ``executor`` (the
daemon's side: submission, timeouts, hung-worker restarts, the local fallback).
"""

from focuswatch.cluster.executor import DaskExecutor, connect
from focuswatch.cluster.task import TaskResult, default_score_fn, run_task, score_bytes
from focuswatch.scoring import ScoreFn

__all__ = [
    "DaskExecutor",
    "ScoreFn",
    "TaskResult",
    "connect",
    "default_score_fn",
    "run_task",
    "score_bytes",
]
