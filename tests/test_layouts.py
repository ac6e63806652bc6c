"""Layouts: every microscope's files get a section and a position (focuswatch.tiles.layouts).

Parsing on real folders and side files, hostile names, config errors with key paths,
and the service on synthetic MultiSEM, SBEMimage and ATLAS acquisitions: a blurred
beam or tile is judged against the same position in earlier sections.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from focuswatch import retakes, synth
from focuswatch.config import Config, WatchConfig, parse
from focuswatch.errors import ConfigError, TileError
from focuswatch.service import Service
from focuswatch.tiles import layouts, read_meta
from focuswatch.verdict import Placement, name_positions
from servicekit import MakeService, RecordingSink, make_cfg, turn_until

# ------------------------------------------------------------------------- parsing


def test_atlas_placement_is_the_name_s_row_and_col(tmp_path: Path) -> None:
    path = tmp_path / "S_007_1752450056" / "Tile_r3-c4_S_007_1752450056.tif"
    place = layouts.AtlasLayout().place(str(path))
    assert (place.section, place.position, place.row, place.col) == ("007", "r3-c4", 3, 4)
    assert place.taken is None


@pytest.mark.parametrize(
    ("layout", "name", "what"),
    [
        (layouts.AtlasLayout(), "S_001/Tile_r12345678901-c1_S_001.tif", "row"),
        (layouts.MultiSemLayout(), "001_S1R1/000001/001_000001_1234567890123_20250101.png", "beam"),
        (layouts.MultiSemLayout(), "001_S1R1/000001/001_12345678901234_001_20250101.png", "mFoV"),
        (layouts.SbemLayout(), "tiles/g0000/t0000/st_g0000_t0000_s123456789012.tif", "section"),
        (layouts.SbemLayout(), "tiles/g0000/t0000/st_g99999999999_t0000_s00001.tif", "grid"),
    ],
)
def test_an_over_long_number_is_a_tile_error_naming_it(
    tmp_path: Path, layout: layouts.Layout, name: str, what: str
) -> None:
    with pytest.raises(TileError, match=rf"{what} number \d+ in the name is out of range"):
        layout.place(str(tmp_path / name))


def test_leading_zeros_are_not_over_long() -> None:
    name = "/w/tiles/g0000/t0003/st_g0000_t0003_s000000000000007.tif"
    assert layouts.SbemLayout().place(name).section == "000000000000007"


def test_non_utf8_names_are_placed_like_any_other(tmp_path: Path) -> None:
    """A name that is not UTF-8 (bytes the file system allows) is parsed, not a crash."""
    odd = os.fsdecode(b"st\xe9ck")
    sbem = layouts.SbemLayout().place(f"/w/tiles/g0001/t0002/{odd}_g0001_t0002_s00004.tif")
    assert (sbem.section, sbem.position) == ("00004", "grid 1, tile 2")
    folder = os.fsdecode(b"001_S3R1")
    ms = layouts.MultiSemLayout().place(f"/w/{folder}/000005/001_000005_007_2025{odd}.png")
    assert (ms.section, ms.position) == ("3", "mFoV 5, beam 7")
    junk = os.fsdecode(b"\xff\xfe")
    other = layouts.AutoLayout().place(f"/w/{junk}.tif")
    assert other == Placement()


def test_multisem_section_from_its_folder_position_from_mfov_and_beam(tmp_path: Path) -> None:
    section = tmp_path / "004_S12R1"
    (section / "000003").mkdir(parents=True)
    name = "004_000003_061_2025-07-13T2340561993464.bmp"
    (section / "full_image_coordinates.txt").write_text(
        f"000003\\{name}\t1000.0\t-2000.0\t0\n", encoding="utf-8"
    )
    place = layouts.MultiSemLayout(pixel_nm=4.0).place(str(section / "000003" / name))
    assert (place.section, place.position) == ("12", "mFoV 3, beam 61")
    assert place.stage_x_um == pytest.approx(4.0)
    assert place.stage_y_um == pytest.approx(-8.0)
    assert place.taken is not None
    assert place.taken.endswith("20250713234056" + "1993464")
    other_region = layouts.MultiSemLayout().place(str(tmp_path / "005_S12R2" / "000003" / name))
    assert other_region.position == "region 2, mFoV 3, beam 61"


def test_multisem_coordinates_are_read_as_they_are_appended(tmp_path: Path) -> None:
    """The coordinates file grows during the section; a line written later is found."""
    section = tmp_path / "001_S0R1"
    (section / "000001").mkdir(parents=True)
    coords = section / "full_image_coordinates.txt"
    coords.write_text("000001\\001_000001_001_1.png\t10\t20\t0\nnot a line\n", encoding="utf-8")
    layout = layouts.MultiSemLayout(pixel_nm=1000.0)
    first = layout.place(str(section / "000001" / "001_000001_001_1.png"))
    second = layout.place(str(section / "000001" / "001_000001_002_1.png"))
    assert (first.stage_x_um, first.stage_y_um) == (10.0, 20.0)
    assert second.stage_x_um is None  # not written yet: unknown, not an error
    with coords.open("a", encoding="utf-8") as fh:
        fh.write("000001\\001_000001_002_1.png\t30\t40\t0\n000001\\001_000001_003_1.png\t5")
    second = layout.place(str(section / "000001" / "001_000001_002_1.png"))
    assert (second.stage_x_um, second.stage_y_um) == (30.0, 40.0)
    # A half-written last line is not read until it is complete.
    assert layout.place(str(section / "000001" / "001_000001_003_1.png")).stage_x_um is None


def test_sbemimage_slice_grid_tile_and_stage_from_its_logs(tmp_path: Path) -> None:
    logs = tmp_path / "meta" / "logs"
    logs.mkdir(parents=True)
    name = "mystack_g0002_t0017_s00031.tif"
    (logs / "imagelist_2025.txt").write_text(
        f"tiles\\g0002\\t0017\\{name};1500.0;-2500.0;775.0;31\ngarbage;x;y\n", encoding="utf-8"
    )
    (logs / "metadata_2025.txt").write_text(
        "SESSION: {'x': 1}\nTILE: {'filename': 'tiles/g0002/t0017/"
        + name
        + "', 'wd_stig_xy': [0.0051, 0.2, -0.1]}\nTILE: {broken\n",
        encoding="utf-8",
    )
    path = tmp_path / "tiles" / "g0002" / "t0017" / name
    place = layouts.SbemLayout().place(str(path))
    assert (place.section, place.position) == ("00031", "grid 2, tile 17")
    assert (place.stage_x_um, place.stage_y_um, place.stage_z_um) == (1.5, -2.5, 0.775)
    assert place.working_distance_um == pytest.approx(5100.0)


def test_pattern_layout_row_col_or_position(tmp_path: Path) -> None:
    grid = layouts.PatternLayout(
        r"sec(?P<section>\d+)/img_x(?P<col>\d+)_y(?P<row>\d+)\.tif$", str(tmp_path)
    )
    place = grid.place(str(tmp_path / "run1" / "sec0042" / "img_x3_y7.tif"))
    assert (place.section, place.position, place.row, place.col) == ("0042", "r7-c3", 7, 3)
    named = layouts.PatternLayout(
        r"^(?P<section>\d+)/(?P<position>[a-z]+)_(?P<taken>\d+)\.tif$", str(tmp_path)
    )
    place = named.place(str(tmp_path / "12" / "left_0002.tif"))
    assert (place.section, place.position) == ("12", "left")
    # The stamp sorts as its number: the retake numbered 10 comes after the one numbered 9.
    assert place.taken == "2".rjust(24, "0")
    nine, ten = (named.place(str(tmp_path / "12" / f"left_{n}.tif")) for n in (9, 10))
    assert nine is not None
    assert ten is not None
    assert (nine.taken or "") < (ten.taken or "")
    assert named.place(str(tmp_path / "elsewhere.tif")) is None  # no tile: skipped
    with pytest.raises(TileError, match="row number"):
        grid.place(str(tmp_path / "sec1" / "img_x1_y12345678901.tif"))


@pytest.mark.parametrize(
    ("watch", "problem"),
    [
        ({"pattern": "(?P<section>"}, "at 'watch.pattern': is not a valid regular expression"),
        ({"pattern": r"(?P<row>\d+)_(?P<col>\d+)"}, "at 'watch.pattern': must have a named group"),
        ({"pattern": r"(?P<section>\d+)_(?P<row>\d+)"}, "at 'watch.pattern': must have named"),
        ({"layout": "pattern"}, "at 'watch.pattern': required when watch.layout = 'pattern'"),
        ({"layout": "zeiss"}, "at 'watch.layout': must be one of 'auto', 'atlas'"),
    ],
)
def test_a_bad_layout_config_names_its_key(watch: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"watch": watch})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_a_good_pattern_config_parses() -> None:
    cfg = parse({"watch": {"layout": "pattern", "pattern": r"(?P<section>\d+)/(?P<position>.+)"}})
    assert cfg.watch.layout == "pattern"


# -------------------------------------------------------------- detection and synth


@pytest.fixture(scope="module")
def acquisitions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small rehearsal acquisition per layout, written by ``focuswatch synth``."""
    out = {}
    for layout in synth.LAYOUTS:
        root = tmp_path_factory.mktemp(layout)
        synth.write_wafer(
            root,
            sections=2,
            rows=2,
            cols=2,
            size=64,
            blur_fraction=0.25,
            empty_tiles=1,
            corrupt_tiles=1,
            seed=3,
            layout=layout,
        )
        out[layout] = root
    return out


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_auto_detects_each_layout_from_the_folder(
    acquisitions: dict[str, Path], layout: str
) -> None:
    found, why = layouts.detect(str(acquisitions[layout]))
    assert found == layout, why


def test_auto_on_an_empty_folder_says_it_will_look_at_each_file(tmp_path: Path) -> None:
    found, why = layouts.detect(str(tmp_path))
    assert found == "atlas"
    assert "as it arrives" in why


@pytest.mark.parametrize("layout", synth.LAYOUTS)
def test_synth_tiles_are_placed_as_the_manifest_says(
    acquisitions: dict[str, Path], layout: str
) -> None:
    """What synth writes and what focuswatch reads back agree, in every layout."""
    import json

    root = acquisitions[layout]
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    auto = layouts.make_layout(WatchConfig(layout="auto"), str(root))
    tiles = manifest["tiles"]
    assert len(tiles) == 8
    assert sum(t["corrupt"] for t in tiles) == 1
    assert sum(t["empty"] for t in tiles) == 1
    assert sum(t["defocus_sigma"] > 0 for t in tiles) >= 1
    for t in tiles:
        place = auto.place(str(root / t["path"]))
        assert (place.section, place.position) == (t["section"], t["position"])
        if layout != "atlas":  # ATLAS stage comes from FibicsXML, read with the pixels
            assert place.stage_x_um == pytest.approx(t["stage_x_um"], abs=1e-3)
            assert place.stage_y_um == pytest.approx(t["stage_y_um"], abs=1e-3)
        if not t["corrupt"]:
            meta = read_meta(root / t["path"])  # a real, readable image
            assert meta is not None


def test_fibics_mosaic_info_gives_a_nameless_atlas_tile_its_position(tmp_path: Path) -> None:
    path = tmp_path / "S_003" / "site_0042.tif"
    synth.write_tile(
        path,
        np.zeros((32, 32), np.uint8),
        row=5,
        col=6,
        stage_x_um=100.0,
        stage_y_um=200.0,
        working_distance_um=5000.0,
    )
    place = layouts.AtlasLayout().place(str(path))
    assert (place.section, place.position) == ("003", None)
    full = layouts.with_meta(place, read_meta(path))
    assert (full.position, full.row, full.col) == ("r5-c6", 5, 6)
    assert (full.stage_x_um, full.stage_y_um) == (100.0, 200.0)
    assert full.working_distance_um == pytest.approx(5000.0)
    assert full.dwell_ns == pytest.approx(100.0)


# --------------------------------------------------------------- the real service


@pytest.fixture
def start_service(
    tmp_path: Path, make_service: MakeService
) -> Callable[..., tuple[Service, RecordingSink]]:
    """The service with its real scorer (MHFD, CPU) and its retake list, on a layout."""

    def start(layout: str, **watch: Any) -> tuple[Service, RecordingSink]:
        base = make_cfg(tmp_path, workers=1, patch_size=128, backend="cpu")
        cfg: Config = dataclasses.replace(
            base, watch=dataclasses.replace(base.watch, layout=layout, **watch)
        )
        return make_service(cfg, score_fn=None, watch=False, builtin_sinks=True)

    return start


def _plan(
    root: Path, layout: str, blurred: Callable[[synth.SynthTile], bool], *, rows: int = 1
) -> list[synth.SynthTile]:
    """4 sections of ``rows`` × 3 positions (256², shot noise); ``blurred`` ones σ 3."""
    plan = synth.wafer_plan(
        sections=4,
        rows=rows,
        cols=3,
        blur_fraction=0.0,
        seed=5,
        out=root,
        size=256,
        layout=layout,
    )
    return [dataclasses.replace(t, defocus_sigma=3.0) if blurred(t) else t for t in plan]


def _at(section: int, row: int, col: int) -> Callable[[synth.SynthTile], bool]:
    return lambda t: (int(t.section), t.row, t.col) == (section, row, col)


def _current(svc: Service) -> dict[tuple[str, str], tuple[str, str]]:
    rows = svc.ledger.connection.execute(
        "SELECT v.section, v.position, r.verdict, r.reason FROM versions v JOIN results r "
        "ON r.version_id = v.id WHERE v.superseded = 0"
    ).fetchall()
    return {(s, p): (k, why) for s, p, k, why in rows}


def _feed(svc: Service, plan: list[synth.SynthTile]) -> None:
    """Section by section, as a microscope writes; each judged before the next."""
    before = len(_current(svc))
    for s in sorted({int(t.section) for t in plan}):
        synth.write_section([t for t in plan if int(t.section) == s], size=256, seed=5)
        svc.rescan_now()
        n = before + sum(int(t.section) <= s for t in plan)
        turn_until(svc, lambda n=n: len(_current(svc)) == n, turns=3000)


@pytest.mark.parametrize(
    ("layout", "blurred_key"),
    [("multisem", ("2", "mFoV 1, beam 2")), ("sbemimage", ("00002", "grid 0, tile 1"))],
)
def test_a_blurred_beam_or_tile_is_judged_against_its_own_position(
    tmp_path: Path,
    start_service: Callable[..., tuple[Service, RecordingSink]],
    layout: str,
    blurred_key: tuple[str, str],
) -> None:
    """Issue 13: the same beam/mFoV (grid/tile) in earlier sections is the reference."""
    root = tmp_path / "watch"
    with structlog.testing.capture_logs() as logs:
        svc, _ = start_service("auto")
    chosen = next(e for e in logs if e["event"] == "layout")
    assert chosen["layout"] == "atlas"
    assert "as it arrives" in chosen["why"]
    _feed(svc, _plan(root, layout, _at(2, 1, 2)))
    got = _current(svc)
    kind, why = got[blurred_key]
    assert kind == "out_of_focus", why
    assert "this tile position over the last 2 sections" in why
    assert [k for k, _ in got.values()].count("out_of_focus") == 1
    # Every later tile had its own position's history too.
    later = {k: v for k, v in got.items() if k[0] == blurred_key[0] and k != blurred_key}
    assert all("this tile position" in w for _, w in later.values()), later


def test_sbemimage_stage_xyz_and_focus_reach_the_ledger(
    tmp_path: Path, start_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    svc, sink = start_service("sbemimage")
    plan = _plan(tmp_path / "watch", "sbemimage", _at(9, 9, 9))[:3]
    _feed(svc, plan)
    row = svc.ledger.connection.execute(
        "SELECT stage_x_um, stage_y_um, stage_z_um, working_distance_um FROM versions "
        "WHERE position = 'grid 0, tile 1'"
    ).fetchone()
    assert row[0] == pytest.approx(plan[1].stage_x_um, abs=1e-3)
    assert row[1] == pytest.approx(plan[1].stage_y_um, abs=1e-3)
    assert row[2] == 0.0
    assert row[3] == pytest.approx(synth.IN_FOCUS_WD_UM)
    record = next(r for r in sink.records if r.position == "grid 0, tile 1")
    assert record.where == "grid 0, tile 1"
    # `focuswatch status` names recent tiles by their position too.
    from focuswatch.status import format_text

    recent = svc.ledger.status_summary()["recent"]
    assert {r["position"] for r in recent} == {"grid 0, tile 0", "grid 0, tile 1", "grid 0, tile 2"}
    text = format_text(svc.ledger.status_summary() | {"state_dir": "s"})
    assert "grid 0, tile 1" in text
    assert record.placement.stage_z_um == 0.0


def test_a_multisem_retake_with_a_later_timestamp_closes_the_first(
    tmp_path: Path, start_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    root = tmp_path / "watch"
    plan = _plan(root, "multisem", _at(2, 1, 2))
    synth.write_section([t for t in plan if t.section == "0"], size=256, seed=5)
    with structlog.testing.capture_logs() as logs:
        svc, _ = start_service("auto")
    chosen = next(e for e in logs if e["event"] == "layout")
    assert chosen["layout"] == "multisem", chosen
    assert "[0-9]*_[0-9]*_[0-9]*_*.png" in chosen["include"]
    turn_until(svc, lambda: len(_current(svc)) == 3, turns=3000)
    _feed(svc, [t for t in plan if t.section != "0"])
    bad = next(t for t in plan if (int(t.section), t.row, t.col) == (2, 1, 2))
    entries = [e for e in retakes.entries(svc.ledger) if e.still_to_do]
    assert [(e.section, e.position) for e in entries] == [("2", "mFoV 1, beam 2")]
    assert "mFoV 1, beam 2" in retakes.render_text(entries)
    # The retake: the same beam and mFoV, a later timestamp, in focus.
    later = bad.path.with_name(bad.path.name.replace("T2340", "T2359"))
    synth.write_section([dataclasses.replace(bad, path=later, defocus_sigma=0.0)], size=256, seed=5)
    svc.rescan_now()
    turn_until(svc, lambda: not any(e.still_to_do for e in retakes.entries(svc.ledger)))
    (entry,) = [e for e in retakes.entries(svc.ledger) if e.position == "mFoV 1, beam 2"]
    assert entry.status == "retaken_fixed"
    assert later.name in entry.note
    versions = svc.ledger.connection.execute(
        "SELECT tile_name, superseded FROM versions WHERE section = '2' "
        "AND position = 'mFoV 1, beam 2' ORDER BY id"
    ).fetchall()
    assert versions == [(bad.path.name, 1), (later.name, 0)]
    # The retaken original stays known: a rescan does not take it for a new file.
    assert str(bad.path) in svc.ledger.known_paths()
    assert str(bad.path) in svc.ledger.known_paths(under=str(bad.path.parent))
    # The section now counts the retake only; its peers' context is the good tile.
    assert _current(svc)["2", "mFoV 1, beam 2"][0] == "in_focus"


def test_an_atlas_tile_named_without_row_col_gets_its_history_from_fibics(
    tmp_path: Path, start_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """Issue 13: FibicsXML MosaicInfo's row/col is the position when the name has none."""
    root = tmp_path / "watch"
    svc, _ = start_service("atlas")
    plan = [
        dataclasses.replace(t, path=t.path.with_name(f"site_{t.col:04d}.tif"))
        for t in _plan(root, "atlas", _at(2, 1, 2))
    ]
    _feed(svc, plan)
    got = _current(svc)
    kind, why = got["002", "r1-c2"]
    assert kind == "out_of_focus"
    assert "this tile position over the last 2 sections" in why
    assert svc.ledger.position_history("r1-c2", before_section_index=3, limit=5) != []


# ------------------------------------------------------------------- the ledger


def test_migration_gives_existing_grid_tiles_their_position_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger from before layouts keeps its position histories after the upgrade."""
    from focuswatch import ledger as ledger_mod
    from focuswatch.ledger import MIGRATIONS, Ledger

    mine = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN position" in m)
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", MIGRATIONS[:mine])
    old = Ledger.open(tmp_path)
    old.connection.execute(
        "INSERT INTO versions (path, size, mtime_ns, tile_name, section, section_index, row, "
        "col, state, first_seen, updated) VALUES ('/w/a.tif', 1, 1, 'a.tif', 'S_001', 1, 2, 3, "
        "'ready', 0, 0), ('/w/b.tif', 1, 1, 'b.tif', 'S_001', 1, NULL, NULL, 'ready', 0, 0)"
    )
    old.close()
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", MIGRATIONS)
    led = Ledger.open(tmp_path)
    assert [v.position for v in (led.versions("/w/a.tif") + led.versions("/w/b.tif"))] == [
        "r2-c3",
        None,
    ]


@pytest.mark.parametrize("order", ["retake last", "retake first"])
def test_the_latest_timestamp_of_a_beam_is_current_whatever_the_arrival_order(
    tmp_path: Path, order: str
) -> None:
    from focuswatch.ledger import Ledger

    led = Ledger.open(tmp_path)
    layout = layouts.MultiSemLayout()
    first = "/w/001_S4R1/000002/001_000002_007_2025-01-01T1000000000000.png"
    retake = "/w/001_S4R1/000002/001_000002_007_2025-01-01T1100000000000.png"
    other = "/w/001_S4R1/000002/001_000002_008_2025-01-01T1000000000000.png"
    paths = [first, retake, other] if order == "retake last" else [retake, other, first]
    for p in paths:
        led.add_version(p, size=1, mtime_ns=1, tile_name=p.rsplit("/", 1)[1], place=layout.place(p))
    current = {p: not led.versions(p)[0].superseded for p in paths}
    assert current == {first: False, retake: True, other: True}


# ------------------------------------------------------------ a bad beam, once


def test_name_positions_makes_a_beam_bad_in_every_mfov_one_finding() -> None:
    every = [f"mFoV {m}, beam {b}" for m in (1, 2, 3) for b in (1, 2, 3)]
    items, whole = name_positions(
        ["mFoV 1, beam 2", "mFoV 2, beam 2", "mFoV 3, beam 2", "mFoV 2, beam 3"], every
    )
    assert items == ["beam 2 (all 3 mFoVs)", "beam 3 (mFoV 2)"]
    assert whole == ["beam 2"]
    assert name_positions(["r2-c2", "r1-c1"], ["r1-c1", "r2-c2"]) == (["r2-c2", "r1-c1"], [])


def test_a_beam_out_of_focus_across_a_section_is_one_line_of_its_summary(
    tmp_path: Path, start_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """Issue 13: the MultiSEM workflow manager's per-beam view, in the section summary."""
    root = tmp_path / "watch"
    svc, _ = start_service("multisem")
    plan = _plan(root, "multisem", lambda t: (t.section, t.col) == ("2", 2), rows=3)
    with structlog.testing.capture_logs() as logs:
        _feed(svc, plan)
    got = _current(svc)
    assert sorted(p for (s, p), (k, _) in got.items() if k == "out_of_focus") == [
        "mFoV 1, beam 2",
        "mFoV 2, beam 2",
        "mFoV 3, beam 2",
    ]
    summary = next(e for e in logs if e["event"] == "alert" and e["key"] == "summary:2")
    assert summary["body"].startswith("Section 2: 9 tiles, 3 out of focus: beam 2 (all 3 mFoVs)"), (
        summary["body"]
    )


@pytest.mark.parametrize(
    "name",
    [
        "tiles/g0000/t0001/st_g0000_t0001_s99999999999999999999.tif",
        "001_S1R1/000001/001_000001_99999999999999999999_20250101.png",
        "001_S99999999999999999999R1/000001/001_000001_001_20250101.png",
    ],
)
def test_an_over_long_number_in_another_layout_is_a_reason_not_a_crash(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]], name: str
) -> None:
    watch = tmp_path / "watch"
    bad = watch / name
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not read: the name is already wrong")
    odd = watch / "tiles" / "g0001" / "t0002"
    odd.mkdir(parents=True)
    good = Path(os.fsdecode(os.fsencode(odd) + b"/st\xe9_g0001_t0002_s00003.tif"))
    synth.write_tile(good, np.zeros((32, 32), np.uint8), row=1, col=1, stage_x_um=0, stage_y_um=0)
    svc, sink = make_service(make_cfg(tmp_path))  # watch.layout: auto
    turn_until(svc, lambda: len(sink.records) == 2)
    by_path = {r.path: r for r in sink.records}
    assert "out of range" in by_path[str(bad)].verdict.reason
    assert by_path[str(good)].verdict.kind.value != "unreadable"
    assert (by_path[str(good)].section, by_path[str(good)].position) == ("00003", "grid 1, tile 2")
    # Its stray FibicsXML MosaicInfo row/col does not make it an ATLAS grid tile.
    assert (by_path[str(good)].placement.row, by_path[str(good)].placement.col) == (None, None)


def test_what_each_layout_watches_beside_the_defaults() -> None:
    """MultiSEM beam images (only by their names) and no SBEMimage overview; a list set
    in the config is taken as it is."""
    from focuswatch.watch import Matcher

    include, exclude = layouts.watched_patterns(WatchConfig())
    auto = Matcher(include=include, exclude=exclude)
    assert auto.matches("/w/001_S1R1/000001/001_000001_007_2025-01-01T100000.png")
    assert not auto.matches("/w/001_S1R1/overview.png")
    assert not auto.matches("/w/overviews/ov000/stack_ov000_s00012.tif")
    assert auto.matches("/w/tiles/g0000/t0001/stack_g0000_t0001_s00012.tif")
    include, exclude = layouts.watched_patterns(WatchConfig(layout="atlas"))
    atlas = Matcher(include=include, exclude=exclude)
    assert not atlas.matches("/w/001_S1R1/000001/001_000001_007_2025-01-01T100000.png")
    own = WatchConfig(layout="multisem", include=["*.bmp"], exclude=["x*"])
    assert layouts.watched_patterns(own) == (["*.bmp"], ["x*"])


def test_files_a_pattern_does_not_match_are_skipped_with_one_line_per_folder(
    tmp_path: Path, start_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """The lab's pattern says what its tiles look like: anything else in the folder (an
    overview, a stitched preview) is no tile, is not recorded, and is said once."""
    from servicekit import write_tif

    watch = tmp_path / "watch"
    for name in ("sec01/overview.tif", "sec01/preview_small.tif", "sec01/left_1.tif"):
        write_tif(watch / name)
    with structlog.testing.capture_logs() as logs:
        svc, sink = start_service(
            "pattern", pattern=r"^sec(?P<section>\d+)/(?P<position>[a-z]+)_(?P<taken>\d+)\.tif$"
        )
        turn_until(svc, lambda: len(sink.records) == 1)
        placed: list[str] = []
        place = svc.layout.place
        svc.layout.place = lambda path: placed.append(path) or place(path)  # type: ignore[method-assign]
        svc.rescan_now()  # passed by, as a recorded file is: not placed, said or recorded again
        for _ in range(20):
            svc.turn(0.05)
        assert placed == []
    assert [r.tile_name for r in sink.records] == ["left_1.tif"]
    assert sorted(svc.ledger.known_paths()) == [str(watch / "sec01" / "left_1.tif")]
    (skipped,) = [e for e in logs if e["event"] == "not_a_tile_skipped"]
    assert skipped["folder"] == str(watch / "sec01")
    assert skipped["layout"] == "pattern"
