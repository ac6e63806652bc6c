"""The names the configuration offers: criteria, modes, resolutions, array backends, layouts.

Plain tuples with no NumPy or SciPy behind them, so ``config`` (and ``check-config``)
validates them without importing the scorer. The modules that implement them
(``score``, ``backend``) take their lists from here.
"""

from __future__ import annotations

__all__ = ["BACKEND_NAMES", "CRITERIA", "LAYOUTS", "MODES", "RESOLUTIONS"]

#: Focus measures: MHFD and the classic baselines it is compared with.
CRITERIA = (
    "mhfd",
    "variance_of_laplacian",
    "tenengrad",
    "brenner",
    "normalized_variance",
    "power_spectrum_slope",
)
#: MHFD variants (``focuswatch.score.mhfd``).
MODES = ("default", "faithful", "fast")
#: What a tile is scored at: native patches, resized to the paper's 1024², or whole.
RESOLUTIONS = ("patches", "resized", "native")
#: Array backends: the GPU when there is one, the CPU, or the GPU only.
BACKEND_NAMES = ("auto", "cpu", "gpu")
#: How file names and folders map to (section, position): ``focuswatch.tiles.layouts``.
LAYOUTS = ("auto", "atlas", "multisem", "sbemimage", "pattern")
