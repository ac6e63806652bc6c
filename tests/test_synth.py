"""The synthetic tile generator: textures, degradations, and ATLAS-style wafers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from focuswatch import cli, synth
from focuswatch.errors import TileError
from focuswatch.synth import texture
from focuswatch.tiles import parse_tile_name, read_meta, read_tile

TmpWafer = Callable[..., tuple[Path, list[synth.SynthTile]]]  # the conftest fixture


def _high_freq_energy(image: np.ndarray) -> float:
    """Mean squared Laplacian: what blur removes first."""
    return float(np.mean(ndimage.laplace(image.astype(np.float64)) ** 2))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def _smooth(image: np.ndarray) -> np.ndarray:
    """Shot noise removed enough to compare content."""
    return ndimage.gaussian_filter(image.astype(np.float64), 3.0)


# ------------------------------------------------------------------ textures


def test_neuropil_is_deterministic_by_seed_and_differs_between_seeds() -> None:
    a = synth.neuropil((96, 128), rng=np.random.default_rng(7))
    b = synth.neuropil((96, 128), rng=np.random.default_rng(7))
    c = synth.neuropil((96, 128), rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert abs(_corr(a, c)) < 0.3


@pytest.mark.parametrize("shape", [(16, 16), (20, 300), (257, 129)])
def test_neuropil_is_float32_in_unit_range_for_any_shape(shape: tuple[int, int]) -> None:
    image = synth.neuropil(shape, rng=np.random.default_rng(0))
    assert image.shape == shape
    assert image.dtype == np.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0


def test_neuropil_has_structure_at_many_scales() -> None:
    """Band-pass energy at fine, middle and coarse scales is each a real share."""
    image = synth.neuropil((256, 256), rng=np.random.default_rng(3)).astype(np.float64)
    bands = []
    for small, large in [(0.7, 1.5), (2.0, 5.0), (8.0, 20.0)]:
        band = ndimage.gaussian_filter(image, small) - ndimage.gaussian_filter(image, large)
        bands.append(float(band.var()))
    total = float(image.var())
    assert all(b > 0.02 * total for b in bands), (bands, total)


def test_neuropil_looks_like_membranes_on_cytoplasm() -> None:
    """Mostly bright cytoplasm with a minority of dark (membrane) pixels."""
    image = synth.neuropil((256, 256), rng=np.random.default_rng(4))
    median = float(np.median(image))
    assert 0.5 < median < 0.85
    dark = float(np.mean(image < median - 0.2))
    assert 0.02 < dark < 0.35


def test_lower_density_gives_sparser_tissue() -> None:
    rng_seed = 11
    dense = synth.neuropil((256, 256), rng=np.random.default_rng(rng_seed), density=1.0)
    sparse = synth.neuropil((256, 256), rng=np.random.default_rng(rng_seed), density=0.35)
    assert _high_freq_energy(sparse) < _high_freq_energy(dense)


def test_resin_is_flat_apart_from_slow_shading() -> None:
    empty = synth.resin((128, 128), rng=np.random.default_rng(0))
    tissue = synth.neuropil((128, 128), rng=np.random.default_rng(0))
    assert empty.dtype == np.float32
    assert float(empty.std()) < 0.02
    assert _high_freq_energy(empty) < 1e-3 * _high_freq_energy(tissue)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (0, 10)}, "shape"),
        ({"scale": 0.0}, "scale"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
    ],
)
def test_neuropil_rejects_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"shape": (32, 32), "rng": np.random.default_rng(0)}
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        synth.neuropil(**options)


# ------------------------------------------------------------------ degradations


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return synth.neuropil((192, 192), rng=np.random.default_rng(21))


def test_more_defocus_leaves_less_high_frequency_energy(tissue: np.ndarray) -> None:
    energies = [
        _high_freq_energy(synth.degrade(tissue, rng=np.random.default_rng(0), defocus_sigma=s))
        for s in (0.0, 1.0, 2.0, 4.0, 8.0)
    ]
    assert energies == sorted(energies, reverse=True)
    assert energies[-1] < 0.05 * energies[0]


def test_defocus_keeps_mean_brightness(tissue: np.ndarray) -> None:
    blurred = synth.degrade(tissue, rng=np.random.default_rng(0), defocus_sigma=4.0)
    assert float(blurred.mean()) == pytest.approx(float(tissue.mean()), abs=0.01)


def test_astigmatism_blurs_more_along_its_axis(tissue: np.ndarray) -> None:
    def directional_energy(image: np.ndarray) -> tuple[float, float]:
        return float(np.mean(np.diff(image, axis=1) ** 2)), float(
            np.mean(np.diff(image, axis=0) ** 2)
        )

    along_x = synth.degrade(
        tissue, rng=np.random.default_rng(0), defocus_sigma=2.0, astigmatism=0.5
    )
    ex, ey = directional_energy(along_x)
    assert ex < 0.7 * ey  # σx = 3 px, σy = 1 px
    along_y = synth.degrade(
        tissue, rng=np.random.default_rng(0), defocus_sigma=2.0, astigmatism=0.5, astig_angle_deg=90
    )
    ex, ey = directional_energy(along_y)
    assert ey < 0.7 * ex


def test_astigmatism_at_an_angle_matches_the_axis_aligned_blur_rotated() -> None:
    """The FFT path at 45° agrees with blurring a 45°-rotated image along x."""
    image = np.zeros((129, 129), np.float32)
    image[64, 64] = 1.0
    psf = synth.degrade(
        image, rng=np.random.default_rng(0), defocus_sigma=3.0, astigmatism=0.5, astig_angle_deg=45
    )
    y, x = np.mgrid[-64:65, -64:65]
    weight = psf / psf.sum()
    along = (x + y) / np.sqrt(2)
    across = (x - y) / np.sqrt(2)
    var_along = float((weight * along**2).sum())
    var_across = float((weight * across**2).sum())
    assert var_along == pytest.approx(4.5**2, rel=0.05)
    assert var_across == pytest.approx(1.5**2, rel=0.1)


def test_shot_noise_variance_is_brightness_over_dose() -> None:
    # 0.3 of full brightness, so that clipping at 1.0 (Poisson tail) does not matter.
    flat = np.full((256, 256), 0.3, np.float32)
    for dose in (20.0, 60.0):
        noisy = synth.degrade(flat, rng=np.random.default_rng(1), dose=dose)
        assert float(noisy.mean()) == pytest.approx(0.3, abs=0.005)
        assert float(noisy.var()) == pytest.approx(0.3 / dose, rel=0.05)


def _lag_corr(noise: np.ndarray, axis: int, k: int) -> float:
    n = noise.astype(np.float64) - noise.mean()
    a = np.take(n, range(k, n.shape[axis]), axis=axis)
    b = np.take(n, range(n.shape[axis] - k), axis=axis)
    return float((a * b).mean() / n.var())


def test_correlated_shot_noise_keeps_the_dose_variance() -> None:
    """``noise_pole_x``: an AR(1) along x (ρ_k = p^k), none across lines;
    ``noise_sigma_2d``: correlated both ways; both at the dose's variance."""
    flat = np.full((256, 512), 0.3, np.float32)
    x = synth.degrade(flat, rng=np.random.default_rng(1), dose=30.0, noise_pole_x=0.5)
    assert float(x.var()) == pytest.approx(0.3 / 30.0, rel=0.06)
    assert _lag_corr(x, 1, 1) == pytest.approx(0.5, abs=0.02)
    assert _lag_corr(x, 1, 2) == pytest.approx(0.25, abs=0.02)
    assert abs(_lag_corr(x, 0, 1)) < 0.02
    xy = synth.degrade(flat, rng=np.random.default_rng(2), dose=30.0, noise_sigma_2d=0.7)
    assert float(xy.var()) == pytest.approx(0.3 / 30.0, rel=0.06)
    assert _lag_corr(xy, 0, 1) == pytest.approx(_lag_corr(xy, 1, 1), abs=0.03)
    assert _lag_corr(xy, 0, 1) > 0.5
    for bad in ({"noise_pole_x": 1.0}, {"noise_sigma_2d": -1.0}, {"scan_pole": 1.0}):
        with pytest.raises(ValueError, match="out of range"):
            synth.degrade(flat, rng=np.random.default_rng(0), dose=30.0, **bad)


def test_detector_bandwidth_low_passes_each_scan_line() -> None:
    """``scan_pole`` filters signal and noise along x: lag-1 correlation p, less noise,
    and a step along x is smeared forward (causal) but not across lines."""
    flat = np.full((256, 512), 0.3, np.float32)
    white = synth.degrade(flat, rng=np.random.default_rng(3), dose=30.0)
    low = synth.degrade(flat, rng=np.random.default_rng(3), dose=30.0, scan_pole=0.4)
    assert _lag_corr(low, 1, 1) == pytest.approx(0.4, abs=0.02)
    assert abs(_lag_corr(low, 0, 1)) < 0.02
    assert float(low.var()) == pytest.approx(float(white.var()) * 0.6 / 1.4, rel=0.06)
    step = np.zeros((4, 16), np.float32)
    step[:, 8:] = 1.0
    out = synth.degrade(step, rng=np.random.default_rng(0), scan_pole=0.5)
    assert out[0, 7] == 0.0
    assert out[0, 8] == pytest.approx(0.5)
    assert out[0, 9] == pytest.approx(0.75)


def test_filter_lines_spreads_each_pixel_forward_along_its_line() -> None:
    delta = np.zeros((3, 9), np.float32)
    delta[1, 4] = 1.0
    out = synth.filter_lines(delta, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(out[1, 4:7], [0.5, 0.25, 0.25])
    assert out[0].sum() == 0.0
    assert out[2].sum() == 0.0
    with pytest.raises(ValueError, match="taps"):
        synth.filter_lines(delta, ())


def test_resample_correlates_noise_in_both_axes() -> None:
    flat = np.full((128, 128), 0.4, np.float32)
    noisy = synth.degrade(flat, rng=np.random.default_rng(4), dose=30.0)
    out = synth.resample(noisy, 1.5, order=1)
    assert out.shape == (192, 192)
    assert _lag_corr(out, 0, 1) > 0.4
    assert _lag_corr(out, 1, 1) > 0.4
    with pytest.raises(ValueError, match="factor"):
        synth.resample(noisy, 10.0)
    with pytest.raises(ValueError, match="order"):
        synth.resample(noisy, 1.5, order=7)


def test_no_dose_means_no_noise(tissue: np.ndarray) -> None:
    same = synth.degrade(tissue, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(same, np.clip(tissue, 0, 1))


def test_degrade_is_deterministic_by_rng(tissue: np.ndarray) -> None:
    options: dict[str, Any] = {"defocus_sigma": 1.5, "dose": 20.0, "jitter_px": 0.5}
    a = synth.degrade(tissue, rng=np.random.default_rng(5), **options)
    b = synth.degrade(tissue, rng=np.random.default_rng(5), **options)
    c = synth.degrade(tissue, rng=np.random.default_rng(6), **options)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scan_line_jitter_shifts_rows_sideways() -> None:
    ramp = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (64, 1))
    jittered = synth.degrade(ramp, rng=np.random.default_rng(0), jitter_px=2.0)
    # On a ramp a shift of s px changes values by s/127: rows differ from each other.
    shifts = (jittered[:, 20:100] - ramp[:, 20:100]).mean(axis=1) * 127
    assert 1.0 < float(np.std(shifts)) < 3.0
    assert float(np.abs(np.diff(jittered[:, 20:100], axis=1)).max()) < 0.02  # each row smooth


def test_gain_offset_and_ramp(tissue: np.ndarray) -> None:
    flat = np.full((100, 50), 0.5, np.float32)
    out = synth.degrade(flat, rng=np.random.default_rng(0), gain=1.2, offset=-0.1, gain_ramp=0.2)
    assert float(out[0].mean()) == pytest.approx(0.5 * 1.2 * 0.9 - 0.1, abs=1e-5)
    assert float(out[-1].mean()) == pytest.approx(0.5 * 1.2 * 1.1 - 0.1, abs=1e-5)
    bright = synth.degrade(tissue, rng=np.random.default_rng(0), gain=5.0)
    assert float(bright.max()) == 1.0  # clipped to [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        {"defocus_sigma": -1.0},
        {"astigmatism": 1.0},
        {"dose": 0.0},
        {"dose": float("nan")},
        {"jitter_px": -0.1},
        {"gain": 0.0},
        {"gain_ramp": 1.0},
    ],
)
def test_degrade_rejects_bad_parameters(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        synth.degrade(np.zeros((16, 16)), rng=np.random.default_rng(0), **bad)


def test_defocus_sigma_is_linear_in_absolute_defocus() -> None:
    assert synth.defocus_sigma(0.0) == 0.0
    assert synth.defocus_sigma(2.0) == pytest.approx(3.0)
    assert synth.defocus_sigma(-2.0) == pytest.approx(3.0)
    assert synth.defocus_sigma(1.0, sigma_per_um=4.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="sigma_per_um"):
        synth.defocus_sigma(1.0, sigma_per_um=-1.0)


def test_to_uint_uses_the_full_range() -> None:
    image = np.array([[0.0, 0.5, 1.0, 1.7, -0.2]], np.float32)
    np.testing.assert_array_equal(synth.to_uint(image, 8), [[0, 128, 255, 255, 0]])
    np.testing.assert_array_equal(synth.to_uint(image, 16), [[0, 32768, 65535, 65535, 0]])
    assert synth.to_uint(image, 16).dtype == np.uint16
    with pytest.raises(ValueError, match="8 or 16"):
        synth.to_uint(image, 12)


def test_through_focus_series_loses_detail_with_sigma(tissue: np.ndarray) -> None:
    series = synth.through_focus_series(
        tissue, sigmas=[0.0, 1.0, 3.0], dose=None, rng=np.random.default_rng(0)
    )
    energies = [_high_freq_energy(image) for image in series]
    assert len(series) == 3
    assert energies[0] > energies[1] > energies[2]


# ------------------------------------------------------------------ tile writer


def test_write_tile_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "S_000_1" / "Tile_r1-c1_S_000_1.tif"
    image = synth.to_uint(synth.neuropil((64, 64), rng=np.random.default_rng(0)), 8)
    synth.write_tile(path, image, row=1, col=1, stage_x_um=1.0, stage_y_um=2.0)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    pixels, meta = read_tile(path)
    np.testing.assert_array_equal(pixels, image)
    assert meta.source == "fibics"


def test_write_tile_truncated_is_a_corrupt_tile(tmp_path: Path) -> None:
    path = tmp_path / "t.tif"
    image = np.zeros((64, 64), np.uint16)
    synth.write_tile(path, image, row=1, col=1, stage_x_um=0, stage_y_um=0, truncate_to=0.5)
    with pytest.raises(TileError, match="truncated"):
        read_tile(path)


def test_write_tile_rejects_float_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8 or uint16"):
        synth.write_tile(
            tmp_path / "t.tif",
            np.zeros((32, 32), np.float32),
            row=1,
            col=1,
            stage_x_um=0,
            stage_y_um=0,
        )


# ------------------------------------------------------------------ wafers


def test_wafer_plan_is_deterministic_and_counts_are_as_asked() -> None:
    options: dict[str, Any] = {
        "sections": 4,
        "rows": 3,
        "cols": 3,
        "blur_fraction": 0.1,
        "seed": 5,
        "empty": 2,
        "corrupt": 1,
    }
    plan = synth.wafer_plan(**options)
    assert plan == synth.wafer_plan(**options)
    assert len(plan) == 36
    assert sum(t.corrupt for t in plan) == 1
    assert sum(t.empty for t in plan) == 2
    assert not any(t.empty and t.corrupt for t in plan)
    blurred = [t for t in plan if t.defocus_sigma > 0]
    assert len(blurred) == round(0.1 * 33)
    assert not any(t.empty or t.corrupt for t in blurred)
    assert {t.defocus_sigma for t in blurred} <= {2.0, 4.0}
    other = synth.wafer_plan(**{**options, "seed": 6})
    assert [t.defocus_sigma for t in other] != [t.defocus_sigma for t in plan]


def test_wafer_plan_comes_in_acquisition_order() -> None:
    plan = synth.wafer_plan(sections=2, rows=2, cols=3, blur_fraction=0, seed=0, section_start=7)
    keys = [(t.section, t.row, t.col) for t in plan]
    assert keys == sorted(keys)
    assert keys[0] == ("007", 1, 1)
    assert keys[-1] == ("008", 2, 3)


def test_wafer_plan_accepts_explicit_tiles() -> None:
    plan = synth.wafer_plan(
        sections=2, rows=2, cols=2, blur_fraction=0, seed=0, empty=[(1, 2, 2)], corrupt=[(0, 1, 1)]
    )
    assert [(t.section, t.row, t.col) for t in plan if t.empty] == [("001", 2, 2)]
    assert [(t.section, t.row, t.col) for t in plan if t.corrupt] == [("000", 1, 1)]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sections": 0}, "sections"),
        ({"blur_fraction": 1.5}, "blur_fraction"),
        ({"empty": 99}, "empty"),
        ({"corrupt": [(5, 1, 1)]}, "corrupt"),
        ({"blur_sigmas": ()}, "blur_sigmas"),
    ],
)
def test_wafer_plan_rejects_bad_parameters(bad: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"sections": 1, "rows": 2, "cols": 2, "blur_fraction": 0, "seed": 0}
    with pytest.raises(ValueError, match=message):
        synth.wafer_plan(**{**options, **bad})


def test_tissue_density_varies_between_positions_but_not_sections() -> None:
    plan = synth.wafer_plan(sections=3, rows=4, cols=4, blur_fraction=0, seed=2)
    by_position: dict[tuple[int, int], set[float]] = {}
    for tile in plan:
        by_position.setdefault((tile.row, tile.col), set()).add(tile.density)
    assert all(len(d) == 1 for d in by_position.values())
    densities = sorted(d.pop() for d in by_position.values())
    assert densities[0] < 0.6 < densities[-1]


def test_write_wafer_layout_and_manifest(tmp_wafer: TmpWafer) -> None:
    out, written = tmp_wafer(
        sections=2, rows=2, cols=3, blur_fraction=0.25, empty_tiles=1, corrupt_tiles=1, seed=4
    )
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["S_000_1752450056", "S_001_1752450056"]
    files = sorted(out.rglob("*.tif"))
    assert len(files) == len(written) == 12
    assert not list(out.rglob("*.tmp"))
    for tile in written:
        assert tile.path.name == f"Tile_r{tile.row}-c{tile.col}_S_{tile.section}_1752450056.tif"
        assert parse_tile_name(tile.path) == (tile.section, tile.row, tile.col)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 4
    assert len(manifest["tiles"]) == 12
    for record, tile in zip(manifest["tiles"], written, strict=True):
        assert out / record["path"] == tile.path
        for key in ("section", "row", "col", "defocus_sigma", "empty", "corrupt"):
            assert record[key] == getattr(tile, key)


def test_write_wafer_tiles_read_back_as_the_manifest_says(tmp_wafer: TmpWafer) -> None:
    _, written = tmp_wafer(
        sections=1, rows=3, cols=3, size=128, blur_fraction=0, empty_tiles=1, corrupt_tiles=1
    )
    for tile in written:
        if tile.corrupt:
            with pytest.raises(TileError, match="truncated"):
                read_tile(tile.path)
            continue
        pixels, meta = read_tile(tile.path)
        assert pixels.shape == (128, 128)
        assert pixels.dtype == np.uint8
        assert (meta.placement.section, meta.placement.row, meta.placement.col) == (
            tile.section,
            tile.row,
            tile.col,
        )
        assert meta.placement.stage_x_um == pytest.approx(tile.stage_x_um)
        assert meta.placement.stage_y_um == pytest.approx(tile.stage_y_um)
        assert meta.placement.pixel_size_um == pytest.approx(0.004)
        smooth_std = float(_smooth(pixels / 255).std())
        if tile.empty:
            assert smooth_std < 0.02
        else:
            assert smooth_std > 0.03


def test_write_wafer_16_bit(tmp_wafer: TmpWafer) -> None:
    _, written = tmp_wafer(sections=1, rows=1, cols=1, bits=16)
    pixels, _ = read_tile(written[0].path)
    assert pixels.dtype == np.uint16
    assert int(pixels.max()) > 255


def test_write_wafer_is_deterministic_by_seed(tmp_wafer: TmpWafer) -> None:
    _, first = tmp_wafer(sections=1, rows=1, cols=2, seed=9)
    _, second = tmp_wafer(sections=1, rows=1, cols=2, seed=9)
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()


def test_blurred_tiles_have_less_detail_than_the_same_position_in_focus(
    tmp_wafer: TmpWafer,
) -> None:
    _, written = tmp_wafer(sections=4, rows=1, cols=1, size=192, blur_fraction=0.25, dose=None)
    blurred = [t for t in written if t.defocus_sigma > 0]
    sharp = [t for t in written if t.defocus_sigma == 0]
    assert len(blurred) == 1
    worst_sharp = min(_high_freq_energy(read_tile(t.path)[0] / 255) for t in sharp)
    assert _high_freq_energy(read_tile(blurred[0].path)[0] / 255) < 0.5 * worst_sharp


def test_same_position_looks_alike_across_sections_and_other_positions_do_not(
    tmp_wafer: TmpWafer,
) -> None:
    _, written = tmp_wafer(sections=3, rows=1, cols=2, size=160, blur_fraction=0, drift=0.02)
    image = {(t.section, t.col): _smooth(read_tile(t.path)[0]) for t in written}
    for col in (1, 2):
        assert _corr(image["000", col], image["001", col]) > 0.7
        assert _corr(image["001", col], image["002", col]) > 0.7
    for section in ("000", "001", "002"):
        assert abs(_corr(image[section, 1], image[section, 2])) < 0.3


def test_content_drifts_further_the_more_sections_apart() -> None:
    base = texture.serial_section((128, 128), (0, 1, 1), 0.0)
    correlations = [
        _corr(base, texture.serial_section((128, 128), (0, 1, 1), t)) for t in (0.05, 0.2, 1.0)
    ]
    assert correlations[0] > correlations[1] > correlations[2]
    assert abs(correlations[2]) < 0.2  # one drift unit: new content


def test_synth_main_prints_one_line_per_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = synth.main(
        tmp_path / "w",
        sections=2,
        rows=2,
        cols=2,
        size=64,
        bits=8,
        dose=30.0,
        blur_fraction=0.25,
        seed=0,
    )
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].startswith("S_000_1752450056: 4 tiles; out of focus:")
    assert lines[1].startswith("S_001_1752450056: 4 tiles; out of focus:")
    assert "σ=" in lines[0] + lines[1]
    assert lines[2].startswith("wrote 8 tiles")


def test_focuswatch_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [str(out), "--sections", "1", "--rows", "1", "--cols", "2", "--size", "48"]
    assert cli.main(["synth", *argv, "--log-format", "console"]) == 0
    assert len(list(out.rglob("*.tif"))) == 2
    assert "S_000_" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("layout", "pattern", "side_files"),
    [
        ("multisem", "*/0000*/*.png", ["001_S0R1/full_image_coordinates.txt"]),
        (
            "sbemimage",
            "tiles/g*/t*/*.tif",
            ["meta/logs/imagelist_1752450056.txt", "meta/logs/metadata_1752450056.txt"],
        ),
    ],
)
def test_focuswatch_synth_writes_other_microscopes_layouts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    layout: str,
    pattern: str,
    side_files: list[str],
) -> None:
    """``--layout``: a rehearsal acquisition as MultiSEM or SBEMimage writes it, with a
    corrupt tile (truncated) among them and one line per tile in each side file."""
    out = tmp_path / layout
    argv = [str(out), "--layout", layout, "--sections", "1", "--rows", "2", "--cols", "2"]
    assert cli.main(["synth", *argv, "--size", "48", "--corrupt", "1", "--empty", "1"]) == 0
    tiles = sorted(out.glob(pattern))
    assert len(tiles) == 4
    for side in side_files:
        assert len((out / side).read_text(encoding="utf-8").splitlines()) == 4
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    corrupt = [t for t in manifest["tiles"] if t["corrupt"]]
    assert len(corrupt) == 1
    with pytest.raises(TileError):
        read_tile(out / corrupt[0]["path"])
    for t in manifest["tiles"]:
        if not t["corrupt"]:
            assert read_tile(out / t["path"])[0].shape == (48, 48)
    assert "empty: " in capsys.readouterr().out


def test_focuswatch_synth_bad_parameter_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = synth.main(
        tmp_path / "w",
        sections=1,
        rows=1,
        cols=1,
        size=64,
        bits=8,
        dose=30.0,
        blur_fraction=2.0,
        seed=0,
    )
    assert rc == 2
    assert "blur_fraction" in capsys.readouterr().err


def test_working_distance_in_the_metadata_matches_the_blur(tmp_path: Path) -> None:
    """σ = 2 px at 1.5 px per µm is 1.33 µm from focus, not 1.33 mm (issue 12.22)."""
    tiles = synth.write_wafer(
        tmp_path, sections=1, rows=2, cols=2, size=64, blur_fraction=0.5, blur_sigmas=(2.0,)
    )
    for t in tiles:
        wd = read_meta(t.path).placement.working_distance_um
        assert wd == pytest.approx(synth.IN_FOCUS_WD_UM + t.defocus_sigma / 1.5, abs=1e-3)


def test_synth_writes_empty_corrupt_and_a_focus_series_for_calibrate(tmp_path: Path) -> None:
    """What an operator rehearses with: the command line writes all of it."""
    wafer = tmp_path / "wafer"
    assert (
        cli.main(
            [
                "synth",
                str(wafer),
                "--sections",
                "1",
                "--rows",
                "2",
                "--cols",
                "3",
                "--size",
                "64",
                "--empty",
                "1",
                "--corrupt",
                "1",
                "--blur-sigmas",
                "3",
            ]
        )
        == 0
    )
    truth = json.loads((wafer / "manifest.json").read_text())["tiles"]
    assert sum(t["empty"] for t in truth) == 1
    assert sum(t["corrupt"] for t in truth) == 1
    series = tmp_path / "series"
    assert cli.main(["synth", str(series), "--focus-series", "7", "--size", "128"]) == 0
    assert len(list(series.glob("*.tif"))) == 7
    out = tmp_path / "cal.json"
    assert cli.main(["calibrate", str(series), "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["best_focus_um"] == pytest.approx(synth.IN_FOCUS_WD_UM, abs=0.6)
