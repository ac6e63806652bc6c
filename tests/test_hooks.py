"""Event hooks: real programs run on real events, without a shell, never in the way."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from focuswatch import alarms, config, hooks
from focuswatch.config import HooksConfig
from focuswatch.errors import ConfigError
from focuswatch.ledger import Ledger
from focuswatch.policy import SECTION_WIDE
from focuswatch.verdict import Placement, Verdict, VerdictKind, VerdictRecord

# A hook that writes what it was given (argv and stdin) as one JSON line to argv[1].
RECORDER = (
    "import json, sys\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({'argv': sys.argv[2:], 'stdin': json.load(sys.stdin)}) + '\\n')\n"
)

BAD = Verdict(VerdictKind.OUT_OF_FOCUS, "fine-scale features lost, defocus", 420.0)
WIDE = Verdict(VerdictKind.OUT_OF_FOCUS, f"{SECTION_WIDE}: 9 of 9 tiles", 420.0)
GOOD = Verdict(VerdictKind.IN_FOCUS, "score 430", 420.0)


def rec(
    vid: int, verdict: Verdict = BAD, *, name: str = "", section: str = "S_001"
) -> VerdictRecord:
    return VerdictRecord(
        version_id=vid,
        path=f"/wafer/{section}/{name or f'Tile_r1-c{vid}'}.tif",
        tile_name=name or f"Tile_r1-c{vid}_{section}",
        placement=Placement(
            section=section, row=1, col=vid, stage_x_um=None, stage_y_um=None, pixel_size_um=None
        ),
        score=140.0,
        verdict=verdict,
        at=0.0,
    )


def lines(path: Path, n: int, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The first ``n`` records the hook wrote (bounded wait: it runs in a thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            got = [json.loads(x) for x in path.read_text().splitlines()]
            if len(got) >= n:
                return got
        time.sleep(0.02)
    raise AssertionError(f"the hook did not run {n} times within {timeout} s")


@pytest.fixture
def sink_for(tmp_path: Path) -> Iterator[Callable[..., hooks.HookSink]]:
    made: list[tuple[hooks.HookSink, Ledger]] = []

    def make(**commands: Any) -> hooks.HookSink:
        ledger = Ledger.open(tmp_path / "state")
        sink = hooks.build_sink(HooksConfig(**commands), ledger)
        assert sink is not None
        sink.start()
        made.append((sink, ledger))
        return sink

    yield make
    for sink, ledger in made:
        sink.close()
        ledger.close()


def recorder(tmp_path: Path, *args: str) -> tuple[list[str], Path]:
    script = tmp_path / "hook.py"
    script.write_text(RECORDER)
    out = tmp_path / "ran.jsonl"
    return [sys.executable, str(script), str(out), *args], out


def test_an_out_of_focus_tile_runs_its_hook_with_the_event_as_arguments_and_json(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    command, out = recorder(tmp_path, "{section}", "{tile}", "{verdict}")
    sink = sink_for(tile_out_of_focus=command)
    sink.on_verdict(rec(1, GOOD))  # nothing to react to
    sink.on_verdict(rec(2))
    sink.on_verdict(rec(2))  # the same verdict delivered again: one run
    (ran,) = lines(out, 1)
    assert ran["argv"] == ["S_001", "Tile_r1-c2_S_001", "out_of_focus"]
    assert ran["stdin"]["event"] == "tile_out_of_focus"
    assert ran["stdin"]["reason"] == BAD.reason
    assert ran["stdin"]["position"] == "r1-c2"
    assert ran["stdin"]["at"].endswith("+00:00")  # when it happened: a replay can tell


def test_a_tile_name_is_one_argument_never_a_command(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    """No shell: quotes, semicolons and $(...) in a name reach the hook as they are."""
    hostile = "Tile_r1-c1_$(touch PWNED); rm -rf ~ ';x"
    command, out = recorder(tmp_path, "{tile}")
    sink = sink_for(tile_out_of_focus=command)
    sink.on_verdict(rec(1, name=hostile))
    (ran,) = lines(out, 1)
    assert ran["argv"] == [hostile]
    assert not (tmp_path / "PWNED").exists()
    assert not Path("PWNED").exists()


def test_a_section_wide_failure_is_one_section_event_not_one_per_tile(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    tile_cmd, tile_out = recorder(tmp_path, "tile", "{tile}")
    section_cmd = [*tile_cmd[:3], "section", "{section}"]
    sink = sink_for(tile_out_of_focus=tile_cmd, section_failing=section_cmd)
    for vid in range(1, 10):
        sink.on_verdict(rec(vid, WIDE))
    sink.on_verdict(rec(10, section="S_002"))  # an ordinary bad tile after it
    ran = lines(tile_out, 2)
    time.sleep(0.3)  # any further run would have been written by now
    assert [r["argv"] for r in lines(tile_out, 2)] == [
        ["section", "S_001"],
        ["tile", "Tile_r1-c10_S_002"],
    ]
    assert ran[0]["stdin"]["event"] == "section_failing"


def wait_for_logs(logs: list[dict[str, Any]], event: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while sum(e["event"] == event for e in logs) < n:
        assert time.monotonic() < deadline, f"fewer than {n} {event} within 20 s"
        time.sleep(0.05)


def test_scoring_never_waits_for_a_hook_and_a_hanging_one_is_killed_at_its_limit(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    release = tmp_path / "release"
    held = [
        sys.executable,
        "-c",
        "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)",
        str(release),
    ]
    with structlog.testing.capture_logs() as logs:
        sink = sink_for(tile_out_of_focus=held, timeout_s=60)
        for vid in range(1, 4):
            sink.on_verdict(rec(vid))  # each handed over while the first hook is held
        assert not [e for e in logs if e["event"].startswith("hook_")]  # none finished
        release.touch()
        wait_for_logs(logs, "hook_ran", 3)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with structlog.testing.capture_logs() as logs:
        sink = sink_for(tile_out_of_focus=hang, timeout_s=0.5)
        sink.on_verdict(rec(9))
        wait_for_logs(logs, "hook_timed_out", 1)
    (timed_out,) = [e for e in logs if e["event"] == "hook_timed_out"]
    assert timed_out["after_s"] == 0.5


def test_a_failing_or_missing_program_is_logged_with_its_status_and_output(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    fails = [sys.executable, "-c", "import sys; print('acquisition busy'); sys.exit(3)"]
    with structlog.testing.capture_logs() as logs:
        sink = sink_for(tile_out_of_focus=fails, section_failing=[str(tmp_path / "nothing")])
        sink.on_verdict(rec(1))
        sink.on_verdict(rec(2, WIDE))
        deadline = time.monotonic() + 20
        while not {"hook_ran", "hook_failed"} <= {e["event"] for e in logs}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    (ran,) = [e for e in logs if e["event"] == "hook_ran"]
    assert ran["exit_status"] == 3
    assert ran["output"] == "acquisition busy"
    (failed,) = [e for e in logs if e["event"] == "hook_failed"]
    assert failed["hook_event"] == "section_failing"


def test_a_stall_runs_its_hook_once_per_episode(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    command, out = recorder(tmp_path, "{event}", "{reason}")
    sink = sink_for(microscope_stalled=command)
    ledger = Ledger.open(tmp_path / "state")
    try:

        def stalled(since: float | None) -> None:
            told = (
                []
                if since is None
                else [alarms.Alarm(alarms.AlarmName.STALL, "", since, "no new tile for 30 min")]
            )
            ledger.set_meta(alarms.META_KEY, alarms.to_meta(told))

        stalled(1000.0)
        sink.tick(10.0)
        sink.tick(20.0)  # the same episode: no second run
        stalled(None)
        sink.tick(30.0)
        stalled(5000.0)
        sink.tick(40.0)
    finally:
        ledger.close()
    ran = lines(out, 2)
    time.sleep(0.3)
    assert [r["argv"] for r in lines(out, 2)] == [
        ["microscope_stalled", "no new tile for 30 min"],
        ["microscope_stalled", "no new tile for 30 min"],
    ]
    assert ran[0]["stdin"]["event"] == "microscope_stalled"


def test_hook_config_names_its_key_for_an_unknown_field_or_a_bad_command() -> None:
    assert hooks.build_sink(HooksConfig(), Ledger.__new__(Ledger)) is None  # none configured
    with pytest.raises(ConfigError) as err:
        config.parse(
            {
                "hooks": {
                    "tile_out_of_focus": ["/usr/local/bin/pause", "{tile_name}"],
                    "section_failing": ["pause", ""],
                    "microscope_stalled": ["pause", "{section"],
                    "timeout_s": 0,
                }
            }
        )
    text = str(err.value)
    assert "at 'hooks.tile_out_of_focus': '{tile_name}' names {tile_name}; known:" in text
    assert "at 'hooks.section_failing': must be a list of non-empty strings" in text
    assert "at 'hooks.microscope_stalled': '{section' is not a valid template" in text
    assert "at 'hooks.timeout_s'" in text
    ok = config.parse({"hooks": {"tile_out_of_focus": ["pause", "{section}", "{{literal}}"]}})
    assert dataclasses.asdict(ok.hooks)["tile_out_of_focus"][2] == "{{literal}}"


def test_a_hook_that_leaves_a_child_in_the_background_is_done_when_it_exits() -> None:
    """The child keeps no pipe of ours: the hook ran (status 0), it did not time out."""
    with structlog.testing.capture_logs() as logs:
        status = hooks.run_hook(
            ["/bin/sh", "-c", "sleep 30 & echo started"], {"event": "x"}, timeout_s=10
        )
    assert status == 0
    (ran,) = [e for e in logs if e["event"] == "hook_ran"]
    assert ran["output"] == "started"


def test_a_stall_told_before_a_restart_is_not_told_again(
    tmp_path: Path, sink_for: Callable[..., hooks.HookSink]
) -> None:
    command, out = recorder(tmp_path, "{event}")
    ledger = Ledger.open(tmp_path / "state")
    try:
        held = alarms.Alarm(alarms.AlarmName.STALL, "", 1000.0, "no new tile for 30 min")
        ledger.set_meta(alarms.META_KEY, alarms.to_meta([held]))
        sink = sink_for(microscope_stalled=command)  # started while the stall lasts
        sink.tick(10.0)
        later = alarms.Alarm(alarms.AlarmName.STALL, "", 9000.0, "no new tile for 30 min")
        ledger.set_meta(alarms.META_KEY, alarms.to_meta([later]))  # a new episode
        sink.tick(20.0)
    finally:
        ledger.close()
    (ran,) = lines(out, 1)
    assert ran["argv"] == ["microscope_stalled"]


def test_a_field_with_a_format_spec_or_conversion_is_refused() -> None:
    """Only plain {name}: a spec is evaluated at run time ({tile:{tile.__class__}})."""
    for arg in ("{tile:{tile.__class__}}", "{tile:>99999999}", "{score!r}"):
        with pytest.raises(ConfigError, match=r"at 'hooks\.tile_out_of_focus': .*just its name"):
            config.parse({"hooks": {"tile_out_of_focus": ["pause", arg]}})
