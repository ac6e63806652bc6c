"""The service in-process for tests: a recording sink, a small config, a started service.

``make_service`` is a fixture (re-exported by ``conftest``); the rest are helpers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from focuswatch.app import build_service
from focuswatch.config import Config, ScoringConfig, WatchConfig
from focuswatch.sdnotify import Notifier
from focuswatch.service import Service
from focuswatch.verdict import VerdictRecord
from pipeline_jobs import fake_score

MakeService = Callable[..., tuple[Service, "RecordingSink"]]


class RecordingSink:
    """A real sink that remembers what it was given."""

    def __init__(self) -> None:
        self.records: list[VerdictRecord] = []
        self.ticks = 0
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def on_verdict(self, record: VerdictRecord) -> None:
        self.records.append(record)

    def tick(self, now: float) -> None:
        self.ticks += 1

    def close(self) -> None:
        self.closed = True


def make_cfg(tmp_path: Path, *, observer: str = "inotify", **scoring: Any) -> Config:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    sc = {"tile_timeout_s": 1.0, "max_attempts": 2, "queue_size": 8, "workers": 1} | scoring
    return Config(
        state_dir=tmp_path / "state",
        watch=WatchConfig(
            path=watch,
            observer=observer,
            poll_interval_s=0.05,
            quiet_s=0.1,
            incomplete_timeout_s=30.0,
            rescan_interval_s=3600.0,
        ),
        scoring=ScoringConfig(**sc),
    )


def write_tif(path: Path, *, value: int = 0, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    tifffile.imwrite(path, rng.integers(0, 255, (size, size), dtype=np.uint8))
    return path


def turn_until(svc: Service, done: Callable[[], bool], *, turns: int = 600) -> None:
    for _ in range(turns):
        if done():
            return
        svc.turn(0.05)
    raise AssertionError("condition not reached within the turn budget")


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    made: list[Service] = []

    def make(
        cfg: Config | None = None,
        *,
        score_fn: Any = fake_score,
        watch: bool = True,
        notifier_env: dict[str, str] | None = None,
        builtin_sinks: bool = False,
        **kw: Any,
    ) -> tuple[Service, RecordingSink]:
        sink = RecordingSink()
        svc = build_service(
            cfg or make_cfg(tmp_path),
            sinks=[sink],
            builtin_sinks=builtin_sinks,
            score_fn=score_fn,
            notifier=Notifier(env=notifier_env or {}),
            **kw,
        )
        made.append(svc)
        svc.start(watch=watch)
        return svc, sink

    yield make
    for svc in made:
        svc.stop(grace_s=0.5)


def run_service(
    watch: Path, state: Path, log: Path, *, config: Path | None = None
) -> subprocess.Popen[bytes]:
    """``focuswatch run`` as its own process, JSON log lines (stdout and stderr) to ``log``."""
    extra = [] if config is None else ["--config", str(config)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "focuswatch",
                "run",
                "--watch",
                str(watch),
                "--state",
                str(state),
                "--log-format",
                "json",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
