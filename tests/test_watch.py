"""Watching: patterns, observer choice, readiness, and real watchdog observers."""

from __future__ import annotations

import errno
import os
import queue
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from focuswatch.watch import (
    Change,
    Matcher,
    Readiness,
    Watcher,
    choose_observer,
    fstype_of,
    scan,
)

MATCHER = Matcher(
    include=["*.tif", "*.tiff"], exclude=["*thumb*", "*Thumb*", "*.tmp", "*.part", "*~", ".*"]
)

MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
//nas/em /mnt/em cifs rw 0 0
nas:/exp /mnt/em/nfs nfs4 rw 0 0
user@host:/d /mnt/ssh\\040share fuse.sshfs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Tile_r1-c1_S_000_1.tif", True),
        ("tile.TIFF", False),
        ("tile.tiff", True),
        ("Tile_r1-c1_thumb.tif", False),
        ("Tile.tif.tmp", False),
        (".hidden.tif", False),
        ("Tile.tif~", False),
        ("notes.txt", False),
        ("Tile r1 ü.tif", True),
    ],
)
def test_matcher_include_and_exclude(name: str, expected: bool) -> None:
    assert MATCHER.matches(f"/w/S_1/{name}") is expected


def test_matcher_needs_an_include_pattern() -> None:
    with pytest.raises(ValueError, match="include"):
        Matcher(include=[], exclude=[])


def test_fstype_uses_longest_mount_prefix() -> None:
    assert fstype_of("/mnt/em/S_1/t.tif", mounts=MOUNTS) == "cifs"
    assert fstype_of("/mnt/em/nfs/t.tif", mounts=MOUNTS) == "nfs4"
    assert fstype_of("/mnt/emx/t.tif", mounts=MOUNTS) == "ext4"
    assert fstype_of("/mnt/ssh share/t.tif", mounts=MOUNTS) == "fuse.sshfs"


def test_observer_is_polling_on_network_shares_and_overridable() -> None:
    assert choose_observer("/mnt/em/x", mounts=MOUNTS)[0] == "polling"
    assert choose_observer("/mnt/ssh share", mounts=MOUNTS)[0] == "polling"
    assert choose_observer("/home/x", mounts=MOUNTS)[0] == "inotify"
    assert choose_observer("/mnt/em/x", "inotify", mounts=MOUNTS)[0] == "inotify"
    assert choose_observer("/home/x", "polling", mounts=MOUNTS)[0] == "polling"
    with pytest.raises(ValueError, match="observer must be"):
        choose_observer("/x", "fanotify")


def test_scan_is_recursive_skips_hidden_and_survives_symlink_loops(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*[f"d{i}" for i in range(12)])
    deep.mkdir(parents=True)
    (deep / "deep tile ü.tif").write_bytes(b"x")
    (tmp_path / ".snap").mkdir()
    (tmp_path / ".snap" / "old.tif").write_bytes(b"x")
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "a_thumb.tif").write_bytes(b"x")
    (tmp_path / "d0" / "loop").symlink_to(tmp_path)  # folder loop: not followed
    (tmp_path / "self.tif").symlink_to(tmp_path / "self.tif")  # file loop: listed
    found = sorted(scan(tmp_path, MATCHER))
    assert found == sorted(
        [str(tmp_path / "a.tif"), str(deep / "deep tile ü.tif"), str(tmp_path / "self.tif")]
    )


def test_readiness_waits_for_quiet_period(tmp_path: Path) -> None:
    clock = FakeClock()
    r = Readiness(quiet_s=2.0, incomplete_timeout_s=100.0, clock=clock)
    f = tmp_path / "t.tif"
    f.write_bytes(b"abc")
    r.note(str(f))
    assert r.poll() == []
    clock.now = 1.0
    with f.open("ab") as fh:
        fh.write(b"more")
    os.utime(f, ns=(1, 5_000_000_000))
    assert r.poll() == []  # changed: the quiet period restarts
    clock.now = 2.5
    assert r.poll() == []
    clock.now = 3.0
    (got,) = r.poll()
    assert (got.kind, got.size) == ("ready", 7)
    assert len(r) == 0


def test_readiness_close_write_is_ready_at_once(tmp_path: Path) -> None:
    r = Readiness(quiet_s=60.0, incomplete_timeout_s=100.0, clock=FakeClock())
    f = tmp_path / "t.tif"
    f.write_bytes(b"abc")
    r.note(str(f))
    r.note(str(f), closed=True)
    assert [s.kind for s in r.poll()] == ["ready"]


def test_readiness_reports_incomplete_then_ready_after_next_change(tmp_path: Path) -> None:
    clock = FakeClock()
    r = Readiness(quiet_s=5.0, incomplete_timeout_s=10.0, clock=clock)
    f = tmp_path / "t.tif"
    f.write_bytes(b"a")
    r.note(str(f))
    for t in range(1, 11):  # written to every second, never quiet
        clock.now = float(t)
        os.utime(f, ns=(1, t * 1_000_000_000))
        got = r.poll()
    assert [(s.kind, "still being written" in s.reason) for s in got] == [("incomplete", True)]
    assert str(f) in r  # still watched: retried when it changes again
    clock.now = 16.0
    assert [s.kind for s in r.poll()] == ["ready"]


def test_readiness_vanished_and_symlink_loop_get_reasons(tmp_path: Path) -> None:
    r = Readiness(quiet_s=0.0, incomplete_timeout_s=10.0, clock=FakeClock())
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop)
    r.note(str(tmp_path / "gone.tif"))
    r.note(str(loop))
    got = {Path(s.path).name: s for s in r.poll()}
    assert got["gone.tif"].kind == "vanished"
    assert got["loop.tif"].kind == "error"
    assert "symlink loop" in got["loop.tif"].reason


def test_readiness_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        Readiness(quiet_s=-1, incomplete_timeout_s=1)


@pytest.fixture(params=["inotify", "polling"])
def watched(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, queue.Queue[Change], str]]:
    root = tmp_path / "watch"
    root.mkdir()
    changes: queue.Queue[Change] = queue.Queue()
    w = Watcher(root, changes, observer=request.param, poll_interval_s=0.05)
    w.start()
    try:
        yield root, changes, request.param
    finally:
        w.stop()
        assert not w.is_alive()


def wait_for(changes: queue.Queue[Change], path: Path, *, closed: bool | None = None) -> Change:
    deadline = 50
    for _ in range(deadline):
        c = changes.get(timeout=5.0)
        if c.path == str(path) and (closed is None or c.closed == closed):
            return c
    raise AssertionError(f"no change for {path}")


def test_real_observer_sees_write_rename_and_move_in(
    watched: tuple[Path, queue.Queue[Change], str], tmp_path: Path
) -> None:
    root, changes, kind = watched
    section = root / "S_001"
    section.mkdir()
    assert wait_for(changes, section).is_dir  # watched before files are written into it
    tile = section / "Tile r1 ü.tif"
    tile.write_bytes(b"data")
    c = wait_for(changes, tile, closed=True if kind == "inotify" else None)
    assert not c.is_dir
    tmp = section / "Tile_r1-c2.tif.tmp"
    tmp.write_bytes(b"data")
    tmp.rename(section / "Tile_r1-c2.tif")
    wait_for(changes, section / "Tile_r1-c2.tif")
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"data")
    shutil.move(outside, section / "moved_in.tif")
    wait_for(changes, section / "moved_in.tif")


class _NoInotifyLeft:
    """Stands in for an inotify observer at the per-user limit (cannot be set up here)."""

    def __init__(self) -> None:
        self.stopped = False

    def schedule(self, handler: object, path: str, *, recursive: bool) -> None:
        return None

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def stop(self) -> None:
        self.stopped = True


def test_inotify_at_its_limit_falls_back_to_a_real_polling_observer(tmp_path: Path) -> None:
    from focuswatch.watch import _make_observer

    made: list[object] = []

    def make(kind: str, poll_interval_s: float) -> object:
        obs = _NoInotifyLeft() if kind == "inotify" else _make_observer(kind, poll_interval_s)
        made.append(obs)
        return obs

    changes: queue.Queue[Change] = queue.Queue()
    w = Watcher(tmp_path, changes, observer="inotify", poll_interval_s=0.05, make_observer=make)
    w.start()
    try:
        assert w.kind == "polling"
        assert w.fallback is not None
        assert "inotify watch limit reached" in w.fallback
        failed = made[0]
        assert isinstance(failed, _NoInotifyLeft)
        assert failed.stopped
        assert w.is_alive()
        tile = tmp_path / "t.tif"
        tile.write_bytes(b"data")
        assert wait_for(changes, tile).path == str(tile)
    finally:
        w.stop()
    assert not w.is_alive()


def test_polling_that_cannot_start_is_not_hidden(tmp_path: Path) -> None:
    def make(kind: str, poll_interval_s: float) -> object:
        return _NoInotifyLeft()

    w = Watcher(tmp_path, queue.Queue(), observer="polling", make_observer=make)
    with pytest.raises(OSError, match="limit"):
        w.start()


def test_public_names() -> None:
    from focuswatch import watch

    assert sorted(watch.__all__) == [
        "Change",
        "Matcher",
        "NETWORK_FSTYPES",
        "Readiness",
        "Settled",
        "SettledKind",
        "Watcher",
        "choose_observer",
        "fstype_of",
        "scan",
    ]
