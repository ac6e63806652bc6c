"""Classic focus measures, for comparison with MHFD (all: higher = sharper).

Each takes an image already stretched to [0, 1] in the working float dtype
(``normalized_variance`` takes raw intensities, since dividing by the mean is its
whole point) and the backend, and returns one float.

- ``variance_of_laplacian``: variance of the 4-neighbour Laplacian (Pech-Pacheco 2000).
- ``tenengrad``: mean squared Sobel gradient magnitude (Krotkov 1988).
- ``brenner``: mean squared difference of pixels two apart, both directions (Brenner 1976).
- ``normalized_variance``: intensity variance over mean (Groen 1985; CellProfiler's
  FocusScore; ranked best by Sun et al. 2004).
- ``power_spectrum_slope``: slope of log radial power against log frequency
  (CellProfiler's PowerLogLogSlope); blur steepens it (more negative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from focuswatch.backend import Backend

__all__ = [
    "BASELINES",
    "brenner",
    "normalized_variance",
    "power_spectrum_slope",
    "tenengrad",
    "variance_of_laplacian",
]


def variance_of_laplacian(u: Any, *, backend: Backend) -> float:
    """Variance of the Laplacian over the image (edges excluded)."""
    lap = u[1:-1, :-2] + u[1:-1, 2:] + u[:-2, 1:-1] + u[2:, 1:-1] - 4 * u[1:-1, 1:-1]
    return float(backend.xp.var(lap, dtype=np.float64))


def tenengrad(u: Any, *, backend: Backend) -> float:
    """Mean of the squared Sobel gradient magnitude (no threshold)."""
    xp = backend.xp
    sy = u[:-2] + 2 * u[1:-1] + u[2:]  # vertical smoothing, for the x gradient
    gx = sy[:, 2:] - sy[:, :-2]
    sx = u[:, :-2] + 2 * u[:, 1:-1] + u[:, 2:]
    gy = sx[2:] - sx[:-2]
    return float(xp.mean(gx * gx, dtype=np.float64) + xp.mean(gy * gy, dtype=np.float64))


def brenner(u: Any, *, backend: Backend) -> float:
    """Mean squared difference between pixels two apart, horizontally and vertically."""
    xp = backend.xp
    dx = u[:, 2:] - u[:, :-2]
    dy = u[2:] - u[:-2]
    return float(xp.mean(dx * dx, dtype=np.float64) + xp.mean(dy * dy, dtype=np.float64))


def normalized_variance(image: Any, *, backend: Backend) -> float:
    """Variance over mean of the raw intensities (0 for a zero-mean image)."""
    xp = backend.xp
    mean = float(xp.mean(image, dtype=np.float64))
    var = float(xp.var(image, dtype=np.float64))
    return var / mean if mean > 0 else 0.0


def power_spectrum_slope(u: Any, *, backend: Backend) -> float:
    """Least-squares slope of log radially-averaged power against log frequency."""
    xp = backend.xp
    H, W = u.shape
    p = backend.fft.rfft2(u - xp.mean(u), **backend.fft_kwargs())
    power = backend.asnumpy((p.real * p.real + p.imag * p.imag).astype(np.float64))
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    r = np.sqrt(fy * fy + fx * fx)
    # Radial bins one frequency step wide, from the lowest non-zero frequency to Nyquist.
    step = 1.0 / max(H, W)
    idx = np.rint(r / step).astype(np.intp)
    n_bins = int(0.5 / step)
    keep = (idx >= 1) & (idx <= n_bins)
    sums = np.bincount(idx[keep], weights=power[keep], minlength=n_bins + 1)[1:]
    counts = np.bincount(idx[keep], minlength=n_bins + 1)[1:]
    ok = (counts > 0) & (sums > 0)
    if ok.sum() < 2:
        return 0.0
    freq = np.arange(1, n_bins + 1)[ok] * step
    slope = np.polyfit(np.log(freq), np.log(sums[ok] / counts[ok]), 1)[0]
    return float(slope)


#: Criterion name → function of (stretched image, backend) and whether it wants raw input.
BASELINES: dict[str, tuple[Any, bool]] = {
    "variance_of_laplacian": (variance_of_laplacian, False),
    "tenengrad": (tenengrad, False),
    "brenner": (brenner, False),
    "normalized_variance": (normalized_variance, True),
    "power_spectrum_slope": (power_spectrum_slope, False),
}
