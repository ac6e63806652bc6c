"""Measured verdict quality: real files, real scoring, real ledger, the service's judge step.

Two wafers:

``serial`` (the default): real serial sections. The 30 ISBI 2012 slices are 30
consecutive sections of one volume; each slice is upsampled ×2 and cut into
``--rows × --cols`` overlapping tile positions, so a position's tissue changes from
section to section as it really does. ``--upsample cubic`` (the default) is a
band-limited cubic-spline zoom, like a scan whose beam is wider than its pixel;
``kron`` repeats each pixel 2×2, whose block edges no microscope makes: their
texture, differenced across the lines, is correlated along them exactly like
correlated noise, and the spectrum's region beyond 0.4 cycles/px holds a mirror of
the tissue's (a stress case; ``kron`` was this bench's only upsampling until
2026-12-01). At each dose (``--doses``) the wafer gets,
with shot noise: sudden defocus (a fraction of tiles blurred with σ from
``--blur-sigmas``), slow drift (``--drifting`` positions losing +0.2 px σ per
section from a random section on), one section-wide autofocus failure (every tile
of one section blurred, σ 2), wrinkles (one patch of a tile blurred, σ 3), empty
tiles (resin) and one position whose first section is blurred.

``synth``: the synthetic wafer of ``focuswatch.synth`` (content drifting across
sections, empty tiles, blurred tiles).

Every tile is written as an ATLAS TIFF, scored with ``score_path`` and judged with
``focuswatch.judge.judge`` on a real SQLite ledger, as the service does, in two
arrival orders: section by section, and a burst (all tiles at once, in an order
where the early sections arrive last and each section is shuffled). The verdicts
must be identical.

Truth. The sections are not equally sharp to begin with: each slice's own blur b is
measured first (``bench/intrinsic.py``: its radially averaged power spectrum, Hann
window, against the per-bin median spectrum of the slices in the top half by
high-to-mid band ratio; a least-squares fit of ln(P_s/P_ref) = c − 4π²b²f² over
0.05-0.45 cycles/px, b 0 where the fit says sharper; the table is printed first).
ISBI's slices 0-14 read b 0.54-0.63 native px, slices 15-29 0-0.14 (×2 in tile px).
A tile's effective blur is σ_eff = sqrt(σ² + max(0, b_s² − b_best²)) in tile px,
σ the planted blur and b_best the least b of its position's sections so far, this
one included, in section order: the service compares a position with its own
history, and getting sharper is never a loss. *Sharp* is a tile with nothing
planted, or a drift, at σ_eff ≤ 0.5 px (must not be flagged), *blurred* is σ_eff ≥
1.5 px, sudden, drifting or section-wide (must be flagged), *wrinkle* (must be
partly out of focus or out of focus), *empty*; tiles with 0.5 < σ_eff < 1.5 are
counted but not judged against a target. The counts by planted σ alone are printed
beside them, with the tiles the sections' own blur moved. Rates come with 95 %
Wilson intervals. Exit status 0 when the targets hold (--max-false-alerts,
--max-missed, no empty tile alerted, the two orders agree).

Run: ``.venv/bin/python bench/verdicts.py`` (a few minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import intrinsic
import isbi
from focuswatch import policy, synth
from focuswatch.choices import DEFAULT_MODE, MODES
from focuswatch.config import PolicyConfig
from focuswatch.errors import TileError
from focuswatch.judge import judge
from focuswatch.ledger import Ledger, section_index
from focuswatch.scoring import ScoreSettings, TileScore, patch_size_for, score_path
from focuswatch.verdict import Verdict, VerdictKind

KINDS = list(VerdictKind)
TRUTHS = ("sharp", "sharp (drift σ ≤ 0.5)", "blurred", "wrinkle", "empty", "between", "corrupt")
DRIFT_PER_SECTION = 0.2
#: Astigmatic tiles: σ(1 + a) along the angle, σ(1 − a) across (as bench/accuracy.py).
ASTIGMATISM = 0.5
#: The serial wafer's tile px per ISBI px.
UPSAMPLE = 2
#: The truth's limits in tile px: at most this is sharp, at least BLURRED must be flagged.
SHARP, BLURRED = 0.5, 1.5


def classify(how: str, sigma: float, planted: float) -> str:
    """The truth of a tile planted ``how`` with ``planted`` σ whose blur is ``sigma``."""
    if how in ("empty", "corrupt", "wrinkle"):
        return how
    if planted == 0 and sigma <= SHARP:  # nothing planted: only the section's own blur
        return "sharp"
    if sigma <= SHARP and how == "drift":
        return "sharp (drift σ ≤ 0.5)"
    if sigma >= BLURRED:
        return "blurred"
    return "between"


@dataclass(frozen=True)
class Planted:
    """One tile of the bench's wafer and the truth about it."""

    path: Path
    section: str
    row: int
    col: int
    sigma: float
    how: str  # sharp | sudden | drift | section-wide | first-section | wrinkle | empty | corrupt
    dose: float
    #: Astigmatic blur: the direction of the streaks (degrees, synth's convention).
    astig_deg: float | None = None
    #: The section's own blur (``intrinsic.intrinsic_blur``, native px); None where
    #: unmeasured (a wafer kept before it was: filled in from the slices on --rejudge).
    intrinsic_b: float | None = None

    @property
    def truth(self) -> str:
        """The truth by the planted σ alone (as before the sections' own blur was measured)."""
        return classify(self.how, self.sigma, self.sigma)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _positions(size: int, rows: int, cols: int, tile: int) -> list[tuple[int, int, int, int]]:
    """(row, col, y0, x0) of tile crops spread evenly over a size² image."""

    def starts(n: int) -> list[int]:
        return [0] if n == 1 else [round(i * (size - tile) / (n - 1)) for i in range(n)]

    return [(r, c, y, x) for r, y in enumerate(starts(rows)) for c, x in enumerate(starts(cols))]


#: How the shot noise reaches the file (``synth.degrade`` options): the issue's three kinds.
NOISES: dict[str, dict[str, float]] = {
    "white": {},
    "x": {"noise_pole_x": 0.45},
    "2d": {"noise_sigma_2d": 0.7},
    # Held out: parameters the noise floor's changes were not measured on.
    "x-0.6": {"noise_pole_x": 0.6},
    "x-0.3": {"noise_pole_x": 0.3},
    "2d-0.5": {"noise_sigma_2d": 0.5},
    "x-scan": {"scan_pole": 0.45},  # the detector's low-pass on signal and noise
}


def _upsample(s: np.ndarray, how: str) -> np.ndarray:
    """One ISBI slice at twice its size: ``kron`` repeats each pixel (2-px blocks, whose
    edges put power up to the Nyquist frequency, as native sampling of fine tissue
    does); ``cubic`` is a band-limited cubic-spline zoom (an oversampled scan: the beam
    wider than a pixel, nothing beyond a quarter of the sampling frequency)."""
    if how == "kron":
        return np.kron(s, np.ones((UPSAMPLE, UPSAMPLE), np.float32))
    return synth.resample(s, float(UPSAMPLE), order=3)


def serial_wafer(out: Path, args: argparse.Namespace) -> list[Planted]:
    """Write the ISBI serial-section wafer(s), one per dose; see the module docstring."""
    slices = _sections(args)
    own_blur = intrinsic.intrinsic_blur(slices)
    big = [_upsample(s, args.upsample) for s in slices]
    size = big[0].shape[0]
    positions = _positions(size, args.rows, args.cols, args.size)
    n_sec = len(big)
    planted: list[Planted] = []
    for d, dose in enumerate(args.doses):
        rng = np.random.default_rng([args.seed, d])
        grid = [(r, c) for r, c, _, _ in positions]
        order = [grid[int(i)] for i in rng.permutation(len(grid))]
        drifting = order[: args.drifting]
        first_blurred = order[args.drifting] if len(order) > args.drifting else None
        drift_start = {p: int(rng.integers(2, max(3, n_sec - 12))) for p in drifting}
        wide = 0 if args.wide_first else int(rng.integers(n_sec // 2, n_sec))
        plan: dict[tuple[int, int, int], tuple[float, str]] = {}
        for s in range(n_sec):
            for r, c in grid:
                plan[s, r, c] = (0.0, "sharp")
                if (r, c) in drift_start and s > drift_start[r, c]:
                    plan[s, r, c] = (round(DRIFT_PER_SECTION * (s - drift_start[r, c]), 2), "drift")
                elif (r, c) == first_blurred and s == 0:
                    plan[s, r, c] = (3.0, "first-section")
        free = [k for k, (sig, how) in plan.items() if how == "sharp" and k[0] != wide]
        picks = [free[int(i)] for i in rng.permutation(len(free))]
        n_blur = round(args.blur_fraction * len(free))
        sigmas = [float(x) for x in args.blur_sigmas.split(",")]
        for i, k in enumerate(picks[:n_blur]):
            plan[k] = (sigmas[i % len(sigmas)], "sudden")
        # Astigmatism on a share of the sudden blurs, at a random angle each.
        n_astig = round(args.astigmatic * n_blur)
        astig = {k: float(rng.integers(0, 36)) * 5.0 for k in picks[:n_astig]}
        rest = picks[n_blur:]
        for k in rest[: args.wrinkles]:
            plan[k] = (3.0, "wrinkle")
        for k in rest[args.wrinkles : args.wrinkles + args.empty_tiles]:
            plan[k] = (0.0, "empty")
        for r, c in grid:
            if plan[wide, r, c][1] in ("sharp", "drift"):
                plan[wide, r, c] = (max(2.0, plan[wide, r, c][0]), "section-wide")
        for (s, r, c), (sigma, how) in sorted(plan.items()):
            y0, x0 = next((y, x) for rr, cc, y, x in positions if (rr, cc) == (r, c))
            clean = big[s][y0 : y0 + args.size, x0 : x0 + args.size]
            tile_rng = np.random.default_rng([args.seed, d, s, r, c])
            noise = NOISES[args.noise]
            if how == "empty":
                clean = synth.resin(clean.shape, rng=tile_rng)
            if how == "wrinkle":
                h, w = clean.shape
                img = synth.degrade(clean, rng=tile_rng, dose=dose, **noise)
                blur = synth.degrade(clean, rng=tile_rng, defocus_sigma=sigma, dose=dose, **noise)
                img[: h // 2, : w // 2] = blur[: h // 2, : w // 2]
            elif (s, r, c) in astig:
                img = synth.degrade(
                    clean,
                    rng=tile_rng,
                    defocus_sigma=sigma,
                    dose=dose,
                    astigmatism=ASTIGMATISM,
                    astig_angle_deg=astig[s, r, c],
                    **noise,
                )
            else:
                img = synth.degrade(clean, rng=tile_rng, defocus_sigma=sigma, dose=dose, **noise)
            # One wafer per dose: its own sections and rows (no shared context).
            row, section = r + 100 * d, f"{s + 100 * d:03d}"
            path = out / f"S_{section}" / f"Tile_r{row}-c{c}_S_{section}.tif"
            synth.write_tile(
                path,
                synth.to_uint(img, 8),
                row=row,
                col=c,
                stage_x_um=100.0 * c,
                stage_y_um=100.0 * row,
            )
            planted.append(
                Planted(
                    path,
                    section,
                    row,
                    c,
                    sigma,
                    how,
                    dose,
                    astig.get((s, r, c)),
                    float(own_blur[s]),
                )
            )
    return planted


def _sections(args: argparse.Namespace) -> list[np.ndarray]:
    """The ISBI slices in the wafer's section order."""
    slices = isbi.load(args.isbi)[: args.sections]
    if args.reverse:  # ISBI's fine detail rises ×3 at slice 15: reversed, it drops there
        slices = slices[::-1]
    return slices


def _section_of(t: Planted) -> int:
    """The tile's section within its dose's wafer (each dose's sections are offset by 100)."""
    return (section_index(t.section) or 0) % 100


def with_intrinsic(tiles: list[Planted], args: argparse.Namespace) -> list[Planted]:
    """Tiles of a serial wafer kept before the sections' own blur was stored: measured now."""
    if args.wafer != "serial" or all(t.intrinsic_b is not None for t in tiles):
        return tiles
    blur = intrinsic.intrinsic_blur(_sections(args))
    print("(the sections' own blur measured now from the slices: the kept wafer predates it)")
    return [replace(t, intrinsic_b=float(blur[_section_of(t)])) for t in tiles]


def effective(tiles: Sequence[Planted]) -> dict[Path, float]:
    """σ_eff of every tile (tile px): its planted σ and its section's blur beyond the
    sharpest section its position has shown so far (``intrinsic.effective_sigmas``).
    Empty and unreadable tiles show no section and are not part of a position's history."""
    seen = [t for t in tiles if t.how not in ("empty", "corrupt")]
    sig = intrinsic.effective_sigmas(
        [((t.row, t.col), _section_of(t), t.sigma, t.intrinsic_b or 0.0) for t in seen],
        UPSAMPLE,
    )
    out = {t.path: t.sigma for t in tiles}
    out.update((t.path, s) for t, s in zip(seen, sig, strict=True))
    return out


def print_intrinsic(tiles: Sequence[Planted], args: argparse.Namespace) -> None:
    """The sections' own blur, once, as the truth uses it."""
    first = {_section_of(t): t.intrinsic_b for t in tiles if t.intrinsic_b is not None}
    if not first:
        return
    n = max(first) + 1
    print(
        f"the sections' own blur (Gaussian σ beyond the sharpest slices', fitted to "
        f"ln(P/P_ref) over {intrinsic.BAND[0]:g}-{intrinsic.BAND[1]:g} cycles/px; "
        f"tile px = {UPSAMPLE} × native px)"
    )
    print("section  slice  b native  b tile px  added in section order (tile px)")
    best = math.inf
    for s in range(n):
        b = first.get(s)
        if b is None:
            continue
        best = min(best, b)
        added = UPSAMPLE * math.sqrt(max(0.0, b * b - best * best))
        slice_no = n - 1 - s if args.reverse else s
        print(f"{s:7d}  {slice_no:5d}  {b:8.3f}  {UPSAMPLE * b:9.3f}  {added:6.3f}")
    print()


def synth_wafer(out: Path, args: argparse.Namespace) -> list[Planted]:
    tiles = synth.write_wafer(
        out,
        sections=args.sections,
        rows=args.rows,
        cols=args.cols,
        size=args.size,
        dose=args.doses[0],
        blur_fraction=args.blur_fraction,
        blur_sigmas=tuple(float(s) for s in args.blur_sigmas.split(",")),
        empty_tiles=args.empty_tiles,
        drift=0.03,
        seed=args.seed,
    )
    return [
        Planted(
            t.path,
            t.section,
            t.row,
            t.col,
            t.defocus_sigma,
            "corrupt" if t.corrupt else "empty" if t.empty else "sudden",
            args.doses[0],
        )
        for t in tiles
    ]


def arrival_orders(tiles: Sequence[Planted], seed: int) -> dict[str, list[Planted]]:
    """Section by section, and a burst: late sections first, each shuffled."""
    by_section = sorted(tiles, key=lambda t: (section_index(t.section) or 0, t.row, t.col))
    rnd = random.Random(seed)
    sections = sorted({t.section for t in tiles}, key=lambda s: section_index(s) or 0)
    half = len(sections) // 3
    late_first = sections[half:] + sections[:half]  # the first third arrives last
    burst: list[Planted] = []
    for s in late_first:
        part = [t for t in tiles if t.section == s]
        rnd.shuffle(part)
        burst += part
    # ... and interleave pairs, as parallel workers finish out of order.
    for i in range(0, len(burst) - 1, 2):
        if rnd.random() < 0.5:
            burst[i], burst[i + 1] = burst[i + 1], burst[i]
    return {"section by section": by_section, "burst": burst}


def run_order(
    order: Sequence[Planted],
    scores: dict[Path, TileScore | str],
    state: Path,
    pcfg: PolicyConfig,
) -> dict[Path, Verdict]:
    """Feed tiles to a fresh ledger in this order; the final verdict of each."""
    shutil.rmtree(state, ignore_errors=True)
    ledger = Ledger.open(state)
    ids: dict[Path, int] = {}
    for tile in order:
        st = tile.path.stat()
        vid, _ = ledger.add_version(
            str(tile.path),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            tile_name=tile.path.stem,
            section=tile.section,
            row=tile.row,
            col=tile.col,
        )
        ids[tile.path] = vid
        result = scores[tile.path]
        if isinstance(result, str):
            ledger.record_result(vid, verdict=policy.unreadable(result))
        else:
            judge(ledger, ledger.get(vid), result, cfg=pcfg)
    verdicts = {p: ledger.verdict_record(vid).verdict for p, vid in ids.items()}
    ledger.close()
    return verdicts


def _laid_out(args: argparse.Namespace) -> int:
    """The patch size the service gives these tiles (``scoring.patch_size_for``)."""
    settings = ScoreSettings(mode=args.mode, patch_size=args.patch_size)
    return patch_size_for((args.size, args.size), settings).patch_size


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    pct = 100 * k / n if n else 0.0
    return f"{k}/{n} = {pct:.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f} %)"


def report(
    tiles: Sequence[Planted], verdicts: dict[Path, Verdict], args: argparse.Namespace
) -> tuple[list[tuple[str, bool, str]], list[str]]:
    sig = effective(tiles)
    truth = {t.path: classify(t.how, sig[t.path], t.sigma) for t in tiles}
    table: Counter[tuple[str, VerdictKind]] = Counter()
    for t in tiles:
        table[truth[t.path], verdicts[t.path].kind] += 1
    print("truth by effective σ (planted and the section's own blur):")
    truths = [t for t in TRUTHS if any(table[t, k] for k in KINDS)]
    width = max(len("truth \\ verdict"), *(len(t) for t in truths)) + 2
    heads = [str(k) for k in KINDS]
    print("truth \\ verdict".ljust(width) + "  ".join(heads) + "  total")
    for t in truths:
        counts = [table[t, k] for k in KINDS]
        row = "  ".join(str(c).rjust(len(h)) for c, h in zip(counts, heads, strict=True))
        print(t.ljust(width) + row + f"  {sum(counts):5d}")
    print()
    checks: list[tuple[str, bool, str]] = []
    mistakes: list[str] = []
    for dose in sorted({t.dose for t in tiles}):
        mine = [t for t in tiles if t.dose == dose]
        sharp = [t for t in mine if truth[t.path].startswith("sharp")]
        bad = [t for t in mine if truth[t.path] in ("blurred", "wrinkle")]
        fa = [t for t in sharp if verdicts[t.path].kind.needs_retake]
        miss = [t for t in bad if not verdicts[t.path].kind.needs_retake]
        unc = [t for t in sharp if verdicts[t.path].kind is VerdictKind.UNCERTAIN]
        old_sharp = [t for t in mine if t.truth.startswith("sharp")]
        old_bad = [t for t in mine if t.truth in ("blurred", "wrinkle")]
        old_fa = sum(verdicts[t.path].kind.needs_retake for t in old_sharp)
        old_miss = sum(not verdicts[t.path].kind.needs_retake for t in old_bad)
        to_grey = [t for t in old_sharp if truth[t.path] == "between"]
        to_bad = [t for t in mine if t.truth == "between" and truth[t.path] == "blurred"]
        print(f"dose {dose:g} e/px:")
        print(
            f"  sharp tiles: {len(old_sharp)} by planted σ, {len(sharp)} by effective σ "
            f"({len(to_grey)} moved into the grey zone by their section's own blur; "
            f"{sum(verdicts[t.path].kind.needs_retake for t in to_grey)} of them alerted)"
        )
        print(
            f"  blurred/wrinkled tiles: {len(old_bad)} by planted σ, {len(bad)} by effective σ "
            f"({len(to_bad)} moved out of the grey zone)"
        )
        print(f"  false alerts on sharp tiles:  {_rate(len(fa), len(sharp))}")
        print(f"    by planted σ:               {_rate(old_fa, len(old_sharp))}")
        print(f"  missed blurred/wrinkled:      {_rate(len(miss), len(bad))}")
        print(f"    by planted σ:               {_rate(old_miss, len(old_bad))}")
        print(f"  sharp tiles not judged (uncertain): {len(unc)}")
        for how in ("sudden", "drift", "section-wide", "first-section", "wrinkle"):
            group = [t for t in bad if t.how == how]
            if group:
                caught = sum(verdicts[t.path].kind.needs_retake for t in group)
                print(f"    {how:<14} caught {caught}/{len(group)}")
        wide = [t for t in mine if t.how == "section-wide"]
        if wide:
            said = sum(verdicts[t.path].reason.startswith(policy.SECTION_WIDE) for t in wide)
            print(f"    section-wide failure named as such on {said}/{len(wide)} tiles")
        astig = [t for t in bad if t.astig_deg is not None]
        round_bad = [t for t in bad if t.astig_deg is None and t.how != "wrinkle"]
        if astig:
            named = [t for t in astig if _astig_named(verdicts[t.path].reason, t.astig_deg)]
            wrong = sum("astigmatic" in verdicts[t.path].reason for t in round_bad)
            print(
                f"    astigmatic tiles named astigmatic (angle within 15°): "
                f"{_rate(len(named), len(astig))}; round blur named astigmatic: "
                f"{_rate(wrong, len(round_bad))}"
            )
        print("\n".join(naming_table(bad, verdicts)))
        checks.append(
            (
                f"dose {dose:g}: false alerts {len(fa)}/{len(sharp)}",
                len(fa) <= args.max_false_alerts * len(sharp),
                f"≤ {100 * args.max_false_alerts:g} %",
            )
        )
        checks.append(
            (
                f"dose {dose:g}: missed {len(miss)}/{len(bad)}",
                len(miss) <= args.max_missed * len(bad),
                f"≤ {100 * args.max_missed:g} %",
            )
        )
        for t in fa + miss:
            v = verdicts[t.path]
            mistakes.append(
                f"  {t.path.name} ({t.how}, σ {t.sigma:g}, effective {sig[t.path]:.2f}): "
                f"{v.kind}: {v.reason}"
            )
    empty_alerts = sum(verdicts[t.path].kind.needs_retake for t in tiles if t.how == "empty")
    checks.append((f"empty tiles alerted: {empty_alerts}", empty_alerts == 0, "none"))
    return checks, mistakes


def naming_table(bad: Sequence[Planted], verdicts: dict[Path, Verdict]) -> list[str]:
    """How the blurred tiles (by effective σ, wrinkles aside) were named, by planted σ:
    round blurs (sudden, drift, section-wide, first section) named astigmatic, and
    astigmatic blurs named astigmatic at all and with the streaks within 15° of the
    planted angle. A round blur named astigmatic sends the operator to the stigmators
    for a plain defocus."""

    def group(t: Planted) -> str:
        if t.astig_deg is not None:
            return f"astigmatic σ {t.sigma:g}"
        return "round, sudden" if t.how == "sudden" else f"round, {t.how}"

    rows: dict[str, list[Planted]] = {}
    for t in sorted(bad, key=lambda t: (t.astig_deg is not None, t.how != "sudden", t.sigma)):
        if t.how != "wrinkle":
            rows.setdefault(group(t), []).append(t)
    out = ["    naming of the blurred tiles:  tiles  flagged  named astigmatic  at its angle"]
    for name, group_tiles in rows.items():
        flagged = sum(verdicts[t.path].kind.needs_retake for t in group_tiles)
        said = sum("astigmatic" in verdicts[t.path].reason for t in group_tiles)
        at = sum(_astig_named(verdicts[t.path].reason, t.astig_deg) for t in group_tiles)
        angle = f"{at:12d}" if group_tiles[0].astig_deg is not None else f"{'-':>12}"
        out.append(f"      {name:<24}{len(group_tiles):7d}{flagged:9d}{said:18d}{angle}")
    return out


def dump(tiles: Sequence[Planted], results: dict[str, dict[Path, Verdict]], out: Path) -> None:
    """Every tile's verdict (kind and reason) in each arrival order, as JSON: two runs'
    dumps compared tile for tile show what a change moved."""
    rows = {
        str(t.path): {name: [str(v[t.path].kind), v[t.path].reason] for name, v in results.items()}
        for t in tiles
    }
    out.write_text(json.dumps(rows, indent=0, ensure_ascii=False))


def _astig_named(reason: str, angle: float | None) -> bool:
    """The reason says astigmatic, with streaks within 15° of ``angle``."""
    m = re.search(r"streaks along ~(\d+)°", reason)
    if m is None or angle is None:
        return False
    d = abs(float(m.group(1)) - angle) % 180.0
    return min(d, 180.0 - d) <= 15.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--wafer", default="serial", choices=["serial", "synth"])
    p.add_argument("--isbi", default=str(isbi.default_dir()), help="folder of ISBI 2012 slices")
    p.add_argument("--sections", type=int, default=30)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--size", type=int, default=512, help="tile size in px")
    p.add_argument("--doses", default="30,200", help="electrons per pixel, comma-separated")
    p.add_argument(
        "--noise",
        default="white",
        choices=sorted(NOISES),
        help="the shot noise as it reaches the file: white, correlated along the scan line "
        "(AR(1) pole 0.45, a detector slower than the pixel rate) or in 2-D (σ 0.7 px, a "
        "resampled image); held out: x-0.6, x-0.3, 2d-0.5, and x-scan (a detector "
        "low-pass of pole 0.45 on signal and noise, as a real slow detector)",
    )
    p.add_argument("--blur-fraction", type=float, default=0.1)
    p.add_argument("--blur-sigmas", default="1.5,2,3", help="sudden defocus σ in px")
    p.add_argument("--drifting", type=int, default=2, help="positions drifting out of focus")
    p.add_argument("--wrinkles", type=int, default=4)
    p.add_argument("--empty-tiles", type=int, default=4)
    p.add_argument(
        "--astigmatic", type=float, default=0.3, help="share of sudden blurs made astigmatic"
    )
    p.add_argument(
        "--wide-first", action="store_true", help="the section-wide failure in the first section"
    )
    p.add_argument(
        "--reverse", action="store_true", help="the ISBI slices in reverse order as sections"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--upsample",
        default="cubic",
        choices=["cubic", "kron"],
        help="how the ISBI slices are brought to twice their size (serial wafer)",
    )
    p.add_argument("--patch-size", type=int, default=ScoreSettings().patch_size)
    p.add_argument("--mode", default=DEFAULT_MODE, choices=MODES)
    p.add_argument("--backend", default="cpu", choices=["auto", "cpu", "gpu"])
    p.add_argument("--max-false-alerts", type=float, default=0.005)
    p.add_argument("--max-missed", type=float, default=0.0)
    p.add_argument("--keep", type=Path, help="write the wafer and ledgers here and keep them")
    p.add_argument("--dump", type=Path, help="write every tile's verdict and reason here (JSON)")
    p.add_argument(
        "--rejudge",
        action="store_true",
        help="with --keep: judge the tiles scored by an earlier run there again (policy work)",
    )
    args = p.parse_args(argv)
    args.doses = [float(d) for d in args.doses.split(",")]
    if args.rejudge and not args.keep:
        p.error("--rejudge needs --keep DIR from an earlier run")

    pcfg = PolicyConfig()
    settings = ScoreSettings(
        mode=args.mode, resolution="patches", patch_size=args.patch_size, backend=args.backend
    )
    with tempfile.TemporaryDirectory(prefix="focuswatch-verdicts-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        cache = root / "scored.pickle"
        if args.rejudge:
            tiles, scores = pickle.loads(cache.read_bytes())
            t_write = t_score = 0.0
        else:
            build = serial_wafer if args.wafer == "serial" else synth_wafer
            tiles = build(root / "wafer", args)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores: dict[Path, Any] = {}
            for t in tiles:
                try:
                    scores[t.path] = score_path(t.path, settings)
                except TileError as exc:
                    scores[t.path] = exc.reason
            t_score = time.perf_counter() - t0
            if args.keep:
                cache.write_bytes(pickle.dumps((tiles, scores)))
        tiles = with_intrinsic(tiles, args)
        if args.keep:
            sig = effective(tiles)
            truth = {
                str(t.path): [
                    t.how,
                    t.sigma,
                    t.dose,
                    None if t.intrinsic_b is None else round(t.intrinsic_b, 4),
                    round(sig[t.path], 4),
                ]
                for t in tiles
            }
            (root / "truth.json").write_text(json.dumps(truth, indent=0))
        t0 = time.perf_counter()
        results = {
            name: run_order(order, scores, root / f"state-{i}", pcfg)
            for i, (name, order) in enumerate(arrival_orders(tiles, args.seed).items())
        }
        t_judge = time.perf_counter() - t0

    print(
        f"{len(tiles)} tiles ({args.wafer}): {args.sections} sections × {args.rows}×{args.cols}"
        f" positions, {args.size}² px, doses {', '.join(f'{d:g}' for d in args.doses)} e/px, "
        f"noise {args.noise}, slices upsampled ×2 ({args.upsample}), "
        f"sudden blur σ {args.blur_sigmas} ({100 * args.astigmatic:.0f} % astigmatic), "
        f"{args.drifting} drifting positions (+{DRIFT_PER_SECTION} px/section), section-wide "
        f"failure in {'the first section' if args.wide_first else 'a later section'}, "
        f"patches {args.patch_size} px at most ({_laid_out(args)} px on these tiles), "
        f"mode {args.mode}"
        f"{', ISBI slices in reverse order' if args.reverse else ''}"
    )
    print(
        f"written in {t_write:.0f} s, scored in {t_score:.0f} s, judged in two arrival orders "
        f"in {t_judge:.0f} s\n"
    )
    print_intrinsic(tiles, args)
    if args.dump:
        dump(tiles, results, args.dump)
    first, second = results.values()
    checks, mistakes = report(tiles, first, args)
    differ = [t for t in tiles if first[t.path].kind is not second[t.path].kind]
    checks.append(
        (
            f"arrival order (section by section vs burst): {len(differ)} verdicts differ",
            not differ,
            "none",
        )
    )
    print()
    for text, ok, target in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text} (target {target})")
    if mistakes:
        print("\nmistakes (section-by-section order):")
        print("\n".join(mistakes))
    for t in differ[:20]:
        print(f"  order: {t.path.name}: {first[t.path].kind} vs {second[t.path].kind}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
