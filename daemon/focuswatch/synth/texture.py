"""EM-like tissue texture, deterministic by seed: :func:`neuropil` and :func:`resin`.

Serial sections: every random input is built from standard-normal "latents" that
rotate slowly from one independent draw to the next (``cos θ·Z_k + sin θ·Z_{k+1}``
keeps them standard normal), so consecutive sections of one position look alike,
every section has the same statistics, and no section is a cross-fade of two images.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage, special

__all__ = ["FloatImage", "Latent", "neuropil", "resin", "serial_section"]

FloatImage = npt.NDArray[np.float32]
# name, shape -> standard-normal array; the only source of randomness in rendering.
Latent = Callable[[str, tuple[int, ...]], npt.NDArray[np.float32]]

_RESIN_LEVEL: Final = 0.82

# ------------------------------------------------------------------- latents


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng_latent(rng: np.random.Generator) -> Latent:
    """Latents drawn from one generator (via one seed, so call order does not matter)."""
    base = int(rng.integers(0, 2**63))

    def latent(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        gen = np.random.default_rng([base, _key(name)])
        return gen.standard_normal(shape, dtype=np.float32)

    return latent


def _drifting_latent(seed: Sequence[int], t: float) -> Latent:
    """Latents of one tile position at 'time' ``t`` (section number times drift).

    Between integer times the latent rotates from draw ``k`` to draw ``k+1``; a
    rotation of two independent standard normals is again standard normal.
    """
    k = math.floor(t)
    frac = t - k
    a, b = math.cos(math.pi / 2 * frac), math.sin(math.pi / 2 * frac)

    def latent(name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        def draw(step: int) -> npt.NDArray[np.float32]:
            gen = np.random.default_rng([*seed, step + (1 << 20), _key(name)])
            return gen.standard_normal(shape, dtype=np.float32)

        z = draw(k)
        if frac == 0.0:
            return z
        z *= np.float32(a)
        z += np.float32(b) * draw(k + 1)
        return z

    return latent


# --------------------------------------------------------------- smooth fields


def _interp_matrix(n_out: int, n_in: int, step: float, skip: float) -> npt.NDArray[np.float32]:
    """(n_out, n_in) linear-interpolation weights; row y samples ``(y+0.5)/step - 0.5 + skip``."""
    pos = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) / step - 0.5 + skip, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = pos - i0
    weights = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), (1 - f).astype(np.float32))
    np.add.at(weights, (rows, i1), f.astype(np.float32))
    return weights


def _resize_linear(
    grid: npt.NDArray[Any], shape: tuple[int, int], step: float, skip: float
) -> FloatImage:
    """Bilinear upsampling of a small ``grid`` by ``step``, dropping ``skip`` cells first.

    Output pixel ``y`` samples grid coordinate ``(y + 0.5) / step - 0.5 + skip``.
    Done as two small matrix products (the grid is coarse), which is several
    times faster than gathering pixels or scipy's ``zoom``.
    """
    wy = _interp_matrix(shape[0], grid.shape[0], step, skip)
    wx = _interp_matrix(shape[1], grid.shape[1], step, skip)
    return np.ascontiguousarray(wy @ grid.astype(np.float32, copy=False) @ wx.T)


def _double_axis(a: npt.NDArray[np.float32], axis: int) -> npt.NDArray[np.float32]:
    """Linear 2x upsampling along ``axis`` (pixel centres aligned, edges held)."""
    a = np.moveaxis(a, axis, 0)
    prev = np.concatenate([a[:1], a[:-1]], axis=0)
    nxt = np.concatenate([a[1:], a[-1:]], axis=0)
    out = np.empty((2 * a.shape[0], *a.shape[1:]), np.float32)
    out[0::2] = 0.75 * a + 0.25 * prev
    out[1::2] = 0.75 * a + 0.25 * nxt
    return np.moveaxis(out, 0, axis)


def _field(latent: Latent, name: str, shape: tuple[int, int], corr_px: float) -> FloatImage:
    """Smooth standard-normal field with correlation length ~``corr_px``.

    Drawn on a coarse grid and interpolated up, so its cost does not grow with
    the correlation length (a Gaussian filter at full size would).
    """
    h, w = shape
    step = max(corr_px / 2.0, 1.0)
    margin = 2
    gh, gw = math.ceil(h / step) + 2 * margin, math.ceil(w / step) + 2 * margin
    z = ndimage.gaussian_filter(latent(name, (gh, gw)), 1.0, mode="wrap")
    z *= 2.0 * math.sqrt(math.pi)  # unit white noise has std 1/(2√π) after a σ=1 filter
    return _resize_linear(z, shape, step, margin)


def _upsample(image: npt.NDArray[Any], factor: int, shape: tuple[int, int], order: int) -> Any:
    """``image`` at ``factor`` times the size, cropped to ``shape`` (order 0 or 1)."""
    if factor == 1:
        return image[: shape[0], : shape[1]]
    if order == 0:
        iy = np.minimum(np.arange(shape[0]) // factor, image.shape[0] - 1)
        ix = np.minimum(np.arange(shape[1]) // factor, image.shape[1] - 1)
        return image[iy[:, None], ix[None, :]]
    if factor != 2:
        raise ValueError(f"linear upsampling by {factor} is not supported (only 2)")
    doubled = _double_axis(_double_axis(image.astype(np.float32, copy=False), 0), 1)
    return np.ascontiguousarray(doubled[: shape[0], : shape[1]])


# ------------------------------------------------------------------ cell network


@dataclass(frozen=True)
class _Cells:
    """A warped Voronoi partition: distance to the nearest boundary and cell ids."""

    dist: FloatImage  # distance to the cell boundary, in pixels of the grid it was built on
    ids: npt.NDArray[np.int32]
    count: int


def _cells(
    latent: Latent, name: str, shape: tuple[int, int], cell_px: float, warp: tuple[Any, Any]
) -> _Cells:
    """Worley (F2 − F1) cells with one jittered seed per grid cell, rows in bands."""
    h, w = shape
    c = cell_px
    pad = 3
    gh, gw = math.ceil(h / c) + 2 * pad, math.ceil(w / c) + 2 * pad
    jitter = special.ndtr(latent(name + ".jitter", (2, gh, gw))).astype(np.float32)
    iy, ix = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32))
    seed_y = ((iy.T - pad + jitter[0]) * c).ravel()
    seed_x = ((ix.T - pad + jitter[1]) * c).ravel()
    dist = np.empty(shape, np.float32)
    ids = np.empty(shape, np.int32)
    band = max(1, 2**18 // max(w, 1))
    xs = np.arange(w, dtype=np.float32)
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + warp[0][y0:y1] * c
        xx = xs[None, :] + warp[1][y0:y1] * c
        cy = np.clip(np.floor(yy / c).astype(np.int32) + pad, 1, gh - 2)
        cx = np.clip(np.floor(xx / c).astype(np.int32) + pad, 1, gw - 2)
        home = cy * gw + cx
        d1 = np.full(yy.shape, np.inf, np.float32)
        d2 = np.full(yy.shape, np.inf, np.float32)
        id1 = np.zeros(yy.shape, np.int32)
        d = np.empty(yy.shape, np.float32)
        t = np.empty(yy.shape, np.float32)
        idx = np.empty(yy.shape, np.int32)
        closer = np.empty(yy.shape, bool)
        for offset in (dy * gw + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
            # In place throughout: this loop is most of the texture's cost.
            np.add(home, offset, out=idx)
            np.subtract(yy, seed_y[idx], out=d)
            np.multiply(d, d, out=d)
            np.subtract(xx, seed_x[idx], out=t)
            np.multiply(t, t, out=t)
            d += t  # squared distance: ranking needs no square root
            np.less(d, d1, out=closer)
            np.minimum(d2, d, out=d2)
            np.copyto(d2, d1, where=closer)
            np.copyto(id1, idx, where=closer)
            np.minimum(d1, d, out=d1)
        # ≈ distance to the bisector between the two nearest seeds
        dist[y0:y1] = 0.5 * (np.sqrt(d2) - np.sqrt(d1))
        ids[y0:y1] = id1
    # Distances were measured in warped space; where the warp stretches or squeezes,
    # divide by its local scale so that membranes keep one width everywhere.
    gyy, gyx = np.gradient(warp[0] * c)
    gxy, gxx = np.gradient(warp[1] * c)
    det = (1 + gyy) * (1 + gxx) - gyx * gxy
    dist /= np.sqrt(np.clip(det, 0.25, 4.0))
    return _Cells(dist=dist, ids=ids, count=gh * gw)


# -------------------------------------------------------------------- organelles


def _jittered_grid(
    latent: Latent, name: str, shape: tuple[int, int], spacing: float, extra: int
) -> tuple[Any, Any, Any]:
    """One candidate point per ``spacing``-sized cell: (ys, xs, extra uniforms).

    Jittering a grid, rather than scattering points over the whole tile, keeps
    each point near home as its latent drifts between sections.
    """
    h, w = shape
    gh, gw = math.ceil(h / spacing), math.ceil(w / spacing)
    u = special.ndtr(latent(name, (2 + extra, gh, gw)))
    gy, gx = np.mgrid[0:gh, 0:gw]
    ys, xs = (gy + u[0]) * spacing, (gx + u[1]) * spacing
    keep = (ys < h) & (xs < w)
    return ys[keep], xs[keep], u[2:][:, keep]


def _stamp(layer: FloatImage, ys: Any, xs: Any, kernel: FloatImage) -> None:
    """Add ``kernel`` centred at each (y, x) into ``layer`` (clipped at the edges)."""
    if len(ys) == 0:
        return
    k = kernel.shape[0] // 2
    ky, kx = np.mgrid[-k : k + 1, -k : k + 1]
    yy = ys[:, None] + ky.ravel()[None, :]
    xx = xs[:, None] + kx.ravel()[None, :]
    ok = (yy >= 0) & (yy < layer.shape[0]) & (xx >= 0) & (xx < layer.shape[1])
    weights = np.broadcast_to(kernel.ravel()[None, :], yy.shape)
    np.add.at(layer.reshape(-1), (yy[ok] * layer.shape[1] + xx[ok]), weights[ok])


def _vesicle_kernel(radius: float) -> FloatImage:
    k = math.ceil(radius + 3)
    y, x = np.mgrid[-k : k + 1, -k : k + 1].astype(np.float32)
    rho = np.hypot(y, x)
    ring = np.exp(-(((rho - radius) / 1.1) ** 2))
    return np.asarray(ring * 0.55, dtype=np.float32)


def _mitochondrion(
    image: FloatImage,
    inside: Callable[[Any, Any], Any],
    cy: float,
    cx: float,
    *,
    angle: float,
    half_len: float,
    half_wid: float,
    period: float,
    phase: float,
) -> None:
    """Paint one mitochondrion (dark matrix, double membrane, cristae) into ``image``."""
    r = math.ceil(half_len + 3)
    y0, y1 = max(0, int(cy) - r), min(image.shape[0], int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(image.shape[1], int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    e = np.sqrt((u / half_len) ** 2 + (v / half_wid) ** 2)  # 1 on the outline
    edge_px = (e - 1.0) * half_wid
    body = special.expit(-edge_px / 0.8)
    rim = np.exp(-(((edge_px + 1.5) / 1.2) ** 2))
    cristae = np.cos(2 * np.pi * u / period + phase + 0.25 * np.sin(v / half_wid * 3.0))
    cristae_line = np.exp(-(((1.0 - cristae) / 0.12) ** 2)) * (np.abs(v) < 0.75 * half_wid)
    ok = inside(yy.astype(np.intp), xx.astype(np.intp)) * body
    patch = image[y0:y1, x0:x1]
    value = 0.50 - 0.20 * cristae_line - 0.25 * rim
    patch[...] = patch * (1 - ok) + value * ok


# -------------------------------------------------------------------- rendering


def _render(shape: tuple[int, int], latent: Latent, *, scale: float, density: float) -> FloatImage:
    h, w = shape
    s = scale
    sub = 2 if min(h, w) >= 64 else 1  # cells are smooth: build them at half size
    hs, ws = math.ceil(h / sub), math.ceil(w / sub)
    small = (hs, ws)

    # Cell partition: large profiles (dendrites, somata) and small ones (axons).
    # Warps bend the straight Voronoi edges; amplitude and smoothness keep them from folding.
    warp_l = (
        0.25 * _field(latent, "warp.ly", small, 190 * s / sub),
        0.25 * _field(latent, "warp.lx", small, 190 * s / sub),
    )
    warp_s = (
        0.25 * _field(latent, "warp.sy", small, 60 * s / sub),
        0.25 * _field(latent, "warp.sx", small, 60 * s / sub),
    )
    large = _cells(latent, "cells.large", small, 150 * s / sub, warp_l)
    fine = _cells(latent, "cells.small", small, 48 * s / sub, warp_s)
    big_flag = special.ndtr(latent("flags.large", (large.count,))).astype(np.float32)
    fine_flag = special.ndtr(latent("flags.small", (fine.count,))).astype(np.float32)
    dendrite = big_flag[large.ids] < 0.3
    dist_sub = np.where(dendrite, large.dist, np.minimum(large.dist, fine.dist)) * sub
    # One id per profile: dendrites are whole large cells, the rest small cells.
    profile = np.where(dendrite, -1 - large.ids, fine.ids)
    tone_l = latent("tone.large", (large.count,)).astype(np.float32)
    tone_s = latent("tone.small", (fine.count,)).astype(np.float32)
    tone = np.where(dendrite, 0.035 * tone_l[large.ids] + 0.02, 0.045 * tone_s[fine.ids])

    dist = _upsample(dist_sub.astype(np.float32), sub, shape, order=1)
    image = np.full(shape, 0.70, np.float32)
    image += _upsample(tone.astype(np.float32), sub, shape, order=0)
    image += 0.04 * _field(latent, "shade", shape, 700 * s)

    # Granular cytoplasm: the fine texture that defocus removes first.
    grain = ndimage.gaussian_filter(latent("grain", shape).astype(np.float32), 0.9 * s)
    image += (0.07 / max(float(grain.std()), 1e-6)) * grain

    # Membranes: dark, ~3 px wide, a little wider where profiles meet.
    width = 1.7 * s
    image -= 0.42 * np.exp(-((dist / width) ** 2))

    # Vesicles: rings ~40 nm across, packed in boutons (some small profiles).
    vy_f, vx_f, extra = _jittered_grid(latent, "vesicles", shape, 11 * s, 1)
    vy, vx = vy_f.astype(np.intp), vx_f.astype(np.intp)
    radius = 4.2 * s
    sy, sx = np.minimum(vy // sub, hs - 1), np.minimum(vx // sub, ws - 1)
    in_fine = ~dendrite[sy, sx]
    bouton = fine_flag[fine.ids[sy, sx]] > 1 - 0.22 * density
    clear = dist_sub[sy, sx] > radius + 2.5 * s
    keep = in_fine & bouton & clear & (extra[0] < 0.85)
    ves = np.zeros(shape, np.float32)
    _stamp(ves, vy[keep], vx[keep], _vesicle_kernel(radius))
    image -= np.minimum(ves, 0.5)

    # Mitochondria: elongated, with cristae, inside one profile.
    my, mx, mu = _jittered_grid(latent, "mito", shape, 150 * s, 5)
    for i in range(len(my)):
        cy, cx = float(my[i]), float(mx[i])
        iy, ix = min(int(cy) // sub, hs - 1), min(int(cx) // sub, ws - 1)
        if mu[0, i] > 0.45 + 0.4 * density or dist_sub[iy, ix] < 14 * s:
            continue
        own = profile[iy, ix]

        def inside(yy: Any, xx: Any, own: Any = own) -> Any:
            yy = np.minimum(yy // sub, hs - 1)
            xx = np.minimum(xx // sub, ws - 1)
            return (profile[yy, xx] == own) & (dist_sub[yy, xx] > 3 * s)

        _mitochondrion(
            image,
            inside,
            cy,
            cx,
            angle=float(mu[1, i] * np.pi),
            half_len=float((24 + 40 * mu[2, i]) * s),
            half_wid=float((13 + 9 * mu[3, i]) * s),
            period=7.5 * s,
            phase=float(mu[4, i] * 2 * np.pi),
        )

    # Sparse tissue: part of the tile is bare resin (section edge, holes). The
    # threshold is the field's own quantile, so every tile keeps the same share of
    # tissue (an all-resin tile would be an empty tile, not a sparse one).
    resin_fraction = min(0.6, max(0.0, (1.0 - density) * 0.8))
    if resin_fraction > 0:
        field = _field(latent, "tissue", shape, 420 * s)
        step = max(1, min(shape) // 64)
        tissue = field - float(np.quantile(field[::step, ::step], resin_fraction))
        mix = special.expit(tissue / 0.05).astype(np.float32)
        edge = np.exp(-((tissue / 0.03) ** 2)).astype(np.float32)
        image = mix * image + (1 - mix) * _RESIN_LEVEL - 0.25 * edge

    # The microscope's own probe size: even a perfect focus is not a delta.
    image = ndimage.gaussian_filter(np.clip(image, 0.0, 1.0), 0.6)
    return np.asarray(image, dtype=np.float32)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (height, width) with both ≥ 1, got {shape!r}")
    return int(shape[0]), int(shape[1])


def neuropil(
    shape: tuple[int, int],
    *,
    rng: np.random.Generator,
    scale: float = 1.0,
    density: float = 1.0,
) -> FloatImage:
    """EM-like brain tissue at ~4 nm/px, float32 in [0, 1], in focus and noiseless.

    Dark cell membranes around profiles of many sizes, vesicle-filled boutons,
    mitochondria with cristae, granular cytoplasm and slow shading. ``scale``
    multiplies every feature size (2.0 looks like 2 nm/px); ``density`` in (0, 1]
    thins the tissue (fewer vesicles and mitochondria, patches of bare resin).
    """
    shape = _check_shape(shape)
    if not 0.05 <= scale <= 50:
        raise ValueError(f"scale must be in [0.05, 50], got {scale}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return _render(shape, _rng_latent(rng), scale=scale, density=density)


def resin(shape: tuple[int, int], *, rng: np.random.Generator) -> FloatImage:
    """An empty tile: bare embedding resin, flat apart from very slow shading."""
    shape = _check_shape(shape)
    latent = _rng_latent(rng)
    shade = _field(latent, "resin", shape, 2.0 * max(shape))
    return np.asarray(np.clip(_RESIN_LEVEL + 0.015 * shade, 0.0, 1.0), dtype=np.float32)


def serial_section(
    shape: tuple[int, int], position: Sequence[int], t: float, *, density: float = 1.0
) -> FloatImage:
    """The tissue of tile position ``position`` (a seed tuple) at 'time' ``t``.

    ``t`` is the section number times the drift per section: consecutive sections of
    one position look alike, and every section has the same statistics.
    """
    return _render(_check_shape(shape), _drifting_latent(position, t), scale=1.0, density=density)
