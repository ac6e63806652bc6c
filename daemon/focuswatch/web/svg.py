"""Geometry for the server-rendered SVG: the templates draw what these functions lay out.

Colours: the Okabe-Ito palette for verdicts (tells apart for the common forms of colour
blindness), each verdict also with a glyph; viridis for the focus map's scores and
cividis (made to read alike with and without colour vision deficiency) for a tile's
score against its baseline on the wafer map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from focuswatch.readmodel import HistoryPoint

__all__ = [
    "CELL",
    "RATIO_MAX",
    "VERDICT_COLOURS",
    "VERDICT_GLYPHS",
    "cividis",
    "history_plot",
    "patch_map",
    "ratio_colour",
    "ratio_dark",
    "ratio_legend",
    "viridis",
]

CELL = 22  # px per tile position on the wafer map

VERDICT_COLOURS = {
    "in_focus": "#009E73",  # bluish green
    "partly_out_of_focus": "#E69F00",  # orange
    "out_of_focus": "#D55E00",  # vermillion
    "empty": "#DDDDDD",  # light grey
    "unreadable": "#CC79A7",  # reddish purple
    "pending": "#56B4E9",  # sky blue
}
VERDICT_GLYPHS = {
    "in_focus": "",
    "partly_out_of_focus": "P",
    "out_of_focus": "X",
    "empty": "E",
    "unreadable": "U",
    "pending": "…",
}

_VIRIDIS = (
    (68, 1, 84),
    (59, 82, 139),
    (33, 145, 140),
    (94, 201, 98),
    (253, 231, 37),
)


_CIVIDIS = (
    (0, 34, 78),
    (59, 73, 108),
    (125, 124, 120),
    (188, 175, 111),
    (254, 232, 56),
)
# Score against baseline is drawn from 0 up to this (above it: the top colour).
RATIO_MAX = 1.25
NO_BASELINE = "#FFFFFF"  # no baseline yet: nothing to compare with


def _ramp(stops: tuple[tuple[int, int, int], ...], x: float) -> str:
    x = min(1.0, max(0.0, x if math.isfinite(x) else 0.0))
    pos = x * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    a, b = stops[i], stops[i + 1]
    r, g, bl = (round(a[k] + (b[k] - a[k]) * f) for k in range(3))
    return f"#{r:02x}{g:02x}{bl:02x}"


def viridis(x: float) -> str:
    """A colour for ``x`` in [0, 1] (dark purple → yellow)."""
    return _ramp(_VIRIDIS, x)


def cividis(x: float) -> str:
    """A colour for ``x`` in [0, 1] (dark blue → yellow, one lightness ramp)."""
    return _ramp(_CIVIDIS, x)


def ratio_colour(ratio: float | None) -> str:
    """The wafer map's colour for score / baseline (white: no baseline)."""
    return NO_BASELINE if ratio is None else cividis(ratio / RATIO_MAX)


def ratio_legend(steps: int = 5) -> list[dict[str, Any]]:
    """The legend of ``ratio_colour``: a few stops, labelled in % of baseline."""
    out = []
    for k in range(steps + 1):
        ratio = RATIO_MAX * k / steps
        label = f"{ratio * 100:.0f} %" + ("+" if k == steps else "")
        out.append({"colour": ratio_colour(ratio), "label": label, "dark": ratio_dark(ratio)})
    return out


def ratio_dark(ratio: float | None) -> bool:
    """Whether ``ratio_colour`` is dark enough to need a light glyph on it."""
    return ratio is not None and ratio / RATIO_MAX < 0.45


def patch_map(patches: Any, *, size: int = 320) -> dict[str, Any] | None:
    """The focus map as cells: each patch's score, coloured against the tile's best patch."""
    if not isinstance(patches, list) or not patches or not isinstance(patches[0], list):
        return None
    rows = len(patches)
    cols = max(len(r) for r in patches)
    if cols == 0:
        return None
    values = [float(v) for r in patches for v in r if isinstance(v, int | float)]
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    cell = max(4, size // max(rows, cols))
    cells = []
    for y, row in enumerate(patches):
        for x, v in enumerate(row):
            value = float(v) if isinstance(v, int | float) else float("nan")
            cells.append(
                {
                    "x": x * cell,
                    "y": y * cell,
                    "fill": viridis(value / top if top > 0 else 0.0),
                    "title": f"patch r{y} c{x}: {value:,.0f}",
                }
            )
    worst = min(finite) if finite else None
    # The worst patch (the one the crop shows), outlined on the map and the thumbnail.
    at = next(
        (
            (x, y)
            for y, row in enumerate(patches)
            for x, v in enumerate(row)
            if worst is not None and isinstance(v, int | float) and float(v) == worst
        ),
        None,
    )
    return {
        "width": cols * cell,
        "height": rows * cell,
        "cell": cell,
        "cells": cells,
        "best": top,
        "worst": worst,
        "worst_at": None if at is None else {"x": at[0] * cell, "y": at[1] * cell},
    }


def history_plot(
    history: Sequence[HistoryPoint], *, current: int, width: int = 560, height: int = 220
) -> dict[str, Any] | None:
    """Score (points, coloured by verdict) and baseline (dashed) of a position by section."""
    points = [(h, h.score) for h in history if h.score is not None]
    if not points:
        return None
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 36
    ys = [score for _, score in points] + [h.baseline for h, _ in points if h.baseline]
    top = max(ys) * 1.1 or 1.0
    n = len(points)
    span_w = width - pad_l - pad_r
    span_h = height - pad_t - pad_b

    def x(i: int) -> float:
        return pad_l + (span_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return pad_t + span_h * (1.0 - v / top)

    dots = []
    baseline = []
    for i, (h, score) in enumerate(points):
        dots.append(
            {
                "x": round(x(i), 1),
                "y": round(y(score), 1),
                "verdict": h.verdict,
                "current": h.id == current,
                "id": h.id,
                "label": h.section,
                "title": f"section {h.section}: score {score:,.0f}"
                + (f", baseline {h.baseline:,.0f}" if h.baseline else ""),
            }
        )
        if h.baseline:
            baseline.append(f"{x(i):.1f},{y(h.baseline):.1f}")
    ticks = [{"y": round(y(top * k / 4), 1), "label": f"{top * k / 4:,.0f}"} for k in range(5)]
    step = max(1, n // 10)
    labels = [d for i, d in enumerate(dots) if i % step == 0]
    return {
        "width": width,
        "height": height,
        "dots": dots,
        "line": " ".join(f"{d['x']},{d['y']}" for d in dots),
        "baseline": " ".join(baseline),
        "ticks": ticks,
        "labels": labels,
        "left": pad_l,
        "bottom": height - pad_b,
        "right": width - pad_r,
    }
