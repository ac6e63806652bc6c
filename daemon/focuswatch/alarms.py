"""Alarms: conditions of the service that last, each told once when it begins and once
when it ends, and shown while it lasts (the Now page, ``/healthz``, ``/metrics``,
``focuswatch status``).

- ``stall``: with a section open, no new tile for ``alerts.stall_minutes``;
- ``disk_low``: the state folder's disk under ``alerts.disk_min_free_mb`` free;
- ``behind``: scoring falls behind: for ``alerts.behind_minutes`` the tiles waiting
  kept growing, or would take longer than that to clear at the rate they are scored;
- ``endpoint_failing``: an alert endpoint held an alert with errors and took none for
  ``alerts.endpoint_failing_minutes`` (told to the other endpoints: this one cannot
  hear it);
- ``scheduler_lost``: the Dask scheduler unreachable for ``alerts.scheduler_lost_minutes``.

``AlarmWatch`` decides from what the ledger holds (the backlog, results, deliveries,
the executor's description the service writes to ``meta``) at the times it is given,
so a test moves an injected clock instead of waiting. ``focuswatch.alerts`` turns what
it decides into messages through the outbox and writes the alarms that last to
``meta`` (``META_KEY``), where the console and ``status`` read them. Only the stall is
news rather than ill health: the others make ``/healthz`` answer 503.
"""

from __future__ import annotations

import collections
import enum
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focuswatch import ledger
from focuswatch.config import AlertsConfig
from focuswatch.outbox import endpoint_trouble

__all__ = [
    "META_KEY",
    "RATE_WINDOW_S",
    "Alarm",
    "AlarmName",
    "AlarmWatch",
    "Episode",
    "Notice",
    "from_meta",
    "to_meta",
]

META_KEY = "alarms"
# Scoring and arrival rates, and the backlog's growth, are measured over this window.
RATE_WINDOW_S = 300.0


class AlarmName(enum.StrEnum):
    STALL = "stall"
    DISK_LOW = "disk_low"
    BEHIND = "behind"
    ENDPOINT_FAILING = "endpoint_failing"
    SCHEDULER_LOST = "scheduler_lost"

    @property
    def unhealthy(self) -> bool:
        """Whether ``/healthz`` answers 503 while it lasts (a stopped microscope is
        the acquisition's news, not the service's ill health)."""
        return self is not AlarmName.STALL


@dataclass(frozen=True)
class Alarm:
    """One alarm that lasts: what, about whom (an endpoint's redacted name, or ''),
    since when it was told, and one line for people."""

    name: AlarmName
    subject: str
    since: float
    line: str


@dataclass(frozen=True)
class Notice:
    """A message to send: an alarm that began (``raised``) or ended.

    ``not_to`` is the id of an endpoint that must not be sent it (it is about that
    endpoint, which is down).
    """

    alarm: Alarm
    raised: bool
    key: str
    title: str
    body: str
    not_to: str | None = None

    @property
    def severity(self) -> str:
        return "warning" if self.raised else "success"


def to_meta(alarms: Sequence[Alarm]) -> list[dict[str, Any]]:
    return [
        {"name": str(a.name), "subject": a.subject, "since": a.since, "line": a.line}
        for a in alarms
    ]


def from_meta(value: Any) -> list[Alarm]:
    """The alarms as stored (``to_meta``); anything unreadable is left out."""
    out = []
    for item in value if isinstance(value, list) else []:
        try:
            out.append(
                Alarm(
                    AlarmName(item["name"]),
                    str(item.get("subject", "")),
                    float(item["since"]),
                    str(item["line"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


class Episode:
    """One condition's episode: held since when, told or not.

    It is told once it has held for ``hold_s`` (``step`` answers True), and over once
    ``over`` holds after it was told (``step`` answers False); None: nothing to tell.
    The end has its own test, so that a condition at its edge does not flap.
    """

    def __init__(self, told: Alarm | None = None) -> None:
        self.holding_since: float | None = None
        self.told = told

    def step(self, *, holds: bool, over: bool, now: float, hold_s: float) -> bool | None:
        if self.told is not None:
            if over:
                self.holding_since = None
                return False
            return None
        if not holds:
            self.holding_since = None
            return None
        if self.holding_since is None:
            self.holding_since = now
        return True if now - self.holding_since >= hold_s else None

    def begin(
        self, alarm: Alarm, key: str, title: str, body: str, *, not_to: str | None = None
    ) -> list[Notice]:
        """Told: its message, keyed ``key:since`` (queued once, whatever restarts)."""
        self.told = alarm
        return [Notice(alarm, True, f"{key}:{alarm.since:.0f}", title, body, not_to)]

    def end(self, key: str, title: str, body: str) -> list[Notice]:
        """Over: its message, keyed by the episode it ends."""
        told = self.told
        if told is None:
            raise RuntimeError("an episode that was not told cannot end")
        self.told = None
        return [Notice(told, False, f"{key}:{told.since:.0f}", title, body)]


def _minutes(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "without end at this rate"
    m = max(0.0, seconds) / 60.0
    return f"{m:.0f} min" if m < 120 else f"{m / 60:.1f} h"


@dataclass(frozen=True)
class _Endpoint:
    id: str
    name: str


class AlarmWatch:
    """Decides the behind, endpoint and scheduler alarms at each ``check`` (every
    ``alerts.HEALTH_EVERY_S``); the stall and disk alarms are decided by the alert sink,
    which reports them with ``note``."""

    def __init__(self, acfg: AlertsConfig, *, endpoints: Sequence[tuple[str, str]] = ()) -> None:
        self._cfg = acfg
        self._endpoints = [_Endpoint(i, n) for i, n in endpoints]
        self._behind = Episode()
        self._scheduler = Episode()
        self._failing: dict[str, Episode] = {e.id: Episode() for e in self._endpoints}
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._others: dict[AlarmName, Alarm] = {}  # stall, disk: as the sink reports them
        self._loaded = False

    # -- what lasts -----------------------------------------------------------------

    def active(self) -> list[Alarm]:
        episodes = [self._behind, self._scheduler, *self._failing.values()]
        told = [e.told for e in episodes if e.told is not None]
        return sorted([*self._others.values(), *told], key=lambda a: (a.since, a.name))

    def note(self, name: AlarmName, alarm: Alarm | None) -> None:
        """The stall or disk alarm as the sink decided it (None: not now)."""
        if alarm is None:
            self._others.pop(name, None)
        else:
            self._others[name] = alarm

    def restore(self, stored: Sequence[Alarm]) -> None:
        """The alarms told before a restart: nothing is told twice (once, at start)."""
        if self._loaded:
            return
        self._loaded = True
        id_of = {e.name: e.id for e in self._endpoints}
        cfg = self._cfg
        # An alarm turned off since, or about an endpoint no longer configured, ends
        # with the restart, untold.
        for a in stored:
            if a.name is AlarmName.BEHIND and cfg.behind_minutes > 0:
                self._behind.told = a
            elif a.name is AlarmName.SCHEDULER_LOST and cfg.scheduler_lost_minutes > 0:
                self._scheduler.told = a
            elif (
                a.name is AlarmName.ENDPOINT_FAILING
                and a.subject in id_of
                and cfg.endpoint_failing_minutes > 0
            ):
                self._failing[id_of[a.subject]].told = a

    # -- deciding -------------------------------------------------------------------

    def check(self, conn: sqlite3.Connection, now: float, executor: Any) -> list[Notice]:
        """The notices due now; ``executor`` is the service's description of it (meta)."""
        out: list[Notice] = []
        out += self._check_behind(conn, now)
        out += self._check_scheduler(executor, now)
        for e in self._endpoints:
            out += self._check_endpoint(conn, e, now)
        return out

    def _check_behind(self, conn: sqlite3.Connection, now: float) -> list[Notice]:
        minutes = self._cfg.behind_minutes
        if minutes <= 0:
            return []
        backlog = ledger.backlog(conn)
        scored = ledger.scored_since(conn, now - RATE_WINDOW_S)
        per_min = scored / (RATE_WINDOW_S / 60.0)
        self._samples.append((now, backlog))
        while len(self._samples) > 1 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        then_t, then = self._samples[0]
        growing = then_t <= now - RATE_WINDOW_S and backlog > then
        clear_s = backlog / per_min * 60.0 if per_min > 0 else math.inf
        holds = backlog > 0 and (growing or clear_s > minutes * 60.0)
        caught_up = backlog <= per_min  # at most a minute's work waits
        step = self._behind.step(holds=holds, over=caught_up, now=now, hold_s=minutes * 60.0)
        if step is None:
            return []
        if step:
            why = "has kept growing" if growing else "is more than the service scores in"
            alarm = Alarm(
                AlarmName.BEHIND,
                "",
                now,
                f"scoring falls behind: {backlog} tiles waiting, {per_min:.1f} scored/min, "
                f"about {_minutes(clear_s)} to clear",
            )
            return self._behind.begin(
                alarm,
                "behind",
                f"scoring falls behind: {backlog} tiles waiting",
                f"For {minutes:g} min the tiles waiting to be judged {why} "
                f"{minutes:g} min (alerts.behind_minutes): now {backlog} waiting, "
                f"{per_min:.1f} tiles/min scored over the last 5 min, about "
                f"{_minutes(clear_s)} to clear. Verdicts and alerts come that late: "
                "more workers, scoring.mode = 'fast', a GPU or a cluster would keep up.",
            )
        return self._behind.end(
            "caught-up",
            "scoring has caught up",
            f"Scoring has caught up: {backlog} tiles waiting, {per_min:.1f} tiles/min "
            "scored over the last 5 min.",
        )

    def _check_scheduler(self, executor: Any, now: float) -> list[Notice]:
        minutes = self._cfg.scheduler_lost_minutes
        desc = executor if isinstance(executor, Mapping) else {}
        if minutes <= 0 or desc.get("backend") != "dask":
            if desc.get("backend") not in (None, "unknown", "dask"):
                self._scheduler = Episode()  # not on a cluster (any more): nothing lasts
            return []
        address = str(desc.get("address", "?"))
        state = str(desc.get("state", ""))
        step = self._scheduler.step(
            holds=state != "connected", over=state == "connected", now=now, hold_s=minutes * 60.0
        )
        if step is None:
            return []
        if step:
            local = desc.get("on_unreachable") == "fallback"
            meanwhile = (
                "tiles are scored on this machine meanwhile (slower)"
                if local
                else "tiles wait for it (cluster.on_unreachable = 'wait'): nothing is scored"
            )
            alarm = Alarm(
                AlarmName.SCHEDULER_LOST,
                address,
                now,
                f"the Dask scheduler at {address} is unreachable ({meanwhile})",
            )
            return self._scheduler.begin(
                alarm,
                "scheduler-lost",
                f"the Dask scheduler at {address} is unreachable",
                f"No connection to the Dask scheduler at {address} for {minutes:g} min "
                f"(alerts.scheduler_lost_minutes); {meanwhile}. Nothing is lost: tiles "
                "go to the cluster again once it answers.",
            )
        return self._scheduler.end(
            "scheduler-back",
            f"the Dask scheduler at {address} is back",
            f"Connected to the Dask scheduler at {address} again.",
        )

    def _check_endpoint(self, conn: sqlite3.Connection, e: _Endpoint, now: float) -> list[Notice]:
        minutes = self._cfg.endpoint_failing_minutes
        if minutes <= 0:
            return []
        trouble = endpoint_trouble(conn, e.id)
        oldest, error, last_ok = trouble.failing_since, trouble.last_error, trouble.last_ok
        hold_s = minutes * 60.0
        episode = self._failing[e.id]
        holds = (
            oldest is not None
            and now - float(oldest) >= hold_s
            and (last_ok is None or now - float(last_ok) >= hold_s)
        )
        over = oldest is None or (
            episode.told is not None and last_ok is not None and last_ok >= episode.told.since
        )
        step = episode.step(holds=holds, over=over, now=now, hold_s=0.0)
        if step is None:
            return []
        if step:
            alarm = Alarm(
                AlarmName.ENDPOINT_FAILING,
                e.name,
                now,
                f"alert endpoint {e.name} has taken no alert for {minutes:g} min",
            )
            return episode.begin(
                alarm,
                f"endpoint-down:{e.id}",
                f"alert endpoint {e.name} fails",
                f"The alert endpoint {e.name} has taken no alert for {minutes:g} min "
                f"(alerts.endpoint_failing_minutes); the latest error: {error or '?'}. "
                "Its alerts wait in the outbox and go to it once it answers; this "
                "message goes to the other endpoints only.",
                not_to=e.id,
            )
        return episode.end(
            f"endpoint-up:{e.id}",
            f"alert endpoint {e.name} takes alerts again",
            f"The alert endpoint {e.name} takes alerts again; what waited for it is "
            "being delivered.",
        )
