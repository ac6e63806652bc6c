"""SciPy's pocketfft against Intel MKL's FFT (``mkl_fft``) on the scorer's own transforms.

    python bench/fft_impl.py [--pairs 9] [--tile-pairs 7]

Needs ``mkl_fft`` and ``mkl-service`` (``pip install mkl_fft mkl-service``: about 1 GB
of MKL libraries; not a focuswatch dependency). Three parts, all on one thread, as
the service's pool threads score (one patch per core, ``fft_workers=1``):

1. the transforms one default-mode 1024² patch makes, recorded by passing a
   recording ``backend.fft`` to ``score_image`` (so the list follows the code);
2. each of them replayed with both implementations, alternated pair by pair on the
   same input, thread CPU time, ``mkl/pocket`` the median of the pairs' ratios;
   "per patch" weighs each transform by how often a patch makes it;
3. whole patches (eight 1024² patches of ``bench/pipeline.py``'s 8192² tile) scored
   with ``backend.fft`` = ``scipy.fft`` and = ``mkl_fft``'s SciPy interface,
   alternated, thread CPU time per patch; and how far the two scores differ;
4. ``--slices K``: K ISBI slices (``bench/isbi.py``) through focus (σ 0, 1, 2, 4 px) at
   the doses 8, 30 and 200 e/px, white noise (``bench/accuracy.py``'s series), each
   512² image scored with both: how many counts differ, and by how much.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from focuswatch.backend import Backend, get_backend
from focuswatch.score import score_image
from pipeline import tile_bytes
from speed import machine

#: One recorded call: (function, input shape, input dtype, keyword arguments but workers).
Call = tuple[str, tuple[int, ...], str, tuple[tuple[str, Any], ...]]


class Recording:
    """A ``backend.fft`` that counts each call (by signature) and passes it on."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: collections.Counter[Call] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._inner, name)
        if not callable(fn):
            return fn

        def call(x: Any, *args: Any, **kw: Any) -> Any:
            kept = tuple(sorted((k, v) for k, v in kw.items() if k != "workers"))
            self.calls[name, tuple(x.shape), x.dtype.name, kept] += 1
            return fn(x, *args, **kw)

        return call


def sample(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> Any:
    x = rng.standard_normal(shape).astype(np.float32)
    if np.dtype(dtype).kind == "c":
        return (x + 1j * rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    return x.astype(dtype)


def alternated(
    fns: dict[str, Callable[[Any], Any]], pairs: int, setup: Callable[[], Any] = lambda: None
) -> dict[str, list[float]]:
    """Thread CPU seconds of each of two calls, alternated (AB BA ...) ``pairs`` times;
    each call gets a fresh ``setup()`` (made outside the clock)."""
    names = list(fns)
    spent: dict[str, list[float]] = {k: [] for k in names}
    for p in range(pairs):
        for k in names if p % 2 == 0 else names[::-1]:
            state = setup()
            t0 = time.thread_time()
            fns[k](state)
            spent[k].append(time.thread_time() - t0)
    return spent


def replay(fn: Callable[..., Any], kw: dict[str, Any]) -> Callable[[list[Any]], None]:
    """``fn`` on each input of a list, one thread."""

    def run(xs: list[Any]) -> None:
        for x in xs:
            fn(x, workers=1, **kw)

    return run


def copies(x: Any, n: int) -> Callable[[], list[Any]]:
    """Fresh copies of ``x`` for each run (the inverses overwrite their input)."""
    return lambda: [x.copy() for _ in range(n)]


def ratio(spent: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    rs = [x / y for x, y in zip(spent[a], spent[b], strict=True)]
    return statistics.median(rs), min(rs), max(rs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9, help="A/B pairs per transform")
    ap.add_argument("--tile-pairs", type=int, default=7, help="A/B pairs of whole patches")
    ap.add_argument("--slices", type=int, default=3, help="ISBI slices compared (0: none)")
    args = ap.parse_args(argv)
    mkl = importlib.import_module("mkl")
    mk = importlib.import_module("mkl_fft.interfaces.scipy_fft")
    mkl.set_num_threads(1)
    impls = {"pocket": scipy.fft, "mkl": mk}
    base = dataclasses.replace(get_backend("cpu"), fft_workers=1)
    print(machine(base))
    print(f"mkl_fft {importlib.import_module('mkl_fft').__version__}, one thread\n")

    tile = tifffile.imread(io.BytesIO(tile_bytes(8192, seed=8192)))
    part = tile[:2048, :4096]  # eight 1024² patches
    rec = Recording(scipy.fft)
    score_image(part[:1024, :1024], backend=dataclasses.replace(base, fft=rec), threads=1)

    rng = np.random.default_rng(0)
    print(f"{'transform (per patch ×n)':52s} {'pocket ms':>9s} {'mkl ms':>8s} {'mkl/pocket':>10s}")
    per_patch = {"pocket": 0.0, "mkl": 0.0}
    for (name, shape, dtype, kept), n in rec.calls.most_common():
        x0 = sample(shape, dtype, rng)
        kw = dict(kept)
        reps = max(3, int(2e6 / np.prod(shape)))
        fns = {k: replay(getattr(m, name), kw) for k, m in impls.items()}
        spent = alternated(fns, args.pairs, copies(x0, reps))
        med = {k: statistics.median(v) / reps for k, v in spent.items()}
        for k in per_patch:
            per_patch[k] += n * med[k]
        r, lo, hi = ratio(spent, "mkl", "pocket")
        label = f"{name}{shape} {dtype}" + "".join(
            f" {k}={v}" for k, v in kept if k != "overwrite_x"
        )
        label += f" ×{n}"
        print(
            f"{label:52s} {med['pocket'] * 1e3:9.3f} {med['mkl'] * 1e3:8.3f} "
            f"{r:10.3f} ({lo:.2f}-{hi:.2f})"
        )
    print(
        f"{'per patch (the sum)':52s} {per_patch['pocket'] * 1e3:9.2f} "
        f"{per_patch['mkl'] * 1e3:8.2f} {per_patch['mkl'] / per_patch['pocket']:10.3f}\n"
    )

    backends: dict[str, Backend] = {k: dataclasses.replace(base, fft=m) for k, m in impls.items()}
    results = {k: score_image(part, backend=b, threads=1) for k, b in backends.items()}
    spent = alternated(
        {k: (lambda _, b=b: score_image(part, backend=b, threads=1)) for k, b in backends.items()},
        args.tile_pairs,
    )
    r, lo, hi = ratio(spent, "mkl", "pocket")
    med = {k: statistics.median(v) / 8 * 1e3 for k, v in spent.items()}
    print(
        f"whole 1024² patches (8 per call, {args.tile_pairs} pairs): pocket {med['pocket']:.1f} "
        f"ms, mkl {med['mkl']:.1f} ms CPU per patch; mkl/pocket {r:.3f} ({lo:.3f}-{hi:.3f})"
    )
    a, b = results["pocket"], results["mkl"]
    diff = np.abs(np.asarray(a.patch_scores) - np.asarray(b.patch_scores))
    print(
        f"scores: pocket {a.score}, mkl {b.score}; patch counts differ in "
        f"{int(np.count_nonzero(diff))} of {diff.size} patches, by at most {diff.max():.0f} "
        f"({100 * float((diff / np.asarray(a.patch_scores)).max()):.3f} %); fine fraction "
        f"{a.fine_fraction:.6f} / {b.fine_fraction:.6f}, content {a.content:.7f} / "
        f"{b.content:.7f}, noise {a.noise:.7f} / {b.noise:.7f}"
    )
    if args.slices:
        compare_slices(backends, args.slices)
    return 0


def compare_slices(backends: dict[str, Backend], n: int) -> None:
    """Both implementations' scores on ``n`` ISBI slices' through-focus series."""
    import isbi
    from accuracy import series

    keep = (0, 2, 4, 7)  # σ 0, 1, 2, 4 px of accuracy.SIGMAS
    rng = np.random.default_rng(15)
    rel: list[float] = []
    swaps = 0
    fine = []
    for clean in isbi.load()[:n]:
        for dose in (8.0, 30.0, 200.0):
            images = [
                series(clean, dose=dose, noise="white", blur="round", rng=rng)[i] for i in keep
            ]
            got = {
                k: [score_image(im, backend=be, threads=1) for im in images]
                for k, be in backends.items()
            }
            a = np.array([r.score for r in got["pocket"]])
            b = np.array([r.score for r in got["mkl"]])
            rel.extend(np.abs(b - a) / np.maximum(a, 1.0))
            swaps += int(np.any(np.argsort(-a, kind="stable") != np.argsort(-b, kind="stable")))
            fine.extend(
                abs((x.fine_fraction or 0.0) - (y.fine_fraction or 0.0))
                for x, y in zip(got["pocket"], got["mkl"], strict=True)
            )
    r = np.asarray(rel)
    print(
        f"ISBI: {r.size} images ({n} slices × 3 doses × σ 0, 1, 2, 4 px, 512²): counts differ "
        f"in {int(np.count_nonzero(r))}, by median {100 * np.median(r):.3f} % and at most "
        f"{100 * r.max():.3f} %; a series' focus order changed in {swaps} of {3 * n}; "
        f"fine fraction at most {max(fine):.5f} apart"
    )


if __name__ == "__main__":
    raise SystemExit(main())
