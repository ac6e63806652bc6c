"""What the microscope wrote about a tile: ATLAS FibicsXML (tag 51023) or SmartSEM
CZ_SEM (tag 34118), in µm and ns; missing fields are ``None``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from focuswatch.tiles.names import parse_tile_name
from focuswatch.verdict import Placement

__all__ = ["CZ_SEM_TAG", "FIBICS_TAG", "TileMeta", "build_meta", "tag_value"]

FIBICS_TAG: Final = 51023
CZ_SEM_TAG: Final = 34118

_LENGTH_TO_UM: Final = {
    "pm": 1e-6,
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}
_TIME_TO_NS: Final = {"ps": 1e-3, "ns": 1.0, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9}


@dataclass(frozen=True)
class TileMeta:
    """What is known about a tile besides its pixels; ``None`` where nobody said.

    ``source`` names where the physical fields came from: ``"fibics"`` (ATLAS
    FibicsXML tag), ``"cz_sem"`` (SmartSEM tag), ``"name"`` (only the file name
    told us something) or ``"none"``.
    """

    #: What the name and the tags say of where and how it was taken (no layout's
    #: position: ``tiles.layouts`` adds that from the path).
    placement: Placement
    source: str
    #: Pixels of a float tile that were NaN or infinite and so not scored (set by
    #: ``scoring``, which fills them with the finite pixels' median).
    nonfinite_pixels: int = 0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _convert(value: float, unit: str | None, table: dict[str, float], default: str) -> float | None:
    factor = table.get((unit or default).strip().lower().replace("micro", "µ"))
    if factor is None:
        factor = table.get((unit or default).strip())
    return None if factor is None else _finite(value * factor)


def _fibics_root(raw: object) -> ET.Element | None:
    if isinstance(raw, bytes | bytearray):
        text = bytes(raw).decode("latin-1")
    elif isinstance(raw, str):
        text = raw
    else:
        return None
    text = text.replace("\x00", "").strip()
    # Entity declarations have no business in FibicsXML and are the one way an XML
    # file can make a parser do unbounded work.
    if not text or "<!ENTITY" in text or "<!DOCTYPE" in text:
        return None
    # The declaration names latin-1, but we already decoded; drop it so that
    # expat does not second-guess the encoding of a str.
    text = re.sub(r"^<\?xml[^>]*\?>", "", text).strip()
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    if root.tag != "Fibics":
        found = root.find(".//Fibics")
        return found if found is not None else None
    return root


def _xml_number(root: ET.Element, path: str) -> tuple[float, str | None] | None:
    element = root.find(path)
    if element is None or element.text is None:
        return None
    try:
        value = float(element.text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return value, element.get("units") or element.get("unit")


def _fibics_fields(root: ET.Element) -> dict[str, Any]:
    """The TileMeta fields FibicsXML provides (µm, ns; rows/cols as ints)."""
    fields: dict[str, Any] = {}
    ux = _xml_number(root, "Scan/Ux")
    uy = _xml_number(root, "Scan/Uy")
    if ux is not None or uy is not None:
        # U is the scan step vector along x: its length is the pixel size even
        # with scan rotation (then Ux alone would be too small).
        unit = (ux or uy or (0.0, None))[1]
        step = math.hypot(ux[0] if ux else 0.0, uy[0] if uy else 0.0)
        if step > 0:
            fields["pixel_size_um"] = _convert(step, unit, _LENGTH_TO_UM, "um")
    for key, path in (("stage_x_um", "Stage/X"), ("stage_y_um", "Stage/Y")):
        found = _xml_number(root, path)
        if found is not None:
            fields[key] = _convert(found[0], found[1], _LENGTH_TO_UM, "um")
    dwell = _xml_number(root, "Scan/Dwell")
    if dwell is not None:
        fields["dwell_ns"] = _convert(dwell[0], dwell[1], _TIME_TO_NS, "ns")
    focus = _xml_number(root, "Scan/Focus")
    if focus is not None:
        value, unit = focus
        if unit is None:
            # No unit given: SEM working distances are 1-40 mm, so a small
            # number is millimetres and a large one micrometres.
            unit = "mm" if abs(value) < 100 else "um"
        fields["working_distance_um"] = _convert(value, unit, _LENGTH_TO_UM, "um")
    for key, path in (("row", "MosaicInfo/Row"), ("col", "MosaicInfo/Col")):
        found = _xml_number(root, path)
        if found is not None and found[0].is_integer():
            fields[key] = int(found[0])
    return fields


def _sem_number(entry: object) -> tuple[float, str | None] | None:
    """``(value, unit)`` from a CZ_SEM entry such as ``('WD', 5.1, 'mm')``."""
    if isinstance(entry, tuple):
        if len(entry) < 2:
            return None
        value, unit = entry[1], (entry[2] if len(entry) > 2 else None)
    else:
        value, unit = entry, None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (float(value), str(unit) if unit else None) if math.isfinite(value) else None
    if isinstance(value, str):
        match = re.match(r"^\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*(\S*)", value)
        if match:
            try:
                number = float(match.group(1))
            except ValueError:
                return None
            return (number, match.group(2) or None) if math.isfinite(number) else None
    return None


def _cz_sem_fields(sem: dict[str, Any]) -> dict[str, Any]:
    """The TileMeta fields SmartSEM's CZ_SEM tag provides (its lengths are mm by default)."""
    fields: dict[str, Any] = {}
    for key in ("ap_image_pixel_size", "ap_pixel_size", "dp_pixel_size"):
        found = _sem_number(sem.get(key))
        if found is not None and found[0] > 0:
            fields["pixel_size_um"] = _convert(found[0], found[1], _LENGTH_TO_UM, "nm")
            break
    for target, key in (
        ("stage_x_um", "ap_stage_at_x"),
        ("stage_y_um", "ap_stage_at_y"),
        ("working_distance_um", "ap_wd"),
    ):
        found = _sem_number(sem.get(key))
        if found is not None:
            fields[target] = _convert(found[0], found[1], _LENGTH_TO_UM, "mm")
    for key in sorted(sem):
        if "dwell" in str(key).lower():
            found = _sem_number(sem[key])
            if found is not None:
                fields["dwell_ns"] = _convert(found[0], found[1], _TIME_TO_NS, "ns")
                break
    return fields


def tag_value(page: Any, code: int) -> object:
    try:
        tag = page.tags.get(code)
        return None if tag is None else tag.value
    except Exception:  # a damaged tag must not cost us the pixels
        return None


def build_meta(path: Path, page: Any | None, sem: object) -> TileMeta:
    section, row, col = parse_tile_name(path)
    fields: dict[str, Any] = {}
    source = "none"
    if page is not None:
        root = _fibics_root(tag_value(page, FIBICS_TAG))
        if root is not None:
            fields = _fibics_fields(root)
            source = "fibics"
        elif isinstance(sem, dict):
            fields = _cz_sem_fields(sem)
            source = "cz_sem"
    if source == "none" and (section is not None or row is not None):
        source = "name"
    placement = Placement(
        section=section,
        row=row if row is not None else fields.get("row"),
        col=col if col is not None else fields.get("col"),
        pixel_size_um=fields.get("pixel_size_um"),
        stage_x_um=fields.get("stage_x_um"),
        stage_y_um=fields.get("stage_y_um"),
        dwell_ns=fields.get("dwell_ns"),
        working_distance_um=fields.get("working_distance_um"),
    )
    return TileMeta(placement=placement, source=source)
