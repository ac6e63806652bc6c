"""The ledger: real SQLite in WAL mode, one result per version, context queries."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from focuswatch import ledger as ledger_mod
from focuswatch.errors import StateError
from focuswatch.ledger import DB_NAME, MIGRATIONS, Ledger, damage, section_index, set_aside
from focuswatch.tiles import TileMeta
from focuswatch.verdict import Placement, Verdict, VerdictKind

IN = Verdict(VerdictKind.IN_FOCUS, "sharp")
OUT = Verdict(VerdictKind.OUT_OF_FOCUS, "blurred", baseline=100.0, defocus_um=3.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def tags() -> TileMeta:
    """What a tile's FibicsXML says (as ``tiles.read_meta`` gives it)."""
    where = Placement(stage_x_um=10.0, stage_y_um=20.0, pixel_size_um=0.004, dwell_ns=100.0)
    return TileMeta(placement=replace(where, working_distance_um=5000.0), source="fibics")


@dataclass
class Score:
    score: float
    patch_scores: list[list[float]] | None = None
    content: float = 0.5
    backend: str = "numpy"
    shape: tuple[int, int] = (64, 64)
    read_ms: float = 1.0
    score_ms: float = 2.0
    meta: Any = None


@pytest.fixture
def led(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "state", clock=Clock())


def add(led: Ledger, path: str, *, size: int = 1, mtime: int = 1, **kw: Any) -> int:
    vid, _ = led.add_version(path, size=size, mtime_ns=mtime, tile_name=Path(path).name, **kw)
    return vid


def test_open_creates_wal_database_at_schema_version(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path / "s")
    assert (tmp_path / "s" / "focuswatch.db").is_file()
    assert led.schema_version == len(MIGRATIONS)
    mode = led.connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    led.close()
    # Re-opening does not re-run migrations (they would fail on existing tables).
    assert Ledger.open(tmp_path / "s").schema_version == len(MIGRATIONS)


def test_appended_migration_is_applied_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger.open(tmp_path).close()
    extra = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER);"]
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", extra)
    led = Ledger.open(tmp_path)
    assert led.schema_version == len(extra)
    led.connection.execute("INSERT INTO extra VALUES (1)")


def test_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    Ledger.open(tmp_path).connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(StateError, match="newer than this"):
        Ledger.open(tmp_path)


def test_unwritable_state_folder_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot"):
        Ledger.open(blocker / "state")


def test_readonly_open_of_missing_ledger_says_so(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no ledger"):
        Ledger.open(tmp_path, readonly=True)


def test_readonly_reader_sees_writes_and_cannot_write(led: Ledger, tmp_path: Path) -> None:
    add(led, "/w/a.tif")
    ro = Ledger.open(tmp_path / "state", readonly=True)
    assert ro.counts()["ready"] == 1
    add(led, "/w/b.tif")
    assert ro.counts()["ready"] == 2
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.connection.execute("DELETE FROM versions")


def test_same_version_twice_is_one_row(led: Ledger) -> None:
    a, created_a = led.add_version("/w/t.tif", size=5, mtime_ns=9, tile_name="t.tif")
    b, created_b = led.add_version("/w/t.tif", size=5, mtime_ns=9, tile_name="t.tif")
    assert (created_a, created_b) == (True, False)
    assert a == b
    assert len(led.versions("/w/t.tif")) == 1


def test_new_version_of_same_path_supersedes_the_old(led: Ledger) -> None:
    old = add(led, "/w/t.tif", mtime=1)
    new = add(led, "/w/t.tif", mtime=2)
    assert led.get(old).superseded
    assert not led.get(new).superseded
    claimed = led.claim_ready(10)
    assert [v.id for v in claimed] == [new]


def test_claim_release_and_attempts(led: Ledger) -> None:
    vids = [add(led, f"/w/{i}.tif") for i in range(5)]
    first = led.claim_ready(3)
    assert [v.id for v in first] == vids[:3]
    assert all(v.state == "scoring" and v.attempts == 1 for v in first)
    assert led.get(vids[0]).state == "scoring"
    led.release(vids[0], error="worker died", undo_attempt=False)
    led.release(vids[1], undo_attempt=True)
    assert led.get(vids[0]).state == "ready"
    assert led.get(vids[0]).attempts == 1
    assert led.get(vids[0]).last_error == "worker died"
    assert led.get(vids[1]).attempts == 0
    assert led.claim_ready(0) == []


def test_exactly_one_result_per_version(led: Ledger) -> None:
    vid = add(led, "/w/a.tif")
    led.claim_ready(1)
    assert led.record_result(vid, verdict=IN, score=Score(10.0, meta=tags()), worker="w1")
    assert not led.record_result(vid, verdict=OUT, score=Score(99.0), worker="w2")
    r = led.result(vid)
    assert r is not None
    assert (r["score"], r["verdict"], r["worker"]) == (10.0, "in_focus", "w1")
    v = led.get(vid)
    assert v.state == "scored"
    assert v.placement == tags().placement
    count = led.connection.execute("SELECT count(*) FROM results").fetchone()[0]
    assert count == 1


@dataclass
class SignedScore(Score):
    fine_fraction: float | None = None


def test_result_keeps_the_scale_signature(led: Ledger) -> None:
    """``TileScore.fine_fraction`` lands in the results row (NULL when there is none)."""
    a, b = add(led, "/w/a.tif"), add(led, "/w/b.tif")
    led.record_result(a, verdict=IN, score=SignedScore(10.0, fine_fraction=0.8))
    led.record_result(b, verdict=IN, score=SignedScore(10.0))
    ra, rb = led.result(a), led.result(b)
    assert ra is not None
    assert rb is not None
    assert (ra["fine_fraction"], rb["fine_fraction"]) == (0.8, None)


def test_unreadable_result_marks_version_failed_with_reason(led: Ledger) -> None:
    vid = add(led, "/w/bad.tif")
    led.record_result(vid, verdict=Verdict(VerdictKind.UNREADABLE, "not a TIFF"))
    v = led.get(vid)
    assert (v.state, v.last_error) == ("failed", "not a TIFF")
    rec = led.verdict_record(vid)
    assert rec.verdict.kind is VerdictKind.UNREADABLE
    assert rec.score is None


def test_verdict_record_needs_a_result_and_names_the_tile(led: Ledger) -> None:
    vid = add(led, "/w/a.tif", section="S_001", row=1, col=2)
    with pytest.raises(KeyError):
        led.verdict_record(vid)
    led.record_result(vid, verdict=OUT, score=Score(5.0))
    rec = led.verdict_record(vid)
    assert rec.verdict == OUT
    assert (rec.section, rec.placement.row, rec.placement.col, rec.score) == ("S_001", 1, 2, 5.0)


def test_recover_returns_scoring_versions_to_ready(led: Ledger) -> None:
    a = add(led, "/w/a.tif")
    b = add(led, "/w/b.tif")
    led.claim_ready(2)
    led.record_result(b, verdict=IN, score=Score(1.0))
    assert led.recover() == 1
    assert led.get(a).state == "ready"
    assert led.get(b).state == "scored"


def test_section_index_takes_first_number() -> None:
    assert section_index("S_012_1752450056") == 12
    assert section_index("001_S3R1") == 1
    assert section_index("alpha") is None
    assert section_index(None) is None


def _scored(led: Ledger, section: str, score: float, verdict: Verdict = IN, **kw: Any) -> int:
    vid = add(led, f"/w/{section}/t_{score}.tif", section=section, **kw)
    led.record_result(vid, verdict=verdict, score=Score(score))
    return vid


def _history(led: Ledger, row: int, col: int, **kw: Any) -> list[float]:
    return [p.score for p in led.position_history(f"r{row}-c{col}", **kw)]


def test_history_scores_most_recent_section_first_with_their_verdicts(led: Ledger) -> None:
    """Every scored earlier section is evidence; the policy decides which to trust."""
    for i, s in enumerate([10.0, 20.0, 30.0, 40.0]):
        _scored(led, f"S_{i:03d}", s, row=1, col=1)
    _scored(led, "S_002", 999.0, verdict=OUT, row=1, col=1)  # the latest of its section
    _scored(led, "S_001", 777.0, row=2, col=1)  # another position
    got = led.position_history("r1-c1", before_section_index=3, limit=5)
    assert [(p.score, p.verdict) for p in got] == [
        (999.0, "out_of_focus"),
        (20.0, "in_focus"),
        (10.0, "in_focus"),
    ]
    assert _history(led, 1, 1, before_section_index=3, limit=2) == [999.0, 20.0]
    assert _history(led, 1, 1, before_section_index=0, limit=5) == []


def test_history_takes_one_score_per_section_the_latest(led: Ledger) -> None:
    _scored(led, "S_001", 10.0, row=0, col=0)
    _scored(led, "S_001", 12.0, row=0, col=0)  # retake with a new suffix
    assert _history(led, 0, 0, before_section_index=2, limit=5) == [12.0]


def test_history_ignores_superseded_versions(led: Ledger) -> None:
    vid, _ = led.add_version(
        "/w/S_001/t.tif", size=1, mtime_ns=1, tile_name="t", section="S_001", row=0, col=0
    )
    led.record_result(vid, verdict=IN, score=Score(10.0))
    led.add_version(
        "/w/S_001/t.tif", size=1, mtime_ns=2, tile_name="t", section="S_001", row=0, col=0
    )
    assert _history(led, 0, 0, before_section_index=5, limit=5) == []


def test_section_peers_excludes_the_tile_itself_and_empty_tiles(led: Ledger) -> None:
    a = _scored(led, "S_005", 1.0, row=0, col=0)
    b = _scored(led, "S_005", 2.0, verdict=OUT, row=0, col=1)
    _scored(led, "S_005", 3.0, verdict=Verdict(VerdictKind.EMPTY, "blank"), row=0, col=2)
    _scored(led, "S_006", 4.0, row=0, col=0)
    assert [(p.version_id, p.score) for p in led.section_peers("S_005", exclude_version=a)] == [
        (b, 2.0)
    ]
    peers = led.section_peers("S_005")
    assert [(p.score, p.verdict) for p in peers] == [(1.0, "in_focus"), (2.0, "out_of_focus")]


def test_status_summary_counts_backlog_and_recent(led: Ledger) -> None:
    ok = _scored(led, "S_001", 5.0)
    bad = add(led, "/w/bad.tif")
    led.record_result(bad, verdict=Verdict(VerdictKind.UNREADABLE, "truncated"))
    add(led, "/w/waiting.tif")
    led.set_meta("executor", {"backend": "local", "workers": 1})
    s = led.status_summary(last=5)
    assert s["counts"]["scored"] == 1
    assert s["counts"]["failed"] == 1
    assert s["backlog"] == 1
    assert s["executor"] == {"backend": "local", "workers": 1}
    assert [r["verdict"] for r in s["recent"]] == ["unreadable", "in_focus"]
    assert s["failures"][0]["reason"] == "truncated"
    assert s["tiles_per_min"] > 0
    assert led.undelivered() == [ok, bad]
    led.mark_delivered(ok)
    assert led.undelivered() == [bad]


def test_a_version_starts_as_seen_or_ready_only(led: Ledger) -> None:
    with pytest.raises(ValueError, match="starts as"):
        led.add_version("/w/x.tif", size=1, mtime_ns=1, tile_name="x", state="scored")


def test_position_history_returns_each_sections_focus_map(led: Ledger) -> None:
    """The policy compares each patch with the same patch in earlier sections."""
    vid = add(led, "/w/S_001/t.tif", section="S_001", row=0, col=0)
    led.record_result(vid, verdict=IN, score=Score(10.0, patch_scores=[[1.0, 2.0], [3.0, 4.0]]))
    vid = add(led, "/w/S_002/t.tif", section="S_002", row=0, col=0)
    led.record_result(vid, verdict=IN, score=Score(11.0))
    got = led.position_history("r0-c0", before_section_index=3, limit=5)
    assert [(p.score, p.patch_scores) for p in got] == [
        (11.0, None),
        (10.0, [[1.0, 2.0], [3.0, 4.0]]),
    ]


def test_known_paths_under_a_folder_reads_only_that_folder(led: Ledger) -> None:
    for path in ("/w/S_001/a.tif", "/w/S_001/sub/b.tif", "/w/S_0010/c.tif", "/w/S_00/d.tif"):
        led.add_version(path, size=1, mtime_ns=2, tile_name=path.rsplit("/", 1)[1])
    assert set(led.known_paths(under="/w/S_001")) == {"/w/S_001/a.tif", "/w/S_001/sub/b.tif"}
    assert set(led.known_paths(under="/w/S_001/")) == {"/w/S_001/a.tif", "/w/S_001/sub/b.tif"}
    assert len(led.known_paths()) == 4


def _ledger_with_rows(state: Path, n: int = 400) -> Path:
    ledger = Ledger.open(state)
    for i in range(n):
        ledger.add_version(
            f"/w/S_{i:03d}/Tile_r1-c1_{i:06d}_{'x' * 60}.tif", size=i, mtime_ns=i, tile_name=f"t{i}"
        )
    ledger.close()
    return state / DB_NAME


def test_a_ledger_with_a_damaged_page_is_refused_with_the_way_out(tmp_path: Path) -> None:
    db = _ledger_with_rows(tmp_path)
    pages = db.stat().st_size // 4096
    assert pages > 4
    with db.open("r+b") as f:  # garbage over a page in the middle
        f.seek((pages // 2) * 4096)
        f.write(b"\xa5" * 4096)
    before = db.read_bytes()
    for readonly in (False, True):  # the service, and ``status`` beside it
        with pytest.raises(StateError, match=r"is damaged: .*--reset-ledger"):
            Ledger.open(tmp_path, readonly=readonly)
    assert db.read_bytes() == before  # nothing was changed


def test_an_empty_ledger_file_is_damage_not_a_new_ledger(tmp_path: Path) -> None:
    """Taken for a new ledger, it would have every tile scored and alerted again."""
    (tmp_path / DB_NAME).write_bytes(b"")
    with pytest.raises(StateError, match=r"empty \(0 bytes\)"):
        Ledger.open(tmp_path)
    assert (tmp_path / DB_NAME).stat().st_size == 0


def test_set_aside_moves_only_a_damaged_ledger(tmp_path: Path) -> None:
    _ledger_with_rows(tmp_path, n=3)
    with pytest.raises(StateError, match="is healthy"):
        set_aside(tmp_path)
    (tmp_path / DB_NAME).write_bytes(b"not a database, just text" * 200)
    aside = set_aside(tmp_path, clock=lambda: 0.0)
    assert aside is not None
    assert aside.name.startswith(f"{DB_NAME}.damaged-")
    assert aside.read_bytes().startswith(b"not a database")
    assert not (tmp_path / DB_NAME).exists()
    fresh = Ledger.open(tmp_path)
    assert fresh.counts()["ready"] == 0
    fresh.close()


def test_a_new_ledger_appears_whole_by_rename(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "state")
    ledger.close()
    assert sorted(p.name for p in (tmp_path / "state").iterdir() if "new" in p.name) == []
    assert damage(tmp_path / "state" / DB_NAME) is None


def test_a_bug_in_sql_is_not_taken_for_a_full_disk(tmp_path: Path) -> None:
    """Only storage faults (full, read-only, I/O, busy) are waited out; a bad statement
    raises as itself, or the service would retry it forever."""
    ledger = Ledger.open(tmp_path)
    with (
        pytest.raises(sqlite3.OperationalError, match="no such column"),
        ledger.transaction() as conn,
    ):
        conn.execute("UPDATE versions SET nosuchcolumn = 1")
    ledger.close()


def test_only_a_corrupt_file_is_called_damaged(tmp_path: Path) -> None:
    """A ledger SQLite cannot open for another reason (no permission, no space for its
    index) is not damaged, so nobody is told to reset it."""
    _ledger_with_rows(tmp_path, n=3)
    db = tmp_path / DB_NAME
    assert damage(db) is None
    db.write_bytes(b"SQLite format 3\x00" + b"\x01" * 200)
    assert damage(db) is not None


def test_known_paths_under_a_folder_include_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Stored as BLOBs they sort after all text; a folder's range must still find them."""
    import os

    ledger = Ledger.open(tmp_path)
    odd = os.fsdecode(b"/w/S_001/Tile_r1-c1_\xe9.tif")
    for path in (odd, "/w/S_001/Tile_r1-c2.tif", "/w/S_002/Tile_r1-c1.tif"):
        ledger.add_version(path, size=1, mtime_ns=1, tile_name=os.path.basename(path))
    assert sorted(ledger.known_paths(under="/w/S_001")) == sorted([odd, "/w/S_001/Tile_r1-c2.tif"])
    odd_dir = os.fsdecode(b"/w/S_\xff")
    ledger.add_version(f"{odd_dir}/t.tif", size=1, mtime_ns=1, tile_name="t.tif")
    assert list(ledger.known_paths(under=odd_dir)) == [f"{odd_dir}/t.tif"]
    ledger.close()
