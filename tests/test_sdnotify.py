"""sd_notify over a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from focuswatch.sdnotify import Notifier


@pytest.fixture
def sock() -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to ~108 bytes: use a short temporary folder.
    with tempfile.TemporaryDirectory(prefix="fw") as d:
        path = os.path.join(d, "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(5.0)
        try:
            yield s, path
        finally:
            s.close()


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_messages_arrive_as_datagrams(sock: tuple[socket.socket, str]) -> None:
    s, path = sock
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("watching /data")
    assert s.recv(4096) == b"READY=1\nSTATUS=watching /data"
    assert n.status("12 tiles waiting")
    assert s.recv(4096) == b"STATUS=12 tiles waiting"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"


def test_watchdog_is_rate_limited_to_half_the_period(sock: tuple[socket.socket, str]) -> None:
    s, path = sock
    clock = Clock()
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}, clock=clock)
    assert n.watchdog_interval_s == 2.0
    assert n.watchdog()
    assert not n.watchdog()
    clock.now = 2.0
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert s.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_address() -> None:
    name = f"focuswatch-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5.0)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()


def test_unreachable_socket_is_not_fatal() -> None:
    assert not Notifier(env={"NOTIFY_SOCKET": "/nonexistent/socket"}).ready()
