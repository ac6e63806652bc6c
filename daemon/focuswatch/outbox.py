"""The durable alert outbox: each alert is queued once, and delivered to each endpoint once.

An alert enters the ``alert_outbox`` table in the same transaction as the state change
that caused it, under a dedupe key (``tile:{version_id}``, ``digest:{section}:{n}``,
``summary:{section}``; ``INSERT … ON CONFLICT DO NOTHING``), so a verdict replayed after a
restart never queues it twice.

Delivery is tracked per endpoint (one apprise URL is one endpoint): ``alert_deliveries``
holds one row per (alert, endpoint) with that endpoint's attempts, next attempt and
last error. Each endpoint has its own sender thread, so a dead or slow endpoint (or
apprise's 5.5 s pause between mails) never delays the others, and a failure is retried
to that endpoint only, with exponential backoff between ``alerts.retry_initial_s`` and
``alerts.retry_max_s``. An alert is done (``alert_outbox.sent``) once every configured
endpoint has it. Endpoints are known by a stable id (a hash of the URL: the ledger
never holds a secret) and shown by their redacted URL.

Delivery is at least once per endpoint, not exactly once: a delivery is marked sent
only after the endpoint accepted it, so a crash (or a failed commit) in the instant
between the two sends it to that endpoint again on the next start. An endpoint that
takes the message but answers too late (past ``alerts.send_timeout_s``) cannot be told
from one that never got it, and is retried too. Nothing here blocks scoring: each
thread has its own ledger connection and the service only ever inserts rows.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from focuswatch.errors import StateError
from focuswatch.ledger import Ledger

__all__ = [
    "SEVERITIES",
    "Alert",
    "DeliveryError",
    "Endpoint",
    "EndpointTrouble",
    "Notifier",
    "Pending",
    "Sender",
    "backoff",
    "endpoint_trouble",
    "enqueue",
    "failing_endpoints",
    "pending_count",
    "withhold",
]

_log = structlog.get_logger("focuswatch.alerts")

# How bad the news is; each maps to one of apprise's notify types.
SEVERITIES = ("info", "success", "warning", "failure")


#: Tries per endpoint of a health message sent from memory (``Sender.tell_now``).
URGENT_TRIES = 5


@dataclass(frozen=True)
class Alert:
    """One message for the operator; ``key`` makes it unique in the outbox (queued once).

    ``details`` is the structured form of the message (verdict, section, tile, stage
    position, score, retake id, …): JSON endpoints receive it as an object, see README.
    """

    key: str
    kind: str  # tile, digest, summary
    section: str | None
    title: str
    body: str
    tile_path: str | None = None  # a thumbnail of this tile is attached where possible
    severity: str = "info"  # one of SEVERITIES
    details: Mapping[str, Any] = field(default_factory=dict)
    tile_name: str | None = None  # names the thumbnail


@dataclass(frozen=True)
class Pending:
    """A delivery still to make: an outbox row and how often this endpoint failed it."""

    id: int
    alert: Alert
    attempts: int


class Notifier(Protocol):
    """Delivers one alert; False (or an exception) means try again later.

    A ``DeliveryError`` carries the reason the service gave (it is logged and kept).
    """

    def __call__(self, alert: Alert) -> bool: ...


class DeliveryError(Exception):
    """A send that failed, with the notification service's reason."""


@dataclass(frozen=True)
class Endpoint:
    """Where alerts go: a stable id (kept in the ledger), a redacted name (for logs)."""

    id: str
    name: str
    notify: Notifier


def _finite(value: Any) -> Any:
    """``value`` fit for strict JSON: NaN and infinities (a broken score) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def enqueue(conn: sqlite3.Connection, alert: Alert, *, now: float) -> bool:
    """Queue an alert inside the caller's transaction; False if its key was queued before."""
    if alert.severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {alert.severity!r}")
    details = dict(alert.details)
    if alert.tile_name is not None:
        details.setdefault("tile", alert.tile_name)
    cur = conn.execute(
        "INSERT INTO alert_outbox (dedupe_key, kind, section, title, body, tile_path, created,"
        " next_attempt, severity, details) VALUES (?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (dedupe_key) DO NOTHING",
        (
            alert.key,
            alert.kind,
            alert.section,
            alert.title,
            alert.body,
            alert.tile_path,
            now,
            now,
            alert.severity,
            json.dumps(_finite(details), ensure_ascii=False, allow_nan=False, default=str),
        ),
    )
    return cur.rowcount == 1


def withhold(
    conn: sqlite3.Connection,
    key: str,
    endpoint: Endpoint,
    *,
    endpoint_ids: Sequence[str],
    now: float,
) -> None:
    """Never send the alert ``key`` to ``endpoint`` (it is about that endpoint, which is
    down): recorded as its delivery with no attempt, so the alert is done once every
    other endpoint has it. Inside the caller's transaction, after ``enqueue``."""
    row = conn.execute("SELECT id FROM alert_outbox WHERE dedupe_key = ?", (key,)).fetchone()
    if row is None:
        return
    conn.execute(
        "INSERT INTO alert_deliveries (outbox_id, endpoint, endpoint_name, attempts,"
        " next_attempt, sent, last_error) VALUES (?,?,?,0,?,?,?)"
        " ON CONFLICT (outbox_id, endpoint) DO NOTHING",
        (row[0], endpoint.id, endpoint.name, now, now, "withheld: it is about this endpoint"),
    )
    _mark_done(conn, [int(row[0])], endpoint_ids, now)


def pending_count(ledger: Ledger) -> int:
    """Alerts not delivered to every endpoint yet (for ``status``)."""
    row = ledger.connection.execute(
        "SELECT count(*) FROM alert_outbox WHERE sent IS NULL"
    ).fetchone()
    return int(row[0])


def failing_endpoints(ledger: Ledger) -> list[dict[str, Any]]:
    """Endpoints with alerts they failed to take: name (redacted), how many, the most
    attempts, the latest error and the next try (for ``status``)."""
    rows = ledger.connection.execute(
        "SELECT d.endpoint_name, count(*), max(d.attempts), d.last_error, min(d.next_attempt) "
        "FROM alert_deliveries d JOIN alert_outbox o ON o.id = d.outbox_id "
        "WHERE o.sent IS NULL AND d.sent IS NULL GROUP BY d.endpoint ORDER BY d.endpoint_name"
    ).fetchall()
    keys = ("endpoint", "waiting", "attempts", "last_error", "next_attempt")
    return [dict(zip(keys, r, strict=True)) for r in rows]


@dataclass(frozen=True)
class EndpointTrouble:
    """How one endpoint has been doing, for the endpoint-failing alarm."""

    #: When the oldest alert it failed to take (and still owes) was queued; None if none.
    failing_since: float | None
    last_error: str | None
    #: When it last took a delivery (one withheld from it does not count).
    last_ok: float | None


def endpoint_trouble(conn: sqlite3.Connection, endpoint: str) -> EndpointTrouble:
    """How ``endpoint`` (its id) is doing, read in the caller's transaction."""
    oldest, error = conn.execute(
        "SELECT min(o.created), (SELECT d2.last_error FROM alert_deliveries d2 "
        "WHERE d2.endpoint = ? AND d2.sent IS NULL AND d2.last_error IS NOT NULL "
        "ORDER BY d2.next_attempt DESC LIMIT 1) FROM alert_deliveries d "
        "JOIN alert_outbox o ON o.id = d.outbox_id WHERE d.endpoint = ? "
        "AND d.sent IS NULL AND d.last_error IS NOT NULL AND o.sent IS NULL",
        (endpoint, endpoint),
    ).fetchone()
    # attempts = 0 is a delivery withheld from it, not one it took.
    (last_ok,) = conn.execute(
        "SELECT max(sent) FROM alert_deliveries WHERE endpoint = ? AND attempts > 0",
        (endpoint,),
    ).fetchone()
    return EndpointTrouble(oldest, error, last_ok)


def backoff(attempts: int, *, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: initial, 2×, 4×, … up to max."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    return float(min(max_s, initial_s * 2.0 ** min(attempts - 1, 60)))


def _alert(row: Sequence[Any]) -> Alert:
    key, kind, section, title, body, tile_path, severity, details = row
    data = json.loads(details) if details else {}
    return Alert(
        key=key,
        kind=kind,
        section=section,
        title=title,
        body=body,
        tile_path=tile_path,
        severity=severity,
        details=data,
        tile_name=data.get("tile"),
    )


def _due(ledger: Ledger, endpoint: str, now: float, limit: int) -> list[Pending]:
    """This endpoint's undelivered alerts whose (own) next attempt has come, oldest first.

    A plain read (the thread's own connection): no write lock each round. An alert
    this endpoint never tried has no delivery row yet and is due from its creation.
    """
    rows = ledger.connection.execute(
        "SELECT o.id, o.dedupe_key, o.kind, o.section, o.title, o.body, o.tile_path, "
        "o.severity, o.details, coalesce(d.attempts, 0) FROM alert_outbox o "
        "LEFT JOIN alert_deliveries d ON d.outbox_id = o.id AND d.endpoint = ? "
        "WHERE o.sent IS NULL AND d.sent IS NULL "
        "AND coalesce(d.next_attempt, o.next_attempt) <= ? "
        "ORDER BY coalesce(d.next_attempt, o.next_attempt), o.id LIMIT ?",
        (endpoint, now, limit),
    ).fetchall()
    return [Pending(r[0], _alert(r[1:9]), r[9]) for r in rows]


def _mark_done(
    conn: sqlite3.Connection, outbox_ids: Sequence[int], endpoints: Sequence[str], now: float
) -> None:
    """Set ``sent`` on the alerts every configured endpoint has now (one transaction)."""
    marks = ", ".join("?" * len(endpoints))
    for oid in outbox_ids:
        conn.execute(
            "UPDATE alert_outbox SET sent = ? WHERE id = ? AND sent IS NULL AND "
            f"(SELECT count(*) FROM alert_deliveries WHERE outbox_id = ? AND sent IS NOT NULL "
            f"AND endpoint IN ({marks})) = ?",
            (now, oid, oid, *endpoints, len(endpoints)),
        )


class _EndpointSender:
    """One endpoint's thread: delivers its due alerts, records each outcome."""

    def __init__(self, owner: Sender, endpoint: Endpoint, index: int) -> None:
        self.endpoint = endpoint
        self._owner = owner
        self.wake = threading.Event()
        self._cond = threading.Condition()
        self._rounds_started = 0
        self._idle_round = 0
        # Outcomes not yet written to the ledger (it is busy, or its disk is full):
        # outbox id -> (sent, attempts, next attempt, error, when). Each round writes
        # them before it sends anything (only a restart forgets them).
        self._unrecorded: dict[int, tuple[bool, int, float, str | None, float]] = {}
        # Health messages that cannot wait for the ledger (its disk is full): sent from
        # memory, before anything else, a few tries each; never recorded.
        self.urgent: queue.SimpleQueue[tuple[Alert, int]] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._run, name=f"focuswatch-alerts-{index}", daemon=True
        )

    def target_round(self) -> int:
        with self._cond:
            return self._rounds_started + 1

    def wait_idle(self, target: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._idle_round >= target, timeout=timeout)

    def _open(self) -> Ledger | None:
        """The thread's own ledger connection; None if stopped before it could open."""
        owner = self._owner
        while not owner.stopping.is_set():
            try:
                return owner.ledger_type.open(owner.state_dir, clock=owner.clock)
            except Exception as exc:  # the state folder is unusable now: try again later
                _log.error("alert_outbox_error", endpoint=self.endpoint.name, error=str(exc))
                owner.stopping.wait(max(owner.poll_s, 1.0))
        return None

    def _run(self) -> None:
        owner = self._owner
        ledger = self._open()
        if ledger is None:
            return
        try:
            self._reconcile(ledger)
            while not owner.stopping.is_set():
                with self._cond:
                    self._rounds_started += 1
                    this_round = self._rounds_started
                self._send_urgent()
                try:
                    # Outcomes first: while the ledger refuses them, nothing is sent
                    # (an alert whose delivery is not recorded would go out again).
                    self._record_waiting(ledger)
                    due = _due(ledger, self.endpoint.id, owner.clock(), owner.batch)
                    for item in due:
                        if owner.stopping.is_set():
                            break
                        self._deliver(ledger, item)
                except (sqlite3.Error, StateError) as exc:  # busy, full or gone: next round
                    _log.error("alert_outbox_error", endpoint=self.endpoint.name, error=str(exc))
                    due = []
                if not due:
                    with self._cond:
                        self._idle_round = this_round
                        self._cond.notify_all()
                    self.wake.wait(owner.poll_s)
                    self.wake.clear()
        finally:
            # A send whose outcome the ledger refused a moment ago: one last try to record
            # it, or the next start would send it again (a plain stop is no crash).
            with contextlib.suppress(sqlite3.Error, StateError):
                self._record_waiting(ledger)
            ledger.close()

    def _send_urgent(self) -> None:
        retry: list[tuple[Alert, int]] = []
        while True:
            try:
                alert, tries = self.urgent.get_nowait()
            except queue.Empty:
                break
            try:
                ok = bool(self.endpoint.notify(alert))
                error = None if ok else "the notification service did not accept it"
            except Exception as exc:  # DeliveryError or a notifier bug: logged, not fatal
                ok, error = False, str(exc)
            if ok:
                _log.info("alert_sent", key=alert.key, endpoint=self.endpoint.name, attempts=1)
            else:
                _log.warning(
                    "alert_send_failed", key=alert.key, endpoint=self.endpoint.name, error=error
                )
                if tries + 1 < URGENT_TRIES:
                    retry.append((alert, tries + 1))
        for item in retry:  # next round (the thread wakes every poll_s)
            self.urgent.put(item)

    def _reconcile(self, ledger: Ledger) -> None:
        """Alerts that every endpoint now configured has (one was removed) are done.

        A plain read first: the write lock is taken only when there is such an alert.
        """
        ids = self._owner.endpoint_ids
        marks = ", ".join("?" * len(ids))
        try:
            done = [
                int(r[0])
                for r in ledger.connection.execute(
                    "SELECT o.id FROM alert_outbox o WHERE o.sent IS NULL AND "
                    "(SELECT count(*) FROM alert_deliveries d WHERE d.outbox_id = o.id "
                    f"AND d.sent IS NOT NULL AND d.endpoint IN ({marks})) = ?",
                    (*ids, len(ids)),
                ).fetchall()
            ]
            if done:
                with ledger.transaction() as conn:
                    _mark_done(conn, done, ids, self._owner.clock())
        except (sqlite3.Error, StateError) as exc:
            _log.error("alert_outbox_error", endpoint=self.endpoint.name, error=str(exc))

    def _deliver(self, ledger: Ledger, item: Pending) -> None:
        owner = self._owner
        try:
            ok = bool(self.endpoint.notify(item.alert))
            error = None if ok else "the notification service did not accept it"
        except DeliveryError as exc:
            ok, error = False, str(exc)
        except Exception as exc:  # a notifier bug must not kill the thread
            ok, error = False, f"{type(exc).__name__}: {exc}"
        now = owner.clock()
        attempts = item.attempts + 1
        wait = backoff(attempts, initial_s=owner.initial_s, max_s=owner.max_s)
        self._unrecorded[item.id] = (ok, attempts, now + wait, error, now)
        if ok:
            _log.info(
                "alert_sent", key=item.alert.key, endpoint=self.endpoint.name, attempts=attempts
            )
        else:
            _log.warning(
                "alert_send_failed",
                key=item.alert.key,
                endpoint=self.endpoint.name,
                attempts=attempts,
                retry_in_s=wait,
                error=error,
            )
        self._record_waiting(ledger)

    def _record_waiting(self, ledger: Ledger) -> None:
        """Write the outcomes still waiting; raises sqlite3.Error if the ledger refuses."""
        owner = self._owner
        for oid, (ok, attempts, next_attempt, error, at) in list(self._unrecorded.items()):
            with ledger.transaction() as conn:
                conn.execute(
                    "INSERT INTO alert_deliveries (outbox_id, endpoint, endpoint_name, attempts,"
                    " next_attempt, sent, last_error) VALUES (?,?,?,?,?,?,?)"
                    " ON CONFLICT (outbox_id, endpoint) DO UPDATE SET"
                    " endpoint_name = excluded.endpoint_name, attempts = excluded.attempts,"
                    " next_attempt = excluded.next_attempt, sent = excluded.sent,"
                    " last_error = excluded.last_error",
                    (
                        oid,
                        self.endpoint.id,
                        self.endpoint.name,
                        attempts,
                        next_attempt,
                        at if ok else None,
                        error,
                    ),
                )
                conn.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    (None if ok else f"{self.endpoint.name}: {error}", oid),
                )
                if ok:
                    _mark_done(conn, [oid], owner.endpoint_ids, at)
            del self._unrecorded[oid]


class Sender:
    """One background thread per endpoint delivering due outbox rows.

    Nothing runs until ``start()``; ``stop()`` ends every thread (bounded wait).
    """

    def __init__(
        self,
        state_dir: Path,
        endpoints: Sequence[Endpoint],
        *,
        clock: Callable[[], float] = time.time,
        retry_initial_s: float,
        retry_max_s: float,
        poll_s: float = 1.0,
        batch: int = 20,
        ledger_type: type[Ledger] = Ledger,
    ) -> None:
        if retry_initial_s <= 0 or retry_max_s < retry_initial_s:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s")
        if not endpoints:
            raise ValueError("a sender needs at least one endpoint")
        ids = [e.id for e in endpoints]
        if len(set(ids)) != len(ids):
            raise ValueError("endpoint ids must be unique")
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.initial_s = retry_initial_s
        self.max_s = retry_max_s
        self.poll_s = poll_s
        self.batch = batch
        self.endpoint_ids = tuple(ids)
        self.ledger_type = ledger_type  # each thread opens its own connection with it
        self.stopping = threading.Event()
        self._workers = [_EndpointSender(self, e, i) for i, e in enumerate(endpoints)]
        self._started = False

    @property
    def endpoints(self) -> list[Endpoint]:
        return [w.endpoint for w in self._workers]

    def start(self) -> None:
        """Start one thread per endpoint (once)."""
        if self._started:
            return
        self._started = True
        for w in self._workers:
            w.thread.start()

    def tell_now(self, alert: Alert) -> None:
        """Send ``alert`` to every endpoint from memory, not through the outbox.

        For health messages while the ledger cannot be written: not durable (a restart
        forgets it), tried ``URGENT_TRIES`` times per endpoint, and never waits behind
        the outbox.
        """
        for w in self._workers:
            w.urgent.put((alert, 0))
        self.kick()

    def kick(self) -> None:
        """Look for due alerts now (new ones queued, or the clock moved)."""
        for w in self._workers:
            w.wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every endpoint had a round with nothing due (True), or ``timeout``."""
        targets = [(w, w.target_round()) for w in self._workers]
        self.kick()
        deadline = time.monotonic() + timeout
        return all(
            w.wait_idle(target, max(0.0, deadline - time.monotonic())) for w, target in targets
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current sends; undelivered alerts stay in the outbox."""
        self.stopping.set()
        self.kick()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            if w.thread.is_alive():
                w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                _log.warning(
                    "alert_sender_still_busy",
                    endpoint=w.endpoint.name,
                    detail="a send is still in progress; it is retried at the next start",
                )
