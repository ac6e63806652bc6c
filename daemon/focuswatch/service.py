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
missed (kernel queue overflow, files written while the service was down). SIGTERM,
SIGINT or SIGHUP stops intake, waits a bounded time for work in flight and hands the rest
back to 'ready', then exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from focuswatch.errors import (
    BackendError,
    ConfigError,
    LedgerWriteError,
    StateError,
    TileError,
)
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.ledger import Ledger, TileVersion, set_aside
from focuswatch.scoring import ScoreSettings
from focuswatch.statelock import StateLock
from focuswatch.text import printable
from focuswatch.tiles import layouts
from focuswatch.verdict import Placement, Verdict, VerdictKind, VerdictRecord
from focuswatch.watch import (
    Change,
    Matcher,
    Readiness,
    Settled,
    SettledKind,
    Watcher,
    choose_observer,
    scan,
)

__all__ = ["NOT_CHECKED", "Service", "Sink", "build_executor", "main", "preflight"]

log = structlog.get_logger("focuswatch.service")

# How long a stop waits for tiles being scored before handing them back to 'ready'.
STOP_GRACE_S = 10.0
# How often the executor's description and a heartbeat are written for ``status``.
META_INTERVAL_S = 5.0
# While the ledger cannot be written: how often a write is tried again, and how often
# the log is reminded (with what is waiting).
FAULT_RETRY_S = 5.0
FAULT_REMIND_S = 60.0
# Signals that stop the service in order (hand tiles in flight back, exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Changes handled per loop turn, so a burst cannot starve outcomes and the watchdog.
MAX_CHANGES_PER_TURN = 2000


class Sink(Protocol):
    """Receives every committed verdict; ``tick`` runs once per main-loop turn."""

    def on_verdict(self, record: VerdictRecord) -> None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


def build_executor(cfg: Config, *, score_fn: Any = None) -> Executor:
    """Dask when ``cluster.scheduler = "dask"``, else local worker processes."""
    if cfg.cluster.scheduler == "dask":
        from focuswatch import cluster

        return cluster.connect(cfg, score_fn=score_fn)
    from focuswatch.worker import local_executor

    return local_executor(cfg, score_fn=score_fn)


def _builtin_sinks(cfg: Config, ledger: Ledger, clock: Callable[[], float]) -> list[Sink]:
    """The retake and alert sinks, in that order: an alert names the retake entry (its
    id) its tile opened, so the retake list must have seen the verdict first. Then the
    web console (its server thread; a port in use is one log line), when enabled."""
    from focuswatch import alerts, retakes

    sinks: list[Sink] = [
        retakes.build_sink(cfg, ledger, clock=clock),
        alerts.build_sink(cfg, ledger, clock=clock),
    ]
    if cfg.web.enabled:
        from focuswatch.web import WebConsole

        sinks.append(WebConsole(cfg.web, cfg.state_dir, clock=clock))
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
        builtin_sinks: bool = True,
        score_fn: Any = None,
        notifier: sdnotify.Notifier | None = None,
        decide: Callable[..., Verdict] | None = None,
    ) -> None:
        watch_path = _watch_folder(cfg)
        self.cfg = cfg
        # Before anything is opened or started: without the GPU asked for, every tile
        # would fail one by one; refuse to start instead (BackendError).
        self._check_backend()
        self.root = str(watch_path.absolute())
        self._real_root = os.path.realpath(self.root).rstrip("/")
        self._outside_links: set[str] = set()
        self.clock = clock
        self.sinks: list[Sink] = []
        # Before the ledger is touched: a second service's start-up recovery would hand
        # the first one's tiles in flight back to 'ready'.
        self._lock = StateLock(_state_folder(cfg))
        self._lock.acquire()
        try:
            self.ledger = Ledger.open(cfg.state_dir, clock=clock)
        except BaseException:
            self._lock.release()
            raise
        try:
            include, exclude = layouts.watched_patterns(cfg.watch)
            self.matcher = Matcher(include=include, exclude=exclude)
            self.layout = layouts.make_layout(cfg.watch, self.root)
            self.readiness = Readiness(
                quiet_s=cfg.watch.quiet_s, incomplete_timeout_s=cfg.watch.incomplete_timeout_s
            )
            self.changes: queue.Queue[Change] = queue.Queue()
            self.settings = dataclasses.replace(
                ScoreSettings.from_config(cfg.scoring),
                within=None if cfg.watch.follow_symlinks_outside else self._real_root,
            )
            self.notifier = notifier or sdnotify.Notifier()
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
            self._rescan_soon = False
            self._next_poll = 0.0
            self._closed_pending = False
            self._next_meta = 0.0
            self._poll_every = min(0.5, max(0.02, cfg.watch.quiet_s / 4))
            self.started = False
            self.stopped = False
            self._fault: str | None = None
            self._fault_since = 0.0
            self._next_fault_probe = 0.0
            self._next_fault_reminder = 0.0
            self._held: list[Outcome] = []
            self._recovered = False
        except BaseException:  # e.g. a bad calibration file: do not leak the open ledger
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
            self.ledger.close()
            self._lock.release()
            raise

    # -- events ------------------------------------------------------------------------

    def _event(self, name: str, level: str = "info", **fields: Any) -> None:
        getattr(log, level)(name, **fields)

    @staticmethod
    def _tile_fields(v: TileVersion) -> dict[str, Any]:
        return {
            "tile": v.path,
            "section": v.section,
            "row": v.row,
            "col": v.col,
            "position": v.position,
            "version": v.id,
        }

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = build_executor(self.cfg, score_fn=self._score_fn)
        return self._executor

    # -- start -------------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Recover from a crash, start the observer, scan the folder, send READY=1."""
        try:
            self._recover()
        except LedgerWriteError as exc:  # e.g. the disk is full at start: wait, don't exit
            self._enter_fault(str(exc))
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
        self._choose_layout()
        found = self._scan_now(self.root)
        if self._fault is None:
            try:
                self._replay_undelivered()
                self._write_meta(force=True)
            except LedgerWriteError as exc:
                self._enter_fault(str(exc))
        self._next_rescan = time.monotonic() + self.cfg.watch.rescan_interval_s
        self.started = True
        self._event("started", files_found=found, pending=len(self.readiness))
        self.notifier.ready(f"watching {self.root}")

    def _choose_layout(self) -> None:
        """Say which layout reads this folder (``auto``: what it holds now)."""
        chosen, why = layouts.chosen(self.cfg.watch, self.root)
        self._event(
            "layout",
            layout=chosen,
            configured=self.cfg.watch.layout,
            why=why,
            include=self.matcher.include,
            exclude=self.matcher.exclude,
        )

    def _recover(self) -> None:
        """Versions a crash left in 'scoring' go back to 'ready' (once, before any work)."""
        recovered = self.ledger.recover()
        self._recovered = True
        if recovered:
            self._event("recovered_in_flight", versions=recovered)

    def _check_backend(self) -> None:
        _backend_usable(self.cfg)

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
        """One main-loop iteration; waits at most about ``timeout`` seconds.

        While the ledger cannot be written (``fault``), no new work is taken: results
        that arrive are held in memory, and the write is retried every
        ``FAULT_RETRY_S``; once it goes through, they are recorded and work resumes.
        """
        if self._fault is not None:
            self._turn_in_fault(timeout)
            return
        try:
            self._turn(timeout)
        except LedgerWriteError as exc:
            self._enter_fault(str(exc))
        self.notifier.watchdog()

    @property
    def fault(self) -> str | None:
        """Why the state folder cannot be written now (None: it can)."""
        return self._fault

    def _turn(self, timeout: float) -> None:
        self._take_changes(0.0)
        now = time.monotonic()
        self._poll_readiness(now)
        self._feed()
        wait = min(timeout, self._poll_every) if len(self.readiness) else timeout
        if self.executor.in_flight():
            self._handle_all(list(self.executor.outcomes(wait)))
            self._feed()
        else:
            self._take_changes(wait)
            if self._closed_pending:  # a close-write is ready now: don't wait a turn
                self._poll_readiness(time.monotonic())
                self._feed()
        rescanning = self._rescan_thread is not None and self._rescan_thread.is_alive()
        if now >= self._next_rescan or (self._rescan_soon and not rescanning):
            self._rescan_soon = False
            self._start_rescan()
        wall = self.clock()
        for sink in self.sinks:
            try:
                sink.tick(wall)
            except LedgerWriteError:
                raise
            except Exception as exc:  # a sink's failure is logged; scoring goes on
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))
        self._write_meta()

    def _handle_all(self, outcomes: Sequence[Outcome]) -> None:
        for i, outcome in enumerate(outcomes):
            try:
                self._handle(outcome)
            except LedgerWriteError:
                self._held.extend(outcomes[i:])  # recorded once the ledger can be written
                raise

    # -- a state folder that cannot be written -----------------------------------------

    def _keep_lock(self) -> None:
        """The state folder deleted: the lock went with it. Take it again, or a second
        service would start on the emptied folder and score the wafer again beside us."""
        lost = self._lock.keep()
        if lost is not None:
            self._event("state_lock_lost", "error", reason=lost)

    def _enter_fault(self, reason: str) -> None:
        if self.ledger.file_problem() is not None:
            self._keep_lock()
        first = self._fault is None
        self._fault = reason
        now = time.monotonic()
        self._next_fault_probe = now + FAULT_RETRY_S
        if first:
            self._fault_since = now
            self._next_fault_reminder = now + FAULT_REMIND_S
            waiting = self._waiting()
            self._event("state_unwritable", "error", reason=reason, **waiting)
            self._tell(
                f"state_unwritable:{self.clock():.0f}",
                severity="failure",
                title="focuswatch cannot write its state folder: no new tiles are scored",
                body=f"{reason}\nWaiting: {waiting['results_held']} results, "
                f"{waiting['changes_waiting'] + waiting['files_pending']} new files. "
                f"Scoring resumes by itself once the state folder ({self.cfg.state_dir}) can "
                "be written again.",
            )

    def _waiting(self) -> dict[str, Any]:
        return {
            "results_held": len(self._held),
            "changes_waiting": self.changes.qsize(),
            "files_pending": len(self.readiness),
            "in_flight": self.executor.in_flight() if self._executor is not None else 0,
            "action": "no new tiles are taken until the state folder can be written; "
            f"retrying every {FAULT_RETRY_S:g} s",
        }

    def _tell(self, key: str, *, severity: str, title: str, body: str) -> None:
        """A health message to the sinks that can send one without the ledger."""
        for sink in self.sinks:
            tell = getattr(sink, "tell_now", None)  # the alert sink; recording sinks lack it
            if tell is None:
                continue
            try:
                tell(key, title=title, body=body, severity=severity)
            except Exception as exc:  # a health message must not make matters worse
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))

    def _turn_in_fault(self, timeout: float) -> None:
        ex = self._executor
        if ex is not None and ex.in_flight():
            self._held.extend(ex.outcomes(timeout))  # results keep, in memory, for later
        else:
            time.sleep(timeout)  # nothing to wait on but the clock
        now = time.monotonic()
        if now >= self._next_fault_probe:
            self._next_fault_probe = now + FAULT_RETRY_S
            self._probe_ledger()
        if self._fault is not None and now >= self._next_fault_reminder:
            self._next_fault_reminder = now + FAULT_REMIND_S
            self._event(
                "state_still_unwritable",
                "error",
                reason=self._fault,
                for_s=round(now - self._fault_since),
                **self._waiting(),
            )
        self.notifier.watchdog()

    def _probe_ledger(self) -> None:
        """Try one small write; if it goes through, record what was held and resume."""
        problem = self.ledger.file_problem()
        if problem is not None:
            self._keep_lock()
            # Never write into a deleted ledger: what it holds is lost at the next start.
            self._fault = (
                f"{problem}; nothing more is written there. Restore the state folder and "
                "restart the service (a restart without it scores every tile again)"
            )
            return
        try:
            self.ledger.set_meta("heartbeat", self.clock())
        except LedgerWriteError as exc:
            self._fault = str(exc)
            return
        was = self._fault
        self._fault = None
        after_s = round(time.monotonic() - self._fault_since)
        self._event("state_writable_again", "warning", was=was, after_s=after_s, **self._waiting())
        self._tell(
            f"state_writable_again:{self.clock():.0f}",
            severity="success",
            title="focuswatch can write its state folder again: scoring resumed",
            body=f"After {after_s} s: {was}",
        )
        try:
            if not self._recovered:
                self._recover()
            held, self._held = self._held, []
            self._handle_all(held)
            self._replay_undelivered()
        except LedgerWriteError as exc:
            self._enter_fault(str(exc))

    def _poll_readiness(self, now: float) -> None:
        if not len(self.readiness) or (now < self._next_poll and not self._closed_pending):
            return
        self._next_poll = now + self._poll_every
        self._closed_pending = False
        settled = self.readiness.poll()
        for i, s in enumerate(settled):
            try:
                self._settle(s)
            except LedgerWriteError:
                for rest in settled[i:]:  # looked at again once the ledger can be written
                    self.readiness.note(rest.path)
                raise

    def idle(self) -> bool:
        """Nothing left to do: no changes, nothing pending, nothing ready or in flight."""
        if self._fault is not None or self._held:
            return False
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
        if c.overflow:
            self._event(
                "watch_overflow",
                "warning",
                path=self.root,
                action="the kernel dropped file events; rescanning the folder now",
            )
            self.rescan_now()  # one already running may predate the loss: another after it
            return
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
        if s.kind is SettledKind.VANISHED:
            self._event("tile_vanished", "warning", tile=s.path, reason=s.reason)
            return
        if self._outside(s.path):
            return
        size, mtime = s.size, s.mtime_ns
        if s.kind is SettledKind.INCOMPLETE:
            # Never the key of a complete file: a writer that stops right now leaves the
            # file with this very (size, mtime), and that finished file must become a
            # version of its own and be scored (a shared key would find this record and
            # keep its 'still being written' result forever). Size -1: not a whole file.
            size = -1
        elif s.kind is SettledKind.ERROR:
            try:  # the link itself identifies the version (a symlink loop has no target)
                st = os.lstat(s.path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
        bad_name: str | None = None
        try:
            place = self.layout.place(s.path)
        except TileError as exc:  # e.g. a 20-digit row: the file's reason, not a crash
            place, bad_name = Placement(), exc.reason
        ready = s.kind is SettledKind.READY and bad_name is None
        unreadable = None if ready else Verdict(VerdictKind.UNREADABLE, bad_name or s.reason)
        vid, created = self.ledger.add_version(
            s.path,
            size=size,
            mtime_ns=mtime,
            tile_name=os.path.basename(s.path),
            place=place,
            unreadable=unreadable,  # with its result, in the same transaction
        )
        if not created:
            return
        v = self.ledger.get(vid)
        if unreadable is None:
            self._event("tile_ready", **self._tile_fields(v), size=size)
            return
        self._event(
            "tile_failed",
            "warning",
            **self._tile_fields(v),
            verdict=str(unreadable.kind),
            reason=unreadable.reason,
        )
        self._deliver(vid)

    def _outside(self, path: str) -> bool:
        """A link out of the watch folder is not followed (unless the config says so).

        Logged once per link and process; it is not recorded, so it is no tile of the
        wafer and nothing is read from it.
        """
        if self.cfg.watch.follow_symlinks_outside:
            return False
        target = os.path.realpath(path)
        if target.startswith(self._real_root + "/"):
            return False
        if path not in self._outside_links:
            self._outside_links.add(path)
            self._event(
                "symlink_outside_skipped",
                "warning",
                tile=printable(path),
                target=printable(target),
                why="its target is outside the watch folder (watch.follow_symlinks_outside)",
            )
        return True

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
        if getattr(ts, "meta", None) is not None:
            # What the tags say (FibicsXML MosaicInfo row/col, stage, focus) is known
            # before the tile is judged, so its history is looked up by it.
            v = self.ledger.complete_place(v.id, layouts.with_meta(Placement(), ts.meta))
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
        if judged.revise_error is not None:
            # The tile's own verdict is recorded and delivered; the tiles it is context
            # for keep theirs until a later tile revises them (the ledger is the fault).
            raise judged.revise_error

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
                **_nonfinite(score),
            )
        self._deliver(v.id)

    def _deliver(self, vid: int) -> None:
        v = self.ledger.get(vid)
        if not v.superseded:  # a verdict on a tile already overwritten helps nobody
            record = self.ledger.verdict_record(vid)
            for sink in self.sinks:
                try:
                    sink.on_verdict(record)
                except LedgerWriteError:
                    raise  # not marked delivered: replayed once the ledger can be written
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
        """Reconcile with the folder at the next turn (once no rescan is running).

        The answer to events the kernel dropped (an inotify queue overflow).
        """
        self._rescan_soon = True

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

    def _stop_step(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> bool:
        """One ledger step of a stop; a state-folder fault is noted, the stop goes on."""
        try:
            fn(*args, **kw)
        except LedgerWriteError as exc:
            self._enter_fault(str(exc))
            return False
        return True

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
                outcomes = list(ex.outcomes(min(0.2, max(0.0, deadline - time.monotonic()))))
                if self._fault is None:
                    self._stop_step(self._handle_all, outcomes)
                else:
                    self._held.extend(outcomes)
            self._stop_step(self._write_meta, force=True)  # final figures for ``status``
            ex.close()
        handed_back = 0
        if self._fault is None:
            held, self._held = self._held, []
            self._stop_step(self._handle_all, held)
        for vid in list(self._submitted):
            # Not the tile's fault. If this cannot be written either, the version stays
            # 'scoring' in the ledger and the next start's recovery hands it back.
            if self._fault is None and self._stop_step(self.ledger.release, vid, undo_attempt=True):
                handed_back += 1
        self._submitted.clear()
        if self._fault is not None:
            self._event("stopped_unwritable", "error", reason=self._fault, **self._waiting())
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))
        self._event("stopped", handed_back=handed_back)
        self.ledger.close()
        self._lock.release()


def _state_folder(cfg: Config) -> Path:
    """The state folder, created if need be (StateError if it cannot be)."""
    state = Path(cfg.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state folder {state}: {exc.strerror or exc}") from None
    return state


def _nonfinite(score: Any) -> dict[str, Any]:
    """NaN/inf pixels of a float tile were left out of its score: say how many."""
    n = int(getattr(score.meta, "nonfinite_pixels", 0) or 0)
    return {"nonfinite_pixels_not_scored": n} if n else {}


def _backend_usable(cfg: Config) -> None:
    """Probe the GPU once, at start, when local workers are to use one.

    With Dask the GPUs are the workers', not this machine's: each task says so itself.
    """
    if cfg.scoring.backend != "gpu" or cfg.cluster.scheduler == "dask":
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


def _watch_folder(cfg: Config) -> Path:
    """``watch.path``; the state folder may not lie in it (the service would score itself)."""
    if cfg.watch.path is None:
        raise ConfigError("at 'watch.path': required (give --watch DIR or set watch.path)")
    watch = os.path.realpath(cfg.watch.path)
    state = os.path.realpath(cfg.state_dir)
    if state == watch or state.startswith(watch.rstrip("/") + "/"):
        raise ConfigError(
            f"at 'state_dir': the state folder {str(cfg.state_dir)!r} is inside the watch "
            f"folder {str(cfg.watch.path)!r}; the service would watch (and score) its own "
            "files: put it outside"
        )
    return Path(cfg.watch.path)


def _state_writable(cfg: Config) -> None:
    """StateError if the state folder can never be used as configured; LedgerWriteError
    if it cannot be written now (a read-only mount, which may come back read-write)."""
    state = _state_folder(cfg)
    if os.access(state, os.W_OK | os.X_OK):
        return
    try:
        readonly_mount = bool(os.statvfs(state).f_flag & os.ST_RDONLY)
    except OSError:
        readonly_mount = False
    if readonly_mount:
        raise LedgerWriteError(f"the state folder {state} is on a read-only file system")
    raise StateError(f"state folder {state} is not writable")


def _watch_usable(cfg: Config) -> None:
    watch = _watch_folder(cfg)
    if watch.exists() and not watch.is_dir():
        raise ConfigError(f"at 'watch.path': {str(watch)!r} is a file, not a folder")
    if not watch.is_dir():
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} does not exist")
    if not os.access(watch, os.R_OK | os.X_OK):
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} is not readable")


def _state_usable_without_creating(cfg: Config) -> None:
    state = Path(cfg.state_dir)
    if state.exists():
        if not state.is_dir():
            raise StateError(f"at 'state_dir': {str(state)!r} is a file, not a folder")
        if not os.access(state, os.W_OK | os.X_OK):
            raise StateError(f"at 'state_dir': folder {str(state)!r} is not writable")
        return
    parent = state.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StateError(
            f"at 'state_dir': folder {str(state)!r} does not exist and cannot be created "
            f"({str(parent)!r} is not a writable folder)"
        )


def _alerts_usable(cfg: Config) -> None:
    """Every notification URL one that apprise can use (ConfigError with key paths)."""
    if cfg.alerts.urls or cfg.alerts.apprise_config is not None:
        from focuswatch import alerts  # apprise is slow to import: only when alerts are set

        problems = alerts.validate(cfg)
        if problems:
            raise ConfigError(problems)


def _calibration_usable(cfg: Config) -> None:
    from focuswatch import policy

    policy.load_calibration(cfg.policy)


# What ``check-config`` cannot check from here: it needs the running service's network.
NOT_CHECKED = (
    "alert endpoints answering (delivery is tried when the service runs)",
    "the Dask scheduler being reachable (cluster.address)",
)


def preflight(cfg: Config) -> list[str]:
    """Every problem ``run`` would refuse to start with, without starting or creating anything.

    For ``check-config``: the notification URLs, the watch folder, the state folder,
    the calibration file and the GPU (when asked for with local workers).
    """
    problems: list[str] = []
    checks: tuple[Callable[[Config], object], ...] = (
        _alerts_usable,
        _watch_usable,
        _state_usable_without_creating,
        _calibration_usable,
        _backend_usable,
    )
    for check in checks:
        try:
            check(cfg)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (StateError, BackendError) as exc:
            problems.append(str(exc))
    return problems


def _when_writable(cfg: Config, stop: threading.Event) -> Service | None:
    """The service, once its state folder can be written; None if stopped meanwhile.

    A full disk or a read-only mount at start is waited out (retried every
    ``FAULT_RETRY_S``, said once and reminded every ``FAULT_REMIND_S``), as it is while
    running: exiting would only have systemd restart it into the same fault, over and
    over. systemd is told the service is up (and fed its watchdog) while it waits.
    """
    notifier = sdnotify.Notifier()
    waiting_since: float | None = None
    remind = 0.0
    while True:
        try:
            _state_writable(cfg)
            service = Service(cfg)
        except LedgerWriteError as exc:
            now = time.monotonic()
            if waiting_since is None:
                waiting_since, remind = now, now + FAULT_REMIND_S
                log.error(
                    "state_unwritable",
                    reason=str(exc),
                    action="not started: waiting for the state folder to be writable; "
                    f"retrying every {FAULT_RETRY_S:g} s",
                )
                notifier.ready("waiting for the state folder to be writable")
                _tell_directly(
                    cfg,
                    "failure",
                    "focuswatch cannot start: its state folder cannot be written",
                    f"{exc}\nNo tile is scored until it can; it retries every "
                    f"{FAULT_RETRY_S:g} s and starts by itself.",
                )
            elif now >= remind:
                remind = now + FAULT_REMIND_S
                log.error(
                    "state_still_unwritable", reason=str(exc), for_s=round(now - waiting_since)
                )
            notifier.watchdog()
            if stop.wait(FAULT_RETRY_S):
                return None
        else:
            if waiting_since is not None:
                _tell_directly(
                    cfg,
                    "success",
                    "focuswatch started: its state folder can be written again",
                    f"After {round(time.monotonic() - waiting_since)} s of waiting.",
                )
            return service


def _tell_directly(cfg: Config, severity: str, title: str, body: str) -> None:
    """A health message straight to each alert endpoint, before any ledger exists.

    Best effort: each endpoint in a thread of its own, waited for a few seconds at
    most; its failure is logged and changes nothing.
    """
    if not (cfg.alerts.urls or cfg.alerts.apprise_config is not None):
        return
    from focuswatch import alerts
    from focuswatch.outbox import Alert

    try:
        endpoints = alerts.build_endpoints(cfg.alerts, thumbnail_dir=Path(cfg.state_dir))
    except Exception as exc:  # an endpoint that cannot even be built: said, not fatal
        log.warning("health_alert_failed", error=repr(exc))
        return
    name = alerts.instance_name(cfg.alerts)
    alert = Alert(
        key=f"health:{time.time():.0f}",
        kind="health",
        section=None,
        title=f"[{name}] {title}",
        body=body,
        severity=severity,
    )

    def send(endpoint: Any) -> None:
        try:
            endpoint.notify(alert)
        except Exception as exc:  # DeliveryError and anything apprise raises
            log.warning("health_alert_failed", endpoint=endpoint.name, error=str(exc))

    threads = [threading.Thread(target=send, args=(e,), daemon=True) for e in endpoints]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)


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


def main(cfg: Config, *, once: bool = False, reset_ledger: bool = False) -> int:
    """``focuswatch run``: run the service until SIGTERM/SIGINT (or, with ``once``, done).

    ``reset_ledger``: a damaged ledger is moved aside and a new one started (refused for
    a healthy one).
    """
    _alerts_usable(cfg)
    _watch_usable(cfg)
    if reset_ledger:
        lock = StateLock(cfg.state_dir)  # never move a ledger a running service has open
        lock.acquire()
        try:
            aside = set_aside(cfg.state_dir)
        finally:
            lock.release()
        log.warning(
            "ledger_reset",
            damaged_kept_at=None if aside is None else str(aside),
            consequence="every tile in the watch folder is scored again, and alerts for "
            "bad ones are sent again",
        )
    stop = threading.Event()
    received: list[int] = []
    on_signal = _stop_on_signal(stop, received)

    def why() -> dict[str, Any]:
        return {"signal": signal.Signals(received[0]).name} if received else {}

    # SIGHUP (the terminal went away, or ``kill -HUP``) is a logged, orderly stop like
    # SIGTERM: configuration is read once at start, so there is nothing to reload.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        service = _when_writable(cfg, stop)
        if service is None:
            log.info("stop_requested", **why(), while_waiting="for the state folder")
            return 0
        service.run_until(stop, once=once, why=why)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
