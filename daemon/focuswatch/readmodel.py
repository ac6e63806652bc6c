"""What the console reads from the ledger: typed, read-only queries over its tables.

The ledger owns its SQL; this module is its read side for the operator console (the
web pages and ``/metrics``): every statement here reads the tables the ledger's
migrations create (``versions``, ``results``, ``meta``, ``retakes``, ``alert_outbox``,
``alert_deliveries``) and answers with frozen values, so ``web/`` never writes SQL and a
schema change is adapted here, beside the migrations. Nothing here writes.

``data_version`` is SQLite's own change counter for this connection: it moves when
another connection (the service's writer) commits, so a reader can keep what it
computed until it moves (``web.data.Console`` does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from focuswatch.ledger import Ledger

__all__ = [
    "Activity",
    "Delivery",
    "EndpointState",
    "Histogram",
    "HistoryPoint",
    "LastTile",
    "OutboxItem",
    "Rates",
    "ReadModel",
    "TileView",
    "WaferCell",
]


@dataclass(frozen=True)
class LastTile:
    """The newest tile version: its name and when it was first seen."""

    name: str
    first_seen: float


@dataclass(frozen=True)
class Activity:
    """Tiles that arrived (new versions) and were scored since a time, and the oldest
    version's first sighting (None in an empty ledger): the rates' inputs."""

    arrived: int
    scored: int
    oldest_first_seen: float | None


@dataclass(frozen=True)
class Rates:
    """Tiles per minute arriving (new versions) and scored (results) over a window."""

    arrive: float
    score: float


@dataclass(frozen=True)
class WaferCell:
    """One current tile version as the wafer map places it."""

    id: int
    section: str | None
    section_index: int | None
    row: int | None
    col: int | None
    position: str | None
    name: str
    state: str
    verdict: str | None
    score: float | None
    baseline: float | None


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
    working_distance_um: float | None


@dataclass(frozen=True)
class HistoryPoint:
    """A position's latest judged version in one section."""

    id: int
    section: str
    index: int | None
    score: float | None
    baseline: float | None
    verdict: str


@dataclass(frozen=True)
class OutboxItem:
    """One alert in the outbox (``sent`` None: still waiting)."""

    id: int
    kind: str
    section: str | None
    title: str
    created: float
    attempts: int
    next_attempt: float
    sent: float | None
    last_error: str | None


@dataclass(frozen=True)
class Delivery:
    """One alert's delivery to one endpoint (``sent`` None: not taken yet)."""

    endpoint: str
    attempts: int
    sent: float | None
    last_error: str | None


@dataclass(frozen=True)
class EndpointState:
    """One alert endpoint (by the redacted name the outbox stores): delivered, waiting,
    the last delivery, the next try, the error of its latest waiting delivery and the
    tries it failed (an alert it took at the third try counts two)."""

    endpoint: str
    sent: int
    waiting: int
    last_sent: float | None
    next_attempt: float | None
    last_error: str | None
    failures: int = 0


@dataclass(frozen=True)
class Histogram:
    """Cumulative Prometheus buckets (upper bound as text, count), the sum and count."""

    buckets: tuple[tuple[str, float], ...]
    total: float
    count: int


class ReadModel:
    """The console's queries, on a ledger connection (read-only is enough)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._ledger.reading() as conn:
            return conn.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...]:
        rows = self._rows(sql, args)
        return rows[0] if rows else ()

    def data_version(self) -> int:
        """Moves whenever another connection committed since the last call's value."""
        return int(self._one("PRAGMA data_version")[0])

    def all_meta(self) -> dict[str, tuple[Any, float]]:
        """Every ``meta`` value (decoded JSON) with when it was written, in one query
        (one that does not decode is left out)."""
        out = {}
        for key, value, updated in self._rows("SELECT key, value, updated FROM meta"):
            try:
                out[str(key)] = (json.loads(value), float(updated))
            except (TypeError, ValueError):
                continue
        return out

    def generation(self) -> str:
        """Changes whenever something a page shows changed (not the heartbeat)."""
        row = self._one(
            "SELECT (SELECT max(id) FROM results), (SELECT count(*) FROM results), "
            "(SELECT max(id) FROM versions), (SELECT max(updated) FROM versions), "
            "(SELECT max(updated) FROM retakes), (SELECT count(*) FROM retakes), "
            "(SELECT count(*) FROM alert_outbox), (SELECT max(sent) FROM alert_outbox), "
            "(SELECT max(attempts) FROM alert_outbox)"
        )
        return json.dumps(list(row))

    def state_counts(self, states: Sequence[str]) -> dict[str, int]:
        """Current (not superseded) versions per state, every one of ``states`` listed."""
        out = dict.fromkeys(states, 0)
        for state, n in self._rows(
            "SELECT state, count(*) FROM versions WHERE superseded = 0 GROUP BY state"
        ):
            out[str(state)] = int(n)
        return out

    def activity(self, since: float) -> Activity:
        arrived, scored, oldest = self._one(
            "SELECT (SELECT count(*) FROM versions WHERE first_seen >= ?), "
            "(SELECT count(*) FROM results WHERE scored_at >= ?), "
            "(SELECT min(first_seen) FROM versions)",
            (since, since),
        )
        first = None if oldest is None else float(oldest)
        return Activity(int(arrived), int(scored), first)

    def rates(self, now: float, window_s: float) -> Rates:
        """Tiles per minute arriving and scored over the window before ``now``: the one
        rule for every throughput figure shown (the web page, ``focuswatch status``).

        A ledger younger than the window is measured over its own age (at least a
        minute), so a rate 40 s after the first tile is not diluted by empty time.
        """
        seen = self.activity(now - window_s)
        span = window_s
        if seen.oldest_first_seen is not None:
            span = min(window_s, max(60.0, now - seen.oldest_first_seen))
        minutes = span / 60.0
        return Rates(seen.arrived / minutes, seen.scored / minutes)

    def last_tile(self) -> LastTile | None:
        row = self._one(
            "SELECT tile_name, first_seen FROM versions ORDER BY first_seen DESC LIMIT 1"
        )
        return LastTile(str(row[0]), float(row[1])) if row else None

    def alerts_waiting(self) -> int:
        return int(self._one("SELECT count(*) FROM alert_outbox WHERE sent IS NULL")[0])

    def last_array_backend(self) -> str | None:
        """The array library the newest result was scored with."""
        row = self._one(
            "SELECT backend FROM results WHERE backend IS NOT NULL ORDER BY id DESC LIMIT 1"
        )
        return str(row[0]) if row else None

    def wafer_cells(self, *, section: str | None = None) -> list[WaferCell]:
        """Every current version with its verdict (None before it is judged), by id;
        with ``section``, only that section's (``""``: the tiles of no section)."""
        where = ""
        args: tuple[Any, ...] = ()
        if section is not None:
            where = " AND (v.section = ? OR (? = '' AND v.section IS NULL))"
            args = (section, section)
        rows = self._rows(
            "SELECT v.id, v.section, v.section_index, v.row, v.col, v.position, v.tile_name, "
            "v.state, r.verdict, r.score, r.baseline FROM versions v "
            "LEFT JOIN results r ON r.version_id = v.id WHERE v.superseded = 0"
            f"{where} ORDER BY v.id",
            args,
        )
        return [
            WaferCell(
                id=int(vid),
                section=None if sec is None else str(sec),
                section_index=None if sec_i is None else int(sec_i),
                row=None if row is None else int(row),
                col=None if col is None else int(col),
                position=None if position is None else str(position),
                name=str(name),
                state=str(state),
                verdict=None if verdict is None else str(verdict),
                score=None if score is None else float(score),
                baseline=None if baseline is None else float(baseline),
            )
            for vid, sec, sec_i, row, col, position, name, state, verdict, score, baseline in rows
        ]

    def section_fingerprints(self) -> dict[str, str]:
        """Per section (``""``: the tiles of no section), a text made by SQLite of every
        column ``wafer_cells`` reads of its current versions: it changes whenever
        anything the wafer map shows of that section does, so a reader re-reads only
        the sections whose text changed (one pass in C instead of a Python object per
        tile of a long acquisition). Names go in as hex: no text decoding can fail."""
        rows = self._rows(
            "SELECT s, group_concat(x, char(30)) FROM (SELECT coalesce(v.section, '') AS s, "
            "v.id || char(31) || coalesce(v.section_index, '') || char(31) || "
            "coalesce(v.row, '') || char(31) || coalesce(v.col, '') || char(31) || "
            "hex(coalesce(v.position, '')) || char(31) || hex(v.tile_name) || char(31) || "
            "v.state || char(31) || coalesce(r.verdict, '') || char(31) || "
            "coalesce(r.score, '') || char(31) || coalesce(r.baseline, '') AS x "
            "FROM versions v LEFT JOIN results r ON r.version_id = v.id "
            "WHERE v.superseded = 0 ORDER BY v.id) GROUP BY s"
        )
        return {str(sec): str(text) for sec, text in rows}

    def tile(self, version_id: int) -> TileView | None:
        row = self._one(
            "SELECT v.id, v.path, v.tile_name, v.section, v.row, v.col, v.position, v.stage_x_um, "
            "v.stage_y_um, v.pixel_size_um, v.state, v.size, v.mtime_ns, v.superseded, "
            "v.last_error, v.first_seen, r.score, r.verdict, r.reason, r.baseline, "
            "r.defocus_um, r.patch_scores, r.scored_at, r.backend, r.score_ms, "
            "v.working_distance_um "
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

    def position_history(self, position: str) -> list[HistoryPoint]:
        """Score and baseline of this position in every section (its latest judged
        version there), in section order."""
        found = self._rows(
            "SELECT v.id, v.section, v.section_index, r.score, r.baseline, r.verdict "
            "FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.position = ? AND v.superseded = 0 "
            "ORDER BY v.section_index, v.id",
            (position,),
        )
        by_section: dict[Any, HistoryPoint] = {}
        for vid, sec, sec_i, score, baseline, verdict in found:
            by_section[sec] = HistoryPoint(
                id=int(vid),
                section="" if sec is None else str(sec),
                index=None if sec_i is None else int(sec_i),
                score=None if score is None else float(score),
                baseline=None if baseline is None else float(baseline),
                verdict=str(verdict or "pending"),
            )
        return sorted(by_section.values(), key=lambda h: (h.index is None, h.index or 0))

    def retake_sections(self) -> list[str]:
        """The sections the retake list has entries of (unordered)."""
        return [str(r[0]) for r in self._rows("SELECT DISTINCT section FROM retakes")]

    def outbox(self, *, limit: int) -> list[OutboxItem]:
        """The alert outbox, newest first."""
        rows = self._rows(
            "SELECT id, kind, section, title, created, attempts, next_attempt, sent, last_error "
            "FROM alert_outbox ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            OutboxItem(
                id=int(r[0]),
                kind=str(r[1]),
                section=None if r[2] is None else str(r[2]),
                title=str(r[3]),
                created=float(r[4]),
                attempts=int(r[5]),
                next_attempt=float(r[6]),
                sent=None if r[7] is None else float(r[7]),
                last_error=None if r[8] is None else str(r[8]),
            )
            for r in rows
        ]

    def deliveries(self, *, limit: int) -> dict[int, list[Delivery]]:
        """Each of the newest ``limit`` alerts' deliveries (by outbox id), per endpoint
        by its redacted name, in endpoint order."""
        rows = self._rows(
            "SELECT outbox_id, endpoint_name, attempts, sent, last_error FROM alert_deliveries "
            "WHERE outbox_id IN (SELECT id FROM alert_outbox ORDER BY id DESC LIMIT ?) "
            "ORDER BY outbox_id, endpoint_name",
            (limit,),
        )
        out: dict[int, list[Delivery]] = {}
        for outbox_id, name, attempts, sent, error in rows:
            out.setdefault(int(outbox_id), []).append(
                Delivery(
                    endpoint=str(name),
                    attempts=int(attempts),
                    sent=None if sent is None else float(sent),
                    last_error=None if error is None else str(error),
                )
            )
        return out

    def endpoints(self) -> list[EndpointState]:
        """Per alert endpoint, by the redacted name the outbox stored."""
        rows = self._rows(
            "SELECT endpoint_name, sum(sent IS NOT NULL), sum(sent IS NULL), max(sent), "
            "min(CASE WHEN sent IS NULL THEN next_attempt END), "
            # A delivery taken counts its tries but the last; one withheld (0 tries) none.
            "sum(max(attempts - (sent IS NOT NULL), 0)) "
            "FROM alert_deliveries GROUP BY endpoint ORDER BY endpoint_name"
        )
        errors = dict(
            self._rows(
                "SELECT endpoint_name, last_error FROM alert_deliveries "
                "WHERE sent IS NULL AND last_error IS NOT NULL ORDER BY next_attempt"
            )
        )
        return [
            EndpointState(
                endpoint=str(name),
                sent=int(sent or 0),
                waiting=int(waiting or 0),
                last_sent=None if last is None else float(last),
                next_attempt=None if nxt is None else float(nxt),
                last_error=None if errors.get(name) is None else str(errors[name]),
                failures=int(failed or 0),
            )
            for name, sent, waiting, last, nxt, failed in rows
        ]

    def verdict_counts(self, verdicts: Sequence[str]) -> dict[str, int]:
        """Current versions per verdict, every one of ``verdicts`` listed."""
        out = dict.fromkeys(verdicts, 0)
        for verdict, n in self._rows(
            "SELECT r.verdict, count(*) FROM results r JOIN versions v ON v.id = r.version_id "
            "WHERE v.superseded = 0 GROUP BY r.verdict"
        ):
            out[str(verdict)] = int(n)
        return out

    def time_histogram(self, which: str, bounds: Sequence[float]) -> Histogram:
        """Scoring time (``which="scoring"``) or file complete → verdict (``"verdict"``),
        in seconds, counted by SQLite in one pass: a scrape must not carry every result
        of a long acquisition into Python."""
        if which == "scoring":
            value, source = "score_ms / 1000.0", "results"
        elif which == "verdict":
            value, source = (
                "r.scored_at - v.first_seen",
                "results r JOIN versions v ON v.id = r.version_id",
            )
        else:
            raise ValueError(f"no histogram {which!r}")
        counts = ", ".join(f"total(x <= {float(b)!r})" for b in bounds)
        row = self._one(
            f"SELECT count(x), total(x), {counts} FROM (SELECT {value} AS x FROM {source}) "
            "WHERE x BETWEEN -1e308 AND 1e308"  # finite: neither NULL (NaN) nor infinite
        )
        n, total = int(row[0]), float(row[1])
        buckets = [(str(b), float(c)) for b, c in zip(bounds, row[2:], strict=True)]
        buckets.append(("+Inf", float(n)))
        return Histogram(tuple(buckets), total, n)
