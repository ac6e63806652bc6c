"""A stand-in for the parts of CuPy that ``focuswatch.gpu`` drives, on NumPy; and
``HAS_GPU``, whether the real thing is here.

No GPU runs here, so the lane's choreography (pinned buffers, a non-blocking copy
stream per slot, the compute stream waiting on the copy's event) is checked against
this recording fake; the same tests' GPU twins run against real CuPy where a GPU is.
Every call that matters is appended to ``FakeCupy.log`` as a tuple.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from focuswatch.backend import Backend, get_backend
from focuswatch.errors import BackendError


def _gpu_available() -> bool:
    try:
        get_backend("gpu")
    except BackendError:
        return False
    return True


#: Whether real CuPy and a device are here (tests of the real thing skip without).
HAS_GPU = _gpu_available()


class FakeEvent:
    def __init__(self, stream: FakeStream) -> None:
        self.stream = stream

    def synchronize(self) -> None:
        pass  # NumPy work is done when the call returns


class FakeStream:
    def __init__(self, cp: FakeCupy, *, non_blocking: bool = False, null: bool = False) -> None:
        self._cp = cp
        self.non_blocking = non_blocking
        self.null = null

    def record(self) -> FakeEvent:
        ev = FakeEvent(self)
        self._cp.note("record", self, ev)
        return ev

    def wait_event(self, ev: FakeEvent) -> None:
        self._cp.note("wait", self, ev)

    def synchronize(self) -> None:
        pass  # as FakeEvent.synchronize


class DeviceArray(np.ndarray[Any, Any]):
    """A 'device' array: NumPy memory with CuPy's ``set`` (the host→device copy)."""

    cp: FakeCupy

    def set(self, host: np.ndarray[Any, Any], stream: FakeStream | None = None) -> None:
        if host.shape != self.shape or host.dtype != self.dtype:  # CuPy refuses these too
            raise ValueError(f"set: {host.dtype}{host.shape} into {self.dtype}{self.shape}")
        if self.cp.cuda.current_device() is None:
            raise RuntimeError("copy outside a device context: it would go to device 0")
        np.copyto(self, host)
        self.cp.note("copy", stream, host)


_entered = threading.local()  # the device each thread has entered, as CuPy keeps it


class _Device:
    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id

    def __enter__(self) -> _Device:
        self._before = getattr(_entered, "id", None)
        _entered.id = self.id
        return self

    def __exit__(self, *exc: object) -> None:
        _entered.id = self._before


class _Cuda:
    def __init__(self, cp: FakeCupy) -> None:
        self._cp = cp
        self._null = threading.local()
        self.Device = _Device

    def Stream(self, *, non_blocking: bool = False) -> FakeStream:  # noqa: N802 (CuPy's name)
        return FakeStream(self._cp, non_blocking=non_blocking)

    @staticmethod
    def current_device() -> int | None:
        """The device this thread entered (``None``: none; real CuPy would use 0)."""
        return getattr(_entered, "id", None)

    def get_current_stream(self) -> FakeStream:
        if not hasattr(self._null, "stream"):  # per thread, like CuPy's
            self._null.stream = FakeStream(self._cp, null=True)
        stream: FakeStream = self._null.stream
        return stream

    def alloc_pinned_memory(self, nbytes: int) -> bytearray:
        self._cp.note("pinned", nbytes)
        return bytearray(nbytes)


class FakeCupy:
    """``xp`` for the stand-in backend: NumPy's functions plus ``cuda`` and ``empty``
    that make ``DeviceArray``s. ``on_note`` sees every logged call (tests hook it)."""

    def __init__(self) -> None:
        self.cuda = _Cuda(self)
        self.log: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self.on_note: Callable[[tuple[Any, ...]], None] = lambda entry: None

    def note(self, *entry: Any) -> None:
        with self._lock:
            self.log.append(entry)
        self.on_note(entry)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> DeviceArray:
        a = np.empty(shape, dtype=dtype).view(DeviceArray)
        a.cp = self
        return a

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def fake_backend() -> tuple[Backend, FakeCupy]:
    cp = FakeCupy()
    return Backend("cupy", cp, scipy.fft, scipy.ndimage, device="fake:0"), cp
