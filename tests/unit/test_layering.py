"""The dependency between the layers runs one way, as docs/architecture.md states it:
`cli` -> `runtime` and `sim` -> `core` -> `storage` -> `errors`. storage/ knows bytes, records and
files, never the queue; core/ builds the queue on top of it and never reaches up to the runtime or
the simulator; the runtime never imports the simulator; errors.py and speed.py are leaves every
layer may use. Every import counts, a function-level one included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import beaver_sim

PACKAGE = Path(beaver_sim.__file__).parent
LEAVES = frozenset({"errors", "speed"})
# a layer (a subpackage or a top-level module of beaver_sim) -> the layers it may import besides
# itself; None: any, but those in FORBIDDEN
ALLOWED: dict[str, frozenset[str] | None] = {
    "errors": frozenset(),
    "speed": frozenset(),
    "storage": LEAVES,
    "core": LEAVES | {"storage"},
    "runtime": None,
    "sim": None,
}
FORBIDDEN = {"runtime": {"sim", "cli"}, "sim": {"runtime", "cli"}}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (a function-level import counts too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module or "")
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def layer_of(module: str) -> str | None:
    """The layer of a beaver_sim module (`beaver_sim.core.queue` -> core); None if not ours, or
    the package itself (`from beaver_sim import labs` also names beaver_sim.labs)."""
    parts = module.split(".")
    if parts[0] != "beaver_sim" or len(parts) < 2:
        return None
    return parts[1]


def files_of(layer: str, package: Path = PACKAGE) -> list[Path]:
    path = package / layer
    return sorted(path.rglob("*.py")) if path.is_dir() else [package / f"{layer}.py"]


def bad_imports(layer: str, package: Path = PACKAGE) -> list[str]:
    """`file: module` for each import of `layer` that breaks its rule."""
    allowed, forbidden = ALLOWED[layer], FORBIDDEN.get(layer, set())
    out = []
    for path in files_of(layer, package):
        for module in sorted(imported_modules(path)):
            other = layer_of(module)
            if other is None or other == layer:
                continue
            if (allowed is not None and other not in allowed) or other in forbidden:
                out.append(f"{path.relative_to(package)}: {module}")
    return out


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    assert files_of(layer) and all(p.exists() for p in files_of(layer))
    assert bad_imports(layer) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from beaver_sim.core.queue import JobQueue\n    import beaver_sim.sim.fs\n")
    assert {"beaver_sim.core.queue", "beaver_sim.sim.fs"} <= imported_modules(bad)
    assert layer_of("beaver_sim.core.queue") == "core" and layer_of("beaver_sim") is None


def test_the_check_names_a_broken_rule(tmp_path: Path) -> None:
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "x.py").write_text("from beaver_sim.core.queue import JobQueue\n")
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "y.py").write_text("def f():\n    from beaver_sim import sim\n")
    assert bad_imports("storage", tmp_path)[0] == "storage/x.py: beaver_sim.core.queue"
    assert bad_imports("runtime", tmp_path) == ["runtime/y.py: beaver_sim.sim"]
