"""Synthetic SEM tiles and wafers: realistic enough to rehearse and test focus scoring.

Two layers:

* pure array functions, deterministic by seed: :func:`neuropil` (EM-like tissue
  texture: cell membranes, vesicles, mitochondria with cristae, granular
  cytoplasm), :func:`resin` (an empty tile), :func:`degrade` (defocus blur with
  astigmatism, scan-line jitter, shot noise, detector bandwidth along the scan line,
  gain/offset drift), :func:`filter_lines` and :func:`resample` (other correlated-
  noise models: a FIR detector response along x; a resampled image) and :func:`to_uint`;
* writers: :func:`write_tile` (TIFF with ATLAS FibicsXML, written atomically) and
  :func:`write_wafer` (an acquisition in one of three layouts, plus a
  ``manifest.json`` with the truth for every tile), used by ``focuswatch synth`` and
  the demo. ``LAYOUTS``: ``atlas`` (ATLAS 5 section folders, FibicsXML),
  ``multisem`` (section folders of mFoV folders of 8-bit PNG beam images, and each
  section's ``full_image_coordinates.txt``), ``sbemimage`` (``tiles/g…/t…`` TIFFs
  and the ``meta/logs`` image list and metadata lines, each tile's lines written
  before the tile itself so that a watcher finds them). The grid's rows and columns
  are the layout's two position numbers: mFoV and beam (from 1), grid and tile (from
  0).

Serial sections: every tile position has its own random texture, and the texture
changes continuously with the section number (``drift``), so the same position in
consecutive sections looks alike while different positions do not, as on a real
wafer. Continuity comes from building every random input from standard-normal
"latents" that rotate slowly from one independent draw to the next
(``cos θ·Z_k + sin θ·Z_{k+1}`` keeps them standard normal), so every section has
the same statistics (and the same focus score when in focus) and no section is a
cross-fade of two images.
"""

from __future__ import annotations

import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage, special

__all__ = [
    "LAYOUTS",
    "SynthTile",
    "defocus_sigma",
    "degrade",
    "fibics_xml",
    "filter_lines",
    "load_isbi",
    "main",
    "multisem_folder",
    "neuropil",
    "resample",
    "resin",
    "through_focus_series",
    "to_uint",
    "wafer_plan",
    "write_focus_series",
    "write_manifest",
    "write_section",
    "write_tile",
    "write_wafer",
]

FloatImage = npt.NDArray[np.float32]
# name, shape -> standard-normal array; the only source of randomness in rendering.
Latent = Callable[[str, tuple[int, ...]], npt.NDArray[np.float32]]

DEFAULT_TIMESTAMP: Final = 1752450056
#: The acquisitions ``write_wafer`` writes (``focuswatch synth --layout``).
LAYOUTS: Final = ("atlas", "multisem", "sbemimage")
_SBEM_SLICE_NM: Final = 25.0  # SBEMimage cuts this thin
_OVERLAP: Final = 0.08  # ATLAS mosaics overlap neighbouring tiles by a few percent
_SECTION_PITCH_UM: Final = 2500.0  # sections lie side by side on the wafer
_STAGE_ORIGIN_UM: Final = 10000.0  # where the first section sits on the stage
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


# ---------------------------------------------------------------- degradations


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


def load_isbi(directory: str | Path) -> list[FloatImage]:
    """The ISBI 2012 EM slices in ``directory`` (``0.png``, ``1.png``, ...) as float32 [0, 1].

    Sorted by their numeric index; ``FileNotFoundError`` if there are none.
    """
    from PIL import Image

    folder = Path(directory)
    files = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not files:
        raise FileNotFoundError(f"no ISBI slices (<index>.png) in {folder}")
    slices = []
    for path in files:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"), dtype=np.float32)
        slices.append(pixels / np.float32(255.0))
    return slices


# ---------------------------------------------------------------------- writers


def fibics_xml(
    *,
    width: int,
    height: int,
    row: int,
    col: int,
    pixel_size_um: float,
    stage_x_um: float,
    stage_y_um: float,
    dwell_ns: float,
    working_distance_um: float | None,
) -> str:
    """FibicsXML as ATLAS 5 writes it into TIFF tag 51023 (the fields focuswatch reads)."""
    fov_x, fov_y = width * pixel_size_um, height * pixel_size_um
    focus = (
        f'<Focus units="um">{working_distance_um:.4f}</Focus>'
        if working_distance_um is not None
        else ""
    )
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<Fibics version="1.0">'
        "<Application>Atlas</Application><Version>5.3.3.2</Version>"
        f"<Scan><Ux>{pixel_size_um:.8g}</Ux><Uy>0</Uy><Vx>0</Vx><Vy>{-pixel_size_um:.8g}</Vy>"
        f'<Dwell units="ns">{dwell_ns:.6g}</Dwell>{focus}'
        f'<FOV_X units="um">{fov_x:.6g}</FOV_X><FOV_Y units="um">{fov_y:.6g}</FOV_Y></Scan>'
        f'<Stage><X units="um">{stage_x_um:.4f}</X><Y units="um">{stage_y_um:.4f}</Y>'
        '<Z units="um">0</Z></Stage>'
        f"<Image><Width>{width}</Width><Height>{height}</Height>"
        f"<BoundingBox.Left>{stage_x_um - fov_x / 2:.4f}</BoundingBox.Left>"
        f"<BoundingBox.Right>{stage_x_um + fov_x / 2:.4f}</BoundingBox.Right>"
        f"<BoundingBox.Top>{stage_y_um + fov_y / 2:.4f}</BoundingBox.Top>"
        f"<BoundingBox.Bottom>{stage_y_um - fov_y / 2:.4f}</BoundingBox.Bottom></Image>"
        f"<MosaicInfo><Row>{row}</Row><Col>{col}</Col></MosaicInfo>"
        "</Fibics>"
    )


def _tiff_bytes(image: npt.NDArray[Any], xml: str, compression: str | None) -> bytes:
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        image,
        photometric="minisblack",
        compression=compression,
        metadata=None,
        extratags=[(51023, "s", 0, xml.encode("latin-1"), True)],
    )
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes, *, atomic: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        path.write_bytes(data)
        return
    # ATLAS-like: write "<name>.tmp" beside it, then rename, so a watcher never
    # sees half a tile under the final name.
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tile(
    path: str | Path,
    image_uint: npt.NDArray[Any],
    *,
    row: int,
    col: int,
    section: str | int,
    pixel_size_um: float = 0.004,
    stage_x_um: float,
    stage_y_um: float,
    dwell_ns: float = 100.0,
    working_distance_um: float | None = None,
    compression: str | None = None,
    atomic: bool = True,
    truncate_to: float | None = None,
) -> None:
    """Write ``image_uint`` as an ATLAS-style TIFF with FibicsXML (tag 51023).

    Written to ``<name>.tmp`` and renamed unless ``atomic=False``. ``truncate_to``
    (a fraction in (0, 1)) writes only that leading part of the file: a corrupt
    tile, as left by an interrupted copy. ``section`` is accepted for symmetry
    with the name; FibicsXML does not record it.
    """
    image = np.asarray(image_uint)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image_uint must be 2-D uint8 or uint16, got {image.dtype} {image.shape}")
    if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if truncate_to is not None and not 0 < truncate_to < 1:
        raise ValueError(f"truncate_to must be in (0, 1), got {truncate_to}")
    del section  # only in the file name, as with ATLAS
    xml = fibics_xml(
        width=image.shape[1],
        height=image.shape[0],
        row=row,
        col=col,
        pixel_size_um=pixel_size_um,
        stage_x_um=stage_x_um,
        stage_y_um=stage_y_um,
        dwell_ns=dwell_ns,
        working_distance_um=working_distance_um,
    )
    data = _tiff_bytes(image, xml, compression)
    if truncate_to is not None:
        data = data[: max(8, int(len(data) * truncate_to))]
    _write_atomic(Path(path), data, atomic=atomic)


# ------------------------------------------------------------------------ wafers


@dataclass(frozen=True)
class SynthTile:
    """One tile of a synthetic wafer and the truth about it."""

    path: Path
    section: str
    row: int
    col: int
    defocus_sigma: float
    empty: bool
    corrupt: bool
    stage_x_um: float
    stage_y_um: float
    density: float = 1.0
    layout: str = "atlas"

    @property
    def position(self) -> str:
        """The position as the layout names it (``focuswatch.tiles.layouts``)."""
        if self.layout == "multisem":
            return f"mFoV {self.row}, beam {self.col}"
        if self.layout == "sbemimage":
            return f"grid {self.row - 1}, tile {self.col - 1}"
        return f"r{self.row}-c{self.col}"


def _section_name(layout: str, section: int) -> str:
    """The section as the layout's files say it (what focuswatch reads back)."""
    if layout == "multisem":
        return str(section)
    if layout == "sbemimage":
        return f"{section:05d}"
    return f"{section:03d}"


def _multisem_stamp(t: int) -> str:
    """A MultiSEM-like timestamp (``2025-07-14T0000561234567``): digits, no colons."""
    import time

    return time.strftime("%Y-%m-%dT%H%M%S", time.gmtime(t)) + f"{(t * 7919) % 10**7:07d}"


def multisem_folder(out: Path, section: int) -> Path:
    """A MultiSEM section folder: ``{scan:03d}_S{section}R1`` (scans counted from 1)."""
    return Path(out) / f"{section + 1:03d}_S{section}R1"


def _tile_path(
    out: Path, section: int, row: int, col: int, timestamp: int, *, layout: str = "atlas"
) -> Path:
    if layout == "multisem":
        name = f"{section + 1:03d}_{row:06d}_{col:03d}_{_multisem_stamp(timestamp + section)}.png"
        return multisem_folder(out, section) / f"{row:06d}" / name
    if layout == "sbemimage":
        g, t = f"g{row - 1:04d}", f"t{col - 1:04d}"
        return out / "tiles" / g / t / f"stack_{g}_{t}_s{section:05d}.tif"
    folder = f"S_{section:03d}_{timestamp}"
    return out / folder / f"Tile_r{row}-c{col}_S_{section:03d}_{timestamp}.tif"


def _position_density(seed: int, row: int, col: int) -> float:
    """Tissue density of a grid position: same in every section, varies between positions."""
    u = float(np.random.default_rng([seed, row, col, 0xD]).random())
    return round(0.35 + 0.65 * u, 3)


def _pick(
    spec: int | Iterable[tuple[int, int, int]],
    free: list[tuple[int, int, int]],
    rng: np.random.Generator,
    what: str,
) -> set[tuple[int, int, int]]:
    if isinstance(spec, int):
        if spec < 0 or spec > len(free):
            raise ValueError(f"{what} must be between 0 and {len(free)}, got {spec}")
        chosen = rng.permutation(len(free))[:spec]
        return {free[int(i)] for i in chosen}
    picked = {(int(s), int(r), int(c)) for s, r, c in spec}
    unknown = picked - set(free)
    if unknown:
        raise ValueError(
            f"{what}: no such (section, row, col) free in the wafer: {sorted(unknown)}"
        )
    return picked


def wafer_plan(
    *,
    sections: int,
    rows: int,
    cols: int,
    blur_fraction: float,
    seed: int,
    empty: int | Iterable[tuple[int, int, int]] = 0,
    corrupt: int | Iterable[tuple[int, int, int]] = 0,
    blur_sigmas: Sequence[float] = (2.0, 4.0),
    out: Path = Path(),
    size: int = 1024,
    pixel_size_um: float = 0.004,
    section_start: int = 0,
    timestamp: int = DEFAULT_TIMESTAMP,
    layout: str = "atlas",
) -> list[SynthTile]:
    """Which tiles of a wafer are out of focus, empty or corrupt; deterministic by seed.

    ``layout`` is one of ``LAYOUTS`` (where the tiles are written, not what they show).
    ``empty``/``corrupt`` are counts (placed at random) or explicit
    ``(section, row, col)`` triples. Out-of-focus tiles are
    ``round(blur_fraction × usable tiles)`` of the rest, each with a σ from
    ``blur_sigmas`` in turn. Tiles come in acquisition order (section, row, col).
    """
    for name, value in (("sections", sections), ("rows", rows), ("cols", cols)):
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")
    if not 0 <= blur_fraction <= 1:
        raise ValueError(f"blur_fraction must be in [0, 1], got {blur_fraction}")
    if not blur_sigmas or any(not (math.isfinite(s) and s > 0) for s in blur_sigmas):
        raise ValueError(f"blur_sigmas must be positive σ values, got {tuple(blur_sigmas)}")
    if section_start < 0:
        raise ValueError(f"section_start must be ≥ 0, got {section_start}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    rng = np.random.default_rng([seed, 0x91A4])
    keys = [
        (s, r, c)
        for s in range(section_start, section_start + sections)
        for r in range(1, rows + 1)
        for c in range(1, cols + 1)
    ]
    corrupt_set = _pick(corrupt, keys, rng, "corrupt")
    empty_set = _pick(empty, [k for k in keys if k not in corrupt_set], rng, "empty")
    usable = [k for k in keys if k not in corrupt_set and k not in empty_set]
    n_blur = round(blur_fraction * len(usable))
    blurred = rng.permutation(len(usable))[:n_blur]
    sigma_of = {
        usable[int(i)]: float(blur_sigmas[j % len(blur_sigmas)])
        for j, i in enumerate(sorted(blurred))
    }

    fov = size * pixel_size_um
    plan = []
    for key in keys:
        s, r, c = key
        plan.append(
            SynthTile(
                path=_tile_path(out, s, r, c, timestamp, layout=layout),
                section=_section_name(layout, s),
                row=r,
                col=c,
                defocus_sigma=sigma_of.get(key, 0.0),
                empty=key in empty_set,
                corrupt=key in corrupt_set,
                stage_x_um=round(
                    _STAGE_ORIGIN_UM + s * _SECTION_PITCH_UM + (c - 1) * fov * (1 - _OVERLAP), 4
                ),
                stage_y_um=round(_STAGE_ORIGIN_UM - (r - 1) * fov * (1 - _OVERLAP), 4),
                density=_position_density(seed, r, c),
                layout=layout,
            )
        )
    return plan


def _tile_image(
    tile: SynthTile, *, size: int, dose: float | None, drift: float, seed: int
) -> FloatImage:
    section = int(tile.section)
    rng = np.random.default_rng([seed, section, tile.row, tile.col, 0x5EC])
    if tile.empty:
        clean = resin((size, size), rng=rng)
    else:
        latent = _drifting_latent((seed, tile.row, tile.col), section * drift)
        clean = _render((size, size), latent, scale=1.0, density=tile.density)
    # Brightness and contrast wander a little from section to section.
    section_rng = np.random.default_rng([seed, section, 0x6A1])
    gain = float(1.0 + 0.04 * section_rng.standard_normal())
    offset = float(0.015 * section_rng.standard_normal())
    blurred = tile.defocus_sigma > 0
    return degrade(
        clean,
        rng=rng,
        defocus_sigma=tile.defocus_sigma,
        astigmatism=float(rng.uniform(0.0, 0.25)) if blurred else 0.0,
        astig_angle_deg=float(rng.uniform(0.0, 180.0)),
        dose=dose,
        jitter_px=0.15,
        gain=gain,
        offset=offset,
        gain_ramp=float(rng.uniform(-0.03, 0.03)),
    )


def write_section(
    tiles: Sequence[SynthTile],
    *,
    size: int = 1024,
    bits: int = 8,
    dose: float | None = 30.0,
    drift: float = 0.0,
    seed: int = 0,
    pixel_size_um: float = 0.004,
    compression: str | None = None,
) -> list[SynthTile]:
    """Render and write the planned ``tiles`` (typically one section), in order.

    Pass the same ``size``, ``drift`` and ``seed`` for every section of a wafer.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if dose is not None and not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be > 0 electrons per pixel (or None), got {dose}")
    if not (math.isfinite(drift) and drift >= 0):
        raise ValueError(f"drift must be ≥ 0, got {drift}")
    for tile in tiles:
        image = to_uint(_tile_image(tile, size=size, dose=dose, drift=drift, seed=seed), bits)
        if tile.layout != "atlas":
            _write_other(tile, image, pixel_size_um=pixel_size_um, compression=compression)
            continue
        write_tile(
            tile.path,
            image,
            row=tile.row,
            col=tile.col,
            section=tile.section,
            pixel_size_um=pixel_size_um,
            stage_x_um=tile.stage_x_um,
            stage_y_um=tile.stage_y_um,
            # The working distance that blurs this much (sigma_per_um, as defocus_sigma).
            working_distance_um=IN_FOCUS_WD_UM + tile.defocus_sigma / SIGMA_PER_UM,
            compression=compression,
            truncate_to=0.4 if tile.corrupt else None,
        )
    return list(tiles)


def _append_line(path: Path, line: str) -> None:
    """One line appended and flushed, as a microscope's log grows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", newline="\n") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_other(
    tile: SynthTile, image: npt.NDArray[Any], *, pixel_size_um: float, compression: str | None
) -> None:
    """A MultiSEM beam image or an SBEMimage tile, with its side-file lines first."""
    import io

    wd_um = IN_FOCUS_WD_UM + tile.defocus_sigma / SIGMA_PER_UM
    buffer = io.BytesIO()
    path = Path(tile.path)
    if tile.layout == "multisem":
        from PIL import Image

        # The section folder is two up (section/mFoV/image); coordinates in pixels.
        x_px, y_px = tile.stage_x_um / pixel_size_um, tile.stage_y_um / pixel_size_um
        rel = f"{path.parent.name}\\{path.name}"  # MultiSEM runs on Windows
        _append_line(
            path.parent.parent / "full_image_coordinates.txt", f"{rel}\t{x_px:.3f}\t{y_px:.3f}\t0"
        )
        # MultiSEM beam images are 8-bit.
        eight = image if image.dtype == np.uint8 else (image >> 8).astype(np.uint8)
        Image.fromarray(eight).save(buffer, format="PNG")
    else:
        import tifffile

        base = path.parents[3]
        rel = "\\".join(path.relative_to(base).parts)
        z_nm = int(tile.section) * _SBEM_SLICE_NM
        stamp = DEFAULT_TIMESTAMP
        _append_line(
            base / "meta" / "logs" / f"imagelist_{stamp}.txt",
            f"{rel};{tile.stage_x_um * 1000:.1f};{tile.stage_y_um * 1000:.1f};{z_nm:.1f};"
            f"{int(tile.section)}",
        )
        entry = {
            "tileid": f"{tile.row - 1}.{tile.col - 1}.{int(tile.section)}",
            "filename": path.relative_to(base).as_posix(),
            "working_distance": wd_um * 1e-6,  # SBEMimage keeps metres
            "glob_x": round(tile.stage_x_um * 1000),
            "glob_y": round(tile.stage_y_um * 1000),
            "glob_z": round(z_nm),
            "slice_counter": int(tile.section),
        }
        _append_line(base / "meta" / "logs" / f"metadata_{stamp}.txt", f"TILE: {entry!r}")
        tifffile.imwrite(buffer, image, photometric="minisblack", compression=compression)
    data = buffer.getvalue()
    if tile.corrupt:
        data = data[: max(8, int(len(data) * 0.4))]
    _write_atomic(path, data, atomic=True)


def write_manifest(out: Path, tiles: Sequence[SynthTile], **params: Any) -> Path:
    """``out/manifest.json``: the generator's settings and the truth for every tile."""
    out = Path(out)
    records = []
    for tile in tiles:
        record = asdict(tile)
        record["path"] = Path(tile.path).relative_to(out).as_posix()
        record["position"] = tile.position
        records.append(record)
    target = out / "manifest.json"
    text = json.dumps({"generator": "focuswatch.synth", **params, "tiles": records}, indent=1)
    _write_atomic(target, text.encode(), atomic=True)
    return target


def write_wafer(
    out: Path,
    *,
    sections: int = 3,
    rows: int = 3,
    cols: int = 3,
    size: int = 1024,
    bits: int = 8,
    dose: float | None = 30.0,
    blur_fraction: float = 0.1,
    blur_sigmas: tuple[float, ...] = (2.0, 4.0),
    empty_tiles: int = 0,
    corrupt_tiles: int = 0,
    drift: float = 0.0,
    seed: int = 0,
    section_start: int = 0,
    timestamp: int = DEFAULT_TIMESTAMP,
    compression: str | None = None,
    on_section: Callable[[list[SynthTile]], None] | None = None,
    layout: str = "atlas",
) -> list[SynthTile]:
    """Write an acquisition under ``out`` and its ``manifest.json``; return the tiles.

    ``atlas``: ``out/S_{sec:03d}_{timestamp}/Tile_r{r}-c{c}_S_{sec:03d}_{timestamp}.tif``
    (rows and columns from 1); ``multisem`` and ``sbemimage`` as in the module's
    docstring. ``on_section`` is called after each section is written.

    ``drift`` is how fast content changes per section: 0 repeats it exactly (only
    noise and brightness differ), 0.02 keeps consecutive sections very alike,
    ~0.2 is about as different as consecutive 50 nm ISBI slices (pixel correlation
    ~0.3), and 1.0 gives unrelated content one section later.
    """
    out = Path(out)
    plan = wafer_plan(
        sections=sections,
        rows=rows,
        cols=cols,
        blur_fraction=blur_fraction,
        seed=seed,
        empty=empty_tiles,
        corrupt=corrupt_tiles,
        blur_sigmas=blur_sigmas,
        out=out,
        size=size,
        section_start=section_start,
        timestamp=timestamp,
        layout=layout,
    )
    written: list[SynthTile] = []
    for first in range(0, len(plan), rows * cols):
        section_tiles = plan[first : first + rows * cols]
        write_section(
            section_tiles,
            size=size,
            bits=bits,
            dose=dose,
            drift=drift,
            seed=seed,
            compression=compression,
        )
        written.extend(section_tiles)
        if on_section is not None:
            on_section(section_tiles)
    write_manifest(
        out,
        written,
        seed=seed,
        size=size,
        bits=bits,
        dose=dose,
        drift=drift,
        blur_sigmas=list(blur_sigmas),
        timestamp=timestamp,
        layout=layout,
    )
    return written


def _describe_section(tiles: Sequence[SynthTile]) -> str:
    blurred = [f"{t.position} σ={t.defocus_sigma:g}px" for t in tiles if t.defocus_sigma > 0]
    empty = [t.position for t in tiles if t.empty]
    corrupt = [t.position for t in tiles if t.corrupt]
    folder = (
        tiles[0].path.parent.name
        if tiles[0].layout == "atlas"
        else tiles[0].path.parent.parent.name
        if tiles[0].layout == "multisem"
        else f"slice {tiles[0].section}"
    )
    parts = [f"{len(tiles)} tiles", f"out of focus: {', '.join(blurred) or 'none'}"]
    if empty:
        parts.append(f"empty: {', '.join(empty)}")
    if corrupt:
        parts.append(f"corrupt: {', '.join(corrupt)}")
    return f"{folder}: " + "; ".join(parts)


def write_focus_series(
    out: Path,
    *,
    steps: int,
    step_um: float = 0.5,
    size: int = 512,
    bits: int = 8,
    dose: float | None = 30.0,
    seed: int = 0,
) -> list[Path]:
    """A through-focus series of one site, to rehearse ``focuswatch calibrate``.

    ``steps`` tiles at working distances ``IN_FOCUS_WD_UM + (k − steps // 2) × step_um``,
    each blurred as far as that is from focus (``SIGMA_PER_UM``), with the working
    distance in its FibicsXML ``Scan/Focus`` (which ``calibrate`` reads).
    """
    if steps < 3:
        raise ValueError(f"a focus series needs at least 3 steps, got {steps}")
    if not (math.isfinite(step_um) and step_um > 0):
        raise ValueError(f"step_um must be > 0, got {step_um}")
    rng = np.random.default_rng([seed, 0xF0C])
    clean = neuropil((size, size), rng=rng)
    folder = Path(out)
    written = []
    for k in range(steps):
        dz = (k - steps // 2) * step_um
        wd = IN_FOCUS_WD_UM + dz
        image = degrade(clean, rng=rng, defocus_sigma=defocus_sigma(dz), dose=dose)
        path = folder / f"Tile_r1-c1_WD{wd:.2f}um.tif"
        write_tile(
            path,
            to_uint(image, bits),
            row=1,
            col=1,
            section=0,
            stage_x_um=0.0,
            stage_y_um=0.0,
            working_distance_um=wd,
        )
        written.append(path)
    return written


def main(
    out: Path,
    *,
    sections: int,
    rows: int,
    cols: int,
    size: int,
    bits: int,
    dose: float | None,
    blur_fraction: float,
    seed: int,
    empty: int = 0,
    corrupt: int = 0,
    blur_sigmas: tuple[float, ...] = (2.0, 4.0),
    focus_series: int = 0,
    layout: str = "atlas",
) -> int:
    """``focuswatch synth``: write a wafer (or a focus series) and say what is in it."""
    try:
        if focus_series:
            paths = write_focus_series(
                Path(out), steps=focus_series, size=size, bits=bits, dose=dose, seed=seed
            )
            for p in paths:
                print(p)
            print(f"wrote a through-focus series of {len(paths)} tiles: focuswatch calibrate {out}")
            return 0
        tiles = write_wafer(
            Path(out),
            sections=sections,
            rows=rows,
            cols=cols,
            size=size,
            bits=bits,
            dose=dose,
            blur_fraction=blur_fraction,
            blur_sigmas=blur_sigmas,
            empty_tiles=empty,
            corrupt_tiles=corrupt,
            seed=seed,
            on_section=lambda written: print(_describe_section(written), flush=True),
            layout=layout,
        )
    except ValueError as exc:
        print(f"focuswatch synth: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"focuswatch synth: cannot write under {out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(tiles)} tiles ({layout}) and {Path(out) / 'manifest.json'}")
    return 0
