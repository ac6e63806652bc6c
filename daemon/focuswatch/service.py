"""The service: watch → ledger → executor → policy → sinks, in one main loop.

::

    watchdog thread ─► changes queue ─┐            (the event thread only enqueues)
    rescan thread  ──► changes queue ─┤
                                      ▼
    main loop: Readiness ─► ledger 'ready' ─► executor (worker processes | Dask)
               outcomes ─► judge (context, policy, result; revisions) ─► sinks

The ledger is the queue: versions wait there as 'ready' and the main loop hands the
executor at most ``scoring.queue_size`` at a time, so a burst of 10,000 tiles costs
10,000 rows, not 10,000 jobs in memory. A version's one result and its state change
are one transaction; verdicts are handed to the sinks (alerts, retake list, anything
passed in ``sinks=``) after they are committed and marked delivered after that, so a
crash in between replays them at the next start (sinks de-duplicate by version).

Start-up: versions left in 'scoring' by a crash go back to 'ready', the folder is
scanned, then ``READY=1`` is sent. A periodic rescan catches what the observer
missed (kernel queue overflow, files written while the service was down). SIGTERM
or SIGINT stops intake, waits a bounded time for work in flight and hands the rest
back to 'ready', then exits 0.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import structlog

from focuswatch import judge, sdnotify
from focuswatch.config import Config
from focuswatch.errors import BackendError, ConfigError, NotBuiltError, StateError
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.ledger import Ledger, TileVersion
from focuswatch.scoring import ScoreSettings
from focuswatch.verdict import Verdict, VerdictKind, VerdictRecord
from focuswatch.watch import Change, Matcher, Readiness, Settled, Watcher, choose_observer, scan

__all__ = ["Service", "Sink", "build_executor", "main"]

log = structlog.get_logger("focuswatch.service")

# How long a stop waits for tiles being scored before handing them back to 'ready'.
STOP_GRACE_S = 10.0
# How often the executor's description and a heartbeat are written for ``status``.
META_INTERVAL_S = 5.0
# Changes handled per loop turn, so a burst cannot starve outcomes and the watchdog.
MAX_CHANGES_PER_TURN = 2000


class Sink(Protocol):
    """Receives every committed verdict; ``tick`` runs once per main-loop turn."""

    def on_verdict(self, record: VerdictRecord) -> None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


EventHook = Callable[[str, dict[str, Any]], None]


def build_executor(cfg: Config, *, score_fn: Any = None) -> Executor:
    """Dask when ``cluster.scheduler = "dask"``, else local worker processes."""
    if cfg.cluster.scheduler == "dask":
        from focuswatch import cluster

        return cluster.connect(cfg, score_fn=score_fn)
    from focuswatch.worker import local_executor

    return local_executor(cfg, score_fn=score_fn)


def _builtin_sinks(cfg: Config, ledger: Ledger, clock: Callable[[], float]) -> list[Sink]:
    """The alert and retake sinks; a module that is not there yet is logged, not fatal."""
    sinks: list[Sink] = []
    try:
        from focuswatch import alerts

        sinks.append(alerts.build_sink(cfg, ledger, clock=clock))
    except (ImportError, AttributeError, NotBuiltError) as exc:
        log.warning("sink_unavailable", sink="alerts", reason=str(exc))
    try:
        from focuswatch import retakes

        sinks.append(retakes.build_sink(cfg, ledger, clock=clock))
    except (ImportError, AttributeError, NotBuiltError) as exc:
        log.warning("sink_unavailable", sink="retakes", reason=str(exc))
    return sinks


class Service:
    """The running pipeline. ``start``, then ``turn`` repeatedly (or ``run_until``), ``stop``."""

    def __init__(
        self,
        cfg: Config,
        *,
        sinks: Sequence[Sink] | None = None,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
        on_event: EventHook | None = None,
        builtin_sinks: bool = True,
        score_fn: Any = None,
        notifier: sdnotify.Notifier | None = None,
        decide: Callable[..., Verdict] | None = None,
    ) -> None:
        if cfg.watch.path is None:
            raise ConfigError("at 'watch.path': required (give --watch DIR or set watch.path)")
        self.cfg = cfg
        # Before anything is opened or started: without the GPU asked for, every tile
        # would fail one by one; refuse to start instead (BackendError).
        self._check_backend()
        self.root = str(Path(cfg.watch.path).absolute())
        self.clock = clock
        self.sinks: list[Sink] = []
        self.ledger = Ledger.open(cfg.state_dir, clock=clock)
        try:
            self.matcher = Matcher(include=cfg.watch.include, exclude=cfg.watch.exclude)
            self.readiness = Readiness(
                quiet_s=cfg.watch.quiet_s, incomplete_timeout_s=cfg.watch.incomplete_timeout_s
            )
            self.changes: queue.Queue[Change] = queue.Queue()
            self.settings = ScoreSettings.from_config(cfg.scoring)
            self.notifier = notifier or sdnotify.Notifier()
            self._on_event = on_event
            if decide is None:
                from focuswatch import policy

                self._calibration = policy.load_calibration(cfg.policy)
                decide = policy.decide
            else:
                self._calibration = None
            self._decide = decide
            self._executor = executor
            self._score_fn = score_fn
            if builtin_sinks:
                self.sinks += _builtin_sinks(cfg, self.ledger, clock)
            self.sinks += list(sinks or [])
            self._submitted: set[int] = set()
            self._watcher: Watcher | None = None
            self.observer_kind: str | None = None
            self._rescan_thread: threading.Thread | None = None
            self._next_rescan = 0.0
            self._next_poll = 0.0
            self._closed_pending = False
            self._next_meta = 0.0
            self._poll_every = min(0.5, max(0.02, cfg.watch.quiet_s / 4))
            self.started = False
            self.stopped = False
        except BaseException:  # e.g. a bad calibration file: do not leak the open ledger
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
            self.ledger.close()
            raise

    # -- events ------------------------------------------------------------------------

    def _event(self, name: str, level: str = "info", **fields: Any) -> None:
        getattr(log, level)(name, **fields)
        if self._on_event is not None:
            self._on_event(name, fields)

    @staticmethod
    def _tile_fields(v: TileVersion) -> dict[str, Any]:
        return {"tile": v.path, "section": v.section, "row": v.row, "col": v.col, "version": v.id}

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = build_executor(self.cfg, score_fn=self._score_fn)
        return self._executor

    # -- start -------------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Recover from a crash, start the observer, scan the folder, send READY=1."""
        recovered = self.ledger.recover()
        if recovered:
            self._event("recovered_in_flight", versions=recovered)
        if watch:
            kind, why = choose_observer(self.root, self.cfg.watch.observer)
            watcher = Watcher(
                self.root,
                self.changes,
                observer=kind,
                poll_interval_s=self.cfg.watch.poll_interval_s,
            )
            watcher.start()
            self._watcher = watcher  # only a started one: stop() joins it
            self.observer_kind = watcher.kind
            if watcher.fallback is not None:  # e.g. the inotify watch limit reached
                self._event(
                    "watching", "warning", path=self.root, observer="polling", why=watcher.fallback
                )
            else:
                self._event("watching", path=self.root, observer=kind, why=why)
        _ = self.executor  # start workers now, not on the first tile
        found = self._scan_now(self.root)
        self._replay_undelivered()
        self._next_rescan = time.monotonic() + self.cfg.watch.rescan_interval_s
        self._write_meta(force=True)
        self.started = True
        self._event("started", files_found=found, pending=len(self.readiness))
        self.notifier.ready(f"watching {self.root}")

    def _check_backend(self) -> None:
        """Probe the GPU once, at start, when local workers are to use one.

        With Dask the GPUs are the workers', not this machine's: each task says so itself.
        """
        if self.cfg.scoring.backend != "gpu" or self.cfg.cluster.scheduler == "dask":
            return
        from focuswatch.backend import get_backend

        try:
            backend = get_backend("gpu")
        except BackendError as exc:
            raise BackendError(
                f"scoring.backend = 'gpu' but this machine cannot score on a GPU: {exc} "
                "(use --backend cpu or auto)"
            ) from None
        log.info("backend_checked", backend=backend.name, device=backend.device)

    def _scan_now(self, root: str) -> int:
        known = self.ledger.known_paths(under=None if root == self.root else root)
        n = 0
        for path in scan(root, self.matcher):
            n += 1
            try:
                st = os.stat(path)
            except OSError:
                self.readiness.note(path)  # poll reports why (vanished, loop, ...)
                continue
            if known.get(path) != (st.st_size, st.st_mtime_ns):
                self.readiness.note(path)
        return n

    def _replay_undelivered(self) -> None:
        for vid in self.ledger.undelivered():
            self._deliver(vid)

    # -- the main loop -----------------------------------------------------------------

    def turn(self, timeout: float = 0.1) -> None:
        """One main-loop iteration; waits at most about ``timeout`` seconds."""
        self._take_changes(0.0)
        now = time.monotonic()
        self._poll_readiness(now)
        self._feed()
        wait = min(timeout, self._poll_every) if len(self.readiness) else timeout
        if self.executor.in_flight():
            for outcome in self.executor.outcomes(wait):
                self._handle(outcome)
            self._feed()
        else:
            self._take_changes(wait)
            if self._closed_pending:  # a close-write is ready now: don't wait a turn
                self._poll_readiness(time.monotonic())
                self._feed()
        if now >= self._next_rescan:
            self._start_rescan()
        wall = self.clock()
        for sink in self.sinks:
            try:
                sink.tick(wall)
            except Exception as exc:  # a sink's failure is logged; scoring goes on
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))
        self._write_meta()
        self.notifier.watchdog()

    def _poll_readiness(self, now: float) -> None:
        if not len(self.readiness) or (now < self._next_poll and not self._closed_pending):
            return
        self._next_poll = now + self._poll_every
        self._closed_pending = False
        for settled in self.readiness.poll():
            self._settle(settled)

    def idle(self) -> bool:
        """Nothing left to do: no changes, nothing pending, nothing ready or in flight."""
        counts = self.ledger.counts()
        return (
            self.changes.empty()
            and not len(self.readiness)
            and counts["ready"] == 0
            and counts["seen"] == 0
            and self.executor.in_flight() == 0
            and (self._rescan_thread is None or not self._rescan_thread.is_alive())
        )

    def run_until(
        self,
        stop: threading.Event,
        *,
        once: bool = False,
        why: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Run until ``stop`` is set (or, with ``once``, until everything is scored).

        When ``stop`` ends the run, ``stop_requested`` is logged here, from the loop,
        with the fields ``why()`` returns (e.g. the signal): never from a signal handler.
        A start that fails half-way is stopped too (observer, workers, ledger closed).
        """
        try:
            if not self.started:
                self.start(watch=not once)
            while not stop.is_set():
                self.turn(0.1)
                if once and self.idle():
                    break
            if stop.is_set():
                self._event("stop_requested", **(why() if why is not None else {}))
        finally:
            self.stop()

    def _take_changes(self, timeout: float) -> None:
        try:
            first = self.changes.get(timeout=timeout) if timeout > 0 else self.changes.get_nowait()
        except queue.Empty:
            return
        self._change(first)
        for _ in range(MAX_CHANGES_PER_TURN):
            try:
                self._change(self.changes.get_nowait())
            except queue.Empty:
                return

    def _change(self, c: Change) -> None:
        if c.is_dir:
            # A folder moved in (a whole section): its files may bring no events of their own.
            if os.path.isdir(c.path) and not self.matcher.under_hidden_dir(c.path, self.root):
                self._scan_now(c.path)
            return
        if not self.matcher.matches(c.path) or self.matcher.under_hidden_dir(c.path, self.root):
            return
        if c.path not in self.readiness:
            try:
                st = os.stat(c.path)
            except OSError:
                st = None
            if st is not None and self.ledger.has_version(c.path, st.st_size, st.st_mtime_ns):
                return  # a duplicate event for a version already recorded
        self.readiness.note(c.path, closed=c.closed)
        self._closed_pending = self._closed_pending or c.closed

    def _settle(self, s: Settled) -> None:
        if s.kind == "vanished":
            self._event("tile_vanished", "warning", tile=s.path, reason=s.reason)
            return
        size, mtime = s.size, s.mtime_ns
        if s.kind == "incomplete":
            # Never the key of a complete file: a writer that stops right now leaves the
            # file with this very (size, mtime), and that finished file must become a
            # version of its own and be scored (a shared key would find this record and
            # keep its 'still being written' result forever). Size -1: not a whole file.
            size = -1
        elif s.kind == "error":
            try:  # the link itself identifies the version (a symlink loop has no target)
                st = os.lstat(s.path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
        from focuswatch.tiles import parse_tile_name

        section, row, col = parse_tile_name(s.path)
        vid, created = self.ledger.add_version(
            s.path,
            size=size,
            mtime_ns=mtime,
            tile_name=os.path.basename(s.path),
            section=section,
            row=row,
            col=col,
        )
        if not created:
            return
        v = self.ledger.get(vid)
        if s.kind == "ready":
            self._event("tile_ready", **self._tile_fields(v), size=size)
            return
        self._record(v, Verdict(VerdictKind.UNREADABLE, s.reason), score=None, worker="")

    def _feed(self) -> None:
        free = self.cfg.scoring.queue_size - self.executor.in_flight()
        if free <= 0:
            return
        for v in self.ledger.claim_ready(free):
            self._submitted.add(v.id)
            self._event("tile_scoring", "debug", **self._tile_fields(v), attempt=v.attempts)
            self.executor.submit(Job(v.id, v.path, self.settings))

    def _handle(self, o: Outcome) -> None:
        self._submitted.discard(o.version_id)
        v = self.ledger.get(o.version_id)
        if v.state != "scoring":
            # A job that ran twice (e.g. re-run by Dask after a worker died): one result only.
            self._event("duplicate_outcome", **self._tile_fields(v), state=v.state)
            return
        if o.result is None:
            reason = o.error or "scoring failed without a reason"
            if o.retryable and v.attempts < self.cfg.scoring.max_attempts:
                self.ledger.release(v.id, error=reason, undo_attempt=False)
                self._event(
                    "tile_retry",
                    "warning",
                    **self._tile_fields(v),
                    attempt=v.attempts,
                    reason=reason,
                )
                return
            if o.retryable:
                reason = f"gave up after {v.attempts} attempts: {reason}"
            self._record(v, Verdict(VerdictKind.UNREADABLE, reason), score=None, worker=o.worker)
            return
        ts = o.result
        judged = judge.judge(
            self.ledger,
            v,
            ts,
            cfg=self.cfg.policy,
            calibration=self._calibration,
            decide=self._decide,
            worker=o.worker,
        )
        if judged.error is not None:
            self._event("policy_failed", "error", **self._tile_fields(v), error=judged.error)
        self._recorded(v, judged.verdict, created=judged.created, score=ts, worker=o.worker)
        for vid in judged.revised:
            r = self.ledger.verdict_record(vid)
            self._event(
                "verdict_revised",
                version=vid,
                section=r.section,
                position=r.position,
                verdict=str(r.verdict.kind),
                reason=r.verdict.reason,
            )
            self._deliver(vid)

    def _record(self, v: TileVersion, verdict: Verdict, *, score: Any, worker: str) -> None:
        created = self.ledger.record_result(v.id, verdict=verdict, score=score, worker=worker)
        self._recorded(v, verdict, created=created, score=score, worker=worker)

    def _recorded(
        self, v: TileVersion, verdict: Verdict, *, created: bool, score: Any, worker: str
    ) -> None:
        if not created:
            self._event("duplicate_outcome", **self._tile_fields(v))
            return
        fields = self._tile_fields(v) | {"verdict": str(verdict.kind), "reason": verdict.reason}
        if score is None:
            self._event("tile_failed", "warning", **fields)
        else:
            self._event(
                "tile_scored",
                **fields,
                score=float(score.score),
                read_ms=round(float(score.read_ms), 1),
                score_ms=round(float(score.score_ms), 1),
                worker=worker,
            )
        self._deliver(v.id)

    def _deliver(self, vid: int) -> None:
        v = self.ledger.get(vid)
        if not v.superseded:  # a verdict on a tile already overwritten helps nobody
            record = self.ledger.verdict_record(vid)
            for sink in self.sinks:
                try:
                    sink.on_verdict(record)
                except Exception as exc:
                    self._event(
                        "sink_failed",
                        "error",
                        sink=type(sink).__name__,
                        error=repr(exc),
                        version=vid,
                    )
        self.ledger.mark_delivered(vid)

    # -- rescans and status ------------------------------------------------------------

    def _start_rescan(self) -> None:
        self._next_rescan = time.monotonic() + self.cfg.watch.rescan_interval_s
        if self._rescan_thread is not None and self._rescan_thread.is_alive():
            return
        known = self.ledger.known_paths()  # once per rescan, read here (the ledger's thread)
        self._rescan_thread = threading.Thread(
            target=self._rescan, args=(known,), name="focuswatch-rescan", daemon=True
        )
        self._rescan_thread.start()

    def _rescan(self, known: dict[str, tuple[int, int]]) -> None:
        """Reconciliation: only files the ledger does not know as they are now are queued.

        So the queue holds what changed, not the whole tree, however big the tree is.
        """
        n = queued = 0
        for path in scan(self.root, self.matcher):
            n += 1
            try:
                st = os.stat(path)
            except OSError:
                pass  # queued: the readiness poll reports why (vanished, loop, ...)
            else:
                if known.get(path) == (st.st_size, st.st_mtime_ns):
                    continue
            self.changes.put(Change(path))
            queued += 1
        log.debug("rescan_done", files=n, queued=queued)

    def rescan_now(self) -> None:
        """Start a reconciliation scan at the next turn (for tests and operators)."""
        self._next_rescan = 0.0

    def _write_meta(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_meta:
            return
        self._next_meta = now + META_INTERVAL_S
        try:
            self.ledger.set_meta("executor", self.executor.describe())
        except Exception as exc:  # describing is best effort (a cluster may be away)
            self.ledger.set_meta("executor", {"backend": "unknown", "error": repr(exc)})
        self.ledger.set_meta(
            "service",
            {
                "pid": os.getpid(),
                "watch": self.root,
                "observer": self.observer_kind or "none (--once)",
                "pending_files": len(self.readiness),
            },
        )
        self.ledger.set_meta("heartbeat", self.clock())

    # -- stop --------------------------------------------------------------------------

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """Stop intake, wait up to ``grace_s`` for work in flight, hand the rest back."""
        if self.stopped:
            return
        self.stopped = True
        self.notifier.stopping("finishing tiles in flight")
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + grace_s
        ex = self._executor
        if ex is not None:
            while ex.in_flight() and time.monotonic() < deadline:
                for outcome in ex.outcomes(min(0.2, max(0.0, deadline - time.monotonic()))):
                    self._handle(outcome)
            self._write_meta(force=True)  # final figures for ``status``
            ex.close()
        handed_back = 0
        for vid in list(self._submitted):
            self.ledger.release(vid, undo_attempt=True)  # not the tile's fault
            handed_back += 1
        self._submitted.clear()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))
        self._event("stopped", handed_back=handed_back)
        self.ledger.close()


def _check_folders(cfg: Config) -> None:
    if cfg.watch.path is None:
        raise ConfigError("at 'watch.path': required (give --watch DIR or set watch.path)")
    watch = Path(cfg.watch.path)
    if not watch.is_dir():
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} does not exist")
    if not os.access(watch, os.R_OK | os.X_OK):
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} is not readable")
    state = Path(cfg.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state folder {state}: {exc.strerror or exc}") from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise StateError(f"state folder {state} is not writable")


def _stop_on_signal(
    stop: threading.Event, received: list[int]
) -> Callable[[int, FrameType | None], None]:
    """A signal handler that only notes the signal and sets ``stop``.

    Nothing else may run in a handler: it interrupts the main thread anywhere, even
    inside a log call holding the logger's (non-reentrant) lock, so logging here could
    deadlock. The main loop logs ``stop_requested`` once it sees ``stop``.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    return on_signal


def main(cfg: Config, *, once: bool = False) -> int:
    """``focuswatch run``: run the service until SIGTERM/SIGINT (or, with ``once``, done)."""
    _check_folders(cfg)
    stop = threading.Event()
    received: list[int] = []
    on_signal = _stop_on_signal(stop, received)

    def why() -> dict[str, Any]:
        return {"signal": signal.Signals(received[0]).name} if received else {}

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        service = Service(cfg)
        service.run_until(stop, once=once, why=why)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
