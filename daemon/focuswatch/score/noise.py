"""The noise an SEM tile carries, measured on the tile itself, for MHFD's noise floor.

``noise_sigma`` is the level (Immerkær's operator with a median absolute deviation);
``noise_profile`` the white-noise estimates on 1×, 2×, 4×, 8× binned copies;
``noise_model`` the level with the autocorrelation at lags 1-3 along and across the
scan line and a tail factor for noise whose variance changes from pixel to pixel;
``level_noise`` and ``spectral_level_noise`` turn those into each DoG level's noise
standard deviation (white-noise gains, and a level's transfer function's power under
the separable noise spectrum). ``focuswatch.score.mhfd`` sets its per-level
thresholds from them. Pure functions of the array, with the backend passed in.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from focuswatch.backend import Backend

__all__ = [
    "NOISE_FACTORS",
    "NOISE_LAGS",
    "NOISE_MODEL_LENGTH",
    "PAIRED",
    "TAILS",
    "band_noise",
    "freqs",
    "gauss_1d",
    "level_noise",
    "model_spectrum",
    "noise_model",
    "noise_profile",
    "noise_sigma",
    "spectral_level_noise",
    "tile_noise_models",
]

#: Binnings at which the noise level is estimated (see ``noise_profile``).
NOISE_FACTORS = (1, 2, 4, 8)
#: Lags (pixels) at which the noise's autocorrelation is measured along each axis
#: (``noise_model``); longer-range correlation is what the binned estimates catch.
NOISE_LAGS = 3
#: Entries of a full ``noise_model`` (profile, correlations along x and y, tail factor,
#: whether the correlation was read on paired lines); a shorter tuple is a white-noise
#: profile alone.
NOISE_MODEL_LENGTH = len(NOISE_FACTORS) + 2 * NOISE_LAGS + 2
#: Where a full model keeps its tail factor and its paired-lines flag (1 or 0).
TAILS = len(NOISE_FACTORS) + 2 * NOISE_LAGS
PAIRED = TAILS + 1
#: Measured correlations are held to this range: detector bandwidth and resampling
#: give lag-1 correlations up to ~0.6-0.7; beyond that what is measured is smooth
#: structure, and believing it would divide the noise estimate by almost nothing.
_RHO_RANGE = (-0.5, 0.75)
#: The tail factor (``_immerkaer``) is held below this.
_MAX_TAILS = 1.6
#: Blocks (differenced lines × pixels along them) in which the correlation is measured.
_CORR_BLOCK = (8, 64)
#: The correlations are measured on about ``_CORR_LINES`` lines, and on at least
#: ``_CORR_SAMPLES`` pixels where the image is smaller than 1024² (512²: every 4th line,
#: 256²: every other one; at least every other: the blocks are ranked on the lines in
#: between). Where the noise floor binds, a level's threshold moves ~2.5× as much as
#: ρ₁'s error through the level-noise division (2-D correlated noise: σ's estimate
#: divides by ~1.6, not 6), and a count ~2.5× as much as its threshold: on every 8th
#: line of a 512² tile (a ρ₁ standard error of 0.01) counts differed by ±9 % and fine
#: fractions by ±11 % between noise draws of one crop; on every other line, ±3 % and
#: ±1.4 %. Larger images keep 64 lines (1024²: every 16th, as many pixels; 8192²:
#: every 128th): a tile's score is the median of its patches, whose errors average.
_CORR_STEP = 2
_CORR_LINES = 64
_CORR_SAMPLES = 1 << 16
#: A pairing of neighbouring lines (``_paired_lines``) replaces the fourth difference
#: when its lag-1 correlation is lower by more than this (a sample correlation's error
#: on a patch's quiet blocks is ~0.01-0.02; texture repeated in pairs adds 0.1-0.5)...
_PAIR_MARGIN = 0.05
#: ...and by more than this many standard errors of a sample correlation (a patch
#: mostly beyond the section has few quiet blocks: 3 blocks, ρ₁ 0.39 against 0.45).
_PAIR_ERRORS = 4.0
#: ...and its differences keep at least this share of the fourth difference's energy
#: (white noise: 2/70 of it; lines repeated with their noise leave nothing).
_PAIR_MIN_ENERGY = 0.002
#: ...and (``noise_model``) its differences hold at least this share of the noise its
#: reading implies (``_pair_shares``: ~1 where the texture repeats under the noise).
_PAIR_NOISE_SHARE = 0.6
#: ...and the share of a block's pixels that may be clipped by the stretch.
_CLIPPED_SHARE = 0.1
#: ``[1, −2, 1]`` passes at least this much power of unit noise in the model (six for
#: white noise; strongly low-passed noise hides from it, and the estimate of σ
#: would be a division by almost nothing).
_MIN_DIFF_POWER = 0.25
#: ``tile_noise_models`` pools a patch with the patches whose own noise level is within
#: this factor of its own (ISBI tiles under 2-D correlated noise: 98 % of the patches
#: within 0.92-1.14 of their tile's median; a patch of half resin or a saturated region
#: differs by more, and pooling with it moved the tissue's counts by 15-40 %).
_POOL_RANGE = 1.15


def freqs(n: int, *, real: bool) -> np.ndarray[Any, Any]:
    """Angular frequencies (radians per pixel) of an FFT axis of ``n`` points."""
    f = np.fft.rfftfreq(n) if real else np.fft.fftfreq(n)
    return 2.0 * np.pi * f


def gauss_1d(n: int, sigma: float, *, real: bool) -> np.ndarray[Any, Any]:
    w = freqs(n, real=real)
    return np.exp(-0.5 * (sigma * w) ** 2)


def _block_sums(a: Any, rows: int, cols: int) -> Any:
    """Sums of ``a`` over blocks of ``rows × cols`` (a ragged last row/column of blocks
    is dropped)."""
    nb, mb = a.shape[0] // rows, a.shape[1] // cols
    return a[: nb * rows, : mb * cols].reshape(nb, rows, mb, cols).sum(axis=(1, 3))


def noise_sigma(u: Any, backend: Backend, *, subsample: bool | int = True) -> float:
    """Robust standard deviation of white noise in ``u`` (stretched to [0, 1]; Immerkær's
    operator, MAD over pixels strictly inside (0, 1)).

    The separable kernel ``[1,-2,1]ᵀ[1,-2,1]`` cancels planes and most smooth
    structure; its norm is 6, and the median absolute response over 0.6745 is the
    noise standard deviation for Gaussian noise, insensitive to the edges that
    remain. ``subsample``: evaluated at every other pixel each way only (plenty of
    samples, a quarter of the work); an integer is the step itself (fast mode: 4).
    """
    return _immerkaer(u, backend, subsample=subsample, tails=False)[0]


def _immerkaer(
    u: Any,
    backend: Backend,
    *,
    subsample: bool | int = True,
    tails: bool = True,
    unmeasured: float = 1.0,
) -> tuple[float, float]:
    """``noise_sigma`` and the tail factor: the 25th percentile over blocks of ~32×64
    pixels of the response's rms, over the MAD estimate (at least 1, at most
    ``_MAX_TAILS``; 1 without ``tails``; ``unmeasured`` with too few unclipped blocks).

    For Gaussian noise of one variance the two agree (the factor is ~0.95-1 and
    held at 1). Where the noise's variance changes from pixel to pixel, as in a
    resampled image (a pixel on the input grid keeps its noise, one between two
    averages it away; bilinear ×1.3: a factor ~1.35), the median sees the quiet
    pixels while a DoG level, a weighted sum of many pixels, sees the mean
    variance. A low percentile of block rms values leaves out the blocks with
    edges in them, as the median leaves out single edge pixels.
    """
    xp = backend.xp
    want = int(subsample) if not isinstance(subsample, bool) else (2 if subsample else 1)
    if want < 1:
        raise ValueError(f"subsample step must be >= 1, got {want}")
    step = want if min(u.shape) >= 16 * want else 1
    d = _second_difference(u, step, xp, axis=1)
    e = _second_difference(d, step, xp, axis=0)
    # Pixels clipped by the stretch (a black margin, saturated areas) carry no noise;
    # counting their zero responses would halve the estimate where half the tile is flat.
    centre = u[1:-1:step, 1:-1:step][: e.shape[0], : e.shape[1]]
    outside = centre <= 0
    outside |= centre >= 1
    n_inside = int(outside.size - xp.count_nonzero(outside))
    if n_inside < 16:
        return 0.0, 1.0
    # The median over the pixels inside: the others are set above every response
    # (no gather of the inside ones; the same order statistic).
    a = xp.abs(e)
    xp.copyto(a, xp.inf, where=outside)
    k = n_inside // 2
    mad = float(xp.partition(a.ravel(), k)[k])
    sigma = mad / (0.6744897501960817 * 6.0)
    if not tails or mad <= 0:
        return sigma, 1.0
    br, bc = max(1, 32 // step), max(1, 64 // step)
    w = (~outside).astype(e.dtype)
    n = _block_sums(w, br, bc)
    if n.size == 0:
        return sigma, unmeasured
    xp.multiply(e, e, out=e)  # e·e·w, in place (e is not needed after)
    e *= w
    energy = _block_sums(e, br, bc)
    full = n >= (1 - _CLIPPED_SHARE) * (br * bc)
    if int(xp.count_nonzero(full)) < 8:
        return sigma, unmeasured
    ms = xp.sort(energy[full] / n[full])
    q = float(ms[(ms.size - 1) // 4])
    ratio = math.sqrt(max(q, 0.0)) / (mad / 0.6744897501960817)
    return sigma, min(max(ratio, 1.0), _MAX_TAILS)


def _second_difference(u: Any, step: int, xp: Any, *, axis: int) -> Any:
    """``[1, −2, 1]`` along ``axis`` at every ``step``-th position, ``u[i] − 2·u[i+1] +
    u[i+2]`` for i = 0, step, …: the three-term expression's arithmetic, in one new
    array instead of three temporaries (at a step of 2 the strided reads and the
    temporaries' first touch were most of Immerkær's time)."""

    def at(j: int) -> Any:
        end = u.shape[axis] - 2 + j
        return u[:, j:end:step] if axis == 1 else u[j:end:step]

    out = xp.multiply(at(1), 2)
    xp.subtract(at(0), out, out=out)
    out += at(2)
    return out


def _bin2(u: Any) -> Any:
    """Mean of 2×2 blocks (odd last row/column dropped); four strided adds, no reshape."""
    H, W = u.shape
    u = u[: H // 2 * 2, : W // 2 * 2]
    out = u[0::2, 0::2] + u[1::2, 0::2]
    out += u[0::2, 1::2]
    out += u[1::2, 1::2]
    out *= 0.25
    return out


def noise_profile(u: Any, backend: Backend, *, step: int = 2) -> tuple[float, ...]:
    """White-equivalent noise level seen at binnings 1, 2, 4, 8 (``NOISE_FACTORS``).

    For white noise every entry is the same σ_n (binning by f divides it by f; we
    multiply back). Noise correlated between neighbouring pixels (detector
    bandwidth along the scan line, demosaicing) hides from the finest operator
    but not from the binned ones, and coarse DoG levels see exactly that
    low-frequency noise. Structure inflates the coarse entries a little; where it
    does, the contrast floor is higher anyway (see ``_level_thresholds``). ``step``:
    the sampling step at binnings 1 and 2 (``noise_sigma``'s ``subsample``).
    """
    return _profile(u, backend, step=step, first_step=step, tails=False)[0]


def _profile(
    u: Any,
    backend: Backend,
    *,
    step: int,
    first_step: int,
    tails: bool = True,
    unmeasured: float = 1.0,
) -> tuple[tuple[float, ...], float]:
    """``noise_profile`` (``first_step`` at binning 1, ``step`` at 2) and the tail
    factor at binning 1 (``_immerkaer``)."""
    out: list[float] = []
    factor = 1.0
    v = u
    for f in NOISE_FACTORS:
        if f > 1:
            v = _bin2(v)
        if min(v.shape) < 8:
            out.append(out[-1] if out else 0.0)
            continue
        sub = first_step if f == 1 else step if f == 2 else 1
        sigma, t = _immerkaer(
            v, backend, subsample=sub, tails=tails and f == 1, unmeasured=unmeasured
        )
        out.append(f * sigma)
        factor = t if f == 1 else factor
    return tuple(out), factor


def level_noise(sigmas: tuple[float, ...], profile: tuple[float, ...]) -> np.ndarray[Any, Any]:
    """Noise level for each DoG level: the largest estimate at binnings f ≤ σ_i."""
    out = np.empty(len(sigmas) - 1)
    for i in range(len(sigmas) - 1):
        usable = [
            n for f, n in zip(NOISE_FACTORS, profile, strict=True) if f <= max(1.0, sigmas[i])
        ]
        out[i] = max(usable)
    return out


def _robust_scale(a: Any, backend: Backend) -> float:
    """Median of ``|a|`` (∝ the standard deviation of zero-mean Gaussian ``a``)."""
    a = backend.xp.abs(a)
    k = a.size // 2
    return float(backend.xp.partition(a.ravel(), k)[k])


class _Reading(NamedTuple):
    """One axis's noise correlations (``_axis_correlation``): ``fourth`` after the
    fourth difference across the lines; ``pairs`` on paired lines where those read
    clearly less (None elsewhere), with ``pair_energy`` their differences' mean square
    (what ``noise_model`` checks against the noise that reading implies)."""

    fourth: tuple[float, ...]
    pairs: tuple[float, ...] | None = None
    pair_energy: float = 0.0
    #: Every pairing read clearly more correlated than the fourth difference.
    against: bool = False


def _axis_correlation(
    u: Any, backend: Backend, *, axis: int, step: int, unmeasured: float = 0.0
) -> _Reading:
    """Autocorrelation of the noise in ``u`` along ``axis`` at lags 1 … ``NOISE_LAGS``,
    and where paired lines read clearly less, that reading too (see below and
    ``_Reading``).

    The image is first differenced four times across ``axis`` (lines ``step`` apart
    are used): that cancels the structure that is smooth across and leaves the noise's
    correlation along ``axis`` as it was, for a separable noise spectrum (a raster
    scan's: lines independent, correlated along them; a resampled image's). What
    structure survives the differencing (edges, fine texture) is correlated too, so
    the correlation is pooled over the quietest quarter of blocks of ~32×64 pixels
    only (least differenced energy: where the noise dominates; on a noisy tile
    the energy of a noise-only block hardly varies, while structure's does), and
    blocks with more than a few pixels clipped by the stretch are left out (a
    saturated margin carries no noise; at a few electrons per pixel the darkest
    count level is clipped all over the tile). Where nearly every block has more
    (bright resin saturated in 15 % of its pixels everywhere), the less clipped half
    of them is used: with none left the tile read as white noise, and its 2-D
    correlated noise counted as thousands of features. Blocks more than half clipped
    never count in that half (a black margin over most of an edge tile: its flat
    blocks are the quietest, and were read as white noise). (Leaving out clipped pixels
    one by one instead truncates the noise: ρ₁ 0.31 for 0.44 at 8 e/px.) Where the
    difference of neighbouring lines taken in pairs (``_paired_lines``) reads a lag-1
    correlation clearly below the fourth difference's, the pairs are measured instead:
    texture repeated in 2×2 pixels survives any smooth difference and reads as
    correlated noise (ρ₁ 0.15-0.45 too high), while the noise's own correlation along
    the lines is the same however they are differenced.
    """
    xp = backend.xp
    br, bc = _CORR_BLOCK
    none = _Reading((unmeasured,) * NOISE_LAGS)
    across = 0 if axis == 1 else 1
    half = step // 2
    if u.shape[across] < 4 + half + step * br or u.shape[1 - across] < bc + NOISE_LAGS:
        return none
    m = u.shape[across] - 4 - half

    def diff4(i: int) -> Any:
        """The fourth difference [1, -4, 6, -4, 1] across, on the lines from ``i`` on
        (every ``step``-th): cancels structure up to cubic across the lines, where a
        second difference lets through twice as much of a sharp image's texture."""

        def line(j: int) -> Any:
            return u[j : j + m : step] if across == 0 else u[:, j : j + m : step]

        d = line(i) + line(i + 4) - 4 * (line(i + 1) + line(i + 3)) + 6 * line(i + 2)
        # One transposed copy (an eighth of the image) for the y axis: the lag
        # products below then run along contiguous rows.
        return d if across == 0 else xp.ascontiguousarray(d.T)

    e = diff4(0)
    # The blocks are ranked on the lines half a step further on: the same structure,
    # independent noise (ranked on the measured lines themselves, the quiet blocks
    # would be those whose noise happens to be least correlated: ρ 0.47 for 0.5).
    probe = diff4(half)
    centre = u[2 : 2 + m : step] if across == 0 else xp.ascontiguousarray(u[:, 2 : 2 + m : step].T)
    n = e.shape[1] - NOISE_LAGS
    base = e[:, :n]
    clipped = _block_sums(((centre[:, :n] <= 0) | (centre[:, :n] >= 1)).astype(e.dtype), br, bc)
    rank = _block_sums(probe[:, :n] * probe[:, :n], br, bc)
    energy = _block_sums(base * base, br, bc)
    # Nearly every block clipped in more than a few pixels: the less clipped half of
    # those that are not mostly clipped (a margin beyond the section, flat at 0, would
    # otherwise be that half on an edge tile, and its quietest blocks carry no noise).
    limit = _CLIPPED_SHARE * (br * bc)
    partial = clipped[clipped <= 0.5 * (br * bc)]
    if partial.size:
        limit = max(limit, float(xp.median(partial)))
    ok = clipped <= limit
    n_ok = int(xp.count_nonzero(ok))
    if n_ok < 4:
        return none
    # The quietest quarter of the unclipped blocks.
    ranked = xp.sort(rank[ok])
    quiet = ok & (rank <= ranked[max(n_ok // 4 - 1, 0)])
    e0 = float(xp.sum(energy[quiet]))
    if e0 <= 0:
        return none
    # Texture whose pixels repeat in pairs across the lines (an image upsampled ×2 by
    # repeating pixels) survives any smooth differencing and reads as correlated
    # noise; the difference of the two lines of a pair cancels it. For noise with a
    # separable spectrum the correlation along the lines is the same whichever way
    # they are differenced, so a pairing that reads clearly less correlated is the one
    # with less texture in it.
    paired = _paired_lines(u, backend, axis=axis, step=step, rows=e.shape[0], n=n)
    se2 = 1.0 / max(int(xp.count_nonzero(quiet)) * br * bc, 1)

    def lag(e: Any, e0: float, k: int) -> float:
        """The sample correlation of ``e`` (rows along the axis) at lag ``k``."""
        return float(xp.sum(_block_sums(e[:, :n] * e[:, k : k + n], br, bc)[quiet])) / e0

    def correlations(first: float, e: Any, e0: float) -> tuple[float, ...]:
        # A sample correlation of N independent pairs has a standard error of
        # ~1/sqrt(N): estimates are shrunk by that (ρ·(1 − se²/ρ²), 0 within one se),
        # so that a small patch's chance correlation of white noise does not move its
        # floor. ``first``: the lag-1 correlation, already read.
        out = []
        for r in (first, *(lag(e, e0, k) for k in range(2, NOISE_LAGS + 1))):
            rho = math.copysign(max(r * r - se2, 0.0), r) / abs(r) if r else 0.0
            out.append(min(max(rho, _RHO_RANGE[0]), _RHO_RANGE[1]))
        return tuple(out)

    best = None
    r0 = lag(e, e0, 1)
    # Clearly less: beyond the chance difference of two estimates on few quiet blocks.
    margin = max(_PAIR_MARGIN, _PAIR_ERRORS * math.sqrt(se2))
    # Clearly more on every pairing: texture not repeated in pairs (a first difference
    # leaves more of it than a fourth); resin, all noise, reads the same either way.
    against = bool(paired)
    for d in paired:
        energy_d = _block_sums(d[:, :n] * d[:, :n], br, bc)
        e_d = float(xp.sum(energy_d[quiet]))
        # Lines identical in noise too (pixels repeated after the noise): nothing left.
        if e_d <= _PAIR_MIN_ENERGY * e0:
            continue
        r1 = lag(d, e_d, 1)
        against &= r1 > r0 + margin
        if r1 < r0 - margin and (best is None or r1 < best[0]):
            best = (r1, d, e_d)

    fourth = correlations(r0, e, e0)
    if best is None:
        return _Reading(fourth, against=against)
    r1, d, e_d = best
    return _Reading(fourth, correlations(r1, d, e_d), e_d * se2)


def _paired_lines(
    u: Any, backend: Backend, *, axis: int, step: int, rows: int, n: int
) -> list[Any]:
    """For each of the two ways of pairing neighbouring lines (lines 2j and 2j + 1, or
    2j + 1 and 2j + 2), the difference of the pair next to each line the fourth
    difference is centred on (``_axis_correlation``'s lines: 2, 2 + step, ...), laid out
    as that function's ``e`` (one row per line, along ``axis``)."""
    xp = backend.xp
    across = 0 if axis == 1 else 1
    centres = 2 + step * np.arange(rows)
    out = []
    for phase in (0, 1):
        first = centres + (centres + phase) % 2
        first = first[first + 1 < u.shape[across]]
        if first.size != rows:
            continue
        # An even step keeps every pair on one phase: a strided slice, not a gather
        # (the gather was most of the pairs' cost).
        at = slice(int(first[0]), int(first[-1]) + 1, step) if step % 2 == 0 else xp.asarray(first)
        nxt = slice(at.start + 1, at.stop + 1, step) if isinstance(at, slice) else at + 1
        d = u[nxt] - u[at] if across == 0 else xp.ascontiguousarray((u[:, nxt] - u[:, at]).T)
        out.append(d[:, : n + NOISE_LAGS])
    return out


def _lines_step(shape: tuple[int, ...], lines: int) -> int:
    """Every how many of ``lines`` lines the correlation is measured: ~``_CORR_LINES``
    of them or ``_CORR_SAMPLES`` pixels, whichever is more (per axis: the long axis of
    a 1024×8192 strip keeps 64 of its 8192 lines, not 512)."""
    return max(_CORR_STEP, min(shape[0] * shape[1] // _CORR_SAMPLES, lines // _CORR_LINES))


def noise_model(
    u: Any, backend: Backend, *, step: int = 2, mark_unmeasured: bool = False
) -> tuple[float, ...]:
    """Everything the default mode's noise floor needs from ``u`` (stretched to [0, 1]),
    as one flat tuple (so estimates of several blocks can be combined entry by entry):
    ``noise_profile``'s four entries, then the noise autocorrelation along x (the
    fast-scan axis, rows) at lags 1 … ``NOISE_LAGS``, then along y, then the
    factor by which Immerkær's median-based level understates the noise's rms
    (``_immerkaer``), then 1 if either axis's correlation was read on paired lines
    (texture repeated in 2×2 pixels: ``_axis_correlation``, where the pairs'
    differences hold the noise that reading implies: ``_pair_shares``), else 0 (NaN
    with ``mark_unmeasured`` where nothing speaks against pairs either: resin, whose
    noise reads alike on pairs and on the fourth difference).

    ``step``: the sampling step at binning 2 (binning 1: every other pixel); the
    correlations use ~``_CORR_LINES`` lines or ``_CORR_SAMPLES`` pixels (see there).
    Where an axis's correlations or the tail factor cannot be measured (too few
    unclipped blocks: a patch mostly beyond the section) they read as white noise of
    one variance (0, 1), or NaN with ``mark_unmeasured`` (``tile_noise_models`` tells
    them from white noise measured).
    """
    no_tails, no_rho = (math.nan, math.nan) if mark_unmeasured else (1.0, 0.0)
    # Binning 1 always at every other pixel: sparser, Immerkær's median and the tail
    # factor would see a resampled image's variance pattern aliased.
    profile, tails = _profile(u, backend, step=step, first_step=2, unmeasured=no_tails)
    readings = [
        _axis_correlation(
            u, backend, axis=a, step=_lines_step(u.shape, u.shape[1 - a]), unmeasured=no_rho
        )
        for a in (1, 0)
    ]
    # A paired reading stands where its differences hold the noise it implies (not
    # only a weaker noise added after pixels repeated with theirs: ``_pair_shares``).
    pairs = [
        r.pairs if share >= _PAIR_NOISE_SHARE else None
        for r, share in zip(readings, _pair_shares(profile[0], tails, readings), strict=True)
    ]
    rx, ry = (p or r.fourth for p, r in zip(pairs, readings, strict=True))
    # Evidence against pairs: texture that pairs do not cancel, or pairs that failed
    # the noise check. Resin (all noise) says nothing either way, and pooled as "not
    # paired" it outvoted the tissue of a half-resin tile of repeated pixels (its
    # tissue patches' ratios 0.37 and 0.50 for 0.59 and 0.64 on the model's floor).
    if any(p is not None for p in pairs):
        paired = 1.0
    elif any(r.against or r.pairs is not None for r in readings) or not mark_unmeasured:
        paired = 0.0
    else:
        paired = math.nan
    return (*profile, *rx, *ry, tails, paired)


def _pair_shares(level: float, tails: float, readings: list[_Reading]) -> list[float]:
    """For each axis read on paired lines (x, y: ``_Reading``), its pair differences'
    mean square over what the noise that reading implies puts there,
    ``2σ²(1 − ρ₁ across)`` (σ² from Immerkær's ``level`` under the paired readings'
    correlations); NaN for an axis without a paired reading.

    Texture repeated in 2×2 pixels under noise: the differences hold all the noise
    and nothing else (~1). Pixels repeated with their noise and a weaker noise added
    after: they hold only the weaker noise, which reads as white, while the repeated
    noise, correlated and most of it, is what Immerkær's level saw."""
    if all(r.pairs is None for r in readings):
        return [math.nan, math.nan]
    rhos = [tuple(0.0 if math.isnan(v) else v for v in r.pairs or r.fourth) for r in readings]
    t = tails if math.isfinite(tails) else 1.0
    var = _variance(level, t, rhos[0], rhos[1])
    return [
        math.nan
        if r.pairs is None
        else r.pair_energy / max(2.0 * var * (1.0 - rhos[1 - a][0]), 1e-30)
        for a, r in enumerate(readings)
    ]


@functools.lru_cache(maxsize=16)
def _lag_cosines(n: int, lags: int) -> tuple[np.ndarray[Any, Any], ...]:
    """``cos(k·ω)`` on the full FFT grid of ``n`` points for k = 1 … ``lags`` (the same
    for every patch of a shape; read-only)."""
    w = freqs(n, real=False)
    out = tuple(np.cos(k * w) for k in range(1, lags + 1))
    for c in out:
        c.setflags(write=False)
    return out


def _lag_spectrum(n: int, rho: tuple[float, ...]) -> np.ndarray[Any, Any]:
    """Noise power along one axis of ``n`` points from its autocorrelation at lags
    1 … L (unit variance; negative values clipped: a spectrum is not negative)."""
    p = np.ones(n)
    for c, r in zip(_lag_cosines(n, len(rho)), rho, strict=True):
        p += 2 * r * c
    out: np.ndarray[Any, Any] = np.clip(p, 0.0, None)
    return out


def _second_difference_power(rho: tuple[float, ...]) -> float:
    """Variance of ``[1, −2, 1]`` applied to unit-variance noise of autocorrelation ``rho``."""
    r1 = rho[0] if rho else 0.0
    r2 = rho[1] if len(rho) > 1 else 0.0
    return max(6.0 - 8.0 * r1 + 2.0 * r2, _MIN_DIFF_POWER)


@functools.lru_cache(maxsize=16)
def _gauss_rows(n: int, sigmas: tuple[float, ...]) -> np.ndarray[Any, Any]:
    """Every Gaussian of ``sigmas`` on the full FFT grid of one axis (one row each)."""
    return np.stack([gauss_1d(n, s, real=False) for s in sigmas])


def band_noise(shape: tuple[int, int], a: float, b: float, model: tuple[float, ...]) -> float:
    """Standard deviation of the band-pass ``G_a − G_b`` (Gaussians of σ ``a`` < ``b``
    px) for the noise ``noise_model`` describes (``spectral_level_noise``'s spectrum):
    what noise alone puts into a coarse band. White noise averages away there; noise
    correlated in 2-D (a resampled image) keeps ~2.5× its power at low frequencies."""
    (power,), sigma2 = _pair_powers(shape, (a, b), model)
    return math.sqrt(max(float(power), 0.0) * sigma2 / (shape[0] * shape[1]))


def _pair_powers(
    shape: tuple[int, int], sigmas: tuple[float, ...], model: tuple[float, ...]
) -> tuple[np.ndarray[Any, Any], float]:
    """``Σ |G_i − G_{i+1}|²·S`` over the FFT grid for each consecutive pair of ``sigmas``
    (unit noise variance, the spectrum's shape from ``model``), and the noise variance."""
    H, W = shape
    L = NOISE_LAGS
    rx, ry = tuple(model[4 : 4 + L]), tuple(model[4 + L : 4 + 2 * L])
    sigma2 = _noise_variance(model)
    gy, gx = _gauss_rows(H, tuple(sigmas)), _gauss_rows(W, tuple(sigmas))
    # Sums Σ_ω G_a(ω)·G_b(ω)·P(ω) on each axis for b = a and b = a + 1 (elementwise:
    # a matrix product would start BLAS threads for a few thousand products).
    py, px = _lag_spectrum(H, ry), _lag_spectrum(W, rx)
    yy, xx = np.sum(gy * gy * py, axis=1), np.sum(gx * gx * px, axis=1)
    yn, xn = np.sum(gy[:-1] * gy[1:] * py, axis=1), np.sum(gx[:-1] * gx[1:] * px, axis=1)
    power: np.ndarray[Any, Any] = yy[:-1] * xx[:-1] - 2 * yn * xn + yy[1:] * xx[1:]
    return power, sigma2


def spectral_level_noise(
    shape: tuple[int, int], sigmas: tuple[float, ...], model: tuple[float, ...]
) -> np.ndarray[Any, Any]:
    """Standard deviation of each DoG level for the noise ``noise_model`` describes.

    The noise spectrum is ``σ²·P_y(ω_y)·P_x(ω_x)`` with ``P`` from the measured
    autocorrelations; ``σ`` comes from Immerkær's estimate (``model[0]``, which
    assumes white noise) divided by the power its operator really passes under
    ``P`` and multiplied by the tail factor (``model[TAILS]``). A level's variance is
    its transfer function's power under that spectrum,
    ``σ_i²·mean |G_i − G_{i+1}|²·S``, from 1-D sums (the Gaussians are separable).
    White noise (all ρ = 0, tail factor 1) gives ``model[0]·dog_gains``.
    """
    power, sigma2 = _pair_powers(shape, sigmas, model)
    out: np.ndarray[Any, Any] = np.asarray(sigmas[:-1]) * np.sqrt(
        np.clip(power, 0.0, None) * sigma2 / (shape[0] * shape[1])
    )
    return out


def model_spectrum(
    shape: tuple[int, int], model: tuple[float, ...]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """The noise power ``noise_model`` predicts at each frequency of an ``rfft2`` of an
    image of ``shape``, as ``scale·P_y[row]·P_x[column]`` (the separable spectrum of
    ``spectral_level_noise``, in the transform's unnormalised units): ``(P_y, P_x,
    scale)``, ``P_y`` on the full grid of the rows, ``P_x`` on the rfft's columns."""
    H, W = shape
    L = NOISE_LAGS
    nf = len(NOISE_FACTORS)
    rx, ry = tuple(model[nf : nf + L]), tuple(model[nf + L : nf + 2 * L])
    return _lag_spectrum(H, ry), _lag_spectrum(W, rx)[: W // 2 + 1], _noise_variance(model) * H * W


def _noise_variance(model: tuple[float, ...]) -> float:
    """The noise's variance: Immerkær's level (``model[0]``, which assumes white noise)
    over the power its operator passes under the model's correlations, times the tail
    factor."""
    nf, L = len(NOISE_FACTORS), NOISE_LAGS
    rx, ry = tuple(model[nf : nf + L]), tuple(model[nf + L : nf + 2 * L])
    return _variance(model[0], model[TAILS], rx, ry)


def _variance(level: float, tails: float, rx: tuple[float, ...], ry: tuple[float, ...]) -> float:
    """``_noise_variance`` of a level, tail factor and correlations along x and y."""
    return float(
        (level * 6.0 * tails) ** 2 / (_second_difference_power(rx) * _second_difference_power(ry))
    )


def tile_noise_models(
    models: list[tuple[float, ...] | None], widths: list[float]
) -> list[tuple[float, ...] | None]:
    """Each patch's noise model pooled over the tile's patches like it: one noise floor
    for the tissue of a tile.

    ``models``: each patch's own ``noise_model`` (stretched units, NaN where not
    measured: ``mark_unmeasured``; None for a blank patch), ``widths`` its stretch's
    range in the tile's raw units. A patch's own level
    follows its brightness (shot noise) and its tissue's texture, and where the floor
    binds (2-D correlated noise at 30 e/px) the fine levels' counts follow the level:
    the fine fractions of one sharp tile's 256 px patches lay 9 % apart on average, up
    to 38 % (read as a wrinkle). One tile is one dose, one detector and one correlation:
    a patch's levels are the median, in raw units, over the patches whose own level is
    within ``_POOL_RANGE`` of its own (itself included), its correlations and tail
    factor their median. Patches of another kind (resin, a saturated region: a level
    far from the tissue's) pool among themselves and do not move the tissue's floor.
    An axis's correlations and the tail factor are the median over the patches that
    measured them (white noise where none did: 0, 1): a patch mostly beyond the section
    measures neither, and pooled as white noise its zeros halved the tissue's ρ₁ under
    2-D correlated noise (an edge tile's tissue counted 2.8-3× as much), its 1 took a
    resampled image's tail factor from 1.35 to 1.17 (8-27 % more counts).
    """
    nf = len(NOISE_FACTORS)
    full = [
        (i, m)
        for i, m in enumerate(models)
        if m is not None
        and len(m) == NOISE_MODEL_LENGTH
        and m[0] > 0
        and widths[i] > 0
        and all(math.isfinite(v) for v in m[:nf])
    ]
    white = (*(0.0,) * (2 * NOISE_LAGS), 1.0, 0.0)
    # The x lags, the y lags, the tail factor, the paired flag (the majority's): each
    # pooled from the patches that measured it.
    spans = [(nf + a, nf + a + NOISE_LAGS) for a in (0, NOISE_LAGS)]
    spans += [(TAILS, TAILS + 1), (PAIRED, PAIRED + 1)]
    raw = {i: [m[j] * widths[i] if j < nf else m[j] for j in range(len(m))] for i, m in full}
    out = [
        None
        if m is None
        else (*m[:nf], *(w if math.isnan(v) else v for v, w in zip(m[nf:], white, strict=False)))
        for m in models
    ]
    for i, _ in full:
        like = [
            r for r in raw.values() if max(r[0], raw[i][0]) <= _POOL_RANGE * min(r[0], raw[i][0])
        ]
        pooled = [float(np.median([r[j] for r in like])) / widths[i] for j in range(nf)]
        for lo, hi in spans:
            measured = [r[lo:hi] for r in like if all(math.isfinite(v) for v in r[lo:hi])]
            pooled += (
                [float(v) for v in np.median(measured, axis=0)]
                if measured
                else list(white[lo - nf : hi - nf])
            )
        out[i] = tuple(pooled)
    return out
