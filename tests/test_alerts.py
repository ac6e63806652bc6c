"""Alerts: real email and HTTP endpoints on loopback, digests, summaries, a durable outbox."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email
import email.policy
import http.server
import io
import json
import os
import queue
import socket
import sqlite3
import threading
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

from focuswatch import alerts, app, cli, config, outbox
from focuswatch.config import AlertsConfig, Config
from focuswatch.errors import ConfigError
from focuswatch.ledger import Ledger
from focuswatch.outbox import Alert
from focuswatch.verdict import Placement, Verdict, VerdictKind, VerdictRecord

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
    left = [
        t for t in threading.enumerate() if t.name.startswith("focuswatch-alerts") and t.is_alive()
    ]
    assert left == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` different free ports (each held until all are chosen: no repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class HookServer:
    """A real HTTP server on 127.0.0.1 that receives apprise's json:// POSTs.

    ``statuses`` are answered in turn (then 200); with a ``gate``, every request waits
    for it (bounded) before it is answered: a slow endpoint the test releases. ``posts``
    holds the accepted (200) payloads, ``arrivals`` every request as it arrives.
    """

    def __init__(self, port: int, *, statuses: list[int] | None = None, gate: bool = False) -> None:
        self.port = port
        self.posts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.arrivals: queue.Queue[dict[str, Any]] = queue.Queue()
        self.statuses = list(statuses or [])
        self.gate = threading.Event() if gate else None
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                payload = json.loads(self.rfile.read(n))
                owner.arrivals.put(payload)
                if owner.gate is not None:
                    owner.gate.wait(WAIT_S)
                status = owner.statuses.pop(0) if owner.statuses else 200
                if status == 200:
                    owner.posts.put(payload)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(WAIT_S)

    def received(self) -> list[dict[str, Any]]:
        return drain(self.posts)


def drain(q: queue.Queue[Any]) -> list[Any]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
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
        placement=Placement(
            section=section,
            row=row,
            col=col,
            stage_x_um=1234.5,
            stage_y_um=-567.8,
            pixel_size_um=0.004,
        ),
        score=140.0 if verdict.kind.needs_retake else 430.0,
        verdict=verdict,
        at=0.0,
    )


def at_focus(r: VerdictRecord, wd_um: float) -> VerdictRecord:
    """``r`` as taken at working distance ``wd_um``."""
    return replace(r, placement=replace(r.placement, working_distance_um=wd_um))


GOOD = Verdict(VerdictKind.IN_FOCUS, "score 430 (median 420)", 420.0)
EMPTY = Verdict(VerdictKind.EMPTY, "score 0; no tissue")


def cfg_for(tmp_path: Path, **alert_opts: Any) -> Config:
    # The health alarms are off unless a test asks for them: this machine's free space
    # and the test's own clock jumps are not what the other tests are about.
    opts = {"disk_min_free_mb": 0.0, "stall_minutes": 0.0} | alert_opts
    return Config(state_dir=tmp_path / "state", alerts=AlertsConfig(**opts))


@contextlib.contextmanager
def opened(
    cfg: Config, clock: Clock, notify: outbox.Notifier | None = None
) -> Iterator[tuple[Ledger, alerts.AlertSink]]:
    ledger = Ledger.open(cfg.state_dir, clock=clock)
    sink = alerts.build_sink(cfg, ledger, clock=clock, notify=notify)
    sink.start()
    try:
        yield ledger, sink
    finally:
        sink.close()
        ledger.close()


# -- configuration and secrets -----------------------------------------------------------


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
        app.main(config.parse(data))  # the service refuses to start with it


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


def test_an_apprise_config_file_that_loads_only_in_part_names_each_line_it_refused(
    tmp_path: Path,
) -> None:
    """apprise loads the good lines and drops the others with a log line: check-config
    says which, without the secret a dropped URL holds."""
    partly = tmp_path / "apprise.txt"
    partly.write_text(
        "json://127.0.0.1:9/hook\nslack://not-a-valid-token\nnosuchscheme://user:Hunter2pw@host/x\n"
    )
    problems = alerts.validate(config.parse({"alerts": {"apprise_config": str(partly)}}))
    assert problems
    assert all(p.startswith(f"at 'alerts.apprise_config': {str(partly)!r}: ") for p in problems)
    text = "\n".join(problems)
    assert "line 2" in text
    assert "nosuchscheme://" in text
    assert "Hunter2pw" not in text
    assert "not-a-valid-token" not in text


def test_a_line_apprise_drops_with_only_a_warning_is_named_too_and_no_raw_line_is_echoed(
    tmp_path: Path,
) -> None:
    """A retry count in a tag drops the line with a warning, not an error; a line that
    is no URL at all is repeated by apprise as it is: its secret must not be shown."""
    tagged = tmp_path / "tagged.txt"
    tagged.write_text("json://127.0.0.1:9/hook\nalerts:3=json://127.0.0.1:9/hook2\n")
    (problem,) = alerts.validate(config.parse({"alerts": {"apprise_config": str(tagged)}}))
    assert "line 2" in problem
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("json://127.0.0.1:9/hook\n = = bad line with secret Hunter2Secret99 ===\n")
    problems = alerts.validate(config.parse({"alerts": {"apprise_config": str(garbage)}}))
    text = "\n".join(problems)
    assert "line 2" in text
    assert "Hunter2Secret99" not in text


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


def test_the_summary_names_the_retake_entry_of_each_unreadable_tile(tmp_path: Path) -> None:
    """An unreadable tile gets no alert of its own, only its line in the summary: the
    line says which retake list entry to work through (as a tile alert does)."""
    from focuswatch import retakes

    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10)
    with opened(cfg, clock, notes) as (ledger, sink):
        retake_sink = retakes.RetakeSink(ledger, cfg.state_dir, clock=clock)
        broken = Verdict(VerdictKind.UNREADABLE, "TIFF cut short")
        for row, col, verdict in [(1, 1, GOOD), (1, 2, broken), (2, 1, broken)]:
            v = add_tile(ledger, "S_001", row, col)
            ledger.record_result(v, verdict=verdict)  # judged: nothing still on its way
            record = rec(v, row=row, col=col, verdict=verdict)
            retake_sink.on_verdict(record)  # first, as in the service
            sink.on_verdict(record)
        ids = {(e.row, e.col): e.id for e in retakes.entries(ledger)}
        sink.on_verdict(rec(99, section="S_002", verdict=GOOD))
        assert sink.flush(WAIT_S)
        (summary,) = notes.drain()
    assert sorted(ids) == [(1, 2), (2, 1)]
    assert summary.body == (
        "Section S_001: 3 tiles, 0 out of focus; "
        f"2 unreadable: r1-c2 (retake {ids[1, 2]}), r2-c1 (retake {ids[2, 1]})"
    )


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
    """Record the version's result (as the service does before delivering its verdict)."""
    ledger.record_result(vid, verdict=v)
    t = ledger.get(vid)
    assert t.section is not None
    row, col = t.placement.row, t.placement.col
    assert row is not None
    assert col is not None
    return rec(vid, section=t.section, row=row, col=col, verdict=v)


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
        ledger.record_result(b, verdict=Verdict(VerdictKind.UNREADABLE, "truncated"))
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
            sink.tick(clock.now)  # would wait for the lock, then raise, if it wrote
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
        # Attempts and backoff are the endpoint's own (one delivery row per endpoint).
        rows = ledger.connection.execute(
            "SELECT o.dedupe_key, d.attempts, d.next_attempt - ? FROM alert_outbox o "
            "JOIN alert_deliveries d ON d.outbox_id = o.id ORDER BY o.id",
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
    """While a send hangs, verdicts and ticks still return: all of them are taken
    while the first send is still hanging (it only ends when the test releases it)."""
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def hanging(alert: Alert) -> bool:
        started.set()
        release.wait(WAIT_S)
        returned.set()
        return True

    clock = Clock()
    with opened(cfg_for(tmp_path, digest_minutes=0), clock, hanging) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert started.wait(WAIT_S)
        for vid in range(2, 12):
            sink.on_verdict(rec(vid, col=vid))
            sink.tick(clock.now)
        assert not returned.is_set()  # the send still hangs, and scoring went on
        assert outbox.pending_count(ledger) == 11
        release.set()
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0


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
        err = ledger.connection.execute("SELECT last_error FROM alert_deliveries").fetchone()[0]
        assert err == "RuntimeError: boom"
        err = ledger.connection.execute("SELECT last_error FROM alert_outbox").fetchone()[0]
        assert err == "notify: RuntimeError: boom"  # the outbox row names the endpoint
        clock.now += 5
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0
    assert calls == ["tile:1", "tile:1"]


def test_format_tile_alert_without_metadata() -> None:
    """A tile with no stage position or baseline still gives a readable alert."""
    r = rec(7)
    r = replace(
        r,
        placement=replace(r.placement, stage_x_um=None, stage_y_um=None),
        verdict=replace(BAD, baseline=None),
    )
    alert = alerts.format_tile_alert(r)
    assert "Stage X/Y: ? / ? µm" in alert.body
    assert "baseline none yet" in alert.body


# -- delivery per endpoint -----------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[list[HookServer]]:
    """Hook servers a test makes (``servers.append``); all stopped at the end."""
    made: list[HookServer] = []
    yield made
    for server in made:
        server.stop()


def test_each_endpoint_gets_each_alert_once_and_none_waits_for_another(
    tmp_path: Path, servers: list[HookServer], smtp: tuple[int, queue.Queue[bytes]]
) -> None:
    """A healthy, a slow, a failing (500) and a down JSON endpoint and a real mail server.

    The healthy endpoint and the mail server get both alerts while the slow one still
    holds the first; the failing and the down ones are retried on their own backoff;
    in the end every endpoint has accepted each alert exactly once, and no mail was
    sent twice (apprise's single notify() re-sent to everyone when one failed).
    """
    ports = free_ports(4)
    healthy = HookServer(ports[0])
    slow = HookServer(ports[1], gate=True)
    failing = HookServer(ports[2], statuses=[500, 500])
    down = HookServer(ports[3])  # started only later
    servers += [healthy, slow, failing, down]
    for server in (healthy, slow, failing):
        server.start()
    port, inbox = smtp
    urls = [
        f"json://127.0.0.1:{healthy.port}/healthy",
        f"json://127.0.0.1:{slow.port}/slow",
        f"json://127.0.0.1:{failing.port}/failing",
        f"json://127.0.0.1:{down.port}/down",
        f"mailto://127.0.0.1:{port}?from=focuswatch@example.org&to=operator@example.org",
    ]
    clock = Clock()
    cfg = cfg_for(
        tmp_path,
        urls=urls,
        digest_minutes=0,
        section_summary=False,
        retry_initial_s=5,
        retry_max_s=60,
        thumbnail_px=0,
    )
    with capture_logs() as logs, opened(cfg, clock) as (ledger, sink):
        sink.on_verdict(rec(1, col=1))
        sink.on_verdict(rec(2, col=2))
        first_slow = slow.arrivals.get(timeout=WAIT_S)  # held until the test releases it
        healthy_got = [healthy.posts.get(timeout=WAIT_S) for _ in range(2)]
        mails = [inbox.get(timeout=WAIT_S) for _ in range(2)]
        assert slow.posts.empty()  # the slow endpoint has not answered even once yet
        assert "Tile_r1-c1_S_001" in first_slow["title"]
        assert slow.gate is not None
        slow.gate.set()
        assert sink.flush(WAIT_S)
        # The failing endpoint answered 500 to both, the down one refused both.
        assert failing.posts.empty()
        assert outbox.pending_count(ledger) == 2
        down.start()
        clock.now += 5
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 0
        clock.now += 3600  # much later: nothing is sent again
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)

    def titles(posts: list[dict[str, Any]]) -> list[str]:
        return sorted(p["title"] for p in posts)

    expected = titles(healthy_got)
    assert len(set(expected)) == 2
    assert healthy.received() == []
    assert titles(slow.received()) == expected
    assert titles(failing.received()) == expected
    assert len(drain(failing.arrivals)) == 4  # two refused, then each accepted once
    assert titles(down.received()) == expected
    assert len(mails) == 2
    assert inbox.empty()  # no mail repeated

    failed = [e for e in logs if e["event"] == "alert_send_failed"]
    by_endpoint = {e["endpoint"]: e["error"] for e in failed}
    assert set(by_endpoint) == {
        f"json://127.0.0.1:{failing.port}/failing",
        f"json://127.0.0.1:{down.port}/down",
    }
    assert "500" in by_endpoint[f"json://127.0.0.1:{failing.port}/failing"]
    assert "Connection error" in by_endpoint[f"json://127.0.0.1:{down.port}/down"]


class Gate:
    """A notifier that records each alert and answers True/False as told (per call)."""

    def __init__(self, answers: list[bool] | None = None) -> None:
        self.sent: queue.Queue[str] = queue.Queue()
        self.answers = list(answers or [])

    def __call__(self, alert: Alert) -> bool:
        self.sent.put(alert.key)
        return self.answers.pop(0) if self.answers else True


def sender_for(cfg: Config, clock: Clock, endpoints: list[outbox.Endpoint]) -> outbox.Sender:
    return outbox.Sender(cfg.state_dir, endpoints, clock=clock, retry_initial_s=5, retry_max_s=60)


def test_a_failing_endpoint_is_retried_alone_with_its_own_backoff(tmp_path: Path) -> None:
    """Endpoint B fails twice: A is never asked again, B waits 5 s then 10 s, then has it."""
    clock = Clock()
    cfg = cfg_for(tmp_path, digest_minutes=0)
    a, b = Gate(), Gate([False, False])
    endpoints = [outbox.Endpoint("a", "A", a), outbox.Endpoint("b", "B", b)]
    ledger = Ledger.open(cfg.state_dir, clock=clock)
    sender = sender_for(cfg, clock, endpoints)
    sink = alerts.AlertSink(ledger, cfg.alerts, sender=sender, clock=clock)
    sink.start()
    try:
        sink.on_verdict(rec(1))
        assert sink.flush(WAIT_S)
        for step in (5, 9, 1, 10):  # B's backoff: 5 s after the 1st failure, 10 s after the 2nd
            clock.now += step
            sink.tick(clock.now)
            assert sink.flush(WAIT_S)
        waits = ledger.connection.execute(
            "SELECT endpoint, attempts, sent IS NOT NULL FROM alert_deliveries ORDER BY endpoint"
        ).fetchall()
        assert outbox.pending_count(ledger) == 0
    finally:
        sink.close()
        ledger.close()
    assert drain(a.sent) == ["tile:1"]
    assert drain(b.sent) == ["tile:1"] * 3  # at t0, t0+5, t0+15 (not at t0+14)
    assert waits == [("a", 1, 1), ("b", 3, 1)]


def test_a_removed_endpoint_no_longer_holds_its_alerts(tmp_path: Path) -> None:
    """After a restart without the dead endpoint, what the others have is done; a new
    endpoint gets what is still undelivered, and the healthy one is not asked again."""
    clock = Clock()
    cfg = cfg_for(tmp_path, digest_minutes=0)
    ok, dead, new = Gate(), Gate([False] * 10), Gate()
    with opened(cfg, clock) as (ledger, _sink):
        with ledger.transaction() as conn:
            outbox.enqueue(conn, Alert("k1", "tile", "S", "t1", "b1"), now=clock.now)
        sender = sender_for(
            cfg, clock, [outbox.Endpoint("ok", "ok", ok), outbox.Endpoint("dead", "dead", dead)]
        )
        sender.start()
        assert sender.flush(WAIT_S)
        sender.stop()
        assert outbox.pending_count(ledger) == 1
        sender = sender_for(
            cfg, clock, [outbox.Endpoint("ok", "ok", ok), outbox.Endpoint("new", "new", new)]
        )
        sender.start()
        assert sender.flush(WAIT_S)
        sender.stop()
        assert outbox.pending_count(ledger) == 0
    assert drain(ok.sent) == ["k1"]
    assert drain(new.sent) == ["k1"]


def test_senders_stop_within_their_bound_while_a_send_hangs(tmp_path: Path) -> None:
    """stop() returns while one endpoint's send still hangs (and says so); the other
    endpoint's thread has ended; the hung one ends once its send returns."""
    started, release = threading.Event(), threading.Event()

    def hanging(alert: Alert) -> bool:
        started.set()
        release.wait(WAIT_S)
        return True

    clock = Clock()
    cfg = cfg_for(tmp_path, digest_minutes=0)
    quick = Gate()
    ledger = Ledger.open(cfg.state_dir, clock=clock)
    try:
        with ledger.transaction() as conn:
            outbox.enqueue(conn, Alert("k1", "tile", "S", "t1", "b1"), now=clock.now)
        sender = sender_for(
            cfg,
            clock,
            [outbox.Endpoint("q", "quick", quick), outbox.Endpoint("h", "hung", hanging)],
        )
        assert not [t for t in threading.enumerate() if t.name.startswith("focuswatch-alerts")]
        sender.start()
        assert started.wait(WAIT_S)
        assert quick.sent.get(timeout=WAIT_S) == "k1"
        with capture_logs() as logs:
            sender.stop(timeout=0.5)
        busy = [e for e in logs if e["event"] == "alert_sender_still_busy"]
        assert [e["endpoint"] for e in busy] == ["hung"]
        alive = [t for t in threading.enumerate() if t.name.startswith("focuswatch-alerts")]
        assert len(alive) == 1
        release.set()
        alive[0].join(WAIT_S)
        assert not alive[0].is_alive()
    finally:
        release.set()
        ledger.close()


# -- secrets in URLs -----------------------------------------------------------------------

SECRET_URLS = {
    # url: the secrets in it
    "json://127.0.0.1:8080/hooks/PathT0kenSecret": ["PathT0kenSecret"],
    "jsons://user:hunter2@monitor.example.org/api/PathTokenSecretValue": [
        "hunter2",
        "PathTokenSecretValue",
    ],
    "form://127.0.0.1/in/abc123def456ghi": ["abc123def456ghi"],
    "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#sem": [
        "T1JJ3T3L2",
        "A1BRTD4JD",
        "TIiajkdnlazkcOXrIdevi7FQ",
    ],
    "https://hooks.slack.com/services/T1JJ3T3L3/A1BRTD4JE/TIiajkdnlazkcOXrIdevi7FR": [
        "T1JJ3T3L3",
        "A1BRTD4JE",
        "TIiajkdnlazkcOXrIdevi7FR",
    ],
    "discord://123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh": [
        "123456789012345678",
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh",
    ],
    "https://discord.com/api/webhooks/223456789012345678/BbCdEfGhIjKlMnOpQrStUvWxYz0123": [
        "223456789012345678",
        "BbCdEfGhIjKlMnOpQrStUvWxYz0123",
    ],
    "mailtos://operator:s3cretPass@mail.example.org?to=ops@example.org": ["s3cretPass"],
}


@pytest.mark.parametrize("url", list(SECRET_URLS))
def test_redact_url_masks_tokens_in_paths_and_slack_and_discord_forms(url: str) -> None:
    """No secret survives redaction, whichever way the URL is written; names do."""
    shown = alerts.redact_url(url)
    for secret in SECRET_URLS[url]:
        assert secret not in shown, shown
    assert shown.split("://")[0] in url or shown.startswith(("slack://", "discord://"))


def test_redact_url_keeps_plain_paths_and_hosts() -> None:
    """Ordinary names stay readable, so the operator can tell endpoints apart."""
    assert alerts.redact_url("json://monitor.example.org:8080/focuswatch/hook") == (
        "json://monitor.example.org:8080/focuswatch/hook"
    )


def test_check_config_and_the_start_log_show_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` prints the effective config and the service logs its targets at
    start: neither shows a token from any URL."""
    urls = list(SECRET_URLS)
    path = tmp_path / "fw.toml"
    path.write_text("[alerts]\nurls = [" + ", ".join(json.dumps(u) for u in urls) + "]\n")
    (tmp_path / "watch").mkdir()
    args = ["--watch", str(tmp_path / "watch"), "--state", str(tmp_path / "state")]
    assert cli.main(["check-config", str(path), *args]) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "json://127.0.0.1:8080/hooks/P...t" in printed.out  # shown, redacted
    cfg = replace(config.load(path), state_dir=tmp_path / "state")
    with capture_logs() as logs, opened(cfg, Clock()):
        pass
    (started,) = [e for e in logs if e["event"] == "alerts_configured"]
    assert len(started["endpoints"]) == len(urls)
    for secret in (s for u in urls for s in SECRET_URLS[u]):
        assert secret not in printed.out + printed.err
        assert secret not in repr(started)


# -- what the messages say -------------------------------------------------------------------

WD_UM = 5001.2


def test_mail_is_readable_as_text_and_html_and_names_instance_retake_and_tile(
    tmp_path: Path, smtp: tuple[int, queue.Queue[bytes]]
) -> None:
    """text/plain keeps one fact per line, the HTML part breaks lines with <br> and has no
    raw newline escapes; the subject names the instance, the body the retake id that
    `retakes dismiss` takes and the working distance; the thumbnail is named after the tile."""
    port, inbox = smtp
    url = f"mailto://127.0.0.1:{port}?from=focuswatch@example.org&to=operator@example.org"
    cfg = cfg_for(tmp_path, urls=[url], thumbnail_px=32, instance="Merlin-2")
    tile = make_tile(tmp_path, "Tile_r1-c2_S_001")
    with opened(cfg, Clock()) as (ledger, sink):
        retake_id = open_retake(ledger, 1)
        sink.on_verdict(at_focus(rec(1, path=str(tile)), WD_UM))
        raw = inbox.get(timeout=WAIT_S)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(msg["Subject"]).startswith("[Merlin-2] ")
    parts = list(msg.walk())  # type: ignore[no-untyped-call]
    text = next(p for p in parts if p.get_content_type() == "text/plain").get_content()
    html = next(p for p in parts if p.get_content_type() == "text/html").get_content()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    assert lines[0].startswith("Section S_001, tile Tile_r1-c2_S_001 (row 1, col 2)")
    assert "Stage X/Y: 1234.5 / -567.8 µm" in lines
    assert "Working distance: 5.0012 mm (5001.2 µm)" in lines
    assert "Score: 140 (baseline 420)" in lines
    assert any(ln.startswith("Why: score 140 is 67 % below") for ln in lines)
    assert any(f"focuswatch retakes dismiss {retake_id}" in ln for ln in lines)
    assert "\\n" not in html
    assert html.count("<br") >= 5
    assert "Stage X/Y: 1234.5 / -567.8 µm<br" in html
    png = next(p for p in parts if p.get_content_type() == "image/png")
    assert png.get_filename() == "Tile_r1-c2_S_001.png"


def open_retake(ledger: Ledger, vid: int, *, position: str = "r1-c2") -> int:
    """A retake entry for version ``vid`` (as the retake sink opens before the alert)."""
    with ledger.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO retakes (section, position, tile_name, reason, first_seen, status,"
            " version_id, updated) VALUES ('S_001', ?, 't', 'r', 0, 'open', ?, 0)",
            (position, vid),
        )
    return int(cur.lastrowid or 0)


def test_json_endpoint_gets_a_structured_payload_and_a_severity(
    tmp_path: Path, hook: HookServer
) -> None:
    """json:// POSTs carry the alert as fields ("focuswatch": verdict, section, tile, …)
    and apprise's type follows the severity: failure, warning (partly, digest), info
    (summary); the thumbnail is named after the tile."""
    hook.start()
    url = f"json://127.0.0.1:{hook.port}/hook"
    cfg = cfg_for(tmp_path, urls=[url], thumbnail_px=32, instance="Merlin-2", digest_minutes=10)
    tile = make_tile(tmp_path, "Tile_r1-c2_S_001")
    partly = Verdict(VerdictKind.PARTLY_OUT_OF_FOCUS, "2 of 9 patches dropped", 420.0)
    clock = Clock()
    with opened(cfg, clock) as (ledger, sink):
        retake_id = open_retake(ledger, 1)
        sink.on_verdict(at_focus(rec(1, path=str(tile)), WD_UM))
        first = hook.posts.get(timeout=WAIT_S)
        sink.on_verdict(rec(2, row=2, col=2, verdict=partly))
        clock.now += 600
        sink.tick(clock.now)
        digest = hook.posts.get(timeout=WAIT_S)
        sink.on_verdict(rec(3, section="S_002", verdict=GOOD))
        summary = hook.posts.get(timeout=WAIT_S)
    assert first["type"] == "failure"
    assert first["title"].startswith("[Merlin-2] ")
    assert first["focuswatch"] == {
        "key": "tile:1",
        "kind": "tile",
        "severity": "failure",
        "instance": "Merlin-2",
        "verdict": "out_of_focus",
        "section": "S_001",
        "tile": "Tile_r1-c2_S_001",
        "row": 1,
        "col": 2,
        "position": "row 1, col 2",
        "stage_x_um": 1234.5,
        "stage_y_um": -567.8,
        "working_distance_um": WD_UM,
        "score": 140.0,
        "baseline": 420.0,
        "defocus_um": 4.1,
        "reason": BAD.reason,
        "retake_id": retake_id,
        "retake_status": "open",
        "path": str(tile),
        "version_id": 1,
    }
    (attachment,) = first["attachments"]
    assert attachment["filename"] == "Tile_r1-c2_S_001.png"
    assert digest["type"] == "warning"
    assert digest["focuswatch"]["kind"] == "digest"
    (listed,) = digest["focuswatch"]["tiles"]
    assert (listed["tile"], listed["verdict"]) == ("Tile_r2-c2_S_001", "partly_out_of_focus")
    assert summary["type"] == "info"
    assert summary["focuswatch"]["kind"] == "summary"
    assert summary["focuswatch"]["by_verdict"] == {
        "out_of_focus": ["r1-c2"],
        "partly_out_of_focus": ["r2-c2"],
    }
    assert summary["title"] == "[Merlin-2] focuswatch: section S_001 complete"


def test_instance_defaults_to_the_host_name(tmp_path: Path) -> None:
    """Without alerts.instance every message still says which machine sent it."""
    notes = Recorder()
    with opened(cfg_for(tmp_path), Clock(), notes) as (_, sink):
        sink.on_verdict(rec(1))
        assert sink.flush(WAIT_S)
    (alert,) = notes.drain()
    assert alert.title.startswith(f"[{socket.gethostname()}] ")
    assert alert.details["instance"] == socket.gethostname()


def test_the_service_alerts_a_real_tile_with_its_working_distance_and_retake_id(
    tmp_path: Path, hook: HookServer
) -> None:
    """End to end: ATLAS tiles with FibicsXML go through the real service (watcher,
    worker process, policy, retake and alert sinks); the flat tile's JSON alert shows
    the working distance from Scan/Focus and the id of the retake entry it opened."""
    from focuswatch import retakes, synth
    from focuswatch.app import build_service
    from focuswatch.config import ScoringConfig, WatchConfig
    from pipeline_jobs import read_score

    hook.start()
    watch = tmp_path / "watch"
    section = watch / "S_000_1752450056"
    section.mkdir(parents=True)
    cfg = Config(
        state_dir=tmp_path / "state",
        watch=WatchConfig(path=watch, observer="polling", poll_interval_s=0.05, quiet_s=0.1),
        scoring=ScoringConfig(workers=1, tile_timeout_s=30.0),
        alerts=AlertsConfig(
            urls=[f"json://127.0.0.1:{hook.port}/hook"], thumbnail_px=0, instance="Merlin-2"
        ),
    )
    rng = np.random.default_rng(3)
    for col in (1, 2, 3, 4):
        spread = 2 if col == 3 else 60  # column 3: almost no structure
        image = np.clip(128 + rng.normal(0, spread, (64, 64)), 0, 255).astype(np.uint8)
        synth.write_tile(
            section / f"Tile_r1-c{col}_S_000_1752450056.tif",
            image,
            row=1,
            col=col,
            stage_x_um=100.0 * col,
            stage_y_um=200.0,
            working_distance_um=5000.0 + col,
        )
    svc = build_service(cfg, score_fn=read_score)
    try:
        svc.start()
        for _ in range(600):  # bounded: ends when the alert arrived
            svc.turn(0.05)
            with contextlib.suppress(queue.Empty):
                post = hook.posts.get_nowait()
                break
        else:
            raise AssertionError("no alert within the turn budget")
    finally:
        svc.stop(grace_s=1.0)
    fields = post["focuswatch"]
    assert fields["tile"] == "Tile_r1-c3_S_000_1752450056.tif"
    assert fields["verdict"] == "out_of_focus"
    assert fields["working_distance_um"] == pytest.approx(5003.0)
    assert "Working distance: 5.0030 mm" in post["message"]
    ledger = Ledger.open(cfg.state_dir, readonly=True)
    try:
        (entry,) = retakes.entries(ledger)
    finally:
        ledger.close()
    assert entry.tile_name == fields["tile"]
    assert fields["retake_id"] == entry.id
    assert f"focuswatch retakes dismiss {entry.id} " in post["message"]


def retake_version(ledger: Ledger, n: int) -> int:
    """Version ``n`` of tile r1-c1 of S_001 (a retake under a new suffix)."""
    vid, _ = ledger.add_version(
        f"/wafer/S_001/Tile_r1-c1_S_001_{n}.tif",
        size=1,
        mtime_ns=1,
        tile_name=f"Tile_r1-c1_S_001_{n}",
        section="S_001",
        row=1,
        col=1,
    )
    return vid


@pytest.mark.parametrize("digest_minutes", [0.0, 10.0])
def test_a_failed_retake_is_announced_as_such_and_a_good_one_as_a_recovery(
    tmp_path: Path, digest_minutes: float
) -> None:
    """With the real retake list: the first bad tile names its entry; a retake that is
    still bad says so (at once or in the digest), never "1 more tile needs a retake";
    a good retake is announced as a success naming the closed entry."""
    from focuswatch import retakes

    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=digest_minutes, section_summary=False)
    with opened(cfg, clock, notes) as (ledger, sink):
        retake_sink = retakes.RetakeSink(ledger, cfg.state_dir, clock=clock)
        v1, v2, v3 = (retake_version(ledger, n) for n in (1, 2, 3))

        def judge(vid: int, verdict: Verdict) -> None:
            record = replace(
                rec(vid, row=1, col=1, verdict=verdict), tile_name=f"Tile_r1-c1_S_001_{vid}"
            )
            retake_sink.on_verdict(record)  # first, as in the service
            sink.on_verdict(record)

        judge(v1, BAD)
        assert sink.flush(WAIT_S)
        (first,) = notes.drain()
        (entry,) = retakes.entries(ledger)
        assert first.details["retake_id"] == entry.id
        assert f"retakes dismiss {entry.id} " in first.body

        judge(v2, BAD)
        clock.now += digest_minutes * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (again,) = notes.drain()
        assert "more tile" not in again.title
        assert "still bad after its retake" in again.title + again.body
        if digest_minutes == 0:
            assert again.details["retake_id"] == entry.id
            assert again.details["retake_status"] == "retaken_still_bad"
        else:
            (listed,) = again.details["tiles"]
            assert listed["retake_id"] == entry.id

        judge(v3, GOOD)
        assert sink.flush(WAIT_S)
        (fixed,) = notes.drain()
        retake_sink.close()
    assert fixed.key == f"fixed:{v3}"
    assert fixed.severity == "success"
    assert f"entry {entry.id} is closed" in fixed.body


def test_a_sent_alert_whose_bookkeeping_fails_is_not_sent_again_meanwhile(
    tmp_path: Path,
) -> None:
    """The ledger refuses writes (a full disk) right after a send: the endpoint is not
    sent the alert again round after round; once the ledger takes writes again the
    delivery is recorded, and the endpoint has had it exactly once."""
    full = threading.Event()

    class DiskFullLedger(Ledger):
        @contextlib.contextmanager
        def transaction(self) -> Iterator[sqlite3.Connection]:
            if full.is_set():
                raise sqlite3.OperationalError("database or disk is full")
            with super().transaction() as conn:
                yield conn

    sent: queue.Queue[str] = queue.Queue()

    def filling(alert: Alert) -> bool:
        sent.put(alert.key)
        full.set()  # the disk fills in the instant after the send
        return True

    clock = Clock()
    cfg = cfg_for(tmp_path)
    ledger = Ledger.open(cfg.state_dir, clock=clock)
    sender = outbox.Sender(
        cfg.state_dir,
        [outbox.Endpoint("f", "filling", filling)],
        clock=clock,
        retry_initial_s=5,
        retry_max_s=60,
        ledger_type=DiskFullLedger,
    )
    try:
        with ledger.transaction() as conn:
            outbox.enqueue(conn, Alert("k1", "tile", "S", "t1", "b1"), now=clock.now)
        with capture_logs() as logs:
            sender.start()
            assert sent.get(timeout=WAIT_S) == "k1"
            for _ in range(3):  # rounds while the ledger refuses writes
                clock.now += 3600
                assert sender.flush(WAIT_S)
            assert outbox.pending_count(ledger) == 1
            full.clear()
            assert sender.flush(WAIT_S)
            assert outbox.pending_count(ledger) == 0
    finally:
        sender.stop()
        ledger.close()
    assert drain(sent) == []  # only the one send
    assert any("disk is full" in str(e.get("error")) for e in logs)


def test_every_url_of_an_apprise_config_file_is_its_own_endpoint(
    tmp_path: Path, servers: list[HookServer]
) -> None:
    """URLs from alerts.apprise_config are endpoints like alerts.urls (the same URL
    twice is one endpoint: it gets each alert once); one down does not stop the other."""
    up, down = (HookServer(port) for port in free_ports(2))
    servers += [up, down]
    up.start()
    conf = tmp_path / "apprise.txt"
    conf.write_text(
        f"json://127.0.0.1:{up.port}/from-file\njson://127.0.0.1:{down.port}/from-file\n"
    )
    cfg = cfg_for(
        tmp_path,
        urls=[f"json://127.0.0.1:{up.port}/from-file"],  # also in the file
        apprise_config=conf,
        thumbnail_px=0,
    )
    endpoints = alerts.build_endpoints(cfg.alerts, thumbnail_dir=tmp_path / "thumbs")
    assert [e.name for e in endpoints] == [
        f"json://127.0.0.1:{up.port}/from-file",
        f"json://127.0.0.1:{down.port}/from-file",
    ]
    with opened(cfg, Clock()) as (ledger, sink):
        sink.on_verdict(rec(1))
        assert sink.flush(WAIT_S)
        assert outbox.pending_count(ledger) == 1  # the down one still waits
    (post,) = up.received()
    assert post["focuswatch"]["key"] == "tile:1"
    # `status` says which endpoint holds the alert back, and why.
    from focuswatch import status

    out = io.StringIO()
    assert status.main(cfg, as_json=False, out=out) == 0
    text = out.getvalue()
    assert f"json://127.0.0.1:{down.port}/from-file: 1 not taken, 1 attempts" in text
    assert "Connection error" in text


def test_a_tile_retaken_fine_before_its_digest_is_not_asked_for_again(tmp_path: Path) -> None:
    """r2-c2 waits for the digest, then a good retake of it arrives: no digest asks for it."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10, section_summary=False)
    with opened(cfg, clock, notes) as (_, sink):
        sink.on_verdict(rec(1, row=1, col=1))  # the section's first: at once
        sink.on_verdict(rec(2, row=2, col=2))  # waits for the digest
        sink.on_verdict(rec(3, row=2, col=2, verdict=GOOD))  # retaken, fine
        clock.now += 10 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert [a.key for a in notes.drain()] == ["tile:1"]


def test_a_section_that_goes_quiet_short_of_its_tiles_is_incomplete_not_complete(
    tmp_path: Path,
) -> None:
    """The microscope stopped at 3 am: "section 002 complete: 2 tiles" for a section of 4
    would tell the operator all is well. It is told as incomplete, and waits."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10, section_idle_minutes=30, instance="fw")
    with opened(cfg, clock, notes) as (_, sink):
        vid = iter(range(1, 100))
        for row, col in ((1, 1), (1, 2), (2, 1), (2, 2)):
            sink.on_verdict(rec(next(vid), section="S_001", row=row, col=col, verdict=GOOD))
        for row, col in ((1, 1), (1, 2)):  # S_002 begins: S_001 is complete
            sink.on_verdict(rec(next(vid), section="S_002", row=row, col=col, verdict=GOOD))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        assert [a.title for a in notes.drain()] == ["[fw] focuswatch: section S_001 complete"]
        clock.now += 31 * 60  # and then nothing more
        sink.tick(clock.now)
        sink.tick(clock.now + 1)  # told once, not every turn
        assert sink.flush(WAIT_S)
        (stalled,) = notes.drain()
        assert stalled.title == "[fw] focuswatch: section S_002 incomplete: 2 of 4 tiles"
        assert stalled.severity == "warning"
        assert "r2-c1, r2-c2" in stalled.body
        for row, col in ((2, 1), (2, 2)):  # the microscope goes on
            sink.on_verdict(rec(next(vid), section="S_002", row=row, col=col, verdict=GOOD))
        clock.now += 31 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (summary,) = notes.drain()
    assert summary.title == "[fw] focuswatch: section S_002 complete"
    assert summary.body == "Section S_002: 4 tiles, 0 out of focus"


def test_a_section_wide_failure_is_one_alert_and_a_summary_not_one_per_tile(
    tmp_path: Path,
) -> None:
    """Every tile of a section blurred by a failed autofocus: the first tile alerts at
    once, the summary names the failure; no alert per tile, even with digests off."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=0, section_idle_minutes=30)
    wide = Verdict(
        VerdictKind.OUT_OF_FOCUS,
        "section-wide: 8 of 9 tiles of this section are out of focus (autofocus failure?); "
        "score 120 is 70 % below this tile position's median (400)",
        400.0,
    )
    with opened(cfg, clock, notes) as (_, sink):
        vid = iter(range(1, 100))
        sink.on_verdict(rec(next(vid), row=1, col=1))  # the first, before it was clear
        for row, col in [(r, c) for r in (1, 2, 3) for c in (1, 2, 3)][1:]:
            sink.on_verdict(rec(next(vid), row=row, col=col, verdict=wide))
            sink.tick(clock.now)
        sink.on_verdict(rec(next(vid), section="S_002", row=1, col=1, verdict=GOOD))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        sent = notes.drain()
    assert [a.kind for a in sent] == ["tile", "summary"]
    assert sent[1].title.endswith("section S_001 complete: section-wide focus failure")
    assert "9 out of focus" in sent[1].body


def test_a_tile_whose_name_is_not_utf8_is_mailed_with_its_name_escaped(
    tmp_path: Path, smtp: tuple[int, queue.Queue[bytes]]
) -> None:
    """Its raw name in the body jammed the mail endpoint: every try raised in apprise."""
    port, inbox = smtp
    url = f"mailto://127.0.0.1:{port}?from=focuswatch@example.org&to=operator@example.org"
    cfg = cfg_for(tmp_path, urls=[url], thumbnail_px=0)
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/S_001/Tile_r2-c2_\xe9.tif")
    with opened(cfg, Clock()) as (_, sink):
        sink.on_verdict(rec(2, path=odd))
        raw = inbox.get(timeout=WAIT_S)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = list(msg.walk())  # type: ignore[no-untyped-call]
    text = next(p for p in parts if p.get_content_type() == "text/plain").get_content()
    assert "Tile_r2-c2_\\xe9.tif" in text


def test_a_changed_setting_is_the_same_endpoint_not_a_new_one(tmp_path: Path) -> None:
    """An endpoint's id ignores what focuswatch sets on it (its timeout): a new id would
    have every alert still waiting for another endpoint sent to it again."""
    url = "json://127.0.0.1:9/hook"
    ids = {
        timeout: alerts.build_endpoints(
            AlertsConfig(urls=[url], send_timeout_s=timeout), thumbnail_dir=tmp_path
        )[0].id
        for timeout in (30.0, 45.0)
    }
    assert ids[30.0] == ids[45.0]


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("json://s3cr3tT0kenUser@host.example.org/hook", "s3cr3tT0kenUser"),
        ("json://host.example.org/webhook/abcdefghijklmnopqrstuvw", "abcdefghijklmnopqrstuvw"),
    ],
)
def test_a_token_as_the_user_or_a_long_lower_case_segment_is_masked(url: str, secret: str) -> None:
    assert secret not in alerts.redact_url(url)


def test_tiles_known_by_name_alone_never_make_a_section_incomplete(tmp_path: Path) -> None:
    """A MultiSEM beam image has no row/col: its name is no position the next section
    repeats, so a quiet section of them is complete, not 'missing' last section's names."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=10, section_idle_minutes=30)
    with opened(cfg, clock, notes) as (_, sink):
        for vid, (section, name) in enumerate(
            [("001", f"001_000001_00{b}_T1") for b in (1, 2, 3)]
            + [("002", f"002_000001_00{b}_T2") for b in (1, 2)],
            start=1,
        ):
            r = rec(vid, section=section, verdict=GOOD)
            sink.on_verdict(
                dataclasses.replace(
                    r,
                    placement=dataclasses.replace(r.placement, row=None, col=None),
                    tile_name=name,
                )
            )
        clock.now += 31 * 60
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        titles = [a.title for a in notes.drain()]
    assert titles[-1].endswith("section 002 complete")
    assert not any("incomplete" in t for t in titles)


def test_a_revised_verdict_is_followed_by_the_sections_messages(tmp_path: Path) -> None:
    """The judge re-decides a tile once more of its section is in: newly bad is alerted,
    no longer bad after an alert is said so, and the summary counts the verdict of now."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, digest_minutes=0, section_idle_minutes=30)
    with opened(cfg, clock, notes) as (_, sink):
        sink.on_verdict(rec(1, row=1, col=1, verdict=GOOD))
        sink.on_verdict(rec(2, row=1, col=2))  # bad: alerted at once
        sink.on_verdict(rec(1, row=1, col=1))  # revised: bad after all
        sink.on_verdict(rec(2, row=1, col=2, verdict=GOOD))  # revised: fine after all
        sink.on_verdict(rec(2, row=1, col=2, verdict=GOOD))  # replayed: nothing more
        sink.on_verdict(rec(3, section="S_002", verdict=GOOD))
        sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        sent = notes.drain()
    assert [a.key for a in sent] == ["tile:2", "tile:1", "revised:2:in_focus", "summary:S_001"]
    assert "in focus after all" in sent[2].title
    assert sent[3].body.startswith("Section S_001: 2 tiles, 1 out of focus: r1-c1")


def test_a_microscope_that_stops_writing_is_told_once_and_so_is_the_first_new_tile(
    tmp_path: Path,
) -> None:
    """No new tile for stall_minutes with a section open: "has the microscope stopped?",
    once; the next tile ends the episode with a message of its own."""
    clock, notes = Clock(), Recorder()
    cfg = cfg_for(tmp_path, stall_minutes=30, section_idle_minutes=600, instance="fw")
    with opened(cfg, clock, notes) as (ledger, sink):
        vid = add_tile(ledger, "S_001", 1, 1)
        sink.on_verdict(judged(ledger, vid, GOOD))
        for minutes in (10, 29):
            sink.tick(clock.now + minutes * 60)
        clock.now += 31 * 60
        for _ in range(4):  # looked at every 10 s: still one message
            sink.tick(clock.now)
            clock.now += 11
        assert sink.flush(WAIT_S)
        (stalled,) = notes.drain()
        assert (
            stalled.title == "[fw] focuswatch: no new tile for 30 min: has the microscope stopped?"
        )
        assert stalled.severity == "warning"
        clock.now += 60  # the microscope goes on
        vid = add_tile(ledger, "S_001", 1, 2)
        sink.on_verdict(judged(ledger, vid, GOOD))
        for _ in range(3):
            clock.now += 11
            sink.tick(clock.now)
        assert sink.flush(WAIT_S)
        (over,) = notes.drain()
    assert over.title == "[fw] focuswatch: tiles arrive again"
    assert over.severity == "success"


def test_a_nearly_full_state_disk_is_told_once_until_there_is_room(tmp_path: Path) -> None:
    clock, notes = Clock(), Recorder()
    huge = 1e12  # MB: more than any disk has
    cfg = cfg_for(tmp_path, disk_min_free_mb=huge, stall_minutes=0)
    with opened(cfg, clock, notes) as (_, sink):
        for seconds in (0, 11, 22):
            sink.tick(clock.now + seconds)
        assert sink.flush(WAIT_S)
        (low,) = notes.drain()
    assert "the state folder's disk is nearly full" in low.title
