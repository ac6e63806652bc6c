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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from focuswatch.backend import Backend
from focuswatch.score.noise import NOISE_MODEL_LENGTH, PAIRED, model_spectrum

__all__ = [
    "HIGH",
    "MID",
    "NOISE_BAND",
    "BandPowers",
    "band_powers",
    "patch_ratio",
    "spectral_ratio",
]

#: The band defocus takes first (cycles per pixel).
HIGH = (0.10, 0.20)
#: The band defocus leaves (cycles per pixel), what the high band is measured against.
MID = (0.02, 0.05)
#: Beyond this on either axis the spectrum is taken as noise.
NOISE_BAND = 0.4

#: ``(P_high, N_high, P_mid, N_mid)``: the band powers and their noise floors.
BandPowers = tuple[float, float, float, float]


@dataclass(frozen=True)
class _Layout:
    """Where the bands and the noise region lie on the rfft grid of one shape: only
    those blocks of the spectrum are read (a third of it), as contiguous slices."""

    ky: int  # rows 0 … ky−1 and H−ky+1 … H−1 hold |f_y| < HIGH[1]
    kx: int  # columns 0 … kx−1 hold f_x < HIGH[1]
    r1: int  # rows r1 … H−r1 hold |f_y| > NOISE_BAND
    c1: int  # columns c1 … hold f_x > NOISE_BAND
    masks: tuple[Any, ...]  # (high, mid) × (top rows, bottom rows), on the backend
    host: tuple[Any, ...]  # the same on the host (the noise model's floor)


def _band_masks(f_y: np.ndarray[Any, Any], f_x: np.ndarray[Any, Any], dtype: str) -> list[Any]:
    radius = np.hypot(f_y[:, None], f_x[None, :])
    return [((radius >= lo) & (radius < hi)).astype(dtype) for lo, hi in (HIGH, MID)]


@functools.lru_cache(maxsize=16)
def _layout(backend: Backend, shape: tuple[int, int], dtype: str) -> _Layout:
    H, W = shape
    f_y, f_x = np.abs(np.fft.fftfreq(H)), np.fft.rfftfreq(W)
    ky = math.ceil(HIGH[1] * H)
    kx = math.ceil(HIGH[1] * W)
    r1 = math.floor(NOISE_BAND * H) + 1
    c1 = math.floor(NOISE_BAND * W) + 1
    top = _band_masks(f_y[:ky], f_x[:kx], dtype)
    bottom = _band_masks(f_y[H - ky + 1 :], f_x[:kx], dtype)
    xp = backend.xp
    host = tuple(m for pair in zip(top, bottom, strict=True) for m in pair)
    return _Layout(ky, kx, r1, c1, tuple(xp.asarray(m) for m in host), host)


def _power(block: Any) -> Any:
    out = block.real * block.real
    out += block.imag * block.imag
    return out


def band_powers(
    F: Any, shape: tuple[int, int], backend: Backend, noise: tuple[float, ...] | None = None
) -> BandPowers | None:
    """The high and mid band powers of the rfft2 ``F`` of an image of ``shape``, with
    their noise floors; None when the image is too small to have a noise region.

    ``noise``: the image's ``noise_model``. Where its correlation was read on paired
    lines (texture repeated in 2×2 pixels), the floors are the model's: such an
    image's spectrum beyond ``NOISE_BAND`` holds a mirror of the tissue's low
    frequencies (a fifth to a tenth of their power), read as noise it took a sharp
    tile's high band down by half and left a blurred one's where it was."""
    H, W = shape
    if min(H, W) < 32:
        return None
    xp = backend.xp
    lay = _layout(backend, shape, F.real.dtype.name)
    ky, kx, r1, c1 = lay.ky, lay.kx, lay.r1, lay.c1
    sides = (F[:ky], F[H - ky + 1 :])
    floor: Callable[[int, int], float]
    if noise is not None and len(noise) == NOISE_MODEL_LENGTH and noise[PAIRED] >= 0.5:
        py, px, scale = model_spectrum(shape, noise)
        along = (py[:ky], py[H - ky + 1 :])

        def floor(band: int, side: int) -> float:
            return float(along[side] @ lay.host[2 * band + side] @ px[:kx]) * scale

    else:
        noise_rows = F[r1 : H - r1 + 1]
        along_x = xp.mean(_power(noise_rows[:, :kx]), axis=0)  # N(f_x)·N(high f_y)
        corner = float(xp.mean(_power(noise_rows[:, c1:])))  # N(high f_y)·N(high f_x)
        if not corner > 0:
            return None
        along_y = [xp.mean(_power(rows[:, c1:]), axis=1) for rows in sides]  # N(f_y)·N(high f_x)

        def floor(band: int, side: int) -> float:
            return float(along_y[side] @ lay.masks[2 * band + side] @ along_x) / corner

    # Each side's powers once, read by both bands.
    powers = [_power(rows[:, :kx]) for rows in sides]
    out = []
    for band in (0, 1):  # high, mid
        p = n = 0.0
        for side, power in enumerate(powers):
            p += float(xp.sum(power * lay.masks[2 * band + side]))
            n += floor(band, side)
        out += [p, n]
    return out[0], out[1], out[2], out[3]


def spectral_ratio(bands: Sequence[BandPowers | None]) -> float | None:
    """The spectral ratio pooled over patches (sums over every patch's bands); None
    when the mid band's signal is not above its noise floor or the high band's is
    nothing: the floor then does not describe the tile's noise."""
    kept = [b for b in bands if b is not None and all(math.isfinite(v) for v in b)]
    high = sum(p - n for p, n, _, _ in kept)
    mid = sum(p - n for _, _, p, n in kept)
    mid_noise = sum(n for _, _, _, n in kept)
    # Tissue stands far above the noise in the mid band at any usable dose (its power
    # above twice the floor); where it does not, or the high band reads as nothing at
    # all, the floor may not be the noise that is there (a very blurred tile also has
    # nothing left there: its count and fine fraction say so). Noise correlated in
    # 2-D (a resampled image) has almost no power beyond NOISE_BAND, so its floor
    # reads far too low or too high: no ratio.
    if not kept or mid <= mid_noise or high <= 0:
        return None
    return high / mid


def patch_ratio(bands: BandPowers | None) -> float | None:
    """One patch's spectral ratio, to compare with its tile's other patches: None unless
    its mid band is at least twice its noise floor (a patch of resin with a little
    tissue: a quotient of noise-sized numbers); 0 where its high band has nothing left
    above the floor (a σ 3 px wrinkle keeps ~1 % of it, often less than the floor's
    error), which ``spectral_ratio`` leaves undefined for a whole tile."""
    if bands is None or not all(math.isfinite(v) for v in bands):
        return None
    high, high_noise, mid, mid_noise = bands
    if not mid >= 2.0 * mid_noise or mid <= 0:
        return None
    return max(high - high_noise, 0.0) / (mid - mid_noise)
