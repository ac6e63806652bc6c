"""The ``focuswatch`` command: argument parsing and dispatch, nothing else.

Each subcommand hands over to the module named for its concept. Errors that an
operator can fix (bad config, missing folder, unreadable file) are printed as one
clear line and give a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from focuswatch import __version__, config, logs
from focuswatch.choices import BACKEND_NAMES
from focuswatch.errors import ConfigError, FocuswatchError, LedgerWriteError
from focuswatch.score import CRITERIA, MODES, RESOLUTIONS

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, else a usage error that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            what = "positive" if minimum == 1 else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def _nonblank(text: str) -> str:
    """An argparse type: text with something in it besides spaces."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (default: built-in defaults)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (default: info, or logging.level from the config)",
    )
    p.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help="JSON lines (for journald) or readable console; auto picks by terminal",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="focuswatch",
        description=(
            "Watch the folder your SEM writes tiles to, score every tile's focus as it "
            "arrives, alert on out-of-focus tiles and keep a retake list for the ATLAS "
            "operator while the wafer is still loaded."
        ),
    )
    parser.add_argument("--version", action="version", version=f"focuswatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="watch a folder and score tiles as they are written (the service)",
        description="Run the service: watch --watch for new tiles, score each one, record "
        "verdicts in --state, send alerts and keep the retake list up to date. "
        "Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--watch",
        type=Path,
        metavar="DIR",
        help="folder the microscope writes tiles into (watch.path in the config)",
    )
    p.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="folder for the ledger, retake list and alert outbox (state_dir)",
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        help="score on the GPU (CuPy) or CPU; auto uses a GPU when there is one",
    )
    p.add_argument(
        "--observer",
        choices=["auto", "inotify", "polling"],
        help="how to notice new files; polling is needed on network shares",
    )
    p.add_argument("--workers", type=int, help="scoring worker processes")
    p.add_argument(
        "--once",
        action="store_true",
        help="score what is in the folder now, then exit (no watching)",
    )
    p.add_argument(
        "--reset-ledger",
        action="store_true",
        help="the ledger is damaged: keep it aside (focuswatch.db.damaged-TIME) and start "
        "a new one; every tile in the watch folder is then scored and alerted again",
    )
    _add_config_args(p)

    p = sub.add_parser(
        "score",
        help="score TIFF files now and print the results",
        description="Score one or more TIFF tiles and print, per file: score (higher is "
        "sharper), focus map summary, time taken, backend and image size. "
        "Exit status 1 if any file could not be scored.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    # No defaults here: an unset flag falls back to [scoring] in --config (then built-ins).
    p.add_argument(
        "--criterion",
        choices=CRITERIA,
        help="focus measure (default: scoring.criterion, mhfd; the others are classic baselines)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="MHFD variant: fast (noise-robust, large scales decimated), exact (every "
        "level at full resolution; 'default' is its old name), faithful (the paper) "
        "(default: scoring.mode, fast)",
    )
    p.add_argument(
        "--resolution",
        choices=RESOLUTIONS,
        help="patches: focus map at native resolution; resized: whole tile at 1024x1024 "
        "as in the paper; native: whole tile, full size (default: scoring.resolution, "
        "patches)",
    )
    p.add_argument(
        "--patch-size",
        type=_int_at_least(1),
        metavar="PX",
        help="patch edge aimed at in pixels; in fast and exact mode a tile under twice it "
        "(512 px or more a side) is cut into 2x2 or more patches of its half-side "
        "(default: scoring.patch_size, 1024)",
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        help="where to score (default: scoring.backend, auto)",
    )
    _add_config_args(p)

    p = sub.add_parser(
        "calibrate",
        help="fit score against defocus from a through-focus series",
        description="From a through-focus series (tiles of one site at several working "
        "distances), find best focus, fit log(score) against |defocus| and save "
        "the calibration so verdicts can say how far out of focus a tile is.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="DIR|FILE")
    p.add_argument(
        "--focus-csv",
        type=Path,
        metavar="CSV",
        help="CSV of file,working_distance_um when the tiles carry no metadata",
    )
    p.add_argument(
        "--pattern",
        metavar="REGEX",
        help="regex with one group giving the working distance (µm) from the name",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=Path("calibration.json"),
        help="where to save the calibration (default: calibration.json)",
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="write a plot of the fit")
    _add_config_args(p)

    p = sub.add_parser(
        "retakes",
        help="show or edit the list of tiles to re-image",
        description="The retake list: tiles that came out of focus and should be re-imaged "
        "before the wafer is unloaded. A good retake closes its entry by itself.",
    )
    p.add_argument("--state", type=Path, metavar="DIR", help="the service's state folder")
    p.add_argument("--format", choices=["text", "csv", "json"], default="text")
    p.add_argument(
        "--section",
        metavar="S",
        help="only this section, however written: 7, 007, S_007 or its folder name",
    )
    p.add_argument("--open", action="store_true", help="only entries still to re-image")
    rsub = p.add_subparsers(dest="retakes_action", metavar="ACTION")
    for action, what, why in (
        (
            "dismiss",
            "mark an entry as not needing a retake",
            "why it is dismissed (kept in the list)",
        ),
        (
            "reopen",
            "put a dismissed or fixed entry back on the list",
            "why it is reopened (kept in its history)",
        ),
    ):
        e = rsub.add_parser(action, help=what)
        e.add_argument("id", type=_int_at_least(1), metavar="ID")
        e.add_argument("--note", required=True, type=_nonblank, help=why)
        e.add_argument(
            "--state",
            type=Path,
            metavar="DIR",
            dest="dismiss_state",
            help="the service's state folder (default: state_dir from --config, else "
            "/var/lib/focuswatch)",
        )
    _add_config_args(p)

    p = sub.add_parser(
        "status",
        help="what the service is doing: counts, backlog, recent verdicts",
        description="Read-only summary of the state folder; safe while the service runs.",
    )
    p.add_argument("--state", type=Path, metavar="DIR", help="the service's state folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--last", type=_int_at_least(0), default=10, metavar="N", help="recent verdicts to show"
    )
    _add_config_args(p)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration file and report every problem",
        description="Check a TOML configuration file and everything `run` checks before "
        "it starts (watch and state folders, calibration file, GPU). Prints every problem "
        "with its key path and exits 2, or prints the effective configuration and exits 0.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--watch", type=Path, metavar="DIR", help="check with this watch folder")
    p.add_argument("--state", type=Path, metavar="DIR", help="check with this state folder")
    p.add_argument(
        "--syntax-only",
        action="store_true",
        help="check only the file's keys and values, not the folders it names (a template)",
    )

    p = sub.add_parser(
        "unit-dropin",
        help="print the systemd drop-in for this configuration's folders",
        description="Prints the drop-in that fits the systemd unit to the folders in the "
        "configuration (RequiresMountsFor=, ReadOnlyPaths=, ProtectHome= for a folder under "
        "/home). Install it with: focuswatch unit-dropin --config FILE | sudo tee "
        "/etc/systemd/system/focuswatch.service.d/folders.conf",
    )
    p.add_argument("--watch", type=Path, metavar="DIR", help="the folder the microscope writes")
    p.add_argument("--state", type=Path, metavar="DIR", help="the service's state folder")
    _add_config_args(p)

    p = sub.add_parser(
        "demo",
        help="rehearse: generate a small synthetic wafer and run the service on it",
        description="Generates a small wafer of synthetic SEM tiles (some out of focus, one "
        "empty, one corrupt) in a temporary folder, runs the real service on it "
        "and prints what an operator would see.",
    )
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="generate into DIR and keep it, instead of a temporary folder",
    )
    p.add_argument("--seed", type=int, default=7)
    _add_config_args(p)

    p = sub.add_parser(
        "synth",
        help="write a synthetic acquisition (ATLAS, MultiSEM or SBEMimage) for rehearsals",
        description="Write a rehearsal acquisition of synthetic SEM tiles, some of them out "
        "of focus, empty or corrupt, as ATLAS 5 (section folders, FibicsXML), MultiSEM "
        "(mFoV folders of beam images, full_image_coordinates.txt) or SBEMimage (tiles/g/t "
        "folders, image list) writes it.",
    )
    p.add_argument("out", type=Path, metavar="DIR")
    p.add_argument(
        "--layout",
        choices=["atlas", "multisem", "sbemimage"],
        default="atlas",
        help="which microscope's files to write (rows/cols are mFoV/beam, grid/tile)",
    )
    p.add_argument("--sections", type=_int_at_least(1), default=3)
    p.add_argument("--rows", type=_int_at_least(1), default=3)
    p.add_argument("--cols", type=_int_at_least(1), default=3)
    p.add_argument("--size", type=_int_at_least(1), default=1024, metavar="PX")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8)
    p.add_argument("--dose", type=float, default=30.0, help="electrons per pixel")
    p.add_argument(
        "--blur-fraction", type=float, default=0.1, help="fraction of tiles written out of focus"
    )
    p.add_argument(
        "--blur-sigmas",
        type=_sigmas,
        default=(2.0, 4.0),
        metavar="S,S,...",
        help="the blurs (Gaussian σ, px) of the out-of-focus tiles, in turn (default 2,4)",
    )
    p.add_argument("--empty", type=_int_at_least(0), default=0, metavar="N", help="empty tiles")
    p.add_argument(
        "--corrupt", type=_int_at_least(0), default=0, metavar="N", help="truncated tiles"
    )
    p.add_argument(
        "--focus-series",
        type=_int_at_least(3),
        default=0,
        metavar="STEPS",
        help="instead of a wafer: a through-focus series of one site (0.5 µm steps, the "
        "working distance in each tile's FibicsXML) to rehearse `focuswatch calibrate`",
    )
    p.add_argument("--seed", type=int, default=0)
    _add_config_args(p)
    return parser


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"blurs must be numbers > 0: {text!r}")
    return values


def _settings(args: argparse.Namespace) -> config.Config:
    """The config file plus command-line overrides; also configures logging once."""
    cfg = config.load(getattr(args, "config", None))
    overrides: dict[str, Any] = {
        "logging.level": getattr(args, "log_level", None),
        "logging.format": getattr(args, "log_format", None),
    }
    if args.command == "run":
        overrides |= {
            "watch.path": args.watch,
            "state_dir": args.state,
            "scoring.backend": args.backend,
            "watch.observer": args.observer,
            "scoring.workers": args.workers,
        }
    elif args.command == "demo" and args.log_level is None:
        # The demo prints what an operator sees; service logs would only bury it.
        overrides["logging.level"] = "error"
    elif args.command == "unit-dropin":
        overrides |= {"watch.path": args.watch, "state_dir": args.state}
    elif args.command in ("status", "retakes"):
        overrides["state_dir"] = args.state or getattr(args, "dismiss_state", None)
    cfg = config.with_overrides(cfg, overrides)
    logs.configure(cfg.logging.level, cfg.logging.format)
    return cfg


def _check_config(args: argparse.Namespace) -> int:
    from focuswatch import alerts, app

    cfg = config.load(args.file)
    if args.syntax_only:
        problems = alerts.validate(cfg)  # a URL apprise cannot parse is a bad value
    else:
        cfg = config.with_overrides(cfg, {"watch.path": args.watch, "state_dir": args.state})
        problems = app.preflight(cfg)
    if problems:
        raise ConfigError([f"{args.file}: {p}" for p in problems])
    print(f"{args.file}: OK" + (" (syntax and values only)" if args.syntax_only else ""))
    if not args.syntax_only:
        print("# not checked here: " + "; ".join(app.NOT_CHECKED))
    print(config.describe(cfg, redact_url=alerts.redact_url))
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return _check_config(args)
    cfg = _settings(args)
    if args.command == "run":
        from focuswatch import app

        return app.main(cfg, once=args.once, reset_ledger=args.reset_ledger)
    if args.command == "unit-dropin":
        from focuswatch import unit

        print(unit.dropin(cfg), end="")
        return EXIT_OK
    if args.command == "score":
        from focuswatch import scoring

        # A flag given wins; otherwise [scoring] from --config (or the built-in default).
        names = ("criterion", "mode", "resolution", "patch_size", "backend")
        options = {
            n: getattr(cfg.scoring, n) if getattr(args, n) is None else getattr(args, n)
            for n in names
        }
        return scoring.main(
            args.files,
            as_json=args.json,
            memory_limit_mb=cfg.scoring.memory_limit_mb,
            **options,
        )
    if args.command == "calibrate":
        from focuswatch import calibrate

        return calibrate.main(
            args.inputs,
            focus_csv=args.focus_csv,
            pattern=args.pattern,
            out=args.out,
            plot=args.plot,
            cfg=cfg,
        )
    if args.command == "retakes":
        from focuswatch import retakes

        if args.retakes_action == "dismiss":
            return retakes.dismiss_main(cfg, args.id, note=args.note)
        if args.retakes_action == "reopen":
            return retakes.reopen_main(cfg, args.id, note=args.note)
        return retakes.list_main(cfg, fmt=args.format, section=args.section, only_open=args.open)
    if args.command == "status":
        from focuswatch import status

        return status.main(cfg, as_json=args.json, last=args.last)
    if args.command == "demo":
        from focuswatch import demo

        return demo.main(cfg, keep=args.keep, seed=args.seed)
    if args.command == "synth":
        from focuswatch import synth

        return synth.main(
            args.out,
            sections=args.sections,
            rows=args.rows,
            cols=args.cols,
            size=args.size,
            bits=args.bits,
            dose=args.dose,
            blur_fraction=args.blur_fraction,
            seed=args.seed,
            empty=args.empty,
            corrupt=args.corrupt,
            blur_sigmas=args.blur_sigmas,
            focus_series=args.focus_series,
            layout=args.layout,
        )
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts choices


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print("configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerWriteError as exc:
        # The hint only where access is what is missing (not a full or busy disk).
        access = any(w in str(exc).lower() for w in ("readonly", "read-only", "permission"))
        hint = (
            "; this command changes the ledger: run it as the service's user "
            "(sudo -u focuswatch focuswatch ...), which can write the state folder"
        )
        print(f"focuswatch {args.command}: {exc}{hint if access else ''}", file=sys.stderr)
        return EXIT_FAILURE
    except FocuswatchError as exc:
        print(f"focuswatch {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # a bad option value that only the module could check
        print(f"focuswatch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
