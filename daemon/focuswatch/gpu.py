"""GPU serving: read and copy the next tile while the current one is scored.

On a GPU worker the time per tile is read (disk, decode) + host→device copy +
scoring. The first two need no GPU compute, so ``Prefetcher`` does them for tile
``i+1`` in a background thread while the caller scores tile ``i``:

* the tile is read (``focuswatch.tiles``, same checks and metadata as everywhere)
  and placed in **pinned** host memory (``cupy.cuda.alloc_pinned_memory``), the only
  kind a copy engine can read asynchronously;
* it is copied to the device on a separate **non-blocking** stream (a blocking one
  would serialise with the legacy default stream that scoring runs on);
* scoring waits on that copy's event only, and records an event when it is done,
  which the copy of the tile after next waits on before reusing the buffers
  (two slots, each a pinned host buffer and a device buffer, reused while shapes
  stay the same).

CuPy is imported only through ``focuswatch.backend.get_backend("gpu")``, never at
module import. Without a usable GPU everything here raises ``BackendError``
("this worker has no usable GPU: ...").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from focuswatch import scoring, tiles
from focuswatch.backend import Backend, get_backend
from focuswatch.errors import BackendError, TileError
from focuswatch.scoring import ScoreSettings, TileScore

__all__ = ["DeviceTile", "Prefetcher", "require_gpu", "score_paths_gpu"]


def require_gpu() -> Backend:
    """The CuPy backend, or ``BackendError("this worker has no usable GPU: ...")``."""
    try:
        return get_backend("gpu")
    except BackendError as exc:
        raise BackendError(f"this worker has no usable GPU: {exc}") from None


@dataclass(frozen=True)
class DeviceTile:
    """One tile on the device (``image``, valid until the next tile is requested), or
    the reason it could not be read (``error``)."""

    path: str
    image: Any
    meta: Any
    read_ms: float
    error: TileError | None = None


class _Slot:
    """A pinned host buffer and a device buffer for one tile in flight, with the events
    that say when each may be reused."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: Any = None
        self.host: Any = None
        self.device: Any = None
        self.copied: Any = None  # event: the host→device copy out of ``host`` is done
        self.consumed: Any = None  # event: scoring of what is in ``device`` is done

    def ensure(self, shape: tuple[int, ...], dtype: Any, cp: Any) -> None:
        if self.host is not None and self.shape == shape and self.dtype == dtype:
            return
        if self.copied is not None:
            self.copied.synchronize()  # the old pinned buffer may still be read by a copy
        if self.consumed is not None:
            self.consumed.synchronize()
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        mem = cp.cuda.alloc_pinned_memory(max(nbytes, 1))
        self.host = np.frombuffer(mem, dtype=dtype, count=count).reshape(shape)
        self.device = cp.empty(shape, dtype=dtype)
        self.shape, self.dtype = shape, dtype
        self.copied = self.consumed = None


class Prefetcher:
    """Yield ``DeviceTile``s for ``paths`` in order; with ``overlap`` the next tile is read,
    pinned and copied on its own stream while the caller scores the current one.

    Score each yielded tile before asking for the next: its device buffer is reused
    for the tile after next. ``overlap=False`` reads and copies each tile only when
    it is asked for (the baseline the throughput bench compares against).
    """

    def __init__(self, paths: Iterable[str | Path], *, overlap: bool = True) -> None:
        self._backend = require_gpu()
        self._cp = self._backend.xp
        self._paths = [str(p) for p in paths]
        self._overlap = overlap
        self._device_id = int(self._cp.cuda.Device().id)
        self._slots = [_Slot(), _Slot()]
        # Separate and non-blocking: copies run beside work on the legacy default stream.
        self._copy_stream = self._cp.cuda.Stream(non_blocking=True)

    @property
    def backend(self) -> Backend:
        return self._backend

    def _load(self, i: int) -> tuple[DeviceTile, Any]:
        """Read tile ``i`` into its slot's pinned buffer and start the copy to the device.

        Runs in the reader thread (overlap) or the caller's; returns the tile and the
        event that marks its copy done (None when the tile could not be read).
        """
        cp = self._cp
        path = self._paths[i]
        t0 = time.perf_counter()
        try:
            with tiles.open_tile(path) as tile:
                image = tile.read()
                meta = tile.meta
        except TileError as exc:
            return DeviceTile(path, None, None, 0.0, error=exc), None
        slot = self._slots[i % 2]
        with cp.cuda.Device(self._device_id):
            slot.ensure(tuple(image.shape), image.dtype, cp)
            if slot.copied is not None:
                slot.copied.synchronize()  # the copy of tile i-2 has left the pinned buffer
            np.copyto(slot.host, image)
            read_ms = (time.perf_counter() - t0) * 1e3
            stream = self._copy_stream
            if slot.consumed is not None:
                stream.wait_event(slot.consumed)  # tile i-2 is scored: its device buffer is free
            slot.device.set(slot.host, stream=stream)
            slot.copied = stream.record()
        return DeviceTile(path, slot.device, meta, read_ms), slot.copied

    def __iter__(self) -> Iterator[DeviceTile]:
        n = len(self._paths)
        if n == 0:
            return
        cp = self._cp
        with ThreadPoolExecutor(1, thread_name_prefix="focuswatch-prefetch") as reader:
            pending: Future[tuple[DeviceTile, Any]] | None = (
                reader.submit(self._load, 0) if self._overlap else None
            )
            for i in range(n):
                if pending is not None:
                    tile, copied = pending.result()
                    pending = reader.submit(self._load, i + 1) if i + 1 < n else None
                else:
                    tile, copied = self._load(i)
                if copied is not None:
                    compute = cp.cuda.get_current_stream()
                    compute.wait_event(copied)  # scoring waits for this tile's copy only
                yield tile
                if tile.error is None:
                    self._slots[i % 2].consumed = cp.cuda.get_current_stream().record()


def score_paths_gpu(
    paths: Iterable[str | Path], settings: ScoreSettings, *, overlap: bool = True
) -> list[TileScore | TileError]:
    """Score tiles on this process's GPU, one after another, reading ahead with
    ``Prefetcher``; a tile that cannot be read or scored gives its ``TileError``."""
    gpu_settings = dataclasses.replace(settings, backend="gpu")
    out: list[TileScore | TileError] = []
    for tile in Prefetcher(paths, overlap=overlap):
        if tile.error is not None:
            out.append(tile.error)
            continue
        try:
            ts = scoring.score_array(
                tile.image, name=tile.path, settings=gpu_settings, meta=tile.meta
            )
        except TileError as exc:
            out.append(exc)
            continue
        out.append(dataclasses.replace(ts, read_ms=tile.read_ms))
    return out
