"""MHFD: count the local maxima of the max-over-scale difference of Gaussians.

The streaming core. The image is transformed once (``rfft2``); each DoG level is
one multiplication by a cached transfer function ``σ_i·(G_i − G_{i+1})`` and one
inverse transform, folded straight into a running maximum, so memory is O(image)
whatever the number of scales. Per-level thresholds ``T_i`` are applied by scaling
level i by ``T_min/T_i`` (no pass at all for levels at ``T_min``, i.e. every level
in faithful mode); a pixel counts when the maximum is ``≥ T_min`` and not below any
of its 8 neighbours, which is exactly the paper's "zero below threshold, then 3×3
local maxima, > 0" rule. On the CPU, levels whose Gaussian is negligible (< 1e-9)
over most of the spectrum skip those columns in the inverse transform's first pass:
the same numbers to float32 rounding, ~40 % less work for the coarse levels.

Modes (see the package docstring for why the default differs from the paper):

``faithful``  the authors' algorithm and defaults, plain circular FFT, one
              threshold ``1e-4·sqrt(H·W)``.
``exact``     (``default`` is its old name, the same numbers) same scale space and
              counting, plus a per-level noise floor
              ``T_i = max(contrast, k·n_i)``, ``n_i`` the level's noise standard
              deviation under a noise spectrum measured on the image
              (``noise_model``: level, autocorrelation along x and y, tail factor;
              ``spectral_level_noise``), at least the binned white-noise estimate
              times the level's white-noise gain; and the periodic + smooth
              decomposition so the circular FFT sees no seam at the image border.
              The scale signature (``MhfdDetail.fine``): how many counted maxima
              come from a level with σ_i ≤ ``FINE_SIGMA`` (every mode).
``fast``      (the default mode) ``exact`` with every level computed on the
              coarsest grid on which its σ is still ≥ 1 pixel (spectrum cropped),
              in two bands: full resolution (σ = 1) and the decimated levels,
              merged onto the finest decimated grid. Maxima are counted per band
              on the band's own grid (``count_band_maxima``), so nothing is
              interpolated to full size.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from focuswatch.backend import Backend
from focuswatch.choices import DEFAULT_MODE, MODES
from focuswatch.score._dtypes import (
    float_dtype,
    stretch_limits,
    stretched,
    validate_image,
)
from focuswatch.score.maxima import band_counts, neighbourhood_max
from focuswatch.score.noise import (
    NOISE_FACTORS,
    NOISE_MODEL_LENGTH,
    band_noise,
    freqs,
    gauss_1d,
    level_noise,
    noise_model,
    spectral_level_noise,
)
from focuswatch.score.spectrum import BandPowers, band_powers

__all__ = [
    "FINE_SIGMA",
    "MODES",
    "PAPER_SATURATION",
    "PAPER_SIGMAS",
    "PAPER_SIZE",
    "PAPER_THRESHOLD",
    "MhfdDetail",
    "MhfdParams",
    "content_of",
    "dog_bands",
    "dog_gains",
    "dog_max",
    "fast_factors",
    "fine_levels",
    "image_noise",
    "mhfd",
    "mhfd_detail",
    "mhfd_prepared",
    "params_for",
    "periodic_spectrum",
    "sigma_schedule",
    "stretch_image",
]


#: The authors' schedule: 30 standard deviations, 29 DoG levels.
PAPER_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.linspace(1.0, 30.0 + 29.0 / 28.0, 30))
#: The authors' threshold in orthonormal-FFT units; ×sqrt(H·W) in pixel units.
PAPER_THRESHOLD = 1e-4
#: Fraction of pixels saturated at each end by the histogram stretch (0.175 %).
PAPER_SATURATION = 0.00175
#: The authors resize every tile to this many pixels square.
PAPER_SIZE = 1024

#: Default mode: a level's threshold is at least this many noise standard deviations
#: of that level (a one-sided Gaussian tail of ~3e-5 per pixel).
DEFAULT_NOISE_K = 4.0
#: Default mode: the contrast floor, the paper's threshold at its working size
#: (1e-4·sqrt(1024²)), fixed instead of growing with the image.
DEFAULT_CONTRAST = PAPER_THRESHOLD * PAPER_SIZE

#: The scale signature: a counted maximum is *fine* when the level it comes from (the
#: argmax over the thresholded levels) has σ_i ≤ this many pixels (the paper's
#: schedule: σ 1, 2.07 and 3.14, the three finest of 29 levels). Defocus of σ ≥ 1.5 px
#: removes those first; less tissue removes maxima at every scale alike.
FINE_SIGMA = 3.5


#: A level is computed on a grid decimated by f when its Gaussian's transfer at the
#: coarse Nyquist frequency is below exp(-_CUT) (fast mode only).
_CUT = 12.0
#: ...and when the level's σ is still this many coarse pixels. Linear interpolation
#: of the coarse maxima back to full resolution then errs by up to ~15 % between
#: samples; the counts still rank like exact mode's (Spearman 0.999 on the ISBI
#: through-focus series, see bench/accuracy.py).
_MIN_COARSE_SIGMA = 1.6
#: Fast mode computes each level on the coarsest grid (power-of-two factor) on which
#: its σ is still this many pixels: exact mode's finest level (σ = 1 px at full
#: resolution) sets the sampling every level is held to, aliasing included (its
#: Gaussian's transfer at the grid's Nyquist frequency: exp(-π²/2) = 0.7 %).
#: Maxima are counted on each band's own grid (no interpolation to full size).
_FAST_MIN_SIGMA = 1.0
#: Fast mode samples every this many pixels (each way) for the noise estimate at
#: binning 2 (exact mode: 2) and for the stretch percentiles (exact mode: 1).
_FAST_NOISE_STEP = 4
_FAST_STRETCH_STEP = 2
#: A Gaussian's transfer is below 1e-9 beyond ω = this / σ (sqrt(2·ln 1e9)).
_PRUNE_SIGMA_W = math.sqrt(2 * math.log(1e9))
#: Fast mode inverts levels in batches of products up to this many bytes.
_BATCH_BYTES = 8 * 2**20
#: Prune the inverse transform only when it keeps at most this fraction of columns.
_PRUNE_FRACTION = 0.75
#: Scale of the band-pass used for ``content`` (pixels): structure bigger than
#: any plausible blur, smaller than shading.
_CONTENT_SIGMAS = (8.0, 32.0)
#: Transfer-function stacks above this many bytes are built level by level instead
#: of cached (large native blocks), to keep memory bounded.
_CACHE_BYTES = 256 * 2**20
#: All cached stacks together stay below this; the least recently used go first.
_CACHE_TOTAL_BYTES = 512 * 2**20


def sigma_schedule(
    n: int = 30, *, first: float = 1.0, last: float = 30.0 + 29.0 / 28.0
) -> tuple[float, ...]:
    """``n`` standard deviations evenly spaced from ``first`` to ``last`` (default: the paper's)."""
    if n < 2:
        raise ValueError(f"a scale space needs at least 2 scales, got n={n}")
    if not 0 < first < last:
        raise ValueError(f"need 0 < first < last, got first={first}, last={last}")
    return tuple(float(s) for s in np.linspace(first, last, n))


@dataclass(frozen=True)
class MhfdParams:
    """Everything that decides a count, resolved from a mode plus overrides."""

    mode: str
    sigmas: tuple[float, ...]
    saturation: float
    #: Faithful threshold in orthonormal units (×sqrt(H·W)); None: use ``contrast``.
    threshold: float | None
    #: Absolute threshold in stretched units (image in [0, 1]).
    contrast: float
    #: Noise floor in level noise standard deviations; None: no noise floor.
    noise_k: float | None
    periodic: bool
    decimate: bool

    def base_threshold(self, shape: tuple[int, int]) -> float:
        """The image-independent threshold for an image of ``shape``."""
        if self.threshold is not None:
            return self.threshold * math.sqrt(shape[0] * shape[1])
        return self.contrast


def params_for(
    mode: str = DEFAULT_MODE,
    *,
    sigmas: tuple[float, ...] | None = None,
    threshold: float | None = None,
    contrast: float | None = None,
    noise_k: float | None = None,
    saturation: float | None = None,
) -> MhfdParams:
    """The parameters of ``mode`` with any overrides; bad values raise ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    sig = tuple(float(s) for s in (sigmas if sigmas is not None else PAPER_SIGMAS))
    if len(sig) < 2 or any(s <= 0 for s in sig) or any(b <= a for a, b in itertools.pairwise(sig)):
        raise ValueError("sigmas must be at least 2 positive, strictly increasing values")
    sat = PAPER_SATURATION if saturation is None else float(saturation)
    if not 0.0 <= sat < 0.5:
        raise ValueError(f"saturation must be in [0, 0.5), got {sat}")
    if threshold is not None and threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if contrast is not None and contrast <= 0:
        raise ValueError(f"contrast must be > 0, got {contrast}")
    if noise_k is not None and noise_k <= 0:
        raise ValueError(f"noise_k must be > 0, got {noise_k}")
    if mode == "faithful":
        return MhfdParams(
            mode=mode,
            sigmas=sig,
            saturation=sat,
            threshold=PAPER_THRESHOLD if threshold is None and contrast is None else threshold,
            contrast=contrast if contrast is not None else DEFAULT_CONTRAST,
            noise_k=noise_k,
            periodic=False,
            decimate=False,
        )
    return MhfdParams(
        mode=mode,
        sigmas=sig,
        saturation=sat,
        threshold=threshold,
        contrast=DEFAULT_CONTRAST if contrast is None else contrast,
        noise_k=DEFAULT_NOISE_K if noise_k is None else noise_k,
        periodic=True,
        decimate=mode == "fast",
    )


# --- transfer functions -------------------------------------------------------------


def _gauss_2d(
    backend: Backend, shape: tuple[int, int], sigma: float, dtype: Any, out: Any = None
) -> Any:
    """The Gaussian's transfer function on the rfft grid (separable: one outer product)."""
    xp = backend.xp
    gy = xp.asarray(gauss_1d(shape[0], sigma, real=False).astype(dtype))
    gx = xp.asarray(gauss_1d(shape[1], sigma, real=True).astype(dtype))
    return xp.multiply(gy[:, None], gx[None, :], out=out)


def _build_stack(
    backend: Backend, shape: tuple[int, int], sigmas: tuple[float, ...], dtype: str
) -> Any:
    """DoG transfer functions ``σ_i·(G_i − G_{i+1})`` on the rfft grid, each Gaussian once."""
    xp = backend.xp
    dt = np.dtype(dtype).type
    n = len(sigmas) - 1
    stack = xp.empty((n, shape[0], shape[1] // 2 + 1), dtype=dt)
    nxt = _gauss_2d(backend, shape, sigmas[0], dt)
    for i in range(n):
        cur, nxt = nxt, _gauss_2d(backend, shape, sigmas[i + 1], dt)
        xp.subtract(cur, nxt, out=stack[i])
        stack[i] *= dt(sigmas[i])
    return stack


class _StackCache:
    """Transfer-function stacks keyed on (backend, shape, σ schedule, dtype), bounded
    in bytes rather than entries (a 1024² stack is 61 MB, a native block's 186 MB)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, backend: Backend, shape: tuple[int, int], sigmas: tuple[float, ...], dtype: str
    ) -> Any:
        key = (backend, shape, sigmas, dtype)
        with self._lock:
            stack = self._items.get(key)
            if stack is not None:
                self._items.move_to_end(key)
                return stack
        stack = _build_stack(backend, shape, sigmas, dtype)
        with self._lock:
            self._items[key] = stack
            while (
                sum(int(v.nbytes) for v in self._items.values()) > self.limit
                and len(self._items) > 1
            ):
                self._items.popitem(last=False)
        return stack


_STACKS = _StackCache(_CACHE_TOTAL_BYTES)


def _transfer(
    backend: Backend, shape: tuple[int, int], sigmas: tuple[float, ...], i: int, dtype: Any
) -> Any:
    """Level ``i``'s transfer function: from the cache when small enough, else built now
    (large native blocks: two outer products per level instead of hundreds of MB held)."""
    n_bytes = (len(sigmas) - 1) * shape[0] * (shape[1] // 2 + 1) * np.dtype(dtype).itemsize
    if n_bytes <= _CACHE_BYTES:
        return _STACKS.get(backend, shape, sigmas, np.dtype(dtype).name)[i]
    dt = np.dtype(dtype).type
    h = _gauss_2d(backend, shape, sigmas[i], dt)
    h -= _gauss_2d(backend, shape, sigmas[i + 1], dt)
    h *= dt(sigmas[i])
    return h


def dog_gains(shape: tuple[int, int], sigmas: tuple[float, ...]) -> np.ndarray[Any, Any]:
    """Standard deviation of each DoG level for unit white noise on an image of ``shape``.

    Exact for the circular transform: ``g_i² = mean |σ_i(G_i − G_{i+1})|²`` over the
    full frequency grid, computed from 1-D sums because each Gaussian is separable.
    """
    return np.array(_dog_gains(tuple(shape), tuple(sigmas)))


@functools.lru_cache(maxsize=64)
def _dog_gains(shape: tuple[int, int], sigmas: tuple[float, ...]) -> tuple[float, ...]:
    H, W = shape
    gy = [gauss_1d(H, s, real=False) for s in sigmas]
    gx = [gauss_1d(W, s, real=False) for s in sigmas]
    out = np.empty(len(sigmas) - 1)
    for i in range(len(sigmas) - 1):
        j = i + 1
        s = (
            np.sum(gy[i] ** 2) * np.sum(gx[i] ** 2)
            - 2 * np.sum(gy[i] * gy[j]) * np.sum(gx[i] * gx[j])
            + np.sum(gy[j] ** 2) * np.sum(gx[j] ** 2)
        )
        out[i] = sigmas[i] * math.sqrt(max(s, 0.0) / (H * W))
    return tuple(float(v) for v in out)


# --- image statistics ---------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _periodic_factors(backend: Backend, shape: tuple[int, int], dtype: str) -> tuple[Any, Any]:
    """``(1 − e^{2πiq/H})/λ(q, r)`` and ``(1 − e^{2πir/W})/λ(q, r)`` on the rfft grid,
    ``λ`` the discrete Laplacian's symbol (the mean, ``λ = 0``, gets 0: it belongs
    to the periodic part). Cached per shape: the smooth component's spectrum is then
    two outer products, each multiplied in once."""
    H, W = shape
    xp = backend.xp
    wy, wx = freqs(H, real=False), freqs(W, real=True)
    cdt = np.result_type(np.dtype(dtype), np.complex64)
    den = 2 * np.cos(wy)[:, None] + 2 * np.cos(wx)[None, :] - 4
    den[0, 0] = 1.0
    inv = 1.0 / den
    inv[0, 0] = 0.0
    ey = (1 - np.exp(1j * wy))[:, None] * inv
    ex = (1 - np.exp(1j * wx))[None, :] * inv
    return xp.asarray(ey.astype(cdt)), xp.asarray(ex.astype(cdt))


def periodic_spectrum(u: Any, backend: Backend) -> Any:
    """``rfft2`` of the periodic component of ``u`` (Moisan's periodic + smooth split).

    The circular FFT treats the image as a torus; the jump between opposite borders
    would create DoG responses along every edge of the image. The smooth component
    that carries the jump solves a Poisson equation whose right-hand side lives on
    the border only, so its spectrum comes from two 1-D transforms:
    ``V(q, r) = A(r)·(1 − e^{2πiq/H}) + B(q)·(1 − e^{2πir/W})`` (over the Laplacian's
    symbol) with ``A``, ``B`` the transforms of the bottom−top and right−left
    differences.
    """
    xp, fft = backend.xp, backend.fft
    kw = backend.fft_kwargs()
    ey, ex = _periodic_factors(backend, (int(u.shape[0]), int(u.shape[1])), u.dtype.name)
    F = fft.rfft2(u, **kw)
    A = fft.rfft(u[-1, :] - u[0, :])
    B = fft.fft(u[:, -1] - u[:, 0])
    buf = xp.multiply(ey, A[None, :])
    F -= buf
    xp.multiply(ex, B[:, None], out=buf)
    F -= buf
    return F


# --- the streaming core -------------------------------------------------------------


def _decimation(
    sigma: float,
    shape: tuple[int, int],
    *,
    cut: float = _CUT,
    min_sigma: float = _MIN_COARSE_SIGMA,
) -> int:
    """The largest power-of-two factor a level of standard deviation ``sigma`` allows:
    its Gaussian below ``exp(-cut)`` at the coarse Nyquist frequency, ``sigma`` still
    ``min_sigma`` coarse pixels, the grid still at least 16 pixels."""
    f = 1
    while True:
        g = 2 * f
        if sigma * math.pi / g < math.sqrt(2 * cut) or sigma / g < min_sigma:
            return f
        if shape[0] % g or shape[1] % g or min(shape) // g < 16:
            return f
        f = g


def fast_factors(sigmas: tuple[float, ...], shape: tuple[int, int]) -> list[int]:
    """Fast mode's decimation factor for each DoG level of ``sigmas`` on ``shape``."""
    return [_decimation(s, shape, cut=0.0, min_sigma=_FAST_MIN_SIGMA) for s in sigmas[:-1]]


def _crop_spectrum(F: Any, shape: tuple[int, int], f: int, backend: Backend) -> Any:
    """The rfft spectrum of the image resampled on a grid ``f`` times coarser."""
    xp = backend.xp
    H, W = shape
    hc, wc = H // f, W // f
    half = hc // 2
    cols = wc // 2 + 1
    return xp.concatenate((F[:half, :cols], F[H - (hc - half) :, :cols]), axis=0)


def _upsample(m: Any, shape: tuple[int, int], backend: Backend) -> Any:
    """Periodic linear interpolation of coarse samples (at multiples of r) to ``shape``.

    The grids are nested (``shape`` an integer multiple r of ``m.shape`` on each
    axis), so each output phase j is a fixed blend of a sample and its successor:
    strided writes, no gathers.
    """
    xp = backend.xp
    for axis, n in enumerate(shape):
        nc = m.shape[axis]
        r = n // nc
        if r == 1:
            continue
        nxt = xp.roll(m, -1, axis=axis)
        out_shape = (n, m.shape[1]) if axis == 0 else (m.shape[0], n)
        out = xp.empty(out_shape, dtype=m.dtype)
        for j in range(r):
            w = m.dtype.type(j / r)
            phase = out[j::r] if axis == 0 else out[:, j::r]
            if j == 0:
                phase[...] = m
            else:
                xp.subtract(nxt, m, out=phase)
                phase *= w
                phase += m
        m = out
    return m


def _pruned_columns(sigma: float, width: int) -> int:
    """rfft columns that matter for a Gaussian of ``sigma`` (transfer ≥ 1e-9), plus one."""
    k = math.ceil(_PRUNE_SIGMA_W / sigma * width / (2 * math.pi)) + 1
    return min(k, width // 2 + 1)


def _levels_max(
    Fs: Any,
    sh: tuple[int, int],
    levels: list[int],
    *,
    sigmas: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    f: int,
    backend: Backend,
    dtype: Any,
    m: Any = None,
    in_place: bool = False,
) -> Any:
    """Fold ``scales[i]·DoG_i`` for ``levels`` into the running maximum ``m`` (or a new
    one) on the grid of shape ``sh``, ``f`` times coarser than the image (``Fs`` is the
    spectrum already cropped to it). ``in_place``: inverse column passes in place
    (fast mode; the same to rounding, faster on the CPU)."""
    xp, fft = backend.xp, backend.fft
    kw = backend.fft_kwargs()
    coarse = tuple(s / f for s in sigmas)
    buf = None
    work = None  # for pruned inverses: zero beyond the columns in use
    hbuf = None  # fast mode: the scaled transfer
    used = 0
    n_cols = Fs.shape[1]
    if in_place:
        # Fast mode: the levels whose inverse is not pruned run a few at a time as
        # one batched transform (the same arithmetic per level; on the small grids
        # the per-call overhead was most of the time).
        whole = [
            i
            for i in levels
            if backend.is_gpu or _pruned_columns(coarse[i], sh[1]) > _PRUNE_FRACTION * n_cols
        ]
        levels = [i for i in levels if i not in whole]
        per = max(1, _BATCH_BYTES // (int(Fs.size) * np.dtype(Fs.dtype).itemsize))
        for j in range(0, len(whole), per):
            m = _batch_max(
                Fs,
                sh,
                whole[j : j + per],
                coarse=coarse,
                scales=scales,
                f=f,
                backend=backend,
                dtype=dtype,
                m=m,
            )
    for i in levels:
        H_i = _transfer(backend, sh, coarse, i, dtype)
        # The coarse irfft divides by f² fewer points, and the transfer carries the
        # coarse σ_i/f as its scale normalisation: together a factor f too many.
        s = float(scales[i]) / f
        if in_place and s != 1.0:
            # Fast mode scales the real transfer (half the bytes of the complex
            # product) and multiplies once; exact modes keep their rounding.
            if hbuf is None:
                hbuf = xp.empty_like(H_i)
            H_i = xp.multiply(H_i, dtype(s), out=hbuf)
            s = 1.0
        k = _pruned_columns(coarse[i], sh[1]) if not backend.is_gpu else n_cols
        if k > _PRUNE_FRACTION * n_cols:
            if buf is None:
                buf = xp.empty_like(Fs)
            xp.multiply(Fs, H_i, out=buf)
            if s != 1.0:
                buf *= dtype(s)
            if not in_place or backend.is_gpu:
                d = fft.irfft2(buf, s=sh, overwrite_x=True, **kw)
            else:
                # The column pass in place, then the row pass: what irfft2 computes
                # without its complex temporary (allocation and page faults cost
                # ~40 %); not always bit for bit the same, so exact modes keep irfft2.
                d = fft.irfft(fft.ifft(buf, axis=0, overwrite_x=True, **kw), n=sh[1], axis=1, **kw)
        else:
            # Beyond column k the level's transfer is below 1e-9: those columns of
            # the product are zero, so the column pass of the inverse transform
            # only needs the first k columns (same result to rounding, ~40 % less).
            if work is None:
                work = xp.zeros_like(Fs)
            part = work[:, :k]
            xp.multiply(Fs[:, :k], H_i[:, :k], out=part)
            if s != 1.0:
                part *= dtype(s)
            if used > k:
                work[:, k:used] = 0
            used = k
            if in_place:
                col = fft.ifft(part, axis=0, overwrite_x=True, **kw)
                if not xp.may_share_memory(col, work):  # in place where the FFT allows
                    work[:, :k] = col
            else:
                work[:, :k] = fft.ifft(part, axis=0, **kw)
            d = fft.irfft(work, n=sh[1], axis=1, **kw)
        if m is None:
            m = d
        else:
            xp.maximum(m, d, out=m)
    return m


def _batch_max(
    Fs: Any,
    sh: tuple[int, int],
    batch: list[int],
    *,
    coarse: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    f: int,
    backend: Backend,
    dtype: Any,
    m: Any,
) -> Any:
    """Fold the levels of ``batch`` into ``m`` (or a new maximum) with one batched
    inverse transform: each level's transfer scaled by ``scales[i]/f``, times ``Fs``,
    as ``_levels_max``'s in-place path does for one level."""
    xp, fft = backend.xp, backend.fft
    kw = backend.fft_kwargs()
    hs = xp.empty((len(batch), *Fs.shape), dtype=dtype)
    for j, i in enumerate(batch):
        xp.multiply(
            _transfer(backend, sh, coarse, i, dtype), dtype(float(scales[i]) / f), out=hs[j]
        )
    prod = xp.multiply(hs, Fs[None])
    del hs
    if backend.is_gpu:
        d = fft.irfft2(prod, s=sh, axes=(1, 2), overwrite_x=True, **kw)
    else:
        d = fft.irfft(fft.ifft(prod, axis=1, overwrite_x=True, **kw), n=sh[1], axis=2, **kw)
    top = d[0] if len(batch) == 1 else d.max(axis=0)
    if m is None:
        return top
    return xp.maximum(m, top, out=m)


def dog_bands(
    F: Any,
    shape: tuple[int, int],
    *,
    sigmas: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    backend: Backend,
    dtype: Any,
    factors: list[int],
) -> tuple[Any, tuple[int, Any] | None]:
    """Fast mode's maximum over levels in two resolution bands: ``(fine, (f, coarse))``.

    ``fine`` is ``max scales[i]·DoG_i`` over the levels with factor 1, at full
    resolution (``None`` if there are none); ``coarse`` the same over all decimated
    levels on the grid of the smallest factor ``f`` > 1 (``None`` if none). Coarser
    groups are computed on their own grids (spectrum cropped: exact samples) and
    their maxima interpolated linearly onto the next finer grid, all well below full
    size; ``count_band_maxima`` counts without interpolating to full resolution.
    """
    fine, coarse, _ = _dog_bands(
        F,
        shape,
        sigmas=sigmas,
        scales=scales,
        backend=backend,
        dtype=dtype,
        factors=factors,
        n_fine=0,
    )
    return fine, coarse


def _dog_bands(
    F: Any,
    shape: tuple[int, int],
    *,
    sigmas: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    backend: Backend,
    dtype: Any,
    factors: list[int],
    n_fine: int,
) -> tuple[Any, tuple[int, Any] | None, Any]:
    """``dog_bands`` plus the coarse band's maximum over its levels ``≥ n_fine`` only
    (on the coarse band's grid; ``None`` when no decimated level is below ``n_fine``,
    i.e. no coarse sample can come from a fine level). A coarse sample whose band
    value is above that snapshot comes from a fine level (the scale signature)."""
    n_levels = len(sigmas) - 1
    if len(factors) != n_levels:
        raise ValueError(f"need one factor per level ({n_levels}), got {len(factors)}")
    # Coarsest grid first: its running maximum is interpolated to the next finer
    # grid and carried on there. Within a grid the coarse-scale levels go first, so
    # the maximum over them alone can be kept before the fine ones are folded in.
    m = None
    snap = None
    snapped = False
    coarse: tuple[int, Any] | None = None
    fine = None
    xp = backend.xp
    for f in sorted(set(factors), reverse=True):
        levels = [i for i in range(n_levels) if factors[i] == f]
        if f == 1:
            Fs, sh = F, shape
        else:
            Fs, sh = _crop_spectrum(F, shape, f, backend), (shape[0] // f, shape[1] // f)
            if m is not None:
                m = _upsample(m, sh, backend)
            if snap is not None:
                snap = _upsample(snap, sh, backend)
        kw: dict[str, Any] = {
            "sigmas": sigmas,
            "scales": scales,
            "f": f,
            "backend": backend,
            "dtype": dtype,
            "in_place": True,
        }
        if f == 1:
            fine = _levels_max(Fs, sh, levels, m=None, **kw)
            continue
        late = [i for i in levels if i >= n_fine]
        early = [i for i in levels if i < n_fine]
        if late:
            m = _levels_max(Fs, sh, late, m=m, **kw)
        if early:
            if not snapped:
                # Every coarse-scale level is in by now (factors grow with σ).
                snap = m.copy() if m is not None else xp.full(sh, -xp.inf, dtype=dtype)
                snapped = True
            m = _levels_max(Fs, sh, early, m=m, **kw)
        coarse = (f, m)
    return fine, coarse, snap


def dog_max(
    F: Any,
    shape: tuple[int, int],
    *,
    sigmas: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    backend: Backend,
    dtype: Any,
    decimate: bool = False,
) -> Any:
    """``max_i scales[i]·DoG_i`` from the image's rfft spectrum ``F``, streaming over levels.

    Holds the spectrum, one product buffer and the running maximum. With
    ``decimate``, levels run on fast mode's coarser grids (``dog_bands``) and the
    coarse maximum is interpolated back to full resolution (linearly).
    """
    if not decimate:
        return _levels_max(
            F,
            shape,
            list(range(len(sigmas) - 1)),
            sigmas=sigmas,
            scales=scales,
            f=1,
            backend=backend,
            dtype=dtype,
        )
    fine, coarse = dog_bands(
        F,
        shape,
        sigmas=sigmas,
        scales=scales,
        backend=backend,
        dtype=dtype,
        factors=fast_factors(sigmas, shape),
    )
    if coarse is None:
        return fine
    m = _upsample(coarse[1], shape, backend)
    if fine is not None:
        backend.xp.maximum(m, fine, out=m)
    return m


def fine_levels(sigmas: tuple[float, ...]) -> int:
    """How many of the first DoG levels of ``sigmas`` are fine (σ_i ≤ ``FINE_SIGMA``)."""
    return sum(1 for s in sigmas[:-1] if s <= FINE_SIGMA)


def _dog_max_split(
    F: Any,
    shape: tuple[int, int],
    *,
    sigmas: tuple[float, ...],
    scales: np.ndarray[Any, Any],
    backend: Backend,
    dtype: Any,
    n_fine: int,
) -> tuple[Any, Any]:
    """``dog_max`` (exact) and the maximum over the first ``n_fine`` levels alone
    (``None`` when ``n_fine`` is 0; ``M`` itself when every level is fine): the
    fine levels run first and their running maximum is copied once."""
    n_levels = len(sigmas) - 1
    kw: dict[str, Any] = {
        "sigmas": sigmas,
        "scales": scales,
        "f": 1,
        "backend": backend,
        "dtype": dtype,
    }
    if n_fine <= 0 or n_fine >= n_levels:
        M = _levels_max(F, shape, list(range(n_levels)), **kw)
        return M, (M if n_fine >= n_levels else None)
    Mf = _levels_max(F, shape, list(range(n_fine)), **kw)
    M = _levels_max(F, shape, list(range(n_fine, n_levels)), m=Mf.copy(), **kw)
    return M, Mf


def _count_split(
    M: Any,
    Mf: Any,
    backend: Backend,
    *,
    level: float,
    interior: tuple[int, int, int, int] | None = None,
) -> tuple[int, int]:
    """``count_maxima`` and how many of those maxima come from a fine level (where
    the fine levels' maximum ``Mf`` reaches ``M``)."""
    xp = backend.xp
    c = neighbourhood_max(M, backend)
    if interior is not None:
        y0, y1, x0, x1 = interior
        M, c = M[y0:y1, x0:x1], c[y0:y1, x0:x1]
        Mf = None if Mf is None else Mf[y0:y1, x0:x1]
    peaks = (c <= M) & (level <= M)
    count = int(xp.count_nonzero(peaks))
    if Mf is None or count == 0:
        return count, 0
    return count, int(xp.count_nonzero(peaks & (Mf >= M)))


def _robust_std(a: Any, backend: Backend) -> float:
    xp = backend.xp
    med = xp.median(a)
    return 1.482602218505602 * float(xp.median(xp.abs(a - med)))


def content_of(F: Any, shape: tuple[int, int], backend: Backend, dtype: Any) -> float:
    """Blur-invariant amount of structure: robust std of a coarse band-pass of the image.

    ``F`` is the spectrum of the image stretched to [0, 1], so the result is a
    fraction of the dynamic range. The band (σ 8 to 32 px) lies above any blur the
    scorer must grade and below slow shading; noise is averaged away at σ = 8, so
    empty resin gives ~0.00x and tissue, even badly blurred, clearly more.
    """
    fft = backend.fft
    f = _decimation(_CONTENT_SIGMAS[0], shape)
    Fs, sh = (
        (F, shape)
        if f == 1
        else (_crop_spectrum(F, shape, f, backend), (shape[0] // f, shape[1] // f))
    )
    transfer = _content_transfer(backend, sh, f, np.dtype(dtype).name)
    # A cropped spectrum is a copy of its own: multiplied in place.
    prod = Fs * transfer if f == 1 else backend.xp.multiply(Fs, transfer, out=Fs)
    band = fft.irfft2(prod, s=sh, **backend.fft_kwargs())
    return _robust_std(band, backend)


@functools.lru_cache(maxsize=8)
def _content_transfer(backend: Backend, sh: tuple[int, int], f: int, dtype: str) -> Any:
    """``content_of``'s band-pass on the rfft grid of ``sh`` (``f`` times coarser than
    the image), built once per grid: the same for every patch of a tile."""
    a, b = _CONTENT_SIGMAS
    gy = np.outer(gauss_1d(sh[0], a / f, real=False), gauss_1d(sh[1], a / f, real=True))
    gy -= np.outer(gauss_1d(sh[0], b / f, real=False), gauss_1d(sh[1], b / f, real=True))
    return backend.xp.asarray((gy / (f * f)).astype(dtype))


# --- whole images ---------------------------------------------------------------------


@dataclass(frozen=True)
class MhfdDetail:
    """A count with what went into it (for tests, benches and the curious)."""

    count: int
    content: float
    noise: float
    thresholds: tuple[float, ...]
    shape: tuple[int, int]
    #: How many of the ``count`` maxima come from a fine level (σ_i ≤ ``FINE_SIGMA``).
    fine: int = 0
    #: The spectrum's band powers (``score.spectrum.band_powers``), for the spectral ratio.
    bands: BandPowers | None = None

    @property
    def fine_fraction(self) -> float | None:
        """The scale signature: fine maxima over all maxima (None without maxima)."""
        return self.fine / self.count if self.count else None


def _level_thresholds(
    params: MhfdParams, shape: tuple[int, int], noise: tuple[float, ...]
) -> np.ndarray[Any, Any]:
    """Per-level thresholds ``T_i`` in stretched units for an image of ``shape``."""
    base = params.base_threshold(shape)
    t = np.full(len(params.sigmas) - 1, base)
    if params.noise_k is not None:
        n = level_noise(params.sigmas, noise[: len(NOISE_FACTORS)]) * dog_gains(
            shape, params.sigmas
        )
        if len(noise) == NOISE_MODEL_LENGTH:
            n = np.maximum(n, spectral_level_noise(shape, params.sigmas, noise))
        t = np.maximum(t, params.noise_k * n)
    return t


def image_noise(
    u: Any, params: MhfdParams, *, backend: Backend, mark_unmeasured: bool = False
) -> tuple[float, ...]:
    """The noise model ``mhfd_prepared`` measures on ``u`` (stretched) for ``params``
    (``mark_unmeasured``: see ``noise.noise_model``)."""
    if params.noise_k is None:
        return (0.0,) * len(NOISE_FACTORS)
    step = _FAST_NOISE_STEP if params.decimate else 2
    return noise_model(u, backend, step=step, mark_unmeasured=mark_unmeasured)


def stretch_image(
    image: Any,
    params: MhfdParams,
    *,
    backend: Backend,
    dtype: Any,
    minmax: tuple[float, float],
) -> tuple[Any, tuple[float, float]]:
    """``image`` stretched to [0, 1] in ``dtype`` as ``mhfd_detail`` does, and the limits."""
    # Fast mode takes the stretch percentiles from every other pixel each way (a
    # quarter of the histogram work; 0.175 % of 2^18 samples is still ~460 pixels).
    sample = image[::_FAST_STRETCH_STEP, ::_FAST_STRETCH_STEP] if params.decimate else image
    limits = stretch_limits(sample, backend, saturation=params.saturation, minmax=minmax)
    return stretched(image, backend, limits=limits, dtype=dtype), limits


def mhfd_prepared(
    u: Any,
    params: MhfdParams,
    *,
    backend: Backend,
    noise: tuple[float, ...] | None = None,
    interior: tuple[int, int, int, int] | None = None,
    want_content: bool = True,
    threshold_shape: tuple[int, int] | None = None,
) -> MhfdDetail:
    """Count on ``u``, already stretched to [0, 1] in the working float dtype.

    ``noise`` overrides the estimate (tiling uses one estimate for the whole
    tile); ``threshold_shape`` the shape the faithful threshold is computed for.
    """
    shape = (int(u.shape[0]), int(u.shape[1]))
    dtype = u.dtype.type
    if noise is None:
        noise = image_noise(u, params, backend=backend)
    if params.periodic:
        F = periodic_spectrum(u, backend)
    else:
        F = backend.fft.rfft2(u, **backend.fft_kwargs())
    t = _level_thresholds(params, threshold_shape or shape, noise)
    # Levels at the base threshold need no scaling pass; the others are scaled
    # down to it, and the count compares with the base.
    scales = t.min() / t
    n_fine = fine_levels(params.sigmas)
    if params.decimate:
        fine, coarse, snap = _dog_bands(
            F,
            shape,
            sigmas=params.sigmas,
            scales=scales,
            backend=backend,
            dtype=dtype,
            factors=fast_factors(params.sigmas, shape),
            n_fine=n_fine,
        )
        count, n_fine_max = band_counts(
            fine,
            coarse,
            backend,
            level=float(t.min()),
            shape=shape,
            interior=interior,
            snap=snap,
        )
        del fine, coarse, snap
    else:
        M, Mf = _dog_max_split(
            F,
            shape,
            sigmas=params.sigmas,
            scales=scales,
            backend=backend,
            dtype=dtype,
            n_fine=n_fine,
        )
        count, n_fine_max = _count_split(M, Mf, backend, level=float(t.min()), interior=interior)
        del M, Mf
    content = content_of(F, shape, backend, dtype) if want_content else float("nan")
    if want_content and len(noise) == NOISE_MODEL_LENGTH:
        # Structure above the noise: noise correlated in 2-D keeps power in the content
        # band, and bare resin read as tissue (0.021-0.023 for a 0.02 limit at 30 e/px).
        n = band_noise(shape, *_CONTENT_SIGMAS, noise)
        content = math.sqrt(max(content * content - n * n, 0.0))
    bands = band_powers(F, shape, backend, noise) if want_content else None
    return MhfdDetail(
        count=count,
        content=content,
        noise=noise[0],
        thresholds=tuple(t),
        shape=shape,
        fine=n_fine_max,
        bands=bands,
    )


def _resize(image: Any, size: int, backend: Backend, dtype: Any) -> Any:
    """Bilinear resize to ``size``² (pixel-area aligned, no antialiasing, as the authors)."""
    H, W = image.shape
    if (size, size) == (H, W):
        return image
    return backend.ndimage.zoom(
        image.astype(dtype, copy=False),
        (size / H, size / W),
        order=1,
        mode="nearest",
        grid_mode=True,
    )


def mhfd_detail(
    image: Any,
    *,
    backend: Backend,
    mode: str = DEFAULT_MODE,
    sigmas: tuple[float, ...] | None = None,
    threshold: float | None = None,
    contrast: float | None = None,
    noise_k: float | None = None,
    saturation: float | None = None,
    resize: int | None = None,
    dtype: str | None = None,
) -> MhfdDetail:
    """MHFD of one image with its diagnostics.

    ``resize``: side to resize to first; ``None`` is the mode's choice (faithful:
    the paper's 1024, others: none), ``0`` is none.
    """
    params = params_for(
        mode,
        sigmas=sigmas,
        threshold=threshold,
        contrast=contrast,
        noise_k=noise_k,
        saturation=saturation,
    )
    ft = float_dtype(dtype)
    image = backend.xp.asarray(image)
    minmax = validate_image(image, backend)
    size = resize if resize is not None else (PAPER_SIZE if mode == "faithful" else 0)
    if size:
        if size < 16:
            raise ValueError(f"resize must be at least 16 pixels, got {size}")
        # The authors resize first and stretch the resized image.
        image = _resize(image, size, backend, ft)
        minmax = (float(backend.xp.min(image)), float(backend.xp.max(image)))
    u, _ = stretch_image(image, params, backend=backend, dtype=ft, minmax=minmax)
    return mhfd_prepared(u, params, backend=backend)


def mhfd(
    image: Any,
    *,
    backend: Backend,
    mode: str = DEFAULT_MODE,
    sigmas: tuple[float, ...] | None = None,
    threshold: float | None = None,
    contrast: float | None = None,
    noise_k: float | None = None,
    saturation: float | None = None,
    resize: int | None = None,
    dtype: str | None = None,
) -> float:
    """The MHFD score of one image (number of scale-space maxima; higher is sharper)."""
    return float(
        mhfd_detail(
            image,
            backend=backend,
            mode=mode,
            sigmas=sigmas,
            threshold=threshold,
            contrast=contrast,
            noise_k=noise_k,
            saturation=saturation,
            resize=resize,
            dtype=dtype,
        ).count
    )
