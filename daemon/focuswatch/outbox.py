"""The durable alert outbox: each alert is queued once, and delivered at least once.

An alert enters the ``alert_outbox`` table in the same transaction as the state change
that caused it, under a dedupe key (``tile:{version_id}``, ``digest:{section}:{n}``,
``summary:{section}``; ``INSERT … ON CONFLICT DO NOTHING``), so a verdict replayed after a
restart never queues it twice. A ``Sender`` thread delivers due rows; a failed send
(``notify`` returns False or raises) is retried with exponential backoff between
``alerts.retry_initial_s`` and ``alerts.retry_max_s``. Nothing here blocks scoring: the
thread has its own ledger connection and the service only ever inserts rows.

Delivery is at least once, not exactly once: a row is marked sent only after ``notify``
returns, so a crash (or a failed commit) between the two sends that alert again on the
next start; and a target that accepted the message but answered with an error is
retried too. Duplicates are rare and harmless; a lost alert would not be.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from focuswatch.errors import StateError
from focuswatch.ledger import Ledger

__all__ = ["Alert", "Notifier", "Pending", "Sender", "backoff", "enqueue", "pending_count"]

_log = structlog.get_logger("focuswatch.alerts")


@dataclass(frozen=True)
class Alert:
    """One message for the operator; ``key`` makes it unique in the outbox (queued once)."""

    key: str
    kind: str  # tile, digest, summary
    section: str | None
    title: str
    body: str
    tile_path: str | None = None  # a thumbnail of this tile is attached where possible


@dataclass(frozen=True)
class Pending:
    """An outbox row still to deliver."""

    id: int
    alert: Alert
    attempts: int


class Notifier(Protocol):
    """Delivers one alert; False (or an exception) means try again later."""

    def __call__(self, alert: Alert) -> bool: ...


def enqueue(conn: sqlite3.Connection, alert: Alert, *, now: float) -> bool:
    """Queue an alert inside the caller's transaction; False if its key was queued before."""
    cur = conn.execute(
        "INSERT INTO alert_outbox (dedupe_key, kind, section, title, body, tile_path, created,"
        " next_attempt) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (dedupe_key) DO NOTHING",
        (alert.key, alert.kind, alert.section, alert.title, alert.body, alert.tile_path, now, now),
    )
    return cur.rowcount == 1


def pending_count(ledger: Ledger) -> int:
    """Alerts not delivered yet (for ``status``)."""
    row = ledger.connection.execute(
        "SELECT count(*) FROM alert_outbox WHERE sent IS NULL"
    ).fetchone()
    return int(row[0])


def backoff(attempts: int, *, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: initial, 2×, 4×, … up to max."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    return float(min(max_s, initial_s * 2.0 ** min(attempts - 1, 60)))


def _due(ledger: Ledger, now: float, limit: int) -> list[Pending]:
    # A plain read (the sender's own connection, one thread): no write lock each round.
    rows = ledger.connection.execute(
        "SELECT id, dedupe_key, kind, section, title, body, tile_path, attempts "
        "FROM alert_outbox WHERE sent IS NULL AND next_attempt <= ? "
        "ORDER BY next_attempt, id LIMIT ?",
        (now, limit),
    ).fetchall()
    return [Pending(r[0], Alert(*r[1:7]), r[7]) for r in rows]


class Sender:
    """A background thread that delivers due outbox rows; stop with ``stop()``."""

    def __init__(
        self,
        state_dir: Path,
        notify: Notifier,
        *,
        clock: Callable[[], float] = time.time,
        retry_initial_s: float,
        retry_max_s: float,
        poll_s: float = 1.0,
        batch: int = 20,
    ) -> None:
        if retry_initial_s <= 0 or retry_max_s < retry_initial_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        self._state_dir = Path(state_dir)
        self._notify = notify
        self._clock = clock
        self._initial = retry_initial_s
        self._max = retry_max_s
        self._poll_s = poll_s
        self._batch = batch
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._rounds_started = 0
        self._idle_round = 0
        self._thread = threading.Thread(target=self._run, name="focuswatch-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Look for due alerts now (new ones queued, or the clock moved)."""
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until a round finds nothing due (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            target = self._rounds_started + 1
        self.kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._idle_round >= target, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current send; undelivered alerts stay in the outbox."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        ledger = Ledger.open(self._state_dir, clock=self._clock)
        try:
            while not self._stop.is_set():
                with self._cond:
                    self._rounds_started += 1
                    this_round = self._rounds_started
                try:
                    due = _due(ledger, self._clock(), self._batch)
                    for item in due:
                        if self._stop.is_set():
                            break
                        self._deliver(ledger, item)
                except (sqlite3.Error, StateError) as exc:  # busy, full or gone: next round
                    _log.error("alert_outbox_error", error=str(exc))
                    due = []
                if not due:
                    with self._cond:
                        self._idle_round = this_round
                        self._cond.notify_all()
                    self._wake.wait(self._poll_s)
                    self._wake.clear()
        finally:
            ledger.close()

    def _deliver(self, ledger: Ledger, item: Pending) -> None:
        try:
            ok = bool(self._notify(item.alert))
            error = None if ok else "the notification service did not accept it"
        except Exception as exc:  # a notifier bug must not kill the thread
            ok, error = False, f"{type(exc).__name__}: {exc}"
        now = self._clock()
        attempts = item.attempts + 1
        with ledger.transaction() as conn:
            if ok:
                conn.execute(
                    "UPDATE alert_outbox SET sent = ?, attempts = ?, last_error = NULL "
                    "WHERE id = ?",
                    (now, attempts, item.id),
                )
            else:
                wait = backoff(attempts, initial_s=self._initial, max_s=self._max)
                conn.execute(
                    "UPDATE alert_outbox SET attempts = ?, next_attempt = ?, last_error = ? "
                    "WHERE id = ?",
                    (attempts, now + wait, error, item.id),
                )
        if ok:
            _log.info("alert_sent", key=item.alert.key, attempts=attempts)
        else:
            _log.warning(
                "alert_send_failed",
                key=item.alert.key,
                attempts=attempts,
                retry_in_s=backoff(attempts, initial_s=self._initial, max_s=self._max),
                error=error,
            )
