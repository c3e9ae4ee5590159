"""Graded labs: the learner writes one durable piece of the queue, and crash sweeps grade it.

Each lab takes one small function (frame and sync a WAL record, write a snapshot atomically, replay
a record idempotently, choose the record that ends an attempt) and plugs it into the real system
through the hooks the durability mutants use (a WriteAheadLog / SnapshotStore / Controller subclass,
or Storage.open's `apply_fn`): for the length of a check it is registered as mutant `lab-<name>`.
Then a small seeded crash sweep per crash model runs the real controller, WAL, snapshots and
recovery on the simulator and the invariant checker grades the outcome: a pass, or the first
counterexample with its crash point, the invariant it broke (or the function's own contract, which
a lab may check directly: `Lab.contract`), a replay token and a figure. The registration lives in
this process only, so sweeps run serially here, and a replay token names the lab: `replay(lab, fn,
token)` runs it again.

`python -m beaver_sim.labs SRC DST` writes the learner versions of the lab notebooks (`make
student`): every `# BEGIN SOLUTION` ... `# END SOLUTION` block becomes `raise NotImplementedError`."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, ClassVar, cast

import pandas as pd
from matplotlib.figure import Figure

from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, Config, CorruptLog
from beaver_sim.sim import mutants
from beaver_sim.sim.checker import CODES, INVARIANTS
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import METADATA_FIRST, POWER_LOSS, PROCESS, SUBSETS, TORN_BLOCKS, SimFS
from beaver_sim.sim.plots import attempts_histogram, outcome_map
from beaver_sim.sim.results import SimResult
from beaver_sim.sim.sweep import crash_sweep, violations
from beaver_sim.sim.workload import Workload
from beaver_sim.storage.fs import FileHandle
from beaver_sim.storage.log_format import unframe
from beaver_sim.storage.snapshot import Loaded, Snapshot, SnapshotStore, decode, encode, snapshot_name
from beaver_sim.storage.wal import WriteAheadLog

# -- the pieces a learner's function is plugged into ------------------------------------------


class LabError(Exception):
    """The learner's function broke its contract in a way the sweep cannot grade (a bad return)."""


CONTRACT = "contract broken: "  # starts the refusal a lab's own check raises inside a sweep


class ContractBroken(CorruptLog):
    """Raised by a lab's store when a crash left what the learner's function promised never to
    leave; recovery refuses on it, and `check` names the function's contract, not an invariant."""

    def __init__(self, why: str) -> None:
        super().__init__(CONTRACT + why)


class LabWAL(WriteAheadLog):
    """The real WAL, except that each record goes to disk through the learner's
    `append_record(f, body, prev_crc) -> crc`, one call per record (no group commit). The log
    trusts it as it trusts fdatasync: once it returns, the record counts as durable."""

    append_record: ClassVar[Callable[[FileHandle, bytes, int], int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disk_crc = self.crc  # the chain as the learner's writes left it

    def flush(self) -> None:
        self.sync()
        self.rotate_if_full()

    def sync(self) -> None:
        self.ensure_open()
        for line in self.take_pending():
            body = unframe(line[:-1])  # framed by the log itself
            assert body is not None, line
            crc = type(self).append_record(self.segment_file, body, self.disk_crc)
            if not isinstance(crc, int):
                raise LabError(f"append_record returned {crc!r}; it must return the record's CRC (an int)")
            self.disk_crc = crc
        self.mark_durable()


class _MarkedFile:
    """A file handle that reaches a named persistence point after each write and sync, so a sweep
    can crash between any two steps of the learner's snapshot code."""

    def __init__(self, fs: SimFS, f: FileHandle) -> None:
        self.fs, self.f = fs, f

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.fs.mark("snapshot-tmp-written")

    def sync(self) -> None:
        self.f.sync()
        self.fs.mark("snapshot-tmp-synced")

    def close(self) -> None:
        self.f.close()


class _MarkedFS:
    """The FS handed to `write_snapshot`: the real one, with a persistence point after every write,
    sync, rename and directory sync (the points the real SnapshotStore marks)."""

    def __init__(self, fs: SimFS) -> None:
        self.fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def create(self, path: str) -> _MarkedFile:
        return _MarkedFile(self.fs, self.fs.create(path))

    def open_append(self, path: str) -> _MarkedFile:
        return _MarkedFile(self.fs, self.fs.open_append(path))

    def replace(self, src: str, dst: str) -> None:
        self.fs.replace(src, dst)
        self.fs.mark("snapshot-renamed")

    def sync_dir(self, path: str) -> None:
        self.fs.sync_dir(path)
        self.fs.mark("snapshot-dir-synced")


class LabSnapshots(SnapshotStore):
    """The real SnapshotStore (load, prune, `.tmp` cleanup), except that the file is written by the
    learner's `write_snapshot(fs, directory, name, data)`, and that a crash must never leave a
    damaged file under a snapshot's final name (the contract of write_snapshot): the real store
    would set it aside and fall back to the older snapshot; this one refuses, naming it."""

    write_snapshot: ClassVar[Callable[[_MarkedFS, str, str, bytes], None]]

    def load(self, read: Callable[[Snapshot, str], Any]) -> Loaded[Any]:
        for seq in self.seqs():
            path = self.path(seq)
            try:
                decode(self.fs.read_bytes(path), path)
            except CorruptLog as e:
                raise ContractBroken(
                    f"after the crash {path} holds a damaged snapshot under its final name ({e}); "
                    "a name must point at the whole file or not exist"
                ) from None
        return super().load(read)

    def save(self, seq: int, version: int, body: bytes) -> str:
        data, path = encode(seq, version, body), self.path(seq)
        fs = self.fs
        assert isinstance(fs, SimFS)  # a lab runs in the simulator: its persistence points
        type(self).write_snapshot(_MarkedFS(fs), self.directory, snapshot_name(seq), data)
        if not self.fs.exists(path) or self.fs.read_bytes(path) != data:
            raise LabError(f"write_snapshot returned, but {path} does not hold the snapshot it was given")
        return path


ENDINGS = (R.FAIL, R.TIMEOUT, R.REQUEUE, R.DEAD)  # the records that end an attempt


class LabController(Controller):
    """The real Controller, except that the record ending each unsuccessful attempt is the learner's
    `next_record(job, attempt, max_retry, reason, error)`: after a failure (`reason` "failed", with
    the worker's `error`), a timeout ("timeout"), and for each attempt a crash interrupted, at the
    next start ("interrupted"). The controller logs what it returns and applies it."""

    next_record: ClassVar[Callable[[str, int, int, str, str | None], R.Record]]

    def end_interrupted(self, job_id: str, attempt: int) -> None:
        if self._end(job_id, attempt, "interrupted", None)["type"] != R.DEAD:
            self.counters.requeued_on_recovery += 1

    def retry_or_bury(self, job_id: str, attempt: int, retry: R.Record, why: str) -> None:
        reason = "timeout" if retry["type"] == R.TIMEOUT else "failed"
        self._end(job_id, attempt, reason, retry.get("error"))

    def _end(self, job_id: str, attempt: int, reason: str, error: str | None) -> R.Record:
        rec = type(self).next_record(job_id, attempt, self.config.max_retry, reason, error)
        if not isinstance(rec, dict) or rec.get("type") not in ENDINGS:
            raise LabError(
                f"next_record returned {rec!r}; it must return a record made by one of "
                "R.fail, R.timeout, R.requeue, R.dead"
            )
        self.log(rec)
        if rec["type"] == R.DEAD:
            self.counters.dead += 1
        else:
            self.counters.retried += 1
        return rec


class _CountedFile:
    """The segment's file handle as lab 6 hands it over: each write and fdatasync is counted."""

    def __init__(self, f: FileHandle, counts: Counter[str]) -> None:
        self.f, self.counts = f, counts

    def write(self, data: bytes) -> None:
        self.counts["writes"] += 1
        self.f.write(data)

    def sync(self) -> None:
        self.counts["syncs"] += 1
        self.f.sync()


class LabGroupController(Controller):
    """The real Controller, except that each turn's flush is the learner's `commit_turn(f, lines,
    release)`: the turn's framed WAL lines (CRC, length, body, newline, in log order), the segment's
    file, and `release`, which starts the turn's dispatched attempts and acknowledges its enqueues.
    The log trusts it as lab 1's trusts append_record: once it returns, the turn counts as written
    and durable. `release` passes a named crash point once it has acknowledged (so an ack before
    the fdatasync is seen), and `counts` adds up records, turns, writes and fdatasyncs, for the floor."""

    commit_turn: ClassVar[Callable[[_CountedFile, list[bytes], Callable[[], None]], None]]
    counts: ClassVar[Counter[str]]

    def flush(self) -> None:
        wal, counts = self.storage.wal, type(self).counts
        lines = wal.take_pending()
        if not lines:  # a turn that logged nothing (a stop) has nothing to commit
            self.release_turn()
            return
        released: list[bool] = []
        fs = self.storage.fs
        assert isinstance(fs, SimFS)  # a lab runs in the simulator: its persistence points

        def release() -> None:
            if not released:
                released.append(True)
                self.release_turn()
                fs.mark("group-commit-released")  # a crash point: acknowledged, then

        counts["records"] += len(lines)
        counts["turns"] += 1
        type(self).commit_turn(_CountedFile(wal.segment_file, counts), lines, release)
        if not released:
            raise LabError("commit_turn returned without calling release(): no enqueue is ever acknowledged")
        wal.mark_durable()
        wal.rotate_if_full()


def _group_commit(fn: Callable[..., None]) -> mutants.Mutant:
    cls = type(
        f"LabGroupController_{getattr(fn, '__name__', 'fn')}",
        (LabGroupController,),
        {"commit_turn": staticmethod(fn), "counts": Counter()},
    )
    return mutants.Mutant("lab-group-commit", 2, controller_cls=cls)


def group_commit_floor(fn: Callable[..., None]) -> str | None:
    """Lab 6's floor, on the lab's run without a crash: one write and one fdatasync per turn that
    logged something, as the real WAL does, so records per fdatasync (and per write) reach the
    records per turn. None, or the counts that fall short."""
    with plugged("group-commit", fn) as spec:
        cls = mutants.MUTANTS["lab-group-commit"].controller_cls
        assert issubclass(cls, LabGroupController)  # what `plugged` installed: _group_commit's
        counts = cls.counts
        counts.clear()
        spec.simulation().run()
    records, turns = counts["records"], counts["turns"]
    for what in ("fdatasync", "write"):
        n = counts[what + "s" if what == "write" else "syncs"]
        if n > turns:
            return (
                f"{n} {what}s for {records} records in {turns} turns: {records / n:.2f} records per {what}, "
                f"below the floor of {records / turns:.2f} (one {what} per turn)"
            )
    return None


# Lab 3's transition: the seed's queue methods, which do not know what is news (the learner must)
transition = mutants.seed_transition


def replay_contract(fn: Callable[[JobQueue, R.Record], None]) -> str | None:
    """Lab 3's contract, checked on a three-record state before any sweep: a record the state
    already holds changes nothing; a new one is applied and becomes `last_seq`; a new one that no
    job can take raises (it is damage, and skipping it would hide it). None, or what went wrong."""
    state = JobQueue()
    for seq, rec in enumerate((R.enqueue("a", {}), R.dispatch("a", 1, 0, 1.0), R.ack("a", 1)), 1):
        R.apply(state, {**rec, "seq": seq})
    before = state.to_state()
    for seq, rec, what in ((2, R.fail("a", 1, "boom"), "a fail of job a"), (4, R.enqueue("b", {}), "job b")):
        try:
            fn(state, {**rec, "seq": seq})
        except Exception as e:
            return f"replaying seq {seq} ({what}; the state's last seq was 3) raised {e!r}"
        if seq == 2 and state.to_state() != before:
            return "replaying seq 2 (a fail of job a), which the state already holds (last_seq 3), changed it"
    if "b" not in state.jobs or state.last_seq != 4:
        known = "known" if "b" in state.jobs else "missing"
        return f"after replaying seq 4 (enqueue of job b), job b is {known} and last_seq is {state.last_seq}"
    try:
        fn(state, {**R.ack("ghost", 1), "seq": 5})
    except Exception:
        return None
    return (
        "seq 5, an ack of job 'ghost' that the state never saw, was skipped without an error: "
        "a record after the state that cannot apply is damage, and recovery must stop on it"
    )


class CheckpointSteps:
    """What lab 5's `checkpoint(steps)` may do, each step one call into the run's real Storage (a
    step that changes a name on disk ends at a named crash point). `seq` is N, the state's last seq
    (nothing is logged while the checkpoint runs); `keep` is `snapshots_kept`, how many snapshots
    the store keeps: recovery falls back on an older one when the newest is damaged, so the WAL must
    hold every record after the oldest of them (after seq 0, while fewer than `keep` exist)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.seq = storage.state.last_seq
        self.keep = storage.snapshots.keep

    def sync_wal(self) -> None:
        """fdatasync the WAL segment being written: every record through seq N is durable."""
        self._storage.wal.sync()

    def write_snapshot(self) -> None:
        """Write the state as snapshot N, durably (lab 2's tmp, fsync, rename, directory fsync)."""
        self._storage.save_snapshot()

    def rotate_wal(self) -> None:
        """Close the segment being written (syncing it first) and start a new one at seq N + 1:
        only a closed segment can ever be deleted."""
        self._storage.wal.rotate()

    def snapshots(self) -> list[int]:
        """The seq of every snapshot on disk, oldest first."""
        return self._storage.snapshots.seqs()

    def delete_snapshot(self, seq: int) -> None:
        """Delete snapshot `seq`, durably (its directory synced)."""
        store = self._storage.snapshots
        if seq not in store.seqs():
            raise LabError(
                f"delete_snapshot({seq!r}): there is no snapshot {seq!r} (on disk: {store.seqs()})"
            )
        fs = self._storage.fs
        assert isinstance(fs, SimFS)  # a lab runs in the simulator: its persistence points
        fs.remove(store.path(seq))
        fs.sync_dir(store.directory)
        fs.mark("snapshots-pruned")

    def delete_segments(self, through: int) -> None:
        """Delete, durably, every closed WAL segment whose records all have seq <= `through` (the
        segment being written is never deleted)."""
        self._storage.wal.delete_through(through)


class LabCheckpointController(Controller):
    """The real Controller, except that each checkpoint (every `snapshot_interval` once the log has
    grown, and at a stop) is the learner's `checkpoint(steps)`, inline: once it returns, snapshot N
    counts as taken. With `audit` set (a list), what the log and snapshot directory look like after
    each checkpoint is checked against the real checkpoint's end state, and what differs is added."""

    run_checkpoint: ClassVar[Callable[[CheckpointSteps], None]]
    audit: ClassVar[list[str] | None] = None

    def checkpoint(self) -> None:
        steps = CheckpointSteps(self.storage)
        type(self).run_checkpoint(steps)
        if steps.seq not in self.storage.snapshots.seqs():
            raise LabError(
                f"checkpoint returned, but snapshot {steps.seq} is not on disk: "
                "a checkpoint leaves the snapshot it took"
            )
        self.last_snapshot_seq = steps.seq
        self.counters.snapshots += 1
        audit = type(self).audit
        if audit is not None and (problem := compaction_problem(self.storage, steps.seq)) is not None:
            audit.append(problem)


def compaction_problem(storage: Storage, seq: int) -> str | None:
    """How the data directory after checkpoint `seq` differs from the one the real order leaves:
    the newest `keep` snapshots, a live WAL segment from seq + 1 on, and the log starting exactly
    where the fallback needs it (after the oldest kept snapshot once `keep` exist, else at seq 1)."""
    keep, seqs, segments = storage.snapshots.keep, storage.snapshots.seqs(), storage.wal.segments
    where = f"after the checkpoint at seq {seq}"
    if len(seqs) > keep:
        return f"{where} {len(seqs)} snapshots are on disk ({seqs}), but snapshots_kept is {keep}"
    if segments[-1].first_seq != seq + 1:
        return (
            f"{where} the WAL segment being written starts at seq {segments[-1].first_seq}, not {seq + 1}: "
            "records the snapshot covers stay in the live segment, which no checkpoint can delete"
        )
    fallback = seqs[0] if len(seqs) >= keep else 0
    why = f"snapshot {fallback}" if fallback else f"replay from seq 1 (fewer than {keep} snapshots)"
    if segments[0].first_seq > fallback + 1:
        return (
            f"{where} the WAL starts at seq {segments[0].first_seq}, but if snapshot {seqs[-1]} is damaged "
            f"recovery falls back on {why}, which needs the log from seq {fallback + 1}"
        )
    if len(segments) > 1 and segments[1].first_seq - 1 <= fallback:
        return (
            f"{where} the WAL still starts at seq {segments[0].first_seq}: the segments through seq "
            f"{fallback} are covered by {why} and never deleted, so the log grows for ever"
        )
    return None


def _checkpoint(fn: Callable[[CheckpointSteps], None]) -> mutants.Mutant:
    cls = _subclass(LabCheckpointController, "run_checkpoint", fn)
    return mutants.Mutant("lab-checkpoint", 6, controller_cls=cls)


def checkpoint_contract(fn: Callable[[CheckpointSteps], None]) -> str | None:
    """Lab 5's contract, on the lab's run without a crash and with the default two snapshots kept
    (the sweeps keep one): the run keeps every invariant, and after each checkpoint the snapshots
    and WAL segments on disk are those the real order leaves (`compaction_problem`). None, or the
    first difference."""
    with plugged("checkpoint", fn) as spec:
        cls = mutants.MUTANTS["lab-checkpoint"].controller_cls
        assert issubclass(cls, LabCheckpointController)  # what `plugged` installed: _checkpoint's
        found: list[str] = []
        cls.audit = found
        sim = spec.simulation()
        result = replace(sim, config=replace(sim.config, snapshots_kept=2)).run()
    if found:
        return found[0]
    if result.violations:
        v = result.violations[0]
        rule = f"invariant {v.invariant} {CODES[v.invariant]}"
        return f"with snapshots_kept 2, the run without a crash breaks {rule}: {v.detail}"
    return None


# -- the labs --------------------------------------------------------------------------------


_QUICK_SNAPSHOTS = {"snapshot_interval": 0.3, "snapshot_log_ratio": 0.5}


@dataclass(frozen=True)
class Lab:
    """One lab: the function the learner writes, how it is plugged in (`mutant(fn)`), the seeded
    sweeps that grade it (one per crash model of `models`: point set, config changes, jobs), and
    `contract`: a direct check of the function run first (None, or what it got wrong)."""

    name: str
    function: str
    mutant: Callable[[Callable[..., Any]], mutants.Mutant]
    models: tuple[str, ...]
    points: str
    config: dict[str, Any] = field(default_factory=dict)
    jobs: int = 20
    seed: int = 7
    contract: Callable[[Callable[..., Any]], str | None] | None = None
    subsets: int = 0  # unsynced units (names, blocks) of the busiest crash point: check(exhaustive=True)

    def simulation(self, jobs: int | None = None, model: str | None = None) -> Simulation:
        config = Config(data_dir="/data", worker_count=4, **self.config)
        return Simulation(
            config,
            Workload(jobs or self.jobs),
            self.seed,
            model=model or self.models[0],
            mutant=f"lab-{self.name}",
        )


def _subclass(base: type, attr: str, fn: Callable[..., Any]) -> type:
    return type(f"{base.__name__}_{getattr(fn, '__name__', 'fn')}", (base,), {attr: staticmethod(fn)})


LABS: dict[str, Lab] = {
    lab.name: lab
    for lab in (
        Lab(
            "wal",
            "append_record",
            lambda fn: mutants.Mutant("lab-wal", 2, wal_cls=_subclass(LabWAL, "append_record", fn)),
            models=(POWER_LOSS, TORN_BLOCKS),
            points="records+times:40",  # inside each write, and between events: acknowledged, idle
            subsets=2,
        ),
        Lab(
            "snapshot",
            "write_snapshot",
            lambda fn: mutants.Mutant(
                "lab-snapshot", 3, snapshot_cls=_subclass(LabSnapshots, "write_snapshot", fn)
            ),
            models=(POWER_LOSS, METADATA_FIRST, TORN_BLOCKS),
            points="records+marks",
            config=_QUICK_SNAPSHOTS,
            subsets=5,
        ),
        Lab(
            "replay",
            "replay_record",
            lambda fn: mutants.Mutant("lab-replay", 5, wal_cls=mutants.ReplayWholeLogWAL, apply_fn=fn),
            models=(PROCESS,),
            points="records",
            config={**_QUICK_SNAPSHOTS, "failure_rate": 0.3},
            contract=replay_contract,
        ),
        Lab(
            "retry",
            "next_record",
            lambda fn: mutants.Mutant(
                "lab-retry", 4, controller_cls=_subclass(LabController, "next_record", fn)
            ),
            models=(PROCESS,),
            points="records",
            config={"task_timeout": 0.3},
        ),
        Lab(
            "checkpoint",
            "checkpoint",
            _checkpoint,
            models=(PROCESS, POWER_LOSS, METADATA_FIRST, TORN_BLOCKS),
            points="records+marks",
            config={**_QUICK_SNAPSHOTS, "snapshots_kept": 1, "fsync": "interval", "fsync_interval": 0.2},
            contract=checkpoint_contract,
        ),
        Lab(
            "group-commit",
            "commit_turn",
            _group_commit,
            models=(POWER_LOSS, TORN_BLOCKS),
            points="records+marks+times:40",
            contract=group_commit_floor,
        ),
    )
}


def _lab(name: str) -> Lab:
    try:
        return LABS[name]
    except KeyError:
        raise BeaverError(f"unknown lab {name!r}; known: {', '.join(LABS)}") from None


@contextmanager
def plugged(lab: str, fn: Callable[..., Any]) -> Iterator[Lab]:
    """Register `fn` as mutant `lab-<lab>` while the block runs (this process only)."""
    spec = _lab(lab)
    m = spec.mutant(fn)
    mutants.MUTANTS[m.name] = m
    try:
        yield spec
    finally:
        del mutants.MUTANTS[m.name]


# -- grading ---------------------------------------------------------------------------------


@dataclass
class Result:
    """What a check found: `passed`, or the first counterexample (`first`: point, invariant, job,
    detail, token, crash, model); `names` is what failed, as printed: `invariant N code: statement`
    or `the contract of <function>: ...`; `sweep` is the failing (or last) sweep's DataFrame."""

    lab: str
    function: str
    passed: bool
    not_implemented: bool = False
    error: str | None = None  # the function broke its contract (a bad return, no file written)
    first: dict[str, Any] | None = None
    names: str = ""
    sweep: pd.DataFrame | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        verdict = "not implemented" if self.not_implemented else "passed" if self.passed else "failed"
        return f"<lab {self.lab}: {self.function} {verdict}>"


def sweep(
    lab: str, fn: Callable[..., Any], jobs: int | None = None, model: str | None = None, subsets: int = 0
) -> pd.DataFrame:
    """The lab's crash sweep with `fn` plugged in under `model` (default: its first), serially;
    with `subsets`, every subset of that many unsynced units at each point instead (SUBSETS)."""
    with plugged(lab, fn) as spec:
        sim = spec.simulation(jobs, model)
        return crash_sweep(sim, spec.points, executor="serial", progress=False, subsets=subsets)


def names(function: str, invariant: int, detail: str) -> str:
    """The rule a counterexample broke, in words: the function's own contract when a lab's check
    refused, else the invariant, with the clause of invariant 5 that failed."""
    if CONTRACT in detail:
        return f"the contract of {function}: what a crash leaves is whole or absent, never damaged"
    statement = INVARIANTS[invariant]
    if invariant == 5 and "the log does not verify" in detail:
        statement = "the log on disk verifies: every line framed, its chained CRC32C right"
    return f"invariant {invariant} {CODES[invariant]}: {statement}"


def check(
    lab: str, fn: Callable[..., Any], *, jobs: int | None = None, plot: bool = True, exhaustive: bool = False
) -> Result:
    """Plug `fn` into the real system, crash it at every point of the lab's sweep under each of its
    crash models, check its contract (if the lab has one), and print a pass or the first
    counterexample (what broke, the crash point, a replay token) with a figure. `exhaustive` adds
    a bounded exhaustive search: at every point, every subset of the unsynced names and blocks a
    crash may keep or lose (`Lab.subsets` of them: as many as any point of the lab has)."""
    spec = _lab(lab)
    name = getattr(fn, "__name__", spec.function)
    runs = [(model, 0) for model in spec.models]
    if exhaustive and spec.subsets:
        runs.append((SUBSETS, spec.subsets))
    frames: list[pd.DataFrame] = []
    why = None
    try:
        for model, subsets in runs:
            df = sweep(lab, fn, jobs, spec.models[0] if subsets else model, subsets)
            frames.append(df)
            if violations(df):
                break
        else:
            why = spec.contract(fn) if spec.contract is not None else None
    except NotImplementedError:
        print(
            f"{name}: not implemented yet. Replace `raise NotImplementedError` with your code "
            "and run the check again."
        )
        return Result(lab, name, False, not_implemented=True)
    except LabError as e:
        print(f"FAIL: {e}")
        return Result(lab, name, False, error=str(e))
    if why is not None:
        contract = f"the contract of {name}"
        print(f"FAIL: {name} passed every crash point, but breaks its contract.")
        print(f"  {contract}: {why}.")
        return Result(lab, name, False, first={"detail": why}, names=contract, sweep=frames[-1])
    df = frames[-1]
    model, subsets = runs[len(frames) - 1]
    if subsets:
        model = f"every subset of {subsets} unsynced units"
    found = violations(df)
    n_jobs = spec.simulation(jobs).workload.jobs
    if not found:
        total = sum(len(d) for d in frames)
        explored = f"; every subset of {spec.subsets} unsynced units" if len(runs) > len(spec.models) else ""
        print(
            f"PASS: {name} kept every invariant at all {total} crash points "
            f"({', '.join(spec.models)}{explored}; {spec.points}; {n_jobs} jobs)."
        )
        return Result(lab, name, True, sweep=df)
    first = dict(found[0], model=model)
    label = names(name, first["invariant"], first["detail"])
    if first["point"] < 0:
        first["crash"] = "no crash"
        print(f"FAIL: {name} broke an invariant with no crash at all: the run without one already breaks it.")
        print("First counterexample, the uncrashed run")
    else:
        bad = int((df["violations"] > 0).sum())
        row = df.iloc[first["point"]]
        plan = CrashPlan(row["kind"], _at(row["kind"], row["at"]), int(row["occurrence"]))
        first["crash"] = plan.describe()
        print(f"FAIL: {name} broke an invariant at {bad} of {len(df)} crash points ({model}, {spec.points}).")
        print(
            f"First counterexample, crash point {first['point']} of {len(df)}: {first['crash']} ({model}), "
            f"at {row['time']:.3f} s of virtual time"
        )
    print(f"  {label}")
    if first["job"]:
        print(f"  job: {first['job']}")
    print(f"  what happened: {first['detail']}")
    print(f'  replay it: beaver_sim.labs.replay("{lab}", {name}, "{first["token"]}")')
    if plot:
        _picture(spec, name, fn, df, first)
    return Result(lab, name, False, first=first, names=label, sweep=df)


def _at(kind: str, at: str) -> Any:
    return at if kind == "point" else float(at) if kind == "time" else int(at)


def replay(lab: str, fn: Callable[..., Any], token: str) -> SimResult:
    """Run the simulation a counterexample's token describes again, with `fn` plugged in."""
    with plugged(lab, fn):
        return Simulation.from_token(token).run()


def _picture(spec: Lab, name: str, fn: Callable[..., Any], df: pd.DataFrame, first: dict[str, Any]) -> None:
    """The outcome of every crash point along the log with the counterexample marked; for too many
    attempts without any crash, the attempts per job of that run against max_retry."""
    if first["point"] < 0 and first["invariant"] == 4:
        result = replay(spec.name, fn, first["token"])
        attempts_histogram(
            result.jobs,
            max_retry=result.sim.config.max_retry,
            title=f"{name}: attempts per job in the run without a crash",
        )
        return
    ax = outcome_map(df, x="offset", title=f"{name}: outcome of each crash point along the WAL")
    cast(Figure, ax.figure).set_size_inches(7, 1.8)  # (the stubs: Figure | SubFigure)
    if first["point"] < 0:
        return  # the uncrashed run fails: so does every point
    x = df.iloc[first["point"]]["offset"]
    ax.axvline(x, color="black", lw=1, ls="--")
    left = x > (df["offset"].min() + df["offset"].max()) / 2  # keep the label clear of the legend
    ax.annotate(
        f"first counterexample: invariant {first['invariant']}",
        (x, -0.45),
        xytext=(-4 if left else 4, 0),
        textcoords="offset points",
        ha="right" if left else "left",
        fontsize=8,
    )


# -- learner versions of the notebooks -------------------------------------------------------

_SOLUTION = re.compile(r"^([ \t]*)# BEGIN SOLUTION\n.*?^[ \t]*# END SOLUTION[ \t]*\n?", re.M | re.S)


def student_source(source: str) -> str:
    """`source` with every solution block replaced by `raise NotImplementedError`, indented as
    its `# BEGIN SOLUTION` line."""
    return _SOLUTION.sub(lambda m: f"{m.group(1)}raise NotImplementedError\n", source)


def student_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """A lab notebook for the learner: solutions removed, every output and count cleared."""
    out: dict[str, Any] = json.loads(json.dumps(nb))
    for cell in out["cells"]:
        if cell["cell_type"] == "code":
            cell["source"] = student_source("".join(cell["source"])).splitlines(keepends=True)
            cell["outputs"], cell["execution_count"] = [], None
            cell["metadata"].pop("execution", None)
    return out


def write_student(src: Traversable, dst: Path) -> list[Path]:
    """Write the learner version of every `*.ipynb` in `src` (a folder, or the package's copy that
    `beaver notebooks` reads) to `dst`; returns the paths written."""
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted((p for p in src.iterdir() if p.name.endswith(".ipynb")), key=lambda p: p.name):
        target = dst / path.name
        nb = student_notebook(json.loads(path.read_text()))
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m beaver_sim.labs SRC_DIR DST_DIR", file=sys.stderr)
        return 2
    src, dst = Path(args[0]), Path(args[1])
    if not src.is_dir():
        print(f"{src}: not a directory", file=sys.stderr)
        return 1
    for path in write_student(src, dst):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
