"""The ledger: one SQLite database (WAL) that is the service's only source of truth.

Every tile version (one per ``(path, size, mtime_ns)``) has a row in ``versions``
with its state::

    ready ──► scoring ──► scored     (a result with a score and a verdict)
      ▲          │   └──► failed     (a result with verdict 'unreadable' and the reason)
      └──────────┘ worker died or timed out, attempts left (or the service stopped)

``seen`` is the state of a version that is recorded but not yet handed to scoring
(the watcher records versions only once they are complete, so it is short-lived).
A file still being written at ``watch.incomplete_timeout_s`` is recorded with size
-1, so that record's key is never that of the complete file it later becomes. A newer
version of the same path supersedes older ones (a retake written under the same name).
``results`` holds exactly one row per version (``UNIQUE(version_id)``, ``INSERT ...
ON CONFLICT DO NOTHING``): a job that runs twice still yields one result.

Every state change is one transaction. The schema is versioned: ``MIGRATIONS[i]``
brings the database to ``PRAGMA user_version = i + 1``; later modules append their
own entries (keep this list flat and at module level).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from focuswatch.errors import LedgerWriteError, StateError
from focuswatch.files import fsync_dir
from focuswatch.statelock import StateLock
from focuswatch.text import from_db, printable, to_db
from focuswatch.verdict import Placement, Verdict, VerdictKind, VerdictRecord, grid_position

if TYPE_CHECKING:
    from focuswatch.tiles import TileMeta  # not at run time: tiles pulls in tifffile

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "STATES",
    "Ledger",
    "PastTile",
    "TileVersion",
    "VersionState",
    "backlog",
    "damage",
    "judged_later",
    "newest_seen",
    "scored_since",
    "section_index",
    "sections_pending",
    "set_aside",
]

DB_NAME = "focuswatch.db"


class VersionState(enum.StrEnum):
    """Where a tile version is in its life (see the module docstring's diagram)."""

    SEEN = "seen"
    READY = "ready"
    SCORING = "scoring"
    SCORED = "scored"
    FAILED = "failed"


#: The states by name, in order (for counts and status lines).
STATES: tuple[str, ...] = tuple(s.value for s in VersionState)
#: Not judged yet: the backlog, and what keeps a section from being complete.
_PENDING = (VersionState.SEEN, VersionState.READY, VersionState.SCORING)
_PENDING_IN = f"state IN ({', '.join('?' * len(_PENDING))})"

MIGRATIONS: list[str] = [
    # 1: tile versions, results, meta
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        tile_name TEXT NOT NULL,
        section TEXT,
        section_index INTEGER,
        row INTEGER,
        col INTEGER,
        stage_x_um REAL,
        stage_y_um REAL,
        pixel_size_um REAL,
        state TEXT NOT NULL CHECK (state IN ('seen', 'ready', 'scoring', 'scored', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        first_seen REAL NOT NULL,
        updated REAL NOT NULL,
        superseded INTEGER NOT NULL DEFAULT 0,
        UNIQUE (path, size, mtime_ns)
    );
    CREATE INDEX versions_by_state ON versions (state, superseded, id);
    CREATE INDEX versions_by_path ON versions (path);
    CREATE INDEX versions_by_position ON versions (row, col, section_index);
    CREATE INDEX versions_by_section ON versions (section);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL UNIQUE REFERENCES versions (id),
        score REAL,
        patch_scores TEXT,
        content REAL,
        backend TEXT,
        shape TEXT,
        read_ms REAL,
        score_ms REAL,
        verdict TEXT,
        reason TEXT,
        baseline REAL,
        defocus_um REAL,
        worker TEXT,
        scored_at REAL NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX results_by_time ON results (scored_at);
    """,
    # 2: retake list (focuswatch.retakes) and durable alert outbox (focuswatch.alerts)
    """
    CREATE TABLE retakes (
        id INTEGER PRIMARY KEY,
        section TEXT NOT NULL,
        position TEXT NOT NULL,
        tile_name TEXT NOT NULL,
        row INTEGER,
        col INTEGER,
        stage_x_um REAL,
        stage_y_um REAL,
        pixel_size_um REAL,
        score REAL,
        baseline REAL,
        reason TEXT NOT NULL,
        defocus_um REAL,
        first_seen REAL NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('open', 'retaken_fixed', 'retaken_still_bad', 'dismissed')),
        note TEXT NOT NULL DEFAULT '',
        version_id INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    CREATE UNIQUE INDEX retakes_one_active ON retakes (section, position)
        WHERE status IN ('open', 'retaken_still_bad');
    CREATE INDEX retakes_by_position ON retakes (section, position, version_id);
    CREATE TABLE alert_outbox (
        id INTEGER PRIMARY KEY,
        dedupe_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        section TEXT,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        tile_path TEXT,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        sent REAL,
        last_error TEXT
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (sent, next_attempt);
    CREATE TABLE alert_tiles (
        version_id INTEGER PRIMARY KEY,
        section TEXT NOT NULL,
        position TEXT NOT NULL,
        label TEXT NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        alert TEXT
    );
    CREATE INDEX alert_tiles_by_section ON alert_tiles (section, alert);
    CREATE TABLE alert_sections (
        section TEXT PRIMARY KEY,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        last_alert_at REAL,
        digests INTEGER NOT NULL DEFAULT 0,
        summarized INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 3: per-endpoint alert delivery and structured alerts (focuswatch.outbox), the
    # working distance shown in alerts, the history of each retake entry
    """
    ALTER TABLE alert_outbox ADD COLUMN severity TEXT NOT NULL DEFAULT 'info';
    ALTER TABLE alert_outbox ADD COLUMN details TEXT;
    ALTER TABLE alert_tiles ADD COLUMN details TEXT;
    CREATE TABLE alert_deliveries (
        outbox_id INTEGER NOT NULL REFERENCES alert_outbox (id),
        endpoint TEXT NOT NULL,
        endpoint_name TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        sent REAL,
        last_error TEXT,
        PRIMARY KEY (outbox_id, endpoint)
    );
    ALTER TABLE versions ADD COLUMN working_distance_um REAL;
    CREATE TABLE retake_events (
        id INTEGER PRIMARY KEY,
        retake_id INTEGER NOT NULL REFERENCES retakes (id),
        at REAL NOT NULL,
        action TEXT NOT NULL,
        who TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        version_id INTEGER,
        score REAL
    );
    CREATE INDEX retake_events_by_entry ON retake_events (retake_id, id);
    """,
    # 4: the scale signature of a result (focuswatch.scoring.TileScore.fine_fraction)
    """
    ALTER TABLE results ADD COLUMN fine_fraction REAL;
    """,
    # 5: the scale signature per patch (TileScore.patch_fine_fraction, JSON rows), for
    # telling a wrinkle from tissue without history (focuswatch.policy)
    """
    ALTER TABLE results ADD COLUMN patch_fine_fraction TEXT;
    """,
    # 6: a section that went quiet before all its expected tiles arrived (alerts): how
    # many tiles it had when that was told (NULL: not told)
    """
    ALTER TABLE alert_sections ADD COLUMN stalled_tiles INTEGER;
    """,
    # 7: layouts (focuswatch.tiles.layouts): a position key for every layout (row/col,
    # mFoV + beam, grid + tile), the stamp that orders retakes under new names, and the
    # metadata fields that had no column (stage Z, dwell)
    """
    ALTER TABLE versions ADD COLUMN position TEXT;
    ALTER TABLE versions ADD COLUMN taken TEXT;
    ALTER TABLE versions ADD COLUMN stage_z_um REAL;
    ALTER TABLE versions ADD COLUMN dwell_ns REAL;
    UPDATE versions SET position = 'r' || row || '-c' || col
        WHERE row IS NOT NULL AND col IS NOT NULL;
    CREATE INDEX versions_by_place ON versions (position, section_index);
    CREATE INDEX versions_by_section_place ON versions (section, position);
    """,
    # 8: the spectrum's orientation (TileScore.orientation: x, y), for the policy to
    # tell astigmatism from defocus against the position's history
    """
    ALTER TABLE results ADD COLUMN orientation_x REAL;
    ALTER TABLE results ADD COLUMN orientation_y REAL;
    """,
    # 9: tiles by arrival time: the web console's rates, last tile and /metrics read
    # them at every poll, which scanned every version without it
    """
    CREATE INDEX versions_by_first_seen ON versions (first_seen);
    """,
    # 10: the spectral ratio of a result (TileScore.spectral: high-to-mid band power
    # above the noise floor), the policy's defocus evidence against the history
    """
    ALTER TABLE results ADD COLUMN spectral REAL;
    """,
    # 11: the spectral ratio per patch (TileScore.patch_spectral, JSON rows): a region
    # that lost its fine detail while the rest of the tile kept it (focuswatch.policy)
    """
    ALTER TABLE results ADD COLUMN patch_spectral TEXT;
    """,
]

_DIGITS = re.compile(r"\d+")


# A path's version that rescans compare with: the current one, or the latest version of
# a file that a later file of its position superseded.
_KNOWN = (
    "(superseded = 0 OR (taken IS NOT NULL AND id = "
    "(SELECT max(w.id) FROM versions w WHERE w.path = versions.path)))"
)


def _place_values(place: Placement) -> tuple[Any, ...]:
    """A placement's columns, in the order ``add_version`` and ``complete_place`` use."""
    return (
        place.section,
        section_index(place.section),
        place.row,
        place.col,
        place.position,
        place.stage_x_um,
        place.stage_y_um,
        place.stage_z_um,
        place.pixel_size_um,
        place.working_distance_um,
        place.dwell_ns,
    )


def _supersede_earlier(conn: sqlite3.Connection, place: Placement, now: float) -> None:
    """Of the files of one (section, position) with a ``taken`` stamp, the latest is current.

    Either way round: a retake arriving after its original supersedes it, and an
    original found late (a rescan) is superseded by the retake already recorded.
    """
    section_test = "section IS NULL" if place.section is None else "section = ?"
    args = () if place.section is None else (place.section,)
    latest = conn.execute(
        f"SELECT id FROM versions WHERE {section_test} AND position = ? AND taken IS NOT NULL "
        "AND superseded = 0 ORDER BY taken DESC, id DESC LIMIT 1",
        (*args, place.position),
    ).fetchone()
    if latest is None:
        return
    conn.execute(
        f"UPDATE versions SET superseded = 1, updated = ? WHERE {section_test} AND position = ? "
        "AND taken IS NOT NULL AND superseded = 0 AND id != ?",
        (now, *args, place.position, latest[0]),
    )


class _Connection(sqlite3.Connection):
    """A connection that stores strings that are not valid UTF-8 losslessly.

    File names need not be UTF-8 (``focuswatch.text``); every parameter goes through
    ``to_db`` and every row through ``from_db``, so no caller can forget it, and a
    hostile name is stored like any other instead of failing the whole transaction.
    """

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return super().execute(sql, _params(parameters))

    def executemany(self, sql: str, seq: Any, /) -> sqlite3.Cursor:
        return super().executemany(sql, (_params(p) for p in seq))


def _params(parameters: Any) -> Any:
    if isinstance(parameters, dict):
        return {k: to_db(v) for k, v in parameters.items()}
    return tuple(to_db(v) for v in parameters)


def _row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(from_db(v) for v in row) if any(isinstance(v, bytes) for v in row) else row


# SQLite's primary result codes for a storage that cannot be used now, but may be again
# (https://sqlite.org/rescode.html): PERM, BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
_STORAGE_FAULTS = frozenset({3, 5, 6, 8, 10, 13, 14})
# ... and for a file that is not, or no longer, a sound database: CORRUPT, NOTADB.
_DAMAGE = frozenset({11, 26})


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_fault(exc: BaseException) -> bool:
    """A failure of the storage (full, read-only, I/O, busy), not of focuswatch's SQL.

    Syntax errors, a missing column, a violated constraint or a corrupt page are not
    faults to wait out: they raise as they are.
    """
    return isinstance(exc, OSError) or _code(exc) in _STORAGE_FAULTS


# -- reads for the stores that share the ledger's transaction (alerts, alarms) -----------


def backlog(conn: sqlite3.Connection) -> int:
    """Current tile versions not judged yet: the backlog."""
    return int(
        conn.execute(
            f"SELECT count(*) FROM versions WHERE superseded = 0 AND {_PENDING_IN}", _PENDING
        ).fetchone()[0]
    )


def scored_since(conn: sqlite3.Connection, t: float) -> int:
    """Tiles scored at or after ``t`` (seconds since the epoch)."""
    return int(
        conn.execute("SELECT count(*) FROM results WHERE scored_at >= ?", (t,)).fetchone()[0]
    )


def newest_seen(conn: sqlite3.Connection) -> float | None:
    """When the newest tile version was first seen (None before the first)."""
    (t,) = conn.execute("SELECT max(first_seen) FROM versions").fetchone()
    return None if t is None else float(t)


def judged_later(conn: sqlite3.Connection, record: VerdictRecord) -> bool:
    """Whether a later version at this record's position (its layout position, else its
    grid cell, else its name) in its section already has a verdict on its focus."""
    args: tuple[object, ...]
    place = record.placement
    if place.position is not None:
        where, args = "v.position = ?", (place.position,)
    elif place.row is not None and place.col is not None:
        where, args = "v.row = ? AND v.col = ?", (place.row, place.col)
    else:
        where, args = "v.tile_name = ?", (record.tile_name,)
    section_test = "v.section IS NULL" if record.section is None else "v.section = ?"
    extra = () if record.section is None else (record.section,)
    judged = (VerdictKind.IN_FOCUS, *(k for k in VerdictKind if k.needs_retake))
    found = conn.execute(
        "SELECT 1 FROM versions v JOIN results r ON r.version_id = v.id "
        f"WHERE {where} AND {section_test} AND v.id > ? "
        f"AND r.verdict IN ({', '.join('?' * len(judged))}) LIMIT 1",
        (*args, *extra, record.version_id, *judged),
    ).fetchone()
    return found is not None


def sections_pending(conn: sqlite3.Connection) -> set[str | None]:
    """The sections (``None``: tiles without one) with a current tile not judged yet."""
    rows = conn.execute(
        f"SELECT DISTINCT section FROM versions WHERE superseded = 0 AND {_PENDING_IN}", _PENDING
    ).fetchall()
    return {r[0] for r in rows}


def section_index(section: str | None) -> int | None:
    """The section number used for ordering: the first run of digits (``S_012_17…`` → 12)."""
    if section is None:
        return None
    m = _DIGITS.search(section)
    return int(m.group()) if m else None


@dataclass(frozen=True)
class TileVersion:
    """One row of ``versions``."""

    id: int
    path: str
    size: int
    mtime_ns: int
    tile_name: str
    #: Where it sits: what its path, its layout's side files and its tags said.
    placement: Placement
    section_index: int | None
    state: VersionState
    attempts: int
    last_error: str | None
    first_seen: float
    updated: float
    superseded: bool

    @property
    def section(self) -> str | None:
        return self.placement.section

    @property
    def position(self) -> str | None:
        """The layout's position key (``focuswatch.tiles.layouts``): the same in every
        section for the same place; what a tile's history is looked up by."""
        return self.placement.position


@dataclass(frozen=True)
class PastTile:
    """A judged tile as context for another tile's verdict (same position or section)."""

    version_id: int
    section_index: int
    score: float
    patch_scores: list[list[float]] | None
    verdict: str
    fine_fraction: float | None = None
    has_history: bool = True
    orientation: tuple[float, float] | None = None
    spectral: float | None = None
    #: The layout's position key (``section_peers`` only).
    position: str | None = None
    #: The verdict's reason (``position_history`` only: a section-wide failure is
    #: named by it).
    reason: str = ""
    #: The focus map's fine fractions and spectral ratios (``position_history`` only).
    patch_fine_fraction: list[list[float]] | None = None
    patch_spectral: list[list[float]] | None = None


# A Placement's fields are the versions columns of the same names, in its order.
_PLACEMENT_COLUMNS = ", ".join(f.name for f in fields(Placement))
_VERSION_COLUMNS = (
    "id, path, size, mtime_ns, tile_name, section_index, state, attempts, last_error, "
    f"first_seen, updated, superseded, {_PLACEMENT_COLUMNS}"
)


def _version(row: Sequence[Any]) -> TileVersion:
    (vid, path, size, mtime_ns, name, index, state, attempts, error, first, updated, sup) = row[:12]
    return TileVersion(
        id=vid,
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        tile_name=name,
        placement=Placement(*row[12:]),
        section_index=index,
        state=VersionState(state),
        attempts=attempts,
        last_error=error,
        first_seen=first,
        updated=updated,
        superseded=bool(sup),
    )


class Ledger:
    """Access to the state database. Open with ``Ledger.open``; not shared between threads."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, *, clock: Callable[[], float], readonly: bool
    ) -> None:
        self._conn = conn
        self.path = path
        self.clock = clock
        self.readonly = readonly
        self._lock = threading.RLock()
        st = os.stat(path) if path.exists() else None
        self._identity = (st.st_dev, st.st_ino) if st is not None else (-1, -1)

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        readonly: bool = False,
        create: bool = True,
    ) -> Ledger:
        """Open (and for writers create and migrate) ``<state_dir>/focuswatch.db``.

        ``readonly=True`` opens through a ``mode=ro`` URI: safe next to a running service.
        ``create=False`` refuses to start a new ledger (commands that edit an existing one).
        Raises StateError with a message an operator can act on.
        """
        state = Path(state_dir)
        db = state / DB_NAME
        try:
            if state.is_dir() and not os.access(state, os.R_OK | os.X_OK):
                raise StateError(
                    f"cannot read the state folder {state}: permission denied (operators "
                    "read it as members of the service's group: usermod -aG focuswatch USER)"
                )
            if (readonly or not create) and not db.is_file():
                raise StateError(f"no ledger at {db} (has the service run with this --state?)")
            if not readonly and not db.exists():
                state.mkdir(parents=True, exist_ok=True)
                _create(db)
            problem = damage(db)
            if problem is not None:
                raise StateError(
                    f"ledger {db} is damaged: {problem}. Nothing was changed. Keep a copy, "
                    "then either restore a backup, or start a new ledger with "
                    "`focuswatch run --reset-ledger` (the damaged file is kept aside; every "
                    "tile in the watch folder is scored, and alerted, again)"
                )
            if readonly:
                conn = _connect_readonly(db, isolation_level=None, check_same_thread=False)
            else:
                state.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    db,
                    timeout=30.0,
                    isolation_level=None,
                    check_same_thread=False,
                    factory=_Connection,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = _row
            ledger = cls(conn, db, clock=clock, readonly=readonly)
            ledger._migrate()
        except sqlite3.Error as exc:
            if not readonly and _is_fault(exc):  # full, read-only, no access: may pass
                raise LedgerWriteError(f"cannot write the ledger {db}: {exc}") from None
            raise StateError(f"cannot use ledger {db}: {exc}") from None
        except OSError as exc:
            raise StateError(f"cannot create state folder {state}: {exc}") from None
        return ledger

    def _migrate(self) -> None:
        current = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(MIGRATIONS):
            raise StateError(
                f"ledger {self.path} has schema version {current}, newer than this "
                f"focuswatch knows ({len(MIGRATIONS)}); upgrade focuswatch"
            )
        if current == len(MIGRATIONS):
            return
        if self.readonly:
            raise StateError(
                f"ledger {self.path} has schema version {current}, expected "
                f"{len(MIGRATIONS)}; start the service once to migrate it"
            )
        with self.transaction() as conn:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for version in range(current, len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (autocommit mode): for modules that own their own tables."""
        return self._conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for plain reads: no write lock (WAL readers never wait), but the
        thread lock, so a read never runs inside a transaction another thread has open
        on this connection (and never sees its uncommitted rows)."""
        with self._lock:
            yield self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``; rollback on error).

        A failure of the state folder (disk full, read-only, I/O error, busy for longer
        than the timeout, the ledger file deleted or replaced) raises ``LedgerWriteError``
        after the rollback: nothing was written, and the caller may try again later.
        """
        with self._lock:
            problem = self.file_problem()  # a stat: never write into a deleted ledger
            if problem is not None:
                raise LedgerWriteError(problem)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._write_error(exc) from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                # SQLite may have rolled back already (SQLITE_FULL): then there is none.
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                if _is_fault(exc):
                    raise self._write_error(exc) from exc
                raise

    def _write_error(self, exc: BaseException) -> LedgerWriteError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return LedgerWriteError(f"cannot write the ledger {self.path}: {reason}")

    def file_problem(self) -> str | None:
        """Why the ledger file this connection writes is no longer the one at its path.

        The state folder deleted or the file replaced while the service runs: SQLite
        goes on writing into the open, deleted file, and everything is lost at the next
        start. None while the file is where it was opened.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the ledger {self.path} was deleted while the service was running"
        except OSError as exc:
            return f"cannot stat the ledger {self.path}: {exc.strerror or exc}"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"the ledger {self.path} was replaced by another file while the service ran"
        return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- versions ----------------------------------------------------------------------

    def has_version(self, path: str, size: int, mtime_ns: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM versions WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, size, mtime_ns),
        ).fetchone()
        return row is not None

    def add_version(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        tile_name: str,
        section: str | None = None,
        row: int | None = None,
        col: int | None = None,
        state: str = "ready",
        unreadable: Verdict | None = None,
        place: Placement | None = None,
    ) -> tuple[int, bool]:
        """Record a version (idempotent); returns ``(version_id, created)``.

        A new version supersedes every other version of the same path. ``unreadable``
        records it as failed with that verdict in the same transaction (a version known
        to be unreadable never waits as 'ready', where a crash would leave it scored).
        ``place`` (the layout's reading of the path) replaces ``section``/``row``/``col``;
        with a ``taken`` stamp, only the latest file of a (section, position) stays
        current (MultiSEM writes a retake under a new name with a later timestamp).
        """
        if state not in ("seen", "ready"):
            raise ValueError(f"a new version starts as 'seen' or 'ready', not {state!r}")
        if place is None:
            position = None if row is None or col is None else grid_position(row, col)
            place = Placement(section=section, position=position, row=row, col=col)
        now = self.clock()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO versions (path, size, mtime_ns, tile_name, section, section_index,"
                " row, col, position, stage_x_um, stage_y_um, stage_z_um, pixel_size_um,"
                " working_distance_um, dwell_ns, taken, state, first_seen, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (path, size, mtime_ns) DO NOTHING",
                (
                    path,
                    size,
                    mtime_ns,
                    printable(tile_name),
                    *_place_values(place),
                    place.taken,
                    state,
                    now,
                    now,
                ),
            )
            if cur.rowcount == 0:
                found = conn.execute(
                    "SELECT id FROM versions WHERE path = ? AND size = ? AND mtime_ns = ?",
                    (path, size, mtime_ns),
                ).fetchone()
                return int(found[0]), False
            vid = int(cur.lastrowid or 0)
            conn.execute(
                "UPDATE versions SET superseded = 1, updated = ? "
                "WHERE path = ? AND id != ? AND superseded = 0",
                (now, path, vid),
            )
            if place.taken is not None and place.position is not None:
                _supersede_earlier(conn, place, now)
            if unreadable is not None:
                conn.execute(
                    "INSERT INTO results (version_id, verdict, reason, worker, scored_at)"
                    " VALUES (?, ?, ?, '', ?)",
                    (vid, str(unreadable.kind), unreadable.reason, now),
                )
                conn.execute(
                    "UPDATE versions SET state = 'failed', last_error = ? WHERE id = ?",
                    (unreadable.reason, vid),
                )
            return vid, True

    def complete_place(self, version_id: int, place: Placement) -> TileVersion:
        """Fill what the path did not say from what the file's tags did (before judging).

        Fields already known are kept; a position found only now (ATLAS FibicsXML
        ``MosaicInfo`` of a tile whose name has no row/col) is what its history is
        looked up by from now on.
        """
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET section = coalesce(section, ?), "
                "section_index = coalesce(section_index, ?), "
                # The tags' row/col only where the path gave no position (an SBEMimage
                # tile is grid/tile whatever a stray MosaicInfo says).
                "row = CASE WHEN position IS NULL THEN coalesce(row, ?) ELSE row END, "
                "col = CASE WHEN position IS NULL THEN coalesce(col, ?) ELSE col END, "
                "position = coalesce(position, ?), "
                "stage_x_um = coalesce(stage_x_um, ?), stage_y_um = coalesce(stage_y_um, ?), "
                "stage_z_um = coalesce(stage_z_um, ?), "
                "pixel_size_um = coalesce(?, pixel_size_um), "
                "working_distance_um = coalesce(?, working_distance_um), "
                "dwell_ns = coalesce(?, dwell_ns) WHERE id = ?",
                (*_place_values(place), version_id),
            )
        return self.get(version_id)

    def get(self, version_id: int) -> TileVersion:
        row = self._conn.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE id = ?", (version_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no tile version {version_id}")
        return _version(row)

    def versions(self, path: str) -> list[TileVersion]:
        """Every version of one path, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_VERSION_COLUMNS} FROM versions WHERE path = ? ORDER BY id", (path,)
        ).fetchall()
        return [_version(r) for r in rows]

    def claim_ready(self, limit: int) -> list[TileVersion]:
        """Move up to ``limit`` current 'ready' versions to 'scoring' (oldest first)."""
        if limit <= 0:
            return []
        with self.transaction() as conn:
            rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions "
                "WHERE state = 'ready' AND superseded = 0 ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            if not rows:
                return []
            now = self.clock()
            conn.executemany(
                "UPDATE versions SET state = 'scoring', attempts = attempts + 1, updated = ? "
                "WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
        claimed = [_version(r) for r in rows]
        return [
            replace(v, state=VersionState.SCORING, attempts=v.attempts + 1, updated=now)
            for v in claimed
        ]

    def release(self, version_id: int, *, error: str | None = None, undo_attempt: bool) -> None:
        """Hand a 'scoring' version back to 'ready' (retry, or the service is stopping)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET state = 'ready', last_error = coalesce(?, last_error), "
                "attempts = max(0, attempts - ?), updated = ? WHERE id = ? AND state = 'scoring'",
                (error, 1 if undo_attempt else 0, self.clock(), version_id),
            )

    def recover(self) -> int:
        """After a crash: versions left in 'scoring' (or 'seen') go back to 'ready'."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE versions SET state = 'ready', updated = ? "
                "WHERE state IN ('scoring', 'seen') AND id NOT IN (SELECT version_id FROM results)",
                (self.clock(),),
            )
            # A result committed but its state not (cannot happen: same transaction) is
            # still repaired here, so the two tables never disagree.
            conn.execute(
                "UPDATE versions SET state = CASE WHEN (SELECT score FROM results r "
                "WHERE r.version_id = versions.id) IS NULL THEN 'failed' ELSE 'scored' END "
                "WHERE state IN ('scoring', 'seen', 'ready') "
                "AND id IN (SELECT version_id FROM results)"
            )
            return cur.rowcount

    def known_paths(self, *, under: str | None = None) -> dict[str, tuple[int, int]]:
        """Current (non-superseded) versions: path → (size, mtime_ns), for rescans.

        A file superseded by a later one of its position (a MultiSEM retake: ``taken``)
        is still known as it is, so that no rescan takes it for a new file.
        ``under`` limits it to the files below one folder (a folder moved in), read
        through the path index rather than the whole table.
        """
        if under is None:
            rows = self._conn.execute(
                f"SELECT path, size, mtime_ns FROM versions WHERE {_KNOWN}"
            ).fetchall()
        else:
            prefix = under.rstrip("/") + "/"
            # Every path starting with 'prefix' sorts in [prefix, prefix[:-1] + '0'): '0'
            # is the character right after '/'. Paths that are not UTF-8 are BLOBs, which
            # sort after all text: their range is asked for in bytes.
            raw = prefix.encode("utf-8", "surrogateescape")
            rows = []
            for lo, hi in ((prefix, prefix[:-1] + "0"), (raw, raw[:-1] + b"0")):
                rows += self._conn.execute(
                    "SELECT path, size, mtime_ns FROM versions "
                    f"WHERE path >= ? AND path < ? AND {_KNOWN}",
                    (lo, hi),
                ).fetchall()
        return {p: (s, m) for p, s, m in rows}

    # -- results -----------------------------------------------------------------------

    def record_result(
        self,
        version_id: int,
        *,
        verdict: Verdict,
        score: Any = None,
        worker: str = "",
    ) -> bool:
        """Store the one result of a version with its verdict; False if it already had one.

        ``score`` is a ``focuswatch.scoring.TileScore`` (None for an unreadable tile). The
        version moves to 'scored' (or 'failed' without a score) in the same transaction.
        """
        now = self.clock()
        values: dict[str, Any] = {
            "score": None,
            "patch_scores": None,
            "content": None,
            "backend": None,
            "shape": None,
            "read_ms": None,
            "score_ms": None,
            "fine_fraction": None,
            "patch_fine_fraction": None,
            "orientation_x": None,
            "orientation_y": None,
            "spectral": None,
            "patch_spectral": None,
        }
        meta: TileMeta | None = None
        if score is not None:
            values = {
                "score": float(score.score),
                "patch_scores": (
                    json.dumps(score.patch_scores) if score.patch_scores is not None else None
                ),
                "content": float(score.content),
                "backend": score.backend,
                "shape": json.dumps(list(score.shape)),
                "read_ms": float(score.read_ms),
                "score_ms": float(score.score_ms),
                "fine_fraction": getattr(score, "fine_fraction", None),
                "patch_fine_fraction": _json_or_none(getattr(score, "patch_fine_fraction", None)),
                **_orientation_columns(getattr(score, "orientation", None)),
                "spectral": getattr(score, "spectral", None),
                "patch_spectral": _json_or_none(getattr(score, "patch_spectral", None)),
            }
            meta = score.meta
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO results (version_id, score, patch_scores, content, backend, shape,"
                " read_ms, score_ms, fine_fraction, patch_fine_fraction,"
                " orientation_x, orientation_y, spectral, patch_spectral, verdict, reason,"
                " baseline, defocus_um, worker, scored_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (version_id) DO NOTHING",
                (
                    version_id,
                    *values.values(),
                    str(verdict.kind),
                    verdict.reason,
                    verdict.baseline,
                    verdict.defocus_um,
                    worker,
                    now,
                ),
            )
            if cur.rowcount == 0:
                return False
            state = "failed" if score is None else "scored"
            error = verdict.reason if score is None else None
            conn.execute(
                "UPDATE versions SET state = ?, last_error = coalesce(?, last_error), "
                "updated = ? WHERE id = ?",
                (state, error, now, version_id),
            )
            if meta is not None:
                # What the file's tags say of where and how it was taken wins.
                tags = meta.placement
                conn.execute(
                    "UPDATE versions SET stage_x_um = coalesce(?, stage_x_um), "
                    "stage_y_um = coalesce(?, stage_y_um), "
                    "pixel_size_um = coalesce(?, pixel_size_um), "
                    "working_distance_um = coalesce(?, working_distance_um), "
                    "dwell_ns = coalesce(?, dwell_ns) WHERE id = ?",
                    (
                        tags.stage_x_um,
                        tags.stage_y_um,
                        tags.pixel_size_um,
                        tags.working_distance_um,
                        tags.dwell_ns,
                        version_id,
                    ),
                )
            return True

    def result(self, version_id: int) -> dict[str, Any] | None:
        """The result row of a version as a dict (None before it has one)."""
        cur = self._conn.execute("SELECT * FROM results WHERE version_id = ?", (version_id,))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([d[0] for d in cur.description], row, strict=True))
        for key in ("patch_scores", "shape", "patch_fine_fraction", "patch_spectral"):
            if out[key] is not None:
                out[key] = json.loads(out[key])
        return out

    def verdict_record(self, version_id: int) -> VerdictRecord:
        """Everything an alert or a retake entry shows about one version's verdict."""
        v = self.get(version_id)
        r = self.result(version_id)
        if r is None or r["verdict"] is None:
            raise KeyError(f"tile version {version_id} has no verdict yet")
        verdict = Verdict(
            kind=VerdictKind(r["verdict"]),
            reason=r["reason"] or "",
            baseline=r["baseline"],
            defocus_um=r["defocus_um"],
        )
        return VerdictRecord(
            version_id=v.id,
            path=v.path,
            tile_name=v.tile_name,
            placement=v.placement,
            score=r["score"],
            verdict=verdict,
            at=r["scored_at"],
        )

    def mark_delivered(self, version_id: int) -> None:
        """The sinks have seen this verdict (undelivered ones are replayed at start-up)."""
        with self.transaction() as conn:
            conn.execute("UPDATE results SET delivered = 1 WHERE version_id = ?", (version_id,))

    def undelivered(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT version_id FROM results WHERE delivered = 0 ORDER BY id"
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- context for the policy --------------------------------------------------------

    def position_history(
        self, position: str, *, before_section_index: int, limit: int
    ) -> list[PastTile]:
        """Every scored earlier section at this position, most recent first.

        Current versions only, whatever their verdict (which of them to trust is the
        policy's call: the scores are evidence either way), one per section (the
        latest version when a section has several, e.g. a retake with a new suffix).
        """
        if limit <= 0:
            return []
        cur = self._conn.execute(
            "SELECT v.id, v.section_index, r.score, r.patch_scores, r.verdict, r.fine_fraction, "
            "r.orientation_x, r.orientation_y, r.spectral, r.reason, r.patch_fine_fraction, "
            "r.patch_spectral "
            "FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.position = ? AND v.superseded = 0 "
            "AND v.section_index < ? AND r.score IS NOT NULL AND r.verdict IS NOT NULL "
            "ORDER BY v.section_index DESC, v.id DESC",
            (position, before_section_index),
        )
        out: list[PastTile] = []
        last: int | None = None
        for vid, sec, score, maps, verdict, fine, ox, oy, spectral, reason, fines, spectra in cur:
            if sec == last:
                continue
            last = sec
            patches = None if maps is None else json.loads(maps)
            out.append(
                PastTile(
                    int(vid),
                    int(sec),
                    float(score),
                    patches,
                    str(verdict),
                    fine,
                    orientation=_orientation(ox, oy),
                    spectral=spectral,
                    reason=reason or "",
                    patch_fine_fraction=None if fines is None else json.loads(fines),
                    patch_spectral=None if spectra is None else json.loads(spectra),
                )
            )
            if len(out) >= limit:
                break
        return out

    def section_peers(self, section: str, *, exclude_version: int | None = None) -> list[PastTile]:
        """The other current, scored, non-empty tiles of this section, oldest first.

        ``has_history``: the tile's position has a scored tile in another section
        (earlier, or later for the first section there: judged against its own
        position either way).
        """
        rows = self._conn.execute(
            "SELECT v.id, v.section_index, r.score, r.verdict, r.fine_fraction, r.spectral, "
            "v.position, EXISTS (SELECT 1 FROM versions w JOIN results q ON q.version_id = w.id "
            "WHERE w.position = v.position AND w.section_index != v.section_index "
            "AND w.superseded = 0 AND q.score IS NOT NULL) "
            "FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.section = ? AND v.superseded = 0 AND v.id != ? "
            "AND r.score IS NOT NULL AND r.verdict IS NOT NULL AND r.verdict != 'empty' "
            "ORDER BY v.id",
            (section, -1 if exclude_version is None else exclude_version),
        ).fetchall()
        return [
            PastTile(
                int(vid),
                -1 if sec is None else int(sec),
                float(score),
                None,
                str(verdict),
                fine,
                bool(history),
                spectral=spectral,
                position=position,
            )
            for vid, sec, score, verdict, fine, spectral, position, history in rows
        ]

    def position_future(
        self, position: str, *, after_section_index: int, limit: int
    ) -> list[PastTile]:
        """The next scored sections at this position, oldest first (one per section, its
        latest version): the reference of a position's first section."""
        if limit <= 0:
            return []
        cur = self._conn.execute(
            "SELECT v.id, v.section_index, r.score, r.verdict, r.fine_fraction, r.spectral "
            "FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.position = ? AND v.superseded = 0 "
            "AND v.section_index > ? AND r.score IS NOT NULL AND r.verdict IS NOT NULL "
            "ORDER BY v.section_index, v.id DESC",
            (position, after_section_index),
        )
        out: list[PastTile] = []
        for vid, sec, score, verdict, fine, spectral in cur:
            if out and out[-1].section_index == sec:
                continue
            out.append(
                PastTile(
                    int(vid),
                    int(sec),
                    float(score),
                    None,
                    str(verdict),
                    fine,
                    spectral=spectral,
                )
            )
            if len(out) >= limit:
                break
        return out

    def later_at_position(self, position: str, *, after_section_index: int) -> list[int]:
        """Current judged versions at this position in later sections, oldest section first."""
        rows = self._conn.execute(
            "SELECT v.id FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE v.position = ? AND v.superseded = 0 AND v.section_index > ? "
            "AND r.score IS NOT NULL ORDER BY v.section_index, v.id",
            (position, after_section_index),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def revise_verdict(self, version_id: int, verdict: Verdict) -> bool:
        """Replace a scored version's verdict (its context changed).

        True when that changed whether the tile needs a retake: then the result is
        also marked undelivered in the same transaction, so the sinks see it
        (replayed at the next start if need be).
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT verdict FROM results WHERE version_id = ? AND score IS NOT NULL",
                (version_id,),
            ).fetchone()
            if row is None:
                return False
            was = VerdictKind(row[0]).needs_retake if row[0] is not None else False
            retake = was != verdict.kind.needs_retake
            conn.execute(
                "UPDATE results SET verdict = ?, reason = ?, baseline = ?, defocus_um = ?, "
                "delivered = delivered * ? WHERE version_id = ?",
                (
                    str(verdict.kind),
                    verdict.reason,
                    verdict.baseline,
                    verdict.defocus_um,
                    0 if retake else 1,
                    version_id,
                ),
            )
            return retake

    # -- meta and status ---------------------------------------------------------------

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (key, json.dumps(value), self.clock()),
            )

    def get_meta(self, key: str) -> tuple[Any, float] | None:
        row = self._conn.execute("SELECT value, updated FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def has_scores(self) -> bool:
        """Whether any tile has a score here (a wafer's history has begun)."""
        row = self._conn.execute("SELECT 1 FROM results WHERE score IS NOT NULL LIMIT 1")
        return row.fetchone() is not None

    def counts(self) -> dict[str, int]:
        """Current (non-superseded) versions per state; every state present."""
        out = dict.fromkeys(STATES, 0)
        rows = self._conn.execute(
            "SELECT state, count(*) FROM versions WHERE superseded = 0 GROUP BY state"
        ).fetchall()
        out.update({s: int(n) for s, n in rows})
        return out

    def status_summary(self, *, last: int = 10, window_s: float = 600.0) -> dict[str, Any]:
        """What ``focuswatch status`` shows: counts, backlog, rate, recent verdicts, failures."""
        now = self.clock()
        counts = self.counts()
        recent_n = scored_since(self._conn, now - window_s)
        verdicts = dict(
            self._conn.execute(
                "SELECT r.verdict, count(*) FROM results r JOIN versions v ON v.id = r.version_id"
                " WHERE v.superseded = 0 GROUP BY r.verdict"
            ).fetchall()
        )
        recent = self._conn.execute(
            "SELECT v.path, v.section, v.row, v.col, r.score, r.verdict, r.reason, r.scored_at, "
            "v.position "
            "FROM results r JOIN versions v ON v.id = r.version_id "
            "ORDER BY r.id DESC LIMIT ?",
            (max(0, last),),
        ).fetchall()
        failures = self._conn.execute(
            "SELECT path, attempts, last_error, updated FROM versions "
            "WHERE state = 'failed' AND superseded = 0 ORDER BY updated DESC LIMIT ?",
            (max(0, last),),
        ).fetchall()
        # The array library that actually scored (numpy/cupy): what 'auto' turned into.
        array_backend = self._conn.execute(
            "SELECT backend FROM results WHERE backend IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        executor = self.get_meta("executor")
        heartbeat = self.get_meta("heartbeat")
        keys = ("path", "section", "row", "col", "score", "verdict", "reason", "at", "position")
        return {
            "schema_version": self.schema_version,
            "counts": counts,
            "backlog": counts["seen"] + counts["ready"] + counts["scoring"],
            "tiles_per_min": recent_n / (window_s / 60.0),
            "verdicts": {str(k): int(n) for k, n in verdicts.items()},
            "recent": [dict(zip(keys, r, strict=True)) for r in recent],
            "failures": [
                {"path": p, "attempts": a, "reason": e, "at": t} for p, a, e, t in failures
            ],
            "executor": None if executor is None else executor[0],
            "array_backend": None if array_backend is None else array_backend[0],
            "heartbeat_age_s": None if heartbeat is None else now - heartbeat[1],
        }


def _orientation_columns(value: Any) -> dict[str, float | None]:
    """``TileScore.orientation`` (x, y) as its two columns."""
    x, y = (None, None) if value is None else (float(value[0]), float(value[1]))
    return {"orientation_x": x, "orientation_y": y}


def _orientation(x: float | None, y: float | None) -> tuple[float, float] | None:
    return None if x is None or y is None else (float(x), float(y))


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _create(db: Path) -> None:
    """A new, migrated ledger, put in place by a rename: never a half-made file at ``db``.

    So an empty or unreadable file at ``db`` is damage, never a start that crashed.
    """
    tmp = db.with_name(f".{db.name}.new")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None, factory=_Connection)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        Ledger(conn, tmp, clock=time.time, readonly=False)._migrate()
    finally:
        conn.close()  # checkpoints the WAL into the file and removes it
    os.replace(tmp, db)
    fsync_dir(db.parent)


def _connect_readonly(db: Path, **kw: Any) -> sqlite3.Connection:
    """A read-only connection, also for an operator who may not write the state folder.

    A WAL database is read through its ``-shm`` index. While the service runs, that file
    exists and a group member reads beside it; once the service has stopped, SQLite has
    removed it and only someone who may create files there could open the ledger.
    Then, and only while no service holds the state folder's lock (so nothing
    changes the file), it is opened as immutable.
    """
    uri = db.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10.0, factory=_Connection, **kw)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        conn.close()
        cannot_index = "readonly" in str(exc) or "unable to open" in str(exc)
        if not cannot_index or StateLock(db.parent).holder() is not None:
            raise
        conn = sqlite3.connect(
            f"{uri}?mode=ro&immutable=1", uri=True, timeout=10.0, factory=_Connection, **kw
        )
    return conn


def damage(db: Path) -> str | None:
    """Why the ledger file at ``db`` cannot be trusted (None: it can, or it is not there).

    ``PRAGMA quick_check`` (every page and index reachable and well formed; seconds
    even for a big ledger, unlike ``integrity_check``), and an empty file: SQLite would
    silently take it for a new database and every tile would be scored and alerted
    again. (A 0-byte file with a WAL beside it is a ledger whose pages are all still
    in the WAL: SQLite recovers it.)
    """
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        return None
    wal = Path(f"{db}-wal")
    if size == 0 and not (wal.is_file() and wal.stat().st_size > 0):
        return "the file is empty (0 bytes)"
    try:
        conn = _connect_readonly(db)
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        # Only a file SQLite itself calls corrupt or not a database is damaged. A full
        # disk, a read-only mount, no permission or a busy file is not: the open that
        # follows reports it as what it is (and the service waits it out).
        if _code(exc) in _DAMAGE:
            return f"SQLite cannot read it ({exc})"
        return None
    found = [" ".join(str(r[0]).split()) for r in rows]  # one line each
    return None if found == ["ok"] else "quick_check found: " + "; ".join(found)


def set_aside(state_dir: str | Path, *, clock: Callable[[], float] = time.time) -> Path | None:
    """Move a damaged ledger (and its WAL) aside; None if there was nothing to move.

    ``focuswatch run --reset-ledger``: only a damaged ledger is moved (StateError for a
    healthy one: a reset is never the way to re-score a wafer).
    """
    db = Path(state_dir) / DB_NAME
    problem = damage(db)
    if not db.exists():
        return None
    if problem is None:
        raise StateError(f"ledger {db} is healthy: --reset-ledger only replaces a damaged one")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(clock()))
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            os.replace(src, Path(f"{aside}{suffix}"))
    fsync_dir(db.parent)
    return aside


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (``executescript`` would commit)."""
    parts: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            parts.append(buf.strip())
            buf = ""
    if buf.strip():
        parts.append(buf.strip())
    return parts
