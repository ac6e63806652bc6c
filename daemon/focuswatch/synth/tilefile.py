"""One synthetic tile on disk: a TIFF with ATLAS FibicsXML, written atomically or in
place (as a microscope that writes the file while a watcher looks)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_TIMESTAMP", "fibics_xml", "write_file", "write_tile"]

DEFAULT_TIMESTAMP: Final = 1752450056


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


def write_file(path: Path, data: bytes, *, atomic: bool) -> None:
    """Write ``data`` to ``path``: atomically (as ATLAS does) or in place, in one write."""
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
    tile, as left by an interrupted copy. The section is only in the
    file name, as with ATLAS: FibicsXML does not record it.
    """
    image = np.asarray(image_uint)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"image_uint must be 2-D uint8 or uint16, got {image.dtype} {image.shape}")
    if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    if truncate_to is not None and not 0 < truncate_to < 1:
        raise ValueError(f"truncate_to must be in (0, 1), got {truncate_to}")
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
    write_file(Path(path), data, atomic=atomic)
