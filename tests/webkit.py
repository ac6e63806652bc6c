"""The real service with its web console, for the web tests.

``console_service`` (a fixture, re-exported by ``conftest``) starts the service
in-process with its built-in sinks (alerts, retake list, web console on a free port
of 127.0.0.1), a scoring function that marks tiles with ``BLUR`` in their name as
feature-poor, and an alert endpoint that refuses connections (so alerts wait in the
outbox, and its URL holds a password that must never be shown).
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from focuswatch.app import build_service
from focuswatch.choices import DEFAULT_MODE, scorer_revision
from focuswatch.config import AlertsConfig, Config, WebConfig
from focuswatch.ledger import Ledger
from focuswatch.scoring import ScoreSettings, TileScore
from focuswatch.sdnotify import Notifier
from focuswatch.service import Service
from focuswatch.web import WebConsole
from servicekit import make_cfg, turn_until, write_tif

TOKEN = "test-token-0123456789abcdef"
SECRET = "S3cretPassw0rdXYZ"
# A port nothing listens on: delivery fails, alerts stay waiting with the error.
ALERT_URL = f"json://operator:{SECRET}@127.0.0.1:9/hook"


def web_score(path: str, settings: ScoreSettings) -> TileScore:
    """1000 features (a 3x3 focus map), or 20 for a tile whose name says ``BLUR``."""
    blurred = "BLUR" in os.path.basename(path)
    base = 20.0 if blurred else 1000.0
    patches = [[base * (0.9 + 0.05 * (r + c)) for c in range(3)] for r in range(3)]
    return TileScore(
        revision=scorer_revision("mhfd", DEFAULT_MODE),
        path=path,
        score=base,
        patch_scores=patches,
        content=0.5,
        backend="fake",
        shape=(32, 32),
        dtype="uint8",
        read_ms=0.0,
        score_ms=12.0,
        meta=None,
    )


@dataclass
class ConsoleService:
    svc: Service
    web: WebConsole
    root: Path
    state: Path

    @property
    def url(self) -> str:
        return self.web.url or ""

    def write(self, relative: str, *, value: int = 0) -> Path:
        return write_tif(self.root / relative, value=value)

    def verdicts(self) -> dict[str, str]:
        """tile name → verdict, as committed in the ledger."""
        led = Ledger.open(self.state, readonly=True)
        try:
            rows = led.connection.execute(
                "SELECT v.tile_name, r.verdict FROM versions v JOIN results r "
                "ON r.version_id = v.id WHERE v.superseded = 0"
            ).fetchall()
        finally:
            led.close()
        return {str(n): str(v) for n, v in rows}

    def judge(self, n: int) -> dict[str, str]:
        """Turn the service until ``n`` tiles have verdicts."""
        turn_until(self.svc, lambda: len(self.verdicts()) >= n)
        return self.verdicts()

    def version_id(self, name: str) -> int:
        led = Ledger.open(self.state, readonly=True)
        try:
            row = led.connection.execute(
                "SELECT id FROM versions WHERE tile_name = ? AND superseded = 0", (name,)
            ).fetchone()
        finally:
            led.close()
        return int(row[0])


def fetch(
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with urllib: (status, headers, body); errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, _lower(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers), exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def fetch_json(url: str) -> Any:
    status, _, body = fetch(url)
    assert status == 200, body
    return json.loads(body)


MakeConsole = Callable[..., ConsoleService]


@pytest.fixture
def console_service(tmp_path: Path) -> Iterator[MakeConsole]:
    made: list[Service] = []

    def make(
        *, token: str | None = TOKEN, alerts: dict[str, Any] | None = None, **web: Any
    ) -> ConsoleService:
        base = make_cfg(tmp_path)
        alert_opts = {
            "urls": [ALERT_URL],
            "retry_initial_s": 30.0,
            "digest_minutes": 0.0,
            "disk_min_free_mb": 0.0,  # the machine's free space is not under test here
        } | (alerts or {})
        cfg: Config = dataclasses.replace(
            base,
            alerts=AlertsConfig(**alert_opts),
            web=WebConfig(host="127.0.0.1", port=0, token=token, **web),
        )
        svc = build_service(cfg, score_fn=web_score, notifier=Notifier(env={}))
        made.append(svc)
        svc.start()
        console = next(s for s in svc.sinks if isinstance(s, WebConsole))
        assert console.running, "the web console did not start"
        return ConsoleService(
            svc=svc, web=console, root=Path(cfg.watch.path or ""), state=cfg.state_dir
        )

    yield make
    for svc in made:
        svc.stop(grace_s=0.5)


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}
