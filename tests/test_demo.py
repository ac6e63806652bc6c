"""`focuswatch demo` runs the real service on a generated wafer and shows the operator's view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The whole demo end to end (make check skips it).
pytestmark = pytest.mark.slow


def test_demo_shows_verdicts_alerts_a_closed_retake_and_the_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "focuswatch", "demo", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    # 6 sections x 9 tiles, each with one verdict line, plus the retake's new version.
    verdict_lines = [ln for ln in out.splitlines() if ln.startswith("  S ")]
    assert len(verdict_lines) == 6 * 9 + 1
    assert "OUT OF FOCUS" in out
    assert ">>> ALERT [tile]" in out
    assert "UNREADABLE" in out  # the corrupt tile, with its reason
    assert "truncated" in out
    assert "retake list for the ATLAS operator" in out
    assert "retaken fixed" in out
    assert (tmp_path / "state" / "retakes.csv").is_file()
    assert (tmp_path / "state" / "retakes.json").is_file()
    assert "Traceback" not in result.stderr
