"""The systemd drop-in that fits the unit to this site's folders, made from the config.

The unit in ``systemd/focuswatch.service`` is the same everywhere; what differs per
site is derived here from ``watch.path`` and ``state_dir``, so the watch folder is set
in one place (the configuration) and never edited into the unit by hand:

- ``RequiresMountsFor=``: the service starts only once a network share holding the
  watch folder (or the state folder) is mounted, and stops before it is unmounted;
- ``ReadOnlyPaths=``: the watch folder is only ever read;
- a folder under ``/home``, ``/root`` or ``/run/user`` (which the unit's
  ``ProtectHome=yes`` would hide without a word): ``ProtectHome=tmpfs`` and that folder
  alone bound in (``BindReadOnlyPaths=`` the watch folder, ``BindPaths=`` the state
  folder), so the rest of the home folders stays hidden;
- ``ReadWritePaths=`` for a state folder other than ``/var/lib/focuswatch`` (the
  unit's ``StateDirectory=``), which ``ProtectSystem=strict`` would make read-only.

A folder under ``/tmp`` or ``/var/tmp`` is refused: the unit's ``PrivateTmp=yes`` gives
the service a /tmp of its own, in which the microscope's files are not.
"""

from __future__ import annotations

import os

from focuswatch.config import Config
from focuswatch.errors import ConfigError

__all__ = ["DROPIN_PATH", "dropin"]

DROPIN_PATH = "/etc/systemd/system/focuswatch.service.d/folders.conf"
_STATE_DIRECTORY = "/var/lib/focuswatch"
_HOMES = ("/home", "/root", "/run/user")
_TMPS = ("/tmp", "/var/tmp")


def _quoted(path: str) -> str:
    """A path as a unit file takes it: ``%`` doubled (specifiers), quoted if it has spaces."""
    if any(c in path for c in "\n\"'\\"):
        raise ConfigError(f"cannot write {path!r} into a systemd unit: rename the folder")
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def dropin(cfg: Config) -> str:
    """The drop-in's text for ``cfg`` (``watch.path`` required)."""
    if cfg.watch.path is None:
        raise ConfigError("at 'watch.path': required (give --watch DIR or set watch.path)")
    watch = os.path.realpath(cfg.watch.path)
    state = os.path.realpath(cfg.state_dir)
    for key, folder in (("watch.path", watch), ("state_dir", state)):
        if _under(folder, _TMPS):
            raise ConfigError(
                f"at '{key}': {folder!r} is under /tmp or /var/tmp, which the service does "
                "not see (PrivateTmp=yes gives it a /tmp of its own): use another folder"
            )
    lines = [
        "# Made by `focuswatch unit-dropin` from the configuration: make it again after",
        "# changing watch.path or state_dir, then `systemctl daemon-reload`.",
        "[Unit]",
        f"RequiresMountsFor={_quoted(watch)} {_quoted(state)}",
        "",
        "[Service]",
        f"ReadOnlyPaths={_quoted(watch)}",
    ]
    if _under(watch, _HOMES) or _under(state, _HOMES):
        lines.append("# Under a home folder: the homes stay hidden but for this folder.")
        lines.append("ProtectHome=tmpfs")
        if _under(watch, _HOMES):
            lines.append(f"BindReadOnlyPaths={_quoted(watch)}")
        if _under(state, _HOMES):
            lines.append(f"BindPaths={_quoted(state)}")
    if state != _STATE_DIRECTORY and not _under(state, _HOMES):
        # '-': a state folder not made yet must not stop the unit (226/NAMESPACE); the
        # service then says it cannot create it.
        lines.append(f"ReadWritePaths=-{_quoted(state)}")
    return "\n".join(lines) + "\n"
