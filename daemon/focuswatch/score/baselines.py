"""Classic focus measures, for comparison with MHFD (all: higher = sharper).

Each takes the raw intensities in the working float dtype, scaled by the dtype's
full range (so 8- and 16-bit tiles agree; see ``unit_range``), and the backend,
and returns one float. They are *not* given the stretched image: stretching a
blurred, low-contrast image to [0, 1] amplifies its noise, which would make every
gradient measure rise with blur. The gradient energies are divided by the squared
mean intensity so that detector gain (brightness/contrast settings) cancels.

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
    "unit_range",
    "variance_of_laplacian",
]


def unit_range(image: Any, *, backend: Backend, dtype: Any) -> Any:
    """Intensities as ``dtype`` scaled by the input dtype's range (floats as they are)."""
    kind = np.dtype(image.dtype).kind
    x = image.astype(dtype)
    if kind in "ui":
        x *= dtype(1.0 / np.iinfo(image.dtype).max)
    return x


def _mean_sq(u: Any, backend: Backend) -> float:
    m = float(backend.xp.mean(u, dtype=np.float64))
    return m * m


def variance_of_laplacian(u: Any, *, backend: Backend) -> float:
    """Variance of the 4-neighbour Laplacian (edges excluded) over the squared mean."""
    lap = u[1:-1, :-2] + u[1:-1, 2:] + u[:-2, 1:-1] + u[2:, 1:-1] - 4 * u[1:-1, 1:-1]
    m2 = _mean_sq(u, backend)
    return float(backend.xp.var(lap, dtype=np.float64)) / m2 if m2 > 0 else 0.0


def tenengrad(u: Any, *, backend: Backend) -> float:
    """Mean of the squared Sobel gradient magnitude (no threshold) over the squared mean."""
    xp = backend.xp
    sy = u[:-2] + 2 * u[1:-1] + u[2:]  # vertical smoothing, for the x gradient
    gx = sy[:, 2:] - sy[:, :-2]
    sx = u[:, :-2] + 2 * u[:, 1:-1] + u[:, 2:]
    gy = sx[2:] - sx[:-2]
    energy = float(xp.mean(gx * gx, dtype=np.float64) + xp.mean(gy * gy, dtype=np.float64))
    m2 = _mean_sq(u, backend)
    return energy / m2 if m2 > 0 else 0.0


def brenner(u: Any, *, backend: Backend) -> float:
    """Mean squared difference of pixels two apart (both directions) over the squared mean."""
    xp = backend.xp
    dx = u[:, 2:] - u[:, :-2]
    dy = u[2:] - u[:-2]
    energy = float(xp.mean(dx * dx, dtype=np.float64) + xp.mean(dy * dy, dtype=np.float64))
    m2 = _mean_sq(u, backend)
    return energy / m2 if m2 > 0 else 0.0


def normalized_variance(image: Any, *, backend: Backend) -> float:
    """Variance over mean of the raw intensities (0 for a zero-mean image)."""
    xp = backend.xp
    mean = float(xp.mean(image, dtype=np.float64))
    var = float(xp.var(image, dtype=np.float64))
    return var / mean if mean > 0 else 0.0


def power_spectrum_slope(u: Any, *, backend: Backend) -> float:
    """Least-squares slope of log radially-averaged power against log frequency.

    Computed in float64 over 2/N to 1/4 cycles per pixel: above that a noiseless,
    blurred image's power sinks to the arithmetic's floor and flattens the fit.
    """
    xp = backend.xp
    H, W = u.shape
    x = u.astype(np.float64)
    p = backend.fft.rfft2(x - xp.mean(x), **backend.fft_kwargs())
    power = backend.asnumpy(p.real * p.real + p.imag * p.imag)
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    r = np.sqrt(fy * fy + fx * fx)
    # Radial bins one frequency step wide.
    step = 1.0 / max(H, W)
    idx = np.rint(r / step).astype(np.intp)
    first, last = 2, int(0.25 / step)
    keep = (idx >= first) & (idx <= last)
    sums = np.bincount(idx[keep], weights=power[keep], minlength=last + 1)[first:]
    counts = np.bincount(idx[keep], minlength=last + 1)[first:]
    ok = (counts > 0) & (sums > 0)
    if ok.sum() < 2:
        return 0.0
    freq = np.arange(first, last + 1)[ok] * step
    slope = np.polyfit(np.log(freq), np.log(sums[ok] / counts[ok]), 1)[0]
    return float(slope)


#: Criterion name → function of (unit-range intensities, backend).
BASELINES: dict[str, Any] = {
    "variance_of_laplacian": variance_of_laplacian,
    "tenengrad": tenengrad,
    "brenner": brenner,
    "normalized_variance": normalized_variance,
    "power_spectrum_slope": power_spectrum_slope,
}
