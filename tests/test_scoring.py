"""Scoring files: real TIFFs in, picklable TileScores out; errors as TileErrors; the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from focuswatch import cli, synth
from focuswatch.errors import TileError
from focuswatch.scoring import ScoreSettings, TileScore, score_array, score_path

CPU = ScoreSettings(backend="cpu", patch_size=128)


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image)
    return path


def tissue(shape: tuple[int, int], *, sigma: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clean = synth.neuropil(shape, rng=rng)
    return synth.to_uint(synth.degrade(clean, rng=rng, defocus_sigma=sigma, dose=30.0), 16)


def test_score_path_scores_a_real_tile(synth_tile) -> None:  # type: ignore[no-untyped-def]
    path = synth_tile(size=256)
    ts = score_path(path, CPU)
    assert isinstance(ts, TileScore)
    assert ts.path == str(path)
    assert ts.score > 0
    assert ts.patch_scores is not None
    assert np.asarray(ts.patch_scores).shape == (2, 2)
    assert ts.score == float(np.median(ts.patch_scores))
    assert ts.content > 0.02
    assert ts.backend == "numpy"
    assert ts.shape == (256, 256)
    assert ts.dtype == "uint8"
    assert ts.read_ms > 0
    assert ts.score_ms > 0
    assert ts.meta.placement.row == 1
    assert ts.meta.placement.col == 1
    again = pickle.loads(pickle.dumps(ts))
    assert again == ts


def test_blurred_tile_scores_lower(synth_tile) -> None:  # type: ignore[no-untyped-def]
    sharp = score_path(synth_tile("a.tif", size=256), CPU).score
    blurred = score_path(synth_tile("b.tif", size=256, sigma=3.0), CPU).score
    assert blurred < 0.5 * sharp


def test_memory_guard_scores_patch_by_patch_with_the_same_result(tmp_path: Path) -> None:
    """A tile over memory_limit_mb is read region by region: the same scores as the
    in-memory path, with a peak allocation well below the decoded tile's size. (Float
    pixels: an integer tile is streamed by bands on either path, see below.)"""
    path = write(tmp_path / "big.tif", tissue((768, 1024)).astype(np.float32))
    image_bytes = 768 * 1024 * 4
    # One patch at a time: patches scored at once would add their working memory to
    # both peaks by chance, and this is about reading region by region.
    big = ScoreSettings(backend="cpu", patch_size=256, memory_limit_mb=1024, threads=1)
    small = ScoreSettings(backend="cpu", patch_size=256, memory_limit_mb=1, threads=1)
    score_path(path, big)  # warm the per-shape caches so both runs allocate alike

    def peak(settings: ScoreSettings) -> tuple[TileScore, int]:
        tracemalloc.start()
        try:
            return score_path(path, settings), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    in_memory, peak_memory = peak(big)
    guarded, peak_guarded = peak(small)
    assert guarded.patch_scores == in_memory.patch_scores
    assert guarded.score == in_memory.score
    assert guarded.content == pytest.approx(in_memory.content)
    assert guarded.resolution == "patches"
    assert peak_memory > image_bytes
    assert peak_guarded < peak_memory - image_bytes // 2


def _same_tile_scores(a: TileScore, b: TileScore) -> None:
    """Every number of two scorings of one tile is the same (timings and file aside)."""
    fields = ("read_ms", "score_ms", "path", "meta")
    da = {k: v for k, v in dataclasses.asdict(a).items() if k not in fields}
    db = {k: v for k, v in dataclasses.asdict(b).items() if k not in fields}
    assert json.dumps(da, default=str) == json.dumps(db, default=str)


def test_an_integer_tile_is_scored_as_it_is_read_with_the_same_numbers(tmp_path: Path) -> None:
    """A 16-bit tile is read one band of patch rows at a time while the patches already
    read are scored: every number equals scoring the whole decoded image, and the peak
    allocation stays well below the decoded tile (two bands at most)."""
    image = tissue((3072, 1280), seed=4)
    path = write(tmp_path / "t.tif", image)
    image_bytes = image.nbytes
    settings = ScoreSettings(backend="cpu", patch_size=256, threads=1)
    score_path(path, settings)  # warm the per-shape caches
    whole = score_array(image, name=str(path), settings=settings)
    tracemalloc.start()
    try:
        streamed = score_path(path, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _same_tile_scores(streamed, whole)
    assert streamed.resolution == "patches"
    assert streamed.read_ms > 0
    assert peak < image_bytes // 2


def test_a_streamed_tile_of_blank_patches_with_different_levels_is_not_constant(
    tmp_path: Path,
) -> None:
    """Each patch flat but the tile not (one level per patch row): scored, every patch
    blank, as the whole image is; only a tile of one value is 'constant'."""
    image = np.repeat(np.arange(4, dtype=np.uint16) * 100, 256)[:, None] * np.ones(
        (1, 512), np.uint16
    )
    path = write(tmp_path / "steps.tif", image)
    settings = ScoreSettings(backend="cpu", patch_size=256)
    streamed = score_path(path, settings)
    _same_tile_scores(streamed, score_array(image, name=str(path), settings=settings))
    assert streamed.score == 0.0


def test_memory_guard_falls_back_to_patches_for_whole_tile_resolutions(tmp_path: Path) -> None:
    path = write(tmp_path / "big.tif", tissue((768, 1024)))  # 1.5 MiB decoded
    ts = score_path(
        path, ScoreSettings(backend="cpu", resolution="native", patch_size=256, memory_limit_mb=1)
    )
    assert ts.resolution == "patches"
    assert ts.patch_scores is not None


def test_score_array_equals_score_path(tmp_path: Path) -> None:
    image = tissue((256, 256), seed=3)
    path = write(tmp_path / "t.tif", image)
    from_file = score_path(path, CPU)
    from_memory = score_array(image, name="t.tif", settings=CPU)
    assert from_memory.score == from_file.score
    assert from_memory.patch_scores == from_file.patch_scores
    assert from_memory.path == "t.tif"
    assert from_memory.read_ms == 0.0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a tiff at all, just text", ""),
        (b"II*\x00\x08\x00\x00\x00", ""),
    ],
)
def test_unreadable_files_are_tile_errors(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(TileError) as info:
        score_path(path, CPU)
    assert info.value.path == str(path)
    assert info.value.reason


def test_missing_file_is_a_tile_error(tmp_path: Path) -> None:
    with pytest.raises(TileError):
        score_path(tmp_path / "nope.tif", CPU)


def test_constant_tile_is_a_tile_error_saying_no_signal(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.tif", np.full((768, 1024), 1000, np.uint16))
    with pytest.raises(TileError) as info:
        score_path(path, CPU)
    assert info.value.reason == "constant image (no signal)"
    guarded = ScoreSettings(backend="cpu", patch_size=256, memory_limit_mb=1)
    with pytest.raises(TileError) as info:
        score_path(path, guarded)
    assert info.value.reason == "constant image (no signal)"


def test_nan_tile_is_a_tile_error(tmp_path: Path) -> None:
    # Only a tile with no finite pixel: a few NaN pixels are left out, not the tile
    # (test_a_few_nan_pixels_cost_a_few_features_not_the_tile).
    image = np.full((128, 128), np.nan, np.float32)
    path = write(tmp_path / "nan.tif", image)
    with pytest.raises(TileError, match="NaN"):
        score_path(path, CPU)


def test_bad_settings_are_value_errors_not_tile_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tif", tissue((128, 128)))
    with pytest.raises(ValueError, match="criterion"):
        score_path(path, ScoreSettings(backend="cpu", criterion="nope"))
    with pytest.raises(ValueError, match="patch_size"):
        score_path(path, ScoreSettings(backend="cpu", patch_size=3))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        score_path(path, ScoreSettings(backend="cpu", threads=0))


def test_cli_score_prints_each_file_and_fails_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good1 = write(tmp_path / "a.tif", tissue((128, 128), seed=1))
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"garbage")
    good2 = write(tmp_path / "c.tif", tissue((128, 128), seed=2, sigma=2.0))
    args = ["score", str(good1), str(bad), str(good2), "--backend", "cpu", "--patch-size", "64"]
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{good1}: score ")
    assert "patches 2x2" in lines[0]
    assert "numpy" in lines[0]
    assert "128x128 uint16" in lines[0]
    assert lines[1].startswith(f"{good2}: score ")
    assert f"{bad}: error: " in err


def test_cli_score_json_is_one_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "a.tif", tissue((128, 128), seed=1))
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"garbage")
    rc = cli.main(
        ["score", "--json", "--backend", "cpu", "--patch-size", "64", str(good), str(bad)]
    )
    assert rc == 1
    out, _ = capsys.readouterr()
    objs = [json.loads(line) for line in out.strip().splitlines()]
    assert len(objs) == 2
    assert objs[0]["path"] == str(good)
    assert objs[0]["score"] > 0
    assert objs[0]["patches"]["rows"] == 2
    assert objs[0]["shape"] == [128, 128]
    assert objs[0]["backend"] == "numpy"
    assert objs[0]["elapsed_ms"] > 0
    assert objs[1]["path"] == str(bad)
    assert objs[1]["error"]


def test_cli_score_all_good_exits_zero_with_each_criterion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "a.tif", tissue((128, 128), seed=1))
    for criterion in ("mhfd", "tenengrad"):
        rc = cli.main(
            ["score", "--criterion", criterion, "--mode", "fast", "--backend", "cpu", str(good)]
        )
        assert rc == 0
    out, _ = capsys.readouterr()
    assert "(tenengrad, fast)" in out


def test_cli_score_reports_any_failure_per_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not only TileError: a GPU that is missing fails each file with one line, no traceback."""
    from focuswatch.backend import get_backend
    from focuswatch.errors import BackendError

    try:
        get_backend("gpu")
    except BackendError:
        pass
    else:
        pytest.skip("a GPU is available here, so --backend gpu cannot fail")
    a = write(tmp_path / "a.tif", tissue((128, 128), seed=1))
    b = write(tmp_path / "b.tif", tissue((128, 128), seed=2))
    assert cli.main(["score", "--backend", "gpu", "--patch-size", "64", str(a), str(b)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert [line.split(": error: ")[0] for line in lines] == [str(a), str(b)]
    assert all("BackendError: GPU requested" in line for line in lines)
    assert "Traceback" not in err


def test_cli_score_takes_its_defaults_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[scoring] in --config sets what a flag does not; a flag given still wins."""
    good = write(tmp_path / "a.tif", tissue((128, 128), seed=1))
    conf = tmp_path / "fw.toml"
    conf.write_text(
        '[scoring]\ncriterion = "tenengrad"\nmode = "fast"\nbackend = "cpu"\npatch_size = 64\n',
        encoding="utf-8",
    )
    assert cli.main(["score", "--config", str(conf), str(good)]) == 0
    assert cli.main(["score", "--config", str(conf), "--criterion", "mhfd", str(good)]) == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert "(tenengrad, fast)" in first
    assert "patches 2x2" in first  # patch_size 64 from the file
    assert "numpy" in first
    assert "(mhfd, fast)" in second


def test_a_few_nan_pixels_cost_a_few_features_not_the_tile(tmp_path: Path) -> None:
    """The finite pixels are scored; the count of those that were not is in the meta."""
    rng = np.random.default_rng(3)
    image = synth.neuropil((640, 640), rng=rng).astype(np.float32)  # 1.6 MB: can stream
    clean = tmp_path / "clean.tif"
    tifffile.imwrite(clean, image)
    holed = image.copy()
    holed[10, 10] = np.nan
    holed[100:102, 50:55] = np.inf
    path = tmp_path / "holed.tif"
    tifffile.imwrite(path, holed)
    settings = ScoreSettings(backend="cpu")
    ref = score_path(clean, settings)
    got = score_path(path, settings)
    assert got.meta.nonfinite_pixels == 11
    assert ref.meta.nonfinite_pixels == 0
    assert abs(got.score - ref.score) <= 0.02 * ref.score
    streamed = score_path(path, dataclasses.replace(settings, memory_limit_mb=1))
    assert streamed.meta.nonfinite_pixels == 11


def test_patches_at_once_are_one_per_core_but_no_more_than_the_memory_limit_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a 64-core machine a tile is not scored 64 patches at a time when
    memory_limit_mb holds only a few patches' working memory (~6 MB per 256² patch,
    ~96 MB per 1024²)."""
    from focuswatch import scoring

    asked: list[object] = []
    real = scoring.score_image

    def recording(*args: object, **kw: object) -> object:
        asked.append(kw.get("threads"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scoring, "score_image", recording)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    path = write(tmp_path / "t.tif", tissue((256, 256)))
    for limit_mb, expected in ((1, 1), (13, 2), (100_000, 64)):
        score_path(path, ScoreSettings(backend="cpu", patch_size=256, memory_limit_mb=limit_mb))
        assert asked.pop() == expected
    score_path(path, ScoreSettings(backend="cpu", patch_size=256, threads=3))
    assert asked.pop() == 3  # as set


@pytest.mark.parametrize(
    ("shape", "grid"),
    [
        ((512, 512), (2, 2)),
        ((768, 1024), (2, 3)),
        ((1024, 1024), (2, 2)),
        ((2048, 2048), (2, 2)),
        ((384, 384), (1, 1)),
    ],
)
def test_a_tile_under_two_patches_a_side_gets_a_focus_map_at_the_default_patch_size(
    tmp_path: Path, shape: tuple[int, int], grid: tuple[int, int]
) -> None:
    """scoring.patch_size (1024 by default) is the largest patch: a 512² tile is scored
    as 2×2 patches, not one (with one it has no focus map, and a wrinkle over a quarter
    of it is not seen), in patches of at least 256 px; a tile that holds two is as
    before, and one under 512 px a side stays one patch."""
    path = write(tmp_path / "t.tif", tissue(shape))
    settings = ScoreSettings(backend="cpu")
    assert settings.patch_size == 1024
    ts = score_path(path, settings)
    assert ts.patch_scores is not None
    assert (len(ts.patch_scores), len(ts.patch_scores[0])) == grid
    half = min(shape) // 2
    same = score_path(path, dataclasses.replace(settings, patch_size=half if half >= 256 else 1024))
    assert ts.patch_scores == same.patch_scores
    from_memory = score_array(tissue(shape), name="t.tif", settings=settings)
    assert from_memory.patch_scores == ts.patch_scores


@pytest.mark.parametrize(("criterion", "mode"), [("mhfd", "faithful"), ("tenengrad", "default")])
def test_faithful_mode_and_the_classic_criteria_keep_their_layout(
    tmp_path: Path, criterion: str, mode: str
) -> None:
    """The cap is for the modes whose patches carry the per-patch signatures (fast,
    exact): the paper's faithful mode and the classic criteria score a 512² tile as one
    patch, as they always have (their numbers are revision 1)."""
    path = write(tmp_path / "t.tif", tissue((512, 512)))
    ts = score_path(path, ScoreSettings(backend="cpu", criterion=criterion, mode=mode))
    assert ts.patch_scores is not None
    assert (len(ts.patch_scores), len(ts.patch_scores[0])) == (1, 1)


def test_the_memory_guard_lays_a_tile_out_as_resolution_patches_does(tmp_path: Path) -> None:
    """A tile over memory_limit_mb is scored by patches whatever resolution was asked
    (calibrate tells the operator to set resolution 'patches' for the same numbers): so
    it is laid out as resolution 'patches' lays it out, four 512 px patches for a 1024²
    tile at the default patch size, not one of 1024 px."""
    path = write(tmp_path / "t.tif", tissue((1024, 1024)))  # 2 MiB decoded
    guarded = score_path(
        path, ScoreSettings(backend="cpu", resolution="native", memory_limit_mb=1, threads=1)
    )
    asked = score_path(path, ScoreSettings(backend="cpu", resolution="patches", threads=1))
    assert guarded.resolution == "patches"
    assert guarded.patch_scores is not None
    assert (len(guarded.patch_scores), len(guarded.patch_scores[0])) == (2, 2)
    assert guarded.patch_scores == asked.patch_scores
    assert guarded.score == asked.score
