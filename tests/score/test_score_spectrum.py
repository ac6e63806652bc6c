"""The spectral ratio (``score.spectrum``): high-to-mid band power above the tile's own
noise floor falls steeply with blur, barely with less tissue, and is ~0 for noise."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import score_image
from focuswatch.score.spectrum import band_powers, patch_ratio, spectral_ratio
from focuswatch.synth.texture import serial_section
from isbi import Slices

CPU = get_backend("cpu")
SLICES = (3, 17, 26)


def _ratio(image: np.ndarray, mode: str = "fast") -> float:
    r = score_image(image, backend=CPU, mode=mode, patch_size=256)
    assert r.spectral is not None
    return r.spectral


@pytest.mark.parametrize(("upsample", "soft_keeps"), [("cubic", 0.8), ("repeat", 0.7)])
@pytest.mark.parametrize("dose", [30.0, 200.0])
def test_sigma_1_5_takes_the_ratio_down_where_sigma_0_5_and_less_tissue_do_not(
    isbi_slices: Slices, dose: float, upsample: str, soft_keeps: float
) -> None:
    """Real EM slices (×2 upsampled, 256² patches), shot noise: σ 1.5 px leaves at most
    0.6 of the sharp ratio (the fine-scale count moves by ~10 % there), σ 0.5 px keeps
    at least 0.8, and covering half the tile with resin keeps it within 25 %. Pixels
    repeated 2×2 carry more of the high band than a cubic zoom, and σ 0.5 takes what a
    Gaussian takes there (0.67-0.80 of its power): at least 0.7 is kept (before their
    floor was the noise model's, the band's mirror beyond 0.4 cycles/px was read as
    noise and σ 0.5 kept 0.91-1.13, σ 1.5 up to 0.42)."""
    for k in SLICES:
        if upsample == "cubic":
            clean = np.clip(synth.resample(isbi_slices[k], 2.0, order=3), 0, 1)[:512, :512]
        else:
            clean = np.kron(isbi_slices[k], np.ones((2, 2), np.float32))[:512, :512]
        rng = np.random.default_rng(k)
        sharp = _ratio(synth.to_uint(synth.degrade(clean, rng=rng, dose=dose), 8))
        soft = _ratio(synth.to_uint(synth.degrade(clean, rng=rng, defocus_sigma=0.5, dose=dose), 8))
        blur = _ratio(synth.to_uint(synth.degrade(clean, rng=rng, defocus_sigma=1.5, dose=dose), 8))
        sparse = clean.copy()
        sparse[:, 256:] = np.median(clean)
        half = _ratio(synth.to_uint(synth.degrade(sparse, rng=rng, dose=dose), 8))
        assert blur < 0.6 * sharp, (k, blur, sharp)
        assert soft > soft_keeps * sharp, (k, soft, sharp)
        assert abs(half - sharp) < 0.25 * sharp, (k, half, sharp)


@pytest.mark.parametrize("pole", [0.0, 0.5])
def test_noise_alone_has_no_high_band_above_its_floor(pole: float) -> None:
    """Flat resin with white noise, or noise correlated along the scan line (AR(1) 0.5
    along x, independent across lines): the floor read from the spectrum takes it
    out, so the high band above it is ~0 of the band's raw power (the mid band has a
    thousand bins at 512²: within sampling error; tissue's power there is far above)."""
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 1.0, (512, 512))
    if pole:
        for x in range(1, noise.shape[1]):
            noise[:, x] = pole * noise[:, x - 1] + np.sqrt(1 - pole**2) * noise[:, x]
    F = np.fft.rfft2(noise)
    bands = band_powers(F, noise.shape, CPU)
    assert bands is not None
    p_high, n_high, p_mid, n_mid = bands
    assert abs(p_high - n_high) < 0.04 * p_high, bands
    assert abs(p_mid - n_mid) < 0.2 * p_mid, bands


def test_no_signal_in_the_mid_band_gives_no_ratio() -> None:
    assert spectral_ratio([None]) is None
    assert spectral_ratio([(1.0, 1.0, 2.0, 2.0)]) is None
    assert spectral_ratio([(3.0, 1.0, 5.0, 1.0), (1.0, 1.0, 3.0, 1.0)]) == pytest.approx(2 / 6)


def test_only_mhfd_gives_a_spectral_ratio(isbi_slices: Slices) -> None:
    image = synth.degrade(isbi_slices[3], rng=np.random.default_rng(0), dose=30.0)
    assert score_image(image, backend=CPU, patch_size=256).spectral is not None
    assert score_image(image, backend=CPU, criterion="tenengrad").spectral is None


def test_no_ratio_where_the_floor_is_not_the_tiles_noise() -> None:
    """``(P_high, N_high, P_mid, N_mid)`` per patch: a mid band not above its own
    floor, or a high band with nothing above its floor, says the floor is not the
    noise that is there (noise correlated in 2-D): no ratio rather than a wrong one."""
    assert spectral_ratio([(2.0, 1.0, 5.0, 1.0)]) == pytest.approx(0.25)
    assert spectral_ratio([(2.0, 1.0, 1.5, 1.0)]) is None
    assert spectral_ratio([(1.0, 1.0, 5.0, 1.0)]) is None


@pytest.mark.parametrize(
    ("dose", "noise"),
    [(30.0, {"noise_sigma_2d": 0.7}), (30.0, {}), (200.0, {"noise_pole_x": 0.45})],
)
def test_a_blurred_quarter_has_a_far_lower_ratio_than_the_tiles_other_patches(
    isbi_slices: Slices, dose: float, noise: dict[str, float]
) -> None:
    """512² crops of ISBI slices (×2, band-limited), 256 px patches: with one quarter
    blurred by σ 3 px (a wrinkle) that patch's ratio is below 0.45 of the median
    patch; in the sharp tile every patch is above it."""
    for k in SLICES:
        crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768]
        rng = np.random.default_rng([k, int(dose)])
        sharp = synth.degrade(crop, rng=rng, dose=dose, **noise)
        blur = synth.degrade(crop, rng=rng, dose=dose, defocus_sigma=3.0, **noise)
        wrinkle = sharp.copy()
        wrinkle[:256, :256] = blur[:256, :256]
        for image, weak in ((sharp, False), (wrinkle, True)):
            result = score_image(synth.to_uint(image, 8), backend=CPU, patch_size=256)
            ratios = np.asarray(result.patch_spectral).ravel()
            rest = float(np.nanmedian(ratios[1:] if weak else ratios))
            if weak:
                assert ratios[0] < 0.45 * rest, (k, ratios)
            else:
                assert np.all(ratios >= 0.45 * rest), (k, ratios)


def test_a_patch_with_nothing_left_in_its_high_band_has_ratio_zero() -> None:
    """Its mid band stands above its floor: the high band at or below the floor is
    detail gone (ratio 0), not "no ratio" as for a whole tile; a mid band under twice
    its floor, or no bands, gives none."""
    assert patch_ratio((1.0, 1.2, 10.0, 1.0)) == 0.0
    assert spectral_ratio([(1.0, 1.2, 10.0, 1.0)]) is None
    assert patch_ratio((4.0, 1.0, 10.0, 1.0)) == pytest.approx(3.0 / 9.0)
    assert patch_ratio((4.0, 1.0, 1.9, 1.0)) is None
    assert patch_ratio(None) is None


@pytest.mark.parametrize("dose", [8.0, 30.0])
def test_a_sliver_of_tissue_in_resin_is_not_read_as_lost_detail(
    isbi_slices: Slices, dose: float
) -> None:
    """A sharp 512² tile whose first 256 px patch is 95 % resin (a 13 px strip of
    tissue): that patch's high band is the floor's error, and its ratio read 0-0.3 of
    the tissue's (a wrinkle, to the policy). Its mid band is a small share of the
    tile's typical patch's: no ratio (or a normal one)."""
    for k in (0, 9, 18, 27):
        crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768].copy()
        resin = synth.resin((256, 243), rng=np.random.default_rng(k))
        crop[:256, 13:256] = resin
        image = synth.degrade(crop, rng=np.random.default_rng([k, int(dose)]), dose=dose)
        ratios = np.asarray(
            score_image(synth.to_uint(image, 8), backend=CPU, patch_size=256).patch_spectral
        ).ravel()
        rest = float(np.nanmedian(ratios[1:]))
        assert not ratios[0] < 0.45 * rest, (k, ratios)


def _band_powers_reference(F: np.ndarray, shape: tuple[int, int]) -> tuple[float, ...]:
    """``band_powers`` as written before it read each side's powers once: every band
    squares its own blocks."""
    spectrum = sys.modules["focuswatch.score.spectrum"]
    lay = spectrum._layout(CPU, shape, F.real.dtype.name)
    H = shape[0]
    noise_rows = F[lay.r1 : H - lay.r1 + 1]
    along_x = np.mean(spectrum._power(noise_rows[:, : lay.kx]), axis=0)
    corner = float(np.mean(spectrum._power(noise_rows[:, lay.c1 :])))
    out: list[float] = []
    for band in (0, 1):
        p = n = 0.0
        for rows, side in ((F[: lay.ky], 0), (F[H - lay.ky + 1 :], 1)):
            mask = lay.masks[2 * band + side]
            p += float(np.sum(spectrum._power(rows[:, : lay.kx]) * mask))
            along_y = np.mean(spectrum._power(rows[:, lay.c1 :]), axis=1)
            n += float(along_y @ mask @ along_x) / corner
        out += [p, n]
    return tuple(out)


@pytest.mark.parametrize("shape", [(256, 256), (300, 420)])
def test_band_powers_are_the_per_band_sums_exactly(shape: tuple[int, int]) -> None:
    """Reading each side's powers once for both bands changes no bit of the powers or
    their floors."""
    rng = np.random.default_rng(shape[1])
    image = synth.degrade(synth.neuropil(shape, rng=rng), rng=rng, dose=30.0).astype(np.float32)
    F = np.fft.rfft2(image).astype(np.complex64)
    assert band_powers(F, shape, CPU) == _band_powers_reference(F, shape)


@pytest.mark.parametrize("dose", [30.0, 200.0])
def test_repeated_pixels_read_the_tissues_fine_detail_not_its_mirror(
    isbi_slices: Slices, dose: float
) -> None:
    """Tissue upsampled by repeating pixels 2×2, noise correlated along x: beyond 0.4
    cycles/px the spectrum holds a mirror of the tissue's low frequencies, which read as
    noise raised the floors (the mid band's 3-20×): a sharp tile's ratio fell to
    0.6-0.8 of the same tissue upsampled by a cubic spline, by a different amount in
    every section, while a blurred one's stayed (false and missed alerts). With the
    noise model's floor the sharp ratio is within 20 % of the cubic one's, and σ 1.5
    px leaves at most 0.4 of it."""
    for k in (17, 26):
        big = synth.resample(isbi_slices[k], 2.0, order=3)
        cubic = np.clip(big, 0, 1)[:512, :512]
        repeat = np.kron(isbi_slices[k], np.ones((2, 2), np.float32))[:512, :512]

        def ratio(clean: np.ndarray, blur: float, seed: int = k) -> float:
            rng = np.random.default_rng(seed)
            image = synth.degrade(clean, rng=rng, dose=dose, defocus_sigma=blur, noise_pole_x=0.45)
            return _ratio(synth.to_uint(image, 16))

        sharp = ratio(repeat, 0.0)
        assert sharp > 0.8 * ratio(cubic, 0.0), k
        assert ratio(repeat, 1.5) < 0.4 * sharp, k


@pytest.mark.parametrize(("section", "dose"), [(0, 30.0), (2, 30.0), (1, 200.0)])
def test_a_patch_at_the_sections_edge_has_no_signature_of_its_own(
    section: int, dose: float
) -> None:
    """``focuswatch demo``'s wafer, position r3-c2: one 256 px patch of the 512² tile is
    resin but for the section's soft rim and a corner of tissue (a fifth to a third of
    the tile's typical content). Its high band sits within the floor's error and its
    fine fraction follows the rim, not the focus: its ratio read 0.0-0.27 against
    0.66 and it was taken for a wrinkle in every section. With too little content it
    gets neither a spectral ratio nor a fine fraction; the tissue's patches keep theirs."""
    image = synth.degrade(
        serial_section((512, 512), (7, 3, 2), section * 0.02, density=0.374),
        rng=np.random.default_rng([7, section, 3, 2]),
        dose=dose,
        jitter_px=0.15,
    )
    result = score_image(synth.to_uint(image, 8), backend=CPU, patch_size=256)
    content = np.asarray(result.patch_content).ravel()
    assert content[2] < 0.5 * np.median(content[[0, 1, 3]]), content
    ratios = np.asarray(result.patch_spectral).ravel()
    fractions = np.asarray(result.patch_fine_fraction).ravel()
    assert np.isnan(ratios[2]), ratios
    assert np.isnan(fractions[2]), fractions
    assert np.isfinite(ratios[[1, 3]]).all()
    assert np.isfinite(fractions[[1, 3]]).all()


@pytest.mark.parametrize("dose", [30.0, 200.0])
def test_a_wrinkle_keeps_the_content_its_patch_signature_needs(
    isbi_slices: Slices, dose: float
) -> None:
    """The content (σ 8-32 px) barely moves with blur: a σ 3 px wrinkle over one 256 px
    patch keeps at least 0.8 of the tissue's typical patch content, so its patch keeps
    the spectral ratio and fine fraction that tell it (a patch under half is not
    compared by its own signature)."""
    for k in SLICES:
        crop = synth.resample(isbi_slices[k], 2.0, order=3)[256:768, 256:768]
        rng = np.random.default_rng([k, int(dose)])
        sharp = synth.degrade(crop, rng=rng, dose=dose)
        wrinkle = sharp.copy()
        wrinkle[:256, :256] = synth.degrade(crop, rng=rng, dose=dose, defocus_sigma=3.0)[:256, :256]
        result = score_image(synth.to_uint(wrinkle, 8), backend=CPU, patch_size=256)
        content = np.asarray(result.patch_content).ravel()
        assert content[0] >= 0.8 * np.median(content[1:]), (k, content)
        assert np.isfinite(np.asarray(result.patch_spectral).ravel()[0])
        assert np.isfinite(np.asarray(result.patch_fine_fraction).ravel()[0])


def test_faithful_mode_keeps_its_per_patch_signatures_for_a_patch_of_little_tissue(
    isbi_slices: Slices,
) -> None:
    """The content guard is revision 7's, of the noise-floor modes: faithful mode's
    numbers are revision 1's (``choices.scorer_revision``), so a wafer begun in faithful
    mode goes on across the upgrade, and its patches must read as they did. A patch of
    resin but for a 40 px corner of tissue: fast mode gives it no signature of its own,
    faithful mode its fine fraction and spectral ratio as before (0.92 and 1.70)."""
    clean = np.clip(synth.resample(isbi_slices[3], 2.0, order=3), 0, 1)[256:768, 256:768]
    image = clean.copy()
    image[256:, 256:] = 0.8
    image[256:296, 256:296] = clean[256:296, 256:296]
    tile = synth.to_uint(synth.degrade(image, rng=np.random.default_rng(0), dose=30.0), 8)
    fast = score_image(tile, backend=CPU, mode="fast", patch_size=256)
    faithful = score_image(tile, backend=CPU, mode="faithful", patch_size=256)
    assert np.isnan(np.asarray(fast.patch_fine_fraction)[1, 1])
    assert np.isfinite(np.asarray(faithful.patch_fine_fraction)[1, 1])
    assert np.isfinite(np.asarray(faithful.patch_spectral)[1, 1])
