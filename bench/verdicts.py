"""Measured verdict quality on a synthetic wafer: real scoring, real ledger, real policy.

Writes a wafer with ``focuswatch.synth`` (content drifting across sections, empty
tiles, shot noise at the given dose, some tiles blurred with σ from --blur-sigmas),
scores every tile in section order exactly as the service does (ledger in a temporary
folder, policy context from ``position_history`` and ``section_scores``), and prints
the confusion table of truth against verdicts. Exit status 0 when the targets hold:

- false alerts (in-focus tiles given a retake verdict) ≤ --max-false-alerts (1 %),
- missed blurred tiles (σ ≥ 2 not given a retake verdict) ≤ --max-missed (2 %),
- no empty tile ever alerted.

Run: ``.venv/bin/python bench/verdicts.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from focuswatch import policy, synth
from focuswatch.config import PolicyConfig
from focuswatch.errors import TileError
from focuswatch.ledger import Ledger, section_index
from focuswatch.scoring import ScoreSettings, score_path
from focuswatch.service import evidence
from focuswatch.verdict import VerdictKind

TRUTHS = ("in focus", "blurred", "empty", "corrupt")
KINDS = list(VerdictKind)


def truth_of(tile: synth.SynthTile, *, blurred_from: float) -> str:
    if tile.corrupt:
        return "corrupt"
    if tile.empty:
        return "empty"
    if tile.defocus_sigma >= blurred_from:
        return "blurred"
    if tile.defocus_sigma == 0:
        return "in focus"
    return f"σ {tile.defocus_sigma:g} (below the target)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sections", type=int, default=20)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dose", type=float, default=30.0, help="electrons per pixel")
    p.add_argument("--blur-fraction", type=float, default=0.1)
    p.add_argument("--blur-sigmas", default="2,3,4", help="comma-separated σ in pixels")
    p.add_argument("--empty-tiles", type=int, default=6)
    p.add_argument("--drift", type=float, default=0.03, help="content drift per section")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--mode", default="default", choices=["default", "faithful", "fast"])
    p.add_argument("--backend", default="cpu", choices=["auto", "cpu", "gpu"])
    p.add_argument("--max-false-alerts", type=float, default=0.01)
    p.add_argument("--max-missed", type=float, default=0.02)
    p.add_argument("--keep", type=Path, help="write the wafer and ledger here and keep them")
    args = p.parse_args(argv)

    sigmas = tuple(float(s) for s in args.blur_sigmas.split(","))
    pcfg = PolicyConfig()
    settings = ScoreSettings(
        mode=args.mode, resolution="patches", patch_size=args.patch_size, backend=args.backend
    )
    with tempfile.TemporaryDirectory(prefix="focuswatch-verdicts-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        tiles = synth.write_wafer(
            root / "wafer",
            sections=args.sections,
            rows=args.rows,
            cols=args.cols,
            size=args.size,
            dose=args.dose,
            blur_fraction=args.blur_fraction,
            blur_sigmas=sigmas,
            empty_tiles=args.empty_tiles,
            drift=args.drift,
            seed=args.seed,
        )
        t_write = time.perf_counter() - t0
        ledger = Ledger.open(root / "state")
        table: Counter[tuple[str, VerdictKind]] = Counter()
        by_sigma: Counter[tuple[float, bool]] = Counter()
        mistakes: list[str] = []
        t0 = time.perf_counter()
        order = sorted(tiles, key=lambda t: (section_index(t.section) or 0, t.row, t.col))
        for tile in order:
            st = tile.path.stat()
            vid, _ = ledger.add_version(
                str(tile.path),
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                tile_name=tile.path.stem,
                section=tile.section,
                row=tile.row,
                col=tile.col,
            )
            try:
                score = score_path(tile.path, settings)
            except TileError as exc:
                verdict = policy.unreadable(exc.reason)
                ledger.record_result(vid, verdict=verdict)
            else:
                ev = evidence(
                    ledger,
                    version_id=vid,
                    section=tile.section,
                    section_index=section_index(tile.section),
                    row=tile.row,
                    col=tile.col,
                    score=score,
                    history_sections=pcfg.history_sections,
                )
                verdict = policy.decide(ev, cfg=pcfg)
                ledger.record_result(vid, verdict=verdict, score=score)
            truth = truth_of(tile, blurred_from=2.0)
            table[truth, verdict.kind] += 1
            if truth == "blurred":
                by_sigma[tile.defocus_sigma, verdict.kind.needs_retake] += 1
            wrong = (truth == "in focus" and verdict.kind.needs_retake) or (
                truth == "blurred" and not verdict.kind.needs_retake
            )
            if wrong or (truth == "empty" and verdict.kind is not VerdictKind.EMPTY):
                mistakes.append(f"  {tile.path.name} ({truth}): {verdict.kind}: {verdict.reason}")
        t_score = time.perf_counter() - t0
        ledger.close()

    truths = [t for t in TRUTHS if any(table[t, k] for k in KINDS)]
    truths += sorted({t for t, _ in table} - set(truths))
    width = max(len("truth \\ verdict"), *(len(t) for t in truths)) + 2
    print(
        f"{len(tiles)} tiles: {args.sections} sections × {args.rows}×{args.cols}, "
        f"{args.size}² px, dose {args.dose:g} e/px, blur σ {args.blur_sigmas}, "
        f"drift {args.drift:g}/section, patches {args.patch_size} px, mode {args.mode}"
    )
    print(f"written in {t_write:.1f} s, scored and judged in {t_score:.1f} s\n")
    heads = [str(k) for k in KINDS]
    print("truth \\ verdict".ljust(width) + "  ".join(h.rjust(len(h)) for h in heads) + "  total")
    for t in truths:
        counts = [table[t, k] for k in KINDS]
        row = "  ".join(str(c).rjust(len(h)) for c, h in zip(counts, heads, strict=True))
        print(t.ljust(width) + row + f"  {sum(counts):5d}")
    print()
    for sigma in sorted({s for s, _ in by_sigma}):
        hit, miss = by_sigma[sigma, True], by_sigma[sigma, False]
        print(f"blur σ {sigma:g}: {hit} of {hit + miss} caught")

    def rate(truth: str, bad: bool) -> tuple[int, int]:
        total = sum(table[truth, k] for k in KINDS)
        n = sum(table[truth, k] for k in KINDS if k.needs_retake == bad)
        return n, total

    fa, n_in = rate("in focus", True)
    miss, n_blur = rate("blurred", False)
    empty_alerts = sum(table["empty", k] for k in KINDS if k.needs_retake)
    checks = [
        (
            f"false alerts on in-focus tiles: {fa}/{n_in}",
            fa <= args.max_false_alerts * n_in,
            f"≤ {100 * args.max_false_alerts:g} %",
        ),
        (
            f"missed blurred tiles: {miss}/{n_blur}",
            miss <= args.max_missed * n_blur,
            f"≤ {100 * args.max_missed:g} %",
        ),
        (f"empty tiles alerted: {empty_alerts}", empty_alerts == 0, "none"),
    ]
    print()
    for text, ok, target in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text} (target {target})")
    if mistakes:
        print("\nmistakes:")
        print("\n".join(mistakes))
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
