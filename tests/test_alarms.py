"""Alarms that last (focuswatch.alarms through the alert sink): told once to real HTTP
endpoints on 127.0.0.1, once more when over, and shown by the real web console while
they last. An injected clock makes the minutes pass; the ledger is real."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from focuswatch import alerts, status
from focuswatch.alarms import Episode
from focuswatch.config import Config, WebConfig
from focuswatch.ledger import Ledger
from focuswatch.web import WebConsole
from test_alerts import (
    BAD,
    GOOD,
    WAIT_S,
    Clock,
    HookServer,
    add_tile,
    cfg_for,
    drain,
    free_ports,
    judged,
)
from webkit import fetch


@contextlib.contextmanager
def hooks(n: int) -> Iterator[list[HookServer]]:
    servers = [HookServer(p) for p in free_ports(n)]
    for s in servers:
        s.start()
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


@contextlib.contextmanager
def console(cfg: Config, clock: Clock) -> Iterator[str]:
    """The real web console over the state folder, on a free port of 127.0.0.1."""
    web = WebConsole(WebConfig(port=0), cfg.state_dir, clock=clock)
    web.start()
    try:
        assert web.running
        yield web.url or ""
    finally:
        web.close()


def alarm_opts(**on: float) -> dict[str, Any]:
    """Every alarm off but those named (this test's clock jumps are not news to the rest)."""
    off = {"behind_minutes": 0.0, "endpoint_failing_minutes": 0.0, "scheduler_lost_minutes": 0.0}
    return off | on | {"thumbnail_px": 0, "instance": "fw", "section_idle_minutes": 600.0}


def titles(server: HookServer) -> list[str]:
    return [p["title"] for p in server.received()]


def beat(ledger: Ledger) -> None:
    """The heartbeat the service writes every few seconds (so only alarms make a 503)."""
    ledger.set_meta("heartbeat", ledger.clock())


def healthz(url: str) -> tuple[int, str]:
    code, _, body = fetch(url + "healthz")
    return code, body.decode()


def ticks(sink: alerts.AlertSink, clock: Clock, *, minutes: float, every_s: float = 30.0) -> None:
    end = clock.now + minutes * 60
    while clock.now < end:
        clock.now += every_s
        sink.tick(clock.now)


def test_an_episode_is_told_after_it_held_and_over_only_by_its_own_test() -> None:
    e = Episode()
    assert e.step(holds=True, over=False, now=0, hold_s=60) is None
    assert e.step(holds=False, over=True, now=30, hold_s=60) is None  # broken: starts again
    assert e.step(holds=True, over=False, now=40, hold_s=60) is None
    assert e.step(holds=True, over=False, now=100, hold_s=60) is True
    e.told = object()  # type: ignore[assignment]  # as the watch records it
    assert e.step(holds=False, over=False, now=110, hold_s=60) is None  # at its edge: lasts
    assert e.step(holds=False, over=True, now=120, hold_s=60) is False


def test_scoring_that_falls_behind_is_told_once_shown_while_it_lasts_and_when_caught_up(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with hooks(1) as (hook,):
        cfg = cfg_for(tmp_path, urls=[f"json://127.0.0.1:{hook.port}/h"], **alarm_opts(
            behind_minutes=15))  # fmt: skip
        ledger = Ledger.open(cfg.state_dir, clock=clock)
        waiting = [add_tile(ledger, "S_001", r, c) for r in range(1, 5) for c in range(1, 6)]
        sink = alerts.build_sink(cfg, ledger, clock=clock)
        sink.start()
        try:
            with console(cfg, clock) as url:
                ticks(sink, clock, minutes=14)  # nothing scored: 20 waiting, not 15 min yet
                assert sink.flush(WAIT_S)
                assert titles(hook) == []
                beat(ledger)
                assert healthz(url)[0] == 200
                ticks(sink, clock, minutes=2)
                ticks(sink, clock, minutes=5)  # still behind: told once
                assert sink.flush(WAIT_S)
                assert titles(hook) == ["[fw] focuswatch: scoring falls behind: 20 tiles waiting"]
                beat(ledger)
                code, body = healthz(url)
                assert code == 503
                assert "scoring falls behind: 20 tiles waiting, 0.0 scored/min" in body
                _, _, page = fetch(url)
                assert re.search(rb'<li class="alarm bad" data-alarm="behind">scoring falls', page)
                _, _, metrics = fetch(url + "metrics")
                assert b'focuswatch_alarm{name="behind"} 1.0' in metrics
                assert b'focuswatch_alarm{name="scheduler_lost"} 0.0' in metrics
                shown = status.format_text(status.summary(cfg))
                assert "ALARM behind: scoring falls behind: 20 tiles waiting" in shown
            # A restart while it lasts tells nothing again.
            sink.close()
            sink = alerts.build_sink(cfg, ledger, clock=clock)
            sink.start()
            ticks(sink, clock, minutes=1)
            for vid in waiting:  # the workers catch up
                ledger.record_result(vid, verdict=GOOD)
            ticks(sink, clock, minutes=3)
            assert sink.flush(WAIT_S)
            assert titles(hook) == ["[fw] focuswatch: scoring has caught up"]
            with console(cfg, clock) as url:
                beat(ledger)
                assert healthz(url)[0] == 200
        finally:
            sink.close()
            ledger.close()


def test_a_service_that_keeps_up_with_a_steady_stream_is_not_told(tmp_path: Path) -> None:
    """Two tiles a minute arrive, each scored a minute later: always something waiting
    (arrivals ahead of results by a tile or two), never behind."""
    clock = Clock()
    with hooks(1) as (hook,):
        cfg = cfg_for(tmp_path, urls=[f"json://127.0.0.1:{hook.port}/h"], **alarm_opts(
            behind_minutes=5))  # fmt: skip
        with contextlib.closing(Ledger.open(cfg.state_dir, clock=clock)) as ledger:
            sink = alerts.build_sink(cfg, ledger, clock=clock)
            sink.start()
            try:
                queue: list[int] = []
                for minute in range(40):
                    for col in (1, 2):
                        queue.append(add_tile(ledger, f"S_{minute:03d}", 1, col))
                    while len(queue) > 2:
                        ledger.record_result(queue.pop(0), verdict=GOOD)
                    ticks(sink, clock, minutes=1, every_s=20)
                assert sink.flush(WAIT_S)
            finally:
                sink.close()
        assert not [t for t in titles(hook) if "behind" in t]


def test_a_failing_endpoint_is_told_to_the_others_once_and_when_it_takes_alerts_again(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with hooks(2) as (down, up):
        down.statuses = [500] * 1000  # refuses every alert until the test says otherwise
        down_url, up_url = (f"json://127.0.0.1:{s.port}/{n}" for s, n in ((down, "d"), (up, "u")))
        cfg = cfg_for(
            tmp_path,
            urls=[down_url, up_url],
            retry_initial_s=5.0,
            retry_max_s=60.0,
            digest_minutes=0.0,
            **alarm_opts(endpoint_failing_minutes=15),
        )
        ledger = Ledger.open(cfg.state_dir, clock=clock)
        sink = alerts.build_sink(cfg, ledger, clock=clock)
        sink.start()
        try:
            vid = add_tile(ledger, "S_001", 1, 1)
            sink.on_verdict(judged(ledger, vid, BAD))
            assert sink.flush(WAIT_S)
            assert len(titles(up)) == 1  # the tile alert; the other endpoint refused it
            with console(cfg, clock) as url:
                for _ in range(16):  # it keeps failing, retried every minute at most
                    ticks(sink, clock, minutes=1)
                    assert sink.flush(WAIT_S)
                told = titles(up)
                assert told == [f"[fw] focuswatch: alert endpoint {down_url} fails"]
                ticks(sink, clock, minutes=3)
                assert sink.flush(WAIT_S)
                assert titles(up) == []  # once
                beat(ledger)
                code, body = healthz(url)
                assert code == 503
                assert f"alert endpoint {down_url} has taken no alert for 15 min" in body
                _, _, metrics = fetch(url + "metrics")
                assert b'focuswatch_alarm{name="endpoint_failing"} 1.0' in metrics
                down.statuses = []  # it answers again
                for _ in range(3):
                    ticks(sink, clock, minutes=1)
                    assert sink.flush(WAIT_S)
                back = f"[fw] focuswatch: alert endpoint {down_url} takes alerts again"
                assert titles(up) == [back]
                got = titles(down)
                assert back in got
                assert any("out of focus" in t for t in got)  # what waited for it
                beat(ledger)
                assert healthz(url)[0] == 200
            heard = [a["title"] for a in drain(down.arrivals)]
            assert not [t for t in heard if t.endswith(" fails")]  # never sent to itself
            # The message it was not sent is done, not waiting for it forever.
            (waiting,) = ledger.connection.execute(
                "SELECT count(*) FROM alert_outbox WHERE sent IS NULL"
            ).fetchone()
            assert waiting == 0
        finally:
            sink.close()
            ledger.close()


@pytest.mark.slow
def test_a_lost_dask_scheduler_is_told_once_it_stayed_away_and_when_it_is_back(
    tmp_path: Path,
) -> None:
    """A real scheduler in its own process, killed and started again on its port; the
    executor's description goes to the ledger as the service writes it."""
    from focuswatch.cluster import DaskExecutor
    from test_cluster import free_port, port_open, start_scheduler, stop, wait_for

    clock = Clock()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [start_scheduler(port)]
    ex: DaskExecutor | None = None
    with hooks(1) as (hook,):
        cfg = cfg_for(tmp_path, urls=[f"json://127.0.0.1:{hook.port}/h"], **alarm_opts(
            scheduler_lost_minutes=5))  # fmt: skip
        ledger = Ledger.open(cfg.state_dir, clock=clock)
        sink = alerts.build_sink(cfg, ledger, clock=clock)
        sink.start()

        def described(state: str) -> bool:
            assert ex is not None
            list(ex.outcomes(0.1))  # where the executor looks at its connection
            return bool(ex.describe()["state"] == state)

        try:
            wait_for(lambda: port_open(port), timeout=30, what="the scheduler to listen")
            ex = DaskExecutor(address, connect_timeout_s=1, on_unreachable="wait",
                              reconnect_max_s=0.5)  # fmt: skip
            ledger.set_meta("executor", ex.describe())
            ticks(sink, clock, minutes=10)
            stop(procs)
            procs.clear()
            wait_for(lambda: described("disconnected"), timeout=30, what="the loss")
            ledger.set_meta("executor", ex.describe())
            ticks(sink, clock, minutes=4)
            assert sink.flush(WAIT_S)
            assert titles(hook) == []  # not 5 min yet
            with console(cfg, clock) as url:
                ticks(sink, clock, minutes=2)
                assert sink.flush(WAIT_S)
                assert titles(hook) == [
                    f"[fw] focuswatch: the Dask scheduler at {address} is unreachable"
                ]
                beat(ledger)
                code, body = healthz(url)
                assert code == 503
                assert "nothing is scored" in body  # on_unreachable = "wait"
                _, _, metrics = fetch(url + "metrics")
                assert b'focuswatch_alarm{name="scheduler_lost"} 1.0' in metrics
            procs.append(start_scheduler(port))
            wait_for(lambda: described("connected"), timeout=60, what="the reconnection")
            ledger.set_meta("executor", ex.describe())
            ticks(sink, clock, minutes=1)
            assert sink.flush(WAIT_S)
            assert titles(hook) == [f"[fw] focuswatch: the Dask scheduler at {address} is back"]
        finally:
            if ex is not None:
                ex.close()
            stop(procs)
            sink.close()
            ledger.close()
