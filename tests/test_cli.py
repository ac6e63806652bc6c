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
    # A template: its watch folder (/data/atlas) is on the microscope's PC, not here.
    example = Path(__file__).parent.parent / "config" / "focuswatch.toml"
    assert cli.main(["check-config", "--syntax-only", str(example)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_checks_what_run_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folders and the calibration file, all at once; `run` refuses the same."""
    example = Path(__file__).parent.parent / "config" / "focuswatch.toml"
    afile = tmp_path / "afile"
    afile.write_text("x")
    cfg = tmp_path / "fw.toml"
    cfg.write_text(
        f"state_dir = '{afile}/state'\n[watch]\npath = '{tmp_path}/nowhere'\n"
        f"[policy]\ncalibration = '{tmp_path}/nocal.json'\n"
    )
    assert cli.main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "at 'watch.path': folder" in err
    assert "does not exist" in err
    assert "at 'state_dir'" in err
    assert "at 'policy.calibration'" in err
    assert cli.main(["check-config", str(example), "--watch", str(afile)]) == 2
    assert f"at 'watch.path': '{afile}' is a file, not a folder" in capsys.readouterr().err
    watch = tmp_path / "watch"
    watch.mkdir()
    args = ["check-config", str(example), "--watch", str(watch), "--state", str(tmp_path / "s")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert "not checked here: alert endpoints answering" in out
    assert not (tmp_path / "s").exists()  # checked, not created


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[watch]\nquiet_s = nan\n", "watch.quiet_s"),
        ("[scoring]\ntile_timeout_s = inf\n", "scoring.tile_timeout_s"),
        ("[watch]\ninclude = []\n", "watch.include"),
    ],
)
def test_check_config_refuses_nan_infinity_and_no_patterns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    path = tmp_path / "fw.toml"
    path.write_text(text)
    assert cli.main(["check-config", "--syntax-only", str(path)]) == 2
    assert f"at '{where}'" in capsys.readouterr().err


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "--patch-size", "0", "x.tif"], "argument --patch-size: must be positive"),
        (["score", "--patch-size", "many", "x.tif"], "'many' is not a whole number"),
        (["status", "--last", "-1"], "argument --last: must be at least 0, got -1"),
        (["retakes", "dismiss", "1", "--note", " "], "argument --note: must not be empty"),
        (["retakes", "dismiss", "0", "--note", "ok"], "argument ID: must be positive, got 0"),
        (["synth", "out", "--rows", "0"], "argument --rows: must be positive"),
    ],
)
def test_bad_numbers_and_blank_notes_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse rejects them with a message that says what is wrong (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_value_only_the_module_can_check_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`score --patch-size 1` passes argparse; the scorer's ValueError becomes one line."""
    result = run_cli("score", "--patch-size", "1", str(tmp_path / "x.tif"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "focuswatch score: patch_size must be an integer >= 64, got 1"
    ]


def test_check_config_prints_alert_urls_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` shows where alerts go without the Slack token or mail password."""
    path = tmp_path / "fw.toml"
    path.write_text(
        "[alerts]\nurls = [\n"
        '  "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",\n'
        '  "mailto://user:hunter2@127.0.0.1:25?from=a@b.org&to=c@d.org",\n]\n',
        encoding="utf-8",
    )
    assert cli.main(["check-config", "--syntax-only", str(path)]) == 0
    out = capsys.readouterr().out
    assert "urls = [" in out
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in out
    assert "hunter2" not in out
