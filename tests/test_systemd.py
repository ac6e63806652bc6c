"""The systemd unit in the repo is valid and hardened."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import run_cli

UNIT = Path(__file__).parent.parent / "systemd" / "focuswatch.service"


def _sections(text: str) -> dict[str, dict[str, str]]:
    """A unit file's sections, keys as written (systemd's keys are case-sensitive)."""
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def _service_section() -> dict[str, str]:
    return _sections(UNIT.read_text(encoding="utf-8"))["Service"]


def _verify(unit_text: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a word about focuswatch.

    ExecStart points at this checkout's entry point, since verify checks that the
    binary exists.
    """
    entry = Path(sys.executable).parent / "focuswatch"
    assert entry.exists(), "the package's console script is installed"
    unit = tmp_path / "focuswatch.service"
    unit.write_text(unit_text.replace("/opt/focuswatch/bin/focuswatch", str(entry)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "focuswatch" in line] == []


def test_unit_is_notify_type_with_watchdog_and_restart() -> None:
    svc = _service_section()
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["StateDirectory"] == "focuswatch"
    assert svc["User"] == "focuswatch"
    assert " run " in svc["ExecStart"]


def test_a_refused_configuration_is_not_restarted_into_the_same_refusal() -> None:
    """``run`` exits 2 (EXIT_USAGE) on a configuration error: restarting cannot fix it."""
    from focuswatch.cli import EXIT_USAGE

    assert _service_section()["RestartPreventExitStatus"].split() == [str(EXIT_USAGE)]


def test_unit_is_hardened() -> None:
    svc = _service_section()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert svc.get(key) == value, key
    # The watch folder is only read: ReadOnlyPaths= for it comes with the drop-in made
    # from the configuration (test_dropin_...), never edited into this file.
    assert "ReadOnlyPaths" not in svc
    assert "PrivateDevices" not in svc  # would hide /dev/nvidia* from CuPy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    _verify(UNIT.read_text(encoding="utf-8"), tmp_path)


def _dropin(tmp_path: Path, *args: str) -> dict[str, dict[str, str]]:
    done = run_cli("unit-dropin", *args)
    assert done.returncode == 0, done.stderr
    return _sections(done.stdout)


def test_dropin_follows_the_configured_watch_folder_on_a_share(tmp_path: Path) -> None:
    """The watch folder is set once, in the config; the unit's drop-in is made from it."""
    config = tmp_path / "fw.toml"
    config.write_text("state_dir = '/var/lib/focuswatch'\n[watch]\npath = '/mnt/atlas share'\n")
    unit = _dropin(tmp_path, "--config", str(config))
    assert unit["Unit"]["RequiresMountsFor"] == '"/mnt/atlas share" /var/lib/focuswatch'
    assert unit["Service"]["ReadOnlyPaths"] == '"/mnt/atlas share"'
    assert "ProtectHome" not in unit["Service"]
    assert "ReadWritePaths" not in unit["Service"]


def test_dropin_binds_in_only_the_watch_folder_of_a_home(tmp_path: Path) -> None:
    """ProtectHome=yes would hide a watch folder under /home without a word; read-only
    would open every home to the service: only the watch folder is bound in."""
    unit = _dropin(tmp_path, "--watch", "/home/op/atlas", "--state", "/srv/focuswatch")
    assert unit["Service"]["ProtectHome"] == "tmpfs"
    assert unit["Service"]["BindReadOnlyPaths"] == "/home/op/atlas"
    assert unit["Service"]["ReadOnlyPaths"] == "/home/op/atlas"
    assert unit["Service"]["ReadWritePaths"] == "-/srv/focuswatch"


def test_dropin_refuses_a_folder_the_service_cannot_see(tmp_path: Path) -> None:
    """PrivateTmp=yes gives the service a /tmp of its own."""
    done = run_cli("unit-dropin", "--watch", "/tmp/atlas")
    assert done.returncode == 2
    assert "at 'watch.path'" in done.stderr
    assert "PrivateTmp" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_unit_with_its_dropin(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    # Not under /tmp (refused: PrivateTmp=); verify does not need the folder to exist.
    # verify reads one file: the unit with its drop-in's lines in their sections.
    for section, lines in _dropin(tmp_path, "--watch", "/srv/atlas share").items():
        extra = "".join(f"{k}={v}\n" for k, v in lines.items())
        text = text.replace(f"[{section}]\n", f"[{section}]\n{extra}", 1)
    _verify(text, tmp_path)
