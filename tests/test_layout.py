"""The packages form floors: each imports only packages on floors below it (ARCHITECTURE.md).

Every import statement counts, including those inside functions (lazy imports are still
dependencies), so no import runs back up and no two packages import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parent.parent

#: floor of each package; a package may import only packages on lower floors
FLOORS = {
    "plumbing": 0,  # errors, atomic writes, CLI frame, run layout and exit codes, launch environment
    "flow": 1,  # flow kernels, estimators, file formats, pictures
    "synth": 2,  # the synthetic driving world
    "hdf5_tools": 3,  # the shard format, pack, flows into shards, verify, stage
    "launcher": 4,  # job scripts, schedulers, runs kept alive
    "pixpro_of": 5,  # the method: model, samples, trainer, transfer, evaluation, reproduction
}


def imported_packages(path: Path) -> Set[str]:
    """Our top-level packages that the module at ``path`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in FLOORS)
    return found


def package_imports() -> Dict[str, Dict[str, Set[str]]]:
    """package -> module file -> the other packages it imports."""
    out: Dict[str, Dict[str, Set[str]]] = {}
    for pkg in FLOORS:
        for py in sorted((ROOT / pkg).rglob("*.py")):
            others = imported_packages(py) - {pkg}
            if others:
                out.setdefault(pkg, {})[str(py.relative_to(ROOT))] = others
    return out


def test_every_package_imports_only_lower_floors():
    upward = []
    for pkg, modules in package_imports().items():
        for module, others in modules.items():
            for other in sorted(others):
                if FLOORS[other] >= FLOORS[pkg]:
                    upward.append(f"{module} imports {other} (floor {FLOORS[other]} >= {pkg}'s {FLOORS[pkg]})")
    assert upward == []


def test_the_ground_floor_imports_nothing_of_ours():
    assert package_imports().get("plumbing", {}) == {}


def test_the_walker_sees_lazy_imports(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\ndef f():\n    from pixpro_of.config import load_config\n    import flow.ops as o\n")
    assert imported_packages(mod) == {"pixpro_of", "flow"}


def test_every_package_is_on_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"configs", "templates", "build"}
    assert packages <= set(FLOORS), f"packages without a floor: {sorted(packages - set(FLOORS))}"
