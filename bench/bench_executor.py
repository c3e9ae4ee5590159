"""What `executor: process` costs against the default `executor: thread` (issue 17, item 14).

    .venv/bin/python bench/bench_executor.py [--jobs 5000] [--repeat 3] [--workers 8]

Durable `noop` jobs/s through the real runtime in this process (Controller on a RealClock, RealFS
with fsync `always`, PoolWorkers), all jobs enqueued at once in batches of 1000; each attempt is a
hand-off to a worker thread, or a pickle over a pipe to a worker process and back. Rounds interleave
the two executors; the best of `--repeat` is reported. Prints JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config
from beaver_sim.runtime.clock import RealClock
from beaver_sim.runtime.workers import PoolWorkers
from beaver_sim.storage.fs import RealFS

BATCH = 1000


async def throughput(data_dir: str, jobs: int, workers: int, executor: str) -> float:
    """Jobs/s from the first enqueue to the last ACK logged (worker start-up excluded)."""
    loop = asyncio.get_running_loop()
    config = Config(data_dir=data_dir, fsync="always", worker_count=workers, executor=executor)
    pool = PoolWorkers(loop, config)
    await pool.ready()
    ctl = Controller(config, RealClock(loop), Storage.from_config(RealFS(), config), pool)
    ctl.start()
    t0 = time.perf_counter()
    for start in range(0, jobs, BATCH):
        ctl.enqueue([(f"j{i}", {"type": "noop"}) for i in range(start, min(jobs, start + BATCH))])
        await asyncio.sleep(0)
    while ctl.counters.completed < jobs:
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - t0
    ctl.stop(snapshot=False)
    pool.close(timeout=0)
    return jobs / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    best = {"thread": 0.0, "process": 0.0}
    for _ in range(args.repeat):
        for executor in best:
            root = tempfile.mkdtemp(prefix="bench-executor-")
            try:
                rate = asyncio.run(throughput(root, args.jobs, args.workers, executor))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            best[executor] = max(best[executor], rate)
    print(json.dumps({"jobs": args.jobs, "workers": args.workers, "jobs_per_s": best}))


if __name__ == "__main__":
    main()
