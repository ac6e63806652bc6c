"""Tile names: which section, row and column a file name says (ATLAS 5, MultiSEM).

A number too long to be any microscope's (more than ``MAX_DIGITS`` digits) is a
``TileError`` for that file, not a crash.
"""

from __future__ import annotations

import re
from pathlib import Path

from focuswatch.errors import TileError

__all__ = ["MAX_DIGITS", "number_in_name", "parse_tile_name"]

_ATLAS_NAME = re.compile(r"^tile_r(?P<row>\d+)-c(?P<col>\d+)(?:_(?P<rest>.*))?$", re.IGNORECASE)
_SECTION_IN_NAME = re.compile(r"(?:^|_)S_(?P<section>\d+)(?=_|$)", re.IGNORECASE)
_SECTION_FOLDER = re.compile(r"^S_(?P<section>\d+)(?:_.*)?$", re.IGNORECASE)
_MULTISEM_NAME = re.compile(
    r"^(?P<section>\d{3})_(?P<mfov>\d{6})_(?P<beam>\d{3})_(?P<stamp>[^_]+)$"
)


def parse_tile_name(path: str | Path) -> tuple[str | None, int | None, int | None]:
    """``(section, row, col)`` from an ATLAS or MultiSEM file name; ``None`` where absent.

    ATLAS 5: ``Tile_r{row}-c{col}_S_{section}_{timestamp}[_{n}].tif`` (section from
    the ``S_`` part, else from an ``S_{section}_*`` parent folder) and other
    ``Tile_r{row}-c{col}_{anything}.tif`` variants. MultiSEM beam images
    ``{NNN}_{mfov:06d}_{beam:03d}_{timestamp}.bmp|png`` give section ``NNN`` and
    no row or column (the mFoV/beam pair is not a grid position). A number with more
    than ``MAX_DIGITS`` digits raises ``TileError``.
    """
    p = Path(path)
    stem = p.stem if p.suffix else p.name
    folder = _SECTION_FOLDER.match(p.parent.name)
    folder_section = folder.group("section") if folder else None

    atlas = _ATLAS_NAME.match(stem)
    if atlas:
        rest = atlas.group("rest") or ""
        in_name = _SECTION_IN_NAME.search(rest)
        section = in_name.group("section") if in_name else folder_section
        row = number_in_name(atlas.group("row"), "row", p)
        col = number_in_name(atlas.group("col"), "column", p)
        return _checked_section(section, p), row, col
    multisem = _MULTISEM_NAME.match(stem)
    if multisem:
        return multisem.group("section"), None, None
    return _checked_section(folder_section, p), None, None


#: Row, column and section numbers have at most this many digits. A longer one is no
#: microscope's (and overflows SQLite's 64-bit integers): the tile is recorded with
#: that reason instead.
MAX_DIGITS = 9


def number_in_name(digits: str, what: str, path: str | Path) -> int:
    """``digits`` as a number; ``TileError`` when longer than any microscope writes."""
    value = int(digits)
    if value >= 10**MAX_DIGITS:
        raise TileError(
            str(path),
            f"{what} number {digits} in the name is out of range (at most {MAX_DIGITS} digits)",
        )
    return value


def _checked_section(section: str | None, path: Path) -> str | None:
    if section is not None:
        number_in_name(section, "section", path)
    return section
