"""The retake list: tiles to re-image before the wafer is unloaded.

Entries live in the ledger (table ``retakes``), one active entry per tile position
and section::

    open ──► retaken_fixed        a later version at the same position came out fine
      │  └─► retaken_still_bad ──► retaken_fixed   (still to redo until then)
      └────► dismissed            the operator decided no retake is needed (with a note)
    dismissed, retaken_fixed ──► open   reopened by the operator (with a note)

Every change is also kept in ``retake_events`` (when, what, who, note, the version and
its score): a second dismissal, a reopening or a failed retake adds to the history
instead of overwriting it.

Out-of-focus, partly out-of-focus and unreadable tiles (truncated, corrupt: they must
be imaged again too) open entries; a readable, in-focus retake closes them.

A later version is a retake written under the same name (a new version of the path)
or under a new name (``…_2.tif``) at the same row/col in the same section. The live
files ``<state_dir>/retakes.csv`` and ``retakes.json`` are always regenerated from
the ledger, written atomically (temporary file in the same folder, fsync,
``os.replace``): a failed write (a full disk) leaves the previous good file in place,
and a file a user deleted or damaged is rebuilt on the next tick.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import getpass
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from focuswatch.config import Config
from focuswatch.errors import StateError
from focuswatch.files import atomic_write
from focuswatch.ledger import Ledger, judged_later, section_index
from focuswatch.statelock import StateLock
from focuswatch.verdict import (
    RetakeAction,
    RetakeStatus,
    VerdictKind,
    VerdictRecord,
    format_score,
    position_words,
)

__all__ = [
    "STATUSES",
    "RetakeEntry",
    "RetakeEvent",
    "RetakeSink",
    "apply",
    "build_sink",
    "dismiss",
    "dismiss_main",
    "entries",
    "history",
    "list_main",
    "render_csv",
    "render_json",
    "render_text",
    "reopen",
    "reopen_main",
]

STATUSES = tuple(RetakeStatus)
_ACTIVE = tuple(s for s in RetakeStatus if s.still_to_do)
CSV_NAME = "retakes.csv"
JSON_NAME = "retakes.json"

_log = structlog.get_logger("focuswatch.retakes")

Writer = Callable[[Path, bytes], None]


@dataclass(frozen=True)
class RetakeEntry:
    """One row of the retake list."""

    id: int
    section: str
    tile_name: str
    row: int | None
    col: int | None
    stage_x_um: float | None
    stage_y_um: float | None
    pixel_size_um: float | None
    score: float | None
    baseline: float | None
    reason: str
    defocus_um: float | None
    first_seen: float
    status: RetakeStatus
    note: str
    version_id: int
    updated: float
    #: The layout's position key (``r3-c4``, ``mFoV 12, beam 7``, ``grid 0, tile 42``), or
    #: the tile name where the layout gives none.
    position: str = ""

    @property
    def still_to_do(self) -> bool:
        return self.status.still_to_do


_COLUMNS = list(RetakeEntry.__dataclass_fields__)


@dataclass(frozen=True)
class RetakeEvent:
    """One change of a retake entry, as kept in its history."""

    retake_id: int
    at: float
    action: RetakeAction
    who: str  # the operator, for dismissed/reopened; empty for the service's own changes
    note: str
    version_id: int | None
    score: float | None


_EVENT_COLUMNS = list(RetakeEvent.__dataclass_fields__)


def _event(
    conn: sqlite3.Connection,
    retake_id: int,
    at: float,
    action: RetakeAction,
    *,
    who: str = "",
    note: str = "",
    version_id: int | None = None,
    score: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO retake_events (retake_id, at, action, who, note, version_id, score)"
        " VALUES (?,?,?,?,?,?,?)",
        (retake_id, at, action, who, note, version_id, score),
    )


def _operator() -> str:
    """Who runs this command (the user behind sudo, if any)."""
    user = os.environ.get("SUDO_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container): the number says who
        return f"uid {os.getuid()}"


# -- the state machine, one transaction per verdict ------------------------------------


def apply(ledger: Ledger, record: VerdictRecord) -> bool:
    """Update the retake list for one verdict; True if the list changed.

    Idempotent (a verdict delivered twice changes nothing) and safe against
    out-of-order delivery (an older version never overrides a newer one).
    """
    kind = record.verdict.kind
    if kind not in (
        VerdictKind.OUT_OF_FOCUS,
        VerdictKind.PARTLY_OUT_OF_FOCUS,
        VerdictKind.UNREADABLE,
        VerdictKind.IN_FOCUS,
    ):
        return False  # empty tiles neither open nor close entries
    # A tile that cannot be read must be imaged again as much as a blurred one.
    opens = kind.needs_retake or kind is VerdictKind.UNREADABLE
    section = record.section or ""
    position = record.position
    now = record.at
    v = record.verdict
    fields = (
        record.tile_name,
        record.placement.row,
        record.placement.col,
        record.placement.stage_x_um,
        record.placement.stage_y_um,
        record.placement.pixel_size_um,
        record.score,
        v.baseline,
        v.reason,
        v.defocus_um,
    )
    with ledger.transaction() as conn:
        newest = conn.execute(
            "SELECT max(version_id) FROM retakes WHERE section = ? AND position = ?",
            (section, position),
        ).fetchone()[0]
        if newest == record.version_id and not opens:
            # The same version's verdict was revised (focuswatch.judge: context that
            # arrived late showed it in focus): it no longer needs a retake.
            revised = conn.execute(
                "SELECT id FROM retakes WHERE section = ? AND position = ? AND version_id = ?"
                " AND status IN (?, ?)",
                (section, position, newest, *_ACTIVE),
            ).fetchone()
            if revised is None:
                return False
            note = f"verdict revised: {v.reason}"
            conn.execute(
                "UPDATE retakes SET status = ?, note = ?, updated = ? WHERE id = ?",
                (RetakeStatus.DISMISSED, note, now, revised[0]),
            )
            _event(conn, revised[0], now, RetakeAction.DISMISSED, note=note, version_id=newest)
            return True
        if newest is not None and newest >= record.version_id:
            return False  # already applied, or a stale verdict of an older version
        if judged_later(conn, record):
            return False  # a newer version here already has its verdict
        active = conn.execute(
            "SELECT id FROM retakes WHERE section = ? AND position = ? AND status IN (?, ?)",
            (section, position, *_ACTIVE),
        ).fetchone()
        if opens:
            if active is None:
                cur = conn.execute(
                    "INSERT INTO retakes (section, position, tile_name, row, col, stage_x_um,"
                    " stage_y_um, pixel_size_um, score, baseline, reason, defocus_um,"
                    " first_seen, status, note, version_id, updated)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,'',?,?)",
                    (section, position, *fields, now, RetakeStatus.OPEN, record.version_id, now),
                )
                _event(
                    conn,
                    int(cur.lastrowid or 0),
                    now,
                    RetakeAction.OPENED,
                    note=v.reason,
                    version_id=record.version_id,
                    score=record.score,
                )
            else:
                # A failed retake: the entry shows the new version; the note and the
                # history say it was retaken and what the earlier score was.
                before = conn.execute(
                    "SELECT score FROM retakes WHERE id = ?", (active[0],)
                ).fetchone()[0]
                note = (
                    f"retaken as {record.tile_name}: score {_score(record.score)}, "
                    f"still {str(kind).replace('_', ' ')} (before: {_score(before)})"
                )
                conn.execute(
                    "UPDATE retakes SET tile_name = ?, row = ?, col = ?, stage_x_um = ?,"
                    " stage_y_um = ?, pixel_size_um = ?, score = ?, baseline = ?, reason = ?,"
                    " defocus_um = ?, status = ?, version_id = ?, updated = ?,"
                    " note = ? WHERE id = ?",
                    (
                        *fields,
                        RetakeStatus.RETAKEN_STILL_BAD,
                        record.version_id,
                        now,
                        note,
                        active[0],
                    ),
                )
                _event(
                    conn,
                    active[0],
                    now,
                    RetakeAction.RETAKEN_STILL_BAD,
                    note=note,
                    version_id=record.version_id,
                    score=record.score,
                )
            return True
        if active is None:
            return False
        # A good retake: keep why it was needed (score, reason) and record the fix.
        note = f"retaken as {record.tile_name}: score {format_score(record.score or 0.0)}"
        conn.execute(
            "UPDATE retakes SET status = ?, version_id = ?, updated = ?, note = ? WHERE id = ?",
            (RetakeStatus.RETAKEN_FIXED, record.version_id, now, note, active[0]),
        )
        _event(
            conn,
            active[0],
            now,
            RetakeAction.RETAKEN_FIXED,
            note=note,
            version_id=record.version_id,
            score=record.score,
        )
        return True


def _score(v: float | None) -> str:
    return "?" if v is None else format_score(v)


def _entry(row: Sequence[Any]) -> RetakeEntry:
    values = dict(zip(_COLUMNS, row, strict=True))
    return RetakeEntry(**values | {"status": RetakeStatus(values["status"])})


def entries(
    ledger: Ledger, *, section: str | None = None, only_open: bool = False
) -> list[RetakeEntry]:
    """The retake list from the ledger, in section and position order."""
    where: list[str] = []
    args: list[Any] = []
    if only_open:
        where.append("status IN (?, ?)")
        args += list(_ACTIVE)
    sql = f"SELECT {', '.join(_COLUMNS)} FROM retakes"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY section, row, col, tile_name, id"
    found = [_entry(r) for r in _read(ledger, sql, args)]
    if section is None:
        return found
    # However the section is written: '7', '007', 'S_007' or its folder 'S_007_1752450056'.
    wanted = section_index(section)
    return [e for e in found if e.section == section or section_index(e.section) == wanted]


def _read(ledger: Ledger, sql: str, args: Sequence[Any]) -> list[Any]:
    """A plain read (``Ledger.reading``: no write lock, never inside another's transaction)."""
    with ledger.reading() as conn:
        return conn.execute(sql, args).fetchall()


def history(ledger: Ledger, entry_id: int | None = None) -> list[RetakeEvent]:
    """The changes of one entry (or of all), oldest first."""
    sql = f"SELECT {', '.join(_EVENT_COLUMNS)} FROM retake_events"
    args: list[Any] = []
    if entry_id is not None:
        sql += " WHERE retake_id = ?"
        args.append(entry_id)
    found = _read(ledger, sql + " ORDER BY retake_id, id", args)
    return [RetakeEvent(r[0], r[1], RetakeAction(r[2]), *r[3:]) for r in found]


def _histories(ledger: Ledger) -> dict[int, list[RetakeEvent]]:
    out: dict[int, list[RetakeEvent]] = {}
    for e in history(ledger):
        out.setdefault(e.retake_id, []).append(e)
    return out


def dismiss(ledger: Ledger, entry_id: int, *, note: str, who: str | None = None) -> RetakeEntry:
    """Mark an entry as not needing a retake; KeyError if there is no such entry.

    Dismissing an entry again keeps the earlier note in its history.
    """
    if not note.strip():
        raise ValueError("a dismissal needs a note saying why")
    now = ledger.clock()
    with ledger.transaction() as conn:
        cur = conn.execute(
            "UPDATE retakes SET status = ?, note = ?, updated = ? WHERE id = ?",
            (RetakeStatus.DISMISSED, note.strip(), now, entry_id),
        )
        if cur.rowcount == 0:
            raise KeyError(entry_id)
        _event(
            conn, entry_id, now, RetakeAction.DISMISSED, who=who or _operator(), note=note.strip()
        )
    return next(e for e in entries(ledger) if e.id == entry_id)


def reopen(ledger: Ledger, entry_id: int, *, note: str, who: str | None = None) -> RetakeEntry:
    """Put a dismissed or fixed entry back on the list; KeyError if there is none.

    ValueError if it is still to do, or another entry for the same tile is.
    """
    if not note.strip():
        raise ValueError("reopening needs a note saying why")
    now = ledger.clock()
    with ledger.transaction() as conn:
        row = conn.execute(
            "SELECT status, section, position FROM retakes WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None:
            raise KeyError(entry_id)
        status, section, position = RetakeStatus(row[0]), row[1], row[2]
        if status.still_to_do:
            raise ValueError(f"entry {entry_id} is still to re-image ({status.words})")
        other = conn.execute(
            "SELECT id FROM retakes WHERE section = ? AND position = ? AND status IN (?, ?)",
            (section, position, *_ACTIVE),
        ).fetchone()
        if other is not None:
            raise ValueError(f"entry {other[0]} is already open for this tile")
        conn.execute(
            "UPDATE retakes SET status = ?, note = ?, updated = ? WHERE id = ?",
            (RetakeStatus.OPEN, note.strip(), now, entry_id),
        )
        _event(
            conn, entry_id, now, RetakeAction.REOPENED, who=who or _operator(), note=note.strip()
        )
    return next(e for e in entries(ledger) if e.id == entry_id)


# -- rendering ---------------------------------------------------------------------------


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def render_csv(items: Sequence[RetakeEntry]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    for e in items:
        d = asdict(e)
        d["first_seen"] = _iso(e.first_seen)
        d["updated"] = _iso(e.updated)
        w.writerow(["" if d[k] is None else d[k] for k in _COLUMNS])
    return buf.getvalue().encode("utf-8")


def render_json(
    items: Sequence[RetakeEntry],
    *,
    generated: float,
    events: Mapping[int, Sequence[RetakeEvent]] | None = None,
) -> bytes:
    """The list as JSON; with ``events``, each entry has its ``history``."""
    doc = {
        "generated": _iso(generated),
        "open": sum(e.still_to_do for e in items),
        "entries": [
            asdict(e)
            | {"first_seen": _iso(e.first_seen), "updated": _iso(e.updated)}
            | (
                {}
                if events is None
                else {"history": [asdict(h) | {"at": _iso(h.at)} for h in events.get(e.id, [])]}
            )
            for e in items
        ],
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_text(
    items: Sequence[RetakeEntry], events: Mapping[int, Sequence[RetakeEvent]] | None = None
) -> str:
    """A table the ATLAS operator can work through, still-to-do entries marked.

    With ``events``, every change after an entry was opened is listed under it.
    """
    if not items:
        return "No tiles on the retake list."
    head = ["ID", "SECTION", "TILE", "POSITION", "STAGE X/Y µm", "SCORE / BASELINE", "STATUS"]
    rows = []
    for e in items:
        # The layout's own words: row/col, mFoV/beam, grid/tile.
        rc = "-" if e.position in ("", e.tile_name) else position_words(e.position)
        stage = f"{_num(e.stage_x_um)} / {_num(e.stage_y_um)}"
        score = "-" if e.score is None else format_score(e.score)
        base = "-" if e.baseline is None else format_score(e.baseline)
        status = e.status.words
        rows.append([str(e.id), e.section, e.tile_name, rc, stage, f"{score} / {base}", status])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()]
    for e, r in zip(items, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines.append(f"    why: {e.reason}")
        changes = [h for h in (events or {}).get(e.id, []) if h.action is not RetakeAction.OPENED]
        if changes:
            for h in changes:
                by = f" by {h.who}" if h.who else ""
                text = f": {h.note}" if h.note else ""
                lines.append(f"    {_iso(h.at)} {h.action.words}{by}{text}")
        elif e.note:
            lines.append(f"    note: {e.note}")
    todo = sum(e.still_to_do for e in items)
    lines.append(f"{todo} of {len(items)} still to re-image.")
    return "\n".join(lines)


# -- atomic files ------------------------------------------------------------------------


def _default_writer(path: Path, data: bytes) -> None:
    atomic_write(path, data)


class RetakeSink:
    """Keeps the retake list in the ledger and its live files up to date."""

    def __init__(
        self,
        ledger: Ledger,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        writer: Writer = _default_writer,
    ) -> None:
        self._ledger = ledger
        self._dir = Path(state_dir)
        self._clock = clock
        self._writer = writer
        self._content: dict[Path, bytes] = {}  # what each live file should contain
        self._items: list[RetakeEntry] | None = None
        self._stats: dict[Path, tuple[int, int, int]] = {}  # of each file as last written
        self._dirty = True

    @property
    def paths(self) -> tuple[Path, Path]:
        return self._dir / CSV_NAME, self._dir / JSON_NAME

    def start(self) -> None:
        """Write the live files now, so an operator finds them before the first verdict."""
        self.write_files()

    def on_verdict(self, record: VerdictRecord) -> None:
        if apply(self._ledger, record):
            _log.info(
                "retake_list_changed",
                section=record.section,
                tile=record.tile_name,
                verdict=str(record.verdict.kind),
            )
            self._dirty = True
            self.write_files()

    def tick(self, now: float) -> None:
        """Retry a failed write; rebuild a live file a user deleted or changed."""
        if self._dirty or not self._files_intact():
            self.write_files()

    def close(self) -> None:
        if self._dirty:
            self.write_files()

    def _files_intact(self) -> bool:
        """Cheap check each tick: the files are as written if their stat is unchanged."""
        for path in self.paths:
            try:
                st = path.stat()
            except OSError:
                return False
            if self._stats.get(path) != (st.st_size, st.st_mtime_ns, st.st_ino):
                return False
        return True

    def write_files(self) -> bool:
        """Regenerate both live files from the ledger; False (and logged) if one failed."""
        items = entries(self._ledger)
        csv_path, json_path = self.paths
        if items != self._items or not self._content:
            # The JSON's "generated" stamp moves only when the list does.
            self._content = {
                csv_path: render_csv(items),
                json_path: render_json(
                    items, generated=self._clock(), events=_histories(self._ledger)
                ),
            }
            self._items = items
        ok = True
        for path in (csv_path, json_path):
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._writer(path, self._content[path])
                st = path.stat()
                self._stats[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError as exc:
                ok = False
                _log.error(
                    "retake_list_write_failed",
                    file=str(path),
                    error=exc.strerror or str(exc),
                    errno=exc.errno,
                    kept="the previous file is unchanged; retrying on the next tick",
                )
        self._dirty = not ok
        return ok


def build_sink(
    cfg: Config, ledger: Ledger, *, clock: Callable[[], float] = time.time
) -> RetakeSink:
    """The retake sink the service feeds every verdict to (its files are written by ``start``)."""
    return RetakeSink(ledger, cfg.state_dir, clock=clock)


# -- command line ----------------------------------------------------------------------


def list_main(cfg: Config, *, fmt: str, section: str | None, only_open: bool) -> int:
    """``focuswatch retakes``: print the list (safe while the service runs)."""
    ledger = _open(cfg, readonly=True)
    try:
        items = entries(ledger, section=section, only_open=only_open)
        events = _histories(ledger)
    finally:
        ledger.close()
    if fmt == "csv":
        print(render_csv(items).decode("utf-8"), end="")
    elif fmt == "json":
        print(render_json(items, generated=time.time(), events=events).decode("utf-8"), end="")
    else:
        print(render_text(items, events))
    return 0


def dismiss_main(cfg: Config, entry_id: int, *, note: str) -> int:
    """``focuswatch retakes dismiss ID --note TEXT``; also refreshes the live files."""
    return _edit_main(cfg, entry_id, note=note, change=dismiss, done="dismissed")


def reopen_main(cfg: Config, entry_id: int, *, note: str) -> int:
    """``focuswatch retakes reopen ID --note TEXT``; also refreshes the live files."""
    return _edit_main(cfg, entry_id, note=note, change=reopen, done="reopened")


def _edit_main(
    cfg: Config,
    entry_id: int,
    *,
    note: str,
    change: Callable[..., RetakeEntry],
    done: str,
) -> int:
    with _editing(cfg) as ledger:
        try:
            entry = change(ledger, entry_id, note=note)
        except KeyError:
            print(f"focuswatch retakes: no retake entry with id {entry_id}", file=sys.stderr)
            return 1
        except ValueError as exc:  # e.g. reopening an entry that is open
            print(f"focuswatch retakes: {exc}", file=sys.stderr)
            return 1
        RetakeSink(ledger, cfg.state_dir).write_files()
    print(f"{done} {entry.id}: section {entry.section}, tile {entry.tile_name} ({note})")
    return 0


@contextlib.contextmanager
def _editing(cfg: Config) -> Iterator[Ledger]:
    """The ledger for a change made from the command line.

    With no service running, the state folder's lock is held meanwhile, so that a
    reader who may only read the folder (and so reads it as immutable while nobody
    holds the lock) never reads the file while this writes it. Beside a running service
    SQLite's own locking suffices. (Without access to the lock file, the open below
    says what access is missing.)
    """
    lock = StateLock(cfg.state_dir)
    if lock.holder() is None:
        with contextlib.suppress(StateError):
            lock.acquire()
    try:
        ledger = _open(cfg, readonly=False)
        try:
            yield ledger
        finally:
            ledger.close()
    finally:
        lock.release()


def _open(cfg: Config, *, readonly: bool) -> Ledger:
    # StateError (no ledger, or an older schema) reaches the CLI as one clear line.
    return Ledger.open(cfg.state_dir, readonly=readonly, create=False)
