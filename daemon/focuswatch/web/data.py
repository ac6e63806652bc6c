"""What the console shows, read from the ledger through its own read-only connection.

The queries are the ledger's (``focuswatch.readmodel``: typed, frozen answers); this
module turns them into what the pages show (health in one line, rates, the time to
clear the backlog, the wafer's sections) and keeps each answer until the ledger
changes: SQLite's ``data_version`` moves when the service commits, so polls of an
unchanged state cost one ``PRAGMA``, and a value that depends on the clock too (a
rate over the last 5 minutes) is recomputed at most once a second.
The connection is opened ``mode=ro``; the ledger is SQLite WAL, so these reads never
block the service's writer. The two writes the page can make (dismiss and reopen a
retake entry) are ``focuswatch.retakes``' own, through a short-lived writable
connection in ``Console.change_retake``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from focuswatch import alarms as alarm_state
from focuswatch import retakes as retake_list
from focuswatch.ledger import STATES, Ledger, section_index
from focuswatch.readmodel import (
    Delivery,
    EndpointState,
    HistoryPoint,
    OutboxItem,
    Rates,
    ReadModel,
    TileView,
)
from focuswatch.status import EXECUTOR_OWN_RATES, STALE_HEARTBEAT_S
from focuswatch.text import printable
from focuswatch.verdict import grid_cell

__all__ = [
    "VERDICTS",
    "Console",
    "Facts",
    "Health",
    "MapCell",
    "clear_in",
    "expected_from_previous",
    "redact_text",
]

T = TypeVar("T")

# No new tile for this long: the Now line says the microscope may have stopped writing
# (a warning on the page, not a /healthz failure: the service itself is fine).
QUIET_WARNING_S = 30 * 60.0
# Verdict names in the order the legend lists them; 'pending' is a tile not judged yet.
VERDICTS = ("in_focus", "partly_out_of_focus", "out_of_focus", "empty", "unreadable", "pending")
_RETAKE_VERDICTS = ("out_of_focus", "partly_out_of_focus")
# Buckets of the scoring-time and close-to-verdict histograms (seconds).
TIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


_USERINFO = re.compile(r"://([^:/@\s]*):([^@/\s]+)@")


def _mask_userinfo(text: str) -> str:
    """A URL's password masked, the rest kept (a redacted endpoint name, an address)."""
    return _USERINFO.sub(r"://\1:***@", printable(text))


def redact_text(text: str | None) -> str:
    """Text for a page with every URL in it reduced to its scheme (error strings may hold one)."""
    if not text:
        return ""
    out = []
    for word in text.split(" "):
        out.append(word.split("://", 1)[0] + "://(redacted)" if "://" in word else word)
    return printable(" ".join(out))


def expected_from_previous(sections: Sequence[dict[str, Any]]) -> list[int | None]:
    """How many tiles each section should have: the grid positions of the section
    before it (None for the first: nothing to go by). Sections in wafer order, each
    with its ``cells`` ({(row, col): tile}); ``Console(expected=...)`` takes another
    rule (a microscope's own layout)."""
    out: list[int | None] = []
    before: int | None = None
    for s in sections:
        out.append(before or None)
        before = len(s["cells"])
    return out


@dataclass(frozen=True)
class Health:
    """Healthy or not, and why, in one line."""

    ok: bool
    line: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MapCell:
    """One tile on the wafer map: what its square shows and links to."""

    id: int
    name: str
    verdict: str
    state: str
    score: float | None
    #: Score against its baseline (None before there is a baseline).
    ratio: float | None


@dataclass(frozen=True)
class Facts:
    """What the Now page, ``/healthz`` and ``/metrics`` read, at one ledger version."""

    counts: dict[str, int]
    last_tile: tuple[str, float] | None
    meta: dict[str, tuple[Any, float]]
    alerts_waiting: int
    array_backend: str | None
    generation: str


def clear_in(backlog: int, arrive: float, score: float) -> str:
    """How long the backlog takes to clear at the current rates (tiles per minute)."""
    if backlog == 0:
        return "nothing waiting"
    if score <= 0.0:
        return "not clearing: nothing scored in the last 5 minutes"
    if score <= arrive:
        # All at once (a wafer copied in) also reads so: say what scoring alone needs.
        return (
            f"not clearing: tiles arrive as fast as they are scored, or faster; "
            f"{_duration(backlog / score * 60.0)} of scoring if no more arrive"
        )
    return f"about {_duration(backlog / (score - arrive) * 60.0)}"


class Console:
    """The read side of the console: one read-only ledger connection, used under a lock,
    and each answer kept until the ledger changes."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        started: float | None = None,
        expected: Callable[[Sequence[dict[str, Any]]], list[int | None]] = expected_from_previous,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._expected = expected
        self.clock = clock
        self.started = clock() if started is None else started
        self._ledger = Ledger.open(self.state_dir, readonly=True, clock=clock)
        self._reads = ReadModel(self._ledger)
        self._kept: dict[Hashable, tuple[int, Hashable, Any]] = {}
        self._kept_lock = threading.Lock()
        # section → (its fingerprint, what the wafer map shows of it): see _wafer.
        self._sections: dict[str, tuple[str, dict[str, Any]]] = {}

    def close(self) -> None:
        self._ledger.close()

    # -- answers kept per ledger change --------------------------------------------

    def data_version(self) -> int:
        """Moves whenever the service (or a dismiss) committed: what a kept answer is
        checked against. One ``PRAGMA``, the whole cost of a poll of unchanged state."""
        return self._reads.data_version()

    def _keep(self, key: Hashable, compute: Callable[[], T], *, stamp: Hashable = None) -> T:
        """``compute()``, or what it gave at the same data version (and ``stamp``: the
        second, for what depends on the clock too). Reading the version before
        computing keeps it safe: a commit in between is seen at the next call."""
        version = self.data_version()
        with self._kept_lock:
            hit = self._kept.get(key)
        if hit is not None and hit[0] == version and hit[1] == stamp:
            return hit[2]  # type: ignore[no-any-return]
        value = compute()
        with self._kept_lock:
            self._kept[key] = (version, stamp, value)
        return value

    def facts(self) -> Facts:
        """The small figures, read together once per ledger version (a poll of an
        unchanged ledger reads none of them again)."""

        def compute() -> Facts:
            last = self._reads.last_tile()
            return Facts(
                counts=self._reads.state_counts(STATES),
                last_tile=None if last is None else (printable(last.name), last.first_seen),
                meta=self._reads.all_meta(),
                alerts_waiting=self._reads.alerts_waiting(),
                array_backend=self._reads.last_array_backend(),
                generation=self._reads.generation(),
            )

        return self._keep("facts", compute)

    def meta(self, key: str) -> tuple[Any, float] | None:
        return self.facts().meta.get(key)

    # -- live updates --------------------------------------------------------------

    def generation(self) -> str:
        """Changes whenever something a page shows changed (the pages poll it)."""
        return self.facts().generation

    # -- the Now page --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return dict(self.facts().counts)

    def rates(self, now: float, window_s: float) -> Rates:
        """Tiles per minute arriving and scored over the window (``ReadModel.rates``)."""
        return self._keep(
            ("rates", window_s), lambda: self._reads.rates(now, window_s), stamp=int(now)
        )

    def last_tile(self) -> tuple[str, float] | None:
        return self.facts().last_tile

    def alarms(self, facts: Facts | None = None) -> list[alarm_state.Alarm]:
        """The alarms that last, as the service last wrote them (``focuswatch.alarms``)."""
        stored = (facts or self.facts()).meta.get(alarm_state.META_KEY)
        return [] if stored is None else alarm_state.from_meta(stored[0])

    def alerts_waiting(self) -> int:
        return self.facts().alerts_waiting

    def backlog(self, counts: dict[str, int] | None = None) -> int:
        """Tiles recorded but not judged yet (seen, ready, handed to the workers)."""
        c = self.counts() if counts is None else counts
        return c["seen"] + c["ready"] + c["scoring"]

    def health(self, now: float | None = None, facts: Facts | None = None) -> Health:
        """200 or 503 for ``/healthz``, and the Now page's first line; asked for the
        present (every poll of ``/api/generation`` does), kept per ledger version and second."""
        if now is None and facts is None:
            at = self.clock()
            return self._keep("health", lambda: self._health(at, self.facts()), stamp=int(at))
        return self._health(self.clock() if now is None else now, facts or self.facts())

    def _health(self, now: float, f: Facts) -> Health:
        problems: list[str] = []
        warnings: list[str] = []
        beat = f.meta.get("heartbeat")
        if beat is None:
            problems.append("the service has written no heartbeat yet")
        elif now - beat[1] > STALE_HEARTBEAT_S:
            problems.append(
                f"no heartbeat for {_duration(now - beat[1])} (the main loop is stuck or "
                "the ledger cannot be written)"
            )
        if not os.access(self.state_dir, os.W_OK):
            problems.append(f"the state folder {self.state_dir} is not writable")
        alarms = self.alarms(f)
        names = {a.name for a in alarms}
        for a in alarms:
            told = f"{a.line} (since {_duration(now - a.since)})"
            (problems if a.name.unhealthy else warnings).append(told)
        backlog = self.backlog(f.counts)
        r5 = self.rates(now, 300.0)
        behind = alarm_state.AlarmName.BEHIND in names
        if not behind and backlog > 0 and r5.arrive > r5.score * 1.1 and r5.arrive > 0:
            warnings.append(
                f"scoring falls behind: {r5.arrive:.1f} tiles/min arrive, {r5.score:.1f} scored"
            )
        last = f.last_tile
        stalled = alarm_state.AlarmName.STALL in names
        if not stalled and last is not None and now - last[1] > QUIET_WARNING_S:
            warnings.append(
                f"no new tile for {_duration(now - last[1])} (has the microscope stopped?)"
            )
        if problems:
            return Health(False, "NOT HEALTHY: " + "; ".join(problems), problems, warnings)
        if warnings:
            return Health(True, "healthy, but " + "; ".join(warnings), problems, warnings)
        tail = "no tile seen yet" if last is None else f"last tile {_duration(now - last[1])} ago"
        return Health(True, f"healthy: scoring keeps up; {tail}", problems, warnings)

    def now_view(self) -> dict[str, Any]:
        now = self.clock()
        f = self.facts()
        counts = dict(f.counts)
        backlog = self.backlog(counts)
        r5, r60 = self.rates(now, 300.0), self.rates(now, 3600.0)
        executor = f.meta.get("executor")
        desc = executor[0] if executor is not None and isinstance(executor[0], dict) else {}
        service = f.meta.get("service")
        last = f.last_tile
        local = time.localtime(now)
        return {
            "health": self.health(now, f),
            "alarms": [
                {"name": str(a.name), "line": a.line, "since": a.since, "bad": a.name.unhealthy}
                for a in self.alarms(f)
            ],
            "last_tile": None if last is None else last[0],
            "last_tile_ago": None if last is None else _duration(now - last[1]),
            "rates": {
                "arrive_5": r5.arrive,
                "score_5": r5.score,
                "arrive_60": r60.arrive,
                "score_60": r60.score,
            },
            "counts": counts,
            "backlog": backlog,
            "clear_in": clear_in(backlog, r5.arrive, r5.score),
            "backend": str(desc.get("backend", "unknown")),
            "workers": desc.get("workers"),
            "executor": {
                str(k): _mask_userinfo(str(v))
                for k, v in desc.items()
                if k not in EXECUTOR_OWN_RATES
            },
            "array_backend": f.array_backend,
            "alerts_waiting": f.alerts_waiting,
            "pid": None if service is None else service[0].get("pid"),
            "uptime": _duration(now - self.started),
            "local_time": time.strftime("%Y-%m-%d %H:%M:%S", local),
            "zone": time.strftime("%Z (UTC%z)", local),
        }

    # -- the wafer map -------------------------------------------------------------

    def wafer(self) -> dict[str, Any]:
        """Sections in order, each a grid of positions with the current verdict there;
        each section's ``key`` (hashable) changes when anything its figure shows does."""
        return self._keep("wafer", self._wafer)

    def _wafer(self) -> dict[str, Any]:
        # Only the sections whose fingerprint moved are read again (a long acquisition
        # has tens of thousands of tiles; a commit changes one section).
        prints = self._reads.section_fingerprints()
        built = self._sections
        fresh = {
            sec: built[sec]
            if sec in built and built[sec][0] == text
            else (text, self._section(sec))
            for sec, text in prints.items()
        }
        self._sections = fresh
        ordered = sorted(
            (dict(s, fingerprint=text) for text, s in fresh.values()),
            key=lambda s: (s["index"] is None, s["index"] or 0, s["name"]),
        )
        for s, expected in zip(ordered, self._expected(ordered), strict=True):
            s["expected"] = expected
            # What the figure shows: the cells (its fingerprint) and the progress.
            s["key"] = (s["name"], expected, s.pop("fingerprint"))
        return {
            "sections": ordered,
            "rows": max((s["rows"] for s in ordered), default=0),
            "cols": max((s["cols"] for s in ordered), default=0),
        }

    def _section(self, section: str) -> dict[str, Any]:
        """One section's grid of positions with the current verdict there."""
        found = self._reads.wafer_cells(section=section)
        s: dict[str, Any] = {
            "name": section or "(no section)",
            "index": found[0].section_index if found else None,
            "cells": {},
            "other": [],
            "rows": 0,
            "cols": 0,
        }
        for t in found:
            ratio = None
            if t.score is not None and t.baseline:
                ratio = t.score / t.baseline
            cell = MapCell(
                id=t.id,
                name=printable(t.name),
                verdict=t.verdict if t.verdict in VERDICTS else "pending",
                state=t.state,
                score=t.score,
                ratio=ratio,
            )
            at = (t.row, t.col) if t.row is not None and t.col is not None else None
            if at is None and t.position is not None:
                at = grid_cell(t.position)  # mFoV × beam, grid × tile
            if at is None:
                s["other"].append(cell)
                continue
            # A retake under a new name at the same position: the newest version wins.
            s["cells"][at] = cell
            s["rows"], s["cols"] = max(s["rows"], at[0]), max(s["cols"], at[1])
        cells = list(s["cells"].values()) + s["other"]
        s["seen"] = len(cells)
        s["judged"] = sum(1 for c in cells if c.verdict != "pending")
        s["bad"] = sum(1 for c in cells if c.verdict in _RETAKE_VERDICTS)
        return s

    # -- one tile ------------------------------------------------------------------

    def tile(self, version_id: int) -> TileView | None:
        return self._reads.tile(version_id)

    def history(self, position: str) -> list[HistoryPoint]:
        """Score and baseline of this position in every section (latest version of each)."""
        return [
            replace(h, section=printable(h.section)) for h in self._reads.position_history(position)
        ]

    # -- retakes -------------------------------------------------------------------

    def retakes(
        self, *, section: str | None = None, status: str | None = None
    ) -> list[retake_list.RetakeEntry]:
        items = retake_list.entries(self._ledger, section=section or None)
        if status == "to_do":
            return [e for e in items if e.still_to_do]
        if status in retake_list.STATUSES:
            return [e for e in items if e.status == status]
        return items

    def retake_sections(self) -> list[str]:
        found = self._reads.retake_sections()
        return sorted(found, key=lambda s: (section_index(s) is None, section_index(s) or 0, s))

    def retake_histories(self) -> dict[int, list[retake_list.RetakeEvent]]:
        """Every entry's changes (opened, fixed, dismissed by whom...), oldest first."""
        out: dict[int, list[retake_list.RetakeEvent]] = {}
        for event in retake_list.history(self._ledger):
            out.setdefault(event.retake_id, []).append(event)
        return out

    def change_retake(
        self, entry_id: int, *, action: str, note: str, who: str = ""
    ) -> retake_list.RetakeEntry:
        """Dismiss or reopen an entry (its own short-lived writable connection).

        KeyError: no such entry; ValueError: a note is missing, or the position has
        another active entry already (reopen).
        """
        if not note.strip():
            raise ValueError("a note is needed: say why")
        by = f"{who.strip()} (web page)" if who.strip() else "web page"
        ledger = Ledger.open(self.state_dir, clock=self.clock, create=False)
        try:
            if action == "dismiss":
                entry = retake_list.dismiss(ledger, entry_id, note=note, who=by)
            elif action == "reopen":
                entry = retake_list.reopen(ledger, entry_id, note=note, who=by)
            else:
                raise ValueError(f"unknown action {action!r}")
            retake_list.RetakeSink(ledger, self.state_dir).write_files()
        finally:
            ledger.close()
        return entry

    # -- alerts --------------------------------------------------------------------

    def alerts(self, *, limit: int = 200) -> list[OutboxItem]:
        """The outbox, newest first; URLs in errors redacted (they may hold secrets)."""
        return [
            replace(a, title=printable(a.title), last_error=redact_text(a.last_error))
            for a in self._reads.outbox(limit=limit)
        ]

    def deliveries(self, *, limit: int = 200) -> dict[int, list[Delivery]]:
        """To which endpoint each of the newest alerts went (or waits), redacted."""
        return {
            outbox_id: [
                replace(
                    d, endpoint=_mask_userinfo(d.endpoint), last_error=redact_text(d.last_error)
                )
                for d in found
            ]
            for outbox_id, found in self._reads.deliveries(limit=limit).items()
        }

    def endpoints(self) -> list[EndpointState]:
        """Per alert endpoint (its redacted name, as the outbox stores it): delivered,
        waiting, the latest error and last delivery (empty with no endpoint)."""

        def compute() -> list[EndpointState]:
            # Stored redacted by the outbox (apprise's privacy form); a password that
            # slipped through is masked here as well.
            return [
                replace(
                    e,
                    endpoint=_mask_userinfo(e.endpoint),
                    last_error=redact_text(e.last_error),
                )
                for e in self._reads.endpoints()
            ]

        return list(self._keep("endpoints", compute))

    # -- metrics -------------------------------------------------------------------

    def verdict_counts(self) -> dict[str, int]:
        return dict(self._keep("verdict_counts", lambda: self._reads.verdict_counts(VERDICTS[:-1])))

    def histogram(self, which: str) -> tuple[list[tuple[str, float]], float, int]:
        """Cumulative buckets, sum and count of scoring time or close→verdict time (s)."""
        h = self._keep(
            ("histogram", which), lambda: self._reads.time_histogram(which, TIME_BUCKETS)
        )
        return list(h.buckets), h.total, h.count

    def newest_tile_age(self) -> float | None:
        last = self.last_tile()
        return None if last is None else self.clock() - last[1]

    def scheduler_connected(self) -> bool | None:
        """The Dask scheduler link as the executor last reported it (None: no cluster)."""
        executor = self.meta("executor")
        desc = executor[0] if executor is not None and isinstance(executor[0], dict) else {}
        if desc.get("backend") != "dask":
            return None
        return str(desc.get("state", "")) == "connected"

    def worker_restarts(self) -> int:
        executor = self.meta("executor")
        if executor is None or not isinstance(executor[0], dict):
            return 0
        try:
            return int(executor[0].get("worker_restarts", 0) or 0)
        except (TypeError, ValueError):
            return 0


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 4 min``, ``3 d 1 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
