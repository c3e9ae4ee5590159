"""End-to-end benchmarks (issue 3): durable jobs/s through the real runtime, against persist-queue.

    .venv/bin/python bench/bench_e2e.py [--jobs 1000,100000] [--pq-jobs 1000,10000] [--repeat 3]
                                        [--samples 2000] [--dir DIR] [--profile N] [--workers 8]
                                        [--breakdown N] [--preallocate auto|none|fallocate|zeros]

1. Durable throughput: enqueue -> dispatch -> `noop` handler -> ACK with fsync `always` on real files
   (RealFS in a temporary directory), the Controller on a RealClock (asyncio) and 8 worker threads
   (PoolWorkers), all in this process; jobs/s = jobs / time until the last ACK is logged.
   - `batched`: jobs arrive in enqueue calls of 1000 (as `beaver enqueue --file` sends them), one
     call per loop turn, so the queue grows as deep as the run is long (1k vs 100k jobs deep);
   - `one by one`: a single producer enqueues one job per call and waits for its durable
     acknowledgement before the next (persist-queue's put loop, but dispatch and ACK overlap).
   Against persist-queue 1.1.0's SQLiteAckQueue doing put -> get -> ack for the same N (its
   defaults: SQLite WAL mode, synchronous=FULL), the loop of bench/anchors/pqueue_e2e.py.
2. Enqueue-to-dispatch latency on an idle controller: one job at a time, from `Controller.enqueue`
   to the handler starting in its worker thread (ENQUEUE + DISPATCH made durable by one fdatasync,
   then the hand-off to the pool); also enqueue to the durable acknowledgement. p50 / p99.
3. `--profile N`: cProfile of one batched run of N jobs, top functions by own time.
4. `--breakdown N`: where the loop thread's wall time goes, per job, in one one-by-one and one
   batched run of N jobs: fdatasync, blocked in the selector, loop turns, and the rest (Python).

Rounds interleave the contenders, so a busy neighbour slows them all alike; each figure is the best
of `--repeat` rounds. Prints JSON, then a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import selectors
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import PREALLOCATE, Config
from beaver_sim.runtime.clock import RealClock
from beaver_sim.runtime.workers import PoolWorkers
from beaver_sim.storage.fs import RealFS

BATCH = 1000
POLL = 0.001  # seconds between checks for the last ACK (bounds the error of a run's end time)


WORKERS = 8  # the default worker_count


def config_for(data_dir: str, workers: int, preallocate: str = "auto") -> Config:
    """The defaults (fsync always, a snapshot considered every 2 s), as `beaver run` has them."""
    return Config(data_dir=data_dir, fsync="always", worker_count=workers, wal_preallocate=preallocate)


def payload(i: int) -> dict[str, Any]:
    return {"type": "noop", "value": i}


@dataclass
class Breakdown:
    """Where the loop thread's wall time goes in a run (cProfile cannot say: it counts no time
    blocked in fdatasync or epoll). fdatasync through the WAL's own `on_sync` hook; loop turns and
    the time blocked in the selector (waiting for a worker's result) through a counting selector."""

    fsync_s: float = 0.0
    fsyncs: int = 0
    select_s: float = 0.0
    turns: int = 0

    def on_sync(self, seconds: float) -> None:
        self.fsync_s += seconds
        self.fsyncs += 1

    def restart(self) -> None:
        self.fsync_s = self.select_s = 0.0
        self.fsyncs = self.turns = 0

    def per_job(self, n: int, seconds: float) -> dict[str, float]:
        rest = seconds - self.fsync_s - self.select_s
        return {
            "us_per_job": seconds / n * 1e6,
            "fdatasync_us_per_job": self.fsync_s / n * 1e6,
            "us_per_fdatasync": self.fsync_s / max(1, self.fsyncs) * 1e6,
            "selector_wait_us_per_job": self.select_s / n * 1e6,
            "loop_turns_per_job": self.turns / n,
            "python_us_per_job": rest / n * 1e6,
        }


class _CountingSelector(selectors.DefaultSelector):
    def __init__(self, breakdown: Breakdown) -> None:
        super().__init__()
        self.breakdown = breakdown

    def select(self, timeout: float | None = None) -> list[Any]:
        t0 = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            self.breakdown.select_s += time.perf_counter() - t0
            self.breakdown.turns += 1


def _run(go: Callable[[], Any], breakdown: Breakdown | None) -> Any:
    """asyncio.run(go()), on a loop whose selector counts turns when `breakdown` is given."""
    if breakdown is None:
        return asyncio.run(go())
    factory = partial(asyncio.SelectorEventLoop, _CountingSelector(breakdown))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(go())


async def _open(
    data_dir: str,
    workers: int,
    handlers: dict[str, Any] | None = None,
    breakdown: Breakdown | None = None,
    preallocate: str = "auto",
) -> Controller:
    loop = asyncio.get_running_loop()
    config = config_for(data_dir, workers, preallocate)
    hooks = {} if breakdown is None else {"timer": time.perf_counter, "on_sync": breakdown.on_sync}
    storage = Storage.from_config(RealFS(), config, **hooks)
    ctl = Controller(config, RealClock(loop), storage, PoolWorkers(loop, config, handlers))
    ctl.start()
    return ctl


async def _until_done(ctl: Controller, n: int) -> None:
    while ctl.counters.completed + ctl.counters.dead < n:
        await asyncio.sleep(POLL)


def _close(ctl: Controller) -> None:
    ctl.stop(snapshot=False)
    ctl.workers.close(timeout=5)  # type: ignore[attr-defined]


def _finish(ctl: Controller, n: int, seconds: float, breakdown: Breakdown | None) -> dict[str, Any]:
    """A run's figures, read from the live controller (bench_peers.py shows `fsync` and `completed`)."""
    out: dict[str, Any] = {} if breakdown is None else breakdown.per_job(n, seconds)
    out |= {
        "seconds": seconds,
        "jobs_per_s": n / seconds,
        "fsyncs_per_job": ctl.storage.wal.syncs / n,
        "completed": ctl.counters.completed,
        "fsync": ctl.storage.wal.fsync,
        "preallocate": ctl.storage.wal.preallocate,
    }
    _close(ctl)
    return out


def run_batched(
    data_dir: str,
    n: int,
    workers: int = WORKERS,
    breakdown: Breakdown | None = None,
    preallocate: str = "auto",
) -> dict[str, Any]:
    """Enqueue calls of BATCH jobs, one per loop turn, while the pool drains; time to the last ACK."""

    async def go() -> dict[str, Any]:
        ctl = await _open(data_dir, workers, breakdown=breakdown, preallocate=preallocate)
        max_depth = 0
        if breakdown:
            breakdown.restart()
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            ctl.enqueue((f"j{i}", payload(i)) for i in range(start, min(n, start + BATCH)))
            max_depth = max(max_depth, len(ctl.state.pending))
            await asyncio.sleep(0)
        await _until_done(ctl, n)
        seconds = time.perf_counter() - t0
        return {**_finish(ctl, n, seconds, breakdown), "max_depth": max_depth}

    return _run(go, breakdown)


def run_one_by_one(
    data_dir: str,
    n: int,
    workers: int = WORKERS,
    breakdown: Breakdown | None = None,
    preallocate: str = "auto",
) -> dict[str, Any]:
    """One producer: enqueue one job, wait until it is durable, next; time to the last ACK."""

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        ctl = await _open(data_dir, workers, breakdown=breakdown, preallocate=preallocate)
        if breakdown:
            breakdown.restart()
        t0 = time.perf_counter()
        for i in range(n):
            durable = loop.create_future()
            ctl.enqueue([(f"j{i}", payload(i))], on_durable=lambda f=durable: f.set_result(None))
            await durable
        await _until_done(ctl, n)
        seconds = time.perf_counter() - t0
        return _finish(ctl, n, seconds, breakdown)

    return _run(go, breakdown)


def run_pqueue(directory: str, n: int) -> dict[str, float]:
    """persist-queue's SQLiteAckQueue: put N, then get + ack N (the anchor's loop)."""
    import persistqueue  # the bench extra; imported here so --help works without it

    q = persistqueue.SQLiteAckQueue(directory, auto_commit=True)
    t = time.perf_counter()
    for i in range(n):
        q.put({"id": f"j{i}", "payload": payload(i)})
    for _ in range(n):
        item = q.get(block=False)
        q.ack(item)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "jobs_per_s": n / seconds}


def run_latency(
    data_dir: str, samples: int, workers: int = WORKERS, preallocate: str = "auto"
) -> dict[str, float]:
    """Idle controller, one job at a time: enqueue -> handler start, and enqueue -> durable ack."""
    starts: dict[str, float] = {}

    def stamp(p: dict[str, Any]) -> None:
        starts[p["id"]] = time.perf_counter()  # in the worker thread, as the handler begins

    async def go() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        ctl = await _open(data_dir, workers, {"stamp": stamp}, preallocate=preallocate)
        to_start, to_ack = [], []
        for i in range(samples):
            job = f"j{i}"
            durable = loop.create_future()
            t0 = time.perf_counter()
            ctl.enqueue(
                [(job, {"type": "stamp", "id": job})], on_durable=lambda f=durable: f.set_result(None)
            )
            await durable
            to_ack.append(time.perf_counter() - t0)
            await _until_done(ctl, i + 1)  # idle again before the next sample
            to_start.append(starts[job] - t0)
        _close(ctl)
        return {**_percentiles("dispatch", to_start), **_percentiles("durable_ack", to_ack)}

    return asyncio.run(go())


def _percentiles(name: str, xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100)
    return {f"{name}_p50_ms": q[49] * 1000, f"{name}_p99_ms": q[98] * 1000}


def profile(root: str, n: int, workers: int) -> str:
    """cProfile of one batched run: the top 25 functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    run_batched(fresh(root, "profile"), n, workers)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    return out.getvalue()


def breakdowns(root: str, n: int, workers: int, preallocate: str = "auto") -> dict[str, dict[str, float]]:
    """One one-by-one and one batched run of n jobs, each with its Breakdown."""
    return {
        "one_by_one": run_one_by_one(fresh(root, "bd-one"), n, workers, Breakdown(), preallocate),
        "batched": run_batched(fresh(root, "bd-batched"), n, workers, Breakdown(), preallocate),
    }


def fresh(root: str, name: str) -> str:
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def best(results: list[dict[str, float]], key: str = "jobs_per_s") -> dict[str, float]:
    return max(results, key=lambda r: r[key])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }


def table(res: dict[str, Any]) -> str:
    rows = ["| Benchmark | jobs | jobs/s | vs persist-queue | fsyncs/job |", "|---|---:|---:|---:|---:|"]
    pq = res["pqueue"]
    pq_ref = pq[str(min(int(k) for k in pq))]["jobs_per_s"]  # its best case: the shallowest queue
    for n, r in pq.items():
        rows.append(
            f"| persist-queue SQLiteAckQueue put -> get -> ack | {int(n):,} | {r['jobs_per_s']:,.0f} | | |"
        )
    for kind in ("batched", "one_by_one"):
        for n, r in res[kind].items():
            label = (
                "beaver, enqueue calls of 1000"
                if kind == "batched"
                else "beaver, one durable enqueue at a time"
            )
            rows.append(
                f"| {label} | {int(n):,} | {r['jobs_per_s']:,.0f} | {r['jobs_per_s'] / pq_ref:.1f}x | "
                f"{r['fsyncs_per_job']:.3f} |"
            )
    lat = res["latency"]
    rows += [
        "",
        "| Latency, idle controller | p50 | p99 |",
        "|---|---:|---:|",
        f"| enqueue -> handler starts | {lat['dispatch_p50_ms']:.2f} ms | {lat['dispatch_p99_ms']:.2f} ms |",
        f"| enqueue -> durable acknowledgement | {lat['durable_ack_p50_ms']:.2f} ms | "
        f"{lat['durable_ack_p99_ms']:.2f} ms |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default="1000,100000", help="queue sizes for beaver (comma-separated)")
    ap.add_argument("--one-by-one-jobs", default="1000,10000", help="sizes for the one-by-one producer")
    ap.add_argument("--pq-jobs", default="1000,10000", help="sizes for persist-queue")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each figure is reported")
    ap.add_argument("--samples", type=int, default=2000, help="latency samples")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--profile", type=int, default=0, help="also profile one batched run of N jobs")
    ap.add_argument("--breakdown", type=int, default=0, help="also break down the loop's time, N jobs")
    ap.add_argument("--workers", type=int, default=WORKERS, help="worker_count (jobs per fsync at most)")
    ap.add_argument("--preallocate", choices=PREALLOCATE, default="auto", help="wal_preallocate for beaver")
    args = ap.parse_args(argv)
    batched = partial(run_batched, workers=args.workers, preallocate=args.preallocate)
    one_by_one = partial(run_one_by_one, workers=args.workers, preallocate=args.preallocate)
    sizes = [int(x) for x in args.jobs.split(",")]
    one_sizes = [int(x) for x in args.one_by_one_jobs.split(",")]
    pq_sizes = [int(x) for x in args.pq_jobs.split(",")]
    root = tempfile.mkdtemp(prefix="beaver-bench-e2e-", dir=args.dir)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"batched": {}, "one_by_one": {}, "pqueue": {}}
    latency: list[dict[str, float]] = []
    contenders: list[tuple[str, int, Callable[[str, int], dict[str, float]]]] = [
        *(("pqueue", n, run_pqueue) for n in pq_sizes),
        *(("batched", n, batched) for n in sizes),
        *(("one_by_one", n, one_by_one) for n in one_sizes),
    ]
    try:
        for r in range(args.repeat):
            for kind, n, fn in contenders:
                out = fn(fresh(root, f"{kind}-{n}"), n)
                runs[kind].setdefault(n, []).append(out)
                print(f"round {r + 1} {kind} {n}: {out['jobs_per_s']:,.0f} jobs/s", file=sys.stderr)
            latency.append(run_latency(fresh(root, "latency"), args.samples, args.workers, args.preallocate))
        res: dict[str, Any] = {k: {str(n): best(v) for n, v in by_n.items()} for k, by_n in runs.items()}
        res["latency"] = min(latency, key=lambda r: r["dispatch_p99_ms"])
        res["workers"], res["preallocate"] = args.workers, args.preallocate
        res["machine"] = machine()
        print(json.dumps(res, indent=2))
        print()
        print(table(res))
        if args.breakdown:
            print()
            print(json.dumps(breakdowns(root, args.breakdown, args.workers, args.preallocate), indent=2))
        if args.profile:
            print()
            print(profile(root, args.profile, args.workers))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
