"""Memory of a queue that runs forever (issue 8): the real Controller, JobQueue, WAL and snapshots
on VirtualClock + SimFS with seeded workers (the seed's 8 workers, 100-500 ms, 10 % failure), fed
by a producer that tops the backlog up to `--backlog` jobs every virtual second, until `--jobs`
jobs were enqueued. Resident memory (RSS, not peak) is sampled at each `--at` count of ended jobs.

    .venv/bin/python bench/bench_retention.py [--jobs 10000000] [--retention 100000]
        [--at 1000000,5000000,10000000] [--backlog 10000]

With `--retention 0` (keep every job) memory grows with the jobs; with a window it stays flat once
the window is full: the state holds the window, the backlog and the jobs in flight, and each
checkpoint deletes the WAL segments its snapshots cover (SimFS keeps files in memory, so the kept
log is in the RSS too). Not `beaver sim`: its recorder keeps every job's history for the checker
and DataFrames (and archives deleted segments), which grows with the run by design. Prints JSON,
then a markdown table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from typing import Any

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workers import SimWorkers

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def run(n_jobs: int, retention: int, at: list[int], backlog: int) -> dict[str, Any]:
    config = Config(data_dir="/data", completed_retention=retention)
    clock, fs = VirtualClock(), SimFS()
    ctl = Controller(config, clock, Storage.from_config(fs, config), SimWorkers(clock, 42))
    ctl.start()
    state, produced, samples = ctl.state, 0, []
    marks = sorted(at)
    t0 = time.perf_counter()

    def produce() -> None:
        nonlocal produced
        want = min(backlog - len(state.pending), n_jobs - produced)
        if want > 0:
            ctl.enqueue(
                (f"job-{i:09d}", {"type": "compute", "value": i}) for i in range(produced, produced + want)
            )
            produced += want
        if produced < n_jobs:
            clock.call_later(1.0, produce)

    def sample() -> None:
        c = ctl.counters
        ended = c.completed + c.dead
        while marks and ended >= marks[0]:
            s = {
                "ended": marks.pop(0),
                "rss_mb": round(rss_mb()),
                "jobs_in_memory": len(state.jobs),
                "dropped": state.dropped,
                "wal_segments": len(fs.listdir("/data/wal")),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            samples.append(s)
            print(json.dumps(s), flush=True)
        if marks:
            clock.call_later(10.0, sample)

    produce()
    sample()
    clock.run()
    ctl.stop()
    return {"retention": retention, "jobs": n_jobs, "samples": samples, "stats": ctl.status()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000_000)
    ap.add_argument("--retention", type=int, default=100_000)
    ap.add_argument("--at", default="1000000,5000000,10000000")
    ap.add_argument("--backlog", type=int, default=10_000)
    args = ap.parse_args()
    at = [int(x) for x in args.at.split(",") if x.strip()]
    res = run(args.jobs, args.retention, at, args.backlog)
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(res, indent=1))
    print()
    print(f"| ended jobs | RSS, retention {args.retention:,} | jobs in memory | dropped | seconds |")
    print("|---:|---:|---:|---:|---:|")
    for s in res["samples"]:
        cells = (f"{s['ended']:,}", f"{s['rss_mb']} MB", f"{s['jobs_in_memory']:,}", f"{s['dropped']:,}")
        print("| " + " | ".join(cells) + f" | {s['seconds']} |")


if __name__ == "__main__":
    main()
