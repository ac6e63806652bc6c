"""The service survives whatever it finds in the watch folder and faults of its state folder.

Each test runs the real service in-process (real watchdog observer, real SQLite, real
worker processes) on real files; scoring is ``pipeline_jobs.fake_score`` (the pipeline
is under test here, not MHFD).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from focuswatch.verdict import VerdictKind
from servicekit import MakeService, turn_until, write_tif


def _bytes_path(folder: Path, name: bytes) -> str:
    """A file whose name is the raw bytes ``name`` (not necessarily UTF-8)."""
    raw = os.path.join(os.fsencode(folder), name)
    write_tif(Path(os.fsdecode(raw)))
    return os.fsdecode(raw)


def test_a_name_that_is_not_utf8_is_stored_losslessly_and_scored(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    odd = _bytes_path(watch / "S_001", b"Tile_r1-c3_\xe9.tif")
    svc, sink = make_service()
    later = write_tif(watch / "S_001" / "Tile_r1-c4_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 2)
    by_path = {r.path: r for r in sink.records}
    assert set(by_path) == {odd, str(later)}
    assert by_path[odd].verdict.kind is not VerdictKind.UNREADABLE
    # The path reads back as the very name on disk (it is what a retake overwrites).
    (version,) = svc.ledger.versions(odd)
    assert os.fsencode(version.path) == os.fsencode(odd)
    assert (version.row, version.col) == (1, 3)
    # People are shown an escaped name, never a surrogate that breaks their terminal.
    assert version.tile_name == "Tile_r1-c3_\\xe9.tif"


def test_a_restart_does_not_score_a_non_utf8_name_again(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    odd = _bytes_path(watch / "S_001", b"Tile_r2-c2_\xff\xfe.tif")
    svc, sink = make_service()
    turn_until(svc, lambda: len(sink.records) == 1)
    svc.stop(grace_s=0.5)
    again, sink2 = make_service()
    for _ in range(20):
        again.turn(0.02)
    assert sink2.records == []
    assert len(again.ledger.versions(odd)) == 1


@pytest.mark.parametrize(
    "name",
    [
        "S_001/Tile_r99999999999999999999-c1_S_001.tif",
        "S_001/Tile_r1-c99999999999999999999999.tif",
        "S_123456789012345678901234/Tile_r1-c1.tif",
    ],
)
def test_an_out_of_range_number_in_a_name_is_a_reason_not_a_crash(
    tmp_path: Path, make_service: MakeService, name: str
) -> None:
    watch = tmp_path / "watch"
    bad = write_tif(watch / name)
    svc, sink = make_service()
    good = write_tif(watch / "S_002" / "Tile_r1-c1_S_002.tif")
    turn_until(svc, lambda: len(sink.records) == 2)
    by_path = {r.path: r for r in sink.records}
    assert by_path[str(good)].verdict.kind is not VerdictKind.UNREADABLE
    assert by_path[str(bad)].verdict.kind is VerdictKind.UNREADABLE
    assert "out of range" in by_path[str(bad)].verdict.reason
