"""``focuswatch status``: read-only, works next to a running writer, never shows secrets."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from focuswatch import outbox, status
from focuswatch.config import AlertsConfig, Config
from focuswatch.errors import StateError
from focuswatch.ledger import Ledger
from focuswatch.verdict import Verdict, VerdictKind


@dataclass
class Score:
    score: float = 10.0
    patch_scores: None = None
    content: float = 0.5
    backend: str = "numpy"
    shape: tuple[int, int] = (64, 64)
    read_ms: float = 1.0
    score_ms: float = 2.0
    meta: None = None


def populate(state: Path) -> Ledger:
    led = Ledger.open(state)
    a, _ = led.add_version(
        "/w/S_001/Tile_r1-c2_S_001.tif",
        size=1,
        mtime_ns=1,
        tile_name="Tile_r1-c2_S_001.tif",
        section="001",
        row=1,
        col=2,
    )
    led.record_result(
        a, verdict=Verdict(VerdictKind.OUT_OF_FOCUS, "score 10 below half of 40"), score=Score()
    )
    b, _ = led.add_version("/w/bad.tif", size=0, mtime_ns=1, tile_name="bad.tif")
    led.record_result(b, verdict=Verdict(VerdictKind.UNREADABLE, "zero-byte file"))
    led.add_version("/w/waiting.tif", size=1, mtime_ns=1, tile_name="waiting.tif")
    led.set_meta("executor", {"backend": "local", "workers": 2})
    led.set_meta("service", {"watch": "/w", "observer": "inotify", "pid": 1})
    led.set_meta("heartbeat", 0.0)
    return led


def cfg_for(state: Path) -> Config:
    secret = "slack://TOKENA/TOKENB/TOKENC/#em"
    return Config(state_dir=state, alerts=AlertsConfig(urls=[secret]))


def test_text_status_shows_counts_backlog_verdicts_failures_and_backend(tmp_path: Path) -> None:
    led = populate(tmp_path)
    out = io.StringIO()
    assert status.main(cfg_for(tmp_path), last=5, out=out) == 0
    text = out.getvalue()
    assert "ready 1" in text
    assert "backlog: 1" in text
    assert "backend: local" in text
    assert "zero-byte file" in text
    assert "score 10 below half of 40" in text
    assert "TOKEN" not in text
    assert "slack" not in text
    led.close()


def test_json_status_while_the_writer_holds_the_database_open(tmp_path: Path) -> None:
    led = populate(tmp_path)
    with led.transaction():  # a writer mid-transaction does not block a WAL reader
        out = io.StringIO()
        status.main(cfg_for(tmp_path), as_json=True, last=1, out=out)
    s = json.loads(out.getvalue())
    assert s["counts"]["failed"] == 1
    assert s["counts"]["scored"] == 1
    assert len(s["recent"]) == 1
    assert s["executor"]["workers"] == 2
    assert "TOKEN" not in out.getvalue()
    # Reading did not write: no new rows, nothing changed.
    assert led.counts()["ready"] == 1
    led.close()


def test_status_shows_the_array_backend_in_use_and_alerts_waiting(tmp_path: Path) -> None:
    """'auto' may have become cupy or numpy: the latest result says which; unsent alerts count."""
    led = populate(tmp_path)
    out = io.StringIO()
    status.main(cfg_for(tmp_path), out=out)
    assert "array backend: numpy (latest result)" in out.getvalue()
    assert "alerts waiting to be sent: 0" in out.getvalue()
    gpu, _ = led.add_version("/w/gpu.tif", size=1, mtime_ns=1, tile_name="gpu.tif")
    led.record_result(gpu, verdict=Verdict(VerdictKind.IN_FOCUS, "ok"), score=Score(backend="cupy"))
    later, _ = led.add_version("/w/later-bad.tif", size=0, mtime_ns=1, tile_name="later-bad.tif")
    led.record_result(later, verdict=Verdict(VerdictKind.UNREADABLE, "zero-byte file"))
    for key in ("a", "b", "c"):
        outbox.enqueue(led.connection, outbox.Alert(key, "tile", "001", key, "body"), now=1.0)
    led.connection.execute("UPDATE alert_outbox SET sent = 2.0 WHERE dedupe_key = 'a'")
    out = io.StringIO()
    status.main(cfg_for(tmp_path), out=out)
    assert "array backend: cupy (latest result)" in out.getvalue()  # unreadable has none
    assert "alerts waiting to be sent: 2" in out.getvalue()
    s = status.summary(cfg_for(tmp_path))
    assert (s["array_backend"], s["alerts_pending"]) == ("cupy", 2)
    led.close()


def test_status_without_a_ledger_is_a_clear_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no ledger"):
        status.main(Config(state_dir=tmp_path / "nothing"))


def test_status_command_line(tmp_path: Path) -> None:
    populate(tmp_path).close()
    r = subprocess.run(
        [sys.executable, "-m", "focuswatch", "status", "--state", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backlog"] == 1
    r = subprocess.run(
        [sys.executable, "-m", "focuswatch", "status", "--state", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert "no ledger" in r.stderr
    assert "Traceback" not in r.stderr


def test_hostile_names_are_shown_escaped_in_status_lines(tmp_path: Path) -> None:
    """A newline or an escape code in a file name cannot break or colour a status line."""
    ledger = Ledger.open(tmp_path)
    for name in ("Tile_r1-c1_\n\x1b[31mred.tif", os.fsdecode(b"Tile_r1-c2_\xe9.tif")):
        vid, _ = ledger.add_version(f"/w/S_001/{name}", size=1, mtime_ns=1, tile_name=name)
        ledger.record_result(vid, verdict=Verdict(VerdictKind.UNREADABLE, f"cannot read {name}"))
    ledger.close()
    text = status.format_text(status.summary(Config(state_dir=tmp_path)))
    assert "\x1b" not in text
    assert "\\x1b[31mred.tif" in text
    assert "Tile_r1-c2_\\xe9.tif" in text
    # The newline in the name is shown as \n: the name stays on one line.
    assert [ln for ln in text.splitlines() if "Tile_r1-c1_" in ln] == [
        ln for ln in text.splitlines() if "red.tif" in ln
    ]
