"""The composition root: builds every part from the configuration, starts none of them,
and refuses to mix scores of another kind into a wafer's history."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from focuswatch.app import build_service, preflight
from focuswatch.choices import NOISE_FLOOR_REVISION as REVISION
from focuswatch.config import AlertsConfig, Config, WebConfig
from focuswatch.errors import ConfigError
from focuswatch.ledger import Ledger
from pipeline_jobs import fake_score
from servicekit import RecordingSink, make_cfg, write_tif


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_recorded_revision(state: Path, revision: Any) -> Any:
    """Rewrite the scoring settings a ledger recorded with ``revision`` (as an earlier
    release, or a hand edit, left them); the revision it recorded."""
    conn = sqlite3.connect(state / "focuswatch.db")
    (value,) = conn.execute("SELECT value FROM meta WHERE key = 'scoring'").fetchone()
    recorded = json.loads(value)
    before = recorded["revision"]
    recorded["revision"] = revision
    conn.execute("UPDATE meta SET value = ? WHERE key = 'scoring'", (json.dumps(recorded),))
    conn.commit()
    conn.close()
    return before


def _scored_once(cfg: Config) -> None:
    """One tile scored and recorded in ``cfg``'s state folder, the service stopped again."""
    write_tif(Path(cfg.watch.path or "") / "S_001" / "Tile_r1-c1_S_001.tif")
    sink = RecordingSink()
    svc = build_service(cfg, sinks=[sink], builtin_sinks=False, score_fn=fake_score)
    svc.run_until(threading.Event(), once=True)
    assert len(sink.records) == 1


def test_building_the_service_starts_nothing_and_start_starts_each_part(tmp_path: Path) -> None:
    """No thread, no socket, no file before ``start``; ``stop`` closes what started."""
    port = _free_port()
    cfg = dataclasses.replace(
        make_cfg(tmp_path),
        web=WebConfig(enabled=True, port=port),
        alerts=AlertsConfig(urls=["json://127.0.0.1:9/hook"], disk_min_free_mb=0),
    )
    sink = RecordingSink()
    threads = set(threading.enumerate())
    svc = build_service(cfg, sinks=[sink], score_fn=fake_score)
    try:
        assert set(threading.enumerate()) == threads
        assert not (cfg.state_dir / "retakes.csv").exists()
        with socket.socket() as probe:  # the port is still free: nothing bound it
            probe.bind(("127.0.0.1", port))
        assert not sink.started
        svc.start(watch=False)
        assert sink.started
        assert (cfg.state_dir / "retakes.csv").exists()
        with socket.socket() as probe, pytest.raises(OSError, match="in use"):
            probe.bind(("127.0.0.1", port))
    finally:
        svc.stop(grace_s=0.5)
    assert sink.closed


def test_a_scoring_mode_change_on_a_wafer_already_scored_is_refused_with_its_key(
    tmp_path: Path,
) -> None:
    """Scores of another mode are not comparable: they may not join a position's history."""
    cfg = make_cfg(tmp_path, mode="default")
    _scored_once(cfg)
    fast = make_cfg(tmp_path, mode="fast")
    with pytest.raises(ConfigError) as err:
        build_service(fast, builtin_sinks=False, score_fn=fake_score)
    (problem,) = err.value.problems
    assert problem.startswith("at 'scoring.mode': ")
    assert "'default', not 'fast'" in problem
    # Refused, not half-started: the lock is free again and the ledger unchanged.
    build_service(cfg, builtin_sinks=False, score_fn=fake_score).stop()
    ledger = Ledger.open(cfg.state_dir)
    try:
        meta = ledger.get_meta("scoring")
    finally:
        ledger.close()
    assert meta is not None
    assert meta[0]["mode"] == "default"


def test_another_mode_is_fine_before_any_tile_is_scored(tmp_path: Path) -> None:
    """Nothing to compare with yet: the new settings become the ledger's."""
    build_service(make_cfg(tmp_path, mode="default"), builtin_sinks=False).stop()
    fast = make_cfg(tmp_path, mode="fast", patch_size=512)
    _scored_once(fast)
    with pytest.raises(ConfigError, match=r"at 'scoring\.patch_size': .*512, not 1024"):
        build_service(make_cfg(tmp_path, mode="fast"), builtin_sinks=False)


def test_check_config_names_a_scoring_change_against_the_existing_ledger(tmp_path: Path) -> None:
    """``check-config`` (preflight) finds it too, reading the ledger without changing it."""
    cfg = make_cfg(tmp_path, mode="default")
    _scored_once(cfg)
    assert preflight(cfg) == []
    problems = preflight(make_cfg(tmp_path, mode="fast"))
    assert [p for p in problems if p.startswith("at 'scoring.mode'")] == problems
    assert len(problems) == 1


def test_check_config_leaves_a_ledger_it_cannot_read_or_that_needs_migrating_to_run(
    tmp_path: Path,
) -> None:
    """An older schema is migrated by ``run``: not a configuration problem."""
    cfg = make_cfg(tmp_path, mode="default")
    _scored_once(cfg)
    conn = sqlite3.connect(cfg.state_dir / "focuswatch.db")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.execute(f"PRAGMA user_version = {version - 1}")
    conn.commit()
    conn.close()
    assert preflight(make_cfg(tmp_path, mode="fast")) == []


@pytest.mark.slow
def test_a_refusal_at_start_exits_2_and_is_told_to_the_alert_endpoints(tmp_path: Path) -> None:
    """``focuswatch run`` with another mode: exit 2 with the key path on stderr, and the
    endpoints hear why the service is not running."""
    from test_alerts import HookServer, free_port

    cfg = make_cfg(tmp_path, mode="default")
    _scored_once(cfg)
    hook = HookServer(free_port())
    hook.start()
    try:
        config = tmp_path / "fw.toml"
        config.write_text(
            f'[scoring]\nmode = "fast"\n[alerts]\nurls = ["json://127.0.0.1:{hook.port}/h"]\n'
            "[web]\nenabled = false\n"
        )
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "focuswatch",
                "run",
                "--config",
                str(config),
                "--watch",
                str(cfg.watch.path),
                "--state",
                str(cfg.state_dir),
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        told = hook.posts.get(timeout=10)
    finally:
        hook.stop()
    assert run.returncode == 2
    assert "at 'scoring.mode'" in run.stderr
    assert told["type"] == "failure"
    assert "refused to start" in told["title"]
    assert "at 'scoring.mode'" in told["message"]


def test_exact_and_its_old_name_default_are_one_mode(tmp_path: Path) -> None:
    """'default' was the exact mode's name until fast became the default: a wafer begun
    with it goes on with 'exact' (same numbers), and not with 'fast'."""
    _scored_once(make_cfg(tmp_path, mode="default"))
    build_service(make_cfg(tmp_path, mode="exact"), builtin_sinks=False).stop()
    with pytest.raises(ConfigError, match=r"at 'scoring\.mode': .*'exact', not 'fast'"):
        build_service(make_cfg(tmp_path, mode="fast"), builtin_sinks=False)


def test_a_configured_hook_is_one_of_the_services_sinks_after_the_alerts(tmp_path: Path) -> None:
    from focuswatch.alerts import AlertSink
    from focuswatch.config import HooksConfig
    from focuswatch.hooks import HookSink

    cfg = dataclasses.replace(
        make_cfg(tmp_path),
        hooks=HooksConfig(tile_out_of_focus=["true", "{tile}"]),
        web=WebConfig(enabled=False),
    )
    svc = build_service(cfg, score_fn=fake_score)
    try:
        kinds = [type(s) for s in svc.sinks]
        assert kinds.index(HookSink) == kinds.index(AlertSink) + 1
    finally:
        svc.stop()
    bare = build_service(dataclasses.replace(cfg, hooks=HooksConfig()), score_fn=fake_score)
    try:
        assert not [s for s in bare.sinks if isinstance(s, HookSink)]
    finally:
        bare.stop()


def test_a_wafer_scored_by_a_release_that_recorded_no_settings_is_not_continued_in_fast_mode(
    tmp_path: Path,
) -> None:
    """Such a release's default was exact: the new default, fast, is refused until the
    operator sets the mode those tiles were scored with."""
    _scored_once(make_cfg(tmp_path, mode="exact"))
    conn = sqlite3.connect(tmp_path / "state" / "focuswatch.db")
    conn.execute("DELETE FROM meta WHERE key = 'scoring'")  # as an earlier release left it
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"at 'scoring\.mode': .*earlier release"):
        build_service(make_cfg(tmp_path, mode="fast"), builtin_sinks=False)
    # Exact mode then was the scorer's first revision: not this release's numbers either.
    with pytest.raises(ConfigError, match=rf"at 'scoring': .*revision 1 .*revision {REVISION}"):
        build_service(make_cfg(tmp_path, mode="default"), builtin_sinks=False)


def test_a_wafer_scored_by_another_revision_of_the_scorer_is_not_continued(
    tmp_path: Path,
) -> None:
    """Same settings, other numbers: a ledger whose scores an earlier revision made (it
    recorded none) is refused with the revisions named; the authors' faithful mode,
    unchanged since, goes on."""
    for mode, refused in (("fast", True), ("faithful", False)):
        (tmp_path / mode).mkdir()
        cfg = make_cfg(tmp_path / mode, mode=mode)
        _scored_once(cfg)
        conn = sqlite3.connect(tmp_path / mode / "state" / "focuswatch.db")
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'scoring'").fetchone()
        recorded = json.loads(value)
        assert recorded["revision"] == (1 if mode == "faithful" else REVISION)
        del recorded["revision"]  # as the release before revisions left it
        conn.execute("UPDATE meta SET value = ? WHERE key = 'scoring'", (json.dumps(recorded),))
        conn.commit()
        conn.close()
        if refused:
            with pytest.raises(
                ConfigError, match=rf"at 'scoring': .*by revision 1 .*revision {REVISION}"
            ):
                build_service(cfg, builtin_sinks=False)
        else:
            build_service(cfg, builtin_sinks=False).stop()


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_wafer_begun_by_the_previous_noise_floor_revision_is_not_continued(
    tmp_path: Path, mode: str
) -> None:
    """A ledger whose fast or exact scores the revision before this one made (6: a 512²
    tile one patch at the default patch size; 7 lays it out as four) is refused by
    ``run`` and ``check-config``, the two revisions named, though every setting
    recorded is the same."""
    cfg = make_cfg(tmp_path, mode=mode)
    _scored_once(cfg)
    assert _set_recorded_revision(tmp_path / "state", REVISION - 1) == REVISION
    want = rf"at 'scoring': .*by revision {REVISION - 1} .*with revision {REVISION}"
    assert any(re.search(want, p) for p in preflight(cfg)), preflight(cfg)
    with pytest.raises(ConfigError, match=want):
        build_service(cfg, builtin_sinks=False)


@pytest.mark.parametrize("stored", ["2", None, True, 2.5, [2]])
def test_a_revision_this_release_cannot_read_is_named_as_such(tmp_path: Path, stored: Any) -> None:
    """A damaged or hand-edited ``revision`` ("2", null, true...) is refused, by ``run``
    and by ``check-config``, as unreadable, not as "scored by revision 2 … this
    release scores with revision 2" (true == 1 passed for the faithful scorer)."""
    cfg = make_cfg(tmp_path, mode="faithful" if stored is True else "fast")
    _scored_once(cfg)
    _set_recorded_revision(tmp_path / "state", stored)
    want = r"at 'scoring': .*revision .*cannot read"
    assert any(re.search(want, p) for p in preflight(cfg)), preflight(cfg)
    with pytest.raises(ConfigError, match=want):
        build_service(cfg, builtin_sinks=False)


def test_a_calibration_of_other_scores_is_refused_with_its_key(tmp_path: Path) -> None:
    """A defocus fit turns a score drop into µm only for the scores it was fitted on:
    one made in another mode, at another patch size or by another scorer revision (a
    file from before revisions were recorded: 1) is refused by `run` and
    `check-config` at 'policy.calibration'; one made under these settings is used."""
    from focuswatch.calibrate import Calibration
    from focuswatch.choices import scorer_revision
    from focuswatch.config import PolicyConfig

    base = make_cfg(tmp_path)
    sc = base.scoring
    fit = {"best_focus_um": 0.0, "slope_per_um": -0.5, "intercept": 5.0, "r": -0.99, "n": 9}
    good = Calibration(
        **fit,
        mode=sc.mode,
        resolution=sc.resolution,
        patch_size=sc.patch_size,
        revision=scorer_revision(sc.criterion, sc.mode),
    )
    others = {
        "mode": dataclasses.replace(good, mode="exact"),
        "patch": dataclasses.replace(good, patch_size=sc.patch_size * 2),
        "revision": dataclasses.replace(good, revision=1),
    }
    for name, cal in [("good", good), *others.items()]:
        path = tmp_path / f"{name}.json"
        cal.save(path)
        cfg = dataclasses.replace(base, policy=PolicyConfig(calibration=str(path)))
        if name == "good":
            assert preflight(cfg) == []
            build_service(cfg, builtin_sinks=False).stop()
            continue
        problems = preflight(cfg)
        assert any(p.startswith("at 'policy.calibration': made from") for p in problems), (
            name,
            problems,
        )
        with pytest.raises(ConfigError, match=r"at 'policy\.calibration': made from"):
            build_service(cfg, builtin_sinks=False)
    legacy = json.loads((tmp_path / "good.json").read_text())
    del legacy["revision"]
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    cfg = dataclasses.replace(base, policy=PolicyConfig(calibration=str(tmp_path / "legacy.json")))
    assert any("scorer revision 1" in p for p in preflight(cfg))


def test_a_calibration_at_another_resolution_is_refused_and_the_default_alias_is_exact(
    tmp_path: Path,
) -> None:
    """The check above names resolution too, which its test never varies: a fit of
    native scores for a service scoring patches is refused; a fit written as mode
    'default' (the old name of 'exact') is used by a service scoring 'exact'."""
    from focuswatch.calibrate import Calibration
    from focuswatch.choices import scorer_revision
    from focuswatch.config import PolicyConfig, ScoringConfig

    base = make_cfg(tmp_path)
    fit = {"best_focus_um": 0.0, "slope_per_um": -0.5, "intercept": 5.0, "r": -0.99, "n": 9}
    exact = dataclasses.replace(
        base, scoring=dataclasses.replace(base.scoring, mode="exact", resolution="patches")
    )
    assert isinstance(exact.scoring, ScoringConfig)
    sc = exact.scoring
    made = {
        "native": Calibration(
            **fit,
            mode="exact",
            resolution="native",
            patch_size=sc.patch_size,
            revision=scorer_revision(sc.criterion, "exact"),
        ),
        "alias": Calibration(
            **fit,
            mode="default",
            resolution="patches",
            patch_size=sc.patch_size,
            revision=scorer_revision(sc.criterion, "default"),
        ),
    }
    for name, cal in made.items():
        cal.save(tmp_path / f"{name}.json")
    native = dataclasses.replace(exact, policy=PolicyConfig(calibration=tmp_path / "native.json"))
    assert any("resolution 'native'" in p for p in preflight(native)), preflight(native)
    alias = dataclasses.replace(exact, policy=PolicyConfig(calibration=tmp_path / "alias.json"))
    assert preflight(alias) == []
