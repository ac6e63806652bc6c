"""``focuswatch demo``: rehearse on a generated wafer with the real service.

Writes a small synthetic wafer (6 sections of 3×3 tiles, a few out of focus, one
empty, one corrupt) section by section into a folder the real service watches, prints
each verdict as it happens and every alert, re-acquires one bad tile in focus (its
retake entry closes by itself), and ends with the retake list. Nothing here is
special-cased: the service, ledger, policy, alerts and retake list are the production
ones; only the alert notifier also prints to the console.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from focuswatch import alerts, retakes, synth
from focuswatch.app import build_service
from focuswatch.config import Config
from focuswatch.errors import FocuswatchError
from focuswatch.outbox import Alert, Endpoint
from focuswatch.service import Service
from focuswatch.verdict import VerdictKind, VerdictRecord, format_score

__all__ = ["main"]

SECTIONS = 6
ROWS = COLS = 3
TILE_PX = 512
DOSE = 30.0  # electrons per pixel: a fast, noisy scan
SECTION_DEADLINE_S = 120.0

_LABEL = {
    VerdictKind.IN_FOCUS: "in focus",
    VerdictKind.OUT_OF_FOCUS: "OUT OF FOCUS",
    VerdictKind.PARTLY_OUT_OF_FOCUS: "PARTLY OUT OF FOCUS",
    VerdictKind.EMPTY: "empty",
    VerdictKind.UNREADABLE: "UNREADABLE",
    VerdictKind.UNCERTAIN: "not judged",
}


class _ConsoleVerdicts:
    """A sink that prints each verdict the moment the service records it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, VerdictRecord] = {}

    def start(self) -> None:
        pass

    def on_verdict(self, record: VerdictRecord) -> None:
        self.seen[record.path] = record
        score = "-" if record.score is None else format_score(record.score)
        line = (
            f"  S{record.section or '?':>4}  {record.tile_name:<34} "
            f"{_LABEL[record.verdict.kind]:<20} score {score:>7}"
        )
        if record.verdict.kind is not VerdictKind.IN_FOCUS:
            line += f"\n{'':8}{record.verdict.reason}"
        print(line, file=self.out, flush=True)

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


def _console_notifier(out: TextIO) -> Callable[..., bool]:
    """Print every alert (the configured alert URLs get it too, as their own endpoints)."""

    def notify(alert: Alert) -> bool:
        body = "\n".join(f"        | {line}" for line in alert.body.splitlines())
        print(f"  >>> ALERT [{alert.kind}] {alert.title}\n{body}", file=out, flush=True)
        return True

    return notify


def _drive(svc: Service, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SECTION_DEADLINE_S
    while not done():
        if time.monotonic() > deadline:
            raise FocuswatchError(f"demo: {what} not scored within {SECTION_DEADLINE_S:.0f} s")
        svc.turn(0.05)


def _demo_config(cfg: Config, root: Path) -> Config:
    # Quick readiness so the rehearsal moves at a watchable pace; all else as configured.
    watch = dataclasses.replace(cfg.watch, path=root / "atlas", quiet_s=0.2, poll_interval_s=0.2)
    return dataclasses.replace(cfg, watch=watch, state_dir=root / "state")


def _plan(root: Path, seed: int) -> list[synth.SynthTile]:
    return synth.wafer_plan(
        sections=SECTIONS,
        rows=ROWS,
        cols=COLS,
        blur_fraction=0.06,
        blur_sigmas=(2.5, 4.0),
        empty=[(2, 2, 2)],
        corrupt=[(4, 3, 1)],
        seed=seed,
        out=root / "atlas",
        size=TILE_PX,
    )


def _write(tiles: Sequence[synth.SynthTile], seed: int) -> None:
    synth.write_section(tiles, size=TILE_PX, bits=8, dose=DOSE, drift=0.02, seed=seed)


def main(cfg: Config, *, keep: Path | None = None, seed: int = 7) -> int:
    """Run the rehearsal; returns 0 when every tile got its verdict."""
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="focuswatch-demo-") as tmp:
        root = Path(keep) if keep is not None else Path(tmp)
        (root / "atlas").mkdir(parents=True, exist_ok=True)
        cfg = _demo_config(cfg, root)
        return _run(cfg, root, seed, out)


def _run(cfg: Config, root: Path, seed: int, out: TextIO) -> int:
    t0 = time.monotonic()
    plan = _plan(root, seed)
    print(
        f"focuswatch demo: {SECTIONS} sections x {ROWS}x{COLS} tiles of {TILE_PX}² px at "
        f"{DOSE:.0f} e/px, written into {root / 'atlas'}\n"
        f"truth: {sum(t.defocus_sigma > 0 for t in plan)} out of focus, "
        f"{sum(t.empty for t in plan)} empty, {sum(t.corrupt for t in plan)} corrupt\n",
        file=out,
    )
    console = _ConsoleVerdicts(out)
    svc = build_service(cfg, builtin_sinks=False)
    endpoints = [Endpoint(id="console", name="console", notify=_console_notifier(out))]
    if cfg.alerts.urls or cfg.alerts.apprise_config:
        endpoints += alerts.build_endpoints(cfg.alerts, thumbnail_dir=root / "state" / "thumbnails")
    svc.sinks += [
        console,
        # The retake list first: an alert names the retake entry its tile opened.
        retakes.build_sink(cfg, svc.ledger),
        alerts.build_sink(cfg, svc.ledger, endpoints=endpoints),
    ]
    try:
        svc.start()
        print(f"service started ({svc.observer_kind} observer); scoring as tiles arrive:", file=out)
        for section in sorted({t.section for t in plan}):
            tiles = [t for t in plan if t.section == section]
            print(f"\n-- microscope writes section {section} --", file=out, flush=True)
            _write(tiles, seed)
            paths = {str(t.path) for t in tiles}
            _drive(svc, lambda p=paths: p <= console.seen.keys(), f"section {section}")  # type: ignore[misc]
        _retake_one(svc, console, plan, seed, out)
        for sink in svc.sinks:
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush(10.0)
    finally:
        svc.stop()
    print("\n-- retake list for the ATLAS operator --", file=out, flush=True)
    retakes.list_main(cfg, fmt="text", section=None, only_open=False)
    state = Path(cfg.state_dir)
    print(f"(also live as {state / 'retakes.csv'} and {state / 'retakes.json'})", file=out)
    print(f"\ndemo finished in {time.monotonic() - t0:.1f} s", file=out)
    return 0


def _retake_one(
    svc: Service,
    console: _ConsoleVerdicts,
    plan: Sequence[synth.SynthTile],
    seed: int,
    out: TextIO,
) -> None:
    """Re-acquire the first bad tile in focus, under the same name: its entry closes itself."""
    bad = [r for r in console.seen.values() if r.verdict.kind.needs_retake]
    if not bad:
        return
    first = min(bad, key=lambda r: (r.section or "", r.placement.row or 0, r.placement.col or 0))
    tile = next(t for t in plan if str(t.path) == first.path)
    print(f"\n-- operator re-images {first.tile_name} (same name, now in focus) --", file=out)
    before = console.seen.pop(first.path)
    _write([dataclasses.replace(tile, defocus_sigma=0.0)], seed)
    _drive(svc, lambda: first.path in console.seen, "the retake")
    if console.seen[first.path].version_id == before.version_id:
        raise FocuswatchError("demo: the retake was not recorded as a new version")
