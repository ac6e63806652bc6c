"""Read one SEM tile: its pixels as a 2-D array and what the microscope wrote about it.

Everything that can go wrong with a file on a microscope share (still being written,
truncated, vanished, not a TIFF at all, a 1-pixel strip, NaN-only floats, no
permission) comes back as one :class:`~focuswatch.errors.TileError` whose ``reason``
an operator can act on. Nothing from tifffile, Pillow or the OS escapes this module.

Reading rules:

* the first page of a multi-page file is the tile;
* grayscale comes back 2-D in its native dtype (8/16/32-bit integers, float32/64;
  float16 is widened to float32); RGB/RGBA becomes Rec. 601 luminance in float32;
  MinIsWhite integer data is inverted and palette images are looked up, so that
  bright means bright for the focus measure;
* at least :data:`MIN_SIDE` pixels each way.

Large tiles (ATLAS writes up to 32768x24576) can be read patch by patch through
:meth:`TileReader.read_region`, which reads only the bytes of that region for
uncompressed data and only the strips/tiles that overlap it for compressed data.
Plain ``pread`` is used rather than a memory map on purpose: a retake that
overwrites a tile while it is being scored would turn a mapped read into SIGBUS,
which kills the worker; a short read is just a :class:`TileError`.

Metadata (:class:`TileMeta`) comes from the ATLAS file name, the FibicsXML tag
(51023) or SmartSEM's CZ_SEM tag (34118); missing fields are ``None``.

Modules: ``names`` (what an ATLAS file name says), ``layouts`` (where a file sits in
an ATLAS, MultiSEM, SBEMimage or user-described acquisition: section and position),
``meta`` (what the TIFF tags say) and ``reader`` (the pixels).
"""

from focuswatch.tiles.layouts import Layout, detect, make_layout, with_meta
from focuswatch.tiles.meta import TileMeta
from focuswatch.tiles.names import parse_tile_name
from focuswatch.tiles.reader import (
    MIN_SIDE,
    TileReader,
    open_tile,
    os_reason,
    outside,
    read_meta,
    read_tile,
)

__all__ = [
    "MIN_SIDE",
    "Layout",
    "TileMeta",
    "TileReader",
    "detect",
    "make_layout",
    "open_tile",
    "os_reason",
    "outside",
    "parse_tile_name",
    "read_meta",
    "read_tile",
    "with_meta",
]
