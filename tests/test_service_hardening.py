"""The service survives whatever it finds in the watch folder and faults of its state folder.

Each test runs the real service in-process (real watchdog observer, real SQLite, real
worker processes) on real files; scoring is ``pipeline_jobs.fake_score`` (the pipeline
is under test here, not MHFD).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from focuswatch import app, service, status
from focuswatch.app import build_service
from focuswatch.errors import ConfigError, StateError, TileError
from focuswatch.scoring import score_path
from focuswatch.sdnotify import Notifier
from focuswatch.statelock import StateLock
from focuswatch.verdict import VerdictKind
from pipeline_jobs import fake_score
from servicekit import MakeService, make_cfg, run_service, turn_until, write_tif
from test_cli import run_cli


def _bytes_path(folder: Path, name: bytes) -> str:
    """A file whose name is the raw bytes ``name`` (not necessarily UTF-8)."""
    raw = os.path.join(os.fsencode(folder), name)
    write_tif(Path(os.fsdecode(raw)))
    return os.fsdecode(raw)


def test_a_name_that_is_not_utf8_is_stored_losslessly_and_scored(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    odd = _bytes_path(watch / "S_001", b"Tile_r1-c3_\xe9.tif")
    svc, sink = make_service()
    later = write_tif(watch / "S_001" / "Tile_r1-c4_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 2)
    by_path = {r.path: r for r in sink.records}
    assert set(by_path) == {odd, str(later)}
    assert by_path[odd].verdict.kind is not VerdictKind.UNREADABLE
    # The path reads back as the very name on disk (it is what a retake overwrites).
    (version,) = svc.ledger.versions(odd)
    assert os.fsencode(version.path) == os.fsencode(odd)
    assert (version.placement.row, version.placement.col) == (1, 3)
    # People are shown an escaped name, never a surrogate that breaks their terminal.
    assert version.tile_name == "Tile_r1-c3_\\xe9.tif"


def test_a_restart_does_not_score_a_non_utf8_name_again(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    odd = _bytes_path(watch / "S_001", b"Tile_r2-c2_\xff\xfe.tif")
    svc, sink = make_service()
    turn_until(svc, lambda: len(sink.records) == 1)
    svc.stop(grace_s=0.5)
    again, sink2 = make_service()
    for _ in range(20):
        again.turn(0.02)
    assert sink2.records == []
    assert len(again.ledger.versions(odd)) == 1


@pytest.mark.parametrize(
    "name",
    [
        "S_001/Tile_r99999999999999999999-c1_S_001.tif",
        "S_001/Tile_r1-c99999999999999999999999.tif",
        "S_123456789012345678901234/Tile_r1-c1.tif",
    ],
)
def test_an_out_of_range_number_in_a_name_is_a_reason_not_a_crash(
    tmp_path: Path, make_service: MakeService, name: str
) -> None:
    watch = tmp_path / "watch"
    bad = write_tif(watch / name)
    svc, sink = make_service()
    good = write_tif(watch / "S_002" / "Tile_r1-c1_S_002.tif")
    turn_until(svc, lambda: len(sink.records) == 2)
    by_path = {r.path: r for r in sink.records}
    assert by_path[str(good)].verdict.kind is not VerdictKind.UNREADABLE
    assert by_path[str(bad)].verdict.kind is VerdictKind.UNREADABLE
    assert "out of range" in by_path[str(bad)].verdict.reason


def test_a_second_service_on_one_state_folder_refuses_and_names_the_holder(
    tmp_path: Path, make_service: MakeService
) -> None:
    """Its start-up recovery would put the first one's tiles in flight back to 'ready'."""
    watch = tmp_path / "watch"
    svc, sink = make_service()
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 1)
    with pytest.raises(
        StateError, match=rf"in use by another focuswatch service \(pid {os.getpid()}"
    ):
        build_service(make_cfg(tmp_path), builtin_sinks=False, score_fn=fake_score)
    # Read-only commands work beside it.
    assert status.summary(make_cfg(tmp_path))["counts"]["scored"] == 1
    # The first one is untouched and goes on.
    write_tif(watch / "S_001" / "Tile_r1-c2_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 2)
    # Once it stops, the folder is free again.
    svc.stop(grace_s=0.5)
    again = build_service(make_cfg(tmp_path), builtin_sinks=False, score_fn=fake_score)
    again.stop(grace_s=0.5)


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    """flock dies with its process: a SIGKILLed service leaves no stale lock."""
    state = tmp_path / "state"
    state.mkdir()
    code = (
        "import sys, time; from focuswatch.statelock import StateLock; "
        f"StateLock({str(state)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        _wait_locked_then_kill(proc, state)
    lock = StateLock(state)
    lock.acquire()
    assert lock.held
    lock.release()


def _wait_locked_then_kill(proc: subprocess.Popen[str], state: Path) -> None:
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StateError, match=f"pid {proc.pid} on"):
            StateLock(state).acquire()
    finally:
        proc.kill()
        proc.wait(10)


def _wait_for_line(log: Path, text: str, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.05)  # polling a file with a deadline
    raise AssertionError(f"no {text!r} in the log within {timeout_s} s:\n{log.read_text()}")


@pytest.mark.slow
def test_real_service_second_instance_exits_and_sighup_is_a_logged_stop(tmp_path: Path) -> None:
    watch, state = tmp_path / "watch", tmp_path / "state"
    watch.mkdir()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = run_service(watch, state, first_log)
    try:
        _wait_for_line(first_log, '"event": "started"')
        second = run_service(watch, state, second_log)
        assert second.wait(60) == 1
        assert f"in use by another focuswatch service (pid {first.pid}" in second_log.read_text()
        first.send_signal(signal.SIGHUP)
        assert first.wait(60) == 0
    finally:
        first.kill()
        first.wait(10)
    text = first_log.read_text()
    assert '"signal": "SIGHUP"' in text
    assert '"event": "stopped"' in text


def test_a_symlink_out_of_the_watch_folder_is_not_followed_and_logged_once(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    outside = write_tif(tmp_path / "elsewhere" / "secret.tif")
    (watch / "S_001").mkdir(parents=True)
    link = watch / "S_001" / "Tile_r1-c1_S_001.tif"
    link.symlink_to(outside)
    inside_link = watch / "S_001" / "Tile_r1-c2_S_001.tif"
    inside_link.symlink_to(write_tif(watch / "originals" / "real.tif"))
    with structlog.testing.capture_logs() as logs:
        svc, sink = make_service()
        turn_until(svc, lambda: len(sink.records) == 2)
        svc._start_rescan()  # a rescan finds the link again: no second log line
        assert svc._rescan_thread is not None
        svc._rescan_thread.join(10)
        for _ in range(20):
            svc.turn(0.02)
    assert {r.path for r in sink.records} == {str(inside_link), str(watch / "originals/real.tif")}
    assert svc.ledger.versions(str(link)) == []
    skipped = [e for e in logs if e["event"] == "symlink_outside_skipped"]
    assert [e["tile"] for e in skipped] == [str(link)]
    assert skipped[0]["target"] == str(outside)
    # A tile replaced by such a link after that check is refused where it is read.
    with pytest.raises(TileError, match="outside the watch folder"):
        score_path(str(link), svc.settings)


def test_following_links_out_of_the_watch_folder_is_a_choice(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    outside = write_tif(tmp_path / "elsewhere" / "tile.tif")
    (watch / "S_001").mkdir(parents=True)
    (watch / "S_001" / "Tile_r1-c1_S_001.tif").symlink_to(outside)
    cfg = make_cfg(tmp_path)
    cfg = dataclasses.replace(
        cfg, watch=dataclasses.replace(cfg.watch, follow_symlinks_outside=True)
    )
    svc, sink = make_service(cfg)
    turn_until(svc, lambda: len(sink.records) == 1)


@pytest.mark.parametrize("where", ["watch/state", "watch", "watch/S_001/../.state"])
def test_a_state_folder_inside_the_watch_folder_is_refused(tmp_path: Path, where: str) -> None:
    """The service would score its own thumbnails (with ``*.png`` included)."""
    cfg = dataclasses.replace(make_cfg(tmp_path), state_dir=tmp_path / where)
    with pytest.raises(ConfigError, match=r"at 'state_dir': the state folder .* is inside"):
        build_service(cfg, builtin_sinks=False, score_fn=fake_score)
    with pytest.raises(ConfigError, match="is inside the watch folder"):
        app.main(cfg)
    assert not (tmp_path / where / "focuswatch.db").exists()


@pytest.mark.slow
def test_a_damaged_ledger_stops_run_and_status_until_reset_is_asked_for(tmp_path: Path) -> None:
    watch, state = tmp_path / "watch", tmp_path / "state"
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    state.mkdir()
    (state / "focuswatch.db").write_bytes(b"")
    run = ("run", "--once", "--watch", str(watch), "--state", str(state))
    for args in (run, ("status", "--state", str(state))):
        done = run_cli(*args)
        assert done.returncode == 1, done.stderr
        assert "is damaged: the file is empty (0 bytes)" in done.stderr
        assert "--reset-ledger" in done.stderr
        assert "Traceback" not in done.stderr
    assert (state / "focuswatch.db").stat().st_size == 0
    done = run_cli(*run, "--reset-ledger")
    assert done.returncode == 0, done.stderr
    assert "ledger_reset" in done.stderr
    (aside,) = state.glob("focuswatch.db.damaged-*")
    assert aside.stat().st_size == 0
    assert status.summary(make_cfg(tmp_path))["counts"]["scored"] == 1
    # A healthy ledger is never reset.
    done = run_cli(*run, "--reset-ledger")
    assert done.returncode == 1
    assert "is healthy" in done.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny file system (tmpfs, 4 MiB) for the state folder, so it can fill up."""
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Write a ballast file until the file system is full (to the last byte: smaller and
    smaller writes). Unbuffered, so closing it has nothing left to write, and fail."""
    ballast = folder / "ballast"
    with ballast.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return ballast


def test_a_full_state_disk_holds_the_work_says_so_and_resumes_losing_nothing(
    tmp_path: Path,
    small_disk: Path,
    make_service: MakeService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "FAULT_RETRY_S", 0.1)
    watch = tmp_path / "watch"
    svc, sink = make_service()
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 1)
    ballast = _fill(small_disk)
    with structlog.testing.capture_logs() as logs:
        names = [watch / "S_001" / f"Tile_r2-c{c}_S_001_{'x' * 200}.tif" for c in range(1, 40)]
        # A name with a reason of its own: recorded with it, whenever the disk lets it.
        hostile = watch / "S_001" / f"Tile_r99999999999999999999-c1_S_001_{'x' * 200}.tif"
        names.append(hostile)
        for path in names:
            write_tif(path, value=len(str(path)))
        turn_until(svc, lambda: svc.fault is not None)
        for _ in range(30):  # it stays up while the disk is full
            svc.turn(0.02)
        assert svc.fault is not None
        assert "database or disk is full" in svc.fault
        # ``status`` beside it says what is going on (a minute later).
        later = status.summary(make_cfg(tmp_path), clock=lambda: time.time() + 120)
        assert f"running (pid {os.getpid()}" in status.format_text(later)
        assert "cannot write its state folder" in status.format_text(later)
        ballast.unlink()
        turn_until(svc, lambda: svc.fault is None and len(sink.records) == 41)
        svc._start_rescan()  # nothing that arrived meanwhile is missed, nothing doubled
        assert svc._rescan_thread is not None
        svc._rescan_thread.join(10)
        for _ in range(30):
            svc.turn(0.02)
    events = [e["event"] for e in logs]
    assert events.count("state_unwritable") == 1
    assert "state_writable_again" in events
    (said,) = [e for e in logs if e["event"] == "state_unwritable"]
    assert said["log_level"] == "error"
    assert "cannot write the ledger" in said["reason"]
    assert len(sink.records) == 41
    assert {r.path for r in sink.records} == {str(p) for p in names} | {
        str(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    }
    (said,) = [r for r in sink.records if r.path == str(hostile)]
    assert said.verdict.kind is VerdictKind.UNREADABLE
    assert "out of range" in said.verdict.reason
    counts = svc.ledger.counts()
    assert (counts["scored"], counts["failed"]) == (40, 1)
    assert counts["ready"] == counts["scoring"] == 0


def test_a_stop_while_the_state_disk_is_full_is_orderly(
    tmp_path: Path, small_disk: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    svc, sink = make_service()
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 1)
    _fill(small_disk)
    for c in range(1, 41):
        write_tif(watch / "S_001" / f"Tile_r3-c{c}_S_001_{'y' * 200}.tif")
    turn_until(svc, lambda: svc.fault is not None)
    with structlog.testing.capture_logs() as logs:
        svc.stop(grace_s=0.5)  # no exception
    assert svc.stopped
    assert "stopped_unwritable" in [e["event"] for e in logs]


def test_a_deleted_state_folder_is_detected_and_nothing_more_is_written(
    tmp_path: Path, make_service: MakeService
) -> None:
    watch = tmp_path / "watch"
    svc, sink = make_service()
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    turn_until(svc, lambda: len(sink.records) == 1)
    shutil.rmtree(tmp_path / "state")
    with structlog.testing.capture_logs() as logs:
        write_tif(watch / "S_001" / "Tile_r1-c2_S_001.tif")
        turn_until(svc, lambda: svc.fault is not None)
        for _ in range(20):
            svc.turn(0.02)
    assert svc.fault is not None
    assert "was deleted while the service was running" in svc.fault
    assert len(sink.records) == 1  # the second tile was not recorded into the deleted file
    assert [e["event"] for e in logs].count("state_unwritable") == 1
    # Nothing was silently re-created but the lock, so that a second service on the
    # emptied folder does not score the wafer again beside this one.
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["focuswatch.lock"]
    with pytest.raises(StateError, match="in use by another focuswatch service"):
        build_service(make_cfg(tmp_path), builtin_sinks=False, score_fn=fake_score)


OVERFLOW_CONFIG = """\
[watch]
observer = "inotify"
quiet_s = 0.2
rescan_interval_s = 3600.0
[scoring]
workers = 1
"""


@pytest.mark.slow
def test_an_inotify_queue_overflow_rescans_at_once_and_is_logged_as_an_event(
    tmp_path: Path,
) -> None:
    """A service stopped (SIGSTOP) while thousands of files arrive loses kernel events.

    The kernel queue holds ``fs.inotify.max_queued_events`` events (16384 by default,
    about three per file written); what overflows must be found by a rescan now, not
    at the next periodic one an hour later.
    """
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    n = limit // 2  # create + modify + close per file: well past the limit
    watch, state = tmp_path / "watch", tmp_path / "state"
    section = watch / "S_001"
    section.mkdir(parents=True)
    config = tmp_path / "fw.toml"
    config.write_text(OVERFLOW_CONFIG)
    log = tmp_path / "service.log"
    proc = run_service(watch, state, log, config=config)
    try:
        _wait_for_line(log, '"event": "started"')
        proc.send_signal(signal.SIGSTOP)
        for i in range(n):
            (section / f"Tile_r{i // 100 + 1}-c{i % 100 + 1}_S_001.tif").write_bytes(b"x")
        proc.send_signal(signal.SIGCONT)
        _wait_for_line(log, '"event": "watch_overflow"')
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _versions(state) < n:
            time.sleep(0.2)  # polling the ledger with a deadline
        assert _versions(state) == n
    finally:
        proc.kill()
        proc.wait(30)
    lines = log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), "a non-JSON line in the JSON log"
    assert any('"library": "watchdog.observers.inotify_c"' in line for line in lines)


def _versions(state: Path) -> int:
    with sqlite3.connect(f"{(state / 'focuswatch.db').as_uri()}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(DISTINCT path) FROM versions").fetchone()[0])


def test_a_full_state_disk_is_told_through_the_alert_endpoints_and_so_is_the_recovery(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox lives in the ledger that cannot be written: the news goes from memory."""
    from test_alerts import HookServer, free_port

    monkeypatch.setattr(service, "FAULT_RETRY_S", 0.1)
    hook = HookServer(free_port())
    hook.start()
    watch = tmp_path / "watch"
    base = make_cfg(tmp_path)
    cfg = dataclasses.replace(
        base,
        alerts=dataclasses.replace(
            base.alerts,
            urls=[f"json://127.0.0.1:{hook.port}/hook"],
            instance="sem-3",
            disk_min_free_mb=0,  # a 4 MiB disk is always "nearly full": not this test's news
        ),
    )
    svc = build_service(cfg, score_fn=fake_score, notifier=Notifier(env={}))
    try:
        svc.start()
        ballast = _fill(small_disk)
        for c in range(1, 41):
            write_tif(watch / "S_001" / f"Tile_r4-c{c}_S_001_{'z' * 200}.tif")
        turn_until(svc, lambda: svc.fault is not None)
        told = hook.posts.get(timeout=30)
        assert told["title"].startswith("[sem-3] focuswatch cannot write its state folder")
        assert told["type"] == "failure"
        assert "database or disk is full" in told["message"]
        ballast.unlink()
        turn_until(svc, lambda: svc.fault is None)
        again = hook.posts.get(timeout=30)
        assert again["title"].startswith("[sem-3] focuswatch can write its state folder again")
        assert again["type"] == "success"
    finally:
        svc.stop(grace_s=0.5)
        hook.stop()


@pytest.mark.slow
def test_a_service_started_on_a_full_state_disk_waits_instead_of_crash_looping(
    tmp_path: Path, small_disk: Path
) -> None:
    """Restarted by systemd onto the same full disk, an exit would only repeat; and a
    full disk is no damaged ledger: nothing may advise --reset-ledger for it."""
    watch = tmp_path / "watch"
    watch.mkdir()
    first = tmp_path / "first.log"
    proc = run_service(watch, small_disk, first)  # a ledger exists, cleanly stopped
    try:
        _wait_for_line(first, '"event": "started"')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait(10)
    ballast = _fill(small_disk)
    write_tif(watch / "S_001" / "Tile_r1-c1_S_001.tif")
    from test_alerts import HookServer, free_port

    hook = HookServer(free_port())
    hook.start()
    config = tmp_path / "fw.toml"
    config.write_text(
        f'[alerts]\nurls = ["json://127.0.0.1:{hook.port}/hook"]\ninstance = "sem-3"\n'
        "disk_min_free_mb = 0\n"  # a 4 MiB disk is always "nearly full": not this news
    )
    log = tmp_path / "second.log"
    proc = run_service(watch, small_disk, log, config=config)
    try:
        _wait_for_line(log, '"event": "state_unwritable"')
        assert proc.poll() is None  # up, waiting
        assert "damaged" not in log.read_text()
        told = hook.posts.get(timeout=30)  # no ledger yet, and still the operator is told
        assert (
            told["title"] == "[sem-3] focuswatch cannot start: its state folder cannot be written"
        )
        ballast.unlink()
        _wait_for_line(log, '"event": "tile_scored"')
        assert hook.posts.get(timeout=30)["title"].startswith("[sem-3] focuswatch started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait(10)
        hook.stop()
