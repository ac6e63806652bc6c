"""Which way a tile's fine structure runs: the spectrum's orientation, for astigmatism.

Defocus blurs every direction alike; astigmatism (a stigmator out of adjustment)
blurs more along one axis than across it, so the image looks streaked along that
axis and its power spectrum loses the frequencies *along* the streaks first. The
orientation is read from the averaged power spectrum (Welch: Hann-windowed blocks
of ``BLOCK`` px, at most ``MAX_BLOCKS`` spread over the image) in the frequency band
where a blur of σ 1.5-3 px differs most between two directions (``BAND``: periods
of 4-20 px). Per ring of that band, the power above the noise floor (the median
power beyond ``NOISE_BAND``, the frequencies no tissue reaches at these blurs) is
weighted by ``e^{2iθ}`` (θ the frequency's direction) and averaged; the rings are
combined weighted by their share of signal over noise. The result is one complex
number ``z`` (``Orientation.x``, ``.y``): ``|z|`` near 0 for isotropic structure, up
to 1 for structure that only varies in one direction; the frequencies kept are
along ``arg z / 2``, so streaks run at ``arg z / 2 + 90°``.

Tissue is often anisotropic by itself (fibres, membranes in one direction), and
noise correlated along the scan line is too, so ``z`` means little on its own: the
policy compares it with the same tile position's history (``focuswatch.policy``).
Angles are in degrees from the scan line (+x) towards +y (down the rows), in
[0, 180), as ``focuswatch.synth`` takes ``astig_angle_deg``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

__all__ = ["BAND", "BLOCK", "MAX_BLOCKS", "NOISE_BAND", "Orientation", "orientation", "streak_deg"]

#: Side of the blocks whose power spectra are averaged (px).
BLOCK = 128
#: At most this many blocks per image (spread evenly): enough for a stable spectrum
#: (a tile's patches are averaged on top), a few per cent of a patch's scoring time.
MAX_BLOCKS = 16
#: Frequencies (cycles per pixel) read for the orientation: periods of 4-20 px.
BAND = (0.05, 0.25)
#: Frequencies beyond this are the noise floor.
NOISE_BAND = 0.4
# Rings across BAND, each given the same say unless it is mostly noise.
_RINGS = 8


@dataclass(frozen=True)
class Orientation:
    """The spectrum's orientation: ``x + iy = |z|·e^{2iθ}``, θ the direction kept."""

    x: float
    y: float

    @property
    def strength(self) -> float:
        """0 for isotropic structure, towards 1 for structure varying in one direction."""
        return math.hypot(self.x, self.y)

    @property
    def streak_deg(self) -> float:
        """The direction the structure runs along (degrees, [0, 180))."""
        return streak_deg(self.x, self.y)


def streak_deg(x: float, y: float) -> float:
    """Streak direction of an orientation vector (x, y): perpendicular to the kept one."""
    return (math.degrees(math.atan2(y, x)) / 2.0 + 90.0) % 180.0


def _starts(n: int, block: int, count: int) -> list[int]:
    if n <= block:
        return [0]
    k = min(count, max(1, n // block))
    return sorted({round(i * (n - block) / max(k - 1, 1)) for i in range(k)})


def _polar(block: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    fy = np.fft.fftfreq(block)[:, None]
    fx = np.fft.rfftfreq(block)[None, :]
    radius = np.hypot(fy, fx)
    # Rows down, as the image's y: the direction of frequency (fx, fy) in image axes.
    phase = np.exp(2j * np.arctan2(fy, fx))
    return radius, phase


@functools.lru_cache(maxsize=4)
def _geometry(
    block: int,
) -> tuple[np.ndarray[Any, Any], tuple[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], ...]]:
    """The Hann window and, per ring of ``BAND``, the flat indices of its frequencies
    (in the order a boolean mask takes them) with their ``e^{2iθ}``: the same for
    every call, built once (a fifth of the function's time otherwise)."""
    window = np.outer(np.hanning(block), np.hanning(block)).astype(np.float32)
    radius, phase = _polar(block)
    edges = np.linspace(BAND[0], BAND[1], _RINGS + 1)
    rings = []
    for lo, hi in itertools.pairwise(edges):
        idx = np.flatnonzero((radius >= lo) & (radius < hi))
        rings.append((idx, phase.ravel()[idx]))
    for a in (window, *(a for ring in rings for a in ring)):
        a.setflags(write=False)
    return window, tuple(rings)


def _noise_floor(power: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The noise's power at every frequency, as a separable spectrum ``N(fy)·N(fx)``
    read where no tissue reaches (beyond ``NOISE_BAND`` on the other axis): white
    noise gives a flat floor, noise correlated along the scan line (or resampled)
    its own shape, which would otherwise read as structure along x."""
    fy = np.abs(np.fft.fftfreq(power.shape[0]))
    fx = np.fft.rfftfreq(2 * (power.shape[1] - 1))
    high_y, high_x = fy > NOISE_BAND, fx > NOISE_BAND
    along_x = np.median(power[high_y, :], axis=0)  # N(fx)·N(high fy)
    along_y = np.median(power[:, high_x], axis=1)  # N(fy)·N(high fx)
    corner = float(np.median(power[np.ix_(high_y, high_x)]))
    if corner <= 0:
        return np.zeros_like(power)
    floor: np.ndarray[Any, Any] = np.outer(along_y, along_x) / corner
    return floor


def orientation(image: Any, *, to_host: Callable[[Any], Any] = np.asarray) -> Orientation | None:
    """The orientation of ``image`` (2-D; only the blocks read are copied, through
    ``to_host`` for a device array); None when it has no signal band (smaller than
    one block, constant, or nothing above the noise floor)."""
    if len(image.shape) != 2 or min(image.shape) < BLOCK:
        return None
    side = math.ceil(math.sqrt(MAX_BLOCKS))
    ys = _starts(int(image.shape[0]), BLOCK, side)
    xs = _starts(int(image.shape[1]), BLOCK, side)
    window, rings = _geometry(BLOCK)
    blocks = np.empty((len(ys) * len(xs), BLOCK, BLOCK), dtype=np.float32)
    for k, (y, x) in enumerate(itertools.product(ys, xs)):
        blocks[k] = to_host(image[y : y + BLOCK, x : x + BLOCK])
    blocks -= blocks.mean(axis=(1, 2), keepdims=True)
    blocks *= window
    power = (np.abs(scipy.fft.rfft2(blocks)) ** 2).sum(axis=0, dtype=np.float64)
    # rfft holds half the plane: the other half mirrors it, e^{2iθ} is the same there.
    floor = _noise_floor(power).ravel()
    flat = power.ravel()
    total = 0j
    weight = 0.0
    for idx, phase in rings:
        f_ring = floor[idx]
        signal = np.clip(flat[idx] - f_ring, 0.0, None)
        s = float(signal.sum())
        if s <= 0:
            continue
        # The ring's share of signal: a ring at the noise floor says nothing.
        w = s / (s + float(f_ring.sum()))
        total += w * complex(np.sum(signal * phase) / s)
        weight += w
    if weight <= 0 or not math.isfinite(abs(total)):
        return None
    z = total / weight
    return Orientation(float(z.real), float(z.imag))
