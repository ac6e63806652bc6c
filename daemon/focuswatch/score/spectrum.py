"""How much fine detail a tile's spectrum holds above its own noise: a defocus measure.

A Gaussian blur of σ px keeps ``exp(−2π²σ²f²)`` of the amplitude at ``f`` cycles/px,
so it takes the high band (``HIGH``: periods of 5-10 px) down steeply (σ 1.5: to
~0.3 of its power) while the mid band (``MID``: periods of 20-50 px) keeps ~0.9;
less tissue lowers both. The *spectral ratio* ``(P_high − N_high) / (P_mid − N_mid)``,
powers summed over each ring of the spectrum with the noise's share taken out, is
therefore a per-tile statistic that falls with blur and barely moves with tissue (ISBI
serial sections, 256² patches: σ 1.5 leaves 0.30-0.52 of a position's ratio, sharp
sections keep ≥ 0.76 of it at 30 and 200 e/px), and unlike a count of features it
uses every frequency bin of the band (thousands), so shot noise averages out.

The noise floor ``N`` is read from the spectrum itself, where no tissue of the band
reaches (beyond ``NOISE_BAND`` cycles/px on either axis), as a separable spectrum
``N(f_y)·N(f_x)``: white noise gives a flat floor, noise correlated along the scan
line (a detector slower than the pixel rate; independent across lines) its own
shape along x. The same estimate as ``score.orientation``'s, on the spectrum MHFD
computes anyway (``band_powers`` costs one pass over it and a few masked sums).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from focuswatch.backend import Backend

__all__ = ["HIGH", "MID", "NOISE_BAND", "BandPowers", "band_powers", "spectral_ratio"]

#: The band defocus takes first (cycles per pixel).
HIGH = (0.10, 0.20)
#: The band defocus leaves (cycles per pixel), what the high band is measured against.
MID = (0.02, 0.05)
#: Beyond this on either axis the spectrum is taken as noise.
NOISE_BAND = 0.4

#: ``(P_high, N_high, P_mid, N_mid)``: the band powers and their noise floors.
BandPowers = tuple[float, float, float, float]


@functools.lru_cache(maxsize=16)
def _masks(backend: Backend, shape: tuple[int, int], dtype: str) -> tuple[Any, ...]:
    """Band masks on the rfft grid of ``shape`` and the noise region's rows/columns."""
    H, W = shape
    fy = np.abs(np.fft.fftfreq(H))[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    radius = np.hypot(fy, fx)
    xp = backend.xp
    high = ((radius >= HIGH[0]) & (radius < HIGH[1])).astype(dtype)
    mid = ((radius >= MID[0]) & (radius < MID[1])).astype(dtype)
    rows = np.flatnonzero(fy[:, 0] > NOISE_BAND)
    cols = np.flatnonzero(fx[0] > NOISE_BAND)
    return xp.asarray(high), xp.asarray(mid), xp.asarray(rows), xp.asarray(cols)


def band_powers(F: Any, shape: tuple[int, int], backend: Backend) -> BandPowers | None:
    """The high and mid band powers of the rfft2 ``F`` of an image of ``shape``, with
    their noise floors; None when the image is too small to have a noise region."""
    H, W = shape
    if min(H, W) < 32:
        return None
    xp = backend.xp
    power = F.real * F.real
    power += F.imag * F.imag
    high, mid, rows, cols = _masks(backend, shape, power.dtype.name)
    if len(rows) == 0 or len(cols) == 0:
        return None
    along_x = xp.mean(power[rows, :], axis=0)  # N(f_x)·N(high f_y)
    along_y = xp.mean(power[:, cols], axis=1)  # N(f_y)·N(high f_x)
    corner = float(xp.mean(along_x[cols]))
    if not corner > 0:
        return None
    out = []
    for mask in (high, mid):
        p = float(xp.sum(power * mask))
        n = float(along_y @ mask @ along_x) / corner
        out.append(p)
        out.append(n)
    return out[0], out[1], out[2], out[3]


def spectral_ratio(bands: Sequence[BandPowers | None]) -> float | None:
    """The spectral ratio pooled over patches (sums over every patch's bands); None
    when no patch has signal above the noise in the mid band."""
    kept = [b for b in bands if b is not None and all(math.isfinite(v) for v in b)]
    high = sum(p - n for p, n, _, _ in kept)
    mid = sum(p - n for _, _, p, n in kept)
    if not kept or mid <= 0:
        return None
    return max(high, 0.0) / mid
