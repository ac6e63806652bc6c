"""``focuswatch status``: what the service is doing, read from the ledger without writing.

Opens the ledger read-only (``mode=ro``), so it is safe while the service runs.
Shows tiles per state, the backlog, tiles per minute over the last ten minutes, the
last N verdicts, recent failures with their reasons, the executor the service
reported, the array backend (numpy/cupy) of the latest results, the alarms that last
(``focuswatch.alarms``) and the alerts still waiting in the outbox. Alert
destinations are never shown: apprise URLs carry secrets.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from focuswatch import alarms, outbox
from focuswatch.config import Config
from focuswatch.ledger import STATES, Ledger
from focuswatch.readmodel import ReadModel
from focuswatch.statelock import StateLock
from focuswatch.text import printable

__all__ = [
    "EXECUTOR_OWN_RATES",
    "RATE_WINDOW_S",
    "STALE_HEARTBEAT_S",
    "format_text",
    "main",
    "summary",
]

#: A running service writes its heartbeat every few seconds (service.META_INTERVAL_S):
#: one older than this means it is stuck or cannot write (status, the web console).
STALE_HEARTBEAT_S = 60.0
#: The window of the rates shown here and first on the web page's Now page.
RATE_WINDOW_S = 300.0
#: The executor's own throughput over its last few tiles: not shown beside the ledger's
#: rates (one rule, ``ReadModel.rates``, for every figure shown, or they disagree).
EXECUTOR_OWN_RATES = frozenset({"tiles_per_s"})


def summary(
    cfg: Config, *, last: int = 10, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """The status as a dict (what ``--json`` prints)."""
    if last < 0:
        raise ValueError(f"last must be >= 0, got {last}")
    ledger = Ledger.open(cfg.state_dir, readonly=True, clock=clock)
    try:
        out = ledger.status_summary(last=last)
        rates = ReadModel(ledger).rates(clock(), RATE_WINDOW_S)
        service = ledger.get_meta("service")
        told = ledger.get_meta(alarms.META_KEY)
        out["alerts_pending"] = outbox.pending_count(ledger)
        out["alerts_failing"] = outbox.failing_endpoints(ledger)
    finally:
        ledger.close()
    # The same rule and window as the web page's first figures, so the two agree.
    out["tiles_per_min"] = rates.score
    out["arriving_per_min"] = rates.arrive
    out["alarms"] = [] if told is None else alarms.to_meta(alarms.from_meta(told[0]))
    out["state_dir"] = str(cfg.state_dir)
    out["running"] = StateLock(cfg.state_dir).holder()
    out["service"] = None if service is None else service[0]
    return out


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _position(r: dict[str, Any]) -> str:
    if r.get("position"):  # the layout's key: r3-c4, mFoV 12, beam 7, grid 0, tile 42
        return str(r["position"])
    if r.get("row") is None:
        return ""
    return f"r{r['row']}-c{r['col']}"


def format_text(s: dict[str, Any]) -> str:
    lines = [f"state folder: {s['state_dir']}"]
    hb = s.get("heartbeat_age_s")
    running = s.get("running")
    if hb is None:
        lines.append("service: never ran" if running is None else f"service: running ({running})")
    elif running is None:
        lines.append(f"service: not running (last heartbeat {hb:.0f} s ago)")
    elif hb > STALE_HEARTBEAT_S:
        lines.append(
            f"service: running ({running}) but its last heartbeat is {hb:.0f} s old: it "
            "cannot write its state folder (disk full? deleted?) and holds its work; see "
            "its log (state_unwritable)"
        )
    else:
        lines.append(f"service: running ({running}), last heartbeat {hb:.0f} s ago")
    svc = s.get("service") or {}
    if svc:
        lines.append(f"watching: {svc.get('watch')} (observer: {svc.get('observer')})")
    ex = s.get("executor") or {}
    if ex:
        details = ", ".join(
            f"{k}={v}" for k, v in ex.items() if k != "backend" and k not in EXECUTOR_OWN_RATES
        )
        lines.append(
            f"backend: {ex.get('backend', 'unknown')}" + (f" ({details})" if details else "")
        )
    array = s.get("array_backend")
    lines.append(
        "array backend: " + (f"{array} (latest result)" if array else "- (no tile scored yet)")
    )
    for a in s.get("alarms", []):
        lines.append(f"ALARM {a['name']}: {printable(a['line'])} (since {_when(a['since'])})")
    lines.append(f"alerts waiting to be sent: {s.get('alerts_pending', 0)}")
    for f in s.get("alerts_failing", []):
        lines.append(
            f"  {f['endpoint'] or '(an endpoint)'}: {f['waiting']} not taken, "
            f"{f['attempts']} attempts, next try {_when(f['next_attempt'])}: {f['last_error']}"
        )
    counts = s["counts"]
    lines.append("tiles: " + ", ".join(f"{st} {counts[st]}" for st in STATES))
    lines.append(
        f"backlog: {s['backlog']}   rate: {s['tiles_per_min']:.1f} tiles/min scored, "
        f"{s.get('arriving_per_min', 0.0):.1f} arriving (last 5 min)"
    )
    if s["verdicts"]:
        lines.append("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items())))
    if s["recent"]:
        lines.append("")
        lines.append("recent verdicts:")
        for r in s["recent"]:
            score = "-" if r["score"] is None else f"{r['score']:.4g}"
            lines.append(
                f"  {_when(r['at'])}  {r['verdict'] or '-':<20} score {score:<8} "
                f"{r['section'] or '-'} {_position(r)}  {printable(r['path'])}"
            )
            if r["verdict"] not in ("in_focus", None):
                lines.append(f"      {printable(r['reason'] or '')}")
    if s["failures"]:
        lines.append("")
        lines.append("failures:")
        for f in s["failures"]:
            lines.append(f"  {_when(f['at'])}  {printable(f['path'])}  (attempts {f['attempts']})")
            lines.append(f"      {printable(f['reason'] or '')}")
    return "\n".join(lines)


def main(cfg: Config, *, as_json: bool = False, last: int = 10, out: TextIO | None = None) -> int:
    """Print the status; StateError (no ledger, unreadable) is reported by the CLI."""
    stream = out or sys.stdout
    s = summary(cfg, last=last)
    if as_json:
        stream.write(json.dumps(s, indent=2, sort_keys=True) + "\n")
    else:
        stream.write(format_text(s) + "\n")
    return 0
