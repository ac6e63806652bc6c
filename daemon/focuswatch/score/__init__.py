"""Focus scores for SEM tiles: the pure core (arrays in, numbers out; no I/O, no logging).

``score_image`` is the entry point; the array backend (NumPy or CuPy, see
``focuswatch.backend``) is passed in. Criteria: ``mhfd`` (the method) and five
classic baselines (``baselines``). Higher is always sharper.

MHFD (Levental et al., arXiv 2108.12050): stretch, Gaussian scale space, scale-
normalised DoG, maximum over scale, threshold, count 3×3 local maxima. Modes:

``faithful``
    The authors' algorithm and defaults: 0.175 % stretch per side, σ =
    linspace(1, 30 + 29/28, 30), DoG_i = σ_i·(L_i − L_{i+1}), threshold
    1e-4·sqrt(H·W), unit resized to 1024² (bilinear), circular FFT.
``exact`` (``default`` is its old name: the same numbers)
    The same scale space, DoG, maximum over scale and counting rule. What we
    changed, and why:

    * **A noise floor per level, for the noise that is there.** With shot noise the
      fine DoG levels are noise, and the paper's fixed contrast threshold counts
      noise maxima. Worse, the stretch maps a blurred (low-contrast) tile's range
      to [0, 1], amplifying its noise relative to the threshold, so the paper's
      count *rises* with defocus at 10-30 e/px (bench/accuracy.py). Level i's
      threshold is raised to ``k·n_i`` (k = 4: a one-sided tail of ~3e-5 per
      pixel and level), ``n_i`` that level's noise standard deviation, predicted
      from a noise model measured on the image (``noise.noise_model``): Immerkær's
      robust noise level, the noise's autocorrelation at lags 1-3 along x (the
      fast-scan axis) and along y, each measured after differencing across the
      other axis (which removes structure but keeps the noise's correlation along
      the lines; lines taken in pairs where that reads clearly less and their
      differences hold the noise that reading implies: texture repeated in 2×2
      pixels survives a smooth difference) in the quietest blocks
      (on at least 64 lines or 64 k pixels: a small image's every other line),
      and a tail factor for noise whose variance changes from pixel to pixel
      (resampled images). ``n_i`` is the
      level's transfer function's power under that separable spectrum, so noise
      correlated along the scan line (a detector slower than the pixel rate) or
      in 2-D (resampled, interpolated images) is held to its own level, not a
      white-noise one; the white-noise estimates at binnings 2, 4, 8 (``n_i`` at
      least the binned estimate × the white-noise gain) still bound the coarse
      levels. Clean images keep the contrast threshold alone. A tile scored as
      patches has one noise floor (``noise.tile_noise_models``): each patch's level
      is the median in raw units over the patches whose own level is within 15 %
      of its own, its correlations the median of those that measured them; patch
      by patch, the floor followed each patch's brightness and texture, and the fine
      fractions of a sharp tile's patches with it (2-D correlated noise at 30 e/px:
      38 % apart, read as a wrinkle).
    * **A fixed contrast threshold.** The paper's threshold grows with sqrt(H·W)
      (an artefact of its orthonormal FFT units); we use its value at the paper's
      working size, 0.1024 of the stretched range, at every size, so patches and
      whole tiles are held to the same contrast.
    * **Native resolution, no resize.** Resizing an 8k tile to 1024² averages
      away exactly the fine detail defocus removes; we score native-resolution
      patches (the focus map) instead. A 512² image is scored at 512².
    * **No seam.** The circular FFT joins opposite borders; Moisan's periodic +
      smooth decomposition removes that jump (one extra 1-D transform pair), so
      no maxima are counted along the image border. Native tiles use a real halo.
``fast`` (the default since 2026-12; before, ``exact`` under the name ``default``)
    ``exact``'s scale space, thresholds and counting rule, ~3.5-4× cheaper
    (bench/speed.py). Every level is computed on the coarsest power-of-two grid
    on which its σ is still ≥ 1 pixel (the sampling of exact mode's finest
    level; spectrum cropped), so only σ = 1 runs at full resolution. Maxima are
    counted per band on the band's own grid, never interpolated to full size:
    the coarse band's samples are refined to their peak height by a parabola
    and must not lie below the fine band around them; a fine maximum must not
    lie below the interpolated coarse band. The stretch percentiles and the
    binning-2 noise estimate are taken on a sparser sample. Ranks like exact mode
    (Spearman ≥ 0.997 in every cell of bench/accuracy.py's matrix); counts
    run a few per cent low (up to ~12 % at moderate blur: a coarse grid resolves
    fewer close pairs of maxima) and the fine fraction a few per cent high, so
    compare fast scores with fast scores, exact with exact.

Resolutions: ``patches`` (the default), ``resized`` (whole tile at 1024², the
paper) and ``native`` (whole tile at full size, in blocks with a halo, memory
bounded). ``patches`` serves an operator best: each patch of about
``patch_size`` is scored as one image at native resolution; the tile's score is
the median patch score (a dust speck or one blank corner does not move it), and
the grid of patch scores is a focus map in which a wrinkle or a tilted section
shows as a group of low patches, which a whole-tile count (dominated by the
in-focus area) would hide. Memory per patch is bounded, so any tile size works.
On the CPU the patches are scored on a thread per core (``patches.each_patch``), each
with single-threaded FFTs: NumPy's elementwise passes use one core, so one patch at a
time leaves the other cores idle between transforms. The numbers do not depend on it.

``content`` is the robust standard deviation of a band-pass (σ 8 to 32 px) of the
stretched image, as a fraction of its range: blur barely touches that band, noise
is averaged out of it and slow shading lies below it, so empty resin scores below 0.01
and tissue, even badly blurred, clearly more. Per patch in ``patch_content``; the
tile's value is the largest patch value (a tile is empty only if every patch is).

``orientation`` (``mhfd`` only) is the spectrum's orientation (``score.orientation``),
the mean over the patches: astigmatism streaks a tile along one axis, defocus does
not; the policy reads it against the position's history.

Bad input (not 2-D, empty, smaller than 16 px, NaN/inf, constant) raises
``ValueError``; the file-level layer (``focuswatch.scoring``) turns it into a
``TileError`` (a constant tile's reason is "constant image (no signal)"). A
constant *patch* in a tile with signal scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from focuswatch.backend import Backend
from focuswatch.choices import CRITERIA, DEFAULT_MODE, RESOLUTIONS, has_noise_floor
from focuswatch.score._dtypes import (
    MIN_SIZE,
    ConstantImageError,
    float_dtype,
    stretch_limits,
    stretched,
    validate_image,
)
from focuswatch.score.baselines import BASELINES, unit_range
from focuswatch.score.mhfd import (
    MODES,
    PAPER_SIGMAS,
    PAPER_SIZE,
    MhfdDetail,
    content_of,
    image_noise,
    mhfd,
    mhfd_detail,
    mhfd_prepared,
    params_for,
    sigma_schedule,
    stretch_image,
)
from focuswatch.score.noise import tile_noise_models
from focuswatch.score.orientation import Orientation, orientation
from focuswatch.score.patches import default_threads, each_patch, native_mhfd, patch_grid
from focuswatch.score.spectrum import BandPowers, patch_ratio, spectral_ratio

__all__ = [
    "CRITERIA",
    "MIN_SIZE",
    "MODES",
    "PAPER_SIGMAS",
    "RESOLUTIONS",
    "ConstantImageError",
    "ScoreResult",
    "check_options",
    "float_dtype",
    "mhfd",
    "mhfd_detail",
    "patch_grid",
    "score_image",
    "score_patches",
    "sigma_schedule",
]


@dataclass(frozen=True)
class ScoreResult:
    """One image's score. ``patch_scores``/``patch_content``: host float64 grids
    (``resolution="patches"`` only); ``content``: blur-invariant amount of structure
    as a fraction of the dynamic range (~0 for empty resin)."""

    score: float
    patch_scores: np.ndarray[Any, Any] | None
    content: float
    criterion: str
    mode: str
    resolution: str
    shape: tuple[int, int]
    patch_content: np.ndarray[Any, Any] | None = field(default=None, compare=False)
    noise: float = float("nan")
    #: The scale signature (``mhfd`` only, else None): the fraction of counted maxima
    #: whose level has σ ≤ ``FINE_SIGMA`` px, pooled over the patches (fine maxima
    #: over all maxima of the tile); None when nothing was counted.
    fine_fraction: float | None = None
    #: Per patch (``resolution="patches"``, ``mhfd`` only); NaN for a patch without maxima.
    patch_fine_fraction: np.ndarray[Any, Any] | None = field(default=None, compare=False)
    #: The spectrum's orientation (``score.orientation``: x, y), mean over the patches;
    #: None when no patch has a signal band (``mhfd`` only).
    orientation: tuple[float, float] | None = None
    #: High-to-mid band power above the noise floor (``score.spectrum``), pooled over the
    #: patches: falls steeply with blur, barely with tissue (``mhfd`` only; None
    #: without signal in the mid band).
    spectral: float | None = None
    #: The same per patch (``resolution="patches"``, ``mhfd`` only; NaN for a patch
    #: without it): a wrinkle blurs one region, whose ratio falls far below the rest.
    patch_spectral: np.ndarray[Any, Any] | None = field(default=None, compare=False)


def check_options(*, criterion: str, mode: str, resolution: str, patch_size: int) -> None:
    """ValueError unless every option is one ``score_image`` accepts."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if not isinstance(patch_size, int) or patch_size < 64:
        raise ValueError(f"patch_size must be an integer >= 64, got {patch_size!r}")


def _score_unit(
    image: Any, *, backend: Backend, criterion: str, mode: str, dtype: Any, resize: int | None
) -> tuple[tuple[float, float, float, float], BandPowers | None]:
    """(score, content, noise, fine maxima) of one image scored as a whole (a patch or
    a resized tile), and its spectrum's band powers; fine maxima are NaN and the band
    powers None for criteria other than ``mhfd``."""
    xp = backend.xp
    if criterion == "mhfd":
        d: MhfdDetail = mhfd_detail(
            image, backend=backend, mode=mode, resize=resize, dtype=np.dtype(dtype).name
        )
        return (float(d.count), d.content, d.noise, float(d.fine)), d.bands
    image = xp.asarray(image)
    minmax = validate_image(image, backend)
    if resize is not None and image.shape != (resize, resize):
        image = backend.ndimage.zoom(
            image.astype(dtype),
            (resize / image.shape[0], resize / image.shape[1]),
            order=1,
            mode="nearest",
            grid_mode=True,
        )
        minmax = (float(xp.min(image)), float(xp.max(image)))
    value = BASELINES[criterion](unit_range(image, backend=backend, dtype=dtype), backend=backend)
    # ``content`` is defined on the stretched image, whatever the criterion.
    limits = stretch_limits(image, backend, saturation=params_for(mode).saturation, minmax=minmax)
    u = stretched(image, backend, limits=limits, dtype=dtype)
    F = backend.fft.rfft2(u, **backend.fft_kwargs())
    content = content_of(F, u.shape, backend, dtype)
    return (float(value), content, float("nan"), float("nan")), None


def score_patches(
    image: Any,
    *,
    backend: Backend,
    criterion: str,
    mode: str,
    patch_size: int,
    dtype: Any,
    read: Any = None,
    threads: int | None = None,
) -> ScoreResult:
    """Score every patch of the grid; ``read(y0, y1, x0, x1)`` supplies patches when
    the whole image is not in memory (``image`` is then only used for its shape).
    ``threads``: patches scored at once (``patches.default_threads``: a core each on
    the CPU); each patch's numbers are the same whatever the number."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    ys, xs = patch_grid(shape, patch_size)
    resize = PAPER_SIZE if mode == "faithful" else None

    def work(
        patch: Any, unit_backend: Backend
    ) -> tuple[tuple[float, ...], Orientation | None, BandPowers | None]:
        turn = _orientation(patch, unit_backend) if criterion == "mhfd" else None
        try:
            numbers, bands = _score_unit(
                patch,
                backend=unit_backend,
                criterion=criterion,
                mode=mode,
                dtype=dtype,
                resize=resize,
            )
        except ConstantImageError:
            # A blank patch (a saturated margin, say) in a tile that has signal
            # elsewhere: nothing in focus there, nothing to see.
            numbers, bands = (_blank_score(criterion), 0.0, float("nan"), 0.0), None
        return numbers, turn, bands

    def cut(y0: int, y1: int, x0: int, x1: int) -> Any:
        return read(y0, y1, x0, x1) if read is not None else image[y0:y1, x0:x1]

    bounds = [(y0, y1, x0, x1) for y0, y1 in ys for x0, x1 in xs]
    n_threads = default_threads(backend) if threads is None else threads
    if criterion == "mhfd" and resize is None and params_for(mode).noise_k is not None:
        units, clipped = _pooled_units(
            bounds, cut, backend=backend, mode=mode, dtype=dtype, threads=n_threads
        )
    else:
        units = each_patch(bounds, cut, work, backend=backend, threads=n_threads)
        clipped = [0.0] * len(units)
    turns = [turn for _, turn, _ in units]
    grid = np.asarray([numbers for numbers, _, _ in units], dtype=float)
    grid = grid.reshape(len(ys), len(xs), 4)
    scores, content, noise, fine = (np.ascontiguousarray(grid[..., k]) for k in range(4))
    mhfd_counts = criterion == "mhfd"
    # The content guard came with revision 7 of the noise-floor modes: faithful mode's
    # patches read as they always did (its numbers are revision 1's).
    solid = (
        _solid_patches([b for *_, b in units], content)
        if has_noise_floor(criterion, mode)
        else np.ones(content.shape, dtype=bool)
    )
    return ScoreResult(
        score=float(np.median(scores)),
        patch_scores=scores,
        content=float(np.max(content)),
        criterion=criterion,
        mode=mode,
        resolution="patches",
        shape=shape,
        patch_content=content,
        noise=float(np.nanmedian(noise)) if np.isfinite(noise).any() else float("nan"),
        fine_fraction=_fine_fraction(fine.sum(), scores.sum()) if mhfd_counts else None,
        patch_fine_fraction=_patch_fractions(fine, scores, solid) if mhfd_counts else None,
        orientation=_mean_orientation(turns),
        spectral=spectral_ratio([bands for *_, bands in units]) if mhfd_counts else None,
        patch_spectral=_patch_spectra([b for *_, b in units], clipped, solid)
        if mhfd_counts
        else None,
    )


_Unit = tuple[tuple[float, ...], Orientation | None, BandPowers | None]
#: A patch's spectral ratio needs a mid band at least this share of the tile's median
#: patch's (above the floor): enough tissue that the ratio is not the floor's error.
_PATCH_MID_SHARE = 0.25
#: A patch's own signature (fine fraction, spectral ratio) needs at least this share of
#: the tile's typical patch's content: the content (σ 8-32 px) barely moves with blur
#: (a σ 3 px wrinkle over a 256 px patch of ISBI tissue kept 0.72 or more of the other
#: patches' median, at 8-200 e/px, white, along-x and 2-D noise), so a patch far below
#: is sparse tissue beside resin, whose fine detail is the tissue's, not the focus's
#: (focuswatch demo's wafer: such a patch, at 0.22-0.38 of its tile's content, read as
#: a wrinkle every section; other seeds' rim patches at 0.6-0.85 still do).
_PATCH_CONTENT_SHARE = 0.5


def _pooled_units(
    bounds: list[tuple[int, int, int, int]],
    cut: Callable[[int, int, int, int], Any],
    *,
    backend: Backend,
    mode: str,
    dtype: Any,
    threads: int,
) -> tuple[list[_Unit], list[float]]:
    """MHFD of every patch with the noise model pooled over the tile
    (``noise.tile_noise_models``): a first pass measures each patch's stretch, noise
    model and orientation, a second reads each patch again and counts. Re-reading, not
    holding the patches: the memory guard's reads never hold the whole tile. With each
    patch's share of pixels clipped by its stretch (on every 4th pixel each way)."""
    params = params_for(mode)

    def survey(patch: Any, be: Backend) -> tuple[Orientation | None, Any]:
        turn = _orientation(patch, be)
        image = be.xp.asarray(patch)
        try:
            minmax = validate_image(image, be)
        except ConstantImageError:
            return turn, None
        u, limits = stretch_image(image, params, backend=be, dtype=dtype, minmax=minmax)
        return turn, (limits, image_noise(u, params, backend=be, mark_unmeasured=True))

    surveyed = each_patch(bounds, cut, survey, backend=backend, threads=threads)
    infos = [info for _, info in surveyed]
    models = tile_noise_models(
        [None if info is None else info[1] for info in infos],
        [0.0 if info is None else info[0][1] - info[0][0] for info in infos],
    )
    index = {b: i for i, b in enumerate(bounds)}

    def again(y0: int, y1: int, x0: int, x1: int) -> tuple[Any, int]:
        return cut(y0, y1, x0, x1), index[y0, y1, x0, x1]

    def count(item: tuple[Any, int], be: Backend) -> tuple[_Unit, float]:
        patch, i = item
        turn, info = surveyed[i]
        model = models[i]
        if info is None or model is None:
            return ((_blank_score("mhfd"), 0.0, float("nan"), 0.0), turn, None), 1.0
        u = stretched(be.xp.asarray(patch), be, limits=info[0], dtype=dtype)
        d = mhfd_prepared(u, params, backend=be, noise=model)
        sample = u[::4, ::4]
        clipped = int(be.xp.count_nonzero((sample <= 0) | (sample >= 1))) / max(sample.size, 1)
        return ((float(d.count), d.content, d.noise, float(d.fine)), turn, d.bands), clipped

    counted = each_patch(bounds, again, count, backend=backend, threads=threads)
    return [unit for unit, _ in counted], [share for _, share in counted]


def _orientation(image: Any, backend: Backend) -> Orientation | None:
    """The orientation of one patch or tile (on the host: a few small FFTs)."""
    return orientation(image, to_host=backend.asnumpy)


def _mean_orientation(turns: list[Orientation | None]) -> tuple[float, float] | None:
    kept = [t for t in turns if t is not None]
    if not kept:
        return None
    return (float(np.mean([t.x for t in kept])), float(np.mean([t.y for t in kept])))


def _fine_fraction(fine: float, count: float) -> float | None:
    return float(fine / count) if count > 0 else None


def _solid_patches(bands: list[BandPowers | None], content: np.ndarray[Any, Any]) -> Any:
    """Which patches (a boolean grid like ``content``) hold enough tissue to be compared
    with the tile's other patches by their own signature: a content at least
    ``_PATCH_CONTENT_SHARE`` of the typical patch's, the median over the patches with a
    mid band above the floor (``spectrum.patch_ratio``: resin's ~0 would lower the bar)."""
    flat = content.ravel()
    banded = [float(c) for c, b in zip(flat, bands, strict=True) if patch_ratio(b) is not None]
    if not banded:
        return np.ones(content.shape, dtype=bool)
    typical = float(np.median(banded))
    return np.asarray(content >= _PATCH_CONTENT_SHARE * typical)


def _patch_fractions(
    fine: np.ndarray[Any, Any], counts: np.ndarray[Any, Any], solid: np.ndarray[Any, Any]
) -> Any:
    """Each patch's fine fraction; NaN without maxima or without tissue enough
    (``_solid_patches``)."""
    out = np.full(counts.shape, np.nan)
    np.divide(fine, counts, out=out, where=(counts > 0) & solid)
    return out


def _patch_spectra(
    bands: list[BandPowers | None], clipped: list[float], solid: np.ndarray[Any, Any]
) -> Any:
    """Each patch's spectral ratio (``spectrum.patch_ratio``) on the grid of ``solid``;
    NaN where it has none, where its stretch clips more than half its pixels (a margin
    beyond the section: the step's spectrum is mid band and the little tissue's high band
    is within the floor's error, 0-0.3 of the tissue's ratio), where its mid band's
    signal is under ``_PATCH_MID_SHARE`` of the tile's median patch's (a sliver of
    tissue in resin, the same quotient of noise-sized numbers), or where it holds too
    little tissue (``_solid_patches``)."""
    own = [patch_ratio(b) for b in bands]
    mids = [b[2] - b[3] if b is not None and math.isfinite(b[2] - b[3]) else 0.0 for b in bands]
    # The typical patch among those with a mid band (resin's ~0 would lower the bar).
    banded = [m for r, m in zip(own, mids, strict=True) if r is not None]
    typical = float(np.median(banded)) if banded else 0.0
    ratios = [
        r if share <= 0.5 and mid >= _PATCH_MID_SHARE * typical and ok else None
        for r, share, mid, ok in zip(own, clipped, mids, solid.ravel(), strict=True)
    ]
    return np.array([math.nan if r is None else r for r in ratios], dtype=float).reshape(
        solid.shape
    )


def _blank_score(criterion: str) -> float:
    """What a constant patch scores: no structure (a steep slope for the spectrum measure)."""
    return -10.0 if criterion == "power_spectrum_slope" else 0.0


def score_image(
    image: Any,
    *,
    backend: Backend,
    criterion: str = "mhfd",
    mode: str = DEFAULT_MODE,
    resolution: str = "patches",
    patch_size: int = 1024,
    dtype: str | None = None,
    threads: int | None = None,
) -> ScoreResult:
    """Score one 2-D image (any integer or float dtype; host or backend array).

    ``threads``: patches scored at once (``resolution="patches"``; None: a core each
    on the CPU, see ``score_patches``).

    ``ValueError`` for bad options and for images that cannot be scored (see the
    module docstring); a constant image is one of those ("constant image (no
    signal)"), a constant *patch* inside a tile with signal just scores 0.
    """
    check_options(criterion=criterion, mode=mode, resolution=resolution, patch_size=patch_size)
    ft = float_dtype(dtype)
    validate_image(image, backend)
    shape = (int(image.shape[0]), int(image.shape[1]))
    if resolution == "patches":
        return score_patches(
            image,
            backend=backend,
            criterion=criterion,
            mode=mode,
            patch_size=patch_size,
            dtype=ft,
            threads=threads,
        )
    bands = None
    if resolution == "resized":
        (score, content, noise, fine), bands = _score_unit(
            image, backend=backend, criterion=criterion, mode=mode, dtype=ft, resize=PAPER_SIZE
        )
    elif criterion == "mhfd":
        d = native_mhfd(image, params_for(mode), backend=backend, dtype=ft)
        score, content, noise, fine = float(d.count), d.content, d.noise, float(d.fine)
    else:
        (score, content, noise, fine), bands = _score_unit(
            image, backend=backend, criterion=criterion, mode=mode, dtype=ft, resize=None
        )
    turn = _mean_orientation([_orientation(image, backend)]) if criterion == "mhfd" else None
    return ScoreResult(
        score=score,
        patch_scores=None,
        content=content,
        criterion=criterion,
        mode=mode,
        resolution=resolution,
        shape=shape,
        noise=noise,
        fine_fraction=_fine_fraction(fine, score) if criterion == "mhfd" else None,
        orientation=turn,
        spectral=spectral_ratio([bands]) if bands is not None else None,
    )
