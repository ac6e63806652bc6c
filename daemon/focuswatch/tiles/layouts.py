"""Layouts: where a file sits in the acquisition, whatever microscope wrote it.

A layout maps one file path to a :class:`Placement`: its section, its *position*
(whatever stays the same from one section to the next, so that a tile is compared
with the same place in earlier sections), stage coordinates, pixel size, working
distance, and, where the microscope retakes under a new name, the stamp that orders
retakes. This is the one place a path is interpreted; :func:`with_meta` adds what the
file's own tags say once it has been read.

=============  ===============================================  ======================
layout         files                                            position
=============  ===============================================  ======================
``atlas``      ``S_*/Tile_r{r}-c{c}_*.tif`` (+ FibicsXML)       ``r{r}-c{c}``
``multisem``   ``{NNN}_S{sec}R{n}/{mfov}/{NNN}_{mfov}_{beam}_    ``mFoV {m}, beam {b}``
               {timestamp}.bmp|png``
``sbemimage``  ``tiles/g{grid}/t{tile}/{stack}_g…_t…_s{slice}``  ``grid {g}, tile {t}``
``pattern``    a regex with named groups                        ``r{row}-c{col}`` or the
                                                                ``position`` group
=============  ===============================================  ======================

``auto`` recognises each file by the first of SBEMimage, MultiSEM, ATLAS whose name
fits; :func:`detect` says at start which one the folder holds.

Side files are read here, incrementally and only when they changed: MultiSEM's
``full_image_coordinates.txt`` per section (pixels, times ``watch.multisem_pixel_nm``)
and SBEMimage's ``meta/logs/imagelist_*.txt`` (``path;Xnm;Ynm;Znm;slice``: its
registration coordinates, the tile's upper-left corner, in nm) and ``metadata_*.txt``
(``TILE: {...}``: the working distance). A side file that is
missing, unreadable or malformed leaves those fields ``None``; it never fails a tile.
"""

from __future__ import annotations

import ast
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from focuswatch.config import WatchConfig
from focuswatch.tiles.meta import TileMeta
from focuswatch.tiles.names import number_in_name, parse_tile_name
from focuswatch.verdict import Placement, grid_position

__all__ = [
    "AtlasLayout",
    "AutoLayout",
    "Layout",
    "MultiSemLayout",
    "PatternLayout",
    "SbemLayout",
    "chosen",
    "detect",
    "make_layout",
    "watched_patterns",
    "with_meta",
]


class Layout(Protocol):
    name: str

    def place(self, path: str) -> Placement | None:
        """The file's placement; ``TileError`` for a name no microscope writes; None for
        a file that is no tile of this layout (skipped: a pattern it does not match)."""
        ...


def _section_text(digits: str, path: str) -> str:
    number_in_name(digits, "section", path)
    return digits


def _ordered(stamp: str) -> str:
    """A timestamp or counter as text that sorts like the number it is (the ledger
    orders a position's files by it): its digits, zero-padded; ``9`` before ``10``."""
    return "".join(re.findall(r"\d", stamp)).rjust(24, "0")[-24:]


# ---------------------------------------------------------------------------- ATLAS


class AtlasLayout:
    """ATLAS 5 single-beam tiles: row and column from the name (else FibicsXML)."""

    name = "atlas"

    def place(self, path: str) -> Placement:
        section, row, col = parse_tile_name(path)
        position = grid_position(row, col) if row is not None and col is not None else None
        return Placement(section=section, position=position, row=row, col=col)


# ------------------------------------------------------------------------- side files


class _Lines:
    """A text file read incrementally: only what was appended since the last look.

    Microscopes append one line per tile; re-reading the whole list for every tile
    would be quadratic over an acquisition. A file that shrank or was replaced is
    read again from the start.
    """

    def __init__(self, path: str, parse: Callable[[str], tuple[str, Any] | None]) -> None:
        self.path = path
        self._parse = parse
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self.found: dict[str, Any] = {}

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity or st.st_size < self._offset:
            self._identity, self._offset, self.found = identity, 0, {}
        if st.st_size == self._offset:
            return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(st.st_size - self._offset)
        except OSError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return  # no complete line yet
        self._offset += end + 1
        for raw in chunk[: end + 1].splitlines():
            parsed = self._parse(raw.decode("utf-8", "replace").strip())
            if parsed is not None:
                self.found[parsed[0]] = parsed[1]


def _basename(name: str) -> str:
    """The file name of a path written on Windows or POSIX (side files use either)."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip()


def _floats(parts: list[str]) -> list[float] | None:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


# ------------------------------------------------------------------------- MultiSEM

_MULTISEM_NAME = re.compile(
    r"^(?P<scan>\d+)_(?P<mfov>\d+)_(?P<beam>\d+)_(?P<stamp>[^_/]+)\.(?:bmp|png|tiff?)$",
    re.IGNORECASE,
)
_MULTISEM_SECTION = re.compile(r"^(?P<scan>\d+)_S(?P<section>\d+)R(?P<region>\d+)$", re.IGNORECASE)
MULTISEM_COORDINATES = "full_image_coordinates.txt"


def _coordinate_line(line: str) -> tuple[str, Any] | None:
    parts = line.split("\t")
    if len(parts) < 3:
        return None
    values = _floats(parts[1:3])
    return None if values is None else (_basename(parts[0]), (values[0], values[1]))


class MultiSemLayout:
    """MultiSEM beam images: section from the section folder, position mFoV + beam.

    A retake is a second file of the same beam and mFoV with a later timestamp
    (``taken``). Stage X/Y come from the section's ``full_image_coordinates.txt``.
    """

    name = "multisem"

    def __init__(self, *, pixel_nm: float = 4.0) -> None:
        self.pixel_um = pixel_nm / 1000.0
        self._coordinates: dict[str, _Lines] = {}

    def matches(self, path: str) -> bool:
        return _MULTISEM_NAME.match(os.path.basename(path)) is not None

    def place(self, path: str) -> Placement:
        p = Path(path)
        m = _MULTISEM_NAME.match(p.name)
        if m is None:
            return AtlasLayout().place(path)  # a file of no beam: as much as its name says
        mfov = number_in_name(m.group("mfov"), "mFoV", path)
        beam = number_in_name(m.group("beam"), "beam", path)
        section_folder = p.parent.parent if p.parent.name.isdigit() else p.parent
        folder = _MULTISEM_SECTION.match(section_folder.name)
        region = ""
        if folder is not None:
            section = _section_text(folder.group("section"), path)
            if int(folder.group("region")) != 1:
                region = f"region {int(folder.group('region'))}, "
        else:
            section = _section_text(m.group("scan"), path)
        stage = self._stage(str(section_folder), p.name)
        return Placement(
            section=section,
            position=f"{region}mFoV {mfov}, beam {beam}",
            stage_x_um=None if stage is None else stage[0] * self.pixel_um,
            stage_y_um=None if stage is None else stage[1] * self.pixel_um,
            # Digits only, zero-padded: the timestamps of one beam compare as strings.
            taken=_ordered(m.group("stamp")),
        )

    def _stage(self, folder: str, name: str) -> tuple[float, float] | None:
        lines = self._coordinates.get(folder)
        if lines is None:
            lines = self._coordinates[folder] = _Lines(
                os.path.join(folder, MULTISEM_COORDINATES), _coordinate_line
            )
        lines.refresh()
        found = lines.found.get(name)
        return None if found is None else (float(found[0]), float(found[1]))


# ------------------------------------------------------------------------ SBEMimage

_SBEM_NAME = re.compile(
    r"^(?P<stack>.*)_g(?P<grid>\d+)_t(?P<tile>\d+)_s(?P<slice>\d+)\.tiff?$", re.IGNORECASE
)


def _imagelist_line(line: str) -> tuple[str, Any] | None:
    parts = line.split(";")
    if len(parts) < 4:
        return None
    values = _floats(parts[1:4])
    if values is None:
        return None
    return _basename(parts[0]), tuple(v / 1000.0 for v in values)  # nm → µm


def _metadata_line(line: str) -> tuple[str, Any] | None:
    if not line.startswith("TILE:"):
        return None
    try:
        entry = ast.literal_eval(line[len("TILE:") :].strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        return None
    # SBEMimage keeps the working distance in metres: 'working_distance' now,
    # 'wd_stig_xy' [wd, stig x, stig y] in older versions.
    wd = entry.get("working_distance")
    if wd is None and isinstance(entry.get("wd_stig_xy"), list | tuple) and entry["wd_stig_xy"]:
        wd = entry["wd_stig_xy"][0]
    if isinstance(wd, int | float) and not isinstance(wd, bool) and math.isfinite(wd):
        return _basename(entry["filename"]), float(wd) * 1e6
    return None


class SbemLayout:
    """SBEMimage tiles: slice is the section, grid + tile the position.

    Stage X/Y/Z from ``meta/logs/imagelist_*.txt``, working distance from
    ``meta/logs/metadata_*.txt``, both beside the ``tiles`` folder.
    """

    name = "sbemimage"

    def __init__(self) -> None:
        self._logs: dict[str, _Lines] = {}

    def matches(self, path: str) -> bool:
        return _SBEM_NAME.match(os.path.basename(path)) is not None

    def place(self, path: str) -> Placement:
        p = Path(path)
        m = _SBEM_NAME.match(p.name)
        if m is None:
            return AtlasLayout().place(path)
        grid = number_in_name(m.group("grid"), "grid", path)
        tile = number_in_name(m.group("tile"), "tile", path)
        section = _section_text(m.group("slice"), path)
        base = p.parents[3] if len(p.parents) > 3 and p.parents[2].name == "tiles" else None
        stage = wd = None
        if base is not None:
            stage = self._look(base / "meta" / "logs", "imagelist_", _imagelist_line, p.name)
            wd = self._look(base / "meta" / "logs", "metadata_", _metadata_line, p.name)
        return Placement(
            section=section,
            position=f"grid {grid}, tile {tile}",
            stage_x_um=None if stage is None else stage[0],
            stage_y_um=None if stage is None else stage[1],
            stage_z_um=None if stage is None else stage[2],
            working_distance_um=wd,
        )

    def _look(
        self, logs: Path, prefix: str, parse: Callable[[str], tuple[str, Any] | None], name: str
    ) -> Any:
        try:
            files = sorted(e.path for e in os.scandir(logs) if e.name.startswith(prefix))
        except OSError:
            return None
        # The newest log first: a restarted acquisition writes a new one.
        for path in reversed(files):
            lines = self._logs.get(path)
            if lines is None:
                lines = self._logs[path] = _Lines(path, parse)
            lines.refresh()
            if name in lines.found:
                return lines.found[name]
        return None


# -------------------------------------------------------------------------- pattern


class PatternLayout:
    """Any other scheme: a regex (``watch.pattern``) searched in the path below the root.

    Named groups: ``section``, and ``row`` + ``col`` or ``position``; an optional
    ``taken`` group orders retakes written under new names.
    """

    name = "pattern"

    def __init__(self, pattern: str, root: str) -> None:
        self.regex = re.compile(pattern)
        self.root = root

    def place(self, path: str) -> Placement | None:
        rel = os.path.relpath(path, self.root) if self.root else path
        m = self.regex.search(rel.replace(os.sep, "/"))
        if m is None:
            return None  # the lab said what its tiles look like: this is none of them
        groups = m.groupdict()
        section = groups.get("section")
        if section is not None and section.isdigit():
            number_in_name(section, "section", path)
        row = col = None
        position = groups.get("position")
        if groups.get("row") is not None and groups.get("col") is not None:
            row = number_in_name(groups["row"], "row", path) if groups["row"].isdigit() else None
            col = number_in_name(groups["col"], "column", path) if groups["col"].isdigit() else None
            position = (
                grid_position(row, col)
                if row is not None and col is not None
                else f"{groups['row']}-{groups['col']}"
            )
        return Placement(
            section=section,
            position=position,
            row=row,
            col=col,
            taken=None if groups.get("taken") is None else _ordered(groups["taken"]),
        )


# ----------------------------------------------------------------------------- auto


class AutoLayout:
    """Each file by the first known layout whose names fit: SBEMimage, MultiSEM, ATLAS."""

    name = "auto"

    def __init__(self, *, pixel_nm: float = 4.0) -> None:
        self.sbem = SbemLayout()
        self.multisem = MultiSemLayout(pixel_nm=pixel_nm)
        self.atlas = AtlasLayout()

    def place(self, path: str) -> Placement:
        if self.sbem.matches(path):
            return self.sbem.place(path)
        if self.multisem.matches(path):
            return self.multisem.place(path)
        return self.atlas.place(path)


def make_layout(cfg: WatchConfig, root: str) -> Layout:
    """The layout the config asks for (``watch.layout``)."""
    if cfg.layout == "atlas":
        return AtlasLayout()
    if cfg.layout == "multisem":
        return MultiSemLayout(pixel_nm=cfg.multisem_pixel_nm)
    if cfg.layout == "sbemimage":
        return SbemLayout()
    if cfg.layout == "pattern":
        return PatternLayout(cfg.pattern, root)
    return AutoLayout(pixel_nm=cfg.multisem_pixel_nm)


_DEFAULTS = WatchConfig()
# MultiSEM's beam images by their name ({NNN}_{mfov}_{beam}_{timestamp}), so that no
# other BMP or PNG (an overview, a screenshot) is taken for a tile.
_MULTISEM_INCLUDE = ["[0-9]*_[0-9]*_[0-9]*_*.bmp", "[0-9]*_[0-9]*_[0-9]*_*.png"]
# SBEMimage's overviews ({stack}_ov{NNN}_s{slice}.tif) are not tiles of the stack.
_SBEM_EXCLUDE = ["*_ov[0-9][0-9][0-9]_s[0-9][0-9][0-9][0-9][0-9].tif"]


def watched_patterns(cfg: WatchConfig) -> tuple[list[str], list[str]]:
    """``(include, exclude)``: ``watch.include``/``exclude`` with the layout's additions.

    Only where they were left at their defaults (a list set in the config is taken as
    it is): MultiSEM writes BMP/PNG, which the TIFF default would miss (``auto``
    included: the folder may be empty at start), and SBEMimage's overviews are TIFFs.
    """
    include, exclude = list(cfg.include), list(cfg.exclude)
    if cfg.include == _DEFAULTS.include and cfg.layout in ("auto", "multisem"):
        include += _MULTISEM_INCLUDE
    if cfg.exclude == _DEFAULTS.exclude and cfg.layout in ("auto", "sbemimage"):
        exclude += _SBEM_EXCLUDE
    return include, exclude


def _walk(root: str, *, limit: int) -> Iterator[str]:
    """Up to ``limit`` paths below ``root``, breadth first (cheap on a huge share)."""
    folders, seen = [root], 0
    while folders and seen < limit:
        folder = folders.pop(0)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            seen += 1
            if seen > limit:
                return
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                folders.append(e.path)
            else:
                yield e.path


def detect(root: str, *, limit: int = 5000) -> tuple[str, str]:
    """``(layout, why)``: which known layout the folder holds, from its first entries.

    ``"atlas"`` with a reason saying so when nothing is recognisable yet (an empty
    folder): ``auto`` still recognises each file by its name as it arrives.
    """
    multisem = sbem = atlas = coordinates = None
    for path in _walk(root, limit=limit):
        name = os.path.basename(path)
        if sbem is None and _SBEM_NAME.match(name):
            sbem = path
        elif multisem is None and _MULTISEM_NAME.match(name):
            multisem = path
        elif atlas is None and name.lower().startswith("tile_r"):
            atlas = path
        elif name == MULTISEM_COORDINATES and coordinates is None:
            coordinates = path
    multisem = multisem or coordinates
    if sbem is not None:
        return "sbemimage", f"SBEMimage tile names (e.g. {os.path.relpath(sbem, root)})"
    if multisem is not None:
        return "multisem", f"MultiSEM beam images (e.g. {os.path.relpath(multisem, root)})"
    if atlas is not None:
        return "atlas", f"ATLAS tile names (e.g. {os.path.relpath(atlas, root)})"
    return "atlas", "no known tile names yet: each file is recognised by its name as it arrives"


def chosen(cfg: WatchConfig, root: str) -> tuple[str, str]:
    """``(layout, why)`` for the start-up log: the configured one, or what ``auto`` found."""
    if cfg.layout != "auto":
        return cfg.layout, "watch.layout"
    found, why = detect(root)
    return found, f"auto: {why}"


def with_meta(place: Placement, meta: TileMeta | None) -> Placement:
    """``place`` completed by what the file's own tags say (never overriding the path).

    The FibicsXML ``MosaicInfo`` row/col gives a position to an ATLAS tile whose
    name carries none.
    """
    if meta is None:
        return place
    tags = meta.placement
    row = place.row if place.row is not None else tags.row
    col = place.col if place.col is not None else tags.col
    position = place.position
    if position is None and row is not None and col is not None:
        position = grid_position(row, col)
    return replace(
        place,
        section=place.section if place.section is not None else tags.section,
        position=position,
        row=row,
        col=col,
        stage_x_um=_first(place.stage_x_um, tags.stage_x_um),
        stage_y_um=_first(place.stage_y_um, tags.stage_y_um),
        pixel_size_um=_first(tags.pixel_size_um, place.pixel_size_um),
        working_distance_um=_first(tags.working_distance_um, place.working_distance_um),
        dwell_ns=_first(tags.dwell_ns, place.dwell_ns),
    )


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b
