"""Crash sweeps: run a workload once, enumerate crash points, and for each one crash there, recover
with the real code, check the invariants and run on to the end. One DataFrame row per point.

Point sets: `bytes` (every WAL LSN: every byte of every segment, headers included), `marks` (every
time a named persistence point is reached), `records` (every record boundary plus a torn point in the
middle of every record: the default), `all` (bytes + marks), `sample:N` (N of `all`, seeded), `io`
(the run's every write failing with ENOSPC, then every fsync with EIO, one per point), `times:N` (N
virtual times spread evenly over the run: between events, where acknowledged bytes may sit
unsynced), any of
them joined with `+`, or an explicit list of CrashPlans or `kind:where` strings. Points run on any
`concurrent.futures.Executor` (a process pool by default, a Dask `distributed` client for more than
one machine); rows come back sorted by point, so the DataFrame is the same whatever ran it. Every
column is deterministic except `recovery_seconds`, the measured wall time of the real recovery.

How a sweep stays fast (`share=True`, the default; `share=False` runs every point from scratch and
gives the same rows): each task runs the workload once, and at each of its crash points it captures
the moment (the files, the clients' acknowledgements, the workers' random state) and runs the crashed
continuation from there, so the run up to a crash is shared by all the points after it. Points that
crash in the same write with the same whole records before them (or, under `power-loss` with nothing
torn, anywhere in the same write) leave files that differ at most in a torn tail: every one of them
is recovered by the real code, and when its recovery rebuilds exactly the state and log of the first
one (same snapshot, last seq, end LSN and checksum chain), the rest of the run is that one's too,
by determinism; the row shares it, keeping its own recovery figures. Anything else runs on its own.
Each recovery is the real one, handed what the task's earlier recoveries verified of the same growing
log (the WAL scan's `known`, docs/architecture.md): it checks its snapshot's replay and the new
bytes, not the whole log again, and a segment the crash model changed inside those bytes whole.

Continuations that recover different states may still meet later: the crashes inside one write
recover different prefixes of it, and once the clients have resent what was never acknowledged
their queues, clocks, workers and checkers are equal, only the log's byte order and CRC chain differ.
With `merge=True` (the default) a continuation whose logical state, between two events, equals one
an earlier continuation of the task went through stops there and takes that one's verdict, keeping
its own crash and recovery columns; `merge=False` (`--no-merge`) runs each to its end and gives the
same rows. Why no verdict depends on what the compared state leaves out (the CRCs, the records'
order before the meeting point): sim/merge.py and docs/contracts.md. Since a continuation merges
only with those of its own task, a task keeps the points of one write together, up to half of one
worker's share of the points (`_chunks`).

This module keeps the orchestration (which points, in which groups and tasks, and the rows' checks);
sim/points.py enumerates the points from the run without a crash, sim/share.py runs a task's points
from one shared run, sim/executors.py gives the executors, sim/frames.py builds and reads the frames
and sim/recovery_sweep.py holds the recovery sweep (a second crash while recovering from a first)."""

from __future__ import annotations

import bisect
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, as_completed
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.checker import same_bytes
from beaver_sim.sim.executors import executor as make_executor
from beaver_sim.sim.executors import progress as progress_bar
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.frames import (
    earliest,
    failing,
    point_row,
    sweep_frame,
    violations,
)
from beaver_sim.sim.fs import SUBSETS
from beaver_sim.sim.points import Base, base_run, enumerate_points
from beaver_sim.sim.recovery_sweep import recovery_points, recovery_sweep
from beaver_sim.sim.share import Points, run_alone, run_shared
from beaver_sim.sim.workload import Workload

if TYPE_CHECKING:
    import pandas as pd

__all__ = [  # (importable from here too: violations and failing from sim/frames.py, Base, base_run
    # and enumerate_points from sim/points.py, recovery_points and recovery_sweep from
    # sim/recovery_sweep.py)
    "TORN_MAX",
    "Base",
    "SweepInterrupted",
    "base_run",
    "crash_sweep",
    "enumerate_points",
    "failing",
    "lifecycle",
    "minimal_counterexample",
    "recovery_points",
    "recovery_sweep",
    "violations",
    "with_subsets",
    "with_torn",
]


def lifecycle(
    jobs: int = 16, seed: int = 3, model: str = "process", fsync: str = "always", **config: Any
) -> Simulation:
    """A sweep workload that reaches the whole life cycle: Poisson arrivals in batches of 4,
    exponential durations that run into timeouts, a 30 % failure rate (dead jobs), a snapshot
    every 0.3 s and 4 KiB segments, so rotation, snapshot pruning and segment deletion each happen
    several times (every persistence point of `faults.POINTS` is reached; 16 jobs: a 6.5 KB log)."""
    settings: dict[str, Any] = {
        "data_dir": "/sim",
        "worker_count": 4,
        "task_timeout": 0.5,
        "failure_rate": 0.3,
        "work_min": 0.05,
        "work_max": 0.6,
        "snapshot_interval": 0.3,
        "snapshot_log_ratio": 0.25,
        "segment_bytes": 4096,
        "fsync": fsync,
    }
    workload = Workload(jobs, rate=20.0, batch=4, durations="exponential")
    return Simulation(Config(**settings | config), workload, seed, model=model)


TORN_MAX = 512  # bytes: a torn write keeps at most a sector of the unsynced tail


def with_torn(plans: list[CrashPlan], torn: int | str, seed: int) -> list[CrashPlan]:
    """`plans` with `torn` bytes each (a number, or "random": seeded, 1..TORN_MAX per plan)."""
    if torn == "random":
        rng = random.Random(f"torn:{seed}")
        return [replace(p, torn=rng.randint(1, TORN_MAX)) for p in plans]
    if not isinstance(torn, int) or torn < 0:
        raise BeaverError(f"torn must be a number of bytes >= 0 or 'random', got {torn!r}")
    return [replace(p, torn=torn) for p in plans] if torn else plans


def with_subsets(plans: list[CrashPlan], units: int) -> list[CrashPlan]:
    """Each of `plans` 2**units times, under SUBSETS: once per subset of the first `units` unsynced
    units (names and blocks) a crash there leaves, so every order of the writes since the last sync
    is explored; units past them never survive. Points with fewer units repeat a state."""
    if not isinstance(units, int) or not 0 <= units <= 8:
        raise BeaverError(f"subsets must be a number of units in 0..8, got {units!r}")
    return [replace(p, model=SUBSETS, torn=mask) for p in plans for mask in range(1 << units)]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep's points: how many of them finished, and the violations found there
    (`results`: the finished points' rows; `base`: the run without a crash's own violations)."""

    def __init__(
        self, total: int, seconds: float, base: list[Any], results: dict[int, dict[str, Any]]
    ) -> None:
        super().__init__(f"interrupted after {seconds:.1f} s: {len(results)} of {total} crash points done")
        self.done, self.total, self.seconds = len(results), total, seconds
        self.base, self.results = base, results

    def count(self) -> int:
        return len(self.base) + sum(len(r["problems"]) for r in self.results.values())

    def problems(self) -> Iterator[tuple[int, int, str | None, str]]:
        """(point, invariant, job, detail), point -1 first (the run without a crash), then by point:
        a generator, since a sweep without fsync may have found a million by then."""
        for v in self.base:
            yield -1, v.invariant, v.job, v.detail
        for i in sorted(self.results):
            for invariant, job, detail in self.results[i]["problems"]:
                yield i, invariant, job, detail


def crash_sweep(
    sim: Simulation,
    points: str | Sequence[CrashPlan | str] = "records",
    *,
    executor: Executor | str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
    chunk: int | None = None,
    share: bool = True,
    merge: bool = True,
    torn: int | str = 0,
    subsets: int = 0,
) -> pd.DataFrame:
    """Crash `sim`'s run at every point of `points` (under `sim.model`), recover, check, run on.

    `executor`: an Executor, or "process" (default: a pool of `workers`), "dask" (a LocalCluster,
    or the scheduler at `scheduler`), "serial" (here). `progress`: a tqdm bar (default: on a TTY).
    `share=False` runs every point from scratch (same rows, slower: the module docstring says why);
    `merge=False` runs every continuation to its end (same rows, slower: sim/merge.py says why).
    `torn`: bytes of each file's unsynced tail that a power loss keeps at every point, or "random":
    a seeded draw in 1..TORN_MAX per point (a torn write ends anywhere in its first sector).
    `subsets`: instead, explore every subset of the first `subsets` unsynced units at each point
    (`with_subsets`; 2**subsets rows a point, a bounded exhaustive search).
    Column `at` is the plan's position as text (an LSN, a record, a point's name, a time; `offset`
    and `time` are the numbers); `problems` holds each point's violations as JSON ([invariant,
    job, detail] each); `violations(df)` lists them all. `df.attrs` holds `wal_bytes`, `seconds`,
    `points`, `groups` (points that need a continuation of their own), `merged` (continuations
    stopped once their state met an earlier one's) and `base_violations`: those of the uncrashed run itself,
    as point -1 (a mutant may break an invariant with no crash at all; two runs that differ break
    invariant 7)."""
    t0 = time.perf_counter()
    base = base_run(sim)
    again = replace(sim, crash=None, sample_every=0).run()
    plans = with_torn(enumerate_points(base, points, sim.seed), torn, sim.seed)
    if subsets:
        plans = with_subsets(plans, subsets)
    token = replace(sim, crash=None).token()
    never = point_row(again)  # a point the run never reaches: the run without a crash
    results: dict[int, dict[str, Any]] = {}
    groups: dict[tuple[Any, ...], int] = {}
    todo: Points = []
    moments: list[tuple[Any, ...]] = []  # per point of `todo`: the moment it crashes at (its write)
    for i, plan in enumerate(plans):
        sig = base.signature(plan, sim.model)
        if sig == ("never",):
            results[i] = dict(never, problems=[])  # the run's own problems are reported once, as point -1
        else:
            x = base.lsn(plan) if plan.kind in ("lsn", "record") else None
            todo.append((i, plan.as_list(), x, groups.setdefault(sig, len(groups))))
            moments.append(sig[:2] if sig[0] == "write" else sig)
    run = partial(run_shared, merge=merge) if share else run_alone
    n = workers or os.cpu_count() or 1
    size = chunk or max(1, min(64, len(todo) // (8 * n)))  # small tasks: the last ones end together
    chunks = _chunks(todo, size, moments, max(size, len(todo) // (2 * n)) if merge and share else size)
    bar = progress_bar(len(plans), progress)
    bar.update(len(plans) - len(todo))
    with make_executor(executor, workers, scheduler) as ex:
        futures = [] if ex is None else [ex.submit(run, token, sim.model, c) for c in chunks]
        try:
            if futures:  # the frame's pandas (0.3 s to import) loads while the tasks run, not before
                import pandas  # noqa: F401
            if ex is None:
                for c in chunks:
                    _collect(results, run(token, sim.model, c), base, plans, bar)
            for f in as_completed(futures):
                _collect(results, f.result(), base, plans, bar)
        except KeyboardInterrupt:
            for f in futures:  # an executor passed in (or Dask) keeps running: drop what is queued
                f.cancel()
            bar.close()
            elapsed = time.perf_counter() - t0
            raise SweepInterrupted(len(plans), elapsed, base.result.violations, results) from None
    bar.close()
    first = [{"point": -1, **v.as_dict(), "token": token} for v in base.result.violations]
    if again.files != base.result.files:
        detail = (
            f"two runs of the same inputs differ in {', '.join(same_bytes(again.files, base.result.files))}"
        )
        first.append({"point": -1, "invariant": 7, "job": None, "detail": detail, "token": token})
    return sweep_frame(
        sim,
        plans,
        results,
        first,
        wal_bytes=base.end,
        seconds=time.perf_counter() - t0,
        points=len(plans),
        groups=len(groups),
    )


def _chunks(todo: Points, size: int, moments: list[tuple[Any, ...]], most: int) -> list[Points]:
    """Consecutive points, about `size` per task, never splitting a group (it shares one run), nor,
    up to `most` points a task, the points that crash at one moment (`moments`: in one write): their
    continuations may merge (sim/merge.py), but only with those of their own task, so every task a
    write's points are split into runs one of them to the end (a 1,000-job batch sent at t=0: one
    whole run per 64 points, instead of one)."""
    out: list[Points] = []
    for k, p in enumerate(todo):
        last = out[-1] if out else None
        if last is not None and (
            len(last) < size or last[-1][3] == p[3] or (len(last) < most and moments[k - 1] == moments[k])
        ):
            last.append(p)
        else:
            out.append([p])
    return out


def _collect(
    results: dict[int, dict[str, Any]],
    rows: dict[int, dict[str, Any]],
    base: Base,
    plans: list[CrashPlan],
    bar: Any,
) -> None:
    """File a finished task's rows, checking that each run agreed with the uncrashed run up to
    its crash (invariant 7)."""
    for i, row in rows.items():
        plan = plans[i]
        if plan.kind in ("lsn", "record") and row["offset"] is not None:
            row["offset"] = base.lsn(plan)
        expected = _expected_record(base, plan)
        if expected is not None and row["record"] is not None and row["record"] != expected:
            why = f"the run differs from the first before its crash: {row['record']} != {expected}"
            row["problems"] = [*row["problems"], (7, None, why)]
            row["violations"] += 1
            row["outcome"] = "violation"
        results[i] = row
    bar.update(len(rows))


def _expected_record(base: Base, plan: CrashPlan) -> list[Any] | None:
    """`record_before(base.trace, x)`, by bisection: a walk back from the end for every point of a
    long run made the parent's share of a sweep grow as points x records."""
    x = base.lsn(plan)
    if x is None or plan.kind not in ("lsn", "record"):
        return None
    i = bisect.bisect_right(base.ends, x)
    return [base.trace[i - 1][0][k] for k in ("seq", "type", "job")] if i else None


def minimal_counterexample(
    sim: Simulation,
    df: pd.DataFrame,
    points: str | Sequence[CrashPlan | str] = "records",
    sweep: Callable[..., pd.DataFrame] = crash_sweep,
    **options: Any,
) -> dict[str, Any] | None:
    """For a failing sweep: its earliest failing crash point, and the fewest jobs (by bisection)
    whose sweep still fails, with that sweep's earliest failing point and replay token."""
    if not failing(df):
        return None
    first = earliest(df)
    lo, hi, best = 1, sim.workload.jobs, first
    while lo < hi:
        mid = (lo + hi) // 2
        smaller = replace(sim, workload=replace(sim.workload, jobs=mid))
        d = sweep(smaller, points, **options)
        if failing(d):
            hi, best = mid, earliest(d)
        else:
            lo = mid + 1
    return {"earliest": first, "jobs": hi, "smallest": best}
