"""The deterministic simulator: VirtualClock, SimFS and SimWorkers under the real controller and
storage, crash plans, the invariant checker, durability mutants and crash sweeps.

`from beaver_sim.sim import Simulation, crash_sweep, ...` works; each name is imported on first
use, so importing `beaver_sim.sim.clock` (or `beaver --help`) does not load pandas."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VirtualClock": "clock",
    "SimFS": "fs",
    "SimulatedCrash": "fs",
    "SimWorkers": "workers",
    "CrashPlan": "faults",
    "POINTS": "faults",
    "RECOVERY_COST": "faults",
    "recovery_model_seconds": "faults",
    "Checker": "checker",
    "INVARIANTS": "checker",
    "Violation": "checker",
    "MUTANTS": "mutants",
    "Simulation": "experiment",
    "SimResult": "results",
    "Workload": "workload",
    "crash_sweep": "sweep",
    "enumerate_points": "points",
    "minimal_counterexample": "sweep",
    "violations": "sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beaver_sim.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(f"beaver_sim.sim.{module}"), name)
