"""Calibrate scores against defocus from a through-focus series.

Tiles of one site taken at several working distances (the microscope writes the
working distance into FibicsXML ``Scan/Focus`` or CZ_SEM ``ap_wd``; or give a CSV
of ``file,wd_um``, or a regex whose first group is the working distance in µm).
The authors of MHFD fit ``log(score)`` linearly against ``|defocus|``; we do the
same, with best focus ``f0`` found as the working distance that makes that V-shaped
fit best (a grid search, finer than the series' steps), so one noisy peak tile
does not decide it.

The result (``Calibration``, saved as JSON) lets the policy say *how far* out of
focus a tile is: ``defocus_um(score, baseline)`` inverts the fit for the ratio of
a tile's score to its in-focus baseline.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focuswatch.choices import DEFAULT_MODE, is_revision, same_scores, scorer_revision
from focuswatch.config import Config
from focuswatch.errors import FocuswatchError, TileError
from focuswatch.files import atomic_write
from focuswatch.tiles import TileMeta

__all__ = ["Calibration", "fit_calibration", "main", "write_plot"]

#: File types taken from a folder.
_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".bmp"})
_VERSION = 1


def _revision(value: object) -> int:
    if not is_revision(value):
        raise ValueError(f"revision {value!r} is not a whole number")
    return value


@dataclass(frozen=True)
class Calibration:
    """``log(score) = intercept + slope·|wd − best_focus_um|`` (slope per µm, < 0 when usable)."""

    best_focus_um: float
    slope_per_um: float
    intercept: float
    r: float
    n: int
    criterion: str = "mhfd"
    mode: str = DEFAULT_MODE
    resolution: str = "patches"
    patch_size: int = 1024
    wd_um: tuple[float, ...] = ()
    scores: tuple[float, ...] = ()
    #: The scorer revision of the scores fitted (``choices.scorer_revision``; a file
    #: written before revisions were recorded: 1).
    revision: int = 1

    def made_with(self) -> tuple[str, str, str, int, int]:
        """What the fitted scores depend on: criterion, mode (``default`` as ``exact``),
        resolution, patch size, scorer revision."""
        return (
            self.criterion,
            same_scores(self.mode),
            self.resolution,
            self.patch_size,
            self.revision,
        )

    def defocus_um(self, score: float, baseline: float) -> float | None:
        """Estimated |Δf| (µm) of a tile scoring ``score`` where in focus it scores ``baseline``.

        ``0.0`` when the score is at or above the baseline; ``None`` when it cannot
        be said (non-positive scores, or a calibration whose slope is not negative).
        """
        if not (math.isfinite(score) and math.isfinite(baseline)):
            return None
        if score <= 0 or baseline <= 0 or not self.slope_per_um < 0:
            return None
        if score >= baseline:
            return 0.0
        return math.log(score / baseline) / self.slope_per_um

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically and durably (a crash leaves the old file or the new)."""
        target = Path(path)
        data = {"version": _VERSION, **asdict(self)}
        data["wd_um"] = list(self.wd_um)
        data["scores"] = list(self.scores)
        atomic_write(target, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a saved calibration; ``ValueError`` saying what is wrong with the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read calibration {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError(f"calibration {path}: not a version-{_VERSION} focuswatch calibration")
        try:
            cal = cls(
                best_focus_um=float(data["best_focus_um"]),
                slope_per_um=float(data["slope_per_um"]),
                intercept=float(data["intercept"]),
                r=float(data["r"]),
                n=int(data["n"]),
                criterion=str(data.get("criterion", "mhfd")),
                mode=str(data.get("mode", "default")),
                resolution=str(data.get("resolution", "patches")),
                patch_size=int(data.get("patch_size", 1024)),
                wd_um=tuple(float(v) for v in data.get("wd_um", ())),
                scores=tuple(float(v) for v in data.get("scores", ())),
                revision=_revision(data.get("revision", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration {path}: missing or bad field ({exc})") from None
        if not all(math.isfinite(v) for v in (cal.best_focus_um, cal.slope_per_um, cal.intercept)):
            raise ValueError(f"calibration {path}: non-finite fit parameters")
        return cal


def _line_fit(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> tuple[float, float, float]:
    """(slope, intercept, residual sum of squares) of the least-squares line."""
    slope, intercept = np.polyfit(x, y, 1)
    rss = float(np.sum((y - (slope * x + intercept)) ** 2))
    return float(slope), float(intercept), rss


def fit_calibration(
    wd_um: Sequence[float],
    scores: Sequence[float],
    *,
    criterion: str = "mhfd",
    mode: str = DEFAULT_MODE,
    resolution: str = "patches",
    patch_size: int = 1024,
    steps: int = 2001,
) -> Calibration:
    """Fit ``log(score)`` against ``|wd − f0|`` and choose ``f0`` by least squares.

    Needs at least 3 tiles with positive scores at at least 3 distinct working
    distances; ``ValueError`` otherwise.
    """
    wd = np.asarray(wd_um, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if wd.shape != s.shape or wd.ndim != 1:
        raise ValueError("wd_um and scores must be 1-D sequences of the same length")
    if not (np.all(np.isfinite(wd)) and np.all(np.isfinite(s))):
        raise ValueError("working distances and scores must be finite")
    keep = s > 0
    usable, distances = int(keep.sum()), len(np.unique(wd[keep]))
    if usable < 3 or distances < 3:
        got = (
            f"only {usable} of {len(s)} tiles scored above 0"
            if usable < 3
            else f"{usable} usable tiles, but at only {distances} different working distances"
        )
        raise ValueError(
            f"need at least 3 tiles with a positive score at 3 different working distances ({got})"
        )
    wd, s = wd[keep], s[keep]
    y = np.log(s)
    candidates = np.linspace(wd.min(), wd.max(), steps)
    best: tuple[float, float, float, float] | None = None
    for f0 in candidates:
        x = np.abs(wd - f0)
        if np.ptp(x) == 0:
            continue
        slope, intercept, rss = _line_fit(x, y)
        if best is None or rss < best[3]:
            best = (float(f0), slope, intercept, rss)
    if best is None:  # every candidate puts all tiles at one distance: cannot happen for 3 wd
        raise ValueError("cannot fit: the working distances do not spread")
    f0, slope, intercept, _ = best
    x = np.abs(wd - f0)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else 0.0
    return Calibration(
        best_focus_um=f0,
        slope_per_um=slope,
        intercept=intercept,
        r=r,
        n=len(s),
        criterion=criterion,
        mode=mode,
        resolution=resolution,
        patch_size=patch_size,
        wd_um=tuple(float(v) for v in wd),
        scores=tuple(float(v) for v in s),
        revision=scorer_revision(criterion, mode),
    )


# --- the plot (Pillow: matplotlib is not a dependency) -------------------------------------


_PLOT_FONTS = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _plot_font() -> tuple[Any, Callable[[str], str]]:
    """A font that has µ and Δ, and the labels as given; else Pillow's, and ASCII labels.

    Pillow's own font has neither glyph and draws boxes in their place.
    """
    from PIL import ImageFont

    for name in _PLOT_FONTS:
        try:
            return ImageFont.truetype(name, 13), lambda t: t
        except OSError:
            continue
    return ImageFont.load_default(), _ascii_label


def _ascii_label(text: str) -> str:
    """``text`` with the plot's Greek and micro signs spelled in ASCII (µm → um, Δf → df)."""
    return text.replace("µ", "u").replace("Δ", "d").replace("σ", "sigma")


def write_plot(cal: Calibration, path: str | Path, *, size: tuple[int, int] = (720, 480)) -> None:
    """Scatter of log(score) against working distance with the fitted V, as a PNG."""
    from PIL import Image, ImageDraw

    font, text = _plot_font()
    W, H = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    wd = np.asarray(cal.wd_um)
    y = np.log(np.asarray(cal.scores))
    fit_x = np.linspace(wd.min(), wd.max(), 200)
    fit_y = cal.intercept + cal.slope_per_um * np.abs(fit_x - cal.best_focus_um)
    x_lo, x_hi = float(wd.min()), float(wd.max())
    y_lo = float(min(y.min(), fit_y.min()))
    y_hi = float(max(y.max(), fit_y.max()))
    if x_hi == x_lo:
        x_hi = x_lo + 1.0
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    pad = 0.05 * (y_hi - y_lo)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def to_px(xv: float, yv: float) -> tuple[float, float]:
        px = left + (xv - x_lo) / (x_hi - x_lo) * (W - left - right)
        py = H - bottom - (yv - y_lo) / (y_hi - y_lo) * (H - top - bottom)
        return px, py

    draw.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(5):
        xv = x_lo + k * (x_hi - x_lo) / 4
        yv = y_lo + k * (y_hi - y_lo) / 4
        px, _ = to_px(xv, y_lo)
        _, py = to_px(x_lo, yv)
        draw.line([px, H - bottom, px, H - bottom + 5], fill="black")
        draw.text((px - 20, H - bottom + 8), f"{xv:.4g}", fill="black", font=font)
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((5, py - 6), f"{yv:.3g}", fill="black", font=font)
    draw.text((W // 2 - 60, H - 18), text("working distance (µm)"), fill="black", font=font)
    draw.text(
        (left, 8),
        text(
            f"log({cal.criterion}) vs |Δf|: slope {cal.slope_per_um:.4g}/µm, r = {cal.r:.3f}, "
            f"best focus {cal.best_focus_um:.4g} µm"
        ),
        fill="black",
        font=font,
    )
    draw.line(
        [to_px(float(a), float(b)) for a, b in zip(fit_x, fit_y, strict=True)], fill="red", width=2
    )
    bx, _ = to_px(cal.best_focus_um, y_lo)
    draw.line([bx, top, bx, H - bottom], fill=(150, 150, 150))
    for a, b in zip(wd, y, strict=True):
        px, py = to_px(float(a), float(b))
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], outline="blue", width=2)
    img.save(path, format="PNG")


# --- focuswatch calibrate -------------------------------------------------------------------


def _files(inputs: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(
                sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in _SUFFIXES)
            )
        else:
            out.append(p)
    return out


def _read_csv(path: Path) -> dict[str, float]:
    """``file,wd_um`` rows (a header row is skipped); keys are the file names as written."""
    table: dict[str, float] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise FocuswatchError(f"{path}:{i}: expected 'file,working_distance_um'")
                try:
                    table[row[0].strip()] = float(row[1])
                except ValueError:
                    if i == 1:
                        continue  # header
                    raise FocuswatchError(
                        f"{path}:{i}: working distance {row[1]!r} is not a number"
                    ) from None
    except OSError as exc:
        raise FocuswatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    return table


def _working_distance(
    path: Path,
    meta: TileMeta | None,
    *,
    table: dict[str, float] | None,
    pattern: re.Pattern[str] | None,
) -> float | None:
    if table is not None:
        for key in (str(path), path.name):
            if key in table:
                return table[key]
        return None
    if pattern is not None:
        m = pattern.search(path.name)
        if m is None:
            return None
        try:
            return float(m.group(1))
        except (IndexError, ValueError):
            return None
    wd = None if meta is None else meta.placement.working_distance_um
    return None if wd is None else float(wd)


def main(
    inputs: list[Path],
    *,
    focus_csv: Path | None = None,
    pattern: str | None = None,
    out: Path = Path("calibration.json"),
    plot: Path | None = None,
    cfg: Config | None = None,
) -> int:
    """``focuswatch calibrate``: score the series, fit, save, report.

    Returns 0 when a calibration was saved (tiles that could not be used are
    reported on stderr); raises ``FocuswatchError`` (exit 1) when none could be fitted.
    """
    from focuswatch.scoring import ScoreSettings, score_path

    settings = ScoreSettings.from_config((cfg or Config()).scoring)
    regex = None
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise FocuswatchError(f"--pattern {pattern!r} is not a valid regex: {exc}") from None
        if regex.groups < 1:
            raise FocuswatchError(f"--pattern {pattern!r} needs a group giving the distance")
    table = _read_csv(focus_csv) if focus_csv is not None else None
    files = _files(inputs)
    if not files:
        raise FocuswatchError("no tiles found in " + ", ".join(str(p) for p in inputs))
    wds: list[float] = []
    scores: list[float] = []
    # What the scores were made at, not what was asked: the memory guard scores a
    # large tile by patches whatever ``scoring.resolution`` says.
    made_at: set[str] = set()
    skipped = 0
    for f in files:
        try:
            ts = score_path(f, settings)
        except TileError as exc:
            print(f"{f}: skipped: {exc.reason}", file=sys.stderr)
            skipped += 1
            continue
        wd = _working_distance(f, ts.meta, table=table, pattern=regex)
        if wd is None:
            how = "--focus-csv" if table is not None else "--pattern" if regex else "metadata"
            print(f"{f}: skipped: no working distance (from {how})", file=sys.stderr)
            skipped += 1
            continue
        wds.append(wd)
        scores.append(ts.score)
        made_at.add(ts.resolution)
        print(f"{f}: working distance {wd:.6g} µm, score {ts.score:.6g}")
    if made_at - {settings.resolution}:
        # The service checks a calibration against its configured resolution, so one
        # recorded as that resolution must have been scored at it.
        raise FocuswatchError(
            f"cannot calibrate: scoring.resolution is {settings.resolution!r}, but tiles "
            f"were scored at {sorted(made_at)} (the memory guard scores a tile over "
            "scoring.memory_limit_mb by patches): set scoring.resolution to 'patches' "
            "(the same numbers for those tiles), or raise scoring.memory_limit_mb"
        )
    try:
        cal = fit_calibration(
            wds,
            scores,
            criterion=settings.criterion,
            mode=settings.mode,
            resolution=settings.resolution,
            patch_size=settings.patch_size,
        )
    except ValueError as exc:
        raise FocuswatchError(f"cannot calibrate: {exc}") from None
    cal.save(out)
    print(
        f"best focus {cal.best_focus_um:.6g} µm; log(score) vs |Δf|: slope "
        f"{cal.slope_per_um:.4g} per µm, r = {cal.r:.4f} (n = {cal.n}); saved {out}"
    )
    if cal.slope_per_um >= 0:
        print("warning: the score does not fall with defocus in this series", file=sys.stderr)
    if plot is not None:
        write_plot(cal, plot)
        print(f"plot written to {plot}")
    if skipped:
        print(f"warning: {skipped} of {len(files)} tiles were not used", file=sys.stderr)
    return 0
