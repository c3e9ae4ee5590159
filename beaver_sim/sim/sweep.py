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

Continuations that recover different states may still meet later: the crashes inside one write
recover different prefixes of it, and once the clients have resent what was never acknowledged
their queues, clocks, workers and checkers are equal, only the log's byte order and CRC chain differ.
With `merge=True` (the default) a continuation whose logical state, between two events, equals one
an earlier continuation of the task went through stops there and takes that one's verdict, keeping
its own crash and recovery columns; `merge=False` (`--no-merge`) runs each to its end and gives the
same rows. Why no verdict depends on what the compared state leaves out (the CRCs, the records'
order before the meeting point): sim/merge.py and docs/contracts.md."""

from __future__ import annotations

import bisect
import gc
import json
import os
import posixpath
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import Any

import pandas as pd

from beaver_sim.core.durable import Storage
from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim import mutants
from beaver_sim.sim.capture import Capture, record_before, recovered_key
from beaver_sim.sim.checker import CODES, INVARIANTS, same_bytes
from beaver_sim.sim.experiment import Simulation, _Run
from beaver_sim.sim.faults import IO_KINDS, POINTS, CrashHook, CrashPlan, recovery_model_seconds, survivors
from beaver_sim.sim.fs import METADATA_FIRST, POWER_LOSS, SUBSETS, SimFS
from beaver_sim.sim.merge import Merged, Merger
from beaver_sim.sim.results import SimResult
from beaver_sim.sim.workload import Workload
from beaver_sim.storage.wal import SEGMENT_NAME

COLUMNS = [
    "point",
    "kind",
    "at",
    "occurrence",
    "offset",
    "time",
    "model",
    "outcome",
    "violations",
    "invariants",
    "detail",
    "jobs_lost",
    "duplicates",
    "records_replayed",
    "bytes_truncated",
    "model_seconds",
    "recovery_seconds",
    "problems",
    "token",
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


@dataclass
class Base:
    """The uncrashed run a sweep starts from: its records, writes and persistence points."""

    result: SimResult

    @cached_property
    def starts(self) -> list[int]:
        """The start LSN of every WAL write, in order."""
        return [w[1] for w in self.writes]

    @cached_property
    def trace(self) -> list[tuple[dict[str, Any], int, int]]:
        """The records of the uncrashed run, with their LSNs."""
        return self.result.records(0)

    @property
    def end(self) -> int:
        return self.result.end_lsn

    @property
    def writes(self) -> list[tuple[int, int, int]]:
        hook = self.result.lives[0].hook
        return hook.writes if hook is not None else []

    @property
    def marks(self) -> list[tuple[str, int, int, float]]:
        hook = self.result.lives[0].hook
        return hook.points if hook is not None else []

    def lsn(self, plan: CrashPlan) -> int | None:
        """Where in the log a plan crashes (None: a time)."""
        if plan.kind == "lsn":
            return plan.at
        if plan.kind == "record":
            seqs = self.trace
            i = plan.at - seqs[0][0]["seq"] if seqs else -1
            return seqs[i][2] if 0 <= i < len(seqs) else self.end
        if plan.kind == "point":
            for name, n, lsn, _t in self.marks:
                if name == plan.at and n == plan.occurrence:
                    return lsn
            return None
        return None

    @cached_property
    def ends(self) -> list[int]:
        return [end for _rec, _start, end in self.trace]

    def signature(self, plan: CrashPlan, model: str) -> tuple[Any, ...]:
        """Points with the same signature crash at the same moment, and their files differ at most
        in a torn tail (which recovery must cut): candidates to share the rest of the run."""
        model = plan.model or model
        if plan.kind not in ("lsn", "record"):
            return (plan.kind, plan.at, plan.occurrence, plan.torn)
        x = self.lsn(plan)
        starts = self.starts
        i = bisect.bisect_right(starts, x) - 1 if x is not None else -1
        if i < 0 or x >= starts[i] + self.writes[i][2]:  # type: ignore[operator]
            return ("never",)  # past the end of the log: the run ends before reaching it
        if (model == POWER_LOSS and plan.torn == 0) or model == METADATA_FIRST:
            return ("write", i)  # the unsynced tail is lost whole, wherever in it the crash came
        # torn bytes aside: how many records a torn tail keeps is for the recovered key to tell
        return ("write", i, bisect.bisect_right(self.ends, x))


def base_run(sim: Simulation) -> Base:
    """The run without a crash, observed: every WAL write and persistence point it reaches."""
    return Base(replace(sim, crash=None, observe=True, sample_every=0).run())


SETS = ("all", "bytes", "records", "marks", "sample", "io", "times")


def enumerate_points(base: Base, points: str | Sequence[CrashPlan | str], seed: int = 0) -> list[CrashPlan]:
    """The crash points a spec names: point sets (`records+marks`) in the order the run reaches
    them, then explicit points (`lsn:300`, `record:7`, ...) in the order given, each once."""
    items = points.replace("+", ",").split(",") if isinstance(points, str) else list(points)
    found: list[tuple[tuple[int, int], CrashPlan]] = []
    given: list[CrashPlan] = []
    for item in items:
        if isinstance(item, CrashPlan):
            given.append(item)
            continue
        part = item.strip()
        name, _, arg = part.partition(":")
        if name not in SETS:
            if not arg:
                raise BeaverError(
                    f"points {part!r}: expected all, bytes, records, marks, io, sample:N, times:N "
                    "or KIND:WHERE"
                )
            given.append(CrashPlan.parse(part))
        elif name in ("bytes", "all"):
            found += [((x, 1), CrashPlan("lsn", x)) for x in range(base.end)]
        if name in ("marks", "all"):
            found += [((lsn, 0), CrashPlan("point", m, n)) for m, n, lsn, _t in base.marks]
        elif name == "records":
            for rec, start, end in base.trace:
                found.append(((end, 1), CrashPlan("record", rec["seq"])))
                found.append(((start + (end - start) // 2, 1), CrashPlan("lsn", start + (end - start) // 2)))
        elif name == "io":  # each write, fsync, rename and directory fsync fails, one at a time
            fs = base.result.fs
            calls = {"write": 0, "sync": 0, "rename": 0, "dirsync": 0}
            if fs is not None:
                calls = {
                    "write": fs.write_calls,
                    "sync": fs.syncs,
                    "rename": fs.renames,
                    "dirsync": fs.dir_syncs,
                }
            order = 0
            for kind, (op, _code, _keep) in IO_KINDS.items():
                found += [((0, order + k), CrashPlan(kind, k)) for k in range(1, calls[op] + 1)]
                order += calls[op]
        elif name == "times":  # in order with the others: after the writes made by then
            n, hook = _count(part, arg), base.result.lives[0].hook
            times, end = (hook.write_times if hook else []), base.result.summary["virtual_seconds"]
            for k in range(1, n + 1):
                t = round(end * k / (n + 1), 6)
                i = bisect.bisect_right(times, t)
                lsn = base.writes[i - 1][1] + base.writes[i - 1][2] if i else 0
                found.append(((lsn, 2), CrashPlan("time", t)))
        elif name == "sample":
            n = _count(part, arg)
            pool = enumerate_points(base, "all")
            picked = sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))
            found += [
                ((base.lsn(pool[i]) or 0, 0 if pool[i].kind == "point" else 1), pool[i]) for i in picked
            ]
    plans = [plan for _key, plan in sorted(found, key=lambda kp: kp[0])] + given
    return list(dict.fromkeys(plans))


def _count(part: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise BeaverError(f"points {part!r}: expected {part.partition(':')[0]}:N") from None


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


Points = list[tuple[int, list[Any], int | None, int]]  # (index, plan, crash LSN or None, group)


def _run_alone(token: str, model: str, points: Points) -> dict[int, Any]:
    """Run crash points one by one, each from scratch (`share=False`)."""
    base = Simulation.from_token(token, sample_every=0)
    return {
        i: point_row(replace(base, crash=CrashPlan.from_list(p), model=model).run())
        for i, p, _x, _g in points
    }


class _Done(BaseException):
    """Every crash point of a task has been taken: the shared run can stop."""


class _SharingHook(CrashHook):
    """The hook of a task's shared run: at each crash point it captures the moment and runs the
    crashed continuation from it. A write's points wait for the next FS call: the write's bytes are
    in the files by then, and each point keeps those before its LSN."""

    def __init__(
        self, fs: SimFS, wal_dir: str, plan: Any, clock: Any, observe: bool, *, run: _Run, task: _Task
    ):
        super().__init__(fs, wal_dir, None, clock, observe)
        self.run, self.task = run, task
        self.pending: list[tuple[Capture, str, int, int, list[Any]]] = []
        self.at_lsn = sorted((x, i) for i, (_p, x) in enumerate(task.targets) if x is not None)
        self.next = 0
        self.at_mark: dict[tuple[str, int], list[int]] = {}
        for i, (plan_, x) in enumerate(task.targets):
            if x is None and plan_.kind == "point":
                self.at_mark.setdefault((plan_.at, plan_.occurrence), []).append(i)
            elif x is None:
                clock.call_at(plan_.at, self._at_time, i)

    def __call__(self, op: str, path: str, nbytes: int) -> int | None:
        if self.pending:
            self.settle()
        return super().__call__(op, path, nbytes)

    def reached_write(self, path: str, start: int, nbytes: int) -> int | None:
        targets, end = self.at_lsn, start + nbytes
        if self.next < len(targets) and targets[self.next][0] < end:
            cap = self.run.capture(self.task.targets[targets[self.next][1]][0], None)
            size = len(self.fs.files[path].data)
            while self.next < len(targets) and targets[self.next][0] < end:
                x, i = targets[self.next]
                keep = max(0, x - start)
                self.pending.append(
                    (replace(cap, plan=self.task.targets[i][0], lsn=start + keep), path, size, keep, [i])
                )
                self.next += 1
        return None

    def reached_mark(self, name: str, n: int) -> int | None:
        for i in self.at_mark.pop((name, n), []):
            self.task.take(i, self.run.capture(self.task.targets[i][0], self.end_lsn()), self.fs, None)
        self.task.done_yet()
        return None

    def _at_time(self, i: int) -> None:
        storage = self.run.storage
        lsn = storage.wal.written_lsn if storage is not None else None
        self.task.take(i, self.run.capture(self.task.targets[i][0], lsn), self.fs, None)
        self.task.done_yet()

    def settle(self) -> None:
        """Take the points of the last write, now that its bytes are in the files."""
        pending, self.pending = self.pending, []
        # continuations meet only those that crashed at the same moment: their restarts, and every
        # event after, come at the same times (a write that holds one group's points alone has none)
        meet = len({self.task.groups[i] for *_, (i,) in pending}) > 1
        for cap, path, size, keep, (i,) in pending:
            self.task.take(i, cap, self.fs, (path, size + keep), meet)
        self.task.done_yet()


@dataclass
class _Task:
    """The crash points one executor task takes from one shared run, grouped by signature."""

    sim: Simulation
    targets: list[tuple[CrashPlan, int | None]]  # (plan, LSN of its crash or None)
    groups: list[int]  # target -> group: same group, candidates to share the continuation
    rows: dict[int, dict[str, Any]]
    keys: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]  # group -> (recovered key, row)
    base: _Run | None = None
    left: int = 0
    merger: Merger | None = None  # None: every continuation runs to its end (`merge=False`)

    def take(self, i: int, cap: Capture, fs: SimFS, cut: tuple[str, int] | None, meet: bool = False) -> None:
        """Crash target `i` at the captured moment: the files survive under the crash model (a
        torn write keeps its bytes before the crash LSN), recovery runs, the run goes on. `meet`:
        other groups crash at this moment too, so the continuation's state may meet theirs."""
        plan = self.targets[i][0]
        files = _crashed(fs, plan.model or self.sim.model, plan.torn, cut)
        self.left -= 1
        group = self.groups[i]
        shared = self.keys.get(group)
        assert self.base is not None
        if shared is not None:
            key, report = _recover(self.sim, files)
            if key == shared[0]:
                row = dict(shared[1], problems=list(shared[1]["problems"]))
                row.update(
                    report,
                    offset=cap.lsn,
                    record=record_before(self.base.trace_until(cap.lsn), cap.lsn),
                    merged=False,
                )
                self.rows[i] = row
                return
            files = _crashed(fs, plan.model or self.sim.model, plan.torn, cut)  # that recovery changed them
        merger = self.merger if meet else None
        if merger is not None:
            merger.start()
        try:
            result = _Run.resume(replace(self.sim, crash=plan), self.base, cap, files, merger)
        except Merged as e:
            own = point_row(e.result)
            row = dict(e.row, problems=list(e.row["problems"]))
            row.update({k: own[k] for k in OWN}, merged=True)
            self.rows[i] = row
            if shared is None and e.result.lives[1].recovered_key is not None:
                self.keys[group] = (e.result.lives[1].recovered_key, row)
            return
        row = self.rows[i] = point_row(result)
        if merger is not None:
            merger.finished(row)
        if shared is None and len(result.lives) > 1 and result.lives[1].recovered_key is not None:
            self.keys[group] = (result.lives[1].recovered_key, row)

    def done_yet(self) -> None:
        if self.left == 0:
            raise _Done


def _crashed(fs: SimFS, model: str, torn: int, cut: tuple[str, int] | None) -> SimFS:
    """The files a crash leaves under `model`; `cut`: the crash came inside a write to that file,
    which `fs` holds whole, and only its bytes before that length had been written."""
    live = fs.files.get(cut[0]) if cut is not None else None
    if cut is None or live is None or len(live.data) <= cut[1]:
        return survivors(fs, model, torn)
    tail = live.data[cut[1] :]
    del live.data[cut[1] :]
    try:
        return survivors(fs, model, torn)
    finally:
        live.data += tail


def _recover(sim: Simulation, files: SimFS) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Recover `files` with the real code (and the mutant's pieces): what it rebuilt, and the
    figures a sweep row keeps from it."""
    m = mutants.get(sim.mutant) or mutants.Mutant("none", 0)
    try:
        storage = Storage.from_config(
            files,
            sim.config,
            timer=time.perf_counter,
            wal_cls=m.wal_cls,
            snapshot_cls=m.snapshot_cls,
            apply_fn=m.apply_fn,
        )
    except BeaverError as e:
        return ("refused", str(e)), {}
    r = storage.report
    return recovered_key(storage), {
        "records_replayed": r.records_replayed,
        "bytes_truncated": r.bytes_truncated,
        "model_seconds": recovery_model_seconds(r.records_replayed, r.wal_bytes, r.snapshot_bytes),
        "recovery_seconds": r.seconds,
    }


def _run_shared(token: str, model: str, points: Points, merge: bool = True) -> dict[int, Any]:
    """Run some crash points of one sweep from one shared run (in a worker process, a Dask worker or
    here); `points` are (index, plan, crash LSN or None, group). I/O faults run on their own.
    `merge`: continuations whose states converge share the rest of the run (sim/merge.py)."""
    alone = [p for p in points if p[1][0] in (*IO_KINDS, "op")]
    if alone:
        rows = _run_alone(token, model, alone)
        rest = [p for p in points if p[1][0] not in (*IO_KINDS, "op")]
        return rows | (_run_shared(token, model, rest, merge) if rest else {})
    base = Simulation.from_token(token, sample_every=0)
    sim = replace(base, model=model)
    targets = [(CrashPlan.from_list(p), x) for _i, p, x, _g in points]
    task = _Task(sim, targets, [g for *_, g in points], {}, {}, left=len(targets))
    task.merger = Merger() if merge else None
    run = _Run(base)
    task.base = run
    run.watch = partial(_SharingHook, task=task)
    enabled = gc.isenabled()
    gc.disable()
    try:
        run.loop()
        hook = run.out.lives[0].hook
        if isinstance(hook, _SharingHook) and hook.pending:
            hook.settle()
    except _Done:
        pass
    finally:
        if enabled:
            gc.enable()
    return {points[i][0]: row for i, row in task.rows.items()}


OWN = ("offset", "time", "record", "records_replayed", "bytes_truncated", "model_seconds", "recovery_seconds")
# a merged row's own columns (its crash and recovery); the rest is the run it merged into


def point_row(r: SimResult) -> dict[str, Any]:
    """The sweep row of one crashed run (without the point's own labels)."""
    crash = r.crashes[0] if r.crashes else None
    rec = r.recoveries[0] if r.recoveries else {}
    vs = r.violations
    if r.ending == "refused":
        outcome = "refused"
    elif vs:
        outcome = "violation"
    else:
        outcome = "ok" if crash is not None else "no-crash"
    return {
        "offset": crash["lsn"] if crash else None,
        "time": crash["time"] if crash else None,
        "outcome": outcome,
        "violations": len(vs),
        "invariants": ",".join(str(i) for i in sorted({v.invariant for v in vs})),
        "detail": _detail(vs[0].invariant, vs[0].job, vs[0].detail) if vs else "",
        "jobs_lost": len(r.checker.lost),
        "duplicates": sum(1 for n in r.successes().values() if n > 1),
        "records_replayed": rec.get("records_replayed", 0),
        "bytes_truncated": rec.get("bytes_truncated", 0),
        "model_seconds": rec.get("model_seconds", 0.0),
        "recovery_seconds": rec.get("seconds", 0.0),
        "record": crash["record"] if crash else None,
        "problems": [(v.invariant, v.job, v.detail) for v in vs],
    }


def _detail(invariant: int, job: str | None, detail: str) -> str:
    return f"invariant {invariant} {CODES[invariant]}: " + (f"job {job}: " if job else "") + detail


@contextmanager
def _executor(executor: Executor | str | None, workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """The executor to use, created and shut down here unless one was passed in."""
    if isinstance(executor, Executor):
        yield executor
    elif executor in (None, "process"):
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), initializer=_ignore_sigint) as pool:
            try:
                yield pool
            except KeyboardInterrupt:
                _terminate(pool)
                raise
    elif executor == "dask":
        from dask.distributed import Client, LocalCluster

        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1)
            client = Client(cluster)
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if not scheduler:
                cluster.close()
    elif executor == "serial":
        yield None
    else:
        raise BeaverError(f"executor must be process, dask or serial, got {executor!r}")


def _ignore_sigint() -> None:
    """In a pool's worker: Ctrl-C reaches the whole process group, and the parent alone handles it
    (a worker's KeyboardInterrupt would only print a traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C: drop the queued chunks and stop the workers now, not once their chunks end."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((pool._processes or {}).values()):  # no public way before Python 3.14
        proc.terminate()


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
    for i, plan in enumerate(plans):
        sig = base.signature(plan, sim.model)
        if sig == ("never",):
            results[i] = dict(never, problems=[])  # the run's own problems are reported once, as point -1
        else:
            x = base.lsn(plan) if plan.kind in ("lsn", "record") else None
            todo.append((i, plan.as_list(), x, groups.setdefault(sig, len(groups))))
    run = partial(_run_shared, merge=merge) if share else _run_alone
    n = workers or os.cpu_count() or 1
    size = chunk or max(1, min(64, len(todo) // (8 * n)))  # small tasks: the last ones end together
    chunks = _chunks(todo, size)
    bar = _progress(len(plans), progress)
    bar.update(len(plans) - len(todo))
    with _executor(executor, workers, scheduler) as ex:
        futures = [] if ex is None else [ex.submit(run, token, sim.model, c) for c in chunks]
        try:
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
    rows, merged = [], 0
    for i, plan in enumerate(plans):
        row = dict(results[i])
        row.pop("record")
        merged += row.pop("merged", False)
        row["problems"] = json.dumps(row["problems"])
        row.update(point=i, kind=plan.kind, at=str(plan.at), occurrence=plan.occurrence, model=sim.model)
        row["token"] = replace(sim, crash=plan).token()
        rows.append(row)
    first = [{"point": -1, **v.as_dict(), "token": token} for v in base.result.violations]
    if again.files != base.result.files:
        detail = (
            f"two runs of the same inputs differ in {', '.join(same_bytes(again.files, base.result.files))}"
        )
        first.append({"point": -1, "invariant": 7, "job": None, "detail": detail, "token": token})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(  # small values only: pandas copies attrs into every frame derived from df
        wal_bytes=base.end,
        seconds=time.perf_counter() - t0,
        points=len(plans),
        groups=len(groups),
        merged=merged,
        base_violations=first,
    )
    return df


def violations(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Every violation a sweep found, as {point, invariant, code, job, detail, token}: the uncrashed
    run's first (point -1), then each point's in order."""
    out = [
        {"point": v["point"], "invariant": v["invariant"], "code": CODES[v["invariant"]]}
        | {k: v[k] for k in ("job", "detail", "token")}
        for v in df.attrs["base_violations"]
    ]
    for point, token, problems in zip(df["point"], df["token"], df["problems"]):
        for inv, job, detail in json.loads(problems):
            out.append(
                {"point": int(point), "invariant": inv, "code": CODES[inv]}
                | {"job": job, "detail": detail, "token": token}
            )
    return out


def _chunks(todo: Points, size: int) -> list[Points]:
    """Consecutive points, about `size` per task, never splitting a group (it shares one run)."""
    out: list[Points] = []
    for p in todo:
        if out and (len(out[-1]) < size or out[-1][-1][3] == p[3]):
            out[-1].append(p)
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


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, progress: bool | None) -> Any:
    """A tqdm bar (the notebook widget in Jupyter), or nothing when not wanted or not a terminal."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pt", desc="crash sweep")


def failing(df: pd.DataFrame) -> bool:
    """Did the sweep find any violation (at a crash point or in the uncrashed run)?"""
    return bool(df.attrs["base_violations"]) or bool((df["violations"] > 0).any())


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
    first = _earliest(df)
    lo, hi, best = 1, sim.workload.jobs, first
    while lo < hi:
        mid = (lo + hi) // 2
        smaller = replace(sim, workload=replace(sim.workload, jobs=mid))
        d = sweep(smaller, points, **options)
        if failing(d):
            hi, best = mid, _earliest(d)
        else:
            lo = mid + 1
    return {"earliest": first, "jobs": hi, "smallest": best}


def _earliest(df: pd.DataFrame) -> dict[str, Any]:
    """The first violation of a sweep: its point, invariant, detail and token."""
    v = df.attrs["base_violations"]
    if not v:
        row = df[df["violations"] > 0].iloc[0]
        v = [{"point": int(row["point"]), "token": row["token"]}]
        v[0]["invariant"], v[0]["job"], v[0]["detail"] = json.loads(row["problems"])[0]
    return {k: v[0][k] for k in ("point", "invariant", "job", "detail", "token")} | {
        "code": CODES[v[0]["invariant"]],
        "name": INVARIANTS[v[0]["invariant"]],
    }


# -- crashes during recovery ---------------------------------------------------------------------

RECOVERY_COLUMNS = ["first", "second", "phase", "outcome", "violations", "invariants", "detail"]
RECOVERY_COLUMNS += ["lives", "truncated", "requeued", "token"]


def recovery_points(sim: Simulation, first: CrashPlan) -> list[tuple[str, CrashPlan]]:
    """Where a second crash can hit the life that recovers from `first`, labelled by phase:
    `recovery` (each FS call of it: removing a stale .tmp, the torn tail's `.broken` copy, its
    write, sync, and the truncation), `first-write` (each FS call up to the first WAL fdatasync
    after recovery, and the end and middle of each record of that write: the REQUEUE and DISPATCH
    records `start` appends), `checkpoint` (each persistence point of the first checkpoint)."""
    r = replace(sim, crash=[first], observe=True, sample_every=0).run()
    if len(r.lives) < 2 or r.lives[1].hook is None:
        return []
    life = r.lives[1]
    hook = life.hook
    assert hook is not None
    calls, opened = hook.calls, life.recovery_ops

    def is_wal_sync(op: str, path: str) -> bool:
        return op == "sync" and SEGMENT_NAME.fullmatch(posixpath.basename(path)) is not None

    synced = next((k + 1 for k in range(opened, len(calls)) if is_wal_sync(*calls[k])), len(calls))
    out = [("recovery" if k <= opened else "first-write", CrashPlan("op", k)) for k in range(1, synced + 1)]
    first_write = next(((start, n) for op, start, n in hook.writes if op > opened), None)
    if first_write is not None:
        start, n = first_write
        for _rec, a, b in r.records(1):
            if start <= a < start + n:
                out += [("first-write", CrashPlan("lsn", (a + b) // 2)), ("first-write", CrashPlan("lsn", b))]
    seen = {(name, k) for name, k, _lsn, _t in hook.points}
    out += [("checkpoint", CrashPlan("point", name, 1)) for name in POINTS if (name, 1) in seen]
    return out


def _recovery_rows(token: str, firsts: list[list[Any]]) -> list[dict[str, Any]]:
    """The rows of some first crashes: each second crash of `recovery_points`, run from scratch."""
    sim = Simulation.from_token(token, sample_every=0)
    rows = []
    for f in firsts:
        first = CrashPlan.from_list(f)
        for phase, second in recovery_points(sim, first):
            run = replace(sim, crash=[first, second])
            r = run.run()
            vs = r.violations
            crashed = len(r.crashes) == 2
            rows.append(
                {
                    "first": first.describe(),
                    "second": second.describe(),
                    "phase": phase,
                    "outcome": "refused" if r.ending == "refused" else "violation" if vs else "ok",
                    "violations": len(vs),
                    "invariants": ",".join(str(i) for i in sorted({v.invariant for v in vs})),
                    "detail": _detail(vs[0].invariant, vs[0].job, vs[0].detail) if vs else "",
                    "lives": len(r.lives) if crashed else -len(r.lives),
                    "truncated": [rec["bytes_truncated"] for rec in r.recoveries],
                    "requeued": r.lives[1].recovery is not None,
                    "token": run.token(),
                }
            )
    return rows


def recovery_sweep(
    sim: Simulation,
    first: str | Sequence[CrashPlan | str],
    *,
    executor: Executor | str | None = "serial",
    workers: int | None = None,
) -> pd.DataFrame:
    """Crash, then crash again while recovering from it (`recovery_points`), recover a second time
    and run on to the end, checking every invariant: one row per pair. `first` names the first
    crashes as crash_sweep does (a point set or plans). `lives` is 3 when both crashes happened
    (negative: the second crash was never reached, the run had that many lives); `truncated`
    lists each recovery's torn bytes cut; `requeued` is False when the second crash came before
    the storage opened (inside recovery itself)."""
    base = base_run(sim)
    firsts = [p.as_list() for p in enumerate_points(base, first, sim.seed)]
    token = replace(sim, crash=None).token()
    rows: list[dict[str, Any]] = []
    with _executor(executor, workers, None) as ex:
        if ex is None:
            rows = _recovery_rows(token, firsts)
        else:
            for part in ex.map(partial(_recovery_rows, token), [[f] for f in firsts]):
                rows += part
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)
