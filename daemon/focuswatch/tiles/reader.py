"""Reading a tile's pixels: whole, or region by region, with every failure a ``TileError``.

(See the package docstring for the reading rules.)
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tifffile

from focuswatch.errors import TileError
from focuswatch.text import printable
from focuswatch.tiles.meta import CZ_SEM_TAG, TileMeta, build_meta

__all__ = [
    "MIN_SIDE",
    "TileReader",
    "open_tile",
    "os_reason",
    "outside",
    "read_meta",
    "read_tile",
]

MIN_SIDE: Final = 16
"""Smallest width and height (pixels) of an image worth scoring."""


# A corrupt header can claim any size; refuse absurd ones before allocating.
_MAX_PIXELS: Final = 1 << 32
# Decoded size may exceed the file size by this factor (compression) before the
# header is taken to be lying; flat synthetic images compress well, hence generous.
_MAX_COMPRESSION_RATIO: Final = 4096
_SMALL_DECLARED_BYTES: Final = 256 << 20
# Decoded strips/tiles kept between region reads (patches of one band share strips);
# one segment is always kept, however large, since decoding it needed that much anyway.
_SEGMENT_CACHE_BYTES: Final = 128 << 20

# Rec. 601 luma weights (what ImageJ and Pillow's "L" use).
_LUMA: Final = (0.299, 0.587, 0.114)

_TIFF_MAGIC: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_BMP_MAGIC: Final = b"BM"
_TIFF_SUFFIXES: Final = frozenset({".tif", ".tiff"})

# ----------------------------------------------------------------- file checks


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found: it vanished before it could be read (moved or deleted)"
    if isinstance(exc, PermissionError):
        return "permission denied: the service user cannot read this file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if exc.errno == 40:  # ELOOP
        return "symlink loop: the link never reaches a file"
    return f"cannot read file: {exc.strerror or _short(exc)}"


def _check_file(path: Path) -> int:
    """Size of ``path`` in bytes, or a TileError saying why it cannot be a tile."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise TileError(str(path), "broken symlink: its target does not exist") from None
        raise TileError(str(path), os_reason(FileNotFoundError())) from None
    except OSError as exc:
        raise TileError(str(path), os_reason(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise TileError(str(path), "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise TileError(str(path), "is not a regular file (device, pipe or socket)")
    if st.st_size == 0:
        raise TileError(str(path), "zero-byte file (empty, or still being written)")
    return st.st_size


def _sniff(path: Path) -> str:
    """``"tiff"``, ``"png"``, ``"bmp"`` from the first bytes; TileError otherwise."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise TileError(str(path), os_reason(exc)) from None
    if head[:4] in _TIFF_MAGIC:
        return "tiff"
    suffix = path.suffix.lower()
    kind = "png" if head.startswith(_PNG_MAGIC) else "bmp" if head.startswith(_BMP_MAGIC) else ""
    if suffix in _TIFF_SUFFIXES:
        looks = f" (content looks like {kind.upper()})" if kind else ""
        if len(head) < 8:
            raise TileError(str(path), f"truncated: only {len(head)} bytes, not a TIFF header")
        raise TileError(str(path), f"not a TIFF file despite its name{looks}")
    if kind:
        return kind
    raise TileError(str(path), "not an image file focuswatch reads (TIFF, PNG or BMP)")


# ------------------------------------------------------------------ conversion


@dataclass(frozen=True)
class _Layout:
    """How stored samples become the 2-D array we return."""

    kind: str  # "gray" | "invert" | "rgb" | "palette"
    out_dtype: np.dtype[Any]
    invert_max: int = 0
    colormap: npt.NDArray[Any] | None = None


def _luminance(rgb: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    out = rgb[..., 0].astype(np.float32) * np.float32(_LUMA[0])
    out += rgb[..., 1].astype(np.float32) * np.float32(_LUMA[1])
    out += rgb[..., 2].astype(np.float32) * np.float32(_LUMA[2])
    return out


def _apply_layout(samples: npt.NDArray[Any], layout: _Layout) -> npt.NDArray[Any]:
    """(h, w, samples) stored values -> 2-D output of ``layout.out_dtype``."""
    if layout.kind == "rgb":
        return _luminance(samples)
    plane = samples[..., 0]
    if layout.kind == "palette":
        assert layout.colormap is not None  # set together with kind
        idx = np.clip(plane.astype(np.intp), 0, layout.colormap.shape[1] - 1)
        return _luminance(np.moveaxis(layout.colormap[:, idx], 0, -1))
    if layout.kind == "invert":
        return (layout.invert_max - plane.astype(np.int64)).astype(layout.out_dtype)
    if plane.dtype != layout.out_dtype:
        return plane.astype(layout.out_dtype)
    return np.ascontiguousarray(plane)


def _sample_dtype(path: Path, dtype: np.dtype[Any] | None) -> np.dtype[Any]:
    if dtype is None:
        raise TileError(str(path), "unsupported sample format (tifffile cannot decode it)")
    if dtype.kind == "b":
        raise TileError(str(path), "1-bit (black/white) image: not an SEM tile")
    if dtype.kind == "c":
        raise TileError(str(path), "complex-valued image: not an SEM tile")
    if dtype.kind in "ui" and dtype.itemsize <= 4:
        return dtype.newbyteorder("=")
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return dtype.newbyteorder("=")
    if dtype.kind == "f" and dtype.itemsize == 2:
        return np.dtype(np.float32)
    raise TileError(str(path), f"unsupported sample type {dtype.name} (need 8/16/32-bit or float)")


def _check_size(path: Path, height: int, width: int) -> None:
    if height == 0 or width == 0:
        raise TileError(str(path), f"image is empty ({width}x{height} pixels)")
    if height < MIN_SIDE or width < MIN_SIDE:
        raise TileError(
            str(path),
            f"image is {width}x{height} pixels (width x height), too small to score "
            f"(need at least {MIN_SIDE}x{MIN_SIDE})",
        )
    if height * width > _MAX_PIXELS:
        raise TileError(
            str(path), f"image claims {width}x{height} pixels: larger than any SEM tile"
        )


def _check_finite(path: Path, image: npt.NDArray[Any]) -> None:
    if image.dtype.kind == "f" and not np.isfinite(image).any():
        raise TileError(str(path), "float image has no finite values (all NaN or inf)")


# ---------------------------------------------------------------------- reader


class TileReader:
    """An open tile: ``shape``, ``dtype`` and ``meta`` known, pixels read on demand.

    Use through :func:`open_tile` as a context manager. ``read()`` gives the whole
    2-D image; ``read_region(y0, y1, x0, x1)`` gives ``read()[y0:y1, x0:x1]`` while
    reading only what that region needs from the file (compressed strips/tiles
    are decoded once and kept in a small cache for neighbouring regions).
    One reader is for one thread; open another reader per thread.
    """

    shape: tuple[int, int]
    dtype: np.dtype[Any]
    meta: TileMeta

    def __init__(self, path: str | Path, *, within: str | None = None) -> None:
        self.path = Path(path)
        # Pixels are read only from a file whose real path lies in ``within`` (checked on
        # the open descriptor itself, so a link swapped in after any earlier check of
        # the name is caught too).
        self._within = within
        self._tif: Any = None
        self._page: Any = None
        self._pixels: npt.NDArray[Any] | None = None  # Pillow path: decoded once
        self._segments: OrderedDict[int, Any] = OrderedDict()  # decoded strips/tiles, LRU
        self._segment_bytes = 0
        try:
            self._open()
        except TileError:
            self.close()
            raise
        except MemoryError:
            self.close()
            raise TileError(str(self.path), "not enough memory to open this tile") from None
        except OSError as exc:
            self.close()
            raise TileError(str(self.path), os_reason(exc)) from None
        except Exception as exc:  # tifffile/Pillow raise many types for bad files
            self.close()
            raise TileError(str(self.path), f"corrupt or unreadable image: {_short(exc)}") from None

    # -- opening

    def _open(self) -> None:
        self._size = _check_file(self.path)
        kind = _sniff(self.path)
        if kind == "tiff":
            self._open_tiff()
        else:
            self._open_pillow(kind)

    def _open_tiff(self) -> None:
        path = self.path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self._tif = tifffile.TiffFile(path)
            except tifffile.TiffFileError as exc:
                raise TileError(str(path), f"corrupt or truncated TIFF: {_short(exc)}") from None
            self._confine(self._tif.filehandle.fileno())
            if len(self._tif.pages) == 0:
                raise TileError(str(path), "TIFF has no images in it")
            page = self._tif.pages.first
            sem = self._tif.sem_metadata if CZ_SEM_TAG in page.tags else None
        self._page = page
        if page.shaped[1] > 1:
            raise TileError(str(path), "volumetric (3-D) TIFF page: not a 2-D tile")
        height, width = int(page.imagelength), int(page.imagewidth)
        _check_size(path, height, width)
        stored = _sample_dtype(path, page.dtype)
        self._layout = self._tiff_layout(page, stored)
        self._check_extent(page)
        self.shape = (height, width)
        self.dtype = self._layout.out_dtype
        self.meta = build_meta(path, page, sem)

    def _confine(self, fd: int) -> None:
        why = outside(fd, self._within, self.path)
        if why is not None:
            raise TileError(str(self.path), why)

    def _tiff_layout(self, page: Any, stored: np.dtype[Any]) -> _Layout:
        photometric = int(page.photometric)
        samples = int(page.samplesperpixel)
        if photometric in (2, 6) and samples >= 3:  # RGB, YCbCr (decoded to RGB)
            return _Layout("rgb", np.dtype(np.float32))
        if photometric == 5:
            raise TileError(str(self.path), "CMYK image: not an SEM tile")
        if photometric == 3 and samples == 1:  # palette
            colormap = getattr(page, "colormap", None)
            if colormap is None:
                raise TileError(str(self.path), "palette image without a colour map")
            return _Layout("palette", np.dtype(np.float32), colormap=np.asarray(colormap))
        if samples > 2:
            raise TileError(
                str(self.path),
                f"{samples} samples per pixel and not RGB: cannot tell which is the image",
            )
        if photometric == 0 and stored.kind in "ui":  # MinIsWhite: 0 is white
            bits = int(page.bitspersample)
            if stored.kind == "u":
                return _Layout("invert", stored, invert_max=(1 << bits) - 1)
            return _Layout("invert", stored, invert_max=-1)  # signed: -1 - x == ~x
        return _Layout("gray", stored)

    def _check_extent(self, page: Any) -> None:
        """Refuse files whose data lies past their end (truncated, still being written)."""
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) == 0 or len(offsets) != len(counts):
            raise TileError(str(self.path), "corrupt TIFF: no image data offsets")
        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=True))
        if end > self._size:
            raise TileError(
                str(self.path),
                f"truncated TIFF: image data ends at byte {end} but the file has "
                f"{self._size} (still being written, or a copy was cut short)",
            )
        declared = int(page.nbytes)
        if declared > max(_SMALL_DECLARED_BYTES, _MAX_COMPRESSION_RATIO * self._size):
            raise TileError(
                str(self.path),
                f"corrupt TIFF header: claims {declared} bytes of pixels in a "
                f"{self._size}-byte file",
            )

    def _open_pillow(self, kind: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pixels, mode = self._pillow_pixels()
            except (FileNotFoundError, PermissionError):
                raise
            except (OSError, SyntaxError, ValueError) as exc:  # Pillow's "broken file" errors
                reason = f"corrupt or truncated {kind.upper()}: {_short(exc)}"
                raise TileError(str(self.path), reason) from None
        if mode in ("RGB", "RGBA", "RGBX"):
            image = _luminance(pixels)
        elif mode in ("LA", "PA") or pixels.ndim == 3:
            image = np.ascontiguousarray(pixels[..., 0])
        else:
            image = np.ascontiguousarray(pixels)
        if image.ndim != 2:
            raise TileError(str(self.path), f"{kind.upper()} image mode {mode} is not supported")
        _check_size(self.path, *image.shape)
        dtype = _sample_dtype(self.path, image.dtype)
        self._pixels = image.astype(dtype, copy=False)
        self.shape = (int(image.shape[0]), int(image.shape[1]))
        self.dtype = dtype
        self.meta = build_meta(self.path, None, None)

    def _pillow_pixels(self) -> tuple[npt.NDArray[Any], str]:
        """Decoded pixels and Pillow mode (palette images expanded to RGB)."""
        from PIL import Image

        with Image.open(self.path) as opened:
            if opened.fp is not None:
                self._confine(opened.fp.fileno())
            opened.load()
            if opened.mode == "1":
                raise TileError(str(self.path), "1-bit (black/white) image: not an SEM tile")
            image = opened.convert("RGB") if opened.mode == "P" else opened
            mode = image.mode
            pixels = np.asarray(image, dtype=np.uint16 if mode.startswith("I;16") else None)
        return pixels, mode

    # -- reading

    def _guard(self, what: str, func: Any, *args: Any) -> npt.NDArray[Any]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result: npt.NDArray[Any] = func(*args)
                return result
        except TileError:
            raise
        except MemoryError:
            raise TileError(
                str(self.path), f"not enough memory to {what} a {self.shape} tile"
            ) from None
        except OSError as exc:
            raise TileError(str(self.path), os_reason(exc)) from None
        except Exception as exc:
            raise TileError(str(self.path), f"corrupt image data: {_short(exc)}") from None

    def read(self) -> npt.NDArray[Any]:
        """The whole tile as a 2-D array (native dtype; float32 for RGB)."""
        image = self._pixels if self._pixels is not None else self._guard("read", self._read_tiff)
        _check_finite(self.path, image)
        return image

    def _read_tiff(self) -> npt.NDArray[Any]:
        if self._tif is None:
            raise TileError(str(self.path), "tile is closed")
        raw = self._page.asarray(maxworkers=1)
        samples = raw.reshape(self._page.shaped)  # (separate, depth, h, w, contig)
        separate, _, height, width, contig = samples.shape
        if separate > 1:
            samples = np.moveaxis(samples[:, 0], 0, -1).reshape(height, width, separate * contig)
        else:
            samples = samples[0, 0]
        return _apply_layout(samples, self._layout)

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[Any]:
        """``read()[y0:y1, x0:x1]``, reading only the bytes that region needs."""
        height, width = self.shape
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(
                f"region [{y0}:{y1}, {x0}:{x1}] is not a non-empty part of a {height}x{width} tile"
            )
        if self._pixels is not None:
            return self._pixels[y0:y1, x0:x1].copy()
        if self._page.is_final and self._page.shaped[0] == 1:
            return self._guard("read", self._region_contiguous, y0, y1, x0, x1)
        return self._guard("read", self._region_segments, y0, y1, x0, x1)

    def _region_contiguous(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[Any]:
        page = self._page
        _, _, _, width, contig = page.shaped
        dtype = np.dtype(page.parent.byteorder + page.dtype.char)
        pixel = dtype.itemsize * contig
        base = int(page.dataoffsets[0])
        rows = y1 - y0
        fh = page.parent.filehandle
        # One read for the whole band when the region is most of a row, else row by row.
        if (x1 - x0) * 2 >= width:
            start = base + y0 * width * pixel
            size = rows * width * pixel
            with fh.lock:
                fh.seek(start)
                data = fh.read(size)
            if len(data) != size:
                raise TileError(str(self.path), "file got shorter while it was being read")
            band = np.frombuffer(data, dtype).reshape(rows, width, contig)[:, x0:x1]
        else:
            size = (x1 - x0) * pixel
            band = np.empty((rows, x1 - x0, contig), dtype)
            with fh.lock:
                for i in range(rows):
                    fh.seek(base + ((y0 + i) * width + x0) * pixel)
                    data = fh.read(size)
                    if len(data) != size:
                        raise TileError(str(self.path), "file got shorter while it was being read")
                    band[i] = np.frombuffer(data, dtype).reshape(x1 - x0, contig)
        return _apply_layout(band.astype(dtype.newbyteorder("="), copy=False), self._layout)

    def _region_segments(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[Any]:
        """Decode only the strips or tiles that overlap the region."""
        page = self._page
        separate, _, height, width, contig = page.shaped
        if page.is_tiled:
            seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            seg_h, seg_w = int(page.rowsperstrip), width
        seg_h = max(1, min(seg_h, height))
        per_col = math.ceil(height / seg_h)
        per_row = math.ceil(width / seg_w)
        band = np.empty((y1 - y0, x1 - x0, separate * contig), page.dtype.newbyteorder("="))
        offsets, counts = page.dataoffsets, page.databytecounts
        decode = page.decode
        decode_args: dict[str, Any] = {"_fullsize": False}
        if page.compression in (6, 7, 34892, 33007):  # JPEG variants
            decode_args["jpegtables"] = page.jpegtables
            decode_args["jpegheader"] = page.jpegheader
        fh = page.parent.filehandle
        with fh.lock:
            page.init_decode()  # tifffile sets up its decoder under the file lock
        for s in range(separate):
            for ty in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
                for tx in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                    index = (s * per_col + ty) * per_row + tx
                    if index >= len(offsets):
                        raise TileError(str(self.path), "corrupt TIFF: missing strips or tiles")
                    cached = self._segments.get(index)
                    if cached is None:
                        with fh.lock:
                            fh.seek(int(offsets[index]))
                            data = fh.read(int(counts[index])) if counts[index] else None
                        cached = decode(data, index, **decode_args)
                        self._remember(index, cached)
                    segment, (_, _, sy, sx, _), shape = cached
                    ys0, ys1 = max(y0, sy), min(y1, sy + shape[1], height)
                    xs0, xs1 = max(x0, sx), min(x1, sx + shape[2], width)
                    target = band[
                        ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0, s * contig : (s + 1) * contig
                    ]
                    if segment is None:
                        target[...] = page.nodata
                    else:
                        target[...] = segment[0, ys0 - sy : ys1 - sy, xs0 - sx : xs1 - sx]
        return _apply_layout(band, self._layout)

    def _remember(self, index: int, decoded: Any) -> None:
        """Keep recently decoded strips/tiles: neighbouring patches share them."""
        segment = decoded[0]
        size = 0 if segment is None else int(segment.nbytes)
        self._segments[index] = decoded
        self._segments.move_to_end(index)
        self._segment_bytes += size
        while self._segment_bytes > _SEGMENT_CACHE_BYTES and len(self._segments) > 1:
            _, (old, _, _) = self._segments.popitem(last=False)
            self._segment_bytes -= 0 if old is None else int(old.nbytes)

    # -- lifetime

    def close(self) -> None:
        """Release the file handle (idempotent)."""
        if self._tif is not None:
            # Closing a damaged file must not mask the real error.
            with contextlib.suppress(Exception):
                self._tif.close()
            self._tif = None
        self._segments.clear()
        self._segment_bytes = 0

    def __enter__(self) -> TileReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TileReader({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def outside(fd: int, within: str | None, path: str | Path) -> str | None:
    """Why the open file ``fd`` (opened as ``path``) may not be read: its real path is
    not in the folder ``within`` (a link out of the watch folder). None: it may.

    The descriptor's own path (``/proc/self/fd``), not the name's: a link swapped in
    after the name was checked is caught too.
    """
    if within is None:
        return None
    root = os.path.realpath(within).rstrip("/")
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the name's real path, checked just now
        real = os.path.realpath(path)
    if real == root or real.startswith(root + "/"):
        return None
    return (
        f"its real path {printable(real)} is outside the watch folder: not read "
        "(watch.follow_symlinks_outside = false)"
    )


def open_tile(path: str | Path, *, within: str | None = None) -> TileReader:
    """Open a tile for reading; TileError if it cannot be a tile. Use with ``with``.

    ``within``: a folder the file's real path must lie in (links out are refused).
    """
    return TileReader(path, within=within)


def read_tile(path: str | Path) -> tuple[npt.NDArray[Any], TileMeta]:
    """The whole tile as a 2-D array and its metadata; TileError on any failure."""
    with open_tile(path) as tile:
        return tile.read(), tile.meta


def read_meta(path: str | Path) -> TileMeta:
    """Metadata only (header and tags, no pixel data); TileError on any failure."""
    with open_tile(path) as tile:
        return tile.meta
