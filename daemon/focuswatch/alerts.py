"""Alerts: tell the operator about out-of-focus tiles through apprise, without a storm.

The first tile of a section that needs a retake is alerted at once; after that the
section's further bad tiles are batched into a digest every ``alerts.digest_minutes``
(0: every tile at once). When a section completes (a newer section has begun and
none of its own tiles is still waiting or being scored, or it has been idle for
``alerts.section_idle_minutes``) a one-line summary follows, if
``alerts.section_summary``. Every alert is also logged (event ``alert``), so the
console and journal show what was sent.

Alerts go through the durable outbox (``focuswatch.outbox``): queued in the ledger in
the same transaction as the verdict that caused them (once per key), delivered by a
background thread, retried with backoff: at least once (a crash right after a send
can repeat it). Notification URLs carry secrets (tokens, passwords): they are never
logged; ``redact_url`` is the one way to show one.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from focuswatch.config import AlertsConfig, Config
from focuswatch.ledger import Ledger
from focuswatch.outbox import Alert, Notifier, Sender, enqueue
from focuswatch.policy import format_score
from focuswatch.verdict import VerdictKind, VerdictRecord

__all__ = [
    "AlertSink",
    "AppriseNotifier",
    "build_sink",
    "describe_targets",
    "format_tile_alert",
    "make_thumbnail",
    "redact_url",
    "validate",
]

_log = structlog.get_logger("focuswatch.alerts")

_KIND_TEXT = {
    VerdictKind.OUT_OF_FOCUS: "out of focus",
    VerdictKind.PARTLY_OUT_OF_FOCUS: "partly out of focus",
    VerdictKind.EMPTY: "empty",
    VerdictKind.UNREADABLE: "unreadable",
    VerdictKind.IN_FOCUS: "in focus",
    VerdictKind.UNCERTAIN: "not judged (nothing to compare with)",
}


def _apprise() -> Any:
    """The apprise module, imported without tripping warnings-as-errors.

    apprise's email plugin imports the standard ``imghdr`` module, deprecated since
    Python 3.11 (apprise ships its own shim for 3.13+); importing it once here, with
    that one warning silenced, keeps the warning out of the service and the tests.
    """
    if "imghdr" not in sys.modules:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*imghdr", category=DeprecationWarning)
            with contextlib.suppress(ImportError):
                importlib.import_module("imghdr")
    import apprise

    return apprise


# -- URLs and their secrets --------------------------------------------------------------


def redact_url(url: str) -> str:
    """A notification URL fit for logs and status: secrets masked, query dropped."""
    apprise = _apprise()

    plugin: Any = apprise.Apprise.instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://… (unparseable)"
    return str(plugin.url(privacy=True)).split("?", 1)[0]


def describe_targets(acfg: AlertsConfig) -> list[str]:
    """Where alerts go, redacted (for logs and ``status``)."""
    out = [redact_url(u) for u in acfg.urls]
    if acfg.apprise_config is not None:
        out.append(f"apprise config {acfg.apprise_config}")
    return out


def validate(cfg: Config) -> list[str]:
    """Problems with the alert targets, each with its key path (``at 'alerts.urls[2]': …``)."""
    apprise = _apprise()

    problems = []
    for i, url in enumerate(cfg.alerts.urls):
        if not apprise.Apprise().add(url):
            problems.append(
                f"at 'alerts.urls[{i}]': apprise cannot parse this notification URL "
                f"({redact_url(url)}); see https://github.com/caronc/apprise/wiki"
            )
    path = cfg.alerts.apprise_config
    if path is not None:
        if not Path(path).is_file():
            problems.append(f"at 'alerts.apprise_config': no such file {str(path)!r}")
        else:
            ac = apprise.AppriseConfig()
            a = apprise.Apprise()
            if not ac.add(str(path)) or not a.add(ac) or len(a) == 0:
                problems.append(
                    f"at 'alerts.apprise_config': no notification URLs could be loaded "
                    f"from {str(path)!r}"
                )
    return problems


# -- delivery through apprise ------------------------------------------------------------


_THUMB_BAND_BYTES = 64 * 2**20  # rows read at once when every row is needed


def _decimated(tile: Any, step: int) -> np.ndarray[Any, Any]:
    """Every ``step``-th pixel of an open tile, read in bounded pieces (never whole)."""
    height, width = tile.shape
    if step > 1:  # only the rows kept are read, one at a time
        rows = [tile.read_region(y, y + 1, 0, width)[0, ::step] for y in range(0, height, step)]
        return np.stack(rows)
    band = max(1, _THUMB_BAND_BYTES // max(1, width * tile.dtype.itemsize))
    return np.concatenate(
        [tile.read_region(y, min(height, y + band), 0, width) for y in range(0, height, band)]
    )


def make_thumbnail(tile_path: str | Path, out: Path, *, px: int) -> Path | None:
    """A small contrast-stretched PNG of the tile, or None if it cannot be made.

    Never raises: a thumbnail is a nicety, and a failure here (unreadable tile, full
    disk, a Pillow error) must not stop the alert itself from being sent. Memory stays
    bounded whatever the tile's size (tiles can be 800 MB): only every ``step``-th row
    is read, through ``read_region``.
    """
    from PIL import Image

    from focuswatch.errors import TileError
    from focuswatch.tiles import open_tile

    try:
        with open_tile(tile_path) as tile:
            step = max(1, max(tile.shape) // (4 * px))  # ~4 px per thumbnail px, then resample
            small = np.asarray(_decimated(tile, step), dtype=np.float32)
        small = np.nan_to_num(small, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = np.percentile(small, [0.5, 99.5])
        scaled = np.clip((small - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
        thumb = Image.fromarray((scaled * 255).astype(np.uint8))
        thumb.thumbnail((px, px))
        out.parent.mkdir(parents=True, exist_ok=True)
        thumb.save(out, format="PNG")
    except TileError as exc:
        _log.info("thumbnail_skipped", tile=str(tile_path), reason=exc.reason)
        return None
    except Exception as exc:  # disk, permissions, Pillow: send the alert without it
        _log.warning("thumbnail_failed", tile=str(tile_path), error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            out.unlink(missing_ok=True)
        return None
    return out


class AppriseNotifier:
    """Sends an alert to every configured apprise target, with a thumbnail when it can."""

    def __init__(self, acfg: AlertsConfig, *, thumbnail_dir: Path) -> None:
        apprise = _apprise()

        self._apprise = apprise.Apprise()
        for url in acfg.urls:
            self._apprise.add(url)
        if acfg.apprise_config is not None:
            conf = apprise.AppriseConfig()
            conf.add(str(acfg.apprise_config))
            self._apprise.add(conf)
        self._thumb_px = acfg.thumbnail_px
        self._thumb_dir = thumbnail_dir

    def __len__(self) -> int:
        return len(self._apprise)

    def __call__(self, alert: Alert) -> bool:
        apprise = _apprise()

        thumb = None
        if alert.tile_path and self._thumb_px > 0:
            name = alert.key.replace(":", "_").replace("/", "_") + ".png"
            thumb = make_thumbnail(alert.tile_path, self._thumb_dir / name, px=self._thumb_px)
        try:
            attach = None
            if thumb is not None:
                attach = apprise.AppriseAttachment()
                attach.add(str(thumb))
            return bool(self._apprise.notify(body=alert.body, title=alert.title, attach=attach))
        finally:
            if thumb is not None:
                with contextlib.suppress(OSError):  # a leftover file must not fail the send
                    thumb.unlink(missing_ok=True)


# -- what the alerts say -----------------------------------------------------------------


def _um(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"


def format_tile_alert(record: VerdictRecord, *, key: str | None = None) -> Alert:
    """The alert for one tile that needs a retake: everything the operator needs."""
    v = record.verdict
    section = record.section or "(no section)"
    what = _KIND_TEXT[v.kind]
    where = "" if record.row is None else f" (row {record.row}, col {record.col})"
    score = "?" if record.score is None else format_score(record.score)
    base = "none yet" if v.baseline is None else format_score(v.baseline)
    lines = [
        f"Section {section}, tile {record.tile_name}{where} is {what}.",
        f"Stage X/Y: {_um(record.stage_x_um)} / {_um(record.stage_y_um)} µm",
        f"Score: {score} (baseline {base})",
    ]
    if v.defocus_um is not None:
        lines.append(f"Estimated defocus: {v.defocus_um:.1f} µm")
    lines += [f"Why: {v.reason}", f"File: {record.path}"]
    return Alert(
        key=key or f"tile:{record.version_id}",
        kind="tile",
        section=record.section,
        title=f"focuswatch: section {section}, {record.tile_name} {what}",
        body="\n".join(lines),
        tile_path=record.path,
    )


# Tile versions not judged yet: a section with one of these is not complete.
_PENDING_STATES = ("seen", "ready", "scoring")


def _completed_older(conn: Any) -> list[str]:
    """Unsummarised sections older than the newest, none of whose current tiles is pending.

    Sections are ordered by their first verdict (``alert_sections`` rowid). A section
    with a tile still seen/ready/scoring (several workers, a retry) waits: summarising
    it now would undercount, and that tile's alert would come after "complete". If it
    never finishes, the idle timer in ``tick`` completes the section.
    """
    return [
        section
        for (section,) in conn.execute(
            "SELECT s.section FROM alert_sections s WHERE s.summarized = 0 "
            "AND s.rowid < (SELECT max(rowid) FROM alert_sections) "
            "AND NOT EXISTS (SELECT 1 FROM versions v WHERE "
            "(v.section = s.section OR (s.section = '' AND v.section IS NULL)) "
            f"AND v.superseded = 0 AND v.state IN ({', '.join('?' * len(_PENDING_STATES))})) "
            "ORDER BY s.rowid",
            _PENDING_STATES,
        ).fetchall()
    ]


def _due_digests(conn: Any, cutoff: float) -> list[tuple[str, int]]:
    """(section, digests sent) of sections with bad tiles waiting, last alert before cutoff."""
    return [
        (str(section), int(n))
        for section, n in conn.execute(
            "SELECT s.section, s.digests FROM alert_sections s WHERE s.last_alert_at <= ? "
            "AND EXISTS (SELECT 1 FROM alert_tiles t WHERE t.section = s.section "
            "AND t.alert IS NULL AND t.kind IN ('out_of_focus', 'partly_out_of_focus'))",
            (cutoff,),
        ).fetchall()
    ]


def _idle_sections(conn: Any, cutoff: float) -> list[str]:
    """Unsummarised sections with no verdict since cutoff."""
    return [
        str(section)
        for (section,) in conn.execute(
            "SELECT section FROM alert_sections WHERE summarized = 0 AND last_at <= ?",
            (cutoff,),
        ).fetchall()
    ]


def _digest_line(label: str, body: str) -> str:
    why = next((ln[5:] for ln in body.splitlines() if ln.startswith("Why: ")), "")
    stage = next((ln for ln in body.splitlines() if ln.startswith("Stage")), "")
    return f"- {label}: {stage}; {why}"


class AlertSink:
    """The service's alert sink: verdicts in, queued alerts out (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        acfg: AlertsConfig,
        *,
        sender: Sender | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._cfg = acfg
        self._sender = sender
        self._clock = clock
        if sender is not None:
            sender.start()

    def _queue(self, conn: Any, alert: Alert, now: float) -> None:
        """Queue for delivery (when there are targets) and log: the console shows it all."""
        if self._sender is not None and not enqueue(conn, alert, now=now):
            return  # queued before: never twice
        _log.warning(
            "alert", key=alert.key, section=alert.section, title=alert.title, body=alert.body
        )

    def on_verdict(self, record: VerdictRecord) -> None:
        now = self._clock()
        kind = record.verdict.kind
        section = record.section or ""
        # A tile waiting for a digest keeps its digest line, so a restart loses nothing.
        label = record.tile_name
        if kind.needs_retake:
            label = _digest_line(record.tile_name, format_tile_alert(record).body)
        with self._ledger.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO alert_tiles (version_id, section, position, label, kind, at, alert)"
                " VALUES (?,?,?,?,?,?,NULL) ON CONFLICT (version_id) DO NOTHING",
                (record.version_id, section, record.position, label, str(kind), now),
            )
            if cur.rowcount == 0:
                return  # replayed after a restart: everything below happened already
            cur = conn.execute(
                "UPDATE alert_sections SET last_at = max(last_at, ?) WHERE section = ?",
                (now, section),
            )
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT INTO alert_sections (section, first_at, last_at) VALUES (?,?,?)",
                    (section, now, now),
                )
            # Older sections are complete once a newer one has begun and none of their
            # tiles is still on its way (this verdict may have been the last of one).
            # Messages go out in order: other sections' summaries, this tile's alert,
            # then this section's summary if this was its last tile.
            done = _completed_older(conn)
            for older in done:
                if older != section:
                    self._summarize(conn, older, now)
            if kind.needs_retake:
                self._tile_alert(conn, record, now)
            if section in done:
                self._summarize(conn, section, now)
        if self._sender is not None:
            self._sender.kick()

    def _tile_alert(self, conn: Any, record: VerdictRecord, now: float) -> None:
        """A bad tile: alert at once if it is the section's first (or digests are off)."""
        section = record.section or ""
        last = conn.execute(
            "SELECT last_alert_at FROM alert_sections WHERE section = ?", (section,)
        ).fetchone()[0]
        if last is None or self._cfg.digest_minutes == 0:
            alert = format_tile_alert(record)
            conn.execute(
                "UPDATE alert_tiles SET alert = ? WHERE version_id = ?",
                (alert.key, record.version_id),
            )
            conn.execute(
                "UPDATE alert_sections SET last_alert_at = ? WHERE section = ?",
                (now, section),
            )
            self._queue(conn, alert, now)

    def tick(self, now: float) -> None:
        """Digests that are due, summaries of complete or idle sections, a nudge to the sender.

        Runs every loop turn (~10/s): a plain read decides whether there is anything
        to do, and only then is the ledger's write lock taken.
        """
        digest_s = self._cfg.digest_minutes * 60.0
        idle_s = self._cfg.section_idle_minutes * 60.0
        with self._ledger._lock:  # the thread lock only: never inside another's transaction
            conn = self._ledger.connection
            due = (
                bool(_due_digests(conn, now - digest_s))
                or bool(_idle_sections(conn, now - idle_s))
                or bool(_completed_older(conn))
            )
        if due:
            with self._ledger.transaction() as conn:
                for section, digests in _due_digests(conn, now - digest_s):
                    self._digest(conn, section, digests + 1, now)
                for section in _idle_sections(conn, now - idle_s):
                    self._summarize(conn, section, now)
                for older in _completed_older(conn):
                    self._summarize(conn, older, now)
        if self._sender is not None:
            self._sender.kick()

    def _digest(self, conn: Any, section: str, n: int, now: float) -> None:
        rows = conn.execute(
            "SELECT version_id, label FROM alert_tiles WHERE section = ? AND alert IS NULL "
            "AND kind IN ('out_of_focus', 'partly_out_of_focus') ORDER BY version_id",
            (section,),
        ).fetchall()
        key = f"digest:{section}:{n}"
        noun = "tile needs" if len(rows) == 1 else "tiles need"
        alert = Alert(
            key=key,
            kind="digest",
            section=section,
            title=f"focuswatch: section {section}: {len(rows)} more {noun} a retake",
            body="\n".join(label for _, label in rows),
        )
        conn.executemany(
            "UPDATE alert_tiles SET alert = ? WHERE version_id = ?", [(key, r[0]) for r in rows]
        )
        conn.execute(
            "UPDATE alert_sections SET digests = ?, last_alert_at = ? WHERE section = ?",
            (n, now, section),
        )
        self._queue(conn, alert, now)

    def _summarize(self, conn: Any, section: str, now: float) -> None:
        # The latest version at each position counts (a good retake replaces a bad tile).
        rows = conn.execute(
            "SELECT position, kind FROM alert_tiles t WHERE section = ? AND version_id = "
            "(SELECT max(version_id) FROM alert_tiles u WHERE u.section = t.section "
            "AND u.position = t.position) ORDER BY position",
            (section,),
        ).fetchall()
        conn.execute("UPDATE alert_sections SET summarized = 1 WHERE section = ?", (section,))
        # Bad tiles still waiting for a digest are named in the summary instead.
        conn.execute(
            "UPDATE alert_tiles SET alert = ? WHERE section = ? AND alert IS NULL",
            (f"summary:{section}", section),
        )
        if not self._cfg.section_summary:
            return
        by_kind: dict[str, list[str]] = {}
        for position, kind in rows:
            by_kind.setdefault(kind, []).append(position)
        out = by_kind.get(str(VerdictKind.OUT_OF_FOCUS), [])
        line = f"Section {section or '(no section)'}: {len(rows)} tiles, {len(out)} out of focus"
        parts = [line + (": " + ", ".join(out) if out else "")]
        others = (
            VerdictKind.PARTLY_OUT_OF_FOCUS,
            VerdictKind.EMPTY,
            VerdictKind.UNREADABLE,
            VerdictKind.UNCERTAIN,
        )
        for kind in others:
            found = by_kind.get(str(kind), [])
            if found:
                text = f"{len(found)} {_KIND_TEXT[kind]}"
                if kind is not VerdictKind.EMPTY:
                    text += ": " + ", ".join(found)
                parts.append(text)
        self._queue(
            conn,
            Alert(
                key=f"summary:{section}",
                kind="summary",
                section=section,
                title=f"focuswatch: section {section} complete",
                body="; ".join(parts),
            ),
            now,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait for the sender to deliver what is due (for the demo and tests)."""
        return True if self._sender is None else self._sender.flush(timeout)

    def close(self) -> None:
        """Stop the sender; undelivered alerts stay in the outbox for the next start."""
        if self._sender is not None:
            self._sender.stop()


def build_sink(
    cfg: Config,
    ledger: Ledger,
    *,
    clock: Callable[[], float] = time.time,
    notify: Notifier | None = None,
) -> AlertSink:
    """The alert sink the service feeds every verdict to.

    Without alert targets (and no ``notify``), alerts are still logged and summarised,
    but nothing is queued for delivery.
    """
    acfg = cfg.alerts
    sender = None
    if notify is None and (acfg.urls or acfg.apprise_config is not None):
        notify = AppriseNotifier(acfg, thumbnail_dir=Path(cfg.state_dir) / "thumbnails")
    if notify is not None:
        sender = Sender(
            Path(cfg.state_dir),
            notify,
            clock=clock,
            retry_initial_s=acfg.retry_initial_s,
            retry_max_s=acfg.retry_max_s,
        )
    _log.info("alerts_configured", targets=describe_targets(acfg), delivery=sender is not None)
    return AlertSink(ledger, acfg, sender=sender, clock=clock)
