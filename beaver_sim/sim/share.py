"""Sharing one run among a sweep's crash points (`crash_sweep(share=True)`; sim/sweep.py says why
the rows are those of runs from scratch).

A task (one executor call) runs the workload once with a `SharingHook` watching its first life: at
each of the task's crash points the hook has the run capture the moment (`Run.capture`), and the
task (`Task.take`) crashes a copy of the files there, recovers them with the real code and goes on
(`Run.resume`). Points of one group (same write, same whole records before them) whose recovery
rebuilds the first one's state share its row; continuations whose states meet merge (sim/merge.py).
I/O faults and FS-call crashes (`op`) run from scratch (`run_alone`): they need the FS call itself."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from beaver_sim.core.durable import Storage
from beaver_sim.core.types import BeaverError
from beaver_sim.sim import mutants
from beaver_sim.sim.capture import Capture, LogReader, recovered_key
from beaver_sim.sim.experiment import Run, Simulation
from beaver_sim.sim.faults import IO_KINDS, CrashHook, CrashPlan, recovery_model_seconds, survivors
from beaver_sim.sim.frames import OWN, point_row
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.merge import Merged, Merger
from beaver_sim.speed import paused_gc
from beaver_sim.storage.wal import Known

Points = list[tuple[int, list[Any], int | None, int]]  # (index, plan, crash LSN or None, group)


def run_alone(token: str, model: str, points: Points) -> dict[int, Any]:
    """Run crash points one by one, each from scratch (`share=False`)."""
    base = Simulation.from_token(token, sample_every=0)
    return {
        i: point_row(replace(base, crash=CrashPlan.from_list(p), model=model).run())
        for i, p, _x, _g in points
    }


class _Done(BaseException):
    """Every crash point of a task has been taken: the shared run can stop."""


class SharingHook(CrashHook):
    """The hook of a task's shared run: at each crash point it captures the moment and runs the
    crashed continuation from it. A write's points wait for the next FS call: the write's bytes are
    in the files by then, and each point keeps those before its LSN."""

    def __init__(
        self, fs: SimFS, wal_dir: str, plan: Any, clock: Any, observe: bool, *, run: Run, task: Task
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
class Task:
    """The crash points one executor task takes from one shared run, grouped by signature."""

    sim: Simulation
    targets: list[tuple[CrashPlan, int | None]]  # (plan, LSN of its crash or None)
    groups: list[int]  # target -> group: same group, candidates to share the continuation
    rows: dict[int, dict[str, Any]]
    keys: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]  # group -> (recovered key, row)
    log: LogReader | None = None  # the shared run's log, read as it goes
    left: int = 0
    merger: Merger | None = None  # None: every continuation runs to its end (`merge=False`)
    known: Known = field(default_factory=dict)  # what its recoveries verified of the shared log

    def take(self, i: int, cap: Capture, fs: SimFS, cut: tuple[str, int] | None, meet: bool = False) -> None:
        """Crash target `i` at the captured moment: the files survive under the crash model (a
        torn write keeps its bytes before the crash LSN), recovery runs, the run goes on. `meet`:
        other groups crash at this moment too, so the continuation's state may meet theirs."""
        plan = self.targets[i][0]
        files = _crashed(fs, plan.model or self.sim.model, plan.torn, cut)
        self.left -= 1
        group = self.groups[i]
        shared = self.keys.get(group)
        assert self.log is not None
        if shared is not None:
            key, report = _recover(self.sim, files, self.known)
            if key == shared[0]:
                row = dict(shared[1], problems=list(shared[1]["problems"]))
                row.update(
                    report,
                    offset=cap.lsn,
                    record=self.log.record_before(cap.lsn),
                    merged=False,
                )
                self.rows[i] = row
                return
            files = _crashed(fs, plan.model or self.sim.model, plan.torn, cut)  # that recovery changed them
        merger = self.merger if meet else None
        if merger is not None:
            merger.start()
        try:
            result = Run.resume(replace(self.sim, crash=plan), cap, self.log, files, merger, self.known)
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


def _recover(sim: Simulation, files: SimFS, known: Known) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Recover `files` with the real code (and the mutant's pieces): what it rebuilt, and the
    figures a sweep row keeps from it. `known`: what earlier recoveries verified of the log."""
    m = mutants.get(sim.mutant) or mutants.Mutant("none", 0)
    try:
        storage = Storage.from_config(
            files,
            sim.config,
            timer=time.perf_counter,
            wal_cls=m.wal_cls,
            snapshot_cls=m.snapshot_cls,
            apply_fn=m.apply_fn,
            wal_known=known,
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


def run_shared(token: str, model: str, points: Points, merge: bool = True) -> dict[int, Any]:
    """Run some crash points of one sweep from one shared run (in a worker process, a Dask worker or
    here); `points` are (index, plan, crash LSN or None, group). I/O faults run on their own.
    `merge`: continuations whose states converge share the rest of the run (sim/merge.py)."""
    alone = [p for p in points if p[1][0] in (*IO_KINDS, "op")]
    if alone:
        rows = run_alone(token, model, alone)
        rest = [p for p in points if p[1][0] not in (*IO_KINDS, "op")]
        return rows | (run_shared(token, model, rest, merge) if rest else {})
    base = Simulation.from_token(token, sample_every=0)
    sim = replace(base, model=model)
    targets = [(CrashPlan.from_list(p), x) for _i, p, x, _g in points]
    task = Task(sim, targets, [g for *_, g in points], {}, {}, left=len(targets))
    task.merger = Merger() if merge else None
    run = Run(base)
    task.log = LogReader(run.fs, base.config.wal_dir)
    run.watch = partial(SharingHook, task=task)
    with paused_gc(), contextlib.suppress(_Done):
        run.loop()
        hook = run.out.lives[0].hook
        if isinstance(hook, SharingHook) and hook.pending:
            hook.settle()
    return {points[i][0]: row for i, row in task.rows.items()}
