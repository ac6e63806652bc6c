"""The names the configuration offers: criteria, modes, resolutions, array backends, layouts.

Plain tuples with no NumPy or SciPy behind them, so ``config`` (and ``check-config``)
validates them without importing the scorer. The modules that implement them
(``score``, ``backend``) take their lists from here.
"""

from __future__ import annotations

from typing import TypeGuard

__all__ = [
    "BACKEND_NAMES",
    "CRITERIA",
    "DEFAULT_MODE",
    "LAYOUTS",
    "MODES",
    "RESOLUTIONS",
    "has_noise_floor",
    "is_revision",
    "same_scores",
    "scorer_revision",
]

#: Focus measures: MHFD and the classic baselines it is compared with.
CRITERIA = (
    "mhfd",
    "variance_of_laplacian",
    "tenengrad",
    "brenner",
    "normalized_variance",
    "power_spectrum_slope",
)
#: MHFD variants (``focuswatch.score.mhfd``): ``fast`` (the default: large scales on
#: decimated grids), ``exact`` (every level at full resolution), ``faithful`` (the
#: paper). ``default`` is the old name of ``exact`` (the default until 2026-12), kept so
#: configs and calibrations written then still mean what they meant: the same numbers
#: as ``exact``, never ``fast``'s. Fast and exact counts differ by a few per cent, so
#: scores of different modes are never compared.
MODES = ("fast", "exact", "faithful", "default")
#: What ``scoring.mode`` and every entry point use unless told otherwise.
DEFAULT_MODE = "fast"
#: What a tile is scored at: native patches, resized to the paper's 1024², or whole.
RESOLUTIONS = ("patches", "resized", "native")
#: Array backends: the GPU when there is one, the CPU, or the GPU only.
BACKEND_NAMES = ("auto", "cpu", "gpu")
#: How file names and folders map to (section, position): ``focuswatch.tiles.layouts``.
LAYOUTS = ("auto", "atlas", "multisem", "sbemimage", "pattern")


def same_scores(mode: str) -> str:
    """The mode whose numbers ``mode`` gives: ``default`` is ``exact`` by another name."""
    return "exact" if mode == "default" else mode


#: The revision of MHFD's noise-floor modes (fast, exact): raised whenever a change moves
#: their numbers, so that a ledger scored by another revision is not continued with
#: scores that are not comparable with its history (``focuswatch.app``). 1: until
#: 2026-12-01; 2: the noise's correlation measured on every other line of small tiles
#: (a third of the threshold's scatter between noise draws) and on tiles saturated
#: all over (``score.noise``); the content measured above the noise (resin under 2-D
#: correlated noise read as tissue); 3: one noise floor per tile scored as patches
#: (``score.noise.tile_noise_models``: the patches' median level in raw units); 4: the
#: noise's correlation read across paired lines where that reads clearly less (texture
#: repeated in 2×2 pixels, an image upsampled by repeating pixels, had read as
#: correlated noise and halved a sharp tile's count; other images score as in 3); 5: a
#: tile of 512 px or more a side, under twice ``scoring.patch_size``, scored as at
#: least 2×2 patches (withdrawn in the same session, before any release: on the demo's
#: synthetic wafer one position's patch read as a wrinkle in every section); 6: pixels
#: repeated with their noise, whose pairs hold only a weaker noise added after (JPEG's),
#: read as in 4's fourth difference (``score.noise._pair_shares``), and the paired flag
#: pooled over the patches that tell (resin does not; other images score as in 4); 7:
#: 5's cap back (``scoring.patch_size_for``: a 512²-1535² tile had no focus map at the
#: default patch size, and a wrinkle there was missed), with a patch whose content is
#: under half its tile's typical patch's given no signature of its own (the section's
#: edge: resin and a soft rim, whose fine detail is not the focus's; 5's false wrinkle);
#: in the same release the CPU's FFTs are ducc0's (``focuswatch.cpu_fft``: counts within
#: float rounding of pocketfft's, median 0.1 %, up to ~2 % on a small blurred image);
#: and the spectrum's orientation (``score.orientation``) read without clipping the power
#: above the floor at 0, every ring kept, from half-overlapping blocks, and None where
#: its standard error is over ``MAX_ERROR`` (under noise correlated along the scan line
#: a round blur had read as streaks along x; that part moves no count, only the
#: orientation).
NOISE_FLOOR_REVISION = 7


def has_noise_floor(criterion: str, mode: str) -> bool:
    """Whether ``criterion`` in ``mode`` is one of MHFD's noise-floor modes (fast,
    exact): the numbers ``NOISE_FLOOR_REVISION`` counts, and the ones whose patches carry
    the per-patch signatures (the paper's faithful mode and the classic criteria do not)."""
    return criterion == "mhfd" and same_scores(mode) in ("fast", "exact")


def scorer_revision(criterion: str, mode: str) -> int:
    """The revision of the numbers ``criterion`` in ``mode`` gives (the paper's faithful
    mode and the classic baselines have not changed: 1)."""
    return NOISE_FLOOR_REVISION if has_noise_floor(criterion, mode) else 1


def is_revision(value: object) -> TypeGuard[int]:
    """Whether a recorded revision can be read as one: a whole number, not ``"2"`` and
    not ``true`` (which Python would take for 1)."""
    return type(value) is int
