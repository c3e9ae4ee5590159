"""Simulator benchmarks (issue 4).

    .venv/bin/python bench/bench_sim.py [--jobs 100000] [--repeat 3] [--sweep-jobs 250,500,1000]
                                        [--processes 2] [--merge on|off|both] [--profile] [--calibrate]

(a) The seed's workload at scale (100,000 jobs at t=0, 8 workers, 100-500 ms, 10 % failure,
    max_retry 3, 3 s timeout) through `Simulation.run()` (the real Controller, JobQueue and WAL on
    VirtualClock + SimFS, with its checker and metric samples; the summary's file hashes are timed
    apart) against the same model in SimPy 4
    (bench/anchors/simpy_seed_model.py, imported and run in this process), interleaved, best of
    `--repeat`. The bare controller loop (no Simulation around it) is timed too. Target: SimPy time /
    Simulation time >= 1.0 (2.0 stretch). `--profile` adds a cProfile breakdown of one run.
(b) A `records` crash sweep (every record boundary plus a torn point in every record, each recovered,
    checked and run to the end) of runs of `--sweep-jobs` jobs on a process pool of `--processes`;
    `--merge both` times each size with converging continuations run to the end, then merged.
    Target: <= 15 s for 1,000 jobs on 2 cores (issue 8; 60 s in issue 4). The growth exponent comes
    from the sizes given. Wall time moves with the load; `cpu_seconds` (this process and its pool) less.
`--calibrate` fits the recovery cost model (sim.faults.RECOVERY_COST) to measured recoveries.

Prints the figures as JSON, then markdown tables."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import RECOVERY_COST, CrashPlan
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.sweep import crash_sweep
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.sim.workload import Workload

ANCHOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anchors", "simpy_seed_model.py")
SEED = Config(data_dir="/sim")  # the seed's keys are the defaults: 8 workers, 3 s, max_retry 3, 10 %


def simpy_model(n: int) -> Callable[[], dict[str, Any]]:
    """The anchor's SimPy model, loaded once, run in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("simpy_seed_model", ANCHOR)
    assert spec is not None and spec.loader is not None
    argv, sys.argv = sys.argv, [ANCHOR]
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv = argv
    module.N = n

    def run() -> dict[str, Any]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main()
        return json.loads(out.getvalue())

    return run


def simulation(n: int) -> Any:
    return Simulation(SEED, Workload(n), 42).run()


def bare(n: int) -> dict[str, Any]:
    """The controller loop alone: what Simulation wraps (no checker, no samples, no records)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        fs, clock = SimFS(), VirtualClock()
        storage = Storage.from_config(fs, SEED)
        ctl = Controller(SEED, clock, storage, SimWorkers(clock, 42))
        ctl.start()
        ctl.enqueue((f"task-{i:06d}", {"type": "compute", "value": 37 * i}) for i in range(1, n + 1))
        clock.run()
        ctl.stop()
        return ctl.status()
    finally:
        if enabled:
            gc.enable()


def best(repeat: int, contenders: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, Any]]:
    """Best wall time of each contender over `repeat` rounds, the contenders interleaved in a round
    (a busy neighbour then slows them alike); the last result of each."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in contenders.items():
            gc.collect()
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {k: (min(v), results[k]) for k, v in times.items()}


def bench_scale(n: int, repeat: int) -> dict[str, Any]:
    res = best(
        repeat, {"simpy": simpy_model(n), "simulation": lambda: simulation(n), "bare": lambda: bare(n)}
    )
    (simpy_s, simpy_out), (sim_s, result), (bare_s, _) = res["simpy"], res["simulation"], res["bare"]
    t0 = time.perf_counter()
    summary = result.summary
    summary_s = time.perf_counter() - t0
    return {
        "jobs": n,
        "simpy_seconds": round(simpy_s, 3),
        "simulation_seconds": round(sim_s, 3),
        "bare_controller_seconds": round(bare_s, 3),
        "summary_seconds": round(summary_s, 3),  # after the run: hashes of the files, histograms
        "ratio": round(simpy_s / sim_s, 3),
        "target_ratio": 1.0,
        "met": simpy_s / sim_s >= 1.0,
        "simulation_events": summary["events"],
        "simulation_attempts": sum(int(k) * v for k, v in summary["attempts"].items()),
        "simpy_attempts": simpy_out["attempts"],
        "virtual_seconds": round(summary["virtual_seconds"], 1),
        "simpy_virtual_seconds": round(simpy_out["virtual_seconds"], 1),
        "completed_dead": [summary["completed"], summary["dead"]],
        "simpy_completed_dead": [simpy_out["done"], simpy_out["dead"]],
    }


def whole_process(n: int, repeat: int) -> dict[str, Any]:
    """What a user waits for: `beaver sim --jobs n --json` as a process (interpreter start-up, imports,
    config, run, checker, summary) against the SimPy model run as a process, interleaved, best of
    `repeat`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # configs/default.yaml: the seed
    commands = {
        "simpy": [sys.executable, ANCHOR, str(n)],
        "beaver_sim": [sys.executable, "-m", "beaver_sim.cli", "sim", "--jobs", str(n), "--json"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    outputs: dict[str, Any] = {}
    for _ in range(repeat):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
            times[name].append(time.perf_counter() - t0)
            outputs[name] = json.loads(proc.stdout)
    simpy_s, sim_s = min(times["simpy"]), min(times["beaver_sim"])
    summary = outputs["beaver_sim"]
    return {
        "command": " ".join(commands["beaver_sim"][1:]),
        "simpy_seconds": [round(t, 3) for t in times["simpy"]],
        "beaver_sim_seconds": [round(t, 3) for t in times["beaver_sim"]],
        "ratio": round(simpy_s / sim_s, 3),
        "target_ratio": 1.2,
        "met": simpy_s / sim_s >= 1.2,
        "completed_dead": [summary.get("completed"), summary.get("dead")],
        "simpy_completed_dead": [outputs["simpy"]["done"], outputs["simpy"]["dead"]],
    }


def profile(n: int) -> list[tuple[str, float]]:
    """cProfile of one Simulation run: tottime summed per module, largest first."""
    prof = cProfile.Profile()
    prof.runcall(simulation, n)
    per_module: dict[str, float] = {}
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    for (path, _line, _fn), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        key = path.split("beaver_sim/")[-1] if "beaver_sim/" in path else os.path.basename(path) or path
        per_module[key] = per_module.get(key, 0.0) + tottime
    return [(k, round(100 * v / total, 1)) for k, v in sorted(per_module.items(), key=lambda kv: -kv[1])[:12]]


def _cpu_seconds() -> float:
    """CPU time of this process plus its ended children (the sweep's pool, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_sweeps(
    sizes: list[int], processes: int, merges: tuple[bool, ...] = (True,)
) -> list[dict[str, Any]]:
    """Each size's sweep once per `merges` setting, in turn (before and after, side by side)."""
    out = []
    for n in sizes:
        for merge in merges:
            out.append(_sweep(n, processes, merge))
    return out


def _sweep(n: int, processes: int, merge: bool) -> dict[str, Any]:
    sim = Simulation(SEED, Workload(n), 42)
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    df = crash_sweep(sim, "records", workers=processes, progress=False, merge=merge)
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    return {
        "jobs": n,
        "merge": merge,
        "points": len(df),
        "groups": df.attrs["groups"],  # points needing a continuation of their own
        "merged": df.attrs["merged"],  # of those continuations, stopped where an earlier one had been
        "wal_bytes": df.attrs["wal_bytes"],
        "violations": int(df["violations"].sum()),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),  # this process and its pool's: less noisy than wall time
        "target_seconds": 15 if n == 1000 else None,
    }


def calibrate(sizes: tuple[int, ...] = (200, 1000, 4000, 16000)) -> dict[str, float]:
    """Least-squares fit of recovery wall time (best of 5) to records replayed, WAL bytes read and
    snapshot bytes, over crashes at several points of runs of several sizes and snapshot settings."""
    rows = []
    configs = (  # no snapshot: every record read is replayed; four kept: many read, few replayed
        Config(data_dir="/sim", snapshot_interval=0),
        Config(data_dir="/sim", snapshot_interval=0.5, snapshot_log_ratio=0.5, snapshots_kept=4),
    )
    for n in sizes:
        for config in configs:
            for frac in (0.3, 0.6, 0.9):
                base = Simulation(config, Workload(n), 1, sample_every=0).run()
                crash = CrashPlan("lsn", int(base.end_lsn * frac))
                crashed = Simulation(config, Workload(n), 1, crash=crash, sample_every=0).run()
                files = crashed.lives[0].fs.after_crash("process")
                times = []
                for _ in range(5):
                    copy = files.after_crash("process")
                    t0 = time.perf_counter()
                    s = Storage.from_config(copy, config)
                    times.append(time.perf_counter() - t0)
                r = s.report
                rows.append((r.records_replayed, r.wal_bytes, r.snapshot_bytes, min(times)))
    import numpy as np

    a = np.array([[1.0, x[0], x[1], x[2]] for x in rows])
    b = np.array([x[3] for x in rows])
    names = ["base", "per_record", "per_wal_byte", "per_snapshot_byte"]
    active = list(range(4))
    while True:  # least squares, dropping any term the fit makes negative (costs are never negative)
        coef, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (coef >= 0).all():
            break
        active.pop(int(np.argmin(coef)))
    fit = dict.fromkeys(names, 0.0)
    fit.update({names[i]: float(f"{c:.3g}") for i, c in zip(active, coef)})
    fit["rows"] = len(rows)
    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sweep-jobs", default="250,500,1000", help="comma list; empty to skip")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--merge", choices=("on", "off", "both"), default="on", help="merge converging continuations"
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--whole-process", action="store_true", help="time `beaver sim` and SimPy as processes")
    args = ap.parse_args()

    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.jobs and args.whole_process:
        out["whole_process"] = whole_process(args.jobs, args.repeat)
    if args.jobs:
        out["scale"] = bench_scale(args.jobs, args.repeat)
    if args.profile:
        out["profile_percent_by_module"] = profile(args.jobs)
    sizes = [int(s) for s in args.sweep_jobs.split(",") if s.strip()]
    if sizes:
        merges = {"on": (True,), "off": (False,), "both": (False, True)}[args.merge]
        out["sweeps"] = bench_sweeps(sizes, args.processes, merges)
        if len(sizes) > 1 and len(merges) == 1:
            a, b = out["sweeps"][0], out["sweeps"][-1]
            out["sweep_growth_exponent"] = round(
                math.log(b["seconds"] / a["seconds"]) / math.log(b["jobs"] / a["jobs"]), 2
            )
    if args.calibrate:
        out["recovery_cost_fit"] = calibrate()
        out["recovery_cost_model"] = RECOVERY_COST
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    print()
    if "whole_process" in out:
        w = out["whole_process"]
        print(f"| whole process, {args.jobs:,} jobs | best seconds | SimPy / this |")
        print("|---|---:|---:|")
        print(f"| `python simpy_seed_model.py {args.jobs}` | {min(w['simpy_seconds'])} | 1.00 |")
        print(f"| `{w['command']}` | {min(w['beaver_sim_seconds'])} | **{w['ratio']}** |")
        print()
    if "scale" in out:
        s = out["scale"]
        print(f"| {s['jobs']:,} jobs, seed workload | seconds | SimPy / this |")
        print("|---|---:|---:|")
        print(f"| SimPy 4 model (no WAL, no state machine) | {s['simpy_seconds']} | 1.00 |")
        print(f"| `Simulation` (controller + WAL + checker) | {s['simulation_seconds']} | {s['ratio']} |")
        print(
            f"| bare controller loop | {s['bare_controller_seconds']} | "
            f"{round(s['simpy_seconds'] / s['bare_controller_seconds'], 2)} |"
        )
    if sizes:
        print()
        print("| jobs | merge | crash points | groups | merged | WAL bytes | seconds | CPU seconds |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for w in out["sweeps"]:
            cells = (
                w["jobs"],
                "on" if w["merge"] else "off",
                w["points"],
                w["groups"],
                w["merged"],
                w["wal_bytes"],
                w["seconds"],
                w["cpu_seconds"],
            )
            print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
