"""Alerts: real email and HTTP endpoints on loopback, digests, summaries, a durable outbox."""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import http.server
import io
import json
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from aiosmtpd.controller import Controller
from PIL import Image
from structlog.testing import capture_logs

from focuswatch import alerts, cli, config, outbox, service
from focuswatch.config import AlertsConfig, Config
from focuswatch.errors import ConfigError
from focuswatch.ledger import Ledger
from focuswatch.outbox import Alert
from focuswatch.verdict import Verdict, VerdictKind, VerdictRecord

WAIT_S = 15.0  # every wait below is bounded by this
SLACK_OK = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
BAD = Verdict(VerdictKind.OUT_OF_FOCUS, "score 140 is 67 % below the median (420)", 420.0, 4.1)


class Clock:
    """An injected clock the test moves by hand (read from the sender thread too)."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A notifier that keeps what it is given (a real implementation of the protocol)."""

    def __init__(self) -> None:
        self.sent: queue.Queue[Alert] = queue.Queue()

    def __call__(self, alert: Alert) -> bool:
        self.sent.put(alert)
        return True

    def drain(self) -> list[Alert]:
        out = []
        while not self.sent.empty():
            out.append(self.sent.get_nowait())
        return out


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    yield
    left = [t for t in threading.enumerate() if t.name == "focuswatch-alerts" and t.is_alive()]
    assert left == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HookServer:
    """A real HTTP server on 127.0.0.1 that receives apprise's json:// POSTs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: queue.Queue[dict[str, Any]] = queue.Queue()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                posts.put(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(WAIT_S)

    def received(self) -> list[dict[str, Any]]:
        out = []
        while not self.posts.empty():
            out.append(self.posts.get_nowait())
        return out


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer(free_port())
    yield server
    server.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[int, queue.Queue[bytes]]]:
    inbox: queue.Queue[bytes] = queue.Queue()

    class Handler:
        async def handle_DATA(self, *args: Any) -> str:  # noqa: N802 (aiosmtpd's name)
            envelope = args[-1]
            inbox.put(envelope.content)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def make_tile(folder: Path, name: str) -> Path:
    """A small real TIFF tile with structure, for thumbnails."""
    rng = np.random.default_rng(1)
    image = (rng.random((300, 400)) * 255).astype(np.uint8)
    path = folder / f"{name}.tif"
    tifffile.imwrite(path, image)
    return path


def rec(
    vid: int,
    *,
    section: str = "S_001",
    row: int = 1,
    col: int = 2,
    verdict: Verdict = BAD,
    path: str = "/nowhere/tile.tif",
) -> VerdictRecord:
    return VerdictRecord(
        version_id=vid,
        path=path,
        tile_name=f"Tile_r{row}-c{col}_{section}",
        section=section,
        row=row,
        col=col,
        stage_x_um=1234.5,
        stage_y_um=-567.8,
        pixel_size_um=0.004,
        score=140.0 if verdict.kind.needs_retake else 430.0,
        verdict=verdict,
        at=0.0,
    )


GOOD = Verdict(VerdictKind.IN_FOCUS, "score 430 (median 420)", 420.0)
EMPTY = Verdict(VerdictKind.EMPTY, "score 0; no tissue")


def cfg_for(tmp_path: Path, **alert_opts: Any) -> Config:
    return Config(state_dir=tmp_path / "state", alerts=AlertsConfig(**alert_opts))


@contextlib.contextmanager
def opened(
    cfg: Config, clock: Clock, notify: outbox.Notifier | None = None
) -> Iterator[tuple[Ledger, alerts.AlertSink]]:
    ledger = Ledger.open(cfg.state_dir, clock=clock)
    sink = alerts.build_sink(cfg, ledger, clock=clock, notify=notify)
    try:
        yield ledger, sink
    finally:
        sink.close()
        ledger.close()


# -- configuration and secrets -----------------------------------------------------------


def test_public_names() -> None:
    """The modules export exactly their documented API."""
    assert sorted(alerts.__all__) == sorted(
        [
            "AlertSink",
            "AppriseNotifier",
            "build_sink",
            "describe_targets",
            "format_tile_alert",
            "make_thumbnail",
            "redact_url",
            "validate",
        ]
    )
    assert sorted(outbox.__all__) == sorted(
        ["Alert", "Notifier", "Pending", "Sender", "backoff", "enqueue", "pending_count"]
    )


def test_unparseable_url_is_a_config_error_with_its_key_path(tmp_path: Path) -> None:
    """A malformed Slack URL is reported as alerts.urls[1], without its secret.

    (``alerts.validate``: check-config and the service's start call it; config itself
    imports no effect module.)
    """
    data = {"alerts": {"urls": [SLACK_OK, "slack://T1JJ3T3L2/secret-token-xyz", "json://h/p"]}}
    problems = alerts.validate(config.parse(data))
    assert len(problems) == 1
    problem = problems[0]
    assert "at 'alerts.urls[1]'" in problem
    assert "secret-token-xyz" not in problem
    good = {"alerts": {"urls": [SLACK_OK, "json://127.0.0.1:8080/hook"]}}
    assert alerts.validate(config.parse(good)) == []
    with pytest.raises(ConfigError, match=r"at 'alerts\.urls\[1\]'"):
        service.main(config.parse(data))  # the service refuses to start with it


def test_check_config_reports_a_bad_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`focuswatch check-config` prints the key path and exits non-zero."""
    path = tmp_path / "fw.toml"
    path.write_text('[alerts]\nurls = ["json://127.0.0.1/hook", "nosuchscheme://x"]\n')
    assert cli.main(["check-config", str(path)]) == 2
    assert "at 'alerts.urls[1]'" in capsys.readouterr().err


def test_apprise_config_file_must_load_urls(tmp_path: Path) -> None:
    """alerts.apprise_config must exist and hold at least one usable URL."""
    missing = {"alerts": {"apprise_config": str(tmp_path / "none.yml")}}
    (problem,) = alerts.validate(config.parse(missing))
    assert "at 'alerts.apprise_config'" in problem
    good = tmp_path / "apprise.txt"
    good.write_text("json://127.0.0.1:9/hook\n")
    assert alerts.validate(config.parse({"alerts": {"apprise_config": str(good)}})) == []


def test_redact_url_hides_passwords_and_tokens() -> None:
    """The one way to show a URL: no password, no token, no query."""
    shown = alerts.redact_url("mailto://user:hunter2@127.0.0.1:25?from=a@b.org&to=c@d.org")
    assert "hunter2" not in shown
    assert shown.startswith("mailto://user:")
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in alerts.redact_url(SLACK_OK)
    assert "secret" not in alerts.redact_url("slack://secret/abc")


# -- delivery to real endpoints ----------------------------------------------------------


def test_email_alert_arrives_with_details_and_thumbnail(
    tmp_path: Path, smtp: tuple[int, queue.Queue[bytes]]
) -> None:
    """A bad tile is mailed through a real SMTP server: subject, details, PNG thumbnail."""
    port, inbox = smtp
    url = f"mailto://127.0.0.1:{port}?from=focuswatch@example.org&to=operator@example.org"
    cfg = cfg_for(tmp_path, urls=[url], thumbnail_px=64)
    tile = make_tile(tmp_path, "Tile_r1-c2_S_001")
    with opened(cfg, Clock()) as (_, sink):
        sink.on_verdict(rec(1, path=str(tile)))
        raw = inbox.get(timeout=WAIT_S)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert "Tile_r1-c2_S_001 out of focus" in str(msg["Subject"])
    parts = list(msg.walk())  # type: ignore[no-untyped-call]
    text = next(p for p in parts if p.get_content_type() == "text/plain").get_content()
    for needle in ("Section S_001", "row 1, col 2", "1234.5 / -567.8 µm", "140", "420", "4.1 µm"):
        assert needle in text
    png = next(p for p in parts if p.get_content_type() == "image/png").get_content()
    assert max(Image.open(io.BytesIO(png)).size) == 64


def test_json_alert_arrives_with_a_thumbnail(tmp_path: Path, hook: HookServer) -> None:
    """apprise json:// POSTs the alert to a real HTTP server, thumbnail attached."""
    hook.start()
    cfg = cfg_for(tmp_path, urls=[f"json://127.0.0.1:{hook.port}/hook"], thumbnail_px=32)
    tile = make_tile(tmp_path, "Tile_r1-c2_S_001")
    with opened(cfg, Clock()) as (_, sink):
        sink.on_verdict(rec(1, path=str(tile)))
        post = hook.posts.get(timeout=WAIT_S)
    assert "Tile_r1-c2_S_001" in post["title"]
    assert "Why: score 140 is 67 % below" in post["message"]
    (attachment,) = post["attachments"]
    image = Image.open(io.BytesIO(base64.b64decode(attachment["base64"])))
    assert max(image.size) == 32


def test_alert_is_sent_without_thumbnail_when_the_thumbnail_cannot_be_written(
    tmp_path: Path, hook: HookServer
) -> None:
    """A thumbnail that fails (here: its folder is a file) never holds the alert back."""
    hook.start()
    cfg = cfg_for(tmp_path, urls=[f"json://127.0.0.1:{hook.port}/hook"], thumbnail_px=32)
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "thumbnails").write_text("not a folder")  # mkdir/save will fail
    tile = make_tile(tmp_path, "Tile_r1-c2_S_001")
    with capture_logs() as logs, opened(cfg, Clock()) as (ledger, sink):
        sink.on_verdict(rec(1, path=str(tile)))
        post = hook.posts.get(timeout=WAIT_S)
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0  # counted as sent: not retried forever
    assert "Tile_r1-c2_S_001" in post["title"]
    assert not post.get("attachments")
    assert any(e["event"] == "thumbnail_failed" for e in logs)


def test_thumbnail_of_a_large_tile_reads_it_in_pieces(tmp_path: Path) -> None:
    """A 32 MB tile becomes a thumbnail with far less memory than the tile itself."""
    import tracemalloc

    rng = np.random.default_rng(2)
    image = rng.integers(0, 4096, size=(4096, 4096), dtype=np.uint16)  # 32 MiB
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image)
    del image
    out = tmp_path / "thumb.png"
    tracemalloc.start()
    try:
        assert alerts.make_thumbnail(path, out, px=64) == out
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # reading the tile whole would need 32 MiB
    with Image.open(out) as thumb:
        assert max(thumb.size) == 64


def test_thumbnail_of_an_unreadable_tile_is_none(tmp_path: Path) -> None:
    """A corrupt tile gives no thumbnail (and no exception)."""
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert alerts.make_thumbnail(bad, tmp_path / "t.png", px=32) is None
    assert not (tmp_path / "t.png").exists()


# -- digests and summaries ---------------------------------------------------------------


def test_first_bad_tile_at_once_then_a_digest_then_a_summary(tmp_path: Path) -> None:
    """One message at once, the rest of the section batched, a summary when it completes."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10)
    with opened(cfg, clock, notes) as (_, sink):
        sink.on_verdict(rec(1, row=3, col=4))
        sink.on_verdict(rec(2, row=5, col=1))
        sink.on_verdict(rec(3, row=2, col=2))
        sink.on_verdict(rec(4, row=1, col=1, verdict=GOOD))
        sink.on_verdict(rec(5, row=1, col=3, verdict=EMPTY))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        first = notes.drain()
        assert [a.key for a in first] == ["tile:1"]

        clock.now += 10 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (digest,) = notes.drain()
        assert digest.key == "digest:S_001:1"
        assert "2 more tiles need a retake" in digest.title
        assert "Tile_r5-c1_S_001" in digest.body
        assert "Tile_r2-c2_S_001" in digest.body

        sink.on_verdict(rec(6, section="S_002", verdict=GOOD))
        assert sink.flush(WAIT_S)
        (summary,) = notes.drain()
    assert summary.key == "summary:S_001"
    assert summary.body == ("Section S_001: 5 tiles, 3 out of focus: r2-c2, r3-c4, r5-c1; 1 empty")


def test_idle_section_is_summarised_and_a_good_retake_counts(tmp_path: Path) -> None:
    """No newer section comes: idle time completes it; the latest version per tile counts."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10, section_idle_minutes=30)
    with opened(cfg, clock, notes) as (_, sink):
        sink.on_verdict(rec(1, row=1, col=1))
        sink.on_verdict(rec(2, row=1, col=1, verdict=GOOD))  # retaken, fine now
        sink.on_verdict(rec(3, row=1, col=2, verdict=GOOD))
        clock.now += 29 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert [a.key for a in notes.drain()] == ["tile:1"]
        clock.now += 2 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (summary,) = notes.drain()
    assert summary.body == "Section S_001: 2 tiles, 0 out of focus"


def add_tile(ledger: Ledger, section: str, row: int, col: int) -> int:
    """A real tile version in the ledger ('ready': not judged yet); returns its id."""
    vid, _ = ledger.add_version(
        f"/wafer/{section}/Tile_r{row}-c{col}_{section}.tif",
        size=1,
        mtime_ns=1,
        tile_name=f"Tile_r{row}-c{col}_{section}",
        section=section,
        row=row,
        col=col,
    )
    return vid


def judged(ledger: Ledger, vid: int, v: Verdict) -> VerdictRecord:
    """Mark a version scored (as the service does before delivering its verdict)."""
    ledger.set_state(vid, "scored")
    t = ledger.get(vid)
    assert t.section is not None
    assert t.row is not None
    assert t.col is not None
    return rec(vid, section=t.section, row=t.row, col=t.col, verdict=v)


def test_older_section_waits_for_its_tiles_still_being_scored(tmp_path: Path) -> None:
    """A newer section starting does not complete one whose tiles are still in flight.

    With several workers (or a retry) the last tile of S_001 can finish after S_002's
    first: the summary waits for it, counts it, and its alert comes before "complete".
    """
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=0)
    with opened(cfg, clock, notes) as (ledger, sink):
        a = add_tile(ledger, "S_001", 1, 1)
        b = add_tile(ledger, "S_001", 1, 2)  # still scoring when S_002 begins
        c = add_tile(ledger, "S_002", 1, 1)
        ledger.claim_ready(10)
        sink.on_verdict(judged(ledger, a, GOOD))
        sink.on_verdict(judged(ledger, c, GOOD))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert notes.drain() == []  # S_001 is not complete yet

        sink.on_verdict(judged(ledger, b, BAD))
        assert sink.flush(WAIT_S)
        sent = notes.drain()
    assert [x.key for x in sent] == [f"tile:{b}", "summary:S_001"]
    assert sent[1].body == "Section S_001: 2 tiles, 1 out of focus: r1-c2"


def test_older_section_whose_last_tile_ends_without_a_verdict_completes_on_tick(
    tmp_path: Path,
) -> None:
    """When the pending tile leaves 'scoring' without a verdict reaching the sink, tick
    completes the section (no need to wait for the idle timer)."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=0, section_idle_minutes=30)
    with opened(cfg, clock, notes) as (ledger, sink):
        a = add_tile(ledger, "S_001", 1, 1)
        b = add_tile(ledger, "S_001", 1, 2)
        c = add_tile(ledger, "S_002", 1, 1)
        sink.on_verdict(judged(ledger, a, GOOD))
        sink.on_verdict(judged(ledger, c, GOOD))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert notes.drain() == []
        ledger.set_state(b, "failed")
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (summary,) = notes.drain()
    assert summary.key == "summary:S_001"


def test_digest_minutes_zero_alerts_every_tile(tmp_path: Path) -> None:
    """digest_minutes = 0 turns batching off."""
    clock, notes = Clock(), Recorder()
    with opened(cfg_for(tmp_path, digest_minutes=0), clock, notes) as (_, sink):
        for vid in (1, 2, 3):
            sink.on_verdict(rec(vid, col=vid))
        assert sink.flush(WAIT_S)
        assert [a.key for a in notes.drain()] == ["tile:1", "tile:2", "tile:3"]


def test_alerts_are_logged_even_without_targets(tmp_path: Path) -> None:
    """No URLs configured: nothing is queued, but the console still shows each alert."""
    clock = Clock()
    with capture_logs() as logs, opened(cfg_for(tmp_path), clock) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert outbox.pending_count(ledger) == 0
    (event,) = [e for e in logs if e["event"] == "alert"]
    assert event["key"] == "tile:1"
    assert "Stage X/Y: 1234.5 / -567.8 µm" in event["body"]


@contextlib.contextmanager
def write_locked(ledger: Ledger) -> Iterator[None]:
    """Another connection (as another process would) holds the ledger's write lock."""
    other = sqlite3.connect(ledger.path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_an_idle_tick_and_sender_round_take_no_write_lock(tmp_path: Path) -> None:
    """With nothing due, tick (every loop turn) and the sender only read: both finish
    while someone else holds the write lock, instead of queueing up behind it."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10)
    with opened(cfg, clock, notes) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert sink.flush(WAIT_S)
        assert [a.key for a in notes.drain()] == ["tile:1"]
        with write_locked(ledger):
            t0 = time.monotonic()
            sink.tick(clock.now)  # would wait for the lock (then fail) if it wrote
            assert time.monotonic() - t0 < 5.0
            assert sink.flush(5.0)  # a sender round completed: it did not wait either
        clock.now += 31 * 60  # now the idle section is due: tick writes its summary
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert [a.key for a in notes.drain()] == ["summary:S_001"]


# -- the durable outbox --------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    """5 s, 10 s, 20 s … never more than retry_max_s."""
    waits = [outbox.backoff(n, initial_s=5, max_s=60) for n in range(1, 7)]
    assert waits == [5, 10, 20, 40, 60, 60]
    with pytest.raises(ValueError, match="attempts"):
        outbox.backoff(0, initial_s=5, max_s=60)


def test_endpoint_down_then_restart_then_up_delivers_each_alert_once(
    tmp_path: Path, hook: HookServer
) -> None:
    """Alerts queue while the endpoint is down, survive a restart, and arrive exactly once."""
    clock = Clock()
    url = f"json://user:hunter2@127.0.0.1:{hook.port}/hook"
    cfg = cfg_for(tmp_path, urls=[url], digest_minutes=0, retry_initial_s=5, retry_max_s=60)
    records = [rec(1, col=1), rec(2, col=2), rec(3, section="S_002", col=1)]

    with capture_logs() as logs, opened(cfg, clock) as (ledger, sink):
        for r in records:
            sink.on_verdict(r)
        assert sink.flush(WAIT_S)  # every due alert was tried once, and failed
        rows = ledger.connection.execute(
            "SELECT dedupe_key, attempts, next_attempt - ? FROM alert_outbox ORDER BY id",
            (clock.now,),
        ).fetchall()
    keys = ["tile:1", "tile:2", "summary:S_001", "tile:3"]  # S_002 began: S_001 is done
    assert rows == [(k, 1, 5.0) for k in keys]
    assert "hunter2" not in repr(logs)
    assert any(e["event"] == "alert_send_failed" for e in logs)

    # "Restart": a new ledger and sink on the same state; the service replays verdicts.
    hook.start()
    with capture_logs() as logs, opened(cfg, clock) as (ledger, sink):
        for r in records:
            sink.on_verdict(r)
        assert outbox.pending_count(ledger) == 4  # 3 tiles + the summary of S_001
        clock.now += 5
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0
        clock.now += 3600
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
    titles = sorted(p["title"] for p in hook.received())
    assert len(titles) == 5  # 3 tiles, S_001's summary, S_002's summary once it was idle
    assert len(set(titles)) == 5
    assert sum("Tile_r1-c1_S_001" in t for t in titles) == 1
    assert "hunter2" not in repr(logs)


def test_a_hanging_endpoint_never_blocks_scoring(tmp_path: Path) -> None:
    """While a send hangs, verdicts and ticks still return at once."""
    started, release = threading.Event(), threading.Event()

    def hanging(alert: Alert) -> bool:
        started.set()
        release.wait(WAIT_S)
        return True

    clock = Clock()
    with opened(cfg_for(tmp_path, digest_minutes=0), clock, hanging) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert started.wait(WAIT_S)
        t0 = time.monotonic()
        for vid in range(2, 12):
            sink.on_verdict(rec(vid, col=vid))
            sink.tick(clock.now)
        elapsed = time.monotonic() - t0
        assert outbox.pending_count(ledger) == 11
        release.set()
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0
    assert elapsed < 2.0


def test_a_notifier_that_raises_is_retried_not_fatal(tmp_path: Path) -> None:
    """An exception in delivery is a failed attempt with backoff; the thread lives on."""
    calls: list[str] = []

    def flaky(alert: Alert) -> bool:
        calls.append(alert.key)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return True

    clock = Clock()
    cfg = cfg_for(tmp_path, retry_initial_s=5, retry_max_s=60)
    with opened(cfg, clock, flaky) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert sink.flush(WAIT_S)
        err = ledger.connection.execute("SELECT last_error FROM alert_outbox").fetchone()[0]
        assert err == "RuntimeError: boom"
        clock.now += 5
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0
    assert calls == ["tile:1", "tile:1"]


def test_format_tile_alert_without_metadata() -> None:
    """A tile with no stage position or baseline still gives a readable alert."""
    r = replace(rec(7), stage_x_um=None, stage_y_um=None, verdict=replace(BAD, baseline=None))
    alert = alerts.format_tile_alert(r)
    assert "Stage X/Y: ? / ? µm" in alert.body
    assert "baseline none yet" in alert.body
