"""Calibration from a through-focus series: best focus, log-linear slope, saved for the policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focuswatch import cli, synth
from focuswatch.calibrate import Calibration, fit_calibration

BEST = 5000.0
STEPS = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


def write_series(folder: Path, *, with_metadata: bool = True, size: int = 256) -> list[Path]:
    """One site at nine working distances around 5000 µm (blur linear in |Δz|)."""
    rng = np.random.default_rng(0)
    clean = synth.neuropil((size, size), rng=rng)
    paths = []
    for i, dz in enumerate(STEPS):
        image = synth.degrade(clean, rng=rng, defocus_sigma=synth.defocus_sigma(abs(dz)), dose=30.0)
        path = folder / f"focus_{i:02d}_wd{BEST + dz:.1f}.tif"
        synth.write_tile(
            path,
            synth.to_uint(image, 16),
            row=1,
            col=1,
            stage_x_um=0.0,
            stage_y_um=0.0,
            working_distance_um=BEST + dz if with_metadata else None,
        )
        paths.append(path)
    return paths


def test_fit_recovers_a_known_v() -> None:
    wd = np.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0])
    scores = np.exp(7.0 - 0.8 * np.abs(wd - 12.6))
    cal = fit_calibration(wd, scores)
    assert cal.best_focus_um == pytest.approx(12.6, abs=0.01)
    assert cal.slope_per_um == pytest.approx(-0.8, rel=0.01)
    assert cal.intercept == pytest.approx(7.0, rel=0.01)
    assert cal.r == pytest.approx(-1.0, abs=1e-6)
    assert cal.n == 7


def test_defocus_inverts_the_fit() -> None:
    cal = Calibration(best_focus_um=0.0, slope_per_um=-0.5, intercept=5.0, r=-0.99, n=9)
    assert cal.defocus_um(100.0 * math.exp(-0.5 * 3.0), 100.0) == pytest.approx(3.0)
    assert cal.defocus_um(120.0, 100.0) == 0.0
    assert cal.defocus_um(0.0, 100.0) is None
    assert cal.defocus_um(10.0, 0.0) is None
    useless = Calibration(best_focus_um=0.0, slope_per_um=0.1, intercept=5.0, r=0.2, n=9)
    assert useless.defocus_um(10.0, 100.0) is None


@pytest.mark.parametrize(
    ("wd", "scores", "message"),
    [
        ([1.0, 2.0], [5.0, 4.0], "at least 3"),
        ([1.0, 1.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0], "3 different"),
        ([1.0, 2.0, 3.0], [5.0, 0.0, 4.0], "at least 3"),
        ([1.0, 2.0, float("nan")], [5.0, 3.0, 4.0], "finite"),
    ],
)
def test_fit_rejects_series_it_cannot_fit(
    wd: list[float], scores: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_calibration(wd, scores)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    cal = fit_calibration([1.0, 2.0, 3.0, 4.0], [10.0, 50.0, 20.0, 5.0])
    path = tmp_path / "cal.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    assert json.loads(path.read_text())["version"] == 1


def test_load_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Calibration.load(bad)
    bad.write_text(json.dumps({"version": 1, "slope_per_um": -1}))
    with pytest.raises(ValueError, match="missing or bad field"):
        Calibration.load(bad)
    with pytest.raises(ValueError, match="cannot read"):
        Calibration.load(tmp_path / "absent.json")


def test_cli_calibrates_from_tile_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Working distances from FibicsXML: best focus found, slope negative, JSON and PNG written."""
    series = tmp_path / "series"
    series.mkdir()
    write_series(series)
    out, plot = tmp_path / "cal.json", tmp_path / "cal.png"
    rc = cli.main(["calibrate", str(series), "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    cal = Calibration.load(out)
    assert cal.n == len(STEPS)
    assert cal.best_focus_um == pytest.approx(BEST, abs=0.75)
    assert cal.slope_per_um < 0
    assert cal.r < -0.9
    with Image.open(plot) as im:
        assert im.format == "PNG"
        assert im.size == (720, 480)
    text = capsys.readouterr().out
    assert "best focus" in text
    assert "r = " in text


def test_cli_calibrates_from_a_filename_pattern(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    write_series(series, with_metadata=False)
    out = tmp_path / "cal.json"
    rc = cli.main(["calibrate", str(series), "--pattern", r"_wd([0-9.]+)\.tif$", "--out", str(out)])
    assert rc == 0
    assert Calibration.load(out).best_focus_um == pytest.approx(BEST, abs=0.75)


def test_cli_calibrates_from_a_csv(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    paths = write_series(series, with_metadata=False)
    table = tmp_path / "focus.csv"
    table.write_text(
        "file,wd_um\n"
        + "".join(f"{p.name},{BEST + dz}\n" for p, dz in zip(paths, STEPS, strict=True))
    )
    out = tmp_path / "cal.json"
    rc = cli.main(["calibrate", *map(str, paths), "--focus-csv", str(table), "--out", str(out)])
    assert rc == 0
    cal = Calibration.load(out)
    assert cal.best_focus_um == pytest.approx(BEST, abs=0.75)
    assert cal.slope_per_um < 0


def test_cli_without_working_distances_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "series"
    series.mkdir()
    write_series(series, with_metadata=False)
    rc = cli.main(["calibrate", str(series), "--out", str(tmp_path / "cal.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no working distance" in err
    assert "cannot calibrate" in err
    assert not (tmp_path / "cal.json").exists()


@pytest.mark.parametrize(
    ("scores", "wd", "said"),
    [
        ([5.0, 0.0, 0.0, 7.0], [1.0, 2.0, 3.0, 4.0], "only 2 of 4 tiles scored above 0"),
        ([5.0, 6.0, 7.0, 8.0], [1.0, 1.0, 2.0, 2.0], "4 usable tiles, but at only 2 different"),
    ],
)
def test_too_little_to_fit_says_which_condition_failed(
    scores: list[float], wd: list[float], said: str
) -> None:
    """Never "got 12 usable of 12" for a series that only lacks working distances."""
    with pytest.raises(ValueError, match=said):
        fit_calibration(wd, scores)


def test_plot_labels_never_need_a_glyph_the_font_lacks(tmp_path: Path) -> None:
    from focuswatch import calibrate

    font, text = calibrate._plot_font()
    label = text("slope per µm, |Δf|")
    if "µ" in label:  # a font said to have the glyphs: neither is the missing-glyph box
        missing = bytes(font.getmask("\U0010fffd"))
        assert bytes(font.getmask("µ")) != missing
        assert bytes(font.getmask("Δ")) != missing
    else:
        assert label == "slope per um, |df|"
    cal = fit_calibration([1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 40.0, 90.0, 40.0, 10.0])
    calibrate.write_plot(cal, tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as img:
        assert img.size == (720, 480)


def test_a_calibration_is_never_recorded_at_a_resolution_its_scores_were_not_made_at(
    tmp_path: Path,
) -> None:
    """``scoring.resolution: native`` with tiles over ``memory_limit_mb``: the memory
    guard scores them by patches, so the fit would be of patch scores recorded as
    'native' (it was saved so, and a service scoring small tiles natively accepted it,
    turning native scores into µm with a patch-score slope). Refused, saying why."""
    import dataclasses

    from focuswatch.calibrate import main as calibrate
    from focuswatch.config import Config, ScoringConfig
    from focuswatch.errors import FocuswatchError

    series = tmp_path / "series"
    series.mkdir()
    write_series(series, size=768)
    out = tmp_path / "cal.json"
    # 768² 16-bit tiles decode to 1.1 MiB: over a 1 MiB limit (below the config's
    # floor of 64, on purpose, to keep the tiles small).
    scoring = dataclasses.replace(
        ScoringConfig(), resolution="native", memory_limit_mb=1, backend="cpu", patch_size=256
    )
    with pytest.raises(FocuswatchError, match="memory guard"):
        calibrate([series], out=out, cfg=Config(scoring=scoring))
    assert not out.exists()
    # Asked for patches, the same tiles calibrate.
    patches = dataclasses.replace(scoring, resolution="patches")
    assert calibrate([series], out=out, cfg=Config(scoring=patches)) == 0
    assert Calibration.load(out).resolution == "patches"
