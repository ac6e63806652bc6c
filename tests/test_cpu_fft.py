"""focuswatch.cpu_fft: SciPy's FFT interface on ducc0, the same transforms to rounding."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import scipy.fft

from focuswatch import cpu_fft, synth
from focuswatch.backend import get_backend
from focuswatch.score import score_image

RNG = np.random.default_rng(7)
REAL = RNG.standard_normal((64, 48)).astype(np.float32)
SPECTRUM = scipy.fft.rfft2(REAL)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype and shape, equal to float rounding (relative to the largest entry)."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    tol = 1e-6 if want.dtype in (np.float32, np.complex64) else 1e-13
    assert float(np.abs(got - want).max()) <= tol * float(np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint16])
def test_the_forward_transforms_are_scipys(dtype: type) -> None:
    x = (REAL * 100 + 1000).astype(dtype)
    _close(cpu_fft.rfft2(x), scipy.fft.rfft2(x))
    _close(cpu_fft.rfft(x[3]), scipy.fft.rfft(x[3]))
    _close(cpu_fft.rfft(x, axis=0), scipy.fft.rfft(x, axis=0))
    _close(cpu_fft.fft(x[:, 5]), scipy.fft.fft(x[:, 5]))
    _close(cpu_fft.fft(x[:, 5].astype(np.complex64)), scipy.fft.fft(x[:, 5].astype(np.complex64)))


@pytest.mark.parametrize("n", [None, 46, 47, 48, 49, 60])
def test_the_inverses_are_scipys_with_the_output_length_as_scipy_reads_it(n: int | None) -> None:
    _close(cpu_fft.irfft(SPECTRUM, n=n, axis=1), scipy.fft.irfft(SPECTRUM, n=n, axis=1))
    _close(cpu_fft.ifft(SPECTRUM, axis=0), scipy.fft.ifft(SPECTRUM, axis=0))
    s = None if n is None else (64 if n % 2 else 60, n)
    _close(cpu_fft.irfft2(SPECTRUM, s=s), scipy.fft.irfft2(SPECTRUM, s=s))


def test_the_batched_inverses_of_fast_mode_are_scipys() -> None:
    """Several levels' products at once: the column pass in place, then the rows."""
    batch = np.stack([SPECTRUM, 2 * SPECTRUM, SPECTRUM * 1j])
    work = batch.copy()
    got = cpu_fft.irfft(cpu_fft.ifft(work, axis=1, overwrite_x=True), n=48, axis=2)
    _close(got, scipy.fft.irfft(scipy.fft.ifft(batch, axis=1), n=48, axis=2))
    again = cpu_fft.irfft2(batch.copy(), s=(64, 48), axes=(1, 2), overwrite_x=True)
    _close(again, scipy.fft.irfft2(batch, s=(64, 48), axes=(1, 2)))


def test_overwrite_x_transforms_in_place_and_its_absence_leaves_the_input_alone() -> None:
    """The pruned inverse transforms a view of its work array in place (``mhfd``)."""
    kept = SPECTRUM.copy()
    cpu_fft.ifft(kept, axis=0)
    cpu_fft.irfft(kept, n=48, axis=1)
    cpu_fft.irfft2(kept, s=(64, 48))
    np.testing.assert_array_equal(kept, SPECTRUM)
    work = np.zeros_like(SPECTRUM)
    part = work[:, :10]
    part[...] = SPECTRUM[:, :10]
    col = cpu_fft.ifft(part, axis=0, overwrite_x=True)
    assert np.may_share_memory(col, work)
    _close(work[:, :10], scipy.fft.ifft(SPECTRUM[:, :10], axis=0))


def test_workers_are_counted_as_scipy_counts_them() -> None:
    x = RNG.standard_normal((256, 256)).astype(np.float32)
    want = scipy.fft.rfft2(x)
    for workers in (None, 1, 2, -1, -2):
        _close(cpu_fft.rfft2(x, workers=workers), want)
    with pytest.raises(ValueError, match="zero"):
        cpu_fft.rfft2(x, workers=0)
    with pytest.raises(ValueError, match="out of range"):
        cpu_fft.rfft2(x, workers=-(os.cpu_count() or 1) - 1)


def test_an_argument_the_core_never_passes_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        cpu_fft.rfft2(REAL, norm="ortho")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        cpu_fft.fft(REAL[0], n=100)  # type: ignore[call-arg]


@pytest.mark.parametrize("mode", ["fast", "default"])
def test_scores_agree_with_pocketffts_as_the_gpus_do(mode: str) -> None:
    """ducc0 against SciPy's pocketfft for every transform of the scorer: counts within
    0.5 % (float32 rounding moves a few maxima across the threshold), the rest closer."""
    rng = np.random.default_rng(0)
    img = synth.to_uint(
        synth.degrade(synth.neuropil((1024, 1024), rng=rng), rng=rng, dose=30.0), 16
    )
    ducc = get_backend("cpu")
    assert ducc.fft is cpu_fft
    pocket = dataclasses.replace(ducc, fft=scipy.fft)
    a = score_image(img, backend=pocket, mode=mode, patch_size=512)
    b = score_image(img, backend=ducc, mode=mode, patch_size=512)
    assert b.score == pytest.approx(a.score, rel=0.005)
    assert a.patch_scores is not None
    assert b.patch_scores is not None
    np.testing.assert_allclose(b.patch_scores, a.patch_scores, rtol=0.005)
    assert b.content == pytest.approx(a.content, rel=1e-4)
    assert b.noise == pytest.approx(a.noise, rel=1e-4)
    assert b.fine_fraction == pytest.approx(a.fine_fraction, abs=0.005)
