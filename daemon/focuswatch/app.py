"""The composition root: every part of the service built from the configuration, once.

``build_service`` checks what must hold before anything is opened (the GPU asked for,
the watch and state folders), takes the state folder's lock, opens the ledger, checks
that its scores were made the way this configuration scores, loads the calibration and
builds the executor (lazily: worker processes start in ``Service.start``) and the sinks
(retake list, alerts, web console; none starts anything until ``Service.start``). The
``Service`` only runs them. ``preflight`` is the same checks for ``check-config``;
``main`` is ``focuswatch run``: signals, waiting for a writable state folder, the loop.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from focuswatch import sdnotify
from focuswatch.choices import is_revision, same_scores, scorer_revision
from focuswatch.config import Config
from focuswatch.errors import BackendError, ConfigError, LedgerWriteError, StateError
from focuswatch.executor import Executor
from focuswatch.ledger import DB_NAME, Ledger, set_aside
from focuswatch.scoring import ScoreFn
from focuswatch.service import FAULT_REMIND_S, FAULT_RETRY_S, Service, Sink
from focuswatch.statelock import StateLock
from focuswatch.verdict import Verdict

if TYPE_CHECKING:
    from focuswatch.policy import DefocusModel

__all__ = ["NOT_CHECKED", "STOP_SIGNALS", "build_executor", "build_service", "main", "preflight"]

log = structlog.get_logger("focuswatch.app")

# Signals that stop the service in order (hand tiles in flight back, exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def build_service(
    cfg: Config,
    *,
    sinks: Sequence[Sink] | None = None,
    clock: Callable[[], float] = time.time,
    executor: Executor | None = None,
    builtin_sinks: bool = True,
    score_fn: ScoreFn | None = None,
    notifier: sdnotify.Notifier | None = None,
    decide: Callable[..., Verdict] | None = None,
) -> Service:
    """The service for ``cfg``, built and not started (``Service.start`` starts it).

    ``sinks`` are added after the built-in ones (``builtin_sinks=False``: only them);
    ``executor``, ``score_fn``, ``decide`` and ``notifier`` replace the configured
    parts (tests, benches). Raises ``ConfigError``, ``StateError`` (a second service,
    a damaged ledger), ``BackendError``, and ``LedgerWriteError`` when the state folder
    cannot be written now; whatever was opened is closed again.
    """
    _watch_folder(cfg)
    # Before anything is opened or started: without the GPU asked for, every tile would
    # fail one by one; refuse to start instead.
    _backend_usable(cfg)
    # Before the ledger is touched: a second service's start-up recovery would hand the
    # first one's tiles in flight back to 'ready'.
    lock = StateLock(_state_folder(cfg))
    lock.acquire()
    opened: list[Any] = []
    try:
        ledger = Ledger.open(cfg.state_dir, clock=clock)
        opened.append(ledger)
        _same_scoring(cfg, ledger)
        calibration = None
        if decide is None:
            from focuswatch import policy

            calibration = _calibration(cfg)
            decide = policy.decide
        built = _builtin_sinks(cfg, ledger, clock) if builtin_sinks else []
        make_executor: Callable[[], Executor] = (
            (lambda: executor)
            if executor is not None
            else functools.partial(build_executor, cfg, score_fn=score_fn)
        )
        return Service(
            cfg,
            lock=lock,
            ledger=ledger,
            make_executor=make_executor,
            sinks=[*built, *(sinks or [])],
            decide=decide,
            calibration=calibration,
            clock=clock,
            notifier=notifier or sdnotify.Notifier(),
        )
    except BaseException:  # e.g. a bad calibration file: do not leak the open ledger
        for part in opened:
            with contextlib.suppress(Exception):
                part.close()
        lock.release()
        raise


#: What a score depends on besides the tile: scores made otherwise are not comparable,
#: so one ledger (one wafer's history) holds scores of one kind only.
_SCORING_KEYS = ("criterion", "mode", "resolution", "patch_size")


#: The mode of every release before the settings were recorded: its default.
_MODE_BEFORE_RECORDING = "exact"


def _recorded_scoring(ledger: Ledger) -> tuple[bool, dict[str, Any] | None]:
    """Whether the ledger holds scores, and the scoring settings it recorded (None: none)."""
    meta = ledger.get_meta("scoring")
    recorded = None if meta is None else meta[0]
    return ledger.has_scores(), recorded if isinstance(recorded, dict) else None


def _scoring_problems(cfg: Config, scored: bool, recorded: dict[str, Any] | None) -> list[str]:
    """How ``cfg`` scores differently from the ledger's earlier results (key paths).

    The policy compares each tile with its position's earlier scores; scores of another
    mode or patch size would be mixed into that history without a word. A ledger whose
    tiles were scored before the settings were recorded (an earlier release) is taken
    as scored in that release's default mode, exact: the default is fast now, and a
    wafer begun then must not go on in fast mode unnoticed. Nor with the same settings
    under another revision of the scorer (``choices.scorer_revision``): those numbers
    differ too (so such a ledger goes on only where the revision is still 1: the
    classic criteria; MHFD's exact mode is refused as revision 1).
    """
    if not scored:
        return []
    if recorded is None:
        if _comparable("mode", cfg.scoring.mode) == _MODE_BEFORE_RECORDING:
            return _revision_problem(cfg, recorded)
        return [
            f"at 'scoring.mode': this state folder's tiles were scored by an earlier "
            f"release, which did not record how; its default mode was "
            f"{_MODE_BEFORE_RECORDING!r}, and {cfg.scoring.mode!r} scores are not "
            f"comparable with those. Set scoring.mode = {_MODE_BEFORE_RECORDING!r} to go on "
            "with this wafer (or, if your configuration said mode = 'fast' then too, "
            "start this wafer's remaining sections in a new state folder)"
        ]
    keys = [
        f"at 'scoring.{k}': this state folder's tiles were scored with {k} = "
        f"{recorded[k]!r}, not {getattr(cfg.scoring, k)!r}; scores made otherwise are not "
        "comparable with them. Set it back, or use a new state folder for a new wafer"
        for k in _SCORING_KEYS
        if k in recorded and _comparable(k, recorded[k]) != _comparable(k, getattr(cfg.scoring, k))
    ]
    return keys or _revision_problem(cfg, recorded)


def _revision_problem(cfg: Config, recorded: dict[str, Any] | None) -> list[str]:
    """A ledger scored by another revision of the same scorer (one that recorded no
    revision: 1)."""
    then = 1 if recorded is None else recorded.get("revision", 1)
    now = scorer_revision(cfg.scoring.criterion, cfg.scoring.mode)
    if not is_revision(then):  # damaged or edited by hand
        return [
            f"at 'scoring': this state folder records its scorer's revision as {then!r}, "
            "which this release cannot read; whether its scores are comparable with "
            f"this release's (revision {now}) is unknown. Score the rest of this wafer "
            "in a new state folder"
        ]
    if then == now:
        return []
    return [
        f"at 'scoring': this state folder's tiles were scored by revision {then} of "
        f"focuswatch's {cfg.scoring.criterion} {cfg.scoring.mode!r} scorer, and this "
        f"release scores with revision {now}; the two give different numbers for the "
        "same tile, and a tile is judged against its position's earlier scores. Finish "
        "this wafer with the release that began it, or score the rest of it in a new "
        "state folder"
    ]


def _comparable(key: str, value: Any) -> Any:
    return same_scores(str(value)) if key == "mode" else value


def _same_scoring(cfg: Config, ledger: Ledger) -> None:
    """Refuse to score otherwise than the ledger's results; record how this run scores."""
    scored, recorded = _recorded_scoring(ledger)
    problems = _scoring_problems(cfg, scored, recorded)
    if problems:
        raise ConfigError(problems)
    wanted: dict[str, Any] = {k: getattr(cfg.scoring, k) for k in _SCORING_KEYS}
    wanted["revision"] = scorer_revision(cfg.scoring.criterion, cfg.scoring.mode)
    if recorded is None and scored:
        log.warning(
            "scoring_settings_unknown",
            reason="this ledger's tiles were scored before focuswatch recorded how: taken "
            f"as mode {_MODE_BEFORE_RECORDING!r} (that release's default) and the other "
            "settings as configured now",
            recorded=wanted,
            consequence="from now on a change of these settings is refused",
        )
    if recorded != wanted:
        ledger.set_meta("scoring", wanted)


def _scoring_unchanged(cfg: Config) -> None:
    """For ``check-config``: the same check on an existing ledger, read-only.

    A ledger that cannot be read from here (no access, an older schema that ``run``
    migrates, damage that ``run`` reports) is left to ``run``: this check is about the
    scores in it, not about opening it."""
    try:
        if not (Path(cfg.state_dir) / DB_NAME).is_file():
            return
        ledger = Ledger.open(cfg.state_dir, readonly=True)
    except (OSError, StateError):
        return
    try:
        problems = _scoring_problems(cfg, *_recorded_scoring(ledger))
    finally:
        ledger.close()
    if problems:
        raise ConfigError(problems)


def build_executor(cfg: Config, *, score_fn: ScoreFn | None = None) -> Executor:
    """Dask when ``cluster.scheduler = "dask"``, else local worker processes."""
    if cfg.cluster.scheduler == "dask":
        from focuswatch import cluster

        return cluster.connect(cfg, score_fn=score_fn)
    from focuswatch.worker import local_executor

    return local_executor(cfg, score_fn=score_fn)


def _builtin_sinks(cfg: Config, ledger: Ledger, clock: Callable[[], float]) -> list[Sink]:
    """The retake and alert sinks, in that order: an alert names the retake entry (its
    id) its tile opened, so the retake list must have seen the verdict first. Then the
    event hooks, when any is configured, and the web console (its server thread; a port
    in use is one log line), when enabled."""
    from focuswatch import alerts, hooks, retakes

    sinks: list[Sink] = [
        retakes.build_sink(cfg, ledger, clock=clock),
        alerts.build_sink(cfg, ledger, clock=clock),
    ]
    hook_sink = hooks.build_sink(cfg.hooks, ledger, clock=clock)
    if hook_sink is not None:
        sinks.append(hook_sink)
    if cfg.web.enabled:
        from focuswatch.web import WebConsole

        sinks.append(WebConsole(cfg.web, cfg.state_dir, clock=clock))
    return sinks


def _state_folder(cfg: Config) -> Path:
    """The state folder, created if need be (StateError if it cannot be)."""
    state = Path(cfg.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create state folder {state}: {exc.strerror or exc}") from None
    return state


def _backend_usable(cfg: Config) -> None:
    """Probe the GPU once, at start, when local workers are to use one.

    With Dask the GPUs are the workers', not this machine's: each task says so itself.
    """
    if cfg.scoring.backend != "gpu" or cfg.cluster.scheduler == "dask":
        return
    from focuswatch.backend import get_backend

    try:
        backend = get_backend("gpu")
    except BackendError as exc:
        raise BackendError(
            f"scoring.backend = 'gpu' but this machine cannot score on a GPU: {exc} "
            "(use --backend cpu or auto)"
        ) from None
    log.info("backend_checked", backend=backend.name, device=backend.device)


def _watch_folder(cfg: Config) -> Path:
    """``watch.path``; the state folder may not lie in it (the service would score itself)."""
    if cfg.watch.path is None:
        raise ConfigError("at 'watch.path': required (give --watch DIR or set watch.path)")
    watch = os.path.realpath(cfg.watch.path)
    state = os.path.realpath(cfg.state_dir)
    if state == watch or state.startswith(watch.rstrip("/") + "/"):
        raise ConfigError(
            f"at 'state_dir': the state folder {str(cfg.state_dir)!r} is inside the watch "
            f"folder {str(cfg.watch.path)!r}; the service would watch (and score) its own "
            "files: put it outside"
        )
    return Path(cfg.watch.path)


def _state_writable(cfg: Config) -> None:
    """StateError if the state folder can never be used as configured; LedgerWriteError
    if it cannot be written now (a read-only mount, which may come back read-write)."""
    state = _state_folder(cfg)
    if os.access(state, os.W_OK | os.X_OK):
        return
    try:
        readonly_mount = bool(os.statvfs(state).f_flag & os.ST_RDONLY)
    except OSError:
        readonly_mount = False
    if readonly_mount:
        raise LedgerWriteError(f"the state folder {state} is on a read-only file system")
    raise StateError(f"state folder {state} is not writable")


def _watch_usable(cfg: Config) -> None:
    watch = _watch_folder(cfg)
    if watch.exists() and not watch.is_dir():
        raise ConfigError(f"at 'watch.path': {str(watch)!r} is a file, not a folder")
    if not watch.is_dir():
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} does not exist")
    if not os.access(watch, os.R_OK | os.X_OK):
        raise ConfigError(f"at 'watch.path': folder {str(watch)!r} is not readable")


def _state_usable_without_creating(cfg: Config) -> None:
    state = Path(cfg.state_dir)
    if state.exists():
        if not state.is_dir():
            raise StateError(f"at 'state_dir': {str(state)!r} is a file, not a folder")
        if not os.access(state, os.W_OK | os.X_OK):
            raise StateError(f"at 'state_dir': folder {str(state)!r} is not writable")
        return
    parent = state.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise StateError(
            f"at 'state_dir': folder {str(state)!r} does not exist and cannot be created "
            f"({str(parent)!r} is not a writable folder)"
        )


def _alerts_usable(cfg: Config) -> None:
    """Every notification URL one that apprise can use (ConfigError with key paths)."""
    if cfg.alerts.urls or cfg.alerts.apprise_config is not None:
        from focuswatch import alerts  # apprise is slow to import: only when alerts are set

        problems = alerts.validate(cfg)
        if problems:
            raise ConfigError(problems)


def _calibration_usable(cfg: Config) -> None:
    _calibration(cfg)


def _calibration(cfg: Config) -> DefocusModel | None:
    """``policy.calibration``, made from scores this service's settings give: a fit of
    another mode, patch size or scorer revision turns scores into wrong µm."""
    from focuswatch import calibrate, policy

    cal = policy.load_calibration(cfg.policy)
    if not isinstance(cal, calibrate.Calibration):
        return cal
    sc = cfg.scoring
    now = (
        sc.criterion,
        same_scores(sc.mode),
        sc.resolution,
        sc.patch_size,
        scorer_revision(sc.criterion, sc.mode),
    )
    then = cal.made_with()
    if then != now:
        raise ConfigError(
            f"at 'policy.calibration': made from {then[0]} {then[1]!r} scores "
            f"(resolution {then[2]!r}, patch_size {then[3]}, scorer revision {then[4]}); "
            f"this service scores {now[0]} {now[1]!r} (resolution {now[2]!r}, patch_size "
            f"{now[3]}, revision {now[4]}), so its µm "
            "estimates would be wrong. Make it again with `focuswatch calibrate` under "
            "these settings, or leave policy.calibration unset"
        )
    return cal


# What ``check-config`` cannot check from here: it needs the running service's network.
NOT_CHECKED = (
    "alert endpoints answering (delivery is tried when the service runs)",
    "the Dask scheduler being reachable (cluster.address)",
)


def preflight(cfg: Config) -> list[str]:
    """Every problem ``run`` would refuse to start with, without starting or creating anything.

    For ``check-config``: the notification URLs, the watch folder, the state folder,
    the calibration file, the GPU (when asked for with local workers) and, for a state
    folder with a ledger, that tiles are scored as its earlier tiles were.
    """
    problems: list[str] = []
    checks: tuple[Callable[[Config], object], ...] = (
        _alerts_usable,
        _watch_usable,
        _state_usable_without_creating,
        _calibration_usable,
        _backend_usable,
        _scoring_unchanged,
    )
    for check in checks:
        try:
            check(cfg)
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (StateError, BackendError) as exc:
            problems.append(str(exc))
    return problems


def _when_writable(cfg: Config, stop: threading.Event) -> Service | None:
    """The service, once its state folder can be written; None if stopped meanwhile.

    A full disk or a read-only mount at start is waited out (retried every
    ``FAULT_RETRY_S``, said once and reminded every ``FAULT_REMIND_S``), as it is while
    running: exiting would only have systemd restart it into the same fault, over and
    over. systemd is told the service is up (and fed its watchdog) while it waits.
    """
    notifier = sdnotify.Notifier()
    waiting_since: float | None = None
    remind = 0.0
    while True:
        try:
            _state_writable(cfg)
            service = build_service(cfg)
        except ConfigError as exc:  # found only now it has the ledger: tell, not just log
            _tell_directly(
                cfg,
                "failure",
                "focuswatch refused to start: its configuration does not fit this state folder",
                "\n".join(exc.problems),
            )
            raise
        except LedgerWriteError as exc:
            now = time.monotonic()
            if waiting_since is None:
                waiting_since, remind = now, now + FAULT_REMIND_S
                log.error(
                    "state_unwritable",
                    reason=str(exc),
                    action="not started: waiting for the state folder to be writable; "
                    f"retrying every {FAULT_RETRY_S:g} s",
                )
                notifier.ready("waiting for the state folder to be writable")
                _tell_directly(
                    cfg,
                    "failure",
                    "focuswatch cannot start: its state folder cannot be written",
                    f"{exc}\nNo tile is scored until it can; it retries every "
                    f"{FAULT_RETRY_S:g} s and starts by itself.",
                )
            elif now >= remind:
                remind = now + FAULT_REMIND_S
                log.error(
                    "state_still_unwritable", reason=str(exc), for_s=round(now - waiting_since)
                )
            notifier.watchdog()
            if stop.wait(FAULT_RETRY_S):
                return None
        else:
            if waiting_since is not None:
                _tell_directly(
                    cfg,
                    "success",
                    "focuswatch started: its state folder can be written again",
                    f"After {round(time.monotonic() - waiting_since)} s of waiting.",
                )
            return service


def _tell_directly(cfg: Config, severity: str, title: str, body: str) -> None:
    """A health message straight to each alert endpoint, before any ledger exists.

    Best effort: each endpoint in a thread of its own, waited for a few seconds at
    most; its failure is logged and changes nothing.
    """
    if not (cfg.alerts.urls or cfg.alerts.apprise_config is not None):
        return
    from focuswatch import alerts
    from focuswatch.outbox import Alert

    try:
        endpoints = alerts.build_endpoints(cfg.alerts, thumbnail_dir=Path(cfg.state_dir))
    except Exception as exc:  # an endpoint that cannot even be built: said, not fatal
        log.warning("health_alert_failed", error=repr(exc))
        return
    name = alerts.instance_name(cfg.alerts)
    alert = Alert(
        key=f"health:{time.time():.0f}",
        kind="health",
        section=None,
        title=f"[{name}] {title}",
        body=body,
        severity=severity,
    )

    def send(endpoint: Any) -> None:
        try:
            endpoint.notify(alert)
        except Exception as exc:  # DeliveryError and anything apprise raises
            log.warning("health_alert_failed", endpoint=endpoint.name, error=str(exc))

    threads = [threading.Thread(target=send, args=(e,), daemon=True) for e in endpoints]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)


def _stop_on_signal(
    stop: threading.Event, received: list[int]
) -> Callable[[int, FrameType | None], None]:
    """A signal handler that only notes the signal and sets ``stop``.

    Nothing else may run in a handler: it interrupts the main thread anywhere, even
    inside a log call holding the logger's (non-reentrant) lock, so logging here could
    deadlock. The main loop logs ``stop_requested`` once it sees ``stop``.
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    return on_signal


def main(cfg: Config, *, once: bool = False, reset_ledger: bool = False) -> int:
    """``focuswatch run``: run the service until SIGTERM/SIGINT (or, with ``once``, done).

    ``reset_ledger``: a damaged ledger is moved aside and a new one started (refused for
    a healthy one).
    """
    _alerts_usable(cfg)
    _watch_usable(cfg)
    if reset_ledger:
        lock = StateLock(cfg.state_dir)  # never move a ledger a running service has open
        lock.acquire()
        try:
            aside = set_aside(cfg.state_dir)
        finally:
            lock.release()
        log.warning(
            "ledger_reset",
            damaged_kept_at=None if aside is None else str(aside),
            consequence="every tile in the watch folder is scored again, and alerts for "
            "bad ones are sent again",
        )
    stop = threading.Event()
    received: list[int] = []
    on_signal = _stop_on_signal(stop, received)

    def why() -> dict[str, Any]:
        return {"signal": signal.Signals(received[0]).name} if received else {}

    # SIGHUP (the terminal went away, or ``kill -HUP``) is a logged, orderly stop like
    # SIGTERM: configuration is read once at start, so there is nothing to reload.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        service = _when_writable(cfg, stop)
        if service is None:
            log.info("stop_requested", **why(), while_waiting="for the state folder")
            return 0
        service.run_until(stop, once=once, why=why)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
