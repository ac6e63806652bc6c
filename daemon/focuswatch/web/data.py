"""What the console shows, read from the ledger through its own read-only connection.

Every SQL statement the web pages and ``/metrics`` use is in this module, and only
columns that the ledger's migrations create (``versions``, ``results``, ``meta``,
``retakes``, ``alert_outbox``): when the schema changes, this is the one place to adapt.
The connection is opened ``mode=ro``; the ledger is SQLite WAL, so these reads never
block the service's writer, and each statement sees the latest committed state.
The two writes the page can make (dismiss and reopen a retake entry) are
``focuswatch.retakes``' own, through a short-lived writable connection in
``Console.change_retake``.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focuswatch import alarms as alarm_state
from focuswatch import retakes as retake_list
from focuswatch.ledger import STATES, Ledger, section_index
from focuswatch.status import STALE_HEARTBEAT_S
from focuswatch.text import printable
from focuswatch.verdict import grid_cell

__all__ = [
    "VERDICTS",
    "Console",
    "Health",
    "TileView",
    "expected_from_previous",
    "redact_text",
]

# No new tile for this long: the Now line says the microscope may have stopped writing
# (a warning on the page, not a /healthz failure: the service itself is fine).
QUIET_WARNING_S = 30 * 60.0
# Verdict names in the order the legend lists them; 'pending' is a tile not judged yet.
VERDICTS = ("in_focus", "partly_out_of_focus", "out_of_focus", "empty", "unreadable", "pending")
_RETAKE_VERDICTS = ("out_of_focus", "partly_out_of_focus")
# Buckets of the scoring-time and close-to-verdict histograms (seconds).
TIME_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


_USERINFO = re.compile(r"://([^:/@\s]*):([^@/\s]+)@")


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
class TileView:
    """Everything the tile page shows about one version."""

    id: int
    path: str
    tile_name: str
    section: str | None
    row: int | None
    col: int | None
    #: The key of this position's history in its layout (``r3-c4``, ``mFoV 2, beam 7``).
    position: str | None
    stage_x_um: float | None
    stage_y_um: float | None
    pixel_size_um: float | None
    state: str
    size: int
    mtime_ns: int
    superseded: bool
    last_error: str | None
    first_seen: float
    score: float | None
    verdict: str | None
    reason: str | None
    baseline: float | None
    defocus_um: float | None
    patch_scores: list[list[float]] | None
    scored_at: float | None
    backend: str | None
    score_ms: float | None


class Console:
    """The read side of the console: one read-only ledger connection, used under a lock."""

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

    def close(self) -> None:
        self._ledger.close()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._ledger.reading() as conn:
            return conn.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...]:
        rows = self._rows(sql, args)
        return rows[0] if rows else ()

    def meta(self, key: str) -> tuple[Any, float] | None:
        row = self._one("SELECT value, updated FROM meta WHERE key = ?", (key,))
        if not row:
            return None
        try:
            return json.loads(row[0]), float(row[1])
        except (TypeError, ValueError):
            return None

    # -- live updates --------------------------------------------------------------

    def generation(self) -> str:
        """Changes whenever something a page shows changed (the pages poll it)."""
        r = self._one("SELECT max(id), count(*) FROM results")
        v = self._one("SELECT max(id), max(updated) FROM versions")
        t = self._one("SELECT max(updated), count(*) FROM retakes")
        o = self._one("SELECT count(*), max(sent), max(attempts) FROM alert_outbox")
        return json.dumps([list(r), list(v), list(t), list(o)])

    # -- the Now page --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self._rows(
            "SELECT state, count(*) FROM versions WHERE superseded = 0 GROUP BY state"
        ):
            out[str(state)] = int(n)
        return out

    def rates(self, now: float, window_s: float) -> tuple[float, float]:
        """Tiles per minute arriving (new versions) and scored (results) over the window.

        A ledger younger than the window is measured over its own age (at least a
        minute), so a rate 40 s after the first tile is not diluted by empty time.
        """
        since = now - window_s
        arrived = self._one("SELECT count(*) FROM versions WHERE first_seen >= ?", (since,))[0]
        scored = self._one("SELECT count(*) FROM results WHERE scored_at >= ?", (since,))[0]
        oldest = self._one("SELECT min(first_seen) FROM versions")
        span = window_s
        if oldest and oldest[0] is not None:
            span = min(window_s, max(60.0, now - float(oldest[0])))
        minutes = span / 60.0
        return int(arrived) / minutes, int(scored) / minutes

    def last_tile(self) -> tuple[str, float] | None:
        row = self._one(
            "SELECT tile_name, first_seen FROM versions ORDER BY first_seen DESC LIMIT 1"
        )
        return (printable(str(row[0])), float(row[1])) if row else None

    def alarms(self) -> list[alarm_state.Alarm]:
        """The alarms that last, as the service last wrote them (``focuswatch.alarms``)."""
        stored = self.meta(alarm_state.META_KEY)
        return [] if stored is None else alarm_state.from_meta(stored[0])

    def alerts_waiting(self) -> int:
        return int(self._one("SELECT count(*) FROM alert_outbox WHERE sent IS NULL")[0])

    def health(self, now: float | None = None) -> Health:
        """200 or 503 for ``/healthz``, and the Now page's first line."""
        now = self.clock() if now is None else now
        problems: list[str] = []
        warnings: list[str] = []
        beat = self.meta("heartbeat")
        if beat is None:
            problems.append("the service has written no heartbeat yet")
        elif now - beat[1] > STALE_HEARTBEAT_S:
            problems.append(
                f"no heartbeat for {_duration(now - beat[1])} (the main loop is stuck or "
                "the ledger cannot be written)"
            )
        if not os.access(self.state_dir, os.W_OK):
            problems.append(f"the state folder {self.state_dir} is not writable")
        alarms = self.alarms()
        names = {a.name for a in alarms}
        for a in alarms:
            told = f"{a.line} (since {_duration(now - a.since)})"
            (problems if a.name.unhealthy else warnings).append(told)
        counts = self.counts()
        backlog = counts["seen"] + counts["ready"] + counts["scoring"]
        arrive5, score5 = self.rates(now, 300.0)
        behind = alarm_state.AlarmName.BEHIND in names
        if not behind and backlog > 0 and arrive5 > score5 * 1.1 and arrive5 > 0:
            warnings.append(
                f"scoring falls behind: {arrive5:.1f} tiles/min arrive, {score5:.1f} scored"
            )
        last = self.last_tile()
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
        counts = self.counts()
        backlog = counts["seen"] + counts["ready"] + counts["scoring"]
        arrive5, score5 = self.rates(now, 300.0)
        arrive60, score60 = self.rates(now, 3600.0)
        if backlog == 0:
            clear = "nothing waiting"
        elif score5 > arrive5:
            clear = f"about {_duration(backlog / (score5 - arrive5) * 60.0)}"
        else:
            clear = "not clearing: tiles arrive as fast as they are scored, or faster"
        executor = self.meta("executor")
        desc = executor[0] if executor is not None and isinstance(executor[0], dict) else {}
        service = self.meta("service")
        last = self.last_tile()
        local = time.localtime(now)
        return {
            "health": self.health(now),
            "alarms": [
                {"name": str(a.name), "line": a.line, "since": a.since, "bad": a.name.unhealthy}
                for a in self.alarms()
            ],
            "last_tile": None if last is None else last[0],
            "last_tile_ago": None if last is None else _duration(now - last[1]),
            "rates": {
                "arrive_5": arrive5,
                "score_5": score5,
                "arrive_60": arrive60,
                "score_60": score60,
            },
            "counts": counts,
            "backlog": backlog,
            "clear_in": clear,
            "backend": str(desc.get("backend", "unknown")),
            "workers": desc.get("workers"),
            "executor": {str(k): printable(str(v)) for k, v in desc.items()},
            "array_backend": self._one(
                "SELECT backend FROM results WHERE backend IS NOT NULL ORDER BY id DESC LIMIT 1"
            ),
            "alerts_waiting": self.alerts_waiting(),
            "pid": None if service is None else service[0].get("pid"),
            "uptime": _duration(now - self.started),
            "local_time": time.strftime("%Y-%m-%d %H:%M:%S", local),
            "zone": time.strftime("%Z (UTC%z)", local),
        }

    # -- the wafer map -------------------------------------------------------------

    def wafer(self) -> dict[str, Any]:
        """Sections in order, each a grid of positions with the current verdict there."""
        rows = self._rows(
            "SELECT v.id, v.section, v.section_index, v.row, v.col, v.position, v.tile_name, "
            "v.state, r.verdict, r.score, r.baseline FROM versions v "
            "LEFT JOIN results r ON r.version_id = v.id WHERE v.superseded = 0 ORDER BY v.id"
        )
        sections: dict[str, dict[str, Any]] = {}
        max_row = max_col = 0
        for vid, sec, sec_i, row, col, position, name, state, verdict, score, baseline in rows:
            key = sec if sec is not None else ""
            s = sections.setdefault(
                key,
                {"name": key or "(no section)", "index": sec_i, "cells": {}, "other": []},
            )
            kind = verdict if verdict in VERDICTS else "pending"
            ratio = None
            if score is not None and baseline:
                ratio = float(score) / float(baseline)
            cell = {
                "id": int(vid),
                "name": printable(str(name)),
                "verdict": kind,
                "state": state,
                "score": score,
                "ratio": ratio,
            }
            at = (int(row), int(col)) if row is not None and col is not None else None
            if at is None and position is not None:
                at = grid_cell(str(position))  # mFoV × beam, grid × tile
            if at is None:
                s["other"].append(cell)
                continue
            # A retake under a new name at the same position: the newest version wins.
            s["cells"][at] = cell
            max_row, max_col = max(max_row, at[0]), max(max_col, at[1])
        ordered = sorted(
            sections.values(),
            key=lambda s: (s["index"] is None, s["index"] or 0, s["name"]),
        )
        for s, expected in zip(ordered, self._expected(ordered), strict=True):
            cells = list(s["cells"].values()) + s["other"]
            s["seen"] = len(cells)
            s["judged"] = sum(1 for c in cells if c["verdict"] != "pending")
            s["bad"] = sum(
                1 for c in cells if c["verdict"] in ("out_of_focus", "partly_out_of_focus")
            )
            s["expected"] = expected
        return {"sections": ordered, "rows": max_row, "cols": max_col}

    # -- one tile ------------------------------------------------------------------

    def tile(self, version_id: int) -> TileView | None:
        row = self._one(
            "SELECT v.id, v.path, v.tile_name, v.section, v.row, v.col, v.position, v.stage_x_um, "
            "v.stage_y_um, v.pixel_size_um, v.state, v.size, v.mtime_ns, v.superseded, "
            "v.last_error, v.first_seen, r.score, r.verdict, r.reason, r.baseline, "
            "r.defocus_um, r.patch_scores, r.scored_at, r.backend, r.score_ms "
            "FROM versions v LEFT JOIN results r ON r.version_id = v.id WHERE v.id = ?",
            (version_id,),
        )
        if not row:
            return None
        values = list(row)
        values[13] = bool(values[13])
        patches = values[21]
        try:
            values[21] = json.loads(patches) if patches else None
        except ValueError:
            values[21] = None
        return TileView(*values)

    def working_distance_um(self, version_id: int) -> float | None:
        """As recorded with the result (migration 3's column; None before it)."""
        try:
            row = self._one("SELECT working_distance_um FROM versions WHERE id = ?", (version_id,))
        except sqlite3.OperationalError:
            return None
        return None if not row or row[0] is None else float(row[0])

    def history(self, position: str) -> list[dict[str, Any]]:
        """Score and baseline of this position in every section (latest version of each)."""
        found = self._rows(
            "SELECT v.id, v.section, v.section_index, r.score, r.baseline, r.verdict "
            "FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.position = ? AND v.superseded = 0 "
            "ORDER BY v.section_index, v.id",
            (position,),
        )
        by_section: dict[Any, dict[str, Any]] = {}
        for vid, sec, sec_i, score, baseline, verdict in found:
            by_section[sec] = {
                "id": int(vid),
                "section": printable(str(sec)) if sec is not None else "",
                "index": sec_i,
                "score": None if score is None else float(score),
                "baseline": None if baseline is None else float(baseline),
                "verdict": verdict or "pending",
            }
        return sorted(by_section.values(), key=lambda h: (h["index"] is None, h["index"] or 0))

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
        found = [str(r[0]) for r in self._rows("SELECT DISTINCT section FROM retakes")]
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

    def alerts(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The outbox, newest first; URLs in errors redacted (they may hold secrets)."""
        rows = self._rows(
            "SELECT id, kind, section, title, created, attempts, next_attempt, sent, last_error "
            "FROM alert_outbox ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("id", "kind", "section", "title", "created", "attempts", "next_attempt", "sent")
        out = []
        for r in rows:
            item = dict(zip(keys, r[:8], strict=True))
            item["title"] = printable(str(item["title"]))
            item["last_error"] = redact_text(r[8])
            out.append(item)
        return out

    def endpoints(self) -> list[dict[str, Any]]:
        """Per alert endpoint (its redacted name, as the outbox stores it): delivered,
        waiting, the latest error and last delivery. Empty before migration 3's
        ``alert_deliveries`` (or with no endpoint configured)."""
        try:
            rows = self._rows(
                "SELECT endpoint_name, sum(sent IS NOT NULL), sum(sent IS NULL), max(sent), "
                "min(CASE WHEN sent IS NULL THEN next_attempt END) "
                "FROM alert_deliveries GROUP BY endpoint ORDER BY endpoint_name"
            )
            errors = dict(
                self._rows(
                    "SELECT endpoint_name, last_error FROM alert_deliveries "
                    "WHERE sent IS NULL AND last_error IS NOT NULL ORDER BY next_attempt"
                )
            )
        except sqlite3.OperationalError:  # an older schema: no per-endpoint table
            return []
        keys = ("endpoint", "sent", "waiting", "last_sent", "next_attempt")
        out = []
        for r in rows:
            item = dict(zip(keys, r, strict=True))
            # Stored redacted by the outbox (apprise's privacy form); a password that
            # slipped through is masked here as well.
            item["endpoint"] = _USERINFO.sub(r"://\1:***@", printable(str(item["endpoint"])))
            item["last_error"] = redact_text(errors.get(r[0]))
            out.append(item)
        return out

    # -- metrics -------------------------------------------------------------------

    def verdict_counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS[:-1], 0)
        for verdict, n in self._rows(
            "SELECT r.verdict, count(*) FROM results r JOIN versions v ON v.id = r.version_id "
            "WHERE v.superseded = 0 GROUP BY r.verdict"
        ):
            out[str(verdict)] = int(n)
        return out

    def histogram(self, which: str) -> tuple[list[tuple[str, float]], float, int]:
        """Cumulative buckets, sum and count of scoring time or close→verdict time (s).

        Counted by SQLite in one pass: a scrape must not carry every result of a long
        acquisition into Python.
        """
        if which == "scoring":
            value, source = "score_ms / 1000.0", "results"
        else:
            value, source = (
                "r.scored_at - v.first_seen",
                ("results r JOIN versions v ON v.id = r.version_id"),
            )
        counts = ", ".join(f"total(x <= {b!r})" for b in TIME_BUCKETS)
        row = self._one(
            f"SELECT count(x), total(x), {counts} FROM (SELECT {value} AS x FROM {source}) "
            "WHERE x BETWEEN -1e308 AND 1e308"  # finite: neither NULL (NaN) nor infinite
        )
        n, total = int(row[0]), float(row[1])
        buckets = [(str(b), float(c)) for b, c in zip(TIME_BUCKETS, row[2:], strict=True)]
        buckets.append(("+Inf", float(n)))
        return buckets, total, n

    def newest_tile_age(self) -> float | None:
        row = self._one("SELECT max(first_seen) FROM versions")
        return None if not row or row[0] is None else self.clock() - float(row[0])

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
