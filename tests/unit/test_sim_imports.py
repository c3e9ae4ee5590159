"""sim/'s modules import one another one way: no module of it imports, at any depth (a function's
or a TYPE_CHECKING import counts too), a module that imports it back, so each can be read knowing
only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import beaver_sim.sim

SIM = Path(beaver_sim.sim.__file__).parent
PREFIX = "beaver_sim.sim."


def sim_imports(source: str) -> set[str]:
    """The sim/ modules `source` imports (`from beaver_sim.sim import X` names module X, or the
    module the package's lazy `__getattr__` takes X from)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name[len(PREFIX) :].split(".")[0] for a in node.names if a.name.startswith(PREFIX))
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.startswith(PREFIX):
                out.add(node.module[len(PREFIX) :].split(".")[0])
            elif node.module == "beaver_sim.sim":
                out.update(beaver_sim.sim._EXPORTS.get(a.name, a.name) for a in node.names)
    return out


def graph() -> dict[str, set[str]]:
    """sim/ module -> the sim/ modules it imports (the package's `__init__`, a lazy facade, aside)."""
    return {p.stem: sim_imports(p.read_text()) for p in sorted(SIM.glob("*.py")) if p.stem != "__init__"}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `g` (its modules in import order, the first one again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m], found = 1, None
        path.append(m)
        for dep in sorted(g.get(m, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_sim_modules_import_one_way() -> None:
    g = graph()
    assert {"experiment", "results", "capture", "share", "sweep"} <= g.keys()
    assert "experiment" in g["share"] and "results" in g["experiment"]  # the graph is really read
    assert cycle(g) is None, " -> ".join(cycle(g) or [])


def test_results_and_the_run_loop_import_one_way() -> None:
    g = graph()
    assert "experiment" not in g["results"] and "results" in g["experiment"]


def test_the_check_sees_a_cycle_through_a_lazy_or_type_checking_import() -> None:
    lazy = "def f():\n    from beaver_sim.sim import crash_sweep\n"
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import beaver_sim.sim.results.x\n"
    assert sim_imports(lazy) == {"sweep"} and sim_imports(typed) == {"results"}
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle(g) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
