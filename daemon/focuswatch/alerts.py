"""Alerts: tell the operator about out-of-focus tiles through apprise, without a storm.

The first tile of a section that needs a retake is alerted at once; after that the
section's further bad tiles are batched into a digest every ``alerts.digest_minutes``
(0: every tile at once). When a section completes (a newer section has begun and
none of its own tiles is still waiting or being scored, or it has been idle for
``alerts.section_idle_minutes``) a one-line summary follows, if
``alerts.section_summary``. Every alert is also logged (event ``alert``), so the
console and journal show what was sent.

Alerts go through the durable outbox (``focuswatch.outbox``): queued in the ledger in
the same transaction as the verdict that caused them (once per key), delivered to
each endpoint (one apprise URL) by that endpoint's own thread, each endpoint retried
on its own backoff (a crash right after a send can repeat it to that endpoint).
Each message has a severity (apprise's notify type) and structured ``details``
(json:// endpoints receive them under ``JSON_FIELD``); titles start with
``[alerts.instance]``; tile alerts name their retake entry. The retake sink must see
a verdict before this one (the service orders them so). Notification URLs carry
secrets (tokens, passwords): they are never logged; ``redact_url`` is the one way to
show one.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import importlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from focuswatch import alarms
from focuswatch.alarms import Alarm, AlarmName, AlarmWatch
from focuswatch.config import AlertsConfig, Config
from focuswatch.ledger import Ledger, newest_seen, sections_pending
from focuswatch.outbox import (
    Alert,
    DeliveryError,
    Endpoint,
    Notifier,
    Sender,
    enqueue,
    withhold,
)
from focuswatch.policy import SECTION_WIDE
from focuswatch.text import printable
from focuswatch.verdict import (
    RetakeStatus,
    VerdictKind,
    VerdictRecord,
    format_score,
    name_positions,
)

__all__ = [
    "JSON_FIELD",
    "AlertSink",
    "AppriseNotifier",
    "build_endpoints",
    "build_sink",
    "describe_targets",
    "format_tile_alert",
    "instance_name",
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
    """A notification URL fit for logs and status: secrets masked, query dropped.

    apprise masks what each plugin declares private (passwords, Slack and Discord
    tokens, however the URL is written); on top of that every host or path segment
    that looks like a secret (``json://host/hooks/PathT0kenSecret``) is masked too.
    A URL apprise cannot parse is not shown at all.
    """
    apprise = _apprise()

    plugin: Any = apprise.Apprise.instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{scheme}://… (unparseable)"
    shown = str(plugin.url(privacy=True)).split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = shown.partition("://")
    if not sep:
        return shown
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if user and _looks_secret(user, short=True):  # a token given as the user
        user = _mask(user)
    hostname, colon, port = host.partition(":")
    if "." not in hostname and _looks_secret(hostname):
        hostname = _mask(hostname)
    segments = [_mask(seg) if _looks_secret(seg) else seg for seg in path.split("/")]
    return f"{scheme}://{user}{at}{hostname}{colon}{port}{slash}{'/'.join(segments)}"


def _looks_secret(segment: str, *, short: bool = False) -> bool:
    """A token rather than a name: long, and letters mixed with digits or cases; any
    segment of 16 characters or more (a lower-case token is still a token)."""
    text = urllib.parse.unquote(segment)
    if len(text) < (6 if short else 8) or "..." in text or "*" in text:  # masked already
        return False
    if len(text) >= 16:
        return True
    letters = any(c.isalpha() for c in text)
    digits = any(c.isdigit() for c in text)
    mixed_case = any(c.isupper() for c in text[1:]) and any(c.islower() for c in text)
    return (
        (letters and digits)
        or (text.isdigit() and len(text) >= 10)  # a webhook or bot id
        or (mixed_case and len(text) >= 12)
    )


def _mask(segment: str) -> str:
    return f"{segment[0]}...{segment[-1]}"


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
            # apprise loads the good lines and drops the others with a log line only
            with _ReasonCapture(keep=_refused_line, most=100).attached() as refused:
                loaded = ac.add(str(path)) and a.add(ac) and len(a) > 0
            problems += [
                f"at 'alerts.apprise_config': {str(path)!r}: {_shown_refusal(why)}"
                for why in refused.seen
            ]
            if not loaded:
                problems.append(
                    f"at 'alerts.apprise_config': no notification URLs could be loaded "
                    f"from {str(path)!r}"
                )
    return problems


_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_ON_LINE = re.compile(r"\bon line \d+\b")


def _shown_refusal(message: str) -> str:
    """apprise's words for a refused line, fit to show: it repeats the raw line (and may
    name a token), so URLs are redacted unless apprise masked them already, and every
    other word that looks like a secret is masked."""

    def url(m: re.Match[str]) -> str:
        return m.group(0) if "..." in m.group(0) else redact_url(m.group(0))

    words = _URL_IN_TEXT.sub(url, message).split(" ")
    return " ".join(
        "***" if "://" not in w and _looks_secret(w.strip("().,;:'\""), short=True) else w
        for w in words
    )


def _refused_line(record: logging.LogRecord) -> bool:
    """An apprise log line about a config line it did not load: its errors, and its
    warnings that name a line (a retry count in a tag drops the line with a warning);
    other warnings only repeat an error's token, or the file's name."""
    return record.levelno >= logging.ERROR or bool(_ON_LINE.search(record.getMessage()))


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


def make_thumbnail(
    tile_path: str | Path, out: Path, *, px: int, within: str | None = None
) -> Path | None:
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
        with open_tile(tile_path, within=within) as tile:
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


def _endpoint_id(url: str) -> str:
    """A stable name for an endpoint that holds no secret (kept in the ledger)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


class _ReasonCapture(logging.Handler):
    """Why a send failed: the warnings and errors apprise logged for it.

    apprise's ``notify()`` answers False and says why only in its log. apprise 2.x
    collects the log of each call in its result (``result.logs()``), which is used
    when there; older versions send in the calling thread (``async_mode`` off), so a
    handler that keeps only the sending thread's records finds the same lines.
    """

    def __init__(
        self, *, keep: Callable[[logging.LogRecord], bool] | None = None, most: int = 5
    ) -> None:
        super().__init__(level=logging.WARNING)
        self._thread = threading.get_ident()
        self._keep = keep
        self._most = most
        self._seen: list[str] = []

    @property
    def seen(self) -> list[str]:
        return self._seen

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread and len(self._seen) < self._most:
            with contextlib.suppress(Exception):
                if self._keep is None or self._keep(record):
                    self._seen.append(record.getMessage().strip())

    @contextlib.contextmanager
    def attached(self) -> Iterator[_ReasonCapture]:
        logger = logging.getLogger("apprise")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)

    def reason(self, result: Any) -> str:
        lines = list(self._seen)
        logs = getattr(result, "logs", None)
        if callable(logs):
            with contextlib.suppress(Exception):
                lines = [
                    str(e.message).strip()
                    for e in logs()
                    if getattr(logging, str(e.level), logging.WARNING) >= logging.WARNING
                ][:5] or lines
        return "; ".join(lines) or "apprise reported a failure without a reason"


JSON_FIELD = "focuswatch"  # the field of a json:// POST that holds the alert's details

_NOTIFY_TYPES = {"info": "info", "success": "success", "warning": "warning", "failure": "failure"}


class AppriseNotifier:
    """Sends alerts to one apprise endpoint (one URL), with a thumbnail when it can.

    One apprise object per URL: apprise's ``notify()`` answers False when any one of
    several targets failed, so delivery is tracked per URL (``focuswatch.outbox``).
    A failure raises ``DeliveryError`` with the reason apprise logged.
    """

    def __init__(
        self,
        plugin: Any,
        *,
        thumbnail_dir: Path,
        thumbnail_px: int,
        send_timeout_s: float = 30.0,
        within: str | None = None,
    ) -> None:
        apprise = _apprise()

        # Sends stay in the endpoint's own thread (no apprise thread pool): the sender
        # thread is the unit of isolation, and the reason capture keys on it.
        self._apprise = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if isinstance(plugin, str):
            plugin = apprise.Apprise.instantiate(plugin)
            if plugin is None:
                raise ValueError("apprise cannot parse this notification URL")
        # The endpoint's identity in the ledger: taken before anything below changes the
        # plugin's URL (its timeout, its payload), and from apprise's own id where it has
        # one (it ignores parameters), so a changed setting never makes a new endpoint
        # that is sent every alert again.
        url_id = getattr(plugin, "url_id", None)
        stable = url_id() if callable(url_id) else None
        self.endpoint_id = _endpoint_id(str(stable or plugin.url(privacy=False)))
        # An endpoint that answers slowly gets time to answer: a send cut short by
        # apprise's 4 s default is retried, and the endpoint would get it twice. A
        # timeout given in the URL itself (?rto=) is kept.
        if plugin.socket_read_timeout == type(plugin).socket_read_timeout:
            plugin.socket_read_timeout = send_timeout_s
        self._plugin = plugin
        # A json:// endpoint gets the alert's structured form as one more field of
        # apprise's JSON body ("focuswatch": {...}, see README), through the plugin's
        # own payload extras (the ``:key=value`` tokens of its URL, which stay).
        self._json_extras: dict[str, Any] | None = None
        if "json" in (plugin.protocol, plugin.secure_protocol) and isinstance(
            getattr(plugin, "payload_extras", None), dict
        ):
            self._json_extras = dict(plugin.payload_extras)
        # The form the endpoint shows (apprise 2 lists several, its preferred first).
        shown = plugin.notify_format
        if isinstance(shown, tuple | list):
            shown = shown[0] if shown else None
        self._html = shown == apprise.NotifyFormat.HTML
        self._apprise.add(plugin)
        self._thumb_px = thumbnail_px
        self._thumb_dir = thumbnail_dir
        self._within = within  # thumbnails only of files in the watch folder

    @property
    def url(self) -> str:
        """The endpoint's full URL, secrets included: never log it (see ``redact_url``)."""
        return str(self._plugin.url(privacy=False))

    def __call__(self, alert: Alert) -> bool:
        apprise = _apprise()

        thumb = None
        if alert.tile_path and self._thumb_px > 0:
            folder = self._thumb_dir / self.endpoint_id
            name = _safe_name(Path(alert.tile_name or alert.tile_path).stem) + ".png"
            thumb = make_thumbnail(
                alert.tile_path, folder / name, px=self._thumb_px, within=self._within
            )
        try:
            attach = None
            if thumb is not None:
                attach = apprise.AppriseAttachment()
                attach.add(str(thumb))
            if self._json_extras is not None:
                self._plugin.payload_extras = self._json_extras | {
                    JSON_FIELD: {"key": alert.key, "severity": alert.severity, **alert.details}
                }
            # Each endpoint gets the body in the form it shows: HTML for mail (apprise
            # derives the text/plain part from it, line breaks kept), text elsewhere.
            if self._html:
                body, body_format = _html(alert.body), apprise.NotifyFormat.HTML
            else:
                body, body_format = alert.body, apprise.NotifyFormat.TEXT
            with _ReasonCapture().attached() as capture:
                result = self._apprise.notify(
                    body=body,
                    title=alert.title,
                    notify_type=_NOTIFY_TYPES.get(alert.severity, "info"),
                    body_format=body_format,
                    attach=attach,
                )
        finally:
            if thumb is not None:
                with contextlib.suppress(OSError):  # a leftover file must not fail the send
                    thumb.unlink(missing_ok=True)
        if not result:
            raise DeliveryError(capture.reason(result))
        return True


def _html(text: str) -> str:
    """The body as HTML: each line escaped, lines joined by ``<br/>`` (no raw newlines)."""
    return "<br/>".join(html.escape(line, quote=False) for line in text.splitlines())


def _safe_name(name: str) -> str:
    """A file name made of the tile name's safe characters."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return out[:120] or "tile"


def build_endpoints(
    acfg: AlertsConfig, *, thumbnail_dir: Path, within: str | None = None
) -> list[Endpoint]:
    """One endpoint per notification URL (``alerts.urls`` and the apprise config file)."""
    apprise = _apprise()

    plugins: list[Any] = []
    for url in acfg.urls:
        plugin = apprise.Apprise.instantiate(url)
        if plugin is not None:
            plugins.append(plugin)
    if acfg.apprise_config is not None:
        conf = apprise.AppriseConfig()
        conf.add(str(acfg.apprise_config))
        loaded = apprise.Apprise()
        loaded.add(conf)
        plugins.extend(loaded)
    out: list[Endpoint] = []
    seen: set[str] = set()
    for plugin in plugins:
        notifier = AppriseNotifier(
            plugin,
            thumbnail_dir=thumbnail_dir,
            thumbnail_px=acfg.thumbnail_px,
            send_timeout_s=acfg.send_timeout_s,
            within=within,
        )
        eid = notifier.endpoint_id
        if eid in seen:
            continue  # the same URL twice is one endpoint: it gets each alert once
        seen.add(eid)
        out.append(Endpoint(id=eid, name=redact_url(notifier.url), notify=notifier))
    return out


# -- what the alerts say -----------------------------------------------------------------


def instance_name(acfg: AlertsConfig) -> str:
    """The name every message carries (``alerts.instance``, else this host's name)."""
    return acfg.instance or socket.gethostname() or "focuswatch"


def _um(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"


_SEVERITY = {
    VerdictKind.OUT_OF_FOCUS: "failure",
    VerdictKind.PARTLY_OUT_OF_FOCUS: "warning",
}


@dataclass(frozen=True)
class _Retake:
    """The retake entry a verdict opened, kept open or closed."""

    id: int
    status: RetakeStatus


def _retake_of(conn: Any, version_id: int) -> _Retake | None:
    row = conn.execute(
        "SELECT id, status FROM retakes WHERE version_id = ? ORDER BY id DESC LIMIT 1",
        (version_id,),
    ).fetchone()
    return None if row is None else _Retake(int(row[0]), RetakeStatus(row[1]))


def _with_retake(position: str, retake: _Retake | None) -> str:
    return position if retake is None else f"{position} (retake {retake.id})"


def _tile_details(record: VerdictRecord, retake: _Retake | None) -> dict[str, Any]:
    """The structured form of a tile alert (JSON endpoints get it; see README)."""
    v = record.verdict
    return {
        "verdict": str(v.kind),
        "section": record.section,
        "tile": record.tile_name,
        "row": record.placement.row,
        "col": record.placement.col,
        "position": record.where,
        "stage_x_um": record.placement.stage_x_um,
        "stage_y_um": record.placement.stage_y_um,
        "working_distance_um": record.placement.working_distance_um,
        "score": record.score,
        "baseline": v.baseline,
        "defocus_um": v.defocus_um,
        "reason": v.reason,
        "retake_id": None if retake is None else retake.id,
        "retake_status": None if retake is None else str(retake.status),
        "path": printable(record.path),  # a name that is not UTF-8 cannot be sent as is
        "version_id": record.version_id,
    }


def format_tile_alert(
    record: VerdictRecord,
    *,
    key: str | None = None,
    instance: str = "",
    retake_id: int | None = None,
    retake_status: RetakeStatus | None = None,
) -> Alert:
    """The alert for one tile that needs a retake: everything the operator needs.

    ``retake_id`` is the retake list entry (what ``focuswatch retakes dismiss`` takes);
    ``retake_status`` ``retaken_still_bad`` says the tile was retaken and is still bad.
    """
    v = record.verdict
    retake = None if retake_id is None else _Retake(retake_id, retake_status or RetakeStatus.OPEN)
    section = record.section or "(no section)"
    what = _KIND_TEXT[v.kind]
    again = retake is not None and retake.status is RetakeStatus.RETAKEN_STILL_BAD
    where = "" if record.where is None else f" ({record.where})"
    score = "?" if record.score is None else format_score(record.score)
    base = "none yet" if v.baseline is None else format_score(v.baseline)
    lines = [
        f"Section {section}, tile {record.tile_name}{where} is {what}"
        + (", still bad after its retake." if again else "."),
        _stage_line(record),
    ]
    if record.placement.working_distance_um is not None:
        wd = record.placement.working_distance_um
        lines.append(f"Working distance: {wd / 1000:.4f} mm ({wd:.1f} µm)")
    lines.append(f"Score: {score} (baseline {base})")
    if v.defocus_um is not None:
        lines.append(f"Estimated defocus: {v.defocus_um:.1f} µm")
    lines.append(f"Why: {v.reason}")
    if retake is not None:
        lines.append(
            f"Retake list entry {retake.id} (no retake needed? "
            f'focuswatch retakes dismiss {retake.id} --note "why")'
        )
    lines.append(f"File: {printable(record.path)}")
    title = _title(instance, f"section {section}, {record.tile_name} {what}")
    if again:
        title += ", still bad after its retake"
    details = _tile_details(record, retake) | {"kind": "tile", "instance": instance or None}
    return Alert(
        key=key or f"tile:{record.version_id}",
        kind="tile",
        section=record.section,
        title=title,
        body="\n".join(lines),
        tile_path=record.path,
        severity=_SEVERITY.get(v.kind, "warning"),
        details=details,
        tile_name=record.tile_name,
    )


def _fixed_alert(record: VerdictRecord, retake: _Retake, instance: str) -> Alert:
    """A retake that came out fine: the entry is closed (a recovery)."""
    section = record.section or "(no section)"
    score = "?" if record.score is None else format_score(record.score)
    lines = [
        f"Section {section}, tile {record.tile_name} was retaken and is in focus now.",
        f"Score: {score}; retake list entry {retake.id} is closed.",
        f"File: {printable(record.path)}",
    ]
    return Alert(
        key=f"fixed:{record.version_id}",
        kind="fixed",
        section=record.section,
        title=_title(instance, f"section {section}, {record.tile_name} retaken, in focus"),
        body="\n".join(lines),
        severity="success",
        details=_tile_details(record, retake) | {"kind": "fixed", "instance": instance or None},
        tile_name=record.tile_name,
    )


def _completed_older(conn: Any) -> list[str]:
    """Unsummarised sections older than the newest, none of whose current tiles is pending.

    Sections are ordered by their first verdict (``alert_sections`` rowid). A section
    with a tile still seen/ready/scoring (several workers, a retry) waits: summarising
    it now would undercount, and that tile's alert would come after "complete". If it
    never finishes, the idle timer in ``tick`` completes the section.
    """
    pending = {"" if s is None else s for s in sections_pending(conn)}
    return [
        section
        for (section,) in conn.execute(
            "SELECT s.section FROM alert_sections s WHERE s.summarized = 0 "
            "AND s.rowid < (SELECT max(rowid) FROM alert_sections) ORDER BY s.rowid"
        ).fetchall()
        if section not in pending
    ]


# Bad tiles a digest names: not yet alerted, and not part of a section-wide failure
# (those wait for the section's summary, which names the failure once).
_RETAKE_KINDS = tuple(k for k in VerdictKind if k.needs_retake)
_DIGESTED = (
    f"t.alert IS NULL AND t.kind IN ({', '.join('?' * len(_RETAKE_KINDS))}) AND t.label NOT LIKE ?"
)
_SECTION_WIDE_LIKE = f"%{SECTION_WIDE}%"
_DIGESTED_ARGS = (*_RETAKE_KINDS, _SECTION_WIDE_LIKE)


def _due_digests(conn: Any, cutoff: float) -> list[tuple[str, int]]:
    """(section, digests sent) of sections with bad tiles waiting, last alert before cutoff."""
    return [
        (str(section), int(n))
        for section, n in conn.execute(
            "SELECT s.section, s.digests FROM alert_sections s WHERE s.last_alert_at <= ? "
            "AND EXISTS (SELECT 1 FROM alert_tiles t WHERE t.section = s.section "
            f"AND {_DIGESTED})",
            (cutoff, *_DIGESTED_ARGS),
        ).fetchall()
    ]


def _idle_sections(conn: Any, cutoff: float) -> list[str]:
    """Unsummarised sections with no verdict since cutoff (and none told as stalled with
    the tiles they have now)."""
    return [
        str(section)
        for (section,) in conn.execute(
            "SELECT s.section FROM alert_sections s WHERE s.summarized = 0 AND s.last_at <= ? "
            "AND (s.stalled_tiles IS NULL OR s.stalled_tiles != (SELECT count(DISTINCT "
            "t.position) FROM alert_tiles t WHERE t.section = s.section))",
            (cutoff,),
        ).fetchall()
    ]


# The layouts' position keys (focuswatch.tiles.layouts): ATLAS row/col, MultiSEM
# mFoV/beam, SBEMimage grid/tile.
_GRID_POSITION = re.compile(r"r\d+-c\d+|(?:region \d+, )?mFoV \d+, beam \d+|grid \d+, tile \d+")


# How often the health alarms (stall, disk) are looked at, in seconds of the clock.
HEALTH_EVERY_S = 10.0


def _local(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _free_mb(folder: Path) -> float | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 2**20


def _json_or_none(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _title(instance: str, text: str) -> str:
    """Every message's title: the instance it comes from, then what happened."""
    return f"[{instance}] focuswatch: {text}" if instance else f"focuswatch: {text}"


def _positions(conn: Any, section: str) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT position FROM alert_tiles WHERE section = ?", (section,)
    ).fetchall()
    return {str(r[0]) for r in rows}


def _expected_positions(conn: Any, section: str) -> set[str]:
    """The tile positions this section should have: those of the section before it.

    (Sections in the order their first verdict came; empty when there is none before.)
    """
    row = conn.execute(
        "SELECT p.section FROM alert_sections p WHERE p.rowid < "
        "(SELECT rowid FROM alert_sections WHERE section = ?) ORDER BY p.rowid DESC LIMIT 1",
        (section,),
    ).fetchone()
    if row is None:
        return set()
    # Only layout positions (r{row}-c{col}, mFoV/beam, grid/tile) repeat from section to
    # section; a tile known by its name alone says nothing about the next section's.
    return {p for p in _positions(conn, str(row[0])) if _GRID_POSITION.fullmatch(p)}


def _stage_line(record: VerdictRecord) -> str:
    return f"Stage X/Y: {_um(record.placement.stage_x_um)} / {_um(record.placement.stage_y_um)} µm"


def _digest_line(record: VerdictRecord, retake: _Retake | None = None) -> str:
    """The tile's line in its section's digest (kept with the tile until the digest goes)."""
    line = f"- {record.tile_name}: {_stage_line(record)}; {record.verdict.reason}"
    if retake is not None:
        bad = retake.status is RetakeStatus.RETAKEN_STILL_BAD
        again = "still bad after its retake, " if bad else ""
        line += f" ({again}retake {retake.id})"
    return line


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
        self._instance = instance_name(acfg)
        self._next_health = 0.0
        self._disk_low_since: float | None = None
        self._stall_told: str | None = None  # the latest stall message's key
        self._alarms = AlarmWatch(
            acfg, endpoints=[] if sender is None else [(e.id, e.name) for e in sender.endpoints]
        )
        self._alarms_shown: list[dict[str, Any]] | None = None  # as last written to meta

    def start(self) -> None:
        """Start delivery (one sender thread per endpoint); the constructor starts nothing."""
        if self._sender is not None:
            self._sender.start()

    def _queue(self, conn: Any, alert: Alert, now: float) -> None:
        """Queue for delivery (when there are targets) and log: the console shows it all."""
        if self._sender is not None and not enqueue(conn, alert, now=now):
            return  # queued before: never twice
        _log.warning(
            "alert",
            key=alert.key,
            section=alert.section,
            severity=alert.severity,
            title=alert.title,
            body=alert.body,
        )

    def on_verdict(self, record: VerdictRecord) -> None:
        now = self._clock()
        kind = record.verdict.kind
        section = record.section or ""
        with self._ledger.transaction() as conn:
            # The retake entry this verdict opened, kept open or closed (the retake
            # sink runs first); a tile waiting for a digest keeps its digest line and
            # details, so a restart loses nothing.
            retake = _retake_of(conn, record.version_id)
            label, details = record.tile_name, None
            if kind.needs_retake:
                alert = self._format(record, retake)
                label = _digest_line(record, retake)
                details = json.dumps(dict(alert.details), ensure_ascii=False, default=str)
            cur = conn.execute(
                "INSERT INTO alert_tiles (version_id, section, position, label, kind, at, alert,"
                " details) VALUES (?,?,?,?,?,?,NULL,?) ON CONFLICT (version_id) DO NOTHING",
                (record.version_id, section, record.position, label, str(kind), now, details),
            )
            if cur.rowcount == 0:
                # Replayed after a restart (nothing to do), or a verdict revised once more
                # of its section or position was known (focuswatch.judge).
                self._revised(conn, record, retake, label=label, details=details, now=now)
                return
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
                self._tile_alert(conn, record, retake, now)
            elif kind is VerdictKind.IN_FOCUS:
                # A good retake before the digest went out: the digest need not ask
                # for the earlier version any more.
                conn.execute(
                    "UPDATE alert_tiles SET alert = ? WHERE section = ? AND position = ? "
                    "AND alert IS NULL AND version_id < ?",
                    (f"retaken:{record.version_id}", section, record.position, record.version_id),
                )
            fixed = retake is not None and retake.status is RetakeStatus.RETAKEN_FIXED
            if retake is not None and fixed and not kind.needs_retake:
                self._queue(conn, _fixed_alert(record, retake, self._instance), now)
            if section in done:
                self._summarize(conn, section, now)
        if self._sender is not None:
            self._sender.kick()

    def _health(self, now: float) -> None:
        """Alarms about the acquisition and the machine, each once per episode, with its
        end: the microscope stopped writing while a section is open; the state
        folder's disk nearly full. Through the outbox, like tile alerts."""
        with self._ledger.reading() as conn:
            last = newest_seen(conn)
            (open_sections,) = conn.execute(
                "SELECT count(*) FROM alert_sections WHERE summarized = 0"
            ).fetchone()
            # The latest stall message: 'stalled:T' (told, not over) or 'stall-over:T'.
            latest = conn.execute(
                "SELECT dedupe_key FROM alert_outbox WHERE kind IN ('stall-all', 'stall-over') "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if self._stall_told is None:  # from the outbox once: a restart tells nothing twice
            self._stall_told = "" if latest is None else str(latest[0])
        told = self._stall_told
        alerts: list[Alert] = []
        stall_s = self._cfg.stall_minutes * 60.0
        if stall_s > 0 and last is not None:
            episode = f"{float(last):.0f}"
            if not told.startswith("stalled:") and open_sections and now - float(last) >= stall_s:
                self._stall_told = f"stalled:{episode}"
                alerts.append(
                    self._health_alert(
                        f"stalled:{episode}",
                        "stall-all",
                        "warning",
                        f"no new tile for {self._cfg.stall_minutes:g} min: has the microscope "
                        "stopped?",
                        f"The last tile arrived at {_local(float(last))}, and a section is still "
                        "open. Told once; the first new tile is told too.",
                    )
                )
            elif told.startswith("stalled:") and told != f"stalled:{episode}":
                was = told.partition(":")[2]
                self._stall_told = f"stall-over:{was}"
                alerts.append(
                    self._health_alert(
                        f"stall-over:{was}",
                        "stall-over",
                        "success",
                        "tiles arrive again",
                        f"A new tile arrived at {_local(float(last))}, after the stall.",
                    )
                )
        free_mb = _free_mb(self._ledger.path.parent)
        floor = self._cfg.disk_min_free_mb
        if floor > 0 and free_mb is not None:
            if self._disk_low_since is None and free_mb < floor:
                self._disk_low_since = now
                self._alarms.note(
                    AlarmName.DISK_LOW,
                    Alarm(
                        AlarmName.DISK_LOW,
                        "",
                        now,
                        f"the state folder's disk is nearly full ({free_mb:.0f} MB free)",
                    ),
                )
                alerts.append(
                    self._health_alert(
                        f"disk-low:{now:.0f}",
                        "disk",
                        "warning",
                        f"the state folder's disk is nearly full ({free_mb:.0f} MB free)",
                        f"{self._ledger.path.parent} has {free_mb:.0f} MB free, under "
                        f"alerts.disk_min_free_mb = {floor:g}. When it is full, no tile is scored "
                        "until there is room again.",
                    )
                )
            elif self._disk_low_since is not None and free_mb >= 1.25 * floor:
                alerts.append(
                    self._health_alert(
                        f"disk-ok:{self._disk_low_since:.0f}",
                        "disk",
                        "success",
                        f"the state folder's disk has room again ({free_mb:.0f} MB free)",
                        f"{self._ledger.path.parent} has {free_mb:.0f} MB free.",
                    )
                )
                self._disk_low_since = None
                self._alarms.note(AlarmName.DISK_LOW, None)
        stalled = self._stall_told or ""
        at = float(stalled.partition(":")[2]) if stalled.startswith("stalled:") else None
        self._alarms.note(
            AlarmName.STALL,
            None
            if at is None
            else Alarm(
                AlarmName.STALL,
                "",
                at,
                f"no new tile since {_local(at)} with a section open (has the microscope stopped?)",
            ),
        )
        self._check_alarms(alerts, now)

    def _check_alarms(self, alerts: list[Alert], now: float) -> None:
        """The alarms of ``focuswatch.alarms``: their messages queued with the stall and
        disk ones, and what lasts written to meta for the console and ``status``."""
        with self._ledger.reading() as conn:
            stored = conn.execute(
                "SELECT key, value FROM meta WHERE key IN (?, 'executor')", (alarms.META_KEY,)
            ).fetchall()
            meta = {str(k): _json_or_none(v) for k, v in stored}
            if self._alarms_shown is None:  # once: what a run before this one told
                before = alarms.from_meta(meta.get(alarms.META_KEY))
                self._alarms.restore(before)
                self._alarms_shown = alarms.to_meta(before)
            notices = self._alarms.check(conn, now, meta.get("executor"))
        shown = alarms.to_meta(self._alarms.active())
        if not alerts and not notices and shown == self._alarms_shown:
            return
        with self._ledger.transaction() as conn:
            for alert in alerts:
                self._queue(conn, alert, now)
            for n in notices:
                alert = self._health_alert(
                    n.key, f"alarm-{n.alarm.name}", n.severity, n.title, n.body
                )
                self._queue(conn, alert, now)
                if n.not_to is not None and self._sender is not None:
                    ids = self._sender.endpoint_ids
                    for e in self._sender.endpoints:
                        if e.id == n.not_to:
                            withhold(conn, n.key, e, endpoint_ids=ids, now=now)
            if shown != self._alarms_shown:
                conn.execute(
                    "INSERT INTO meta (key, value, updated) VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value, updated = excluded.updated",
                    (alarms.META_KEY, json.dumps(shown), now),
                )
        self._alarms_shown = shown

    def _health_alert(self, key: str, kind: str, severity: str, title: str, body: str) -> Alert:
        return Alert(
            key=key,
            kind=kind,
            section=None,
            title=_title(self._instance, title),
            body=body,
            severity=severity,
            details={"kind": kind, "instance": self._instance or None, "message": body},
        )

    def _revised(
        self,
        conn: Any,
        record: VerdictRecord,
        retake: _Retake | None,
        *,
        label: str,
        details: str | None,
        now: float,
    ) -> None:
        """A tile's verdict changed: the section's messages follow the verdict it has now.

        Newly bad: alerted as any bad tile is (at once, or in the digest). No longer
        bad after it was alerted: said so, so that nobody re-images it for nothing.
        """
        row = conn.execute(
            "SELECT kind, alert FROM alert_tiles WHERE version_id = ?", (record.version_id,)
        ).fetchone()
        kind = record.verdict.kind
        if row is None or row[0] == str(kind):
            return
        was = VerdictKind(row[0])
        conn.execute(
            "UPDATE alert_tiles SET kind = ?, label = ?, details = ?, "
            "alert = CASE WHEN ? THEN NULL ELSE alert END WHERE version_id = ?",
            (str(kind), label, details, kind.needs_retake, record.version_id),
        )
        if kind.needs_retake and not was.needs_retake:
            self._tile_alert(conn, record, retake, now)
        elif was.needs_retake and not kind.needs_retake and row[1] is not None:
            self._queue(
                conn,
                Alert(
                    key=f"revised:{record.version_id}:{kind}",
                    kind="revised",
                    section=record.section,
                    title=_title(
                        self._instance,
                        f"section {record.section}, {record.tile_name} is "
                        f"{_KIND_TEXT.get(kind, str(kind))} after all: no retake needed",
                    ),
                    body=f"Judged again once more of its section and position was in: "
                    f"{record.verdict.reason}",
                    severity="success",
                    details=_tile_details(record, retake)
                    | {"kind": "revised", "instance": self._instance or None},
                    tile_name=record.tile_name,
                ),
                now,
            )

    def _format(self, record: VerdictRecord, retake: _Retake | None) -> Alert:
        return format_tile_alert(
            record,
            instance=self._instance,
            retake_id=None if retake is None else retake.id,
            retake_status=None if retake is None else retake.status,
        )

    def _tile_alert(
        self, conn: Any, record: VerdictRecord, retake: _Retake | None, now: float
    ) -> None:
        """A bad tile: alert at once if it is the section's first (or digests are off).

        A tile of a section-wide failure (an autofocus that failed for the whole
        section) after the section's first alert waits for the section's summary: one
        failure is one message, not one per tile.
        """
        section = record.section or ""
        last = conn.execute(
            "SELECT last_alert_at FROM alert_sections WHERE section = ?", (section,)
        ).fetchone()[0]
        section_wide = record.verdict.reason.startswith(SECTION_WIDE)
        if last is None or (self._cfg.digest_minutes == 0 and not section_wide):
            alert = self._format(record, retake)
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
        if now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_S
            self._health(now)
        with self._ledger.reading() as conn:
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
                    self._summarize_or_stall(conn, section, now)
                for older in _completed_older(conn):
                    self._summarize(conn, older, now)
        if self._sender is not None:
            self._sender.kick()

    def _digest(self, conn: Any, section: str, n: int, now: float) -> None:
        rows = conn.execute(
            f"SELECT version_id, label, details FROM alert_tiles t WHERE section = ? "
            f"AND {_DIGESTED} ORDER BY version_id",
            (section, *_DIGESTED_ARGS),
        ).fetchall()
        key = f"digest:{section}:{n}"
        tiles = [json.loads(d) if d else {"version_id": vid} for vid, _, d in rows]
        again = sum(t.get("retake_status") == RetakeStatus.RETAKEN_STILL_BAD for t in tiles)
        new = len(rows) - again
        parts = []
        if new:
            parts.append(f"{new} more {'tile needs' if new == 1 else 'tiles need'} a retake")
        if again:
            parts.append(f"{again} still bad after {'its' if again == 1 else 'their'} retake")
        alert = Alert(
            key=key,
            kind="digest",
            section=section,
            title=_title(self._instance, f"section {section}: {', '.join(parts)}"),
            body="\n".join(label for _, label, _ in rows),
            severity="warning",
            details={
                "kind": "digest",
                "instance": self._instance or None,
                "section": section,
                "tiles": tiles,
            },
        )
        conn.executemany(
            "UPDATE alert_tiles SET alert = ? WHERE version_id = ?", [(key, r[0]) for r in rows]
        )
        conn.execute(
            "UPDATE alert_sections SET digests = ?, last_alert_at = ? WHERE section = ?",
            (n, now, section),
        )
        self._queue(conn, alert, now)

    def _summarize_or_stall(self, conn: Any, section: str, now: float) -> None:
        """A section gone quiet is complete only if it has every position the section
        before it had; otherwise it is told as incomplete ("the microscope stopped?")
        and waits: for its missing tiles, or for the next section to begin."""
        have = _positions(conn, section)
        missing = sorted(_expected_positions(conn, section) - have)
        if not missing:
            self._summarize(conn, section, now)
            return
        conn.execute(
            "UPDATE alert_sections SET stalled_tiles = ? WHERE section = ?", (len(have), section)
        )
        expected = len(have) + len(missing)
        idle_min = self._cfg.section_idle_minutes
        self._queue(
            conn,
            Alert(
                key=f"stalled:{section}:{len(have)}",
                kind="stall",
                section=section,
                title=_title(
                    self._instance, f"section {section} incomplete: {len(have)} of {expected} tiles"
                ),
                body=f"No new tile of section {section} for {idle_min:g} min, with "
                f"{len(missing)} of its {expected} positions still missing: "
                f"{', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}. "
                "Has the microscope stopped? The summary follows once they arrive or the "
                "next section begins.",
                severity="warning",
                details={
                    "kind": "stall",
                    "instance": self._instance or None,
                    "section": section,
                    "tiles": len(have),
                    "expected": expected,
                    "missing": missing,
                },
            ),
            now,
        )

    def _summarize(self, conn: Any, section: str, now: float) -> None:
        # The latest version at each position counts (a good retake replaces a bad tile).
        latest = conn.execute(
            "SELECT position, kind, version_id FROM alert_tiles t WHERE section = ? AND "
            "version_id = (SELECT max(version_id) FROM alert_tiles u WHERE u.section = "
            "t.section AND u.position = t.position) ORDER BY position",
            (section,),
        ).fetchall()
        rows = [(position, kind) for position, kind, _ in latest]
        # An unreadable tile is told here only (no tile alert): name its retake entry.
        unreadable_retakes = {
            position: _retake_of(conn, vid)
            for position, kind, vid in latest
            if kind == str(VerdictKind.UNREADABLE)
        }
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
        out, whole_beams = name_positions(
            by_kind.get(str(VerdictKind.OUT_OF_FOCUS), []), [str(p) for p, _ in rows]
        )
        n_out = len(by_kind.get(str(VerdictKind.OUT_OF_FOCUS), []))
        wide = conn.execute(
            "SELECT count(*) FROM alert_tiles WHERE section = ? AND label LIKE ?",
            (section, _SECTION_WIDE_LIKE),
        ).fetchone()[0]
        line = f"Section {section or '(no section)'}: {len(rows)} tiles, {n_out} out of focus"
        if wide:
            line = f"Section-wide focus failure (autofocus?): {line}"
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
                if kind is VerdictKind.UNREADABLE:
                    text += ": " + ", ".join(
                        _with_retake(p, unreadable_retakes.get(p)) for p in found
                    )
                elif kind is not VerdictKind.EMPTY:
                    text += ": " + ", ".join(found)
                parts.append(text)
        # Closed by the next section's start with positions still missing: say which.
        missing = sorted(_expected_positions(conn, section) - {str(p) for p, _ in rows})
        if missing:
            parts.append(f"{len(missing)} positions never arrived: {', '.join(missing[:20])}")
        self._queue(
            conn,
            Alert(
                key=f"summary:{section}",
                kind="summary",
                section=section,
                title=_title(
                    self._instance,
                    f"section {section} complete"
                    + (": section-wide focus failure" if wide else ""),
                ),
                body="; ".join(parts),
                severity="info",
                details={
                    "kind": "summary",
                    "instance": self._instance or None,
                    "section": section,
                    "tiles": len(rows),
                    "by_verdict": {k: sorted(v) for k, v in by_kind.items()},
                    # MultiSEM beams out of focus in every mFoV: one finding each.
                    "whole_beams": whole_beams,
                },
            ),
            now,
        )

    def tell_now(self, key: str, *, title: str, body: str, severity: str) -> None:
        """A health message sent at once from memory, past the outbox (whose ledger may be
        the thing that is broken); logged like every alert."""
        alert = Alert(
            key=key,
            kind="health",
            section=None,
            title=f"[{self._instance}] {title}",
            body=body,
            severity=severity,
            details={"health": key.partition(":")[0], "message": body},
        )
        _log.warning("alert", key=key, severity=severity, title=alert.title, body=body)
        if self._sender is not None:
            self._sender.tell_now(alert)

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
    endpoints: Sequence[Endpoint] | None = None,
) -> AlertSink:
    """The alert sink the service feeds every verdict to.

    Without alert targets (and no ``notify``), alerts are still logged and summarised,
    but nothing is queued for delivery.
    """
    acfg = cfg.alerts
    if endpoints is not None:
        endpoints = list(endpoints)
    elif notify is not None:
        endpoints = [Endpoint(id="notify", name="notify", notify=notify)]
    elif acfg.urls or acfg.apprise_config is not None:
        within = None
        if cfg.watch.path is not None and not cfg.watch.follow_symlinks_outside:
            within = os.path.realpath(cfg.watch.path)
        endpoints = build_endpoints(
            acfg, thumbnail_dir=Path(cfg.state_dir) / "thumbnails", within=within
        )
    else:
        endpoints = []
    sender = None
    if endpoints:
        sender = Sender(
            Path(cfg.state_dir),
            endpoints,
            clock=clock,
            retry_initial_s=acfg.retry_initial_s,
            retry_max_s=acfg.retry_max_s,
        )
    _log.info(
        "alerts_configured",
        targets=describe_targets(acfg),
        endpoints=[e.name for e in endpoints],
        delivery=sender is not None,
    )
    return AlertSink(ledger, acfg, sender=sender, clock=clock)
