"""Logging: JSON lines when not on a terminal (journald), one event per line."""

from __future__ import annotations

import io
import json

import structlog

from focuswatch import logs


def test_json_lines_when_not_a_tty() -> None:
    stream = io.StringIO()
    logs.configure("info", "auto", stream=stream)
    structlog.get_logger().info("tile_scored", tile="a.tif", section="001", row=1, col=2)
    structlog.get_logger().debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "tile_scored"
    assert event["tile"] == "a.tif"
    assert event["level"] == "info"
    assert "timestamp" in event


def test_console_format_is_readable() -> None:
    stream = io.StringIO()
    logs.configure("debug", "console", stream=stream)
    structlog.get_logger().debug("watching", folder="/data")
    text = stream.getvalue()
    assert "watching" in text
    assert "folder" in text
    assert not text.lstrip().startswith("{")
