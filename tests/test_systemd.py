"""The systemd unit in the repo is valid and hardened."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "focuswatch.service"


def _service_section() -> dict[str, str]:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return dict(parser["Service"])


def test_unit_is_notify_type_with_watchdog_and_restart() -> None:
    svc = _service_section()
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["StateDirectory"] == "focuswatch"
    assert svc["User"] == "focuswatch"
    assert " run " in svc["ExecStart"]


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
    assert "ReadOnlyPaths" in svc  # the watch folder is only read
    assert "PrivateDevices" not in svc  # would hide /dev/nvidia* from CuPy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning.

    ExecStart points at this checkout's entry point, since verify checks that the
    binary exists.
    """
    entry = Path(sys.executable).parent / "focuswatch"
    assert entry.exists(), "the package's console script is installed"
    unit = tmp_path / "focuswatch.service"
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/focuswatch/bin/focuswatch", str(entry)),
        encoding="utf-8",
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in result.stderr.splitlines() if "focuswatch" in line]
    assert result.returncode == 0, result.stderr
    assert ours == []
