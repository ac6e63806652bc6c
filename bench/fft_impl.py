"""SciPy's pocketfft against ducc0 (the CPU's FFTs, ``focuswatch.cpu_fft``) and Intel
MKL's FFT (``mkl_fft``), on the scorer's own transforms.

    python bench/fft_impl.py [--pairs 9] [--tile-pairs 7] [--slices 3]

MKL is measured where ``mkl_fft`` and ``mkl-service`` are installed (``pip install
mkl_fft mkl-service``: about 1 GB of MKL libraries; not a focuswatch dependency), and
left out otherwise. Four parts, all on one thread, as the service's pool threads score
(one patch per core, ``fft_workers=1``):

1. the transforms one default-mode 1024² patch makes, recorded by passing a
   recording ``backend.fft`` to ``score_image`` (so the list follows the code);
2. each of them replayed with every implementation, alternated round by round on the
   same input (the order rotated), thread CPU time, ``x/pocket`` the median of the
   rounds' ratios; "per patch" weighs each transform by how often a patch makes it;
3. whole patches (eight 1024² patches of ``bench/pipeline.py``'s 8192² tile) scored
   with ``backend.fft`` = each implementation, alternated, thread CPU time per patch;
   and how far the scores differ from pocketfft's;
4. ``--slices K``: K ISBI slices (``bench/isbi.py``) through focus (σ 0, 1, 2, 4 px) at
   the doses 8, 30 and 200 e/px, white noise (``bench/accuracy.py``'s series), each
   512² image scored with each: how many counts differ from pocketfft's, and by how much.
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

import ducc0
import numpy as np
import scipy.fft
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from focuswatch import cpu_fft
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
    fns: dict[str, Callable[[Any], Any]], rounds: int, setup: Callable[[], Any] = lambda: None
) -> dict[str, list[float]]:
    """Thread CPU seconds of each call, ``rounds`` rounds of all of them, the order
    rotated and reversed from round to round; each call gets a fresh ``setup()`` (made
    outside the clock)."""
    names = list(fns)
    spent: dict[str, list[float]] = {k: [] for k in names}
    for p in range(rounds):
        turn = names[p % len(names) :] + names[: p % len(names)]
        for k in turn if p % 2 == 0 else turn[::-1]:
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


def implementations() -> dict[str, Any]:
    """pocketfft first (the reference), then ducc0, then MKL where it is installed."""
    impls: dict[str, Any] = {"pocket": scipy.fft, "ducc0": cpu_fft}
    try:
        mkl = importlib.import_module("mkl")
        impls["mkl"] = importlib.import_module("mkl_fft.interfaces.scipy_fft")
    except ImportError:
        return impls
    mkl.set_num_threads(1)
    return impls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9, help="rounds per transform")
    ap.add_argument("--tile-pairs", type=int, default=7, help="rounds of whole patches")
    ap.add_argument("--slices", type=int, default=3, help="ISBI slices compared (0: none)")
    args = ap.parse_args(argv)
    impls = implementations()
    others = [k for k in impls if k != "pocket"]
    base = dataclasses.replace(get_backend("cpu"), fft_workers=1)
    print(machine(base))
    versions = {"ducc0": ducc0.__version__}
    if "mkl" in impls:
        versions["mkl_fft"] = importlib.import_module("mkl_fft").__version__
    print(", ".join(f"{k} {v}" for k, v in versions.items()) + ", one thread\n")

    tile = tifffile.imread(io.BytesIO(tile_bytes(8192, seed=8192)))
    part = tile[:2048, :4096]  # eight 1024² patches
    rec = Recording(scipy.fft)
    score_image(part[:1024, :1024], backend=dataclasses.replace(base, fft=rec), threads=1)

    rng = np.random.default_rng(0)
    head = "".join(f" {k + ' ms':>9s} {k + '/pocket':>22s}" for k in others)
    print(f"{'transform (per patch ×n)':50s} {'pocket ms':>9s}{head}")
    per_patch = dict.fromkeys(impls, 0.0)
    for (name, shape, dtype, kept), n in rec.calls.most_common():
        x0 = sample(shape, dtype, rng)
        kw = dict(kept)
        reps = max(3, int(2e6 / np.prod(shape)))
        fns = {k: replay(getattr(m, name), kw) for k, m in impls.items()}
        spent = alternated(fns, args.pairs, copies(x0, reps))
        med = {k: statistics.median(v) / reps for k, v in spent.items()}
        for k in per_patch:
            per_patch[k] += n * med[k]
        label = f"{name}{shape} {dtype}" + "".join(
            f" {k}={v}" for k, v in kept if k != "overwrite_x"
        )
        cells = ""
        for k in others:
            r, lo, hi = ratio(spent, k, "pocket")
            cells += f" {med[k] * 1e3:9.3f} {r:9.3f} ({lo:.2f}-{hi:.2f})"
        print(f"{label + f' ×{n}':50s} {med['pocket'] * 1e3:9.3f}{cells}")
    cells = "".join(
        f" {per_patch[k] * 1e3:9.2f} {per_patch[k] / per_patch['pocket']:9.3f}            "
        for k in others
    )
    print(f"{'per patch (the sum)':50s} {per_patch['pocket'] * 1e3:9.2f}{cells}\n")

    backends: dict[str, Backend] = {k: dataclasses.replace(base, fft=m) for k, m in impls.items()}
    results = {k: score_image(part, backend=b, threads=1) for k, b in backends.items()}
    spent = alternated(
        {k: (lambda _, b=b: score_image(part, backend=b, threads=1)) for k, b in backends.items()},
        args.tile_pairs,
    )
    print(
        f"whole 1024² patches (8 per call, {args.tile_pairs} rounds), CPU ms per patch: "
        + ", ".join(f"{k} {statistics.median(v) / 8 * 1e3:.1f}" for k, v in spent.items())
    )
    a = results["pocket"]
    for k in others:
        r, lo, hi = ratio(spent, k, "pocket")
        b = results[k]
        diff = np.abs(np.asarray(a.patch_scores) - np.asarray(b.patch_scores))
        print(
            f"  {k}/pocket {r:.3f} ({lo:.3f}-{hi:.3f}); score {b.score} (pocket {a.score}); "
            f"patch counts differ in {int(np.count_nonzero(diff))} of {diff.size}, by at most "
            f"{diff.max():.0f} ({100 * float((diff / np.asarray(a.patch_scores)).max()):.3f} %); "
            f"fine fraction {b.fine_fraction:.6f} ({a.fine_fraction:.6f}), content "
            f"{b.content:.7f} ({a.content:.7f}), noise {b.noise:.7f} ({a.noise:.7f})"
        )
    if args.slices:
        compare_slices(backends, args.slices)
    return 0


def compare_slices(backends: dict[str, Backend], n: int) -> None:
    """Each implementation's scores against pocketfft's on ``n`` ISBI slices' series."""
    import isbi
    from accuracy import series

    keep = (0, 2, 4, 7)  # σ 0, 1, 2, 4 px of accuracy.SIGMAS
    rng = np.random.default_rng(15)
    others = [k for k in backends if k != "pocket"]
    rel: dict[str, list[float]] = {k: [] for k in others}
    swaps = dict.fromkeys(others, 0)
    fine: dict[str, list[float]] = {k: [] for k in others}
    for clean in isbi.load()[:n]:
        for dose in (8.0, 30.0, 200.0):
            full = series(clean, dose=dose, noise="white", blur="round", rng=rng)
            images = [full[i] for i in keep]
            got = {
                k: [score_image(im, backend=be, threads=1) for im in images]
                for k, be in backends.items()
            }
            a = np.array([r.score for r in got["pocket"]])
            for k in others:
                b = np.array([r.score for r in got[k]])
                rel[k].extend(np.abs(b - a) / np.maximum(a, 1.0))
                order = np.argsort(-a, kind="stable") != np.argsort(-b, kind="stable")
                swaps[k] += int(np.any(order))
                fine[k].extend(
                    abs((x.fine_fraction or 0.0) - (y.fine_fraction or 0.0))
                    for x, y in zip(got["pocket"], got[k], strict=True)
                )
    for k in others:
        r = np.asarray(rel[k])
        print(
            f"ISBI, {k} against pocket: {r.size} images ({n} slices × 3 doses × σ 0, 1, 2, 4 px, "
            f"512²): counts differ in {int(np.count_nonzero(r))}, by median "
            f"{100 * np.median(r):.3f} % and at most {100 * r.max():.3f} %; a series' focus "
            f"order changed in {swaps[k]} of {3 * n}; fine fraction at most "
            f"{max(fine[k]):.5f} apart"
        )


if __name__ == "__main__":
    raise SystemExit(main())
