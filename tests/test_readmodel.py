"""The ledger's reads for the console: typed answers from real SQLite, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from focuswatch.ledger import STATES, Ledger
from focuswatch.readmodel import Activity, LastTile, ReadModel, WaferCell
from focuswatch.verdict import Verdict, VerdictKind
from test_ledger import Score


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_data_version_moves_only_when_another_connection_commits(tmp_path: Path) -> None:
    writer = Ledger.open(tmp_path)
    reader = Ledger.open(tmp_path, readonly=True)
    try:
        reads = ReadModel(reader)
        first = reads.data_version()
        assert reads.data_version() == first  # reading changes nothing
        reads.wafer_cells()
        assert reads.data_version() == first
        writer.set_meta("heartbeat", 1.0)
        moved = reads.data_version()
        assert moved != first
        assert reads.data_version() == moved
    finally:
        reader.close()
        writer.close()


def test_the_answers_are_typed_values_of_what_the_ledger_holds(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    led = Ledger.open(tmp_path, clock=clock)
    try:
        reads = ReadModel(led)
        assert reads.last_tile() is None
        assert reads.activity(0.0) == Activity(0, 0, None)
        ids = []
        for i, name in enumerate(("a.tif", "b.tif", "c.tif")):
            clock.now = 1000.0 + 10 * i
            vid, _ = led.add_version(f"/w/{name}", size=1, mtime_ns=1, tile_name=name)
            ids.append(vid)
        led.claim_ready(1)
        clock.now = 1100.0
        led.record_result(ids[0], verdict=Verdict(VerdictKind.UNREADABLE, "cannot read"))
        assert reads.last_tile() == LastTile("c.tif", 1020.0)
        assert reads.activity(1010.0) == Activity(arrived=2, scored=1, oldest_first_seen=1000.0)
        counts = reads.state_counts(STATES)
        assert (counts["ready"], counts["failed"], counts["scoring"]) == (2, 1, 0)
        cells = reads.wafer_cells()
        assert [c.name for c in cells] == ["a.tif", "b.tif", "c.tif"]
        assert isinstance(cells[0], WaferCell)
        assert (cells[0].verdict, cells[1].verdict) == ("unreadable", None)
        view = reads.tile(ids[0])
        assert view is not None
        assert (view.tile_name, view.verdict, view.reason) == ("a.tif", "unreadable", "cannot read")
        assert reads.tile(ids[-1] + 100) is None
        with pytest.raises(AttributeError):
            view.verdict = "in_focus"  # type: ignore[misc]  (frozen)
        h = reads.time_histogram("verdict", (50.0, 200.0))
        assert (h.count, h.total) == (1, 100.0)  # first seen at 1000, judged at 1100
        assert h.buckets == (("50.0", 0.0), ("200.0", 1.0), ("+Inf", 1.0))
        with pytest.raises(ValueError, match="no histogram"):
            reads.time_histogram("elsewhere", (1.0,))
    finally:
        led.close()


def test_a_section_fingerprint_moves_with_what_the_map_shows_of_it_only(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path, clock=Clock(1000.0))
    try:
        reads = ReadModel(led)
        ids = {}
        for section in ("001", "002"):
            name = f"Tile_r1-c1_S_{section}_1.tif"
            ids[section], _ = led.add_version(
                f"/w/{name}", size=1, mtime_ns=1, tile_name=name, section=section, row=1, col=1
            )
        # A name that is not UTF-8 is fingerprinted too (as hex), not a decoding error.
        led.add_version("/w/odd", size=1, mtime_ns=1, tile_name="Tile_\udcff.tif")
        first = reads.section_fingerprints()
        assert set(first) == {"001", "002", ""}
        led.set_meta("heartbeat", 1.0)  # not shown on the map
        assert reads.section_fingerprints() == first
        led.claim_ready(3)
        claimed = reads.section_fingerprints()
        assert claimed["001"] != first["001"]  # the state is shown (handed to a worker)
        led.record_result(
            ids["002"], verdict=Verdict(VerdictKind.IN_FOCUS, "sharp"), score=Score(10.0)
        )
        second = reads.section_fingerprints()
        assert second["001"] == claimed["001"]
        assert second["002"] != claimed["002"]
        led.revise_verdict(ids["002"], Verdict(VerdictKind.OUT_OF_FOCUS, "revised"))
        third = reads.section_fingerprints()
        assert third["002"] != second["002"]
        assert third["001"] == claimed["001"]
        (odd,) = reads.wafer_cells(section="")  # the tile of no section, on its own
        assert odd.section is None
        assert [c.verdict for c in reads.wafer_cells(section="002")] == ["out_of_focus"]
    finally:
        led.close()
