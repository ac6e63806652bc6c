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

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from focuswatch import judge, sdnotify
from focuswatch.choices import scorer_revision
from focuswatch.config import Config
from focuswatch.errors import (
    LedgerWriteError,
    TileError,
)
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.ledger import Ledger, TileVersion, VersionState
from focuswatch.scoring import ScoreSettings, TileScore
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

__all__ = ["FAULT_REMIND_S", "FAULT_RETRY_S", "Service", "Sink"]

log = structlog.get_logger("focuswatch.service")

# How long a stop waits for tiles being scored before handing them back to 'ready'.
STOP_GRACE_S = 10.0
# How often the executor's description and a heartbeat are written for ``status``.
META_INTERVAL_S = 5.0
# While the ledger cannot be written: how often a write is tried again, and how often
# the log is reminded (with what is waiting).
FAULT_RETRY_S = 5.0
FAULT_REMIND_S = 60.0
# Changes handled per loop turn, so a burst cannot starve outcomes and the watchdog.
MAX_CHANGES_PER_TURN = 2000


class Sink(Protocol):
    """Receives every committed verdict; ``tick`` runs once per main-loop turn.

    ``start`` (threads, files, sockets) runs in ``Service.start``, ``close`` in
    ``Service.stop``, so a sink's constructor starts nothing."""

    def start(self) -> None: ...

    def on_verdict(self, record: VerdictRecord) -> None: ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


class Service:
    """The running pipeline. ``start``, then ``turn`` repeatedly (or ``run_until``), ``stop``."""

    def __init__(
        self,
        cfg: Config,
        *,
        lock: StateLock,
        ledger: Ledger,
        make_executor: Callable[[], Executor],
        sinks: Sequence[Sink],
        decide: Callable[..., Verdict],
        calibration: Any,
        clock: Callable[[], float],
        notifier: sdnotify.Notifier,
    ) -> None:
        """Parts built by ``focuswatch.app.build_service`` (the lock already held, the
        ledger open); the service owns them from here and releases them in ``stop``.
        Nothing is started: ``start`` starts the sinks, the executor and the watcher."""
        self.cfg = cfg
        self.root = str(Path(cfg.watch.path or ".").absolute())
        self._real_root = os.path.realpath(self.root).rstrip("/")
        self._outside_links: set[str] = set()
        # Files the layout says are no tile, as they were seen (size, mtime): rescans
        # pass them by as they pass recorded ones, and each folder is said once.
        self._not_tiles: dict[str, tuple[int, int]] = {}
        self._unplaced_folders: set[str] = set()
        self.clock = clock
        self._lock = lock
        self.ledger = ledger
        self._make_executor = make_executor
        self._executor: Executor | None = None
        self.sinks: list[Sink] = list(sinks)
        self._decide = decide
        self._calibration = calibration
        self.notifier = notifier
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
        self._sinks_started: list[Sink] = []

    # -- events ------------------------------------------------------------------------

    def _event(self, name: str, level: str = "info", **fields: Any) -> None:
        getattr(log, level)(name, **fields)

    @staticmethod
    def _tile_fields(v: TileVersion) -> dict[str, Any]:
        return {
            "tile": v.path,
            "section": v.section,
            "row": v.placement.row,
            "col": v.placement.col,
            "position": v.position,
            "version": v.id,
        }

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._make_executor()
        return self._executor

    # -- start -------------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Recover from a crash, start the sinks, the observer and the workers, scan the
        folder, send READY=1. ``stop`` undoes it in the reverse order."""
        try:
            self._recover()
        except LedgerWriteError as exc:  # e.g. the disk is full at start: wait, don't exit
            self._enter_fault(str(exc))
        for sink in self.sinks:  # in order: the retake list before the alerts that name it
            self._sinks_started.append(sink)  # closed by stop() even if start fails halfway
            sink.start()
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

    def _scan_now(self, root: str) -> int:
        known = self._not_tiles | self.ledger.known_paths(under=None if root == self.root else root)
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
            placed = self.layout.place(s.path)
        except TileError as exc:  # e.g. a 20-digit row: the file's reason, not a crash
            placed, bad_name = Placement(), exc.reason
        if placed is None:
            self._not_a_tile(s.path, (size, mtime))
            return
        place = placed
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

    def _not_a_tile(self, path: str, seen_as: tuple[int, int]) -> None:
        """A file the layout says is no tile: not recorded, said once per folder."""
        self._not_tiles[path] = seen_as
        folder = os.path.dirname(path)
        if folder not in self._unplaced_folders:
            self._unplaced_folders.add(folder)
            self._event(
                "not_a_tile_skipped",
                folder=printable(folder),
                example=printable(os.path.basename(path)),
                layout=self.layout.name,
                why="its name does not match watch.pattern",
            )

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
        if v.state is not VersionState.SCORING:
            # A job that ran twice (e.g. re-run by Dask after a worker died): one result only.
            self._event("duplicate_outcome", **self._tile_fields(v), state=v.state)
            return
        if o.result is not None and (foreign := _foreign_revision(o.result)) is not None:
            # Numbers of another scorer revision would be judged against this wafer's.
            o = dataclasses.replace(o, result=None, error=foreign, retryable=True)
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
        if ts.meta is not None:
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

    def _record(
        self, v: TileVersion, verdict: Verdict, *, score: TileScore | None, worker: str
    ) -> None:
        created = self.ledger.record_result(v.id, verdict=verdict, score=score, worker=worker)
        self._recorded(v, verdict, created=created, score=score, worker=worker)

    def _recorded(
        self,
        v: TileVersion,
        verdict: Verdict,
        *,
        created: bool,
        score: TileScore | None,
        worker: str,
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
        # Once per rescan, read here (the ledger's thread); files known to be no tile too.
        known = self._not_tiles | self.ledger.known_paths()
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
        for sink in reversed(self._sinks_started):
            try:
                sink.close()
            except Exception as exc:
                self._event("sink_failed", "error", sink=type(sink).__name__, error=repr(exc))
        self._event("stopped", handed_back=handed_back)
        self.ledger.close()
        self._lock.release()


def _foreign_revision(score: TileScore) -> str | None:
    """Why a score made by another revision of the scorer (a worker running another
    release) cannot be recorded here; None when it can."""
    mine = scorer_revision(score.criterion, score.mode)
    if score.revision == mine:
        return None
    return (
        f"scored by revision {score.revision} of the {score.criterion} {score.mode!r} "
        f"scorer (a worker running another focuswatch release), and this service records "
        f"revision {mine}: its numbers are not comparable with this wafer's; upgrade "
        "that worker"
    )


def _nonfinite(score: TileScore) -> dict[str, Any]:
    """NaN/inf pixels of a float tile were left out of its score: say how many."""
    n = 0 if score.meta is None else score.meta.nonfinite_pixels
    return {"nonfinite_pixels_not_scored": n} if n else {}
