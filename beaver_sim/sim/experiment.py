"""Simulation: the real Controller, JobQueue, WAL and SnapshotStore on VirtualClock + SimFS + SimWorkers.

The simulator supplies only the clock, the file system, the workers' outcomes and the faults. A run is
fixed by (config, workload, seed, crash plans, crash model, mutant): the same inputs give the same
bytes, which `Simulation.token()` packs into one replay string. A run goes in lives: the controller
runs until a crash plan stops the machine; the surviving files (SimFS.after_crash) go through the real
recovery code, the checker compares what came back with what clients were told, clients resubmit
what was never acknowledged, and a new controller on a new clock runs on from the crash time, until
the run is quiescent (nothing left to happen) and the controller stops.

`Run` is one simulation in progress. Its seams for sweeps (sim/share.py) are public: `Run.capture`
copies what a crash at the current moment would leave besides the files (a `capture.Capture`), and
`Run.resume` starts a run from such a capture and the files the crash left, each part restoring
itself (`Checker.restore`). Workload and ExponentialWorkers live in sim/workload.py, SimResult and
Life in sim/results.py (which imports nothing from here), the log readers and `Capture` in
sim/capture.py; Workload, ExponentialWorkers and SimResult can still be imported from here (the
notebooks import Simulation, Workload and ExponentialWorkers so)."""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import inspect
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.sim import mutants
from beaver_sim.sim.capture import (
    Capture,
    LogReader,
    RecordEnds,
    archived,
    record_before,
    recovered_key,
    with_ends,
)
from beaver_sim.sim.checker import Checker
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.faults import IO_KINDS, CrashHook, CrashPlan, recovery_model_seconds, survivors
from beaver_sim.sim.fs import CRASH_MODELS, POWER_LOSSES, SUBSETS, SimFS, SimulatedCrash
from beaver_sim.sim.merge import Merged
from beaver_sim.sim.results import Life, SimResult
from beaver_sim.sim.workers import SimWorkers, misbehaving
from beaver_sim.sim.workload import Batch, ExponentialWorkers, Workload
from beaver_sim.speed import paused_gc
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import Known, WriteAheadLog

TOKEN_VERSION = 1


def _crash_now(plan: CrashPlan) -> None:
    raise SimulatedCrash(f"crash at {plan.describe()}")


@dataclass
class Simulation:
    """One deterministic run; `run()` returns a SimResult. `crash` is one CrashPlan or a list (the
    i-th crash is armed in the i-th life); `model` one of `fs.CRASH_MODELS`; `mutant` one of
    `sim.mutants.MUTANTS`. `sample_every` (virtual seconds, 0: never) paces the metric samples;
    `observe` records every WAL write and persistence point (sweeps enumerate crash points so).
    `history` keeps each crashed life's files and hook, for `records()` and the `wal` DataFrame;
    False drops them once the crash is checked, so a long soak's memory does not grow per crash."""

    config: Config = field(default_factory=Config)
    workload: Workload = field(default_factory=Workload)
    seed: int = 42
    crash: CrashPlan | Sequence[CrashPlan] | None = None
    model: str = "process"
    mutant: str | None = None
    sample_every: float = 1.0
    observe: bool = False
    history: bool = True

    @property
    def plans(self) -> tuple[CrashPlan, ...]:
        if self.crash is None:
            return ()
        return (self.crash,) if isinstance(self.crash, CrashPlan) else tuple(self.crash)

    # -- replay tokens -------------------------------------------------------------------------

    def token(self) -> str:
        """Everything that fixes this run, in one URL-safe string (`beaver sim --replay`)."""
        return self.tokens([self.plans])[0]

    def tokens(self, crashes: Iterable[Sequence[CrashPlan]]) -> list[str]:
        """The token of this run with each of `crashes` as its plans instead, the rest of the spec
        written once (a sweep labels every row so: in its parent, after the last point came back)."""
        spec: dict[str, Any] = {
            "v": TOKEN_VERSION,
            "seed": self.seed,
            "config": _changed(self.config, Config()),
            "workload": _changed(self.workload, Workload()),
            "crash": [],
            "model": self.model,
            "mutant": self.mutant,
        }
        out = []
        for plans in crashes:
            spec["crash"] = [p.as_list() for p in plans]
            out.append(base64.urlsafe_b64encode(zlib.compress(orjson.dumps(spec), 9)).decode().rstrip("="))
        return out

    @classmethod
    def from_token(cls, token: str, **options: Any) -> Simulation:
        """The Simulation a token describes; `options` set sample_every / observe."""
        try:
            raw = zlib.decompress(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            spec = orjson.loads(raw)
            if spec.get("v") != TOKEN_VERSION:
                raise BeaverError(f"replay token version {spec.get('v')} is not {TOKEN_VERSION}")
            return cls(
                config=Config(**spec["config"]),
                workload=Workload(**spec["workload"]),
                seed=spec["seed"],
                crash=[CrashPlan.from_list(p) for p in spec["crash"]] or None,
                model=spec["model"],
                mutant=spec["mutant"],
                **options,
            )
        except (ValueError, TypeError, KeyError, zlib.error, binascii.Error) as e:
            raise BeaverError(f"not a replay token ({e})") from None

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Run to quiescence through every planned crash. The cyclic GC is paused meanwhile: a run
        allocates many long-lived objects and no garbage cycles worth walking the heap for."""
        with paused_gc():
            return Run(self).loop()


class Run:
    """One simulation in progress: its files, clients, workers and checker, life after life.

    `loop` runs it to the end. A sweep arms two hooks before that: `watch`, the CrashHook class of
    the first life (it calls `capture` at each crash point), and `merger`, which compares a
    continuation's states with those other continuations went through (sim/merge.py)."""

    def __init__(self, sim: Simulation, batches: list[tuple[float, Batch]] | None = None) -> None:
        cfg = sim.config
        problems = cfg.problems()
        if problems:
            raise BeaverError("; ".join(problems))
        if sim.model not in CRASH_MODELS:
            raise BeaverError(f"crash model must be one of {', '.join(CRASH_MODELS)}, got {sim.model!r}")
        self.sim, self.cfg = sim, cfg
        self.m = mutants.get(sim.mutant) or mutants.Mutant("none", 0)
        window = cfg.fsync_interval if cfg.fsync == "interval" else 0.0
        self.checker = Checker(cfg.max_retry, sim.token, window)
        self.batches = sim.workload.batches(sim.seed) if batches is None else batches
        worker_cls = ExponentialWorkers if sim.workload.durations == "exponential" else SimWorkers
        if sim.workload.misbehave:
            worker_cls = misbehaving(worker_cls, sim.workload.misbehaviours)
        self.workers = worker_cls(
            VirtualClock(), sim.seed, cfg.failure_rate, cfg.work_min, cfg.work_max, record=True
        )
        self.out = SimResult(sim, self.checker, self.workers)
        self.fs: SimFS = archived(self.m.fs_cls)()  # type: ignore[arg-type]  # (a class is Hashable)
        self.now = 0.0
        self.next_batch = 0
        self.requeue_done = not sim.workload.requeue_at  # the operator's requeue, acknowledged
        # the life running now (a sweep's capture reads them)
        self.clock: VirtualClock | None = None
        self.storage: Storage | None = None
        self.samples = 0
        self.watch: Any = None  # a sweep's hook class (CrashHook subclass) for the first life
        self.merger: Any = None  # a sweep's `merge.Merger`, armed in the second life
        self.known: Known | None = None  # a sweep's: what earlier recoveries of its log verified

    def loop(self) -> SimResult:
        """Lives until one ends without a crash (or recovery refuses, or the controller fails)."""
        plans = self.sim.plans
        while True:
            index = len(self.out.lives)
            if not self.life(plans[index] if index < len(plans) else None):
                return self.out

    def life(self, plan: CrashPlan | None) -> bool:
        """Run one life from `self.now` on `self.fs`; True if it ended in a crash."""
        sim, cfg, m, checker, out = self.sim, self.cfg, self.m, self.checker, self.out
        index = len(out.lives)
        clock = self.clock = VirtualClock(self.now)
        self.workers.clock = clock
        life = Life(index, self.now, len(self.workers.attempts))
        out.lives.append(life)
        fs = self.fs
        hook = None
        if self.watch is not None and index == 0:
            hook = fs.hook = self.watch(fs, cfg.wal_dir, plan, clock, sim.observe, run=self)
        elif sim.observe or (plan is not None and plan.kind in ("lsn", "record", "point", "op")):
            hook = fs.hook = CrashHook(fs, cfg.wal_dir, plan, clock, sim.observe)
        if plan is not None and plan.kind == "time":
            clock.call_at(plan.at, _crash_now, plan)
        fs.fault = plan.fault() if plan is not None and plan.kind in IO_KINDS else None
        life.hook = hook
        self.storage = storage = None
        self.samples = 0
        completed_at_start: set[str] = set()
        wal_cls = m.wal_cls
        if plan is not None and plan.kind == "record":
            wal_cls = with_ends(wal_cls)  # type: ignore[arg-type]  # (a class is Hashable)
        try:
            storage = self.storage = Storage.from_config(
                fs,
                cfg,
                timer=time.perf_counter if index else None,
                wal_cls=wal_cls,
                snapshot_cls=m.snapshot_cls,
                apply_fn=m.apply_fn,
                wal_known=self.known,
            )
            wal = storage.wal
            life.start_lsn = wal.lsn
            life.recovery_ops = hook.ops if hook is not None else 0
            if plan is not None and plan.kind == "record":
                assert hook is not None and isinstance(wal, RecordEnds)  # a record plan arms both
                wal.ends = hook.ends
                hook.first_seq = wal.next_seq
            state = storage.state
            resubmit: list[Batch] = []
            if index:
                resubmit = self._recovered(life, storage)
                completed_at_start = set(checker.completed)  # (its check of the state just found them)
            else:
                completed_at_start = {j for j, job in state.jobs.items() if job.status is JobStatus.COMPLETED}
            controller = m.controller_cls(cfg, clock, storage, self.workers)
            controller.start()
            for batch in resubmit:
                clock.call_at(self.now, self._arrive, controller, batch, None)
            i = self.next_batch  # one arrival in the heap at a time, each schedules the next: a life
            if i < len(self.batches):  # does not push every batch still to come (O(batches) per crash)
                clock.call_at(self.batches[i][0], self._arrive, controller, self.batches[i][1], i)
            if sim.sample_every > 0:
                clock.call_at(self.now, self._sample, controller, life)
            if not self.requeue_done:  # (again after a crash, until acknowledged)
                clock.call_at(max(sim.workload.requeue_at, self.now), self._requeue, controller)
            if index and self.merger is not None:
                self.merger.arm(self, controller, completed_at_start)
            clock.run()
            controller.stop()
        except (SimulatedCrash, BeaverError, OSError) as e:
            fault, fs.fault = fs.fault, None
            if not isinstance(e, SimulatedCrash) and (fault is None or not fault.fired):
                if isinstance(e, OSError):
                    raise
                return self._failed(life, clock, storage, e)
            # a crash, or the planned I/O error: the process stopped (beaver run exits on a failed
            # write or fsync); the machine restarts on what the crash model keeps
            fs.hook = None
            crash_time = clock.now() if hook is None or hook.crash_time is None else hook.crash_time
            lsn = hook.crash_lsn if hook is not None and hook.crash_lsn is not None else None
            if lsn is None and storage is not None:
                lsn = storage.wal.written_lsn
            assert plan is not None
            life.fs = fs
            durable = None if storage is None else storage.wal.durable_lsn
            self._crashed(
                life, plan, crash_time, lsn, durable, clock.events - self.samples, completed_at_start
            )
            if not sim.history:
                life.fs = life.hook = None
            clock.clear()
            self.fs = survivors(fs, plan.model or sim.model, plan.torn)
            return True
        fs.hook = fs.fault = None
        life.end, life.events, life.fs = clock.now(), clock.events - self.samples, fs
        if index:
            checker.life(self._attempts(life), completed_at_start, storage.state.base)
        kept = storage.snapshots.seqs()
        checker.ran(self.workers.attempts)
        known = None if self.known is None else dict(self.known)  # (a copy: this log is its own now)
        checker.finished(storage.state, fs, cfg.wal_dir, kept[0] if kept else 0, life.start_lsn, known)
        out.fs, out.end_lsn, out.state = fs, storage.wal.lsn, storage.state
        return False

    def _failed(self, life: Life, clock: VirtualClock, storage: Storage | None, e: BeaverError) -> bool:
        """Recovery refused to start, or the controller raised: the run ends here."""
        fs, checker, out = self.fs, self.checker, self.out
        fs.hook = None
        life.end, life.events, life.fs = clock.now(), clock.events - self.samples, fs
        if storage is None:
            if not life.index:
                raise e  # a fresh data directory that cannot open: the config is wrong
            life.recovered_key = ("refused", str(e))
            checker.refused(e, self._verify_ok(fs))
            out.ending = "refused"
        else:
            checker.failed(e)
            out.ending = "error"
        out.fs, out.end_lsn = fs, (storage.wal.lsn if storage is not None else 0)
        return False

    def _verify_ok(self, fs: SimFS) -> bool:
        """Would `beaver wal verify` pass these files (its read: `inspect`, replayed)? Asked only
        once recovery refused them: before refusing, recovery changes nothing verify reads (it
        removes `.tmp` files and renames a broken newest snapshot, which verify skips too). Not asked
        of a mutant with its own reader: refusing what the real one opens is that mutant's point."""
        cfg, m = self.cfg, self.m
        if (m.wal_cls, m.snapshot_cls, m.apply_fn) != (WriteAheadLog, SnapshotStore, R.apply):
            return False
        try:
            return inspect(fs, cfg.wal_dir, cfg.snapshot_dir, retention=cfg.completed_retention).ok
        except BeaverError:
            return False

    def _crashed(
        self,
        life: Life,
        plan: CrashPlan,
        crash_time: float,
        lsn: int | None,
        durable: int | None,
        events: int,
        completed_at_start: set[str],
        log: LogReader | None = None,
    ) -> None:
        """The books of a crash: where it hit, what the log claimed durable, what this life wrote
        (`log`: the reader of the shared run it was captured in, which has read those records)."""
        life.end, life.events, life.end_lsn = crash_time, events, lsn
        trace = self.out.life_records(life)
        life.crash = {
            "point": plan.describe(),
            "kind": plan.kind,
            "at": plan.at,
            "model": plan.model or self.sim.model,
            "time": crash_time,
            "lsn": lsn,
            "record": record_before(trace, lsn),
            "durable_lsn": durable,  # how far the WAL had synced (None: it was not open yet)
        }
        if log is not None and durable is not None:
            acked, seq = log.claim(durable)
            self.checker.claim(plan.describe(), acked, seq, durable)
        else:
            self.checker.crashed(plan.describe(), trace, durable)
        if (plan.model or self.sim.model) in (*POWER_LOSSES, SUBSETS):
            self.checker.power_loss(crash_time)
        if life.index:
            bases = self.storage.state.base if self.storage is not None else {}
            self.checker.life(self._attempts(life), completed_at_start, bases)
        self.now = crash_time + self.cfg.restart_delay  # the machine restarts, the process recovers

    def _attempts(self, life: Life) -> list[tuple[str, int]]:
        """(job, attempt) of every attempt `life` handed to a worker so far."""
        return [(a.job, a.attempt) for a in self.workers.attempts[life.first_attempt :]]

    def _recovered(self, life: Life, storage: Storage) -> list[Batch]:
        """Check what the real recovery rebuilt; then each client resends its whole batch if it was
        never acknowledged, blindly (retry-safe enqueue: what is already there is accepted as
        already present). Returns those batches, in the order they were first sent."""
        checker, state, r = self.checker, storage.state, storage.report
        life.recovery = {
            "records_replayed": r.records_replayed,
            "seconds": r.seconds,
            "model_seconds": recovery_model_seconds(r.records_replayed, r.wal_bytes, r.snapshot_bytes),
            "wal_bytes": r.wal_bytes,
            "snapshot_bytes": r.snapshot_bytes,
            "bytes_truncated": r.bytes_truncated,
            "snapshot_seq": r.snapshot_seq,
            "broken_snapshots": len(r.broken_snapshots),
        }
        self.out.lives[life.index - 1].recovered_seq = state.last_seq
        life.recovered_key = recovered_key(storage)
        checker.recovered(state, storage.wal.lsn)
        batches = [checker.batch(batch) for batch in checker.open]
        ids = [job_id for batch in checker.open for job_id in batch]
        life.recovery |= {"resubmitted": len(ids), "found_in_log": sum(1 for i in ids if i in state.jobs)}
        return batches

    def _arrive(self, ctl: Controller, batch: Batch, i: int | None) -> None:
        """Clients send `batch` (the i-th of the workload, or a retry); it is acknowledged once durable."""
        out, clock = self.out, ctl.clock
        if i is not None:
            self.next_batch = i + 1
            if i + 1 < len(self.batches):
                clock.call_at(self.batches[i + 1][0], self._arrive, ctl, self.batches[i + 1][1], i + 1)
        ids = [job[0] for job in batch]
        out.sent.append((clock.now(), ids))
        self.checker.submit(batch, clock.now())

        def acked() -> None:
            out.acks.append((clock.now(), ids))
            self.checker.acknowledge(ids, clock.now())

        ctl.enqueue(batch, on_durable=acked)
        for job_id in self.sim.workload.cancels(batch):
            clock.call_later(0.1, self._cancel, ctl, job_id)

    def _cancel(self, ctl: Controller, job_id: str) -> None:
        """The operator cancels a delayed job; refused (one no longer waiting) is left as it is."""
        clock = ctl.clock
        try:
            ctl.cancel([job_id], on_durable=lambda: self.checker.cancelled(job_id, clock.now()))
        except BeaverError:
            pass

    def _requeue(self, ctl: Controller) -> None:
        """The operator requeues every dead job (`beaver requeue --dead`)."""
        jobs = ctl.state.jobs
        bases = {k: j.attempt for k, j in jobs.items() if j.status is JobStatus.DEAD}

        def acked() -> None:
            self.requeue_done = True
            self.checker.requeued(bases)

        ctl.requeue(list(bases), on_durable=acked)

    def _sample(self, ctl: Controller, life: Life) -> None:
        """One metrics sample; the next one only while work remains."""
        self.samples += 1
        counts, n = ctl.state.counts, ctl.counters
        self.out.samples.append(
            (
                ctl.clock.now(),
                life.index,
                counts[JobStatus.PENDING],
                counts[JobStatus.IN_FLIGHT],
                counts[JobStatus.COMPLETED],
                counts[JobStatus.DEAD],
                n.dispatched,
                n.retried,
                n.timeouts,
                n.stale,
                n.snapshots,
                ctl.storage.wal.lsn,
            )
        )
        if not ctl.idle or self.next_batch < len(self.batches):
            ctl.clock.call_later(self.sim.sample_every, self._sample, ctl, life)

    # -- going on from a crash point (sweeps share a run so) -------------------------------------

    def capture(self, plan: CrashPlan, lsn: int | None) -> Capture:
        """What a crash now, at log position `lsn`, would leave besides the files, copied (the run
        itself goes on)."""
        assert self.clock is not None
        return Capture(
            plan,
            self.clock.now(),
            lsn,
            None if self.storage is None else self.storage.wal.durable_lsn,
            self.batches,
            self.next_batch,
            list(self.workers.attempts),
            list(self.out.sent),
            list(self.out.acks),
            self.clock.events - self.samples,
            self.checker.capture(),
            self.requeue_done,
        )

    def restore(self, cap: Capture) -> None:
        """Take the clients', the operator's and the workers' side of a captured moment (a fresh
        run of the same inputs, before its first life)."""
        self.workers.attempts = list(cap.attempts)
        self.checker.restore(cap.checker)
        self.requeue_done = cap.requeue_done
        self.out.sent, self.out.acks = list(cap.sent), list(cap.acks)
        self.next_batch = cap.next_batch

    @classmethod
    def resume(
        cls,
        sim: Simulation,
        cap: Capture,
        log: LogReader,
        files: SimFS,
        merger: Any = None,
        known: Known | None = None,
    ) -> SimResult:
        """The result of `sim` (the captured run's inputs with `cap.plan` as its crash), going on
        from the crash `cap` took (the captured run's log, read by `log`, is this run's up to the
        crash LSN) with the surviving `files`. With a `merge.Merger`, a continuation that reaches a
        state an earlier one went through raises `Merged`, carrying the result so far. `known`:
        what the recoveries of earlier continuations verified of the log (the WAL's `scan`)."""
        run = cls(sim, cap.batches)
        run.merger, run.known = merger, known
        run.restore(cap)
        life = Life(0, 0.0, 0, fs=log.fs, trace=log.until(cap.lsn))
        run.out.lives.append(life)
        run._crashed(life, cap.plan, cap.time, cap.lsn, cap.durable, cap.events, set(), log)
        run.fs = files
        try:
            with paused_gc():
                return run.loop()
        except Merged as e:
            e.result = run.out
            raise


def _changed(obj: Any, default: Any) -> dict[str, Any]:
    """The fields of a dataclass that differ from the default instance (tokens stay short)."""
    names = [f.name for f in fields(obj)]
    return {n: getattr(obj, n) for n in names if getattr(obj, n) != getattr(default, n)}
