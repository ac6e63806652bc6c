"""The retake list: entries open, close on a good retake, and the live files survive abuse."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from structlog.testing import capture_logs

from focuswatch import cli, retakes
from focuswatch.config import Config
from focuswatch.errors import StateError
from focuswatch.files import atomic_write
from focuswatch.ledger import Ledger
from focuswatch.scoring import TileScore
from focuswatch.verdict import Placement, Verdict, VerdictKind, VerdictRecord

BAD = Verdict(VerdictKind.OUT_OF_FOCUS, "score 140 is 67 % below the median (420)", 420.0, 4.1)
GOOD = Verdict(VerdictKind.IN_FOCUS, "score 430 (median 420)", 420.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger.open(tmp_path / "state", clock=Clock())
    yield led
    led.close()


def record(
    ledger: Ledger,
    verdict: Verdict,
    *,
    name: str = "Tile_r1-c2_S_007",
    section: str = "S_007",
    row: int = 1,
    col: int = 2,
    score: float = 140.0,
) -> VerdictRecord:
    """A verdict for a new tile version, recorded in the ledger as the service does."""
    path = f"/data/{section}/{name}.tif"
    n = len(ledger.versions(path))
    vid, _ = ledger.add_version(
        path, size=1000, mtime_ns=n, tile_name=name, section=section, row=row, col=col
    )
    shape = (64, 64)
    tile_score = TileScore(path, score, None, 0.3, "cpu", shape, "uint8", 1.0, 1.0, None)
    ledger.record_result(vid, verdict=verdict, score=tile_score)
    return VerdictRecord(
        version_id=vid,
        path=path,
        tile_name=name,
        placement=Placement(
            section=section,
            row=row,
            col=col,
            stage_x_um=1234.5,
            stage_y_um=-567.8,
            pixel_size_um=0.004,
        ),
        score=score,
        verdict=verdict,
        at=ledger.clock() + vid,
    )


def sink_for(ledger: Ledger, **kw: retakes.Writer) -> retakes.RetakeSink:
    return retakes.RetakeSink(ledger, ledger.path.parent, clock=ledger.clock, **kw)


def test_bad_tile_opens_one_entry_even_if_delivered_twice(ledger: Ledger) -> None:
    """An out-of-focus verdict opens an entry; replaying it changes nothing."""
    sink = sink_for(ledger)
    rec = record(ledger, BAD)
    sink.on_verdict(rec)
    sink.on_verdict(rec)
    (e,) = retakes.entries(ledger)
    assert (e.section, e.tile_name, e.row, e.col, e.status) == (
        "S_007",
        rec.tile_name,
        1,
        2,
        "open",
    )
    assert (e.stage_x_um, e.stage_y_um, e.score, e.baseline, e.defocus_um) == (
        1234.5,
        -567.8,
        140.0,
        420.0,
        4.1,
    )
    rows = list(csv.DictReader(io.StringIO(sink.paths[0].read_text())))
    assert [r["tile_name"] for r in rows] == [rec.tile_name]
    doc = json.loads(sink.paths[1].read_text())
    assert doc["open"] == 1
    assert doc["entries"][0]["reason"] == BAD.reason


def test_good_retake_under_the_same_name_closes_the_entry(ledger: Ledger) -> None:
    """A new version of the same file that comes out in focus: retaken_fixed."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    sink.on_verdict(record(ledger, GOOD, score=430))
    (e,) = retakes.entries(ledger)
    assert e.status == "retaken_fixed"
    assert e.reason == BAD.reason  # why it had to be redone stays visible
    assert retakes.entries(ledger, only_open=True) == []


def test_retake_with_a_suffix_still_bad_then_fixed(ledger: Ledger) -> None:
    """Tile_…_2 at the same row/col: still bad keeps it to do; the next good one fixes it."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    sink.on_verdict(record(ledger, BAD, name="Tile_r1-c2_S_007_2", score=150))
    (e,) = retakes.entries(ledger)
    assert (e.status, e.tile_name, e.score) == ("retaken_still_bad", "Tile_r1-c2_S_007_2", 150)
    assert len(retakes.entries(ledger, only_open=True)) == 1
    sink.on_verdict(record(ledger, GOOD, name="Tile_r1-c2_S_007_3", score=430))
    (e,) = retakes.entries(ledger)
    assert e.status == "retaken_fixed"


def test_stale_verdict_of_an_older_version_is_ignored(ledger: Ledger) -> None:
    """Out-of-order delivery: the bad verdict of the old version cannot reopen the entry."""
    sink = sink_for(ledger)
    old_bad = record(ledger, BAD)
    new_good = record(ledger, GOOD, score=430)
    sink.on_verdict(new_good)
    sink.on_verdict(old_bad)
    assert retakes.entries(ledger) == []


def test_positions_and_sections_are_separate_entries(ledger: Ledger) -> None:
    """Same row/col in another section, or another row/col, is another entry."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    sink.on_verdict(record(ledger, BAD, name="Tile_r1-c2_S_008", section="S_008"))
    sink.on_verdict(record(ledger, BAD, name="Tile_r2-c2_S_007", row=2))
    assert len(retakes.entries(ledger)) == 3
    assert len(retakes.entries(ledger, section="S_007")) == 2


def test_empty_tiles_are_not_retakes(ledger: Ledger) -> None:
    """Empty tiles (resin, background) are never alerts nor retakes."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, Verdict(VerdictKind.EMPTY, "score 0; no tissue")))
    assert retakes.entries(ledger) == []


def test_an_unreadable_tile_is_a_retake_with_its_reason_until_a_readable_one_arrives(
    ledger: Ledger,
) -> None:
    """A truncated or corrupt tile must be imaged again as much as a blurred one (issue 12.15:
    such tiles used to show only in status failures and the summary)."""
    sink = sink_for(ledger)
    bad = Verdict(VerdictKind.UNREADABLE, "corrupt or truncated TIFF: read 512 of 4096 bytes")
    sink.on_verdict(record(ledger, bad, row=3))
    (entry,) = retakes.entries(ledger)
    assert (entry.row, entry.status) == (3, "open")
    assert entry.reason == bad.reason
    sink.on_verdict(record(ledger, GOOD, row=3, score=430.0))
    (entry,) = retakes.entries(ledger)
    assert entry.status == "retaken_fixed"


def test_deleted_or_corrupted_file_is_rebuilt_from_the_ledger(ledger: Ledger) -> None:
    """A user deletes retakes.csv and scribbles over retakes.json: the next tick repairs both."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    good_csv, good_json = (p.read_bytes() for p in sink.paths)
    sink.paths[0].unlink()
    sink.paths[1].write_text("{ not json")
    sink.tick(0.0)
    assert sink.paths[0].read_bytes() == good_csv
    assert sink.paths[1].read_bytes() == good_json


def test_full_disk_keeps_the_previous_file_and_retries(ledger: Ledger) -> None:
    """ENOSPC while writing: the old list stays, the error is logged, the next tick retries."""
    disk_full = {"on": False}

    def writer(path: Path, data: bytes) -> None:
        def write(f: BinaryIO, chunk: bytes) -> None:
            if disk_full["on"]:
                f.write(chunk[: len(chunk) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write(chunk)

        atomic_write(path, data, write=write)

    sink = sink_for(ledger, writer=writer)
    sink.on_verdict(record(ledger, BAD))
    before = [p.read_bytes() for p in sink.paths]
    disk_full["on"] = True
    with capture_logs() as logs:
        sink.on_verdict(record(ledger, BAD, name="Tile_r2-c2_S_007", row=2))
    assert [p.read_bytes() for p in sink.paths] == before
    failures = [e for e in logs if e["event"] == "retake_list_write_failed"]
    assert len(failures) == 2
    assert {f["errno"] for f in failures} == {errno.ENOSPC}
    leftovers = [p.name for p in sink.paths[0].parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    disk_full["on"] = False
    sink.tick(0.0)
    assert len(json.loads(sink.paths[1].read_text())["entries"]) == 2


def test_cli_lists_filters_and_dismisses(
    tmp_path: Path, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """`focuswatch retakes` prints the list; `dismiss ID --note` closes an entry."""
    state = str(ledger.path.parent)
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    sink.on_verdict(record(ledger, BAD, name="Tile_r1-c1_S_008", section="S_008", col=1))

    assert cli.main(["retakes", "--state", state]) == 0
    text = capsys.readouterr().out
    assert "Tile_r1-c2_S_007" in text
    assert "1234.5 / -567.8" in text
    assert "140 / 420" in text
    assert "2 of 2 still to re-image." in text

    assert cli.main(["retakes", "--state", state, "--format", "csv", "--section", "S_008"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["tile_name"] for r in rows] == ["Tile_r1-c1_S_008"]

    first = retakes.entries(ledger, section="S_007")[0].id
    assert cli.main(["retakes", "dismiss", str(first), "--note", "dust", "--state", state]) == 0
    capsys.readouterr()
    assert cli.main(["retakes", "--state", state, "--format", "json", "--open"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["tile_name"] for e in doc["entries"]] == ["Tile_r1-c1_S_008"]
    live = json.loads(sink.paths[1].read_text())  # the dismissal refreshed the live file
    assert {e["status"] for e in live["entries"]} == {"open", "dismissed"}

    assert cli.main(["retakes", "dismiss", "999", "--note", "x", "--state", state]) == 1
    assert "no retake entry with id 999" in capsys.readouterr().err


def test_listing_without_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    """No service has run with this --state: a StateError, not a traceback or an empty list."""
    cfg = Config(state_dir=tmp_path / "nothing")
    with pytest.raises(StateError, match="no ledger"):
        retakes.list_main(cfg, fmt="text", section=None, only_open=False)


def test_dismissing_without_a_ledger_creates_nothing(tmp_path: Path) -> None:
    """A mistyped --state is reported; no empty ledger appears there."""
    cfg = Config(state_dir=tmp_path / "typo")
    with pytest.raises(StateError, match="no ledger"):
        retakes.dismiss_main(cfg, 1, note="dust")
    assert not cfg.state_dir.exists()


def test_the_sink_writes_the_files_when_started_not_when_built(tmp_path: Path) -> None:
    """Starting the service regenerates the live files from the ledger; building the
    sink (the composition root) writes nothing yet."""
    cfg = Config(state_dir=tmp_path / "state")
    led = Ledger.open(cfg.state_dir)
    try:
        sink = retakes.build_sink(cfg, led, clock=Clock())
        assert not (cfg.state_dir / "retakes.csv").exists()
        sink.start()
        sink.close()
    finally:
        led.close()
    assert (cfg.state_dir / "retakes.csv").read_text().startswith("id,section,tile_name")
    assert json.loads((cfg.state_dir / "retakes.json").read_text())["entries"] == []


def test_position_is_row_and_column_else_the_tile_name(ledger: Ledger) -> None:
    """VerdictRecord.position: the key for "the same tile" in retakes and alert summaries."""
    from dataclasses import replace

    r = record(ledger, BAD, row=3, col=4)
    assert r.position == "r3-c4"
    assert replace(r, placement=replace(r.placement, row=None)).position == r.tile_name
    assert replace(r, placement=replace(r.placement, col=None)).position == r.tile_name
    retakes.apply(ledger, replace(r, placement=replace(r.placement, row=None, col=None)))
    (position,) = ledger.connection.execute("SELECT position FROM retakes").fetchone()
    assert position == r.tile_name


def test_reading_the_list_takes_no_write_lock(ledger: Ledger) -> None:
    """entries() on the service's own ledger is a plain read: it does not wait while
    another process holds the write lock."""
    retakes.apply(ledger, record(ledger, BAD))
    other = sqlite3.connect(ledger.path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        (entry,) = retakes.entries(ledger)  # would block, then fail, with a write lock
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert entry.status == "open"


def test_a_verdict_revised_to_in_focus_takes_its_tile_off_the_list(ledger: Ledger) -> None:
    """The judge revises a verdict when its context arrives late: the same version, now
    in focus, dismisses its open entry (once); the list says why."""
    sink = sink_for(ledger)
    bad = record(ledger, BAD)
    sink.on_verdict(bad)
    revised = Verdict(VerdictKind.IN_FOCUS, "score 140 (median of this tile position 150)")
    ledger.revise_verdict(bad.version_id, revised)
    again = ledger.verdict_record(bad.version_id)
    sink.on_verdict(again)
    sink.on_verdict(again)
    (e,) = retakes.entries(ledger)
    assert e.status == "dismissed"
    assert e.note == f"verdict revised: {revised.reason}"
    assert retakes.entries(ledger, only_open=True) == []


# -- the history of an entry -----------------------------------------------------------


def test_dismissing_again_keeps_every_note_with_who_and_when(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second dismissal adds to the entry's history instead of replacing the note."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    (entry,) = retakes.entries(ledger)
    retakes.dismiss(ledger, entry.id, note="dust on the detector", who="alice")
    monkeypatch.setenv("SUDO_USER", "bob")  # the operator behind sudo
    state = str(ledger.path.parent)
    assert (
        cli.main(["retakes", "dismiss", str(entry.id), "--note", "seen: wrinkle", "--state", state])
        == 0
    )
    events = retakes.history(ledger, entry.id)
    assert [(e.action, e.who, e.note) for e in events] == [
        ("opened", "", BAD.reason),
        ("dismissed", "alice", "dust on the detector"),
        ("dismissed", "bob", "seen: wrinkle"),
    ]
    assert events[1].at == 1_750_000_000.0  # when: the ledger's clock (injected here)
    assert events[2].at > events[1].at  # the command's own clock (now)
    (entry,) = retakes.entries(ledger)
    assert entry.note == "seen: wrinkle"
    capsys.readouterr()
    assert cli.main(["retakes", "--state", state]) == 0
    text = capsys.readouterr().out
    assert "dismissed by alice: dust on the detector" in text
    assert "dismissed by bob: seen: wrinkle" in text
    live = json.loads(sink.paths[1].read_text())  # the live file has the history too
    assert [h["action"] for h in live["entries"][0]["history"]] == [
        "opened",
        "dismissed",
        "dismissed",
    ]


def test_a_dismissed_entry_can_be_reopened_and_an_open_one_not(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retakes reopen ID --note` puts a dismissed entry back on the list (history kept);
    reopening one still to do, or a missing one, says why and exits 1."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    (entry,) = retakes.entries(ledger)
    state = str(ledger.path.parent)
    assert cli.main(["retakes", "reopen", str(entry.id), "--note", "x", "--state", state]) == 1
    assert "still to re-image" in capsys.readouterr().err
    retakes.dismiss(ledger, entry.id, note="dust", who="alice")
    assert retakes.entries(ledger, only_open=True) == []
    assert (
        cli.main(["retakes", "reopen", str(entry.id), "--note", "it was blur", "--state", state])
        == 0
    )
    assert f"reopened {entry.id}" in capsys.readouterr().out
    (entry,) = retakes.entries(ledger, only_open=True)
    assert (entry.status, entry.note) == ("open", "it was blur")
    assert [e.action for e in retakes.history(ledger, entry.id)] == [
        "opened",
        "dismissed",
        "reopened",
    ]
    assert cli.main(["retakes", "reopen", "999", "--note", "x", "--state", state]) == 1
    assert "no retake entry with id 999" in capsys.readouterr().err
    # Still one active entry per tile: a bad retake now updates this entry.
    sink.on_verdict(record(ledger, BAD, score=120))
    (entry,) = retakes.entries(ledger)
    assert entry.status == "retaken_still_bad"


def test_a_reopened_entry_cannot_clash_with_a_newer_open_one(ledger: Ledger) -> None:
    """Dismissed, then the tile came out bad again (a new entry): the old one stays closed."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD))
    (old,) = retakes.entries(ledger)
    retakes.dismiss(ledger, old.id, note="dust", who="alice")
    sink.on_verdict(record(ledger, BAD, name="Tile_r1-c2_S_007_2", score=100))
    with pytest.raises(ValueError, match="already open for this tile"):
        retakes.reopen(ledger, old.id, note="x", who="alice")


def test_a_failed_retake_shows_its_score_and_the_earlier_one(ledger: Ledger) -> None:
    """The entry shows the retake's score; its note and history keep the earlier score."""
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD, score=140))
    sink.on_verdict(record(ledger, BAD, name="Tile_r1-c2_S_007_2", score=150))
    (entry,) = retakes.entries(ledger)
    assert (entry.status, entry.score) == ("retaken_still_bad", 150)
    assert (
        entry.note == "retaken as Tile_r1-c2_S_007_2: score 150, still out of focus (before: 140)"
    )
    events = retakes.history(ledger, entry.id)
    assert [(e.action, e.score) for e in events] == [("opened", 140), ("retaken_still_bad", 150)]
    text = retakes.render_text(retakes.entries(ledger), {entry.id: events})
    assert "retaken still bad: retaken as Tile_r1-c2_S_007_2: score 150" in text


OPERATORS_GID = 64999  # a group that only this test uses


def _cli_as(uid: int, groups: list[int], args: list[str], out: Path) -> tuple[int, str, str]:
    """``focuswatch ARGS`` run by another account: a forked child that drops root first.

    (A new interpreter could not even start as that account: this checkout and its
    Python live under folders only root may enter.)
    """
    stdout, stderr = out / f"out-{uid}-{len(groups)}", out / f"err-{uid}-{len(groups)}"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 70
        try:
            os.setgroups(groups)
            os.setgid(65534)
            os.setuid(uid)
            with stdout.open("w") as o, stderr.open("w") as e:
                sys.stdout, sys.stderr = o, e
                rc = cli.main(args)
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout.read_text(), stderr.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an operator account needs root")
def test_an_operator_in_the_group_reads_the_list_and_is_told_what_writing_needs() -> None:
    """State files are group-readable; a write command says in one line what it needs."""
    with tempfile.TemporaryDirectory(prefix="focuswatch-operator-") as tree:
        root = Path(tree)
        root.chmod(0o755)
        (outs := root / "outs").mkdir()
        outs.chmod(0o777)
        state = root / "state"
        old = os.umask(0o027)  # the unit's UMask=
        try:
            state.mkdir()
            led = Ledger.open(state, clock=Clock())
            sink = sink_for(led)
            sink.on_verdict(record(led, BAD, name="Tile_r1-c1_S_007", row=1, col=1))
            sink.close()
            led.close()
        finally:
            os.umask(old)
        for p in [state, *state.iterdir()]:
            os.chown(p, 0, OPERATORS_GID)
        assert (state / "retakes.csv").stat().st_mode & 0o777 == 0o640
        listing = ["retakes", "--state", str(state), "--format", "csv"]
        rc, out, err = _cli_as(65534, [OPERATORS_GID], listing, outs)
        assert rc == 0, err
        assert "Tile_r1-c1_S_007" in out
        dismiss = ["retakes", "dismiss", "1", "--note", "ok", "--state", str(state)]
        rc, out, err = _cli_as(65534, [OPERATORS_GID], dismiss, outs)
        assert rc == 1
        assert len(err.strip().splitlines()) == 1, err
        assert "run it as the service's user" in err
        rc, out, err = _cli_as(65534, [], listing, outs)
        assert rc == 1
        assert "usermod -aG focuswatch" in err


@pytest.mark.parametrize("written", ["7", "007", "S_007", "S_007_1752450056"])
def test_section_filter_takes_the_section_however_it_is_written(
    ledger: Ledger, written: str
) -> None:
    sink = sink_for(ledger)
    sink.on_verdict(record(ledger, BAD, section="007", name="Tile_r1-c2_S_007"))
    sink.on_verdict(record(ledger, BAD, section="070", name="Tile_r1-c2_S_070"))
    assert [e.section for e in retakes.entries(ledger, section=written)] == ["007"]


def test_dismiss_help_names_the_state_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["retakes", "dismiss", "--help"])
    assert "--state DIR" in capsys.readouterr().out


def test_reopen_help_names_the_state_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["retakes", "reopen", "--help"])
    assert "--state DIR" in capsys.readouterr().out
