"""Where to score: patch grids (the focus map) and halo tiling of a whole tile.

``patch_bounds`` splits an axis into near-equal parts of about ``patch`` pixels
(sizes differ by at most one pixel, so patch scores are comparable and no sliver
is left at the edge); an axis shorter than 1.5 patches is one part.

``native_mhfd`` scores a whole tile at native resolution in blocks with a halo of
real neighbouring pixels (mirrored at the tile's border), summing the maxima
counted in each block's interior. The stretch limits and the noise estimate are
computed once for the whole tile, so the result equals an untiled run up to the
Gaussian tails cut by the halo (halo ≥ 4·σ_max: relative weight < 1e-4).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import scipy.fft

from focuswatch.backend import Backend
from focuswatch.score._dtypes import stretch_limits, stretched, validate_image
from focuswatch.score.mhfd import MhfdDetail, MhfdParams, mhfd_prepared
from focuswatch.score.noise import NOISE_FACTORS, noise_model

__all__ = [
    "NATIVE_BLOCK",
    "NOISE_BLOCK",
    "default_threads",
    "each_patch",
    "halo_for",
    "native_mhfd",
    "patch_bounds",
    "patch_grid",
    "reflect_index",
]

_T = TypeVar("_T")

#: Interior side of the blocks a native tile is scored in (padded to a fast FFT size).
NATIVE_BLOCK = 1536
#: Side of the blocks the noise level is estimated in (median over blocks).
NOISE_BLOCK = 1024


def patch_bounds(n: int, patch: int) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``max(1, round(n / patch))`` near-equal ``(start, stop)`` parts."""
    if patch < 1:
        raise ValueError(f"patch size must be >= 1, got {patch}")
    if n < 1:
        raise ValueError(f"cannot split an axis of length {n}")
    k = max(1, round(n / patch))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def patch_grid(
    shape: tuple[int, int], patch: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Row and column bounds of the patch grid over an image of ``shape``."""
    return patch_bounds(shape[0], patch), patch_bounds(shape[1], patch)


def default_threads(backend: Backend) -> int:
    """Patches scored at once: one per core on the CPU (NumPy's elementwise passes use
    one core each, so a single patch at a time leaves the others idle between FFTs),
    one on the GPU (its stream is the parallelism)."""
    if backend.is_gpu:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def each_patch(
    bounds: list[tuple[int, int, int, int]],
    read: Callable[[int, int, int, int], Any],
    work: Callable[[Any, Backend], _T],
    *,
    backend: Backend,
    threads: int,
) -> list[_T]:
    """``work(read(*b), backend)`` for every window ``b`` of ``bounds``, in order.

    With ``threads`` > 1 the work runs on that many threads, each with single-threaded
    FFTs (``Backend.fft_workers``); ``read`` always runs on the calling thread, in
    order (a file reader need not be thread-safe), at most ``2·threads`` patches ahead
    of the work, so memory stays bounded. The first failure is raised once the
    patches already started have finished.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if threads == 1 or len(bounds) < 2:
        return [work(read(*b), backend) for b in bounds]
    single = dataclasses.replace(backend, fft_workers=1)
    out: list[_T] = []
    pending: deque[Future[_T]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="patch") as pool:
        try:
            for b in bounds:
                if len(pending) >= 2 * threads:
                    out.append(pending.popleft().result())
                pending.append(pool.submit(work, read(*b), single))
            while pending:
                out.append(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()
    return out


def halo_for(sigmas: tuple[float, ...]) -> int:
    """Halo width for a scale space: 4 of its largest standard deviations."""
    return math.ceil(4 * max(sigmas))


def reflect_index(idx: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    """Indices into ``range(n)`` mirrored at the ends (``d c b a | a b c d``), any distance."""
    period = 2 * n
    i = np.mod(idx, period)
    out: np.ndarray[Any, Any] = np.where(i >= n, period - 1 - i, i)
    return out


def _blocks(
    shape: tuple[int, int], block: int, halo: int
) -> Iterator[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], tuple[int, int, int, int]]]:
    """(row indices, column indices, interior window) of each padded block."""
    H, W = shape
    for y0, y1 in patch_bounds(H, block):
        ny = scipy.fft.next_fast_len(y1 - y0 + 2 * halo, real=True)
        top = (ny - (y1 - y0)) // 2
        rows = reflect_index(np.arange(y0 - top, y0 - top + ny), H)
        for x0, x1 in patch_bounds(W, block):
            nx = scipy.fft.next_fast_len(x1 - x0 + 2 * halo, real=True)
            left = (nx - (x1 - x0)) // 2
            cols = reflect_index(np.arange(x0 - left, x0 - left + nx), W)
            yield rows, cols, (top, top + y1 - y0, left, left + x1 - x0)


def _take(
    image: Any, rows: np.ndarray[Any, Any], cols: np.ndarray[Any, Any], backend: Backend
) -> Any:
    """The padded block as a backend array (host images are cut on the host first)."""
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    part = image[r0:r1, c0:c1]
    part = (
        np.take(np.take(part, rows - r0, axis=0), cols - c0, axis=1)
        if isinstance(part, np.ndarray)
        else (
            backend.xp.take(
                backend.xp.take(part, backend.xp.asarray(rows - r0), axis=0),
                backend.xp.asarray(cols - c0),
                axis=1,
            )
        )
    )
    return backend.xp.asarray(part)


def _tile_noise(
    image: Any, backend: Backend, *, limits: tuple[float, float], dtype: Any
) -> tuple[float, ...]:
    """Noise model of a whole tile (``noise_model``): the median of each entry over
    ``NOISE_BLOCK`` blocks."""
    ests = []
    for y0, y1 in patch_bounds(image.shape[0], NOISE_BLOCK):
        for x0, x1 in patch_bounds(image.shape[1], NOISE_BLOCK):
            u = stretched(
                backend.xp.asarray(image[y0:y1, x0:x1]), backend, limits=limits, dtype=dtype
            )
            ests.append(noise_model(u, backend))
    return tuple(float(v) for v in np.median(np.asarray(ests), axis=0))


def native_mhfd(
    image: Any,
    params: MhfdParams,
    *,
    backend: Backend,
    dtype: Any,
    block: int = NATIVE_BLOCK,
    halo: int | None = None,
) -> MhfdDetail:
    """MHFD of a whole tile at native resolution, in blocks with a halo (see module doc)."""
    if block < 16:
        raise ValueError(f"block must be at least 16 pixels, got {block}")
    minmax = validate_image(image, backend)
    h = halo_for(params.sigmas) if halo is None else halo
    if h < 0:
        raise ValueError(f"halo must be >= 0, got {h}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    limits = stretch_limits(image, backend, saturation=params.saturation, minmax=minmax)
    noise = (
        _tile_noise(image, backend, limits=limits, dtype=dtype)
        if params.noise_k is not None
        else (0.0,) * len(NOISE_FACTORS)
    )
    # Native blocks see real neighbours, so no periodic correction is wanted.
    block_params = MhfdParams(**{**params.__dict__, "periodic": False})
    count = 0
    fine = 0
    contents = []
    for rows, cols, interior in _blocks(shape, block, h):
        u = stretched(_take(image, rows, cols, backend), backend, limits=limits, dtype=dtype)
        d = mhfd_prepared(
            u, block_params, backend=backend, noise=noise, interior=interior, threshold_shape=shape
        )
        count += d.count
        fine += d.fine
        contents.append(d.content)
        del u
    return MhfdDetail(
        count=count,
        content=float(np.median(contents)),
        noise=noise[0],
        thresholds=d.thresholds,
        shape=shape,
        fine=fine,
    )
