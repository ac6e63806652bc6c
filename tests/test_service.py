"""The service end to end, in-process: real observers, real SQLite, real worker processes.

Scoring is injected (``pipeline_jobs``: a fake score, or the real tile reader with a
simple score) so these tests exercise the pipeline, not MHFD.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import tifffile

from focuswatch import app
from focuswatch.app import build_service
from focuswatch.config import ClusterConfig, Config, ScoringConfig, WatchConfig
from focuswatch.errors import BackendError, ConfigError, StateError
from focuswatch.executor import Executor, Job, Outcome
from focuswatch.ledger import Ledger
from focuswatch.service import Service
from focuswatch.verdict import VerdictKind
from focuswatch.watch import Change
from focuswatch.worker import LocalExecutor
from pipeline_jobs import fake_score, read_score, read_score_unprivileged
from servicekit import RecordingSink, make_cfg, turn_until, write_tif

BURST = int(os.environ.get("FOCUSWATCH_BURST_TILES", "2000"))


def results_per_version(state: Path) -> dict[str, int]:
    led = Ledger.open(state, readonly=True)
    rows = led.connection.execute(
        "SELECT v.path, count(r.id) FROM versions v LEFT JOIN results r ON r.version_id = v.id "
        "WHERE v.superseded = 0 GROUP BY v.id"
    ).fetchall()
    led.close()
    return dict(rows)


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_tiles_written_renamed_and_moved_in_each_get_one_verdict(
    observer: str, tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    cfg = make_cfg(tmp_path, observer=observer)
    svc, sink = make_service(cfg)
    assert svc.observer_kind == observer
    root = Path(cfg.watch.path or "")
    sec = root / "S_001_17524"
    write_tif(sec / "Tile_r1-c1_S_001_17524.tif", value=1)
    tmp = write_tif(sec / "Tile_r1-c2_S_001_17524.tif.tmp", value=2)
    tmp.rename(sec / "Tile_r1-c2_S_001_17524.tif")
    outside = write_tif(tmp_path / "Tile_r2-c1_S_001_17524.tif", value=3)
    shutil.move(outside, sec / "Tile_r2-c1_S_001_17524.tif")
    write_tif(sec / "Tile_r1-c1_thumb.tif", value=4)  # excluded
    turn_until(svc, lambda: len(sink.records) >= 3)
    names = sorted(r.tile_name for r in sink.records)
    assert names == [
        "Tile_r1-c1_S_001_17524.tif",
        "Tile_r1-c2_S_001_17524.tif",
        "Tile_r2-c1_S_001_17524.tif",
    ]
    rec = next(r for r in sink.records if r.tile_name.startswith("Tile_r1-c2"))
    assert (rec.section, rec.placement.row, rec.placement.col) == ("001", 1, 2)
    # The first tile was alone when judged (uncertain); its peers revised it.
    assert all(svc.ledger.result(r.version_id)["verdict"] == "in_focus" for r in sink.records)


def test_duplicate_events_and_rescans_never_give_a_second_result(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    svc, sink = make_service()
    root = Path(svc.root)
    paths = [write_tif(root / "S_002" / f"Tile_r0-c{i}_S_002.tif", value=i) for i in range(4)]
    turn_until(svc, lambda: len(sink.records) >= 4)
    for p in paths:  # a storm of repeated events for the same files
        for closed in (False, True, True):
            svc.changes.put(Change(str(p), closed=closed))
    svc.rescan_now()
    turn_until(svc, lambda: svc.idle() and svc.changes.empty(), turns=200)
    for _ in range(5):
        svc.turn(0.02)
    assert len(sink.records) == 4
    assert set(results_per_version(tmp_path / "state").values()) == {1}


def test_overwritten_tile_is_a_new_version_that_supersedes_the_old(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    svc, sink = make_service()
    p = write_tif(Path(svc.root) / "S_003" / "Tile_r0-c0_S_003.tif", value=1)
    turn_until(svc, lambda: len(sink.records) == 1)
    write_tif(p, value=2, size=48)  # retake under the same name
    turn_until(svc, lambda: len(sink.records) == 2)
    versions = svc.ledger.versions(str(p))
    assert [v.superseded for v in versions] == [True, False]
    assert [v.state for v in versions] == ["scored", "scored"]
    assert sink.records[1].version_id == versions[1].id


def test_crashing_and_hanging_tiles_are_retried_then_failed_and_the_rest_scored(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    svc, sink = make_service(make_cfg(tmp_path, workers=2))
    sec = Path(svc.root) / "S_004"
    for name in ["a_CRASH.tif", "b_HANG.tif", "c_ONCE.tif", "d_ok.tif", "e_EXIT.tif"]:
        write_tif(sec / name)
    turn_until(svc, lambda: len(sink.records) == 5, turns=2000)
    by = {r.tile_name: r for r in sink.records}
    for name in ("d_ok.tif", "c_ONCE.tif"):  # c_ONCE: the second attempt worked
        # Judged against each other (the first of the two, alone, was revised).
        assert svc.ledger.result(by[name].version_id)["verdict"] == "in_focus"
    for name, why in [
        ("a_CRASH.tif", "SIGKILL"),
        ("b_HANG.tif", "longer than"),
        ("e_EXIT.tif", "exit code 3"),
    ]:
        assert by[name].verdict.kind is VerdictKind.UNREADABLE
        assert "gave up after 2 attempts" in by[name].verdict.reason
        assert why in by[name].verdict.reason
        v = svc.ledger.get(by[name].version_id)
        assert (v.state, v.attempts) == ("failed", 2)


def test_a_score_from_another_scorer_revision_is_never_recorded(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """A worker running an older release (a Dask worker not yet upgraded) returns
    revision-1 numbers: they are not judged against this wafer's revision-2 history but
    retried, and the tile is then unreadable with the reason; the other tile is judged."""
    svc, sink = make_service(make_cfg(tmp_path, workers=1))
    sec = Path(svc.root) / "S_004"
    for name in ["a_OLDREL.tif", "d_ok.tif"]:
        write_tif(sec / name)
    turn_until(svc, lambda: len(sink.records) == 2, turns=2000)
    by = {r.tile_name: r for r in sink.records}
    old = by["a_OLDREL.tif"]
    assert old.verdict.kind is VerdictKind.UNREADABLE
    assert "gave up after 2 attempts" in old.verdict.reason
    assert "scored by revision 1 of the mhfd 'fast' scorer" in old.verdict.reason
    assert "upgrade that worker" in old.verdict.reason
    assert svc.ledger.result(old.version_id)["score"] is None
    assert by["d_ok.tif"].verdict.kind is not VerdictKind.UNREADABLE


def test_bad_inputs_each_get_a_recorded_reason_and_a_log_event(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    root = tmp_path / "watch"
    deep = root.joinpath(*[f"level {i} ü" for i in range(10)])
    deep.mkdir(parents=True)
    (root / "zero.tif").write_bytes(b"")
    write_tif(root / "truncated.tif", size=128)
    data = (root / "truncated.tif").read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) // 2])
    (root / "not a tiff.tif").write_text("hello, I am a text file")
    tifffile.imwrite(root / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(root / "float.tif", np.random.default_rng(0).random((32, 32)).astype("f4"))
    tifffile.imwrite(
        root / "multipage.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack"
    )
    tifffile.imwrite(root / "one_by_n.tif", np.zeros((1, 64), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # tifffile warns that 0x0 is nonconformant: that's the point
        tifffile.imwrite(root / "zero_by_zero.tif", np.zeros((0, 0), np.uint8))
    (root / "loop.tif").symlink_to(root / "loop.tif")
    write_tif(root / "Tile r1 ünïcode.tif")
    write_tif(deep / "deep.tif")
    write_tif(root / "vanishes.tif")
    expected = {
        "zero.tif": "zero-byte",
        "truncated.tif": "truncated",
        "not a tiff.tif": "not a TIFF",
        "one_by_n.tif": "too small",
        "zero_by_zero.tif": "empty",
        "loop.tif": "symlink loop",
    }
    fine = {"rgb.tif", "float.tif", "multipage.tif", "Tile r1 ünïcode.tif", "deep.tif"}
    with structlog.testing.capture_logs() as logs:
        svc, sink = make_service(score_fn=read_score, watch=False)
        (root / "vanishes.tif").unlink()  # noticed by the scan, gone before it is read
        turn_until(svc, lambda: len(sink.records) == len(expected) + len(fine))
    by = {r.tile_name: r for r in sink.records}
    for name, why in expected.items():
        assert by[name].verdict.kind is VerdictKind.UNREADABLE, name
        assert why in by[name].verdict.reason, (name, by[name].verdict.reason)
    for name in fine:
        assert by[name].verdict.kind is not VerdictKind.UNREADABLE, (name, by[name].verdict)
    events = {(e["event"], Path(e.get("tile", "")).name) for e in logs}
    for name in expected:
        assert ("tile_failed", name) in events
    for name in fine:
        assert ("tile_scored", name) in events
    assert ("tile_vanished", "vanishes.tif") in events
    assert "vanishes.tif" not in by


def test_permission_denied_is_recorded(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """The file's own mode is the cause: its folder is open to everyone (a readable
    sibling is scored), only the file itself is chmod 000. chmod 000 does not stop root,
    so the worker drops to 'nobody' first when run as root."""
    # pytest's base temp folder is 0700, which would deny 'nobody' at the parent folder;
    # the watched tree lives in a 0755 folder of its own under /tmp (1777) instead.
    with tempfile.TemporaryDirectory(prefix="focuswatch-perm-") as tree:
        root = Path(tree)
        root.chmod(0o755)
        secret = write_tif(root / "S_001" / "secret.tif")
        (root / "S_001").chmod(0o755)
        readable = write_tif(root / "S_001" / "readable.tif", value=1)
        readable.chmod(0o644)
        secret.chmod(0)
        base = make_cfg(tmp_path)
        cfg = dataclasses.replace(base, watch=dataclasses.replace(base.watch, path=root))
        svc, sink = make_service(cfg, score_fn=read_score_unprivileged, watch=False)
        turn_until(svc, lambda: len(sink.records) == 2)
        by = {r.path: r for r in sink.records}
        assert by[str(readable)].verdict.kind is not VerdictKind.UNREADABLE
        denied = by[str(secret)].verdict
        assert denied.kind is VerdictKind.UNREADABLE
        assert "permission denied" in denied.reason.lower()
        svc.stop(grace_s=0.5)


def test_stop_hands_in_flight_work_back_to_ready(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    cfg = dataclasses.replace(
        make_cfg(tmp_path), scoring=ScoringConfig(tile_timeout_s=60.0, workers=1)
    )
    svc, sink = make_service(cfg, watch=False)
    write_tif(Path(svc.root) / "HANG.tif")
    svc.rescan_now()
    turn_until(svc, lambda: svc.ledger.counts()["scoring"] == 1)
    (vid,) = svc._submitted
    svc.stop(grace_s=0.2)
    assert sink.closed
    led = Ledger.open(tmp_path / "state")
    v = led.get(vid)
    assert (v.state, v.attempts) == ("ready", 0)


def test_versions_left_scoring_by_a_crash_are_scored_once_at_restart(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    cfg = make_cfg(tmp_path)
    p = write_tif(Path(cfg.watch.path or "") / "t.tif")
    st = p.stat()
    led = Ledger.open(cfg.state_dir)
    vid, _ = led.add_version(str(p), size=st.st_size, mtime_ns=st.st_mtime_ns, tile_name="t.tif")
    led.claim_ready(1)  # as if the service died while scoring it
    led.close()
    svc, sink = make_service(cfg, watch=False)
    turn_until(svc, lambda: len(sink.records) == 1)
    assert sink.records[0].version_id == vid
    assert results_per_version(cfg.state_dir) == {str(p): 1}


class CountingExecutor:
    """Wraps the real local executor and remembers the most jobs ever in flight."""

    def __init__(self, inner: LocalExecutor) -> None:
        self.inner = inner
        self.max_in_flight = 0
        self.submitted: list[int] = []

    def submit(self, job: Job) -> None:
        self.inner.submit(job)
        self.submitted.append(job.version_id)
        self.max_in_flight = max(self.max_in_flight, self.inner.in_flight())

    def outcomes(self, timeout: float) -> Iterator[Outcome]:
        return self.inner.outcomes(timeout)

    def in_flight(self) -> int:
        return self.inner.in_flight()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_burst_of_tiles_all_scored_once_with_bounded_in_flight(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """BURST tiles (env FOCUSWATCH_BURST_TILES, default 2000) dropped into a watched folder."""
    cfg = make_cfg(tmp_path, queue_size=16, workers=2)
    ex = CountingExecutor(LocalExecutor(workers=2, queue_size=16, score_fn=fake_score))
    executor: Executor = ex
    svc, sink = make_service(cfg, executor=executor)
    root = Path(svc.root)
    for s in range(BURST // 500 + 1):
        (root / f"S_{s:03d}").mkdir()
    for i in range(BURST):
        (root / f"S_{i // 500:03d}" / f"Tile_r{i // 50}-c{i % 50}.tif").write_bytes(b"x" * (i % 13))
    turn_until(svc, lambda: len(sink.records) == BURST, turns=BURST * 20)
    assert ex.max_in_flight <= 16
    assert len(ex.submitted) == len(set(ex.submitted)) == BURST
    assert len({r.version_id for r in sink.records}) == BURST
    assert set(results_per_version(tmp_path / "state").values()) == {1}


def test_sd_notify_ready_after_scan_and_stopping(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="fw") as d:
        addr = os.path.join(d, "n")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(addr)
        s.settimeout(5.0)
        try:
            svc, _ = make_service(notifier_env={"NOTIFY_SOCKET": addr})
            assert s.recv(4096).startswith(b"READY=1")
            svc.turn(0.01)
            assert s.recv(4096) == b"WATCHDOG=1"
            svc.stop(grace_s=0.1)
            assert s.recv(4096).startswith(b"STOPPING=1")
        finally:
            s.close()


def test_run_until_stops_on_event_and_once_mode_drains(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    for i in range(3):
        write_tif(Path(cfg.watch.path or "") / f"t{i}.tif", value=i)
    sink = RecordingSink()
    svc = build_service(cfg, sinks=[sink], builtin_sinks=False, score_fn=fake_score)
    svc.run_until(threading.Event(), once=True)
    assert len(sink.records) == 3
    assert svc.stopped
    stop = threading.Event()
    svc2 = build_service(cfg, sinks=[], builtin_sinks=False, score_fn=fake_score)
    t = threading.Thread(target=svc2.run_until, args=(stop,))
    t.start()
    stop.set()
    t.join(30.0)
    assert not t.is_alive()


def test_sigterm_handler_only_sets_stop_and_the_loop_logs_the_request(tmp_path: Path) -> None:
    """Logging inside a signal handler can deadlock on the logger's lock: it must not."""
    stop = threading.Event()
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, app._stop_on_signal(stop, received))
    try:
        with structlog.testing.capture_logs() as in_handler:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(5.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert in_handler == []
    assert received == [signal.SIGTERM]
    svc = build_service(make_cfg(tmp_path), builtin_sinks=False, score_fn=fake_score)
    with structlog.testing.capture_logs() as logs:
        svc.run_until(stop, why=lambda: {"signal": signal.Signals(received[0]).name})
    (said,) = [e for e in logs if e["event"] == "stop_requested"]
    assert said["signal"] == "SIGTERM"
    assert svc.stopped


def open_ledger_fds(state: Path) -> int:
    """File descriptors of this process open on the ledger's database file."""
    db = str(state / "focuswatch.db")
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == db
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_start_that_fails_half_way_stops_the_observer_and_closes_the_ledger(
    tmp_path: Path,
) -> None:
    """The observer is running when the executor cannot be had (no Dask scheduler)."""
    base = make_cfg(tmp_path)
    cfg = dataclasses.replace(
        base,
        cluster=ClusterConfig(
            scheduler="dask",
            address=f"tcp://127.0.0.1:{free_port()}",
            on_unreachable="wait",
            connect_timeout_s=0.2,
        ),
    )
    svc = build_service(cfg, builtin_sinks=False, score_fn=fake_score)
    assert open_ledger_fds(cfg.state_dir) == 1
    with pytest.raises(BackendError, match="cannot reach the Dask scheduler"):
        svc.run_until(threading.Event())
    assert svc.stopped
    watcher = svc._watcher
    assert watcher is not None
    assert not watcher.is_alive()
    assert open_ledger_fds(cfg.state_dir) == 0


def test_a_service_that_cannot_be_built_does_not_leak_its_ledger(tmp_path: Path) -> None:
    base = make_cfg(tmp_path)
    cfg = dataclasses.replace(
        base,
        policy=dataclasses.replace(base.policy, calibration=tmp_path / "missing.json"),
    )
    with pytest.raises(ConfigError, match=r"policy\.calibration"):
        build_service(cfg, builtin_sinks=False, score_fn=fake_score)
    assert (cfg.state_dir / "focuswatch.db").exists()  # it was opened ...
    assert open_ledger_fds(cfg.state_dir) == 0  # ... and closed again


def test_main_reports_missing_or_unusable_folders_clearly(tmp_path: Path) -> None:
    cfg = Config(state_dir=tmp_path / "state", watch=WatchConfig(path=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        app.main(cfg)
    with pytest.raises(ConfigError, match="required"):
        app.main(Config(state_dir=tmp_path / "s"))
    (tmp_path / "w").mkdir()
    (tmp_path / "blocker").write_text("x")
    cfg = Config(state_dir=tmp_path / "blocker" / "state", watch=WatchConfig(path=tmp_path / "w"))
    with pytest.raises(StateError, match="cannot create state folder"):
        app.main(cfg)


def test_state_changes_are_logged_with_tile_context(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    with structlog.testing.capture_logs() as logs:
        svc, sink = make_service(watch=False)
        write_tif(Path(svc.root) / "S_007" / "Tile_r3-c4_S_007.tif")
        svc.rescan_now()
        turn_until(svc, lambda: len(sink.records) == 1)
    ready = next(e for e in logs if e["event"] == "tile_ready")
    scored = next(e for e in logs if e["event"] == "tile_scored")
    for e in (ready, scored):
        assert e["tile"].endswith("Tile_r3-c4_S_007.tif")
        assert (e["section"], e["row"], e["col"]) == ("007", 3, 4)
    assert scored["verdict"] == "uncertain"  # the first tile: nothing to compare with


def test_file_still_changing_after_the_timeout_is_unreadable_then_rescored_when_done(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    base = make_cfg(tmp_path, observer="polling")
    cfg = dataclasses.replace(
        base, watch=dataclasses.replace(base.watch, quiet_s=0.5, incomplete_timeout_s=1.0)
    )
    p = write_tif(Path(cfg.watch.path or "") / "slow writer.tif")
    svc, sink = make_service(cfg, watch=False)
    tick = 0

    def keep_writing() -> bool:
        nonlocal tick
        tick += 1
        os.utime(p, ns=(tick * 10**9, tick * 10**9))  # the writer is still at it
        return len(sink.records) == 1

    turn_until(svc, keep_writing)
    first = sink.records[0]
    assert first.verdict.kind is VerdictKind.UNREADABLE
    assert "still being written after 1 s" in first.verdict.reason
    # The writer finishes: the file changes once more, settles, and is scored.
    turn_until(svc, lambda: len(sink.records) == 2)
    assert sink.records[1].verdict.kind is VerdictKind.UNCERTAIN  # scored, nothing to compare
    assert svc.ledger.get(first.version_id).superseded


def test_writer_stopping_right_before_the_incomplete_timeout_still_gets_its_file_scored(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """The last write lands within quiet_s of the timeout and nothing changes after it.

    The file is reported incomplete with the (size, mtime) it keeps when it then settles:
    the finished file must still be scored once, as a version of its own.
    """
    base = make_cfg(tmp_path, observer="polling")
    cfg = dataclasses.replace(
        base, watch=dataclasses.replace(base.watch, quiet_s=0.5, incomplete_timeout_s=1.0)
    )
    p = write_tif(Path(cfg.watch.path or "") / "stops in time.tif")
    svc, sink = make_service(cfg, watch=False)
    tick = 0

    def write_until_reported() -> bool:
        nonlocal tick
        if sink.records:
            return True  # the writer stops here: no change after the incomplete report
        tick += 1
        os.utime(p, ns=(tick * 10**9, tick * 10**9))
        return False

    turn_until(svc, write_until_reported)
    first = sink.records[0]
    assert "still being written" in first.verdict.reason
    final = p.stat()
    turn_until(svc, lambda: len(sink.records) == 2)
    second = sink.records[1]
    assert second.verdict.kind is VerdictKind.UNCERTAIN  # scored, nothing to compare with
    assert second.version_id != first.version_id
    v = svc.ledger.get(second.version_id)
    assert (v.size, v.mtime_ns, v.superseded) == (final.st_size, final.st_mtime_ns, False)
    assert svc.ledger.get(first.version_id).superseded
    # Settled and scored: a rescan finds nothing new to do.
    svc.rescan_now()
    turn_until(svc, lambda: svc._rescan_thread is not None)
    rescan = svc._rescan_thread
    assert rescan is not None
    rescan.join(5.0)
    turn_until(svc, svc.idle)
    assert len(sink.records) == 2


def gpu_usable() -> bool:
    from focuswatch.backend import get_backend
    from focuswatch.errors import BackendError

    try:
        get_backend("gpu")
    except BackendError:
        return False
    return True


def test_run_on_the_gpu_without_one_fails_at_start_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any tile is touched, not one unreadable verdict per tile."""
    if gpu_usable():
        pytest.skip("this machine has a usable GPU")
    from focuswatch import cli

    watch = tmp_path / "watch"
    write_tif(watch / "a.tif")
    state = tmp_path / "state"
    argv = ["run", "--watch", str(watch), "--state", str(state), "--backend", "gpu", "--once"]
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1, err
    assert err.startswith("focuswatch run: scoring.backend = 'gpu' but this machine cannot")
    assert "Traceback" not in err
    assert not (state / "focuswatch.db").exists()  # refused before any tile was recorded


def test_reconciliation_scan_finds_files_the_observer_missed(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """No observer at all here: only the rescan can find the file (as after a queue overflow)."""
    svc, sink = make_service(watch=False)
    write_tif(Path(svc.root) / "S_009" / "missed.tif")
    for _ in range(10):
        svc.turn(0.01)
    assert sink.records == []
    svc.rescan_now()
    turn_until(svc, lambda: len(sink.records) == 1)
    assert sink.records[0].tile_name == "missed.tif"


def test_a_rescan_queues_only_files_that_differ_from_the_ledger(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """Memory stays bounded by what changed: a rescan of a scored tree queues nothing."""
    root = tmp_path / "watch"
    tiles = [write_tif(root / "S_001" / f"t{i}.tif", value=i) for i in range(5)]
    svc, sink = make_service(watch=False)
    turn_until(svc, lambda: len(sink.records) == 5)

    def rescan() -> int:
        svc._start_rescan()
        thread = svc._rescan_thread
        assert thread is not None
        thread.join(10.0)
        return svc.changes.qsize()

    assert rescan() == 0
    write_tif(tiles[2], value=99, size=48)  # rewritten while unobserved
    assert rescan() == 1
    assert svc.changes.get_nowait().path == str(tiles[2])


def _serial_wafer(out: Path, sections: range) -> None:
    """Real tiles (synthetic tissue, shot noise), 2×2 positions; r1-c1 blurred in S_002."""
    from focuswatch import synth

    plan = synth.wafer_plan(
        sections=4, rows=2, cols=2, blur_fraction=0.0, seed=5, out=out, size=384
    )
    plan = [
        dataclasses.replace(t, defocus_sigma=3.0)
        if (t.section, t.row, t.col) == ("002", 1, 1)
        else t
        for t in plan
    ]
    for s in sections:
        synth.write_section([t for t in plan if int(t.section) == s], size=384, dose=30.0, seed=5)


def _final_kinds(svc: Service) -> dict[tuple[str | None, int | None, int | None], str]:
    rows = svc.ledger.connection.execute(
        "SELECT v.section, v.row, v.col, r.verdict FROM versions v JOIN results r "
        "ON r.version_id = v.id WHERE v.superseded = 0"
    ).fetchall()
    return {(s, r, c): k for s, r, c, k in rows}


def test_a_wafer_fed_section_by_section_and_in_a_burst_gets_the_same_verdicts(
    tmp_path: Path, make_service: Callable[..., tuple[Service, RecordingSink]]
) -> None:
    """Issue 10 item 5, end to end with MHFD: sections written one after another, and the
    same wafer with its first sections written last, scored by two workers."""
    kinds = []
    for name, batches in (
        ("by-section", [range(s, s + 1) for s in range(4)]),
        ("burst", [range(2, 4), range(0, 2)]),
    ):
        (tmp_path / name).mkdir()
        base = make_cfg(tmp_path / name, workers=2, patch_size=128, backend="cpu")
        cfg = dataclasses.replace(base, state_dir=tmp_path / name / "state")
        root = Path(cfg.watch.path or "")
        svc, _ = make_service(cfg, score_fn=None, watch=False)
        done = 0
        for batch in batches:
            _serial_wafer(root, batch)
            done += 4 * len(batch)
            svc.rescan_now()
            turn_until(svc, lambda s=svc, n=done: len(_final_kinds(s)) == n, turns=2000)
        kinds.append(_final_kinds(svc))
    assert kinds[0] == kinds[1]
    assert kinds[0]["002", 1, 1] == "out_of_focus"
    assert sum(k == "out_of_focus" for k in kinds[0].values()) == 1
