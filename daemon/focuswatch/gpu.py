"""GPU serving: read and copy the next tile while the current one is scored.

On a GPU worker the time per tile is read (disk, decode) + host→device copy +
scoring. Only scoring needs the GPU's compute, so a ``GpuLane`` lets two tiles be
in flight on one GPU: while one caller scores tile *i* (under the lane's compute
lock), another reads tile *i+1*:

* into **pinned** host memory (``cupy.cuda.alloc_pinned_memory``), the only kind a
  copy engine can read asynchronously;
* and copies it to the device on its slot's own **non-blocking** stream (a blocking
  one would serialise with the legacy default stream that scoring runs on);
* scoring waits on that copy's event only, then runs alone on the GPU.

A slot (pinned buffer, device buffer, copy stream) is held from read to the end of
scoring, which returns host values and so has finished with both buffers; slots
are reused while tile shapes stay the same. The callers are the threads of a worker
process (``worker.LocalExecutor`` with two tiles per GPU worker) or of a Dask worker
(``--nthreads 2``, tasks asking for half a GPU), so the overlap needs no queue of
its own and every tile keeps its own job, time limit and retry.

CuPy is imported only through ``focuswatch.backend.get_backend("gpu")``, never at
module import. Without a usable GPU everything here raises ``BackendError``
("this worker has no usable GPU: ...").
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from focuswatch import scoring, tiles
from focuswatch.backend import Backend, get_backend
from focuswatch.errors import BackendError
from focuswatch.scoring import ScoreSettings, TileScore

__all__ = ["DEPTH", "GpuLane", "lane", "require_gpu", "score_path_gpu", "tiles_in_flight"]

#: Tiles in flight on one GPU: one scored, one read and copied meanwhile.
DEPTH = 2


def tiles_in_flight(overlap: bool) -> int:
    """Tiles a GPU worker holds at once: ``DEPTH`` with ``scoring.gpu_overlap``, else 1."""
    return DEPTH if overlap else 1


@functools.lru_cache(maxsize=1)
def _gpu_backend() -> Backend:
    return get_backend("gpu")  # probed once per process (a failure is not cached)


def require_gpu() -> Backend:
    """The CuPy backend, or ``BackendError("this worker has no usable GPU: ...")``."""
    try:
        return _gpu_backend()
    except BackendError as exc:
        raise BackendError(f"this worker has no usable GPU: {exc}") from None


class _Slot:
    """A pinned host buffer, a device buffer and a copy stream for one tile in flight."""

    def __init__(self, cp: Any) -> None:
        self._cp = cp
        self.shape: tuple[int, ...] = ()
        self.dtype: Any = None
        self.host: Any = None
        self.device: Any = None
        self._pinned: Any = None
        self._capacity = 0  # bytes of pinned memory held
        self.stream = cp.cuda.Stream(non_blocking=True)

    def fit(self, shape: tuple[int, ...], dtype: Any) -> None:
        """Buffers for ``shape`` and ``dtype``. The pinned block only ever grows: CuPy's
        pinned pool keeps every freed block of a size for good, so one block per size
        seen would pin ever more RAM."""
        if self.host is not None and self.shape == shape and self.dtype == dtype:
            return
        self.idle()
        count = int(np.prod(shape))
        nbytes = max(count * np.dtype(dtype).itemsize, 1)
        if nbytes > self._capacity:
            self._pinned = self._cp.cuda.alloc_pinned_memory(nbytes)
            self._capacity = nbytes
        self.host = np.frombuffer(self._pinned, dtype=dtype, count=count).reshape(shape)
        self.device = self._cp.empty(shape, dtype=dtype)
        self.shape, self.dtype = shape, dtype

    def idle(self) -> None:
        """Wait until no copy out of the pinned buffer is running."""
        self.stream.synchronize()


class GpuLane:
    """Scores tiles on one GPU for any number of calling threads, ``depth`` at a time:
    reads and copies run concurrently, scoring one tile at a time.

    ``backend`` is the CuPy backend, on its current device (tests pass a stand-in, since
    no GPU runs here); ``score`` is the scoring step (``scoring.score_array``), injected
    for the same reason.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        depth: int = DEPTH,
        score: Callable[..., TileScore] = scoring.score_array,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.backend = backend
        self._cp = backend.xp
        # CuPy's current device is per thread: every caller must use the lane's.
        self._device_id = int(self._cp.cuda.Device().id)
        self._score = score
        self._compute = threading.Lock()
        # A caller waits here for a free slot: at most ``depth`` tiles in flight. Last
        # in, first out: a lone caller keeps reusing one slot's buffers.
        self._free: queue.LifoQueue[_Slot] = queue.LifoQueue()
        for _ in range(depth):
            self._free.put(_Slot(self._cp))

    def score_path(self, path: str | Path, settings: ScoreSettings) -> TileScore:
        """Read, copy and score one tile; ``TileError`` for anything wrong with the file.

        A tile over ``settings.memory_limit_mb`` is scored patch by patch from the file
        (``scoring.score_path``), holding the GPU as any scoring does.
        """
        name = str(path)
        with self._cp.cuda.Device(self._device_id):
            slot = self._free.get()
            try:
                return self._score_in(slot, name, settings)
            finally:
                slot.idle()  # only matters after an error between copy and scoring
                self._free.put(slot)

    def _score_in(self, slot: _Slot, name: str, settings: ScoreSettings) -> TileScore:
        cp = self._cp
        t0 = time.perf_counter()
        with tiles.open_tile(name, within=settings.within) as tile:
            big = scoring.too_big(tile, settings)
            if not big:
                image = tile.read()
                meta = tile.meta
        if big:
            with self._compute:
                return scoring.score_path(name, settings)
        slot.fit(tuple(image.shape), image.dtype.newbyteorder("="))  # CuPy: native order only
        np.copyto(slot.host, image)
        del image
        read_ms = (time.perf_counter() - t0) * 1e3
        slot.device.set(slot.host, stream=slot.stream)
        copied = slot.stream.record()
        with self._compute:
            compute = cp.cuda.get_current_stream()
            compute.wait_event(copied)  # this tile's copy, nothing else
            try:
                return self._score(
                    slot.device, name=name, settings=settings, meta=meta, read_ms=read_ms
                )
            finally:
                # Scoring returns host values, so its kernels are done, unless it failed
                # early: then wait, so the slot's buffers are idle when handed back.
                compute.synchronize()


_lanes: dict[int, GpuLane] = {}
_lanes_lock = threading.Lock()


def lane() -> GpuLane:
    """This process's lane for its current GPU (created on first use)."""
    backend = require_gpu()
    device = int(backend.xp.cuda.Device().id)
    with _lanes_lock:
        if device not in _lanes:
            _lanes[device] = GpuLane(backend)
        return _lanes[device]


def score_path_gpu(path: str | Path, settings: ScoreSettings) -> TileScore:
    """``scoring.score_path`` on this process's GPU lane: the ``ScoreFn`` GPU workers run
    (local worker processes and Dask tasks alike), safe to call from several threads."""
    return lane().score_path(path, dataclasses.replace(settings, backend="gpu"))
