"""Configuration: parsed once into frozen dataclasses; every problem reported with its key path."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from focuswatch import config
from focuswatch.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "focuswatch.toml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fw.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_no_file_gives_embedded_defaults() -> None:
    cfg = config.load(None)
    assert cfg == config.Config()
    assert cfg.scoring.criterion == "mhfd"
    assert cfg.watch.include == ["*.tif", "*.tiff"]


def test_config_is_frozen() -> None:
    cfg = config.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.state_dir = Path("/x")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policy.drop_ratio = 0.9  # type: ignore[misc]


def test_values_are_read_and_typed(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        'state_dir = "/srv/fw"\n[watch]\npath = "/data/atlas"\nquiet_s = 3\n'
        '[policy]\ndrop_ratio = 0.4\n[alerts]\nurls = ["json://127.0.0.1:9/x"]\n',
    )
    cfg = config.load(p)
    assert cfg.state_dir == Path("/srv/fw")
    assert cfg.watch.path == Path("/data/atlas")
    assert cfg.watch.quiet_s == 3.0
    assert isinstance(cfg.watch.quiet_s, float)
    assert cfg.policy.drop_ratio == 0.4
    assert cfg.alerts.urls == ["json://127.0.0.1:9/x"]


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "[policy]\ndrop_ratio = 1.5\nhistory_sections = 'five'\ntypo = 1\n"
        "[watch]\nobserver = 'magic'\ninclude = [1, 2]\n[nonsense]\nx = 1\n",
    )
    with pytest.raises(ConfigError) as info:
        config.load(p)
    text = "\n".join(info.value.problems)
    assert "at 'policy.drop_ratio': must be in (0, 1)" in text
    assert "at 'policy.history_sections': must be an integer" in text
    assert "at 'policy.typo': unknown key" in text
    assert "at 'watch.observer': must be one of 'auto', 'inotify', 'polling'" in text
    assert "at 'watch.include': must be a list of strings" in text
    assert "at 'nonsense': unknown key" in text
    assert len(info.value.problems) == 6
    assert all(problem.startswith(str(p)) for problem in info.value.problems)


def test_cross_field_rules(tmp_path: Path) -> None:
    p = _write(tmp_path, "[cluster]\nscheduler = 'dask'\n")
    with pytest.raises(ConfigError, match=r"at 'cluster.address': required"):
        config.load(p)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at 'watch': must be a table"):
        config.load(_write(tmp_path, "watch = 3\n"))


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at 'scoring.workers': must be an integer"):
        config.load(_write(tmp_path, "[scoring]\nworkers = true\n"))


def test_missing_file_bad_toml_and_bad_encoding_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(_write(tmp_path, "[watch\n"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path)  # a directory


def test_command_line_overrides_win_and_are_checked() -> None:
    cfg = config.with_overrides(
        config.Config(),
        {
            "watch.path": Path("/in"),
            "state_dir": Path("/st"),
            "scoring.workers": 4,
            "scoring.backend": None,
        },
    )
    assert cfg.watch.path == Path("/in")
    assert cfg.state_dir == Path("/st")
    assert cfg.scoring.workers == 4
    assert cfg.scoring.backend == "auto"  # None means "flag not given"
    with pytest.raises(ConfigError, match=r"command line: at 'scoring.workers': must be in"):
        config.with_overrides(config.Config(), {"scoring.workers": 0})


def test_example_file_is_valid_and_documents_every_key() -> None:
    """config/focuswatch.toml parses and mentions every key the service understands."""
    cfg = config.load(EXAMPLE)
    assert cfg.watch.path == Path("/data/atlas")
    text = EXAMPLE.read_text(encoding="utf-8")
    tomllib.loads(text)
    for section in dataclasses.fields(config.Config):
        value = getattr(config.Config(), section.name)
        keys = (
            [f.name for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else [section.name]
        )
        for key in keys:
            assert re.search(rf"^#?\s*{key} = ", text, re.MULTILINE), f"{key} undocumented"


def test_describe_round_trips_through_toml() -> None:
    """check-config prints the effective configuration as TOML that loads back the same."""
    cfg = config.load(EXAMPLE)
    text = config.describe(cfg)
    assert config.parse(tomllib.loads(text)) == cfg


def test_describe_never_shows_secrets_in_alert_urls() -> None:
    """check-config's output masks Slack tokens and mail passwords (apprise's redaction)."""
    token = "TIiajkdnlazkcOXrIdevi7FQ"
    cfg = config.parse(
        {
            "alerts": {
                "urls": [
                    f"slack://T1JJ3T3L2/A1BRTD4JD/{token}",
                    "mailto://user:hunter2@127.0.0.1:25?from=a@b.org&to=c@d.org",
                ]
            }
        }
    )
    from focuswatch.alerts import redact_url

    text = config.describe(cfg, redact_url=redact_url)  # as check-config shows it
    (urls,) = [line for line in text.splitlines() if line.startswith("urls = ")]
    assert token not in text
    assert "hunter2" not in text
    assert '"slack://' in urls
    assert '"mailto://user:' in urls
    # Without apprise's redaction (config imports no effect module) only schemes show.
    bare = config.describe(cfg)
    assert token not in bare
    assert "hunter2" not in bare
    assert 'urls = ["slack://***", "mailto://***"]' in bare


def test_scoring_choices_are_the_scorers_own() -> None:
    """config accepts exactly the criteria, modes, resolutions and backends the code has."""
    from focuswatch.backend import BACKEND_NAMES
    from focuswatch.score import CRITERIA, MODES, RESOLUTIONS

    for key, names in (
        ("criterion", CRITERIA),
        ("mode", MODES),
        ("resolution", RESOLUTIONS),
        ("backend", BACKEND_NAMES),
    ):
        for name in names:
            assert getattr(config.parse({"scoring": {key: name}}).scoring, key) == name
        with pytest.raises(ConfigError, match=rf"at 'scoring\.{key}'"):
            config.parse({"scoring": {key: "nope"}})


@pytest.mark.parametrize("value", ["0", "1.5", "'two'", "1000"])
def test_a_bad_regime_sections_is_reported_with_its_key_path(tmp_path: Path, value: str) -> None:
    p = _write(tmp_path, f"[policy]\nregime_sections = {value}\n")
    with pytest.raises(ConfigError) as info:
        config.load(p)
    assert any("at 'policy.regime_sections'" in problem for problem in info.value.problems)


def test_regime_sections_is_read(tmp_path: Path) -> None:
    cfg = config.load(_write(tmp_path, "[policy]\nregime_sections = 3\n"))
    assert cfg.policy.regime_sections == 3
