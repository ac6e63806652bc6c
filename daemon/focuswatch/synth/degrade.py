"""What the microscope does to the tissue: defocus and astigmatism, scan-line jitter,
shot noise, the detector's bandwidth along the scan line, gain/offset drift; other
correlated-noise models (:func:`filter_lines`, :func:`resample`); :func:`to_uint`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from focuswatch.synth.texture import FloatImage

__all__ = [
    "IN_FOCUS_WD_UM",
    "SIGMA_PER_UM",
    "defocus_sigma",
    "degrade",
    "filter_lines",
    "resample",
    "through_focus_series",
    "to_uint",
]

#: Blur per µm of defocus in the synthetic microscope (σ px = |Δz| µm × this).
SIGMA_PER_UM = 1.5
#: The working distance at which synthetic tiles are in focus, µm.
IN_FOCUS_WD_UM = 5000.0


def defocus_sigma(dz_um: float, *, sigma_per_um: float = SIGMA_PER_UM) -> float:
    """Gaussian blur σ (pixels) for a focus error of ``dz_um``: linear in |Δz|."""
    if not math.isfinite(dz_um):
        raise ValueError(f"dz_um must be finite, got {dz_um}")
    if not (math.isfinite(sigma_per_um) and sigma_per_um >= 0):
        raise ValueError(f"sigma_per_um must be ≥ 0, got {sigma_per_um}")
    return abs(dz_um) * sigma_per_um


def _astigmatic_blur(image: FloatImage, sy: float, sx: float, angle_deg: float) -> FloatImage:
    """Rotated anisotropic Gaussian blur via FFT, edges reflected."""
    pad = math.ceil(4 * max(sy, sx)) + 1
    padded = np.pad(image, pad, mode="symmetric")
    ph, pw = padded.shape
    fy = np.fft.fftfreq(ph).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(pw).astype(np.float32)[None, :]
    t = math.radians(angle_deg)
    fu = fx * math.cos(t) + fy * math.sin(t)  # frequency along the σx axis
    fv = -fx * math.sin(t) + fy * math.cos(t)
    transfer = np.exp(-2 * np.pi**2 * ((sx * fu) ** 2 + (sy * fv) ** 2))
    blurred = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape)
    return np.asarray(blurred[pad:-pad, pad:-pad], dtype=np.float32)


def _jitter_rows(image: FloatImage, shifts: npt.NDArray[np.float64]) -> FloatImage:
    """Shift each row right by its own subpixel amount (linear interpolation, edges held).

    Rows are grouped by their whole-pixel part, so each group is two slices and a
    blend rather than a per-pixel gather.
    """
    source = -np.asarray(shifts, dtype=np.float64)  # out[x] = image[x + source]
    whole = np.floor(source).astype(np.intp)
    frac = (source - whole).astype(np.float32)
    out = np.empty_like(image, dtype=np.float32)
    for k in np.unique(whole):
        rows = np.flatnonzero(whole == k)
        block = image[rows]
        f = frac[rows][:, None]
        out[rows] = _shift_columns(block, int(k)) * (1 - f) + _shift_columns(block, int(k) + 1) * f
    return out


def _shift_columns(block: npt.NDArray[Any], k: int) -> npt.NDArray[Any]:
    """``out[:, x] = block[:, clip(x + k, 0, w - 1)]`` by slicing."""
    w = block.shape[1]
    k = max(-w, min(w, k))
    if k == 0:
        return block
    if k > 0:
        return np.concatenate([block[:, k:], np.repeat(block[:, -1:], k, axis=1)], axis=1)
    return np.concatenate([np.repeat(block[:, :1], -k, axis=1), block[:, : w + k]], axis=1)


def degrade(
    image: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    defocus_sigma: float = 0.0,
    astigmatism: float = 0.0,
    astig_angle_deg: float = 0.0,
    dose: float | None = None,
    jitter_px: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    gain_ramp: float = 0.0,
    scan_pole: float = 0.0,
    noise_pole_x: float = 0.0,
    noise_sigma_2d: float = 0.0,
) -> FloatImage:
    """What the microscope makes of a perfect ``image`` (float in [0, 1]).

    In acquisition order: defocus blur (Gaussian σ = ``defocus_sigma`` px;
    astigmatism ``a`` in [0, 1) makes it σ(1+a) along ``astig_angle_deg`` and
    σ(1−a) across), scan-line jitter (each row shifted by N(0, ``jitter_px``)),
    shot noise (``dose`` electrons per pixel at full brightness: Poisson counts
    divided by the dose; ``None`` for none), the detector/amplifier bandwidth
    (``scan_pole`` p in [0, 1): a first-order low-pass along each scan line,
    ``y[x] = (1−p)·s[x] + p·y[x−1]``, so the noise's autocorrelation along x is
    p at lag 1 and none across lines, as on a fast raster scan; it also lowers
    the noise), then detector gain and offset, with the gain ramping by
    ``gain_ramp`` (relative) from top to bottom. Returns float32 clipped to [0, 1].

    Correlated shot noise *at the dose's variance* (the noise alone is filtered and
    rescaled to its variance before, the signal untouched): ``noise_pole_x`` p
    (an AR(1) along x: autocorrelation p^k at lag k along x, none across lines)
    and ``noise_sigma_2d`` (a Gaussian of that σ in px on both axes, as a
    resampled or interpolated image has).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    checks = {
        "defocus_sigma": (defocus_sigma, defocus_sigma >= 0),
        "astigmatism": (astigmatism, 0 <= astigmatism < 1),
        "jitter_px": (jitter_px, jitter_px >= 0),
        "gain": (gain, gain > 0),
        "gain_ramp": (gain_ramp, -1 < gain_ramp < 1),
        "scan_pole": (scan_pole, 0 <= scan_pole < 1),
        "noise_pole_x": (noise_pole_x, 0 <= noise_pole_x < 1),
        "noise_sigma_2d": (noise_sigma_2d, 0 <= noise_sigma_2d <= 4),
    }
    for name, (value, ok) in checks.items():
        if not (math.isfinite(value) and ok):
            raise ValueError(f"{name} out of range: {value}")
    if dose is not None and not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be > 0 electrons per pixel (or None), got {dose}")
    if not (math.isfinite(offset) and math.isfinite(astig_angle_deg)):
        raise ValueError("offset and astig_angle_deg must be finite")

    out = img
    if defocus_sigma > 0:
        sx = defocus_sigma * (1 + astigmatism)
        sy = defocus_sigma * (1 - astigmatism)
        if astigmatism == 0 or astig_angle_deg % 180 == 0:
            out = ndimage.gaussian_filter(out, (sy, sx), mode="reflect")
        elif astig_angle_deg % 180 == 90:
            out = ndimage.gaussian_filter(out, (sx, sy), mode="reflect")
        else:
            out = _astigmatic_blur(out, sy, sx, astig_angle_deg)
    rows = img.shape[0]
    shifts = jitter_px * rng.standard_normal(size=(rows,)) if jitter_px > 0 else None
    ramp = np.linspace(1 - gain_ramp / 2, 1 + gain_ramp / 2, rows, dtype=np.float32) * gain
    result = np.empty(img.shape, np.float32)
    # Row bands keep the temporaries (float64 counts for Poisson) small on 8k tiles.
    band = max(1, (1 << 22) // max(img.shape[1], 1))
    for y0 in range(0, rows, band):
        y1 = min(rows, y0 + band)
        part = np.asarray(out[y0:y1], dtype=np.float32)
        if shifts is not None:
            part = _jitter_rows(part, shifts[y0:y1])
        if dose is not None:
            counts = rng.poisson(np.clip(part, 0.0, None).astype(np.float64) * dose)
            noisy = (counts / dose).astype(np.float32)
            if noise_pole_x > 0 or noise_sigma_2d > 0:
                noisy = part + _correlate_noise(noisy - part, noise_pole_x, noise_sigma_2d)
            part = noisy
        if scan_pole > 0:
            part = _line_lowpass(part, scan_pole)
        if gain != 1.0 or gain_ramp != 0.0:
            part = part * ramp[y0:y1, None]
        if offset != 0.0:
            part = part + np.float32(offset)
        np.clip(part, 0.0, 1.0, out=result[y0:y1])
    return result


def _line_lowpass(part: npt.NDArray[np.float32], pole: float) -> npt.NDArray[np.float32]:
    """First-order low-pass along each row, started in its steady state (no transient)."""
    from scipy import signal

    b, a = [1.0 - pole], [1.0, -pole]
    zi = signal.lfilter_zi(b, a)[None, :] * part[:, :1].astype(np.float64)
    out, _ = signal.lfilter(b, a, part.astype(np.float64), axis=1, zi=zi)
    return np.asarray(out, dtype=np.float32)


def _correlate_noise(
    noise: npt.NDArray[np.float32], pole: float, sigma: float
) -> npt.NDArray[np.float32]:
    """``noise`` made correlated (AR(1) along rows, then a 2-D Gaussian), its
    variance kept (each filter's white-noise power gain divided out)."""
    out = noise.astype(np.float64)
    if pole > 0:
        from scipy import signal

        out = signal.lfilter([math.sqrt(1 - pole * pole)], [1.0, -pole], out, axis=1)
    if sigma > 0:
        out = ndimage.gaussian_filter(out, sigma, mode="reflect")
        r = math.ceil(4 * sigma)
        delta = np.zeros((2 * r + 1, 2 * r + 1))
        delta[r, r] = 1.0
        out /= math.sqrt(float(np.sum(ndimage.gaussian_filter(delta, sigma) ** 2)))
    return out.astype(np.float32)


def filter_lines(image: npt.ArrayLike, taps: Sequence[float]) -> FloatImage:
    """``image`` filtered along each row (x, the fast-scan axis) by the FIR ``taps``
    (normalised to sum 1, mirrored at the ends): a detector response that spreads
    each pixel's signal, and its noise, over the next few pixels of the line."""
    img = np.asarray(image, dtype=np.float32)
    h = np.asarray(taps, dtype=np.float64)
    if img.ndim != 2 or h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)) or h.sum() <= 0:
        raise ValueError("need a 2-D image and finite taps with a positive sum")
    h = h / h.sum()
    # correlate1d with the kernel reversed and shifted: pixel x gets taps[k]·s[x − k].
    out: FloatImage = np.clip(
        ndimage.convolve1d(img, h, axis=1, mode="reflect", origin=-((h.size - 1) // 2)), 0.0, 1.0
    ).astype(np.float32)
    return out


def resample(image: npt.ArrayLike, factor: float, *, order: int = 1) -> FloatImage:
    """``image`` (noise and all) resampled by ``factor`` on each axis with a spline of
    ``order`` (1: bilinear, 3: cubic), as an export or stitching step does: the noise
    becomes correlated between neighbouring pixels in both axes."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    if not (math.isfinite(factor) and 0.25 <= factor <= 4):
        raise ValueError(f"factor must be in [0.25, 4], got {factor}")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"order must be 0-5, got {order}")
    out: FloatImage = np.clip(
        ndimage.zoom(img, factor, order=order, mode="reflect", grid_mode=True), 0.0, 1.0
    ).astype(np.float32)
    return out


def to_uint(image: npt.ArrayLike, bits: int) -> npt.NDArray[np.unsignedinteger[Any]]:
    """[0, 1] floats to the full range of 8- or 16-bit unsigned integers (rounded)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = (1 << bits) - 1
    scaled = np.rint(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * top)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def through_focus_series(
    image: npt.ArrayLike,
    *,
    sigmas: Iterable[float],
    dose: float | None,
    rng: np.random.Generator,
    **options: Any,
) -> list[FloatImage]:
    """``image`` blurred by each σ in ``sigmas`` (px), each with fresh shot noise;
    ``options`` go to ``degrade`` (``astigmatism``, ``scan_pole``, ...)."""
    return [degrade(image, rng=rng, defocus_sigma=float(s), dose=dose, **options) for s in sigmas]
