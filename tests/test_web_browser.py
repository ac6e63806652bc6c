"""What a person sees in a real headless Chromium: the real service and its web page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from browser import wait_for
from test_web import XSS, FixedClock, backlog_ledger, planted
from webkit import TOKEN, MakeConsole

pytestmark = pytest.mark.slow

VERMILLION = "rgb(213, 94, 0)"  # #D55E00: out of focus
GREEN = "rgb(0, 158, 115)"  # #009E73: in focus


def fill_of(driver: Any, name: str) -> str:
    """The colour the cell of tile ``name`` is painted in (read in the page, in one go)."""
    script = (
        "const c = document.querySelector(`rect.tile[data-name='${arguments[0]}']`);"
        "return c ? getComputedStyle(c).fill : null;"
    )
    return str(wait_for(f"the cell of {name}", lambda: driver.execute_script(script, name)))


def test_wafer_map_shows_the_planted_bad_tile_in_its_colour(
    console_service: MakeConsole, chromium: Any
) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url + "wafer")
    assert fill_of(chromium, "Tile_r1-c2_S_002_2_BLUR.tif") == VERMILLION
    assert fill_of(chromium, "Tile_r1-c2_S_001_1.tif") == GREEN
    sections = [
        s.get_attribute("data-section")
        for s in chromium.find_elements(By.CSS_SELECTOR, "figure.section")
    ]
    assert sections == ["001", "002"]
    bad = chromium.find_element(By.CSS_SELECTOR, 'figure.section[data-section="002"]')
    assert "1 to retake" in bad.text


def test_hostile_name_is_shown_as_text_and_runs_nothing(
    console_service: MakeConsole, chromium: Any
) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url + f"tile/{cs.version_id(XSS)}")
    assert chromium.find_element(By.ID, "tile-name").text == XSS
    assert chromium.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        chromium.switch_to.alert.text  # noqa: B018  (no alert() ran)
    chromium.get(cs.url + "wafer")
    cell = chromium.find_element(
        By.CSS_SELECTOR, 'figure[data-section="002"] rect.tile[data-row="2"][data-col="2"]'
    )
    assert cell.get_attribute("data-name") == XSS


def test_retake_list_updates_after_a_dismiss_from_the_page(
    console_service: MakeConsole, chromium: Any
) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url + "retakes")

    def dismiss() -> bool:  # again from the start if the page was refreshed meanwhile
        row = chromium.find_element(By.CSS_SELECTOR, "#retakes tbody tr[data-status='open']")
        assert "Tile_r1-c2_S_002_2_BLUR.tif" in row.text
        row.find_element(By.NAME, "note").send_keys("a wrinkle, not defocus")
        row.find_element(By.NAME, "who").send_keys("ana")
        row.find_element(By.NAME, "token").send_keys(TOKEN)
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        return True

    wait_for("the dismiss form sent", dismiss)
    message = wait_for(
        "the page says it was dismissed", lambda: chromium.find_element(By.ID, "message").text
    )
    assert message.startswith("dismissed entry")
    row = chromium.find_element(By.CSS_SELECTOR, "#retakes tbody tr")
    assert row.get_attribute("data-status") == "dismissed"
    assert "a wrinkle, not defocus" in row.text
    assert "dismissed by ana (web page)" in row.text
    # The change was made: the service's own retake file says so too.
    assert "dismissed" in (cs.state / "retakes.csv").read_text()


def test_a_wrong_token_is_refused_and_nothing_changes(
    console_service: MakeConsole, chromium: Any
) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url + "retakes")

    def send() -> bool:
        row = chromium.find_element(By.CSS_SELECTOR, "#retakes tbody tr")
        row.find_element(By.NAME, "note").send_keys("no")
        row.find_element(By.NAME, "token").send_keys("not-the-token-at-all")
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        return True

    wait_for("the form sent", send)
    wait_for(
        "the refusal", lambda: "wrong token" in chromium.find_element(By.ID, "error-message").text
    )
    chromium.get(cs.url + "retakes")
    row = chromium.find_element(By.CSS_SELECTOR, "#retakes tbody tr")
    assert row.get_attribute("data-status") == "open"


def test_pages_update_by_themselves_while_tiles_arrive(
    console_service: MakeConsole, chromium: Any
) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url + "wafer")
    wait_for(
        "the page polling",
        lambda: chromium.find_element(By.ID, "live").get_attribute("data-generation"),
    )
    assert chromium.find_elements(By.CSS_SELECTOR, 'figure.section[data-section="003"]') == []
    cs.write("S_003_3/Tile_r1-c1_S_003_3_BLUR.tif", value=9)
    cs.judge(8)
    wait_for(
        "section 003 on the map without a reload",
        lambda: chromium.find_elements(By.CSS_SELECTOR, 'figure.section[data-section="003"]'),
    )
    assert fill_of(chromium, "Tile_r1-c1_S_003_3_BLUR.tif") == VERMILLION


def test_now_page_says_healthy_at_the_top(console_service: MakeConsole, chromium: Any) -> None:
    cs, _ = planted(console_service)
    chromium.get(cs.url)  # this page is refreshed every poll: read it through wait_for

    def health() -> tuple[str, str]:
        found = chromium.find_element(By.ID, "health")
        return found.text, found.get_attribute("class") or ""

    text, classes = wait_for("the health line", health)
    assert text.startswith("healthy")
    assert "ok" in classes.split()
    assert (
        wait_for("the backlog", lambda: chromium.find_element(By.ID, "backlog").text) == "0 tiles"
    )


def test_the_stall_alarm_appears_on_the_now_page_and_clears_with_the_next_tile(
    console_service: MakeConsole, chromium: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The microscope stops writing with a section open: the Now page says so at the
    top, by itself; the next tile that arrives clears it, again without a reload."""
    from focuswatch import alerts

    monkeypatch.setattr(alerts, "HEALTH_EVERY_S", 0.2)  # look every turn, not every 10 s
    cs = console_service(alerts={"stall_minutes": 0.05})  # 3 s without a tile
    cs.write("S_001_1/Tile_r1-c1_S_001_1.tif")
    cs.judge(1)
    chromium.get(cs.url)

    def stall_shown() -> Any:
        cs.svc.turn(0.05)  # the service's own loop: it notices the stall
        found = chromium.find_elements(By.CSS_SELECTOR, '#alarms li[data-alarm="stall"]')
        return found[0].text if found else None

    shown = wait_for("the stall alarm on the Now page", stall_shown)
    assert shown.startswith("no new tile since ")
    assert shown.endswith("(has the microscope stopped?)")
    cs.write("S_001_1/Tile_r1-c2_S_001_1.tif", value=1)
    cs.judge(2)

    def stall_gone() -> bool:
        cs.svc.turn(0.05)
        return not chromium.find_elements(By.CSS_SELECTOR, '#alarms li[data-alarm="stall"]')

    assert wait_for("the stall alarm cleared", stall_gone)


def test_the_score_view_of_the_wafer_map_stays_while_tiles_arrive(
    console_service: MakeConsole, chromium: Any
) -> None:
    """Clicked to 'score against baseline': the blurred tile dark on cividis, the legend
    shown, and the page's own updates keep that view."""
    from focuswatch.web import svg

    cs, _ = planted(console_service)
    chromium.get(cs.url + "wafer")
    wait_for("the view link", lambda: chromium.find_element(By.ID, "by-score")).click()
    wait_for("the legend", lambda: chromium.find_element(By.ID, "ratio-legend"))
    wait_for(
        "the page polling",
        lambda: chromium.find_element(By.ID, "live").get_attribute("data-generation"),
    )

    def rgb(hex_colour: str) -> str:
        r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return f"rgb({r}, {g}, {b})"

    blurred = fill_of(chromium, "Tile_r1-c2_S_002_2_BLUR.tif")
    assert blurred not in (VERMILLION, GREEN)
    assert blurred == rgb(svg.ratio_colour(20 / 1000))
    cs.write("S_003_3/Tile_r1-c1_S_003_3_BLUR.tif", value=9)
    cs.judge(8)
    wait_for(
        "section 003 on the map without a reload",
        lambda: chromium.find_elements(By.CSS_SELECTOR, 'figure.section[data-section="003"]'),
    )
    assert chromium.find_elements(By.ID, "ratio-legend")
    assert fill_of(chromium, "Tile_r1-c1_S_003_3_BLUR.tif") != VERMILLION


def test_the_now_page_shows_the_backlog_and_the_time_to_clear_it(
    tmp_path: Path, chromium: Any
) -> None:
    from focuswatch.config import WebConfig
    from focuswatch.web import WebConsole

    clock = FixedClock(0.0)
    backlog_ledger(tmp_path, clock)
    console = WebConsole(WebConfig(host="127.0.0.1", port=0), tmp_path, clock=clock)
    console.start()
    try:
        chromium.get(console.url)
        assert chromium.find_element(By.ID, "backlog").text == "4 tiles"
        assert chromium.find_element(By.ID, "clear-in").text == "time to clear: about 3 min 20 s"
    finally:
        console.close()
