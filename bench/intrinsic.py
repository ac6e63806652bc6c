"""The blur a serial section carries in itself, measured from its own spectrum.

A bench that plants blur on real sections must know how sharp each section was to
begin with: the ISBI 2012 slices 0-14 are blurrier than slices 15-29 by about a
Gaussian of σ 0.6 native px. A Gaussian blur of σ keeps exp(−4π²σ²f²) of the power at
f cycles/px, so against a reference spectrum from the sharpest slices,
ln(P_s / P_ref) = c − 4π²b²f² over the band where tissue dominates; the
least-squares slope gives each slice's intrinsic blur b (0 when the slice is sharper
than the reference). Less tissue or other tissue shifts the whole spectrum (c), not
its slope, as long as the tissue's texture keeps its shape across sections.

The truth of a tile then follows the service's view: a position is compared with its
own history, so what counts is the blur beyond the sharpest section this position
has already seen, in section order (getting sharper is never a loss):
σ_eff = sqrt(σ_planted² + max(0, b_s² − b_best²)), in the tile's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["BAND", "effective_sigmas", "intrinsic_blur", "radial_spectrum"]

#: Cycles per px fitted: above the tissue's largest structures, below the corners.
BAND = (0.05, 0.45)
#: The band ratio that picks the reference slices: high (0.25-0.45) over mid (0.05-0.15).
_HIGH = (0.25, 0.45)
_MID = (0.05, 0.15)
_BINS = 40


def radial_spectrum(
    img: npt.NDArray[np.floating], bins: int = _BINS
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(bin centres in cycles/px, power per radial bin normalised to sum 1).

    Mean taken out and a 2-D Hann window applied, so the frame's edges do not put
    power at every frequency.
    """
    a = np.asarray(img, dtype=np.float64)
    a = a - a.mean()
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    power = np.abs(np.fft.rfft2(a * window)) ** 2
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.rfftfreq(a.shape[1])[None, :]
    radius = np.hypot(fy, fx).ravel()
    edges = np.linspace(0.0, 0.5, bins + 1)
    idx = np.digitize(radius, edges) - 1
    inside = idx < bins
    total = np.bincount(idx[inside], power.ravel()[inside], bins)
    count = np.bincount(idx[inside], minlength=bins)
    p = total / np.maximum(count, 1)
    return (edges[:-1] + edges[1:]) / 2, p / p.sum()


def _band(f: npt.NDArray[np.float64], lo_hi: tuple[float, float]) -> npt.NDArray[np.bool_]:
    return (f >= lo_hi[0]) & (f <= lo_hi[1])


def intrinsic_blur(
    slices: Sequence[npt.NDArray[np.floating]], band: tuple[float, float] = BAND
) -> npt.NDArray[np.float64]:
    """Each slice's Gaussian blur (σ in its own px) beyond the sharpest slices'.

    The reference is the per-bin median spectrum of the slices in the top half by
    high-to-mid band ratio; a slice the fit finds sharper than it gets 0.
    """
    if len(slices) < 2:
        raise ValueError("intrinsic blur needs at least two slices to compare")
    spectra = [radial_spectrum(s) for s in slices]
    f = spectra[0][0]
    p = np.array([sp for _, sp in spectra])
    ratio = p[:, _band(f, _HIGH)].sum(1) / p[:, _band(f, _MID)].sum(1)
    reference = np.median(p[ratio >= np.median(ratio)], axis=0)
    fit = _band(f, band)
    design = np.stack([np.ones(int(fit.sum())), -4 * math.pi**2 * f[fit] ** 2], axis=1)
    logs = np.log(p[:, fit] / reference[fit]).T
    slope: npt.NDArray[np.float64] = np.linalg.lstsq(design, logs, rcond=None)[0][1]
    return np.sqrt(np.maximum(slope, 0.0))


def effective_sigmas(
    tiles: Sequence[tuple[Hashable, int, float, float]], scale: float
) -> list[float]:
    """σ_eff of each ``(position, section, planted σ, b)`` tile, in the same order.

    ``b`` is the tile's section's intrinsic blur in native px, ``scale`` the tile's px
    per native px (σ_planted is in tile px). b_best is the least b over this
    position's sections up to and including this one, in section order, whatever
    order the tiles are listed in.
    """
    running: dict[Hashable, float] = {}
    best: dict[tuple[Hashable, int], float] = {}
    for pos, sec, _, b in sorted(tiles, key=lambda t: t[1]):
        running[pos] = min(b, running.get(pos, math.inf))
        best[pos, sec] = running[pos]
    out = []
    for pos, sec, sigma, b in tiles:
        extra = max(0.0, b * b - best[pos, sec] ** 2) * scale * scale
        out.append(math.sqrt(sigma * sigma + extra))
    return out
