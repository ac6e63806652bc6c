"""Reading tiles: pixels, metadata, names, and a clear TileError for every bad file."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from focuswatch import synth
from focuswatch.errors import TileError
from focuswatch.tiles import TileMeta, open_tile, parse_tile_name, read_meta, read_tile
from focuswatch.verdict import Placement

ATLAS_NAME = "Tile_r2-c3_S_007_1752450056.tif"


def _image(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


def _write_atlas(path: Path, image: np.ndarray, **kwargs: Any) -> None:
    options: dict[str, Any] = {
        "row": 2,
        "col": 3,
        "pixel_size_um": 0.004,
        "stage_x_um": 12345.5,
        "stage_y_um": -678.25,
        "dwell_ns": 200.0,
        "working_distance_um": 5012.5,
    }
    options.update(kwargs)
    synth.write_tile(path, image, **options)


def _reason(path: Path) -> str:
    with pytest.raises(TileError) as info:
        read_tile(path)
    assert info.value.path == str(path)
    return info.value.reason


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compression", [None, "lzw", "zstd"])
def test_write_tile_round_trips_pixels_and_metadata(
    tmp_path: Path, dtype: Any, compression: str | None
) -> None:
    image = _image((48, 80), dtype)
    path = tmp_path / ATLAS_NAME
    _write_atlas(path, image, compression=compression)

    pixels, meta = read_tile(path)

    assert pixels.dtype == dtype
    np.testing.assert_array_equal(pixels, image)
    assert meta == TileMeta(
        placement=Placement(
            section="007",
            row=2,
            col=3,
            pixel_size_um=pytest.approx(0.004),
            stage_x_um=pytest.approx(12345.5),
            stage_y_um=pytest.approx(-678.25),
            dwell_ns=pytest.approx(200.0),
            working_distance_um=pytest.approx(5012.5),
        ),
        source="fibics",
    )
    assert read_meta(path) == meta


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint32, np.int32, np.float32, np.float64])
def test_other_sample_types_come_back_in_their_native_dtype(tmp_path: Path, dtype: Any) -> None:
    image = _image((20, 30), dtype)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, image)
    pixels, meta = read_tile(path)
    assert pixels.dtype == dtype
    np.testing.assert_array_equal(pixels, image)
    assert meta.source == "none"


def test_float16_is_widened_to_float32(tmp_path: Path) -> None:
    image = _image((20, 30), np.float16)
    tifffile.imwrite(tmp_path / "h.tif", image)
    pixels, _ = read_tile(tmp_path / "h.tif")
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, image.astype(np.float32))


def _rec601(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_becomes_rec601_luminance_in_float32(
    tmp_path: Path, planar: bool, channels: int
) -> None:
    rgb = _image((24, 40, channels), np.uint8)
    path = tmp_path / "rgb.tif"
    data = np.moveaxis(rgb, -1, 0) if planar else rgb
    tifffile.imwrite(
        path,
        data,
        photometric="rgb",
        planarconfig="separate" if planar else "contig",
        extrasamples=["unassalpha"] if channels == 4 else None,
    )
    pixels, _ = read_tile(path)
    assert pixels.dtype == np.float32
    assert pixels.shape == (24, 40)
    np.testing.assert_allclose(pixels, _rec601(rgb), rtol=1e-5, atol=1e-3)


def test_multipage_file_gives_its_first_page(tmp_path: Path) -> None:
    first, second = _image((32, 32), np.uint16, 1), _image((32, 32), np.uint16, 2)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(first)
        writer.write(second)
    pixels, _ = read_tile(path)
    np.testing.assert_array_equal(pixels, first)


def test_min_is_white_is_inverted_so_bright_means_bright(tmp_path: Path) -> None:
    image = _image((32, 32), np.uint16)
    tifffile.imwrite(tmp_path / "w.tif", image, photometric="miniswhite")
    pixels, _ = read_tile(tmp_path / "w.tif")
    np.testing.assert_array_equal(pixels, 65535 - image)


def test_palette_image_is_looked_up_to_luminance(tmp_path: Path) -> None:
    index = _image((32, 32), np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0] = np.arange(256) * 256  # red ramp only
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=colormap)
    pixels, _ = read_tile(tmp_path / "p.tif")
    np.testing.assert_allclose(pixels, 0.299 * index.astype(np.float64) * 256, rtol=1e-5)


def test_names_with_spaces_and_non_ascii_characters_work(tmp_path: Path) -> None:
    folder = tmp_path / "Wafer µ 3 – Ü" / "S_004_1752450056"
    path = folder / "Tile_r1-c2_S_004_1752450056 copy é.tif"
    image = _image((32, 32), np.uint8)
    _write_atlas(path, image)
    pixels, meta = read_tile(path)
    np.testing.assert_array_equal(pixels, image)
    assert (meta.placement.section, meta.placement.row, meta.placement.col) == ("004", 1, 2)


# ------------------------------------------------------------------ region reads


REGIONS = [
    (0, 100, 0, 120),
    (5, 77, 3, 119),
    (99, 100, 119, 120),
    (37, 90, 60, 61),
    (10, 12, 0, 120),
]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="uncompressed-one-strip"),
        pytest.param({"rowsperstrip": 7}, id="uncompressed-strips"),
        pytest.param({"byteorder": ">"}, id="uncompressed-big-endian"),
        pytest.param({"tile": (32, 48)}, id="uncompressed-tiled"),
        pytest.param({"compression": "lzw", "rowsperstrip": 9}, id="lzw-strips"),
        pytest.param({"compression": "lzw", "predictor": True}, id="lzw-predictor"),
        pytest.param({"compression": "zstd", "tile": (32, 32)}, id="zstd-tiled"),
        pytest.param({"compression": "deflate", "tile": (16, 64)}, id="deflate-tiled"),
    ],
)
def test_read_region_equals_the_slice_of_the_full_read(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    image = _image((100, 120), np.uint16)
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, image, **options)
    with open_tile(path) as tile:
        assert tile.shape == (100, 120)
        assert tile.dtype == np.uint16
        full = tile.read()
        for y0, y1, x0, x1 in REGIONS:
            np.testing.assert_array_equal(tile.read_region(y0, y1, x0, x1), full[y0:y1, x0:x1])
    np.testing.assert_array_equal(full, image)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"compression": "zstd", "rowsperstrip": 200}, id="one-compressed-strip"),
        pytest.param({"compression": "lzw", "rowsperstrip": 13}, id="compressed-strips"),
        pytest.param({"compression": "zstd", "tile": (48, 32)}, id="compressed-tiles"),
        pytest.param({}, id="uncompressed"),
    ],
)
def test_patch_by_patch_reads_reassemble_the_tile(tmp_path: Path, options: dict[str, Any]) -> None:
    """Scoring walks a tile in patches; any order of patches gives the same pixels."""
    image = _image((200, 150), np.uint16, 3)
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, image, **options)
    patches = [(y, x) for y in range(0, 200, 64) for x in range(0, 150, 40)]
    for order in (patches, patches[::-1]):
        out = np.zeros_like(image)
        with open_tile(path) as tile:
            for y, x in order:
                y1, x1 = min(y + 64, 200), min(x + 40, 150)
                out[y:y1, x:x1] = tile.read_region(y, y1, x, x1)
        np.testing.assert_array_equal(out, image)


def test_read_region_of_planar_rgb_is_luminance_of_the_region(tmp_path: Path) -> None:
    rgb = _image((64, 80, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(
        path,
        np.moveaxis(rgb, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        compression="zstd",
    )
    with open_tile(path) as tile:
        region = tile.read_region(10, 50, 7, 70)
        np.testing.assert_allclose(region, tile.read()[10:50, 7:70], rtol=1e-6)


def test_read_region_rejects_regions_outside_the_tile(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t.tif", _image((32, 32), np.uint8))
    with open_tile(tmp_path / "t.tif") as tile:
        for region in [(0, 33, 0, 32), (5, 5, 0, 32), (-1, 10, 0, 10), (0, 10, 20, 10)]:
            with pytest.raises(ValueError, match="not a non-empty part"):
                tile.read_region(*region)


def test_read_region_of_a_file_cut_short_after_opening_is_a_tile_error(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _image((256, 256), np.uint16))
    with open_tile(path) as tile:
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.truncate(size // 2)
        with pytest.raises(TileError, match="shorter"):
            tile.read_region(200, 256, 0, 256)


def test_open_tile_closes_its_file_handle(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _image((32, 32), np.uint8))
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to count open files")
    before = len(list(fd_dir.iterdir()))
    for _ in range(20):
        with open_tile(path) as tile:
            tile.read()
        read_meta(path)
    assert len(list(fd_dir.iterdir())) == before


# ------------------------------------------------------------------ bad files


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "z.tif").touch()
    assert "zero-byte" in _reason(tmp_path / "z.tif")


def test_file_truncated_in_its_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _image((128, 128), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reason = _reason(path)
    assert reason.startswith("truncated TIFF")
    assert "still being written" in reason


def test_file_truncated_in_its_header(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _image((128, 128), np.uint8))
    path.write_bytes(path.read_bytes()[:12])
    assert "TIFF" in _reason(path)


def test_synth_corrupt_tile_reads_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / ATLAS_NAME
    _write_atlas(path, _image((64, 64), np.uint8), truncate_to=0.4)
    assert _reason(path).startswith("truncated TIFF")


@pytest.mark.parametrize(
    ("content", "looks"),
    [(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"), (b"hello, I am a text file\n" * 4, "")],
)
def test_not_a_tiff_despite_the_name(tmp_path: Path, content: bytes, looks: str) -> None:
    path = tmp_path / "fake.tif"
    path.write_bytes(content)
    reason = _reason(path)
    assert reason.startswith("not a TIFF file despite its name")
    assert looks in reason


@pytest.mark.parametrize(("shape", "size"), [((1, 4096), "4096x1"), ((4096, 1), "1x4096")])
def test_one_pixel_strip_is_too_small_to_score(
    tmp_path: Path, shape: tuple[int, int], size: str
) -> None:
    tifffile.imwrite(tmp_path / "s.tif", np.zeros(shape, np.uint8))
    reason = _reason(tmp_path / "s.tif")
    assert f"image is {size} pixels" in reason
    assert "too small to score" in reason


def test_smallest_accepted_size_is_16_by_16(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((15, 64), np.uint8))
    assert read_tile(tmp_path / "ok.tif")[0].shape == (16, 16)
    assert "too small" in _reason(tmp_path / "small.tif")


def test_zero_by_zero_image(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="zero-size"):
        tifffile.imwrite(tmp_path / "e.tif", np.zeros((0, 0), np.uint8))
    assert "empty (0x0" in _reason(tmp_path / "e.tif")


def test_vanished_file(tmp_path: Path) -> None:
    assert "vanished" in _reason(tmp_path / "gone.tif")


def test_broken_symlink(tmp_path: Path) -> None:
    (tmp_path / "link.tif").symlink_to(tmp_path / "nowhere.tif")
    assert "broken symlink" in _reason(tmp_path / "link.tif")


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a.tif").symlink_to(tmp_path / "b.tif")
    (tmp_path / "b.tif").symlink_to(tmp_path / "a.tif")
    assert "symlink loop" in _reason(tmp_path / "a.tif")


def test_directory_named_like_a_tile(tmp_path: Path) -> None:
    (tmp_path / "d.tif").mkdir()
    assert "directory" in _reason(tmp_path / "d.tif")


def test_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f.tif")
    assert "not a regular file" in _reason(tmp_path / "f.tif")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8))
    path.chmod(0)
    try:
        assert "permission denied" in _reason(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_float_image_without_finite_values(tmp_path: Path, fill: float) -> None:
    tifffile.imwrite(tmp_path / "n.tif", np.full((32, 32), fill, np.float32))
    assert "no finite values" in _reason(tmp_path / "n.tif")


def test_float_image_with_some_nan_is_returned_as_is(tmp_path: Path) -> None:
    image = np.ones((32, 32), np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", image)
    pixels, _ = read_tile(tmp_path / "n.tif")
    assert np.isnan(pixels[3, 4])
    assert np.isfinite(pixels).sum() == 32 * 32 - 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (np.zeros((32, 32), bool), "1-bit"),
        (np.zeros((32, 32), np.complex64), "complex"),
        (np.zeros((32, 32), np.int64), "unsupported sample type int64"),
    ],
)
def test_unsupported_sample_types(tmp_path: Path, data: np.ndarray, reason: str) -> None:
    tifffile.imwrite(tmp_path / "x.tif", data)
    assert reason in _reason(tmp_path / "x.tif")


def test_volumetric_page_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "v.tif",
        np.zeros((4, 32, 32), np.uint8),
        volumetric=True,
        tile=(16, 16),
        photometric="minisblack",
        planarconfig="contig",
    )
    assert "3-D" in _reason(tmp_path / "v.tif")


def test_many_channels_that_are_not_rgb_are_refused(tmp_path: Path) -> None:
    channels = np.zeros((32, 32, 5), np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", channels, photometric="minisblack", planarconfig="contig")
    assert "samples per pixel" in _reason(tmp_path / "c.tif")


def test_header_claiming_an_absurd_size_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), compression="zstd")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        width_tag = tif.pages.first.tags["ImageWidth"]
        length_tag = tif.pages.first.tags["ImageLength"]
        offsets = (width_tag.valueoffset, length_tag.valueoffset, width_tag.dtype)
    assert offsets[2] in (3, 4)  # SHORT or LONG, written in place
    fmt = "<H" if offsets[2] == 3 else "<I"
    big = 60000 if offsets[2] == 3 else 200000
    struct.pack_into(fmt, data, offsets[0], big)
    struct.pack_into(fmt, data, offsets[1], big)
    path.write_bytes(bytes(data))
    reason = _reason(path)
    assert "corrupt" in reason or "larger than any SEM tile" in reason


def _valid_tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, _image((24, 24), np.uint8), compression="zstd", rowsperstrip=8)
    return buffer.getvalue()


SEED_TIFF = _valid_tiff_bytes()


@st.composite
def _mutated_tiff(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED_TIFF)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=64).map(lambda tail: b"II*\x00" + tail),
        st.binary(max_size=64).map(lambda tail: b"MM\x00*" + tail),
        _mutated_tiff(),
    )
)
def test_arbitrary_bytes_never_raise_anything_but_tile_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.tif"
    path.write_bytes(data)
    reason = _read_everything(path)
    assert reason is None or reason.strip()  # a refusal always says why


def _read_everything(path: Path) -> str | None:
    """Open, read and read a region; None if all worked, else the TileError's reason."""
    try:
        with open_tile(path) as tile:
            image = tile.read()
            h, w = tile.shape
            region = tile.read_region(0, min(h, 5), 0, min(w, 7))
    except TileError as exc:
        return exc.reason
    assert image.ndim == 2
    np.testing.assert_array_equal(region, image[: min(h, 5), : min(w, 7)])
    return None


# ------------------------------------------------------------------ metadata


def _fibics_tile(path: Path, xml: str | bytes) -> None:
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8), extratags=[(51023, "s", 0, xml, True)])


def test_fibics_units_are_converted_to_micrometres_and_nanoseconds(tmp_path: Path) -> None:
    xml = (
        '<Fibics version="1.0"><Scan><Ux units="nm">4</Ux><Uy units="nm">0</Uy>'
        '<Dwell units="us">0.2</Dwell><Focus units="mm">5.5</Focus></Scan>'
        '<Stage><X units="mm">1.5</X><Y units="nm">-2000</Y></Stage></Fibics>'
    )
    path = tmp_path / "u.tif"
    _fibics_tile(path, xml)
    meta = read_meta(path)
    assert meta.placement.pixel_size_um == pytest.approx(0.004)
    assert meta.placement.dwell_ns == pytest.approx(200.0)
    assert meta.placement.working_distance_um == pytest.approx(5500.0)
    assert meta.placement.stage_x_um == pytest.approx(1500.0)
    assert meta.placement.stage_y_um == pytest.approx(-2.0)


def test_fibics_pixel_size_is_the_scan_step_length_under_scan_rotation(tmp_path: Path) -> None:
    xml = "<Fibics><Scan><Ux>0.003</Ux><Uy>0.004</Uy><Vx>-0.004</Vx><Vy>0.003</Vy></Scan></Fibics>"
    _fibics_tile(tmp_path / "r.tif", xml)
    assert read_meta(tmp_path / "r.tif").placement.pixel_size_um == pytest.approx(0.005)


def test_fibics_focus_without_unit_is_read_as_millimetres_when_small(tmp_path: Path) -> None:
    _fibics_tile(tmp_path / "a.tif", "<Fibics><Scan><Focus>5.2</Focus></Scan></Fibics>")
    _fibics_tile(tmp_path / "b.tif", "<Fibics><Scan><Focus>5200</Focus></Scan></Fibics>")
    assert read_meta(tmp_path / "a.tif").placement.working_distance_um == pytest.approx(5200.0)
    assert read_meta(tmp_path / "b.tif").placement.working_distance_um == pytest.approx(5200.0)


def test_fibics_missing_fields_are_none_and_row_col_come_from_mosaic_info(tmp_path: Path) -> None:
    xml = b'<?xml version="1.0" encoding="iso-8859-1"?>\n<Fibics version="1.0">'
    xml += b"<Application>Atlas \xb5</Application>"  # latin-1 µ
    xml += b"<MosaicInfo><Row>4</Row><Col>9</Col></MosaicInfo></Fibics>"
    path = tmp_path / "no_grid_in_name.tif"
    _fibics_tile(path, xml)
    meta = read_meta(path)
    assert (meta.placement.row, meta.placement.col, meta.placement.section) == (4, 9, None)
    assert (
        meta.placement.pixel_size_um is meta.placement.stage_x_um is meta.placement.dwell_ns is None
    )
    assert meta.source == "fibics"


def test_file_name_wins_over_mosaic_info_for_row_and_col(tmp_path: Path) -> None:
    path = tmp_path / "Tile_r1-c2_S_000_1.tif"
    _fibics_tile(path, "<Fibics><MosaicInfo><Row>4</Row><Col>9</Col></MosaicInfo></Fibics>")
    assert (read_meta(path).placement.row, read_meta(path).placement.col) == (1, 2)


@pytest.mark.parametrize(
    "xml",
    [
        "<Fibics><Scan><Ux>0.004</Ux>",  # cut off
        "not xml at all",
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><Fibics><Scan><Ux>&a;</Ux></Scan></Fibics>',
        "<Fibics><Scan><Ux>fast</Ux><Dwell>nan</Dwell></Scan></Fibics>",
    ],
)
def test_broken_fibics_xml_loses_metadata_but_not_the_tile(tmp_path: Path, xml: str) -> None:
    path = tmp_path / "Tile_r1-c1_S_003_1.tif"
    _fibics_tile(path, xml)
    pixels, meta = read_tile(path)
    assert pixels.shape == (32, 32)
    assert meta.placement.pixel_size_um is None
    assert meta.placement.dwell_ns is None
    assert (meta.placement.section, meta.placement.row, meta.placement.col) == ("003", 1, 1)


def test_cz_sem_metadata_is_read_with_units(tmp_path: Path) -> None:
    text = "\r\n".join(
        [
            "0",
            "AP_IMAGE_PIXEL_SIZE",
            "Image Pixel Size = 4.468 nm",
            "AP_WD",
            "WD = 5.6 mm",
            "AP_STAGE_AT_X",
            "Stage at X = 12.345 mm",
            "AP_STAGE_AT_Y",
            "Stage at Y = -3.5 mm",
            "DP_DWELL_TIME",
            "Dwell Time = 200 ns",
            "",
        ]
    )
    path = tmp_path / "smartsem.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8), extratags=[(34118, "s", 0, text, True)])
    assert read_meta(path) == TileMeta(
        placement=Placement(
            section=None,
            row=None,
            col=None,
            pixel_size_um=pytest.approx(0.004468),
            stage_x_um=pytest.approx(12345.0),
            stage_y_um=pytest.approx(-3500.0),
            dwell_ns=pytest.approx(200.0),
            working_distance_um=pytest.approx(5600.0),
        ),
        source="cz_sem",
    )


def test_plain_tiff_with_an_atlas_name_has_source_name(tmp_path: Path) -> None:
    folder = tmp_path / "S_012_1752450056"
    folder.mkdir()
    tifffile.imwrite(folder / "Tile_r5-c6_whatever.tif", np.zeros((32, 32), np.uint8))
    meta = read_meta(folder / "Tile_r5-c6_whatever.tif")
    assert (meta.placement.section, meta.placement.row, meta.placement.col, meta.source) == (
        "012",
        5,
        6,
        "name",
    )
    assert meta.placement.pixel_size_um is None


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Tile_r1-c1_S_000_1752450056.tif", ("000", 1, 1)),
        ("S_000_1752450056/Tile_r1-c2_S_000_1752450056.tif", ("000", 1, 2)),
        ("Tile_r12-c3_anything.tif", (None, 12, 3)),
        ("S_044_1752450056/Tile_r12-c3_anything.tif", ("044", 12, 3)),
        ("Tile_r3-c4_S_017.tif", ("017", 3, 4)),
        ("Tile_r3-c4_S_017_2.tif", ("017", 3, 4)),  # retake suffix
        ("Tile_r3-c4_S_017_1752450056_2.tif", ("017", 3, 4)),
        ("S_001_1/Tile_r3-c4_S_017_1752450056.tif", ("017", 3, 4)),  # the name wins
        ("tile_R7-C8_s_5_x.TIF", ("5", 7, 8)),
        ("Tile_r1-c1", (None, 1, 1)),
        ("003_S3R1/000001/003_000001_042_20240115T102030.bmp", ("003", None, None)),
        ("012_000017_061_1752450056.png", ("012", None, None)),
        ("overview.tif", (None, None, None)),
        ("S_009_1752450056/overview.tif", ("009", None, None)),
        ("Tile_rX-c1_S_000.tif", (None, None, None)),
        ("Tile_r1-c1_NOTS_000.tif", (None, 1, 1)),
    ],
)
def test_parse_tile_name_real_variants(
    path: str, expected: tuple[str | None, int | None, int | None]
) -> None:
    assert parse_tile_name(path) == expected
    assert parse_tile_name(Path(path)) == expected


# ------------------------------------------------------------------ PNG / BMP (MultiSEM)


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "L"), (".bmp", "L"), (".png", "I;16")])
def test_multisem_beam_images_read_through_pillow(tmp_path: Path, suffix: str, mode: str) -> None:
    dtype = np.uint16 if mode == "I;16" else np.uint8
    image = _image((40, 56), dtype)
    path = tmp_path / f"003_000001_042_1752450056{suffix}"
    Image.fromarray(image).save(path)
    with open_tile(path) as tile:
        assert tile.dtype == dtype
        np.testing.assert_array_equal(tile.read(), image)
        np.testing.assert_array_equal(tile.read_region(3, 30, 5, 50), image[3:30, 5:50])
        assert (tile.meta.placement.section, tile.meta.placement.row, tile.meta.source) == (
            "003",
            None,
            "name",
        )


def test_rgb_png_becomes_luminance(tmp_path: Path) -> None:
    rgb = _image((32, 32, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    pixels, _ = read_tile(tmp_path / "c.png")
    np.testing.assert_allclose(pixels, _rec601(rgb), rtol=1e-5, atol=1e-3)


def test_damaged_png_is_a_tile_error(tmp_path: Path) -> None:
    path = tmp_path / "b.png"
    Image.fromarray(_image((64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    assert "corrupt" in _reason(path)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.dat").write_bytes(b"\xff\xd8\xff\xe0 jpeg-ish")
    assert "not an image file focuswatch reads" in _reason(tmp_path / "x.dat")


def test_a_link_out_of_the_allowed_folder_is_refused_on_the_open_file(tmp_path: Path) -> None:
    """Checked on the descriptor that the pixels are read from: a link swapped in after
    the name was checked (the watcher's check) is caught too."""
    inside, outside = tmp_path / "watch", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    tifffile.imwrite(outside / "secret.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(inside / "real.tif", np.zeros((32, 32), np.uint8))
    (inside / "link.tif").symlink_to(outside / "secret.tif")
    (inside / "inner.tif").symlink_to(inside / "real.tif")
    with pytest.raises(TileError, match="outside the watch folder"):
        open_tile(inside / "link.tif", within=str(inside))
    with open_tile(inside / "inner.tif", within=str(inside)) as tile:  # links within: fine
        assert tile.shape == (32, 32)
    with open_tile(inside / "link.tif") as tile:  # no folder given: any path
        assert tile.shape == (32, 32)
