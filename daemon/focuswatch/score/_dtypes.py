"""Numeric policy for the scoring core: input checks, the float dtype, the stretch.

One place decides these so that 8-bit, 16-bit and float input are scored the same
way: every image is checked (2-D, non-empty, big enough, finite, not constant),
mapped to [0, 1] by a percentile stretch and computed in float32 unless asked
otherwise (float32 keeps counts stable to well below one maximum in a thousand and
halves memory and FFT time).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from focuswatch.backend import Backend

__all__ = [
    "MIN_SIZE",
    "ConstantImageError",
    "float_dtype",
    "stretch_limits",
    "stretched",
    "validate_image",
]

#: The smallest side the core accepts: below this the 3×3 maxima and the
#: coarsest scales of the schedule mean nothing.
MIN_SIZE = 16

_HIST_CHUNK = 1 << 22  # pixels per bincount call


class ConstantImageError(ValueError):
    """Every pixel has one value: no signal to score (a blank patch, a dead detector)."""


def float_dtype(dtype: str | None) -> Any:
    """The working float dtype: float32 (default) or float64; anything else is an error."""
    if dtype is None or dtype == "float32":
        return np.float32
    if dtype == "float64":
        return np.float64
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def validate_image(
    image: Any, backend: Backend, *, min_size: int = MIN_SIZE
) -> tuple[float, float]:
    """Check ``image`` is scorable; returns its (min, max).

    Raises ``ValueError`` with a message an operator can act on for non-arrays,
    non-2-D, empty, too small, complex, NaN/inf and constant images.
    """
    # Host arrays are checked on the host (a GPU backend may be handed one).
    xp = np if isinstance(image, np.ndarray) else backend.xp
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"image must be an array, got {type(image).__name__}")
    if len(shape) != 2:
        raise ValueError(f"image must be 2-D (one grey channel), got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(shape)})")
    if shape[0] < min_size or shape[1] < min_size:
        raise ValueError(
            f"image is too small: {shape[0]}×{shape[1]} pixels, need at least {min_size}×{min_size}"
        )
    kind = np.dtype(dtype).kind
    if kind not in "uifb":
        raise ValueError(f"image dtype must be integer, float or bool, got {dtype}")
    lo = float(xp.min(image))
    hi = float(xp.max(image))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image contains NaN or infinite values")
    if lo == hi:
        raise ConstantImageError(f"constant image (no signal): every pixel is {lo:g}")
    return lo, hi


def stretch_limits(
    image: Any, backend: Backend, *, saturation: float, minmax: tuple[float, float]
) -> tuple[float, float]:
    """Intensities below/above which ``saturation`` of the pixels lie (each side).

    8- and 16-bit unsigned images use an exact histogram (one pass, no sort);
    others use ``percentile``. Falls back to (min, max) when the percentiles meet,
    e.g. a nearly constant image with a few outliers.
    """
    if not 0.0 <= saturation < 0.5:
        raise ValueError(f"saturation must be in [0, 0.5), got {saturation}")
    if saturation == 0.0:
        return minmax
    xp = backend.xp
    n = image.shape[0] * image.shape[1]
    if np.dtype(image.dtype) in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(bool)):
        # In row chunks: bincount widens to intp, which for a whole 16k² tile is 2 GB.
        step = max(1, _HIST_CHUNK // image.shape[1])
        hist = None
        for y in range(0, image.shape[0], step):
            part = xp.asarray(image[y : y + step]).ravel()
            h = xp.bincount(part, minlength=65536 if part.dtype == np.uint16 else 256)
            hist = h if hist is None else hist + h
        cdf = backend.asnumpy(xp.cumsum(hist))
        # Same positions as numpy's "lower" percentile: the k-th smallest value.
        k_lo = saturation * (n - 1)
        k_hi = (1.0 - saturation) * (n - 1)
        lo = float(np.searchsorted(cdf, np.floor(k_lo) + 1))
        hi = float(np.searchsorted(cdf, np.ceil(k_hi) + 1))
    else:
        q = xp.percentile(
            xp.asarray(image).ravel(), xp.asarray([100 * saturation, 100 * (1 - saturation)])
        )
        lo, hi = (float(v) for v in backend.asnumpy(q))
    if hi <= lo:
        return minmax
    return lo, hi


def stretched(image: Any, backend: Backend, *, limits: tuple[float, float], dtype: Any) -> Any:
    """``image`` clipped to ``limits`` and mapped to [0, 1] in ``dtype`` (a new array)."""
    xp = backend.xp
    lo, hi = limits
    src = xp.asarray(image)
    if np.dtype(src.dtype).itemsize > np.dtype(dtype).itemsize and src.dtype.kind == "f":
        # Float64 data beyond float32's range would overflow to inf if cast first:
        # map to [0, 1] in float64, then narrow.
        wide = xp.clip(src, lo, hi)
        wide -= lo
        wide *= 1.0 / (hi - lo)
        return wide.astype(dtype)
    out = src.astype(dtype)  # a copy, on the backend's device
    xp.clip(out, dtype(lo), dtype(hi), out=out)
    out -= dtype(lo)
    out *= dtype(1.0 / (hi - lo))
    return out
