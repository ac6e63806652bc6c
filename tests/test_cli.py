"""The focuswatch command: help an operator understands, clear errors, honest exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from focuswatch import __version__, cli


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "focuswatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"focuswatch {__version__}"


@pytest.mark.parametrize(
    "command",
    ["run", "score", "calibrate", "retakes", "status", "check-config", "demo", "synth"],
)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: focuswatch {command}")
    assert len(out.splitlines()) > 3


def test_check_config_reports_problems_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\ndrop_ratio = 2\n[scoring]\nmode = 'sloppy'\n", encoding="utf-8")
    assert cli.main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "at 'policy.drop_ratio'" in err
    assert "at 'scoring.mode'" in err
    assert "Traceback" not in err


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parent.parent / "config" / "focuswatch.toml"
    assert cli.main(["check-config", str(example)]) == 0
    assert "OK" in capsys.readouterr().out


def test_missing_config_file_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = run_cli("status", "--config", str(tmp_path / "nope.toml"), "--state", str(tmp_path))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_value_reported_with_key_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--watch", "/tmp", "--state", "/tmp", "--workers", "0"]) == 2
    assert "at 'scoring.workers'" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
