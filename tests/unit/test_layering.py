"""The dependency between the layers runs one way: storage/ (FS, WAL, snapshot files) knows bytes,
records and files, never the queue; core/ builds the queue on top of it."""

from __future__ import annotations

import ast
from pathlib import Path

import beaver_sim

PACKAGE = Path(beaver_sim.__file__).parent


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


def test_storage_imports_nothing_above_it() -> None:
    files = sorted((PACKAGE / "storage").glob("*.py"))
    assert files
    allowed = ("beaver_sim.storage", "beaver_sim.errors", "beaver_sim.speed")
    for path in files:
        ours = {m for m in imported_modules(path) if m == "beaver_sim" or m.startswith("beaver_sim.")}
        bad = sorted(m for m in ours if not m.startswith(allowed))
        assert not bad, f"{path.name} imports {bad}"


def test_errors_import_no_layer() -> None:
    for leaf in ("errors.py", "speed.py"):
        assert not {m for m in imported_modules(PACKAGE / leaf) if m.startswith("beaver_sim")}


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from beaver_sim.core.queue import JobQueue\n")
    assert "beaver_sim.core.queue" in imported_modules(bad)
