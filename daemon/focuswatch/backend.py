"""The array backend: NumPy + SciPy on the CPU, or CuPy + cupyx on an NVIDIA GPU.

The CPU's FFTs are ducc0's (``focuswatch.cpu_fft``: SciPy's interface, pocketfft's
successor, ~8 % less CPU per tile), its ndimage SciPy's.

Chosen once at start (``get_backend``) and passed into the pure scoring core, which
only ever touches ``backend.xp``, ``backend.fft`` and ``backend.ndimage``, so the
same code runs on both. CuPy is imported lazily, only when a GPU is asked for or
probed, never at module import: the CPU-only install must not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.ndimage
import structlog

from focuswatch import cpu_fft
from focuswatch.choices import BACKEND_NAMES
from focuswatch.errors import BackendError

__all__ = ["BACKEND_NAMES", "Backend", "get_backend"]


@dataclass(frozen=True)
class Backend:
    """An array module and its FFT and ndimage companions.

    ``name`` is ``"numpy"`` or ``"cupy"``; ``device`` says where arrays live
    (``"cpu"`` or e.g. ``"cuda:0 NVIDIA A100"``).
    """

    name: str
    xp: Any
    fft: Any
    ndimage: Any
    device: str = "cpu"
    #: Threads each CPU FFT call may use (-1: every core). Scoring patches on several
    #: threads at once gives each thread a backend with 1, so the cores are not
    #: oversubscribed. Not part of equality: caches keyed on the backend are shared.
    fft_workers: int = field(default=-1, compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asnumpy(self, a: Any) -> np.ndarray[Any, Any]:
        """``a`` as a host NumPy array (a no-op on the CPU backend)."""
        if self.name == "cupy":
            return np.asarray(self.xp.asnumpy(a))
        return np.asarray(a)

    def fft_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``fft`` calls: ``fft_workers`` threads for the
        CPU's FFTs (default: all cores)."""
        return {"workers": self.fft_workers} if self.name == "numpy" else {}


def _numpy_backend() -> Backend:
    return Backend(name="numpy", xp=np, fft=cpu_fft, ndimage=scipy.ndimage, device="cpu")


def _cupy_backend() -> Backend | str:
    """The CuPy backend, or a sentence saying why it cannot be had."""
    try:
        import cupy
        import cupyx.scipy.fft
        import cupyx.scipy.ndimage
    except Exception as exc:  # ImportError, or CUDA libraries missing at import
        return f"cannot import cupy ({type(exc).__name__}: {exc})"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, no device
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "no CUDA device found"
    dev = cupy.cuda.Device()
    try:
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        raw = props.get("name", b"GPU")
        label = raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:  # the name is cosmetic; never fail on it
        label = "GPU"
    return Backend(
        name="cupy",
        xp=cupy,
        fft=cupyx.scipy.fft,
        ndimage=cupyx.scipy.ndimage,
        device=f"cuda:{dev.id} {label}",
    )


def get_backend(name: str = "auto") -> Backend:
    """The backend for ``name``: ``"cpu"``, ``"gpu"`` or ``"auto"``.

    ``"gpu"`` raises ``BackendError`` when CuPy or a CUDA device is missing;
    ``"auto"`` uses the GPU when it can and otherwise falls back to NumPy, logging
    one line that says why.
    """
    if name == "cpu":
        return _numpy_backend()
    if name in ("gpu", "auto"):
        gpu = _cupy_backend()
        if isinstance(gpu, Backend):
            return gpu
        if name == "gpu":
            raise BackendError(f"GPU requested but CuPy/an NVIDIA GPU is not available: {gpu}")
        structlog.get_logger().info(
            "backend_fallback",
            backend="numpy",
            reason=f"no GPU backend, scoring on the CPU: {gpu}",
        )
        return _numpy_backend()
    raise ValueError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {name!r}")
