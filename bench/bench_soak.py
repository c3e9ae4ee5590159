"""A soak in virtual time (issue 7): one long simulated run, crashed again and again, checked throughout.

    .venv/bin/python bench/bench_soak.py [--jobs 1000000] [--rate 20] [--crash-every 3000] [--retention 0]

Poisson arrivals (`--rate` jobs per virtual second, in batches of 5), exponential durations that run
into the 1 s timeout, 10 % failures (max_retry 3: some jobs die), a snapshot every second and 256 KiB
segments (rotation, pruning and segment deletion all along). 8 workers serve about 20.5 jobs a second,
so at the default rate the backlog stays small: the state holds the jobs in the queue plus the
`--retention` window, whatever the length of the run. A crash comes every `--crash-every`
events or so (a seeded draw: 0.5x to 1.5x that), in the middle of a WAL write, each under a random
model (`process` or `power-loss`) keeping 0-512 random torn bytes. Every recovery is checked by the
invariant checker, as in any simulated run; at the end the data directory must pass `wal verify`
(core.repair.inspect finds no problem and plan_repair has nothing to do). Not part of the test
run: it takes minutes. Prints the figures as JSON."""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from beaver_sim.core.repair import inspect, plan_repair
from beaver_sim.core.types import Config, JobStatus
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import CRASH_MODELS
from beaver_sim.sim.workload import Workload

TORN_MAX = 512
BATCH = 5


def soak(jobs: int, rate: float, seed: int, retention: int = 0) -> Simulation:
    """The soak's run, without its crashes; `retention` > 0 keeps only that many ended jobs in
    memory and snapshots (completed_retention), so each recovery costs the window, not the history."""
    config = Config(
        data_dir="/soak",
        worker_count=8,
        task_timeout=1.0,
        failure_rate=0.1,
        work_min=0.05,
        work_max=0.65,
        snapshot_interval=1.0,
        snapshot_log_ratio=0.25,
        segment_bytes=256 << 10,
        completed_retention=retention,
    )
    workload = Workload(jobs, rate=rate / BATCH, batch=BATCH, durations="exponential")  # rate: of batches
    # history=False: a crashed life's files are dropped once the checker has read them
    return Simulation(config, workload, seed, sample_every=0, history=False)


def crash_plans(sim: Simulation, crash_every: int) -> tuple[list[CrashPlan], float]:
    """Crashes about `crash_every` events apart, each in the middle of a WAL write (at an LSN:
    events and log bytes per virtual second measured on a short uncrashed run of the same
    workload), each with a random model and torn bytes. A crash between two events would tear
    nothing: under `fsync: always` everything written by then is durable."""
    probe = replace(sim, workload=replace(sim.workload, jobs=min(sim.workload.jobs, 2000))).run()
    per_event = probe.end_lsn / probe.summary["events"]
    horizon = per_event * 3.0 * sim.workload.jobs  # the log grows by about 3 events per job
    rng = random.Random(f"soak:{sim.seed}")
    plans, lsn = [], 0.0
    while True:
        lsn += crash_every * per_event * rng.uniform(0.5, 1.5)
        if lsn > horizon:
            return plans, probe.summary["events"] / probe.virtual_seconds
        torn, model = rng.randint(0, TORN_MAX), rng.choice(CRASH_MODELS)
        plans.append(CrashPlan("lsn", int(lsn), torn=torn, model=model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--crash-every", type=int, default=3000, help="events between crashes, on average")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--retention", type=int, default=0, help="completed_retention (0: keep every job)")
    args = ap.parse_args()
    sim = soak(args.jobs, args.rate, args.seed, args.retention)
    plans, per_second = crash_plans(sim, args.crash_every)
    t0 = time.perf_counter()
    r = replace(sim, crash=plans).run()
    seconds = time.perf_counter() - t0
    cfg = sim.config
    found = inspect(r.fs, cfg.wal_dir, cfg.snapshot_dir, lambda rec, lsn: None, check_snapshots=True)
    repair = plan_repair(r.fs, cfg.wal_dir, cfg.snapshot_dir)
    events = sum(life.events for life in r.lives)
    crashes = r.crashes
    outcomes = Counter(r.attempts["outcome"])
    q = r.state
    out: dict[str, Any] = {
        "jobs": args.jobs,
        "rate": args.rate,
        "seed": args.seed,
        "ending": r.ending,
        "violations": len(r.violations),
        "first_violations": [str(v) for v in r.violations[:3]],
        "wal_verify_ok": found.problem is None and not found.broken_snapshots and repair is None,
        "seconds": round(seconds, 1),
        "events": events,
        "events_per_second": round(events / seconds),
        "microseconds_per_job": round(seconds / args.jobs * 1e6, 1),
        "virtual_seconds": round(r.virtual_seconds, 1),
        "events_per_virtual_second": round(per_second, 1),
        "crashes": len(crashes),
        "crash_models": dict(Counter(c["model"] for c in crashes)),
        "torn_crashes": sum(1 for p in plans[: len(crashes)] if p.torn and p.model == "power-loss"),
        "recoveries": len(r.recoveries),
        "records_replayed": sum(x["records_replayed"] for x in r.recoveries),
        "bytes_truncated": sum(x["bytes_truncated"] for x in r.recoveries),
        "recovery_seconds": round(sum(x["seconds"] for x in r.recoveries), 1),
        "largest_snapshot_bytes": max((x["snapshot_bytes"] for x in r.recoveries), default=0),
        "completed": q.counts[JobStatus.COMPLETED] if q is not None else None,
        "dead": q.counts[JobStatus.DEAD] if q is not None else None,
        "dropped": q.dropped if q is not None else None,  # ended, then left the retention window
        "attempts": dict(outcomes),
        "duplicates": r.summary["duplicates"],
        "jobs_lost": len(r.checker.lost),
        "wal_segments_at_end": len(found.scan.segments),
        "last_seq": found.scan.next_seq - 1,
    }
    print(json.dumps(out, indent=1))
    if out["violations"] or not out["wal_verify_ok"] or r.ending != "quiescent":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
