"""Configuration: one TOML file, parsed once into frozen dataclasses.

Every field declares its type and what values are allowed; ``load`` reports every
problem at once, each with its key path (``at 'policy.drop_ratio': must be in
(0, 1)``), so an operator fixes the file in one go. Command-line flags are applied
with ``with_overrides`` after the file, and the result is the only configuration
object the rest of the service sees.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from focuswatch.choices import (
    BACKEND_NAMES,
    CRITERIA,
    DEFAULT_MODE,
    LAYOUTS,
    MODES,
    RESOLUTIONS,
)
from focuswatch.errors import ConfigError

__all__ = [
    "HOOK_FIELDS",
    "AlertsConfig",
    "ClusterConfig",
    "Config",
    "HooksConfig",
    "LoggingConfig",
    "PolicyConfig",
    "ScoringConfig",
    "WatchConfig",
    "WebConfig",
    "describe",
    "load",
    "parse",
    "with_overrides",
]

Check = Callable[[Any], str | None]


def _opt(default: Any, check: Check | None = None, *, factory: bool = False) -> Any:
    """A config field with an optional check that returns a problem or None."""
    meta = {"check": check} if check else {}
    if factory:
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _one_of(*allowed: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in allowed else "must be one of " + ", ".join(repr(a) for a in allowed)

    return check


def _range(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        too_low = v <= lo if lo_open else v < lo
        too_high = hi is not None and v > hi
        if too_low or too_high:
            left = "(" if lo_open else "["
            right = f"{hi}]" if hi is not None else "inf)"
            return f"must be in {left}{lo}, {right}"
        return None

    return check


def _fraction(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def _nonempty_strings(v: Any) -> str | None:
    return None if all(s for s in v) else "must not contain empty strings"


def _patterns(v: Any) -> str | None:
    return _nonempty_strings(v) if v else "must name at least one pattern, e.g. ['*.tif']"


def _name_pattern(v: Any) -> str | None:
    """A ``watch.pattern``: a regex with a ``section`` group and ``row``+``col`` or ``position``."""
    if v == "":
        return None  # unset; required only with layout = 'pattern' (cross-checked)
    try:
        groups = set(re.compile(v).groupindex)
    except re.error as exc:
        return f"is not a valid regular expression: {exc}"
    if "section" not in groups:
        return "must have a named group (?P<section>...)"
    if not ({"row", "col"} <= groups or "position" in groups):
        return "must have named groups (?P<row>...) and (?P<col>...), or (?P<position>...)"
    return None


@dataclass(frozen=True)
class WatchConfig:
    """Where tiles arrive and how the folder is watched."""

    path: Path | None = _opt(None)
    include: list[str] = _opt(["*.tif", "*.tiff"], _patterns, factory=True)
    exclude: list[str] = _opt(
        ["*thumb*", "*Thumb*", "*.tmp", "*.part", "*~", ".*"], _nonempty_strings, factory=True
    )
    observer: str = _opt("auto", _one_of("auto", "inotify", "polling"))
    poll_interval_s: float = _opt(2.0, _range(0.05, 3600))
    quiet_s: float = _opt(2.0, _range(0.0, 3600))
    incomplete_timeout_s: float = _opt(600.0, _range(1.0))
    rescan_interval_s: float = _opt(300.0, _range(1.0))
    follow_symlinks_outside: bool = _opt(False)
    #: How a file maps to (section, position): ``focuswatch.tiles.layouts``.
    layout: str = _opt("auto", _one_of(*LAYOUTS))
    #: ``layout = "pattern"``: a regex searched in the path relative to the watch folder.
    pattern: str = _opt("", _name_pattern)
    #: MultiSEM's ``full_image_coordinates.txt`` gives pixels; this turns them into µm.
    multisem_pixel_nm: float = _opt(4.0, _range(0.01, 1000))


@dataclass(frozen=True)
class ScoringConfig:
    """How each tile is scored."""

    backend: str = _opt("auto", _one_of(*BACKEND_NAMES))
    criterion: str = _opt("mhfd", _one_of(*CRITERIA))
    mode: str = _opt(DEFAULT_MODE, _one_of(*MODES))
    resolution: str = _opt("patches", _one_of(*RESOLUTIONS))
    patch_size: int = _opt(1024, _range(64, 16384))
    workers: int = _opt(1, _range(1, 256))
    queue_size: int = _opt(64, _range(1, 100_000))
    tile_timeout_s: float = _opt(300.0, _range(1.0))
    max_attempts: int = _opt(3, _range(1, 100))
    memory_limit_mb: int = _opt(2048, _range(64))
    gpu_overlap: bool = _opt(True)


@dataclass(frozen=True)
class PolicyConfig:
    """How scores become verdicts."""

    history_sections: int = _opt(5, _range(1, 1000))
    memory_sections: int = _opt(30, _range(1, 10_000))
    drop_ratio: float = _opt(0.5, _fraction)
    section_drop_ratio: float = _opt(0.6, _fraction)
    min_score: float = _opt(0.0, _range(0.0))
    empty_contrast: float = _opt(0.02, _fraction)
    sparse_contrast: float = _opt(0.04, _fraction)
    min_baseline: float = _opt(10.0, _range(0.0))
    partial_patch_drop: float = _opt(0.5, _fraction)
    partial_min_patches: int = _opt(1, _range(1, 100_000))
    fine_drop: float = _opt(0.15, _fraction)
    spectral_drop: float = _opt(0.36, _fraction)
    section_wide_fraction: float = _opt(0.5, _fraction)
    # A section-wide loss of fine detail that then holds for this many sections is a
    # lasting change in imaging: the new level becomes the reference (policy).
    regime_sections: int = _opt(2, _range(1, 100))
    calibration: Path | None = _opt(None)


@dataclass(frozen=True)
class AlertsConfig:
    """Who is told, and how often."""

    urls: list[str] = _opt([], _nonempty_strings, factory=True)
    apprise_config: Path | None = _opt(None)
    instance: str = _opt("", lambda v: None if len(v) <= 80 else "must be at most 80 characters")
    digest_minutes: float = _opt(10.0, _range(0.0, 1440))
    section_summary: bool = _opt(True)
    section_idle_minutes: float = _opt(30.0, _range(0.1, 10080))
    retry_initial_s: float = _opt(5.0, _range(0.1, 3600))
    retry_max_s: float = _opt(600.0, _range(1.0, 86400))
    thumbnail_px: int = _opt(256, _range(0, 2048))
    send_timeout_s: float = _opt(30.0, _range(1.0, 600))
    stall_minutes: float = _opt(30.0, _range(0.0, 10080))
    disk_min_free_mb: float = _opt(1024.0, _range(0.0))
    # Scoring falls behind (focuswatch.alarms): 0 turns each alarm off.
    behind_minutes: float = _opt(15.0, _range(0.0, 10080))
    endpoint_failing_minutes: float = _opt(15.0, _range(0.0, 10080))
    scheduler_lost_minutes: float = _opt(5.0, _range(0.0, 10080))


@dataclass(frozen=True)
class ClusterConfig:
    """Where scoring runs: in this process's workers, or on a Dask cluster."""

    scheduler: str = _opt("local", _one_of("local", "dask"))
    address: str = _opt("")
    on_unreachable: str = _opt("fallback", _one_of("fallback", "wait"))
    connect_timeout_s: float = _opt(10.0, _range(0.1, 3600))
    send_bytes: bool = _opt(False)
    restart_hung_workers: bool = _opt(True)


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format (JSON lines for journald, console on a terminal)."""

    level: str = _opt("info", _one_of("debug", "info", "warning", "error"))
    format: str = _opt("auto", _one_of("auto", "json", "console"))


def _host_names(v: Any) -> str | None:
    bad = [h for h in v if not h or h != h.strip() or any(c in h for c in "/@ ")]
    return None if not bad else f"must be host names, e.g. ['acq-pc.lab'] (got {bad[0]!r})"


def _host(v: Any) -> str | None:
    return (
        None if v.strip() and v == v.strip() else "must be a host name or address, e.g. '127.0.0.1'"
    )


def _token(v: Any) -> str | None:
    if len(v) < 16:
        return "must be at least 16 characters (e.g. the output of `openssl rand -hex 16`)"
    return (
        None
        if v.isprintable() and v == v.strip()
        else "must be printable, without spaces at the ends"
    )


@dataclass(frozen=True)
class WebConfig:
    """The operator console: a web page served by the daemon (``focuswatch.web``)."""

    enabled: bool = _opt(True)
    host: str = _opt("127.0.0.1", _host)
    port: int = _opt(8423, _range(1, 65535))
    # Dismissing or reopening a retake entry from the page needs this token; unset: off.
    token: str | None = _opt(None, _token)
    # Host names the page may be asked by (the Host header) besides the configured
    # host: a name of this machine on the lab network (DNS rebinding is refused).
    allowed_hosts: list[str] = _opt([], _host_names, factory=True)


#: What a hook's arguments may name, as ``{field}``: each argument is formatted on its
#: own and passed as one argument (never through a shell).
HOOK_FIELDS = (
    "event",
    "at",
    "section",
    "tile",
    "path",
    "position",
    "verdict",
    "score",
    "reason",
)


def _hook_command(v: Any) -> str | None:
    """A hook: a program and its arguments, ``{field}`` naming a ``HOOK_FIELDS`` entry."""
    if not v:
        return None  # no hook for this event
    if not all(isinstance(a, str) and a for a in v):
        return "must be a list of non-empty strings: the program, then its arguments"
    for arg in v:
        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(arg)]
        except ValueError as exc:
            return f"{arg!r} is not a valid template ({exc}); write {{{{ and }}}} for braces"
        fields = [(f, spec, conv) for f, spec, conv in parts if f is not None]
        if any(spec or conv for _, spec, conv in fields):
            return f"{arg!r}: a field is just its name, e.g. {{tile}} (no format spec, no !r)"
        unknown = [f for f, _, _ in fields if f not in HOOK_FIELDS]
        if unknown:
            return f"{arg!r} names {{{unknown[0]}}}; known: " + ", ".join(
                "{" + f + "}" for f in HOOK_FIELDS
            )
    return None


@dataclass(frozen=True)
class HooksConfig:
    """Commands run on events, for the acquisition side to react (``focuswatch.hooks``).

    Each is ``[program, arg, ...]``, run without a shell with the event as JSON on
    stdin; empty: nothing runs for that event.
    """

    tile_out_of_focus: list[str] = _opt([], _hook_command, factory=True)
    section_failing: list[str] = _opt([], _hook_command, factory=True)
    microscope_stalled: list[str] = _opt([], _hook_command, factory=True)
    timeout_s: float = _opt(30.0, _range(0.1, 3600.0))


@dataclass(frozen=True)
class Config:
    """The whole configuration, as the service uses it."""

    state_dir: Path = _opt(Path("/var/lib/focuswatch"))
    watch: WatchConfig = field(default_factory=WatchConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)


def _type_name(tp: Any) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path string",
    }
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return names.get(tp, str(tp))


def _coerce(tp: Any, value: Any) -> tuple[Any, str | None]:
    """Convert a TOML value to the field type, or say what was expected."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return _coerce(inner, value)
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value), None
        return None, "must be a list of strings"
    if tp is bool:
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, "must be an integer")
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # TOML allows nan and inf; no setting means them
            return None, "must be a finite number"
        return (float(value), None) if ok else (None, "must be a number")
    if tp is str:
        return (value, None) if isinstance(value, str) else (None, "must be a string")
    if tp is Path:
        ok = isinstance(value, str) and value != ""
        return (Path(value).expanduser(), None) if ok else (None, "must be a non-empty path")
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in this module, not user input


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        f = known.get(key)
        if f is None:
            problems.append(f"at '{where}': unknown key (allowed: {', '.join(sorted(known))})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"at '{where}': must be a table [{where}]")
                continue
            kwargs[key] = _build(tp, value, f"{where}.", problems)  # type: ignore[arg-type]
            continue
        converted, problem = _coerce(tp, value)
        check = f.metadata.get("check")
        if problem is None and check is not None and converted is not None:
            problem = check(converted)
        if problem:
            problems.append(f"at '{where}': {problem} (got {value!r})")
        else:
            kwargs[key] = converted
    try:
        return cls(**kwargs)
    except TypeError:  # a nested table was invalid; the problem is already listed
        return cls()


def _cross_checks(cfg: Config, problems: list[str]) -> None:
    if cfg.cluster.scheduler == "dask" and not cfg.cluster.address:
        problems.append(
            "at 'cluster.address': required when cluster.scheduler = 'dask' "
            "(e.g. 'tcp://scheduler:8786')"
        )
    if cfg.watch.layout == "pattern" and not cfg.watch.pattern:
        problems.append(
            "at 'watch.pattern': required when watch.layout = 'pattern' (a regex with "
            "named groups section, and row and col or position)"
        )
    if cfg.policy.sparse_contrast < cfg.policy.empty_contrast:
        problems.append("at 'policy.sparse_contrast': must be >= policy.empty_contrast")
    if cfg.alerts.retry_max_s < cfg.alerts.retry_initial_s:
        problems.append("at 'alerts.retry_max_s': must be >= alerts.retry_initial_s")
    # The notification URLs themselves are apprise's to judge: ``alerts.validate``, which
    # check-config and the service's start call (config knows no effect module).


def parse(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Build a Config from parsed TOML; raise ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    _cross_checks(cfg, problems)
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return typing.cast(Config, cfg)


def load(path: Path | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, source=str(path))


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Apply command-line values (``{"watch.path": ..., "state_dir": ...}``); None means unset.

    The values go through the same checks as the file, so a bad flag is reported
    with its key path too.
    """
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    if not nested:
        return cfg
    problems: list[str] = []
    merged = _merge(cfg, nested, "", problems)
    if problems:
        raise ConfigError([f"command line: {p}" for p in problems])
    return typing.cast(Config, merged)


def _merge(obj: Any, changes: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    updates: dict[str, Any] = {}
    for key, value in changes.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            updates[key] = _merge(current, value, f"{prefix}{key}.", problems)
            continue
        checked = _build(type(obj), {key: value}, prefix, problems)
        updates[key] = getattr(checked, key)
    return dataclasses.replace(obj, **updates)


def _masked(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://***" if sep else "***"


def describe(cfg: Config, *, redact_url: Callable[[str], str] = _masked) -> str:
    """The effective configuration as TOML-like text (for ``check-config`` and logs).

    Notification URLs carry secrets (tokens, passwords): each is shown only through
    ``redact_url`` (by default just its scheme; ``check-config`` passes
    ``focuswatch.alerts.redact_url``, which keeps what is not secret). ``web.token``
    is never shown.
    """
    top: list[str] = []
    tables: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            tables.append(f"\n[{f.name}]")
            for k in dataclasses.fields(value):
                shown = getattr(value, k.name)
                if isinstance(value, AlertsConfig) and k.name == "urls" and shown:
                    shown = [redact_url(u) for u in shown]
                if isinstance(value, WebConfig) and k.name == "token" and shown:
                    tables.append(f'{k.name} = "(set, not shown)"')
                    continue
                tables.append(_toml_line(k.name, shown))
        else:
            top.append(_toml_line(f.name, value))
    return "\n".join(top + tables)


def _toml_line(key: str, v: Any) -> str:
    # TOML has no null: an unset optional key is shown commented out.
    return f"# {key} = (not set)" if v is None else f"{key} = {_toml_value(v)}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Path):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
