"""How well does each criterion rank focus? Through-focus series of real EM slices.

    .venv/bin/python bench/accuracy.py [--slices 30] [--isbi DIR]

Each ISBI 2012 slice (512², real serial-section EM, in focus) is blurred by σ = 0 … 6
px and given shot noise at 10, 30 and 200 electrons per pixel (``synth.degrade``).
Per dose and criterion:

* Spearman ρ of score against |Δz| (∝ σ) within each slice's series: mean and worst
  over slices (−1 is a perfect ranking; the target is ≤ −0.95 at every dose);
* ROC AUC of in-focus (σ ≤ 0.5) against out-of-focus (σ ≥ 2) tiles pooled over all
  slices (1 is perfect separation; target ≥ 0.98);
* for ``fast``: Spearman of its scores against exact ``default`` over all images.

Scored as the service scores a tile: ``score_image`` with the default resolution
(one native patch for a 512² slice; faithful mode resizes it to 1024², as the paper).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from focuswatch import synth
from focuswatch.backend import get_backend
from focuswatch.score import score_image

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
DOSES = (10.0, 30.0, 200.0)
METHODS = (
    ("mhfd", "faithful"),
    ("mhfd", "default"),
    ("mhfd", "fast"),
    ("variance_of_laplacian", "default"),
    ("tenengrad", "default"),
    ("brenner", "default"),
    ("normalized_variance", "default"),
    ("power_spectrum_slope", "default"),
)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of an in-focus tile > score of an out-of-focus one), ties half."""
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def main(argv: list[str] | None = None) -> int:
    default_isbi = os.environ.get(
        "FOCUSWATCH_ISBI_DIR", str(Path(__file__).resolve().parents[2] / "shared/data/isbi2012")
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isbi", default=default_isbi, help="folder of ISBI 2012 slices")
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    backend = get_backend(args.backend)
    try:
        slices = synth.load_isbi(args.isbi)[: args.slices]
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    sig = np.array(SIGMAS)
    print(f"{len(slices)} ISBI slices × σ {list(SIGMAS)} px × doses {list(DOSES)} e/px")
    rows = []
    for dose in DOSES:
        rng = np.random.default_rng(args.seed)
        images = [synth.through_focus_series(s, sigmas=SIGMAS, dose=dose, rng=rng) for s in slices]
        exact = None
        for criterion, mode in METHODS:
            t0 = time.perf_counter()
            scores = np.array(
                [
                    [
                        score_image(im, backend=backend, criterion=criterion, mode=mode).score
                        for im in ser
                    ]
                    for ser in images
                ]
            )
            secs = time.perf_counter() - t0
            rho = np.array([spearmanr(row, sig)[0] for row in scores])
            rho = np.nan_to_num(rho, nan=0.0)
            a = auc(scores[:, sig <= 0.5].ravel(), scores[:, sig >= 2].ravel())
            extra = ""
            if (criterion, mode) == ("mhfd", "default"):
                exact = scores
            if mode == "fast" and exact is not None:
                extra = f"ρ vs exact {spearmanr(scores.ravel(), exact.ravel())[0]:.4f}"
            name = f"{criterion} ({mode})" if criterion == "mhfd" else criterion
            rows.append((dose, name, rho.mean(), rho.max(), a, secs / scores.size * 1e3, extra))
            print(f"  dose {dose:5.0f}  {name:24s} done", file=sys.stderr, flush=True)
    print()
    print("| dose e/px | criterion | Spearman mean | Spearman worst | AUC | ms/image | |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for dose, name, mean, worst, a, ms, extra in rows:
        ok = "✓" if worst <= -0.95 and a >= 0.98 else ""
        cells = [f"{dose:.0f}", name, f"{mean:.3f}", f"{worst:.3f}", f"{a:.3f}", f"{ms:.0f}"]
        print("| " + " | ".join([*cells, f"{ok} {extra}"]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
