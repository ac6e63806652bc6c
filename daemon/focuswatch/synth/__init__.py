"""Synthetic SEM tiles and wafers: realistic enough to rehearse and test focus scoring.

Three layers, in four modules:

* :mod:`.texture`: pure, deterministic by seed: :func:`neuropil` (EM-like tissue:
  cell membranes, vesicles, mitochondria with cristae, granular cytoplasm) and
  :func:`resin` (an empty tile);
* :mod:`.degrade`: pure: what the microscope does to it: :func:`degrade` (defocus
  blur with astigmatism, scan-line jitter, shot noise, detector bandwidth along the
  scan line, gain/offset drift), :func:`filter_lines` and :func:`resample` (other
  correlated-noise models) and :func:`to_uint`;
* writers: :func:`write_tile` (:mod:`.tilefile`: a TIFF with ATLAS FibicsXML) and
  :func:`write_wafer` (:mod:`.wafer`: an acquisition in one of the ``LAYOUTS``,
  plus a ``manifest.json`` with the truth for every tile), used by
  ``focuswatch synth`` and the demo.
"""

from __future__ import annotations

from focuswatch.synth.degrade import (
    IN_FOCUS_WD_UM,
    SIGMA_PER_UM,
    defocus_sigma,
    degrade,
    filter_lines,
    resample,
    through_focus_series,
    to_uint,
)
from focuswatch.synth.texture import neuropil, resin
from focuswatch.synth.tilefile import fibics_xml, write_tile
from focuswatch.synth.wafer import (
    LAYOUTS,
    SynthTile,
    main,
    multisem_folder,
    wafer_plan,
    write_focus_series,
    write_manifest,
    write_section,
    write_wafer,
)

__all__ = [
    "IN_FOCUS_WD_UM",
    "LAYOUTS",
    "SIGMA_PER_UM",
    "SynthTile",
    "defocus_sigma",
    "degrade",
    "fibics_xml",
    "filter_lines",
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
