"""Screenshots of the web console's pages for the README, from the real service.

Writes a small synthetic wafer (``focuswatch.synth``: 6 sections of 4×4 tiles, a few
blurred, one empty) section by section into a temporary watch folder, runs the real
service on it (real MHFD scoring, ledger, policy, retake list, alert outbox with an
endpoint that refuses, and the web console on a free port of 127.0.0.1), then opens
each page in headless Chromium (``/usr/bin/chromium`` through ``/usr/bin/chromedriver``;
``make browser`` installs them) and saves a PNG per page.

Run: ``.venv/bin/python bench/screenshots.py --out docs/screens`` (``make screenshots``;
about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _judged import judged
from focuswatch import synth
from focuswatch.app import build_service
from focuswatch.config import AlertsConfig, Config, ScoringConfig, WatchConfig, WebConfig
from focuswatch.ledger import Ledger
from focuswatch.sdnotify import Notifier
from focuswatch.service import Service
from focuswatch.web import WebConsole

PAGES = ("now", "wafer", "wafer-score", "tile", "retakes", "alerts")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def _service(watch: Path, state: Path) -> Service:
    cfg = Config(
        state_dir=state,
        watch=WatchConfig(path=watch, quiet_s=0.2, observer="inotify", rescan_interval_s=3600.0),
        scoring=ScoringConfig(workers=1, patch_size=128),
        # An endpoint that refuses: the Alerts page then has something waiting.
        alerts=AlertsConfig(urls=["json://127.0.0.1:9/focuswatch"], retry_initial_s=600.0),
        web=WebConfig(host="127.0.0.1", port=0, token="screenshot-token-0123456789"),
    )
    return build_service(cfg, notifier=Notifier(env={}))


def _worst_tile(state: Path) -> int:
    led = Ledger.open(state, readonly=True)
    try:
        row = led.connection.execute(
            "SELECT v.id FROM versions v JOIN results r ON r.version_id = v.id "
            "WHERE r.verdict = 'out_of_focus' ORDER BY v.section_index DESC LIMIT 1"
        ).fetchone()
    finally:
        led.close()
    return int(row[0]) if row else 1


def _drive(svc: Service, want: int, *, deadline_s: float = 300.0) -> None:
    end = time.monotonic() + deadline_s
    while judged(svc) < want:
        if time.monotonic() > end:
            raise SystemExit(f"only {judged(svc)} of {want} tiles judged in {deadline_s} s")
        svc.turn(0.1)


def _browser(profile: Path, width: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=options)


def _shoot(driver: Any, url: str, out: Path, width: int) -> None:
    driver.get(url)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height + 20, 500), 2400))
    driver.get(url)
    driver.save_screenshot(str(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/screens"))
    ap.add_argument("--width", type=int, default=1440)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="focuswatch-screens-") as tmp:
        root = Path(tmp)
        staging, watch, state = root / "staging", root / "watch", root / "state"
        watch.mkdir()
        tiles = synth.write_wafer(
            staging,
            sections=6,
            rows=4,
            cols=4,
            size=256,
            blur_fraction=0.06,
            empty_tiles=1,
            drift=0.05,
            seed=3,
        )
        svc = _service(watch, state)
        svc.start()
        web = next(s for s in svc.sinks if isinstance(s, WebConsole))
        if web.url is None:
            print("the web console did not start (see the log)", file=sys.stderr)
            svc.stop()
            return 1
        try:
            sections = sorted(p for p in staging.iterdir() if p.is_dir())
            done = 0
            for i, folder in enumerate(sections):
                shutil.copytree(folder, watch / folder.name)
                done += sum(1 for t in tiles if Path(t.path).parent.name == folder.name)
                if i < len(sections) - 1:
                    _drive(svc, done)
            # The last section half judged: the Now page shows a backlog being cleared.
            _drive(svc, done - 8)
            driver = _browser(root / "profile", args.width)
            try:
                urls = {
                    "now": web.url,
                    "wafer": web.url + "wafer",
                    "wafer-score": web.url + "wafer?colour=score",
                    "tile": web.url + f"tile/{_worst_tile(state)}",
                    "retakes": web.url + "retakes",
                    "alerts": web.url + "alerts",
                }
                for name in PAGES:
                    if name == "wafer":
                        _drive(svc, done)
                    _shoot(driver, urls[name], args.out / f"{name}.png", args.width)
                    print(f"wrote {args.out / f'{name}.png'}")
            finally:
                driver.quit()
        finally:
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
