"""The CPU's FFTs: the part of ``scipy.fft`` the scoring core calls, on ducc0.

ducc0 is the successor of pocketfft (SciPy's FFT) by the same author. On the scorer's
own float32 transforms, one thread, it takes 0.81-0.89 of pocketfft's time summed (the
forward 1024² transform 0.78-0.81, the batched row passes on the decimated grids
0.63-1.05; ``bench/fft_impl.py``): 7-12 % less CPU per patch. The results differ from
pocketfft's in float rounding only, and counts with them, as the GPU's do: by ~0.1 %
typically, up to ~2 % on a small blurred image with few maxima.

Each function takes the arguments of its ``scipy.fft`` namesake that the core passes
and no others (a ``TypeError`` otherwise): the shape arguments only where they name
the output length of an inverse (the input cropped or padded with zeros to fit, as
SciPy does). ``workers`` as in SciPy: None one thread, -1 every core (``-k``: all but
k - 1).
"""

from __future__ import annotations

import os
from typing import Any

import ducc0
import numpy as np

__all__ = ["fft", "ifft", "irfft", "irfft2", "rfft", "rfft2"]

_BACKWARD = 2  # ducc0's inorm: divide by the transform's length, SciPy's "backward" norm


def _threads(workers: int | None) -> int:
    if workers is None:
        return 1
    if workers == 0:
        raise ValueError("workers must not be zero")
    if workers > 0:
        return int(workers)
    n = (os.cpu_count() or 1) + 1 + workers
    if n < 1:
        raise ValueError(f"workers value out of range; got {workers}")
    return n


def _real(x: Any) -> Any:
    """``x`` as the float array SciPy would transform (integers become float64)."""
    a = np.asarray(x)
    if a.dtype.kind == "f" and a.dtype.itemsize >= 4:
        return a
    return a.astype(np.float32 if a.dtype == np.float16 else np.float64)


def _complex(x: Any) -> Any:
    a = np.asarray(x)
    return a if a.dtype.kind == "c" else _real(a)


def _fit(a: Any, axis: int, m: int) -> Any:
    """``a`` cropped or padded with zeros at the end to ``m`` entries along ``axis``."""
    have = a.shape[axis]
    if have == m:
        return a
    if have > m:
        return a[(slice(None),) * (axis % a.ndim) + (slice(0, m),)]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, m - have)
    return np.pad(a, pad)


def rfft2(x: Any, *, axes: tuple[int, int] = (-2, -1), workers: int | None = None) -> Any:
    return ducc0.fft.r2c(_real(x), axes=axes, nthreads=_threads(workers))


def rfft(x: Any, *, axis: int = -1, workers: int | None = None) -> Any:
    return ducc0.fft.r2c(_real(x), axes=(axis,), nthreads=_threads(workers))


def fft(x: Any, *, axis: int = -1, workers: int | None = None) -> Any:
    return ducc0.fft.c2c(_complex(x), axes=(axis,), nthreads=_threads(workers))


def ifft(x: Any, *, axis: int = -1, overwrite_x: bool = False, workers: int | None = None) -> Any:
    """The inverse complex transform; ``overwrite_x``: in place, into ``x`` itself."""
    a = _complex(x)
    inplace = overwrite_x and a.dtype.kind == "c" and a.flags.writeable
    return ducc0.fft.c2c(
        a,
        axes=(axis,),
        forward=False,
        inorm=_BACKWARD,
        out=a if inplace else None,
        nthreads=_threads(workers),
    )


def irfft(
    x: Any,
    n: int | None = None,
    *,
    axis: int = -1,
    overwrite_x: bool = False,
    workers: int | None = None,
) -> Any:
    a = np.asarray(x)
    size = 2 * (a.shape[axis] - 1) if n is None else int(n)
    return ducc0.fft.c2r(
        _fit(a, axis, size // 2 + 1),
        axes=(axis,),
        lastsize=size,
        forward=False,
        inorm=_BACKWARD,
        nthreads=_threads(workers),
        allow_overwriting_input=overwrite_x,
    )


def irfft2(
    x: Any,
    s: tuple[int, int] | None = None,
    *,
    axes: tuple[int, int] = (-2, -1),
    overwrite_x: bool = False,
    workers: int | None = None,
) -> Any:
    """The inverse of ``rfft2``; ``s`` the output's shape along ``axes``."""
    a = np.asarray(x)
    shape = (a.shape[axes[0]], 2 * (a.shape[axes[1]] - 1)) if s is None else s
    return ducc0.fft.c2r(
        _fit(_fit(a, axes[0], int(shape[0])), axes[1], int(shape[1]) // 2 + 1),
        axes=axes,
        lastsize=int(shape[1]),
        forward=False,
        inorm=_BACKWARD,
        nthreads=_threads(workers),
        allow_overwriting_input=overwrite_x,
    )
