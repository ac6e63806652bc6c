"""The public names of the package are deliberate: adding or removing one is a decision."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

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


def _modules() -> list[str]:
    package = Path(focuswatch.__file__).parent
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        dotted = ".".join(parts).removesuffix(".__init__")
        if dotted.endswith("__main__"):
            continue
        names.append(dotted)
    return names


@pytest.mark.parametrize("name", _modules())
def test_each_module_exports_what_it_defines_in_public_and_nothing_else(name: str) -> None:
    """A public name (no leading underscore) defined in a module is in its ``__all__``,
    and everything in ``__all__`` exists: exporting a name is a decision, made in one
    place. (Replaces the per-module literal lists of names, issue 14.)"""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported)
    for public in exported:
        assert hasattr(module, public), f"{name}.__all__ names {public!r}, which it lacks"
    tree = ast.parse(Path(inspect.getfile(module)).read_text(encoding="utf-8"))
    defined = [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
    ]
    assert [d for d in defined if d not in exported] == []
