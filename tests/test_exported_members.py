"""The public names of the package are deliberate: adding or removing one is a decision."""

from __future__ import annotations

import focuswatch


def test_top_level_public_names() -> None:
    assert sorted(focuswatch.__all__) == [
        "BackendError",
        "ConfigError",
        "FocuswatchError",
        "StateError",
        "TileError",
        "__version__",
    ]
    for name in focuswatch.__all__:
        assert hasattr(focuswatch, name)


def test_every_error_derives_from_the_base() -> None:
    for name in focuswatch.__all__:
        obj = getattr(focuswatch, name)
        if isinstance(obj, type):
            assert issubclass(obj, focuswatch.FocuswatchError)
