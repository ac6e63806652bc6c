"""Backend choice: NumPy on the CPU, CuPy on a GPU, and a clear word when there is none."""

from __future__ import annotations

import numpy as np
import pytest
import structlog

from focuswatch import cpu_fft
from focuswatch.backend import Backend, get_backend
from focuswatch.errors import BackendError


def _has_gpu() -> bool:
    try:
        get_backend("gpu")
    except BackendError:
        return False
    return True


HAS_GPU = _has_gpu()


def test_cpu_backend_is_numpy_with_duccs_ffts() -> None:
    b = get_backend("cpu")
    assert b.name == "numpy"
    assert b.xp is np
    assert b.fft is cpu_fft
    assert b.device == "cpu"
    a = b.xp.arange(3)
    assert isinstance(b.asnumpy(a), np.ndarray)


def test_unknown_backend_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, cpu, gpu"):
        get_backend("tpu")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; the no-GPU answer cannot be seen")
def test_gpu_without_cupy_or_device_says_so() -> None:
    with pytest.raises(BackendError, match="GPU requested but CuPy/an NVIDIA GPU is not available"):
        get_backend("gpu")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU; auto does not fall back")
def test_auto_falls_back_to_numpy_with_one_log_line() -> None:
    with structlog.testing.capture_logs() as logs:
        b = get_backend("auto")
    assert b.name == "numpy"
    assert len(logs) == 1
    assert logs[0]["event"] == "backend_fallback"
    assert logs[0]["backend"] == "numpy"
    assert "CPU" in logs[0]["reason"]


def test_backend_is_hashable_and_frozen() -> None:
    b = get_backend("cpu")
    assert hash(b) == hash(get_backend("cpu"))
    with pytest.raises(AttributeError):
        b.name = "cupy"  # type: ignore[misc]
    assert isinstance(b, Backend)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and an NVIDIA GPU")
@pytest.mark.parametrize("mode", ["default", "faithful", "fast"])
def test_gpu_and_cpu_scores_agree(mode: str) -> None:
    """Same code on both: counts within 0.5 % (float32 FFTs differ in rounding)."""
    from focuswatch import synth
    from focuswatch.score import score_image

    rng = np.random.default_rng(0)
    img = synth.to_uint(
        synth.degrade(synth.neuropil((1024, 1024), rng=rng), rng=rng, dose=30.0), 16
    )
    cpu = score_image(img, backend=get_backend("cpu"), mode=mode, patch_size=512)
    gpu = score_image(img, backend=get_backend("gpu"), mode=mode, patch_size=512)
    assert gpu.score == pytest.approx(cpu.score, rel=0.005)
    assert cpu.patch_scores is not None
    assert gpu.patch_scores is not None
    np.testing.assert_allclose(gpu.patch_scores, cpu.patch_scores, rtol=0.005)
    assert gpu.content == pytest.approx(cpu.content, rel=0.01)
    native_cpu = score_image(img, backend=get_backend("cpu"), mode=mode, resolution="native")
    native_gpu = score_image(img, backend=get_backend("gpu"), mode=mode, resolution="native")
    assert native_gpu.score == pytest.approx(native_cpu.score, rel=0.005)
