"""The exception tree: small, so callers can catch exactly what they handle.

::

    FocuswatchError
    ├── ConfigError       bad or unreadable configuration (all problems, with key paths)
    ├── StateError        the state folder or ledger cannot be used
    │   └── LedgerWriteError  a write failed (disk full, read-only, I/O): the service waits
    ├── TileError         one tile cannot be read or scored (recorded, never fatal)
    └── BackendError      the requested array backend (GPU) is not usable

Input validation in the pure scoring core raises ``ValueError`` (as NumPy and
scikit-image do); the service turns it into a ``TileError`` for that tile.
"""

from __future__ import annotations


class FocuswatchError(Exception):
    """Base of every error focuswatch raises on purpose."""


class ConfigError(FocuswatchError):
    """Configuration problems, each as ``at 'section.key': what is allowed``."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class StateError(FocuswatchError):
    """The state folder or ledger cannot be created, opened or written."""


class LedgerWriteError(StateError):
    """A ledger write failed for a reason outside focuswatch (disk full, read-only, I/O).

    Nothing was changed (the transaction rolled back). The service holds its work,
    says so, and retries until the write goes through.
    """


class TileError(FocuswatchError):
    """One tile cannot be read or scored; ``reason`` is for the operator."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class BackendError(FocuswatchError):
    """The array backend asked for (e.g. a GPU) is not available here."""
