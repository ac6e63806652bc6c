"""Synthetic acquisitions on disk: a wafer of serial sections in one of three layouts.

:func:`write_wafer` writes sections of tiles plus a ``manifest.json`` with the truth
for every tile. ``LAYOUTS``: ``atlas`` (ATLAS 5 section folders, FibicsXML),
``multisem`` (section folders of mFoV folders of 8-bit PNG beam images, and each
section's ``full_image_coordinates.txt``), ``sbemimage`` (``tiles/g…/t…`` TIFFs and
the ``meta/logs`` image list and metadata lines, each tile's lines written before the
tile itself so that a watcher finds them). The grid's rows and columns are the
layout's two position numbers: mFoV and beam (from 1), grid and tile (from 0).

Every tile position has its own texture, changing continuously with the section
number (``drift``), so the same position in consecutive sections looks alike while
different positions do not, as on a real wafer.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from focuswatch.synth.degrade import IN_FOCUS_WD_UM, SIGMA_PER_UM, defocus_sigma, degrade, to_uint
from focuswatch.synth.texture import FloatImage, neuropil, resin, serial_section
from focuswatch.synth.tilefile import DEFAULT_TIMESTAMP, write_file, write_tile

__all__ = [
    "LAYOUTS",
    "SynthTile",
    "main",
    "multisem_folder",
    "wafer_plan",
    "write_focus_series",
    "write_manifest",
    "write_section",
    "write_wafer",
]

#: The acquisitions ``write_wafer`` writes (``focuswatch synth --layout``).
LAYOUTS: Final = ("atlas", "multisem", "sbemimage")
_SBEM_SLICE_NM: Final = 25.0  # SBEMimage cuts this thin
_OVERLAP: Final = 0.08  # ATLAS mosaics overlap neighbouring tiles by a few percent
_SECTION_PITCH_UM: Final = 2500.0  # sections lie side by side on the wafer
_STAGE_ORIGIN_UM: Final = 10000.0  # where the first section sits on the stage


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
        clean = serial_section(
            (size, size), (seed, tile.row, tile.col), section * drift, density=tile.density
        )
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
    write_file(path, data, atomic=True)


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
    write_file(target, text.encode(), atomic=True)
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
