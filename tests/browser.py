"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) for the web tests.

Started through ``/usr/bin/chromedriver`` given explicitly, so Selenium downloads
nothing; a fresh profile per test, no network beyond 127.0.0.1 (background
networking, component updates, sync and QUIC off). ``make test`` installs both
packages where they are missing; without them these tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 15.0

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def start_chromium(profile: str, *, width: int = 1280, height: int = 900) -> Any:
    """A Selenium driver for headless Chromium with a fresh ``--user-data-dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    return driver


def wait_for(what: str, done: Callable[[], Any], *, timeout: float = WAIT_S) -> Any:
    """Poll ``done`` until it returns something truthy (bounded; no sleep as a signal)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = done()
        except Exception as exc:  # the page is being swapped: look again
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (make test installs them)")
    pytest.importorskip("selenium")
    profile = tempfile.mkdtemp(prefix="focuswatch-chromium-")
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
