"""The package's layout: every module imports on its own (no import cycles), and inside
``onnxinv.inversion`` calls go down the documented list, never up."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import onnxinv

MODULES = sorted(m.name for m in pkgutil.walk_packages(onnxinv.__path__, "onnxinv."))

# onnxinv.inversion, bottom first: a module may import only modules on its own level or below.
LEVELS = [
    {"verdict", "result", "lp", "network", "milp"},
    {"targets", "linear", "ipm"},
    {"framework"},
    {"identifiability"},
    {"exact", "linf", "l1", "gd"},
    {"sparse", "relaxed", "lsq"},
    {"refine", "wholenet"},
    {"search"},
    {"auto"},
    {"registry"},
    {"evidence"},
    {"fastexact"},
    {"parallel", "dask_engine"},
    {"api"},
]


# In one fresh interpreter: for each module, forget every onnxinv module and import that one first, so a
# cycle that only bites in some import order shows (third-party packages stay loaded: they are slow).
_PROBE = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "onnxinv" or m.startswith("onnxinv.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own() -> None:
    assert len(MODULES) > 20
    done = subprocess.run([sys.executable, "-c", _PROBE, *MODULES], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _inversion_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "onnxinv.inversion":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("onnxinv.inversion."):
                found.add(node.module.split(".")[2])
    return found


def test_inversion_calls_go_down_the_list() -> None:
    folder = Path(onnxinv.__file__).parent / "inversion"
    level = {name: i for i, names in enumerate(LEVELS) for name in names}
    listed = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    assert listed == set(level), f"modules not placed in LEVELS: {listed ^ set(level)}"
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue
        for target in _inversion_imports(path) & set(level):
            assert level[target] <= level[path.stem], f"{path.stem} imports {target}, which sits above it"
