"""focuswatch: score SEM tiles for focus as the microscope writes them.

The public names are few on purpose; everything else is reached through the
modules named for their concept (``focuswatch.score``, ``focuswatch.tiles``,
``focuswatch.ledger`` ...).
"""

from focuswatch.errors import (
    BackendError,
    ConfigError,
    FocuswatchError,
    StateError,
    TileError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ConfigError",
    "FocuswatchError",
    "StateError",
    "TileError",
    "__version__",
]
