"""The package's layers point one way, and no module reaches into another's private names.

Each module has a layer (lower first); a module imports only modules of lower layers
(or its own package's). Lazy imports inside functions count too: they are how cycles
hide. A new module must be given its layer here; that is the decision this test asks
for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "focuswatch"

LAYERS: list[set[str]] = [
    {"errors", "choices", "text", "files", "verdict", "sdnotify", "logs", "cpu_fft"},
    {"focuswatch", "config", "backend", "statelock", "watch", "synth"},
    {"score", "tiles", "unit"},
    {"scoring", "ledger"},
    {"executor", "calibrate", "outbox", "readmodel"},
    {"policy", "gpu", "alarms"},
    {"judge", "worker", "alerts", "retakes", "hooks"},
    {"cluster", "status"},
    {"web"},
    {"service"},
    {"app"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        dotted = ".".join(("focuswatch", *parts)).removesuffix(".__init__")
        out[dotted] = path
    return out


def _unit(dotted: str) -> str:
    """The layered unit of a module: its top-level module or package under focuswatch."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "focuswatch"


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every focuswatch import in the file ('' for plain imports)."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "focuswatch":
                found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "focuswatch"]
    return found


MODULES = _modules()


def test_every_module_has_a_layer() -> None:
    assert sorted({_unit(m) for m in MODULES} - set(RANK)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_lower_layers(module: str) -> None:
    unit = _unit(module)
    upward = []
    for target, name in _imports(MODULES[module]):
        # "from focuswatch import x" names the module x.
        dotted = f"focuswatch.{name}" if target == "focuswatch" and name else target
        other = _unit(dotted)
        if other == unit or other not in RANK:
            continue
        if RANK[other] >= RANK[unit]:
            upward.append(f"{dotted} (layer {RANK[other]} >= {RANK[unit]})")
    assert upward == [], f"{module} imports"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_ones_private_names(module: str) -> None:
    unit = _unit(module)
    private = []
    for target, name in _imports(MODULES[module]):
        if _unit(target) == unit:
            continue  # a package's own private modules are its business
        hidden = [p for p in target.split(".") if p.startswith("_")]
        if hidden or (name.startswith("_") and name != "__version__"):
            private.append(f"{target}.{name}" if name else target)
    assert private == [], f"{module} imports"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reaches_into_another_objects_private_attributes(module: str) -> None:
    """``ledger._lock`` from alerts was how the ledger stopped being a boundary."""
    reached = []
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls", "os"):
            continue  # its own state; os._exit is the documented way out of a fork
        reached.append(f"line {node.lineno}: {ast.unparse(node)}")
    allowed = {"focuswatch.ledger"}  # Ledger's own module builds and migrates Ledgers
    assert module in allowed or reached == []


def test_config_loads_without_the_scorer() -> None:
    """check-config must not pay for NumPy and SciPy just to validate names."""
    import subprocess
    import sys

    code = (
        "import sys, focuswatch.config; "
        "print(sorted(m for m in ('numpy', 'scipy', 'apprise') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
