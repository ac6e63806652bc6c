"""The web console over HTTP (urllib): the real service, the real server on 127.0.0.1.

The browser tests (what a person sees) are in ``test_web_browser.py``.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.parse
from pathlib import Path

import pytest
import structlog

from focuswatch import config
from focuswatch.config import WebConfig
from focuswatch.errors import ConfigError
from focuswatch.ledger import Ledger
from focuswatch.web import WebConsole
from focuswatch.web.server import bind
from webkit import SECRET, TOKEN, MakeConsole, fetch, fetch_json

XSS = "Tile_r2-c2_<script>alert(1)<img src=x onerror=alert(2)>.tif"


def planted(make: MakeConsole, **kw: object) -> tuple[object, dict[str, str]]:
    """Section 001 all in focus, then section 002 with r1-c2 blurred and a hostile name."""
    cs = make(**kw)
    for r, c in ((1, 1), (1, 2), (2, 1), (2, 2)):
        cs.write(f"S_001_1/Tile_r{r}-c{c}_S_001_1.tif", value=r * 10 + c)
    cs.judge(4)
    cs.write("S_002_2/Tile_r1-c1_S_002_2.tif", value=1)
    cs.write("S_002_2/Tile_r1-c2_S_002_2_BLUR.tif", value=2)
    cs.write(f"S_002_2/{XSS}", value=3)
    return cs, cs.judge(7)


def test_planted_tile_is_out_of_focus_and_the_wafer_map_colours_it(
    console_service: MakeConsole,
) -> None:
    cs, verdicts = planted(console_service)
    assert verdicts["Tile_r1-c2_S_002_2_BLUR.tif"] == "out_of_focus"
    status, _, body = fetch(cs.url + "wafer")
    assert status == 200
    html = body.decode()
    cell = re.search(r'<rect class="tile"[^>]*data-name="Tile_r1-c2_S_002_2_BLUR.tif"[^>]*>', html)
    assert cell is not None
    assert 'fill="#D55E00"' in cell.group()
    assert 'data-verdict="out_of_focus"' in cell.group()
    # Sections in order, each with its progress.
    assert html.index('data-section="001"') < html.index('data-section="002"')
    assert "1 to retake" in html


def test_the_wafer_map_colours_by_score_against_baseline_and_counts_the_expected_tiles(
    console_service: MakeConsole,
) -> None:
    """The second view: each tile on cividis by score / baseline, with its legend; each
    section's progress against the positions the section before it had."""
    from focuswatch.web import svg

    cs, _ = planted(console_service)
    _, _, body = fetch(cs.url + "wafer?colour=score")
    html = body.decode()
    assert 'id="ratio-legend"' in html
    assert "no baseline yet" in html
    blurred = re.search(
        r'<rect class="tile"[^>]*data-name="Tile_r1-c2_S_002_2_BLUR.tif"[^>]*>', html
    )
    sharp = re.search(r'<rect class="tile"[^>]*data-name="Tile_r1-c1_S_002_2.tif"[^>]*>', html)
    assert blurred is not None
    assert sharp is not None
    ratio = float(re.search(r'data-ratio="([0-9.]+)"', blurred.group()).group(1))  # type: ignore[union-attr]
    assert ratio < 0.1  # 20 features against a baseline of about 1000
    assert f'fill="{svg.ratio_colour(ratio)}"' in blurred.group()
    assert f'fill="{svg.cividis(0.0)}"' not in sharp.group()  # a sharp tile is not dark blue
    # The verdict view stays the default, and each view links the other.
    _, _, default = fetch(cs.url + "wafer")
    assert 'id="by-score"' in default.decode()
    assert 'id="by-verdict"' in html
    # S_001 had 4 positions: S_002's 3 tiles are 3 of 4; S_001 has nothing before it.
    assert re.search(r'data-section="002".*?3 of 4 tiles seen', html, re.S)
    assert re.search(r'data-section="001".*?<span class="progress">4 tiles seen', html, re.S)


def test_expected_tiles_are_the_positions_of_the_section_before() -> None:
    from focuswatch.web.data import expected_from_previous

    def section(*cells: tuple[int, int]) -> dict[str, object]:
        return {"cells": {cell: {} for cell in cells}}

    full = section((1, 1), (1, 2), (2, 1), (2, 2))
    part = section((1, 1))
    assert expected_from_previous([full, part, full, section()]) == [None, 4, 1, 4]


def test_the_console_reads_tiles_by_arrival_through_an_index(tmp_path: Path) -> None:
    """The Now page and /metrics ask for arrivals at every poll: not a scan of every
    tile version a long acquisition recorded."""
    led = Ledger.open(tmp_path)
    try:
        for sql in (
            "SELECT count(*) FROM versions WHERE first_seen >= 0",
            "SELECT tile_name, first_seen FROM versions ORDER BY first_seen DESC LIMIT 1",
        ):
            plan = " ".join(str(r[-1]) for r in led.connection.execute("EXPLAIN QUERY PLAN " + sql))
            assert "versions_by_first_seen" in plan, (sql, plan)
    finally:
        led.close()


def test_hostile_tile_name_is_escaped_on_every_page(console_service: MakeConsole) -> None:
    cs, _ = planted(console_service)
    vid = cs.version_id(XSS)
    for page in ("", "wafer", f"tile/{vid}", "retakes", "alerts"):
        status, _, body = fetch(cs.url + page)
        assert status == 200, page
        assert b"<script>alert" not in body, page
        assert b"<img src=x" not in body, page
    _, _, tile = fetch(cs.url + f"tile/{vid}")
    assert b"&lt;script&gt;alert(1)&lt;img src=x onerror=alert(2)&gt;.tif" in tile


def test_now_page_and_healthz_say_healthy_with_a_fresh_heartbeat(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    status, _, body = fetch(cs.url + "healthz")
    assert status == 200, body
    assert body.startswith(b"healthy"), body
    status, _, body = fetch(cs.url)
    html = body.decode()
    assert status == 200
    assert re.search(r'<p id="health" class="health ok">healthy', html)
    assert "Tiles per minute" in html
    assert "Backlog" in html
    assert "local time" in html
    assert "local" in html  # the executor's backend as the service described it
    assert "time to clear: nothing waiting" in html
    assert "built-in" not in html
    assert '<p class="sub">array library: fake</p>' in html  # what the results were scored with


def test_now_line_warns_when_no_tile_arrived_for_half_an_hour(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    led = Ledger.open(cs.state)
    try:
        led.connection.execute("UPDATE versions SET first_seen = first_seen - 3600")
    finally:
        led.close()
    status, _, body = fetch(cs.url + "healthz")
    assert status == 200
    assert b"healthy, but no new tile for 1 h" in body
    assert b"has the microscope stopped?" in body


def test_healthz_is_503_with_the_reason_when_the_heartbeat_is_old(
    console_service: MakeConsole,
) -> None:
    cs = console_service()
    led = Ledger.open(cs.state)
    try:
        led.connection.execute("UPDATE meta SET updated = updated - 600 WHERE key = 'heartbeat'")
    finally:
        led.close()
    status, _, body = fetch(cs.url + "healthz")
    assert status == 503
    assert b"no heartbeat for 10 min" in body
    gen = fetch_json(cs.url + "api/generation")
    assert gen["healthy"] is False
    assert "no heartbeat" in gen["health"]


def test_metrics_are_prometheus_text_from_the_ledger_without_secrets(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    status, headers, body = fetch(cs.url + "metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'focuswatch_tiles{verdict="out_of_focus"} 1.0' in text
    assert re.search(r'focuswatch_tiles\{verdict="in_focus"\} [5-6]\.0', text)
    assert "focuswatch_backlog_tiles 0.0" in text
    assert 'focuswatch_scoring_seconds_bucket{le="0.025"}' not in text
    assert 'focuswatch_scoring_seconds_bucket{le="0.1"} 7.0' in text
    assert "focuswatch_scoring_seconds_count 7.0" in text
    (total,) = re.findall(r"focuswatch_scoring_seconds_sum (\S+)", text)
    assert float(total) == pytest.approx(7 * 0.012)  # web_score's 12 ms each
    assert "focuswatch_newest_tile_age_seconds" in text
    assert "focuswatch_alerts_waiting" in text
    assert SECRET not in text
    assert "focuswatch_alert_deliveries_waiting{endpoint=" in text
    for name in ("stall", "disk_low", "behind", "endpoint_failing", "scheduler_lost"):
        assert f'focuswatch_alarm{{name="{name}"}} 0.0' in text


def test_metrics_and_the_alerts_page_count_each_endpoints_failed_tries_and_the_scheduler_link(
    console_service: MakeConsole,
) -> None:
    """The refusing endpoint's failed tries, per endpoint (redacted); the Dask
    scheduler's link as the executor last reported it (NaN off a cluster)."""
    cs, _ = planted(console_service)
    failed = re.compile(r'^focuswatch_alert_delivery_failures\{endpoint="([^"]*)"\} (\S+)$', re.M)
    deadline = time.monotonic() + 20.0
    while True:
        text = fetch(cs.url + "metrics")[2].decode()
        found = failed.findall(text)
        if found and float(found[0][1]) >= 1:
            break
        assert time.monotonic() < deadline, f"no failed try counted: {found}"
        cs.svc.turn(0.1)
    ((endpoint, _),) = found
    assert re.search(r'<td class="failures">[1-9]\d*</td>', fetch(cs.url + "alerts")[2].decode())
    assert endpoint.startswith("json://")
    assert SECRET not in text
    assert "focuswatch_scheduler_connected NaN" in text
    led = Ledger.open(cs.state)
    try:
        for state, shown in (("reconnecting", "0.0"), ("connected", "1.0")):
            led.set_meta("executor", {"backend": "dask", "workers": 2, "state": state})
            deadline = time.monotonic() + 10.0
            while f"focuswatch_scheduler_connected {shown}" not in text:
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
                text = fetch(cs.url + "metrics")[2].decode()
    finally:
        led.close()


def test_alerts_page_shows_waiting_alerts_and_never_the_destination(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    status, _, body = fetch(cs.url + "alerts")
    assert status == 200
    assert b"Waiting (" in body
    assert b'<table id="endpoints">' in body  # per endpoint, with its last error
    endpoint = re.search(rb'<table id="endpoints">.*?<code>(json://[^<]*)</code>', body, re.S)
    assert endpoint is not None  # the endpoint named, redacted (checked below)
    assert b"out of focus" in body.lower()
    # Each alert says to which endpoint it went or waits: here the refusing one, waiting.
    to = re.findall(rb'<span class="delivery" data-sent="(yes|no)"><code>([^<]*)</code>', body)
    assert to
    assert {name for _, name in to} == {endpoint.group(1)}
    assert {sent for sent, _ in to} == {b"no"}
    for page in ("", "alerts", "metrics", "api/generation", "retakes.json", "retakes.csv"):
        _, _, body = fetch(cs.url + page)
        assert SECRET.encode() not in body, page


def test_unknown_pages_tiles_and_vanished_files_are_404_pages(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    for page in ("nothing-here", "tile/999999", "tile/999999/thumb.png", "tile/abc"):
        status, headers, body = fetch(cs.url + page)
        assert status == 404, page
        assert headers["content-type"].startswith("text/html"), page
        assert b"Not found" in body
    vid = cs.version_id("Tile_r1-c1_S_002_2.tif")
    for image in ("thumb.png", "crop.png"):  # thumbnail, worst patch at full resolution
        status, headers, png = fetch(cs.url + f"tile/{vid}/{image}")
        assert status == 200
        assert headers["content-type"] == "image/png"
        assert png.startswith(b"\x89PNG")
    (cs.root / "S_002_2" / "Tile_r1-c1_S_002_2.tif").unlink()
    status, _, body = fetch(cs.url + f"tile/{vid}")
    assert status == 200
    assert b"no longer on disk" in body
    for image in ("thumb.png", "crop.png"):
        status, _, body = fetch(cs.url + f"tile/{vid}/{image}")
        assert status == 404
        assert b"not on disk any more" in body
    # Only versions the ledger knows: no path, no traversal.
    status, _, _ = fetch(cs.url + "tile/..%2F..%2Fetc%2Fpasswd")
    assert status == 404
    status, _, _ = fetch(cs.url + "static/..%2F..%2Fconfig.py")
    assert status == 404


def test_tile_page_shows_focus_map_history_and_reason(console_service: MakeConsole) -> None:
    cs, _ = planted(console_service)
    vid = cs.version_id("Tile_r1-c2_S_002_2_BLUR.tif")
    status, _, body = fetch(cs.url + f"tile/{vid}")
    html = body.decode()
    assert status == 200
    # The 3x3 focus map, and the same map laid over the thumbnail, the worst patch
    # (web_score's r0 c0) outlined on both.
    overlay = re.search(r'<svg id="focus-overlay".*?</svg>', html, re.S)
    assert overlay is not None
    assert f'<image href="/tile/{vid}/thumb.png"' in overlay.group()
    assert overlay.group().count('<rect class="patch"') == 9
    assert html.count("<title>patch r") == 18
    assert html.count('<rect class="worst" x="1" y="1"') == 2
    assert 'class="baseline"' in html  # the history plot with its baseline
    assert "section 001: score 1,000" in html
    assert "section 002: score 20" in html
    assert "below" in html  # the verdict's reason
    assert "S_002_2/Tile_r1-c2_S_002_2_BLUR.tif" in html


def test_a_multisem_beam_has_its_history_and_its_cell_on_the_map(
    console_service: MakeConsole,
) -> None:
    """No row or column in a MultiSEM name: the beam's position (mFoV, beam) is the key
    of its history on the tile page, and its cell on the wafer map (mFoV × beam)."""
    cs = console_service()
    for scan, section in ((1, 1), (2, 2)):
        for beam in (1, 2):
            blur = "BLUR" if (section, beam) == (2, 2) else ""
            cs.write(f"{scan:03d}_S{section}R1/000003/{scan:03d}_000003_{beam:03d}_2026{blur}.tif")
    cs.judge(4)
    vid = cs.version_id("002_000003_002_2026BLUR.tif")
    status, _, body = fetch(cs.url + f"tile/{vid}")
    html = body.decode()
    assert status == 200
    assert "mFoV 3, beam 2" in html
    assert html.count('class="baseline"') == 1  # the plot of this beam's history
    assert "score 1,000" in html  # its first section, where it was sharp
    status, _, body = fetch(cs.url + "wafer")
    assert status == 200
    assert body.decode().count(f'href="/tile/{vid}"') == 1


def _retake_id(cs: object, url: str) -> int:
    items = fetch_json(url + "retakes.json")["entries"]
    (entry,) = [e for e in items if "BLUR" in e["tile_name"]]
    return int(entry["id"])


def _session(url: str) -> tuple[str, str]:
    """(cookie, csrf) as a browser gets them from the retake page."""
    status, headers, body = fetch(url + "retakes")
    assert status == 200
    cookie = headers["set-cookie"].split(";", 1)[0]
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', body.decode())
    assert found is not None
    return cookie, found.group(1)


def _post(url: str, path: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, bytes]:
    data = urllib.parse.urlencode(form).encode()
    status, _, body = fetch(url + path, data=data, headers=headers)
    return status, body


def test_dismiss_and_reopen_need_the_token_same_origin_and_the_session_token(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    url = cs.url
    entry = _retake_id(cs, url)
    cookie, csrf = _session(url)
    origin = url.rstrip("/")
    good = {"Cookie": cookie, "Origin": origin}
    form = {"csrf": csrf, "token": TOKEN, "note": "wrinkle, fine", "who": "ana"}
    path = f"retakes/{entry}/dismiss"
    refusals = [
        ({**form, "token": "wrong-token-0123456789"}, good, b"wrong token"),
        ({**form, "csrf": "0" * 64}, good, b"stale"),
        (form, {"Cookie": cookie, "Origin": "http://evil.example"}, b"did not come from"),
        (form, {"Cookie": cookie}, b"did not come from"),  # neither Origin nor Referer
        (form, {"Origin": origin}, b"stale"),  # no session cookie
    ]
    for bad_form, headers, why in refusals:
        status, body = _post(url, path, bad_form, headers)
        assert status == 403, (headers, why)
        assert why in body, (headers, why)
    assert fetch_json(url + "retakes.json")["entries"][0]["status"] == "open"
    status, body = _post(url, path, {**form, "note": " "}, good)
    assert status == 400
    assert b"note" in body
    back = {**form, "back": "section=002&status=to_do&message=hello"}
    status, _, _ = fetch(
        url + path,
        data=urllib.parse.urlencode(back).encode(),
        headers={"Cookie": cookie, "Referer": url + "retakes"},
    )
    assert status == 303
    (item,) = fetch_json(url + "retakes.json")["entries"]
    assert item["status"] == "dismissed"
    assert item["note"] == "wrinkle, fine"
    assert item["history"][-1]["who"] == "ana (web page)"
    assert item["history"][-1]["action"] == "dismissed"
    assert (cs.state / "retakes.csv").read_text().count("dismissed") == 1
    status, _ = _post(url, f"retakes/{entry}/reopen", {**form, "note": "look again"}, good)
    assert status == 303
    (item,) = fetch_json(url + "retakes.json")["entries"]
    assert item["status"] == "open"
    assert item["note"].startswith("look again")
    status, _ = _post(url, "retakes/424242/dismiss", form, good)
    assert status == 404


def test_without_a_token_the_page_is_read_only(console_service: MakeConsole) -> None:
    cs, _ = planted(console_service, token=None)
    entry = _retake_id(cs, cs.url)
    status, _, body = fetch(cs.url + "retakes")
    assert b'<form method="post"' not in body
    assert b"Read-only" in body
    status, body = _post(
        cs.url, f"retakes/{entry}/dismiss", {"note": "x", "token": "x"}, {"Origin": cs.url}
    )
    assert status == 403
    assert b"Changes are off" in body


def test_the_list_after_a_change_keeps_its_filters_and_says_only_what_happened(
    console_service: MakeConsole,
) -> None:
    cs, _ = planted(console_service)
    entry = _retake_id(cs, cs.url)
    cookie, csrf = _session(cs.url)
    form = {"csrf": csrf, "token": TOKEN, "note": "ok", "back": "section=2&message=<b>x</b>"}
    data = urllib.parse.urlencode(form).encode()
    headers = {"Cookie": cookie, "Origin": cs.url.rstrip("/")}
    status, answer, _ = fetch(cs.url + f"retakes/{entry}/dismiss", data=data, headers=headers)
    assert status == 303
    assert answer["location"] == f"/retakes?section=2&done=dismissed&entry={entry}"
    _, _, body = fetch(cs.url + answer["location"].lstrip("/"))
    assert f"dismissed entry {entry}".encode() in body
    _, _, body = fetch(cs.url + "retakes?message=%3Cb%3Ex%3C%2Fb%3E&done=pwned&entry=1")
    assert b'id="message"' not in body  # no text from the URL as a message


def test_retake_list_filters_and_downloads(console_service: MakeConsole) -> None:
    cs, _ = planted(console_service)
    status, headers, body = fetch(cs.url + "retakes.csv?section=2&status=to_do")
    assert status == 200
    assert headers["content-type"].startswith("text/csv")
    assert b"Tile_r1-c2_S_002_2_BLUR.tif" in body
    status, _, body = fetch(cs.url + "retakes.csv?section=1")
    assert b"BLUR" not in body
    status, _, body = fetch(cs.url + "retakes?status=dismissed")
    assert b"BLUR" not in body
    assert b"Nothing to retake with these filters" in body


def test_generation_changes_when_a_verdict_is_committed(console_service: MakeConsole) -> None:
    """Within the second it is kept for (bounded here: 10 s)."""
    cs = console_service()
    before = fetch_json(cs.url + "api/generation")["generation"]
    cs.write("S_001_1/Tile_r1-c1_S_001_1.tif")
    cs.judge(1)
    deadline = time.monotonic() + 10.0
    while fetch_json(cs.url + "api/generation")["generation"] == before:
        assert time.monotonic() < deadline, "the generation did not move"
        time.sleep(0.1)


def test_a_port_in_use_is_one_log_line_and_the_service_goes_on(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    Ledger.open(tmp_path / "state").close()
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with structlog.testing.capture_logs() as logs:
            console = WebConsole(WebConfig(port=port), tmp_path / "state")
            assert not logs  # built, not started: nothing bound yet
            console.start()
        assert not console.running
        assert console.url is None
        (line,) = [e for e in logs if e["event"] == "web_unavailable"]
        assert line["reason"] == "the port is already in use"
        assert line["port"] == port
        console.close()  # harmless
    finally:
        taken.close()


def test_web_config_keys_are_checked_and_the_token_is_never_described() -> None:
    cfg = config.parse({"web": {"port": 9000, "host": "0.0.0.0", "token": TOKEN}})
    assert cfg.web == WebConfig(enabled=True, host="0.0.0.0", port=9000, token=TOKEN)
    assert TOKEN not in config.describe(cfg)
    with pytest.raises(ConfigError) as err:
        config.parse({"web": {"port": 0, "token": "short", "host": " ", "x": 1}})
    text = str(err.value)
    for key in ("web.port", "web.token", "web.host", "web.x"):
        assert f"at '{key}'" in text
    with pytest.raises(ConfigError, match=r"at 'web\.allowed_hosts'"):
        config.parse({"web": {"allowed_hosts": ["acq-pc.lab", "http://x/"]}})


def raw_get(port: int, host: str | None, path: str = "/api/generation") -> tuple[int, bytes]:
    """One request written by hand, with this Host header (None: an HTTP/1.0 request
    without one, which HTTP/1.0 allows)."""
    version = "1.1" if host is not None else "1.0"
    head = f"GET {path} HTTP/{version}\r\n" + (f"Host: {host}\r\n" if host is not None else "")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((head + "Connection: close\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def test_a_request_to_another_host_name_is_refused_dns_rebinding(
    console_service: MakeConsole,
) -> None:
    """A page of evil.example whose name was made to resolve to 127.0.0.1 reaches the
    console with its own name in Host: refused before any route, the API included."""
    cs = console_service(allowed_hosts=["acq-pc.lab"])
    port = cs.web.port or 0
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "acq-pc.lab"):
        assert raw_get(port, host)[0] == 200, host
    for host in (
        f"evil.example:{port}",
        f"127.0.0.1.evil.example:{port}",
        f"localhost.evil.example:{port}",
        "10.1.2.3",  # bound to this machine only: not even an address of the network
        f"127.0.0.1:{port}@evil.example",
        None,
    ):
        for path in ("/api/generation", "/retakes.json", "/metrics", "/"):
            status, body = raw_get(port, host, path)
            assert status == 421, (host, path)
            assert b"does not answer to that host name" in body
            assert b"generation" not in body


def test_opened_to_the_network_the_console_answers_its_names_and_addresses() -> None:
    from focuswatch.web.hosts import allowed_hosts, host_name

    allowed = allowed_hosts(WebConfig(host="0.0.0.0", allowed_hosts=["Acq-PC.lab.example"]))
    for ok in ("10.1.2.3:8423", "[fe80::1]:8423", "acq-pc.lab.example:8423", "localhost"):
        assert allowed(ok), ok
    for bad in ("evil.example:8423", "acq-pc.lab.example.evil.example", "", None):
        assert not allowed(bad), bad
    named = allowed_hosts(WebConfig(host="10.1.2.3"))
    assert named("10.1.2.3:8423")
    assert socket.gethostname()
    assert named(f"{socket.gethostname()}:8423")
    assert host_name("[::1]:8423") == "::1"
    assert host_name("LocalHost.:80") == "localhost"
    assert host_name("a:b:c") is None


def test_service_stop_closes_the_server(console_service: MakeConsole) -> None:
    cs = console_service()
    port = cs.web.port
    cs.svc.stop(grace_s=0.5)
    assert not cs.web.running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port or 0)) != 0


def test_the_worst_patch_crop_is_that_patch_at_full_resolution(tmp_path: Path) -> None:
    import io

    import numpy as np
    import tifffile
    from PIL import Image

    from focuswatch.web.app import worst_patch_crop

    image = np.random.default_rng(0).integers(0, 255, (64, 96), dtype=np.uint8)
    image[32:, 48:] = 7  # the bottom-right patch of a 2x2 grid: flat
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, image)
    png = worst_patch_crop(str(path), [[900.0, 800.0], [700.0, 3.0]], px=384)
    assert png is not None
    crop = np.asarray(Image.open(io.BytesIO(png)))
    assert crop.shape == (32, 48)  # the whole patch: smaller than px
    assert crop.min() == crop.max()  # nothing from the textured patches around it
    small = worst_patch_crop(str(path), [[1.0, 800.0], [700.0, 3.5]], px=16)
    assert small is not None
    assert np.asarray(Image.open(io.BytesIO(small))).shape == (16, 16)
    assert worst_patch_crop(str(path), None) is None
    assert worst_patch_crop(str(tmp_path / "gone.tif"), [[1.0]]) is None


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def backlog_ledger(state: Path, clock: FixedClock) -> None:
    """Ten tiles seen at t=100..109; six of them judged at t=800..805; four waiting.

    At t=1000 the last 5 minutes saw no arrival and 6 tiles scored: 1.2 a minute,
    so the 4 left take 3 min 20 s.
    """
    from focuswatch.verdict import Verdict, VerdictKind

    led = Ledger.open(state, clock=clock)
    try:
        ids = []
        for i in range(10):
            clock.now = 100.0 + i
            name = f"Tile_r1-c{i + 1}_S_001_1.tif"
            ids.append(led.add_version(f"/w/{name}", size=1, mtime_ns=1, tile_name=name)[0])
        led.claim_ready(6)
        for i, vid in enumerate(ids[:6]):
            clock.now = 800.0 + i
            led.record_result(vid, verdict=Verdict(VerdictKind.UNREADABLE, "not a tile"))
    finally:
        led.close()
    clock.now = 1000.0


def test_the_time_to_clear_the_backlog_is_said_in_words() -> None:
    from focuswatch.web.data import clear_in

    assert clear_in(0, 5.0, 1.0) == "nothing waiting"
    assert clear_in(4, 0.0, 1.2) == "about 3 min 20 s"
    assert clear_in(120, 1.0, 3.0) == "about 1 h 0 min"
    assert clear_in(4, 3.0, 2.0) == (
        "not clearing: tiles arrive as fast as they are scored, or faster; "
        "2 min 0 s of scoring if no more arrive"
    )
    assert clear_in(4, 0.0, 0.0) == "not clearing: nothing scored in the last 5 minutes"


def test_the_now_page_says_how_long_the_backlog_takes_to_clear(tmp_path: Path) -> None:
    clock = FixedClock(0.0)
    backlog_ledger(tmp_path, clock)
    console = WebConsole(WebConfig(host="127.0.0.1", port=0), tmp_path, clock=clock)
    console.start()
    try:
        assert console.running
        status, _, body = fetch(console.url or "")
        html = body.decode()
        assert status == 200
        assert '<p id="backlog">4 tiles</p>' in html
        assert '<p id="clear-in">time to clear: about 3 min 20 s</p>' in html
        assert "0 still being written, 4 waiting, 0 handed to the workers" in html
    finally:
        console.close()


def test_an_unchanged_ledger_is_answered_from_what_was_kept_and_a_commit_at_once(
    tmp_path: Path,
) -> None:
    """A poll of unchanged state reuses the answer; a commit by the service (another
    connection) is seen by the very next read, never a stale page."""
    from focuswatch.web.data import Console

    clock = FixedClock(0.0)
    backlog_ledger(tmp_path, clock)
    console = Console(tmp_path, clock=clock)
    writer = Ledger.open(tmp_path, clock=clock)
    try:
        wafer = console.wafer()
        assert console.wafer() is wafer
        assert console.rates(clock.now, 300.0) is console.rates(clock.now, 300.0)
        assert console.counts()["ready"] == 4
        writer.add_version("/w/new.tif", size=1, mtime_ns=1, tile_name="Tile_r2-c1_S_001_1.tif")
        fresh = console.wafer()
        assert fresh is not wafer
        assert [s["seen"] for s in wafer["sections"]] == [10]
        assert [s["seen"] for s in fresh["sections"]] == [11]
        assert console.counts()["ready"] == 5
        assert console.last_tile() == ("Tile_r2-c1_S_001_1.tif", 1000.0)
        # A rate over the last minutes moves with the clock, even with no commit.
        before = console.rates(clock.now, 300.0)
        clock.now += 400.0
        assert console.rates(clock.now, 300.0) != before
    finally:
        writer.close()
        console.close()


def shown_generation(html: bytes) -> str:
    found = re.search(r'<main id="live"[^>]*data-generation="([^"]*)"', html.decode())
    assert found is not None
    return found.group(1)


def api_generation(url: str) -> str:
    return str(fetch_json("/".join(url.split("/", 3)[:3]) + "/api/generation")["generation"])


def current_page(url: str, *, after: str) -> bytes:
    """The page as the live script gets it once the generation moved past ``after``:
    fetched again until it shows the generation polled (a polled page and the
    generation are each kept up to a second; bounded: 10 s)."""
    deadline = time.monotonic() + 10.0
    while True:
        _, _, body = fetch(url)
        if shown_generation(body) == api_generation(url) != after:
            return body
        assert time.monotonic() < deadline, "the page never reached the current generation"
        time.sleep(0.1)


def test_a_kept_page_never_claims_a_newer_generation_than_it_shows(
    console_service: MakeConsole,
) -> None:
    """A polled page is made at most once a second and kept for every poll in that
    second; one kept from before a verdict carries the generation it was made at, so the
    live script asks again, and the page at the current generation shows the verdict."""
    cs, _ = planted(console_service)
    _, _, first = fetch(cs.url + "wafer")
    old = shown_generation(first)
    assert old
    cs.write("S_002_2/Tile_r2-c1_S_002_2_BLUR.tif", value=4)
    cs.judge(8)
    _, _, soon = fetch(cs.url + "wafer")
    if "Tile_r2-c1_S_002_2_BLUR.tif" not in soon.decode():
        assert shown_generation(soon) == old  # kept from before: says so
    else:
        assert shown_generation(soon) != old
    page = current_page(cs.url + "wafer", after=old)
    assert "Tile_r2-c1_S_002_2_BLUR.tif" in page.decode()


def test_the_wafer_map_shows_a_new_tile_at_the_next_poll_and_keeps_the_others(
    console_service: MakeConsole,
) -> None:
    """Sections are rendered once per change: the first poll of the page at the
    current generation shows the verdict, in both views, and the sections that did not
    change read as before."""
    cs, _ = planted(console_service)
    _, _, before = fetch(cs.url + "wafer")
    _, _, before_score = fetch(cs.url + "wafer?colour=score")
    cs.write("S_002_2/Tile_r2-c1_S_002_2_BLUR.tif", value=4)
    cs.judge(8)
    after = current_page(cs.url + "wafer", after=shown_generation(before))
    after_score = current_page(cs.url + "wafer?colour=score", after=shown_generation(before))

    def figure(html: bytes, section: str) -> str:
        found = re.search(rf'<figure[^>]*data-section="{section}".*?</figure>', html.decode(), re.S)
        assert found is not None
        return found.group()

    assert figure(after, "001") == figure(before, "001")
    assert figure(after_score, "001") == figure(before_score, "001")
    for html in (after, after_score):
        new = re.search(
            r'<rect class="tile"[^>]*data-name="Tile_r2-c1_S_002_2_BLUR.tif"[^>]*>', html.decode()
        )
        assert new is not None
        assert 'data-verdict="out_of_focus"' in new.group()
        assert "4 of 4 tiles seen" in figure(html, "002")
        assert "2 to retake" in figure(html, "002")
    assert "Tile_r2-c1_S_002_2_BLUR.tif" not in before.decode()


def test_status_and_the_now_page_say_the_same_rates_in_local_time_with_its_zone(
    tmp_path: Path,
) -> None:
    """One rule for every throughput figure: `status` and the Now page agree (both over
    the last 5 minutes, a young ledger measured over its own age), and the executor's
    own rate over its last few tiles is shown by neither."""
    import time

    from focuswatch import status
    from focuswatch.config import Config
    from focuswatch.web.data import Console

    clock = FixedClock(0.0)
    backlog_ledger(tmp_path, clock)
    led = Ledger.open(tmp_path, clock=clock)
    led.set_meta(
        "executor",
        {"backend": "dask", "tiles_per_s": 9.75, "scheduler": "tls://ops:Hunter2pw@10.0.0.5:8786"},
    )
    led.close()
    summary = status.summary(Config(state_dir=tmp_path), clock=clock)
    text = status.format_text(summary)
    now = Console(tmp_path, clock=clock)
    try:
        view = now.now_view()
    finally:
        now.close()
    assert summary["tiles_per_min"] == pytest.approx(1.2)
    assert view["rates"]["score_5"] == pytest.approx(1.2)
    assert summary["arriving_per_min"] == view["rates"]["arrive_5"] == 0.0
    assert "rate: 1.2 tiles/min scored, 0.0 arriving (last 5 min)" in text
    assert "tiles_per_s" not in text
    assert "tiles_per_s" not in view["executor"]
    assert "Hunter2pw" not in str(view["executor"])
    assert view["executor"]["scheduler"] == "tls://ops:***@10.0.0.5:8786"
    zone = time.strftime("%Z", time.localtime(805.0))
    assert f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(805.0))} {zone}" in text
    assert view["zone"].startswith(time.strftime("%Z", time.localtime(1000.0)))


def test_the_sample_grafana_dashboard_draws_every_metric_and_only_served_ones(
    console_service: MakeConsole,
) -> None:
    import json

    cs = console_service()
    _, _, body = fetch(cs.url + "metrics")
    served = set(re.findall(r"^# TYPE (\w+) ", body.decode(), re.M))
    dashboard = json.loads(
        (Path(__file__).parent.parent / "docs" / "grafana-focuswatch.json").read_text("utf-8")
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {
        re.sub(r"_(bucket|sum|count)$", "", m)
        for e in exprs
        for m in re.findall(r"\bfocuswatch_\w+", e)
    }
    assert named - served == set()  # no panel asks for a metric that does not exist
    assert served - named == set()  # and every metric has its panel
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
