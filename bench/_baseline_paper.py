"""The straightforward MHFD, as published: materialise every scale, then reduce.

Used by ``bench/speed.py`` and ``bench/memory.py`` as the baseline the streaming core
is compared against. It follows the authors' description step by step: stretch,
one forward FFT, one inverse FFT *per Gaussian level* kept in a stack, DoG levels
as differences of neighbouring levels (a second stack), maximum over scale,
threshold, 3×3 local maxima with a maximum filter. Memory is O(levels · image),
which is what ran the authors' 40 GB A100 out of memory above 4096².
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from focuswatch.backend import Backend
from focuswatch.score.mhfd import PAPER_SATURATION, PAPER_SIGMAS, PAPER_THRESHOLD

__all__ = ["paper_mhfd"]


def paper_mhfd(image: Any, *, backend: Backend, dtype: Any = np.float32) -> int:
    """MHFD count of ``image`` (already at the size to score) the materialise-all way."""
    xp, fft, ndi = backend.xp, backend.fft, backend.ndimage
    u = xp.asarray(image).astype(dtype)
    q = xp.asarray([100 * PAPER_SATURATION, 100 - 100 * PAPER_SATURATION])
    lo, hi = (float(v) for v in backend.asnumpy(xp.percentile(u, q)))
    u = (xp.clip(u, lo, hi) - lo) / (hi - lo)
    H, W = u.shape
    F = fft.rfft2(u)
    wy = xp.asarray(2 * np.pi * np.fft.fftfreq(H)).astype(dtype)[:, None]
    wx = xp.asarray(2 * np.pi * np.fft.rfftfreq(W)).astype(dtype)[None, :]
    w2 = wy * wy + wx * wx
    levels = xp.stack([fft.irfft2(F * xp.exp(-0.5 * s * s * w2), s=(H, W)) for s in PAPER_SIGMAS])
    sig = xp.asarray(np.array(PAPER_SIGMAS[:-1], dtype=dtype))[:, None, None]
    dog = sig * (levels[:-1] - levels[1:])
    m = dog.max(axis=0)
    m[m < PAPER_THRESHOLD * math.sqrt(H * W)] = 0
    peaks = (m == ndi.maximum_filter(m, size=3, mode="nearest")) & (m > 0)
    return int(peaks.sum())
