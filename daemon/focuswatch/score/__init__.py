"""Focus scores for SEM tiles: the pure core (arrays in, numbers out; no I/O, no logging).

``score_image`` is the entry point; the array backend (NumPy or CuPy, see
``focuswatch.backend``) is passed in. Criteria: ``mhfd`` (the method) and five
classic baselines. Higher is always sharper.

MHFD (Levental et al., arXiv 2108.12050): stretch, Gaussian scale space, scale-
normalised DoG, maximum over scale, threshold, count 3×3 local maxima. Modes:

``faithful``
    The authors' algorithm and defaults: 0.175 % stretch per side, σ =
    linspace(1, 30 + 29/28, 30), DoG_i = σ_i·(L_i − L_{i+1}), threshold
    1e-4·sqrt(H·W), unit resized to 1024² (bilinear), circular FFT.
``default``
    What we changed, and why:

    * **Noise floor per level.** With shot noise, fine-scale DoG levels are
      dominated by noise, and the paper's fixed contrast threshold counts noise
      maxima; since the stretch maps a blurred (low-contrast) image's range to
      [0, 1], noise is *amplified* relative to the threshold as blur grows and the
      count can rise with defocus. We estimate the noise standard deviation σ_n
      (Immerkær's operator, median absolute deviation: insensitive to edges) and
      raise each level's threshold to ``k·σ_n·g_i``, where ``g_i`` is that
      level's exact gain for white noise (k = 4: ~3e-5 false maxima per pixel
      per level). Clean images keep the paper's contrast threshold.
    * **Fixed contrast threshold.** The paper's threshold grows with sqrt(H·W)
      (an artefact of its orthonormal FFT units); we use its value at the paper's
      working size, 0.1024 of the stretched range, at every size, so patches and
      whole tiles are judged by the same contrast.
    * **Native resolution, no resize.** Resizing an 8k tile to 1024² averages
      away exactly the fine detail defocus removes; we score native-resolution
      patches (the focus map) instead.
    * **No seam.** The circular FFT joins opposite borders; Moisan's periodic +
      smooth decomposition removes that jump (one extra transform) so no maxima
      are counted along the image border. Native tiles use a real halo instead.
``fast``
    ``default`` with each band-limited level computed on a decimated grid
    (spectrum cropped: exact samples), coarse maxima interpolated back.

Resolutions: ``patches`` (default: native patches of about ``patch_size``, the
tile's score is the median patch score, the grid is the focus map that shows a
wrinkle), ``resized`` (whole tile at 1024², the paper) and ``native`` (whole tile
at full size, tiled with a halo, memory bounded).

Bad input (not 2-D, empty, smaller than 16 px, NaN/inf, constant) raises
``ValueError``; the file-level layer (``focuswatch.scoring``) turns it into a
``TileError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from focuswatch.backend import Backend
from focuswatch.score._dtypes import (
    MIN_SIZE,
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
    mhfd,
    mhfd_detail,
    params_for,
    sigma_schedule,
)
from focuswatch.score.patches import native_mhfd, patch_grid

__all__ = [
    "CRITERIA",
    "MIN_SIZE",
    "MODES",
    "PAPER_SIGMAS",
    "RESOLUTIONS",
    "ScoreResult",
    "check_options",
    "mhfd",
    "mhfd_detail",
    "patch_grid",
    "score_image",
    "score_patches",
    "sigma_schedule",
]

CRITERIA = (
    "mhfd",
    "variance_of_laplacian",
    "tenengrad",
    "brenner",
    "normalized_variance",
    "power_spectrum_slope",
)
RESOLUTIONS = ("patches", "resized", "native")


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


def score_unit(
    image: Any, *, backend: Backend, criterion: str, mode: str, dtype: Any, resize: int | None
) -> tuple[float, float, float]:
    """(score, content, noise) of one image scored as a whole (a patch or a resized tile)."""
    xp = backend.xp
    if criterion == "mhfd":
        d: MhfdDetail = mhfd_detail(
            image, backend=backend, mode=mode, resize=resize, dtype=np.dtype(dtype).name
        )
        return float(d.count), d.content, d.noise
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
    return float(value), content_of(F, u.shape, backend, dtype), float("nan")


def score_patches(
    image: Any,
    *,
    backend: Backend,
    criterion: str,
    mode: str,
    patch_size: int,
    dtype: Any,
    read: Any = None,
) -> ScoreResult:
    """Score every patch of the grid; ``read(y0, y1, x0, x1)`` supplies patches when
    the whole image is not in memory (``image`` is then only used for its shape)."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    ys, xs = patch_grid(shape, patch_size)
    scores = np.zeros((len(ys), len(xs)))
    content = np.zeros_like(scores)
    noise = np.full_like(scores, np.nan)
    resize = PAPER_SIZE if mode == "faithful" else None
    for i, (y0, y1) in enumerate(ys):
        for j, (x0, x1) in enumerate(xs):
            patch = read(y0, y1, x0, x1) if read is not None else image[y0:y1, x0:x1]
            try:
                scores[i, j], content[i, j], noise[i, j] = score_unit(
                    patch,
                    backend=backend,
                    criterion=criterion,
                    mode=mode,
                    dtype=dtype,
                    resize=resize,
                )
            except ValueError as exc:
                # A blank patch (a saturated margin, say) in a tile that has signal
                # elsewhere: nothing in focus there, nothing to see.
                if not str(exc).startswith("constant image"):
                    raise
                scores[i, j] = _blank_score(criterion)
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
    )


def _blank_score(criterion: str) -> float:
    """What a constant patch scores: no structure (a steep slope for the spectrum measure)."""
    return -10.0 if criterion == "power_spectrum_slope" else 0.0


def score_image(
    image: Any,
    *,
    backend: Backend,
    criterion: str = "mhfd",
    mode: str = "default",
    resolution: str = "patches",
    patch_size: int = 1024,
    dtype: str | None = None,
) -> ScoreResult:
    """Score one 2-D image (any integer or float dtype; host or backend array).

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
            image, backend=backend, criterion=criterion, mode=mode, patch_size=patch_size, dtype=ft
        )
    if resolution == "resized":
        score, content, noise = score_unit(
            image, backend=backend, criterion=criterion, mode=mode, dtype=ft, resize=PAPER_SIZE
        )
    elif criterion == "mhfd":
        d = native_mhfd(image, params_for(mode), backend=backend, dtype=ft)
        score, content, noise = float(d.count), d.content, d.noise
    else:
        score, content, noise = score_unit(
            image, backend=backend, criterion=criterion, mode=mode, dtype=ft, resize=None
        )
    return ScoreResult(
        score=score,
        patch_scores=None,
        content=content,
        criterion=criterion,
        mode=mode,
        resolution=resolution,
        shape=shape,
        noise=noise,
    )
