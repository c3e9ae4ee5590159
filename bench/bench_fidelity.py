"""How well the simulator predicts real runs, job by job (issue 24), over more seeds and loads than
the CI test (tests/integration/test_fidelity.py): for each (seed, load) the workload runs for real
(`beaver enqueue` + `beaver run --exit-when-idle` as processes: real threads, fsync, timers;
optionally killed with SIGKILL `--kill-after` s in and restarted) and simulated, and
beaver_sim.fidelity compares every job's attempt count and end. A job that differs with no
borderline attempt (drawn within the real run's measured lateness of the timeout) is a wrong
prediction. `--restarts N` measures instead how long a killed `beaver run` takes to be `ready`
again (kill -9 of a run with 200 jobs in flight to the restarted process's `ready` line), the
default of the simulator's `restart_delay`.

    .venv/bin/python bench/bench_fidelity.py [--seeds 1-6] [--loads 0.2,0.3,0.5] [--jobs 200]
        [--failure-rates 0.1] [--kill-after 3] [--parallel 3]
    .venv/bin/python bench/bench_fidelity.py --restarts 7

A load is a task timeout in seconds against the seed's 100-500 ms work (0.3: half the attempts time
out). Real runs go `--parallel` at a time: they mostly sleep, but on a loaded machine that raises the
lateness and so the borderline count. Prints JSON lines, then a markdown table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from beaver_sim.core.types import Config
from beaver_sim.demo import RunProcess
from beaver_sim.fidelity import BEAVER, READY, compare, job_file, run_real, simulate
from beaver_sim.sim.workload import Workload


def one(
    root: Path, seed: int, timeout: float, failure_rate: float, jobs: int, kill: float | None
) -> dict[str, Any]:
    name = f"s{seed}-t{timeout:g}-f{failure_rate:g}" + (f"-k{kill:g}" if kill else "")
    config = Config(seed=seed, task_timeout=timeout, failure_rate=failure_rate, data_dir=str(root / name))
    workload = Workload(jobs=jobs)
    real = run_real(config, workload, kill_after=kill)
    f = compare(config, simulate(config, workload, real.killed_after), real.jobs, real.margin)
    return {
        "seed": seed,
        "timeout": timeout,
        "failure_rate": failure_rate,
        "killed": kill,
        **f.summary(),
        "p99_ms": round(real.p99 * 1e3, 3),
        "real_seconds": round(real.seconds, 2),
        "unexplained": [j.job for j in f.unexplained],
    }


def restarts(n: int, jobs: int) -> dict[str, Any]:
    """Seconds from a SIGKILL of `beaver run` (2 s into 200 jobs) to its successor's `ready`."""
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs_path = os.path.join(tmp, "jobs.json")
        Path(jobs_path).write_bytes(orjson.dumps(job_file(Workload(jobs=jobs), 42)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BEAVER_")}
        for i in range(n):
            d = os.path.join(tmp, f"d{i}")
            common = ["--data-dir", d, "--metrics-port", "0", "--timeout", "300ms"]
            enqueue = [*BEAVER, "enqueue", "--data-dir", d, "--create", "--file", jobs_path]
            subprocess.run(enqueue, check=True, capture_output=True, env=env, cwd=tmp)
            first = RunProcess([*BEAVER, "run", *common, "--exit-when-idle"], env=env, cwd=tmp)
            first.wait_line(READY, 60)
            time.sleep(2.0)
            first.stop()  # SIGKILL
            t0 = time.monotonic()
            second = RunProcess([*BEAVER, "run", *common, "--exit-when-idle"], env=env, cwd=tmp)
            second.wait_line(READY, 60)
            seconds.append(time.monotonic() - t0)
            second.stop()
    return {
        "restarts": n,
        "seconds": [round(s, 3) for s in seconds],
        "median": round(statistics.median(seconds), 3),
        "max": round(max(seconds), 3),
    }


def spans(text: str) -> list[int]:
    """`1-3,7` -> [1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1-6")
    p.add_argument("--loads", default="0.2,0.3,0.5", help="task timeouts, seconds")
    p.add_argument("--failure-rates", default="0.1")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--kill-after", type=float, default=3.0, help="also a killed run per load (0: none)")
    p.add_argument("--parallel", type=int, default=3)
    p.add_argument("--restarts", type=int, default=0, help="measure N restarts instead")
    a = p.parse_args()
    print(json.dumps({"host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}))
    if a.restarts:
        print(json.dumps(restarts(a.restarts, a.jobs)))
        return
    loads = [float(x) for x in a.loads.split(",")]
    rates = [float(x) for x in a.failure_rates.split(",")]
    cases = [(s, t, r, None) for s in spans(a.seeds) for t in loads for r in rates]
    if a.kill_after:
        cases += [(spans(a.seeds)[0], t, r, a.kill_after) for t in loads for r in rates]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(a.parallel) as pool:
        rows = list(pool.map(lambda c: one(Path(tmp), *c[:3], a.jobs, c[3]), cases))
    for row in rows:
        print(json.dumps(row))
    print(
        "\n| seed | timeout | failures | killed | jobs same | differ (borderline) | differ (unexplained) "
        "| borderline attempts | margin ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['timeout']:g} s | {r['failure_rate']:g} | {r['killed'] or '-'} "
            f"| {r['same']}/{r['jobs']} "
            f"| {r['different_borderline']} | {r['different_unexplained']} | {r['borderline_attempts']} "
            f"| {r['margin_ms']} | {r['p99_ms']} |"
        )
    total = sum(r["jobs"] for r in rows)
    same = sum(r["same"] for r in rows)
    wrong = sum(r["different_unexplained"] for r in rows)
    print(
        f"\n{same}/{total} jobs the same ({100 * same / total:.1f} %), {wrong} unexplained; "
        f"load {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
