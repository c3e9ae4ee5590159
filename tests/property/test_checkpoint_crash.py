"""A crash at every FS call of a run that appends and checkpoints (snapshot tmp written, synced,
renamed, directory synced, WAL rotated, snapshots pruned, segments deleted: the SimFS marks, and every
other call between them), under every crash model: recovery gives the state a reference model gets
by replaying the surviving records into a fresh JobQueue, and the run then goes on to the end."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Lease
from beaver_sim.sim.fs import (
    METADATA_FIRST,
    POWER_LOSS,
    POWER_LOSSES,
    PROCESS,
    TORN_BLOCKS,
    SimFS,
    SimulatedCrash,
)

DATA = "/data"
CHECKPOINT = "checkpoint"
MARKS = {
    "snapshot-tmp-written",
    "snapshot-tmp-synced",
    "snapshot-renamed",
    "snapshot-dir-synced",
    "wal-rotated",
    "snapshots-pruned",
    "wal-segments-deleted",
}
MAX_ATTEMPTS = 3


def workload(seed: int, n_records: int, every: int) -> list[Any]:
    """Valid records (as a controller would log them) with a checkpoint after every `every`."""
    rng = random.Random(seed)
    shadow = JobQueue()
    plan: list[Any] = []
    ids = itertools.count()
    while len(plan) - plan.count(CHECKPOINT) < n_records:
        in_flight = sorted(shadow.leases)
        choice = rng.random()
        if choice < 0.3 or (shadow.peek() is None and not in_flight):
            job = f"job-{next(ids):03d}"
            rec = R.enqueue(job, {"type": "email", "to": f"{job}@example.com", "size": rng.randrange(100)})
        elif choice < 0.6 and shadow.peek() is not None:
            job = shadow.peek()
            attempt = shadow.jobs[job].attempt + 1  # type: ignore[index]
            rec = R.dispatch(job, attempt, rng.randrange(4), round(rng.uniform(0, 100), 3))
        elif in_flight:
            job = rng.choice(in_flight)
            attempt = shadow.leases[job].attempt
            outcome = rng.random()
            if outcome < 0.6:
                rec = R.ack(job, attempt)
            elif attempt >= MAX_ATTEMPTS:
                rec = R.dead(job, attempt, "max retries")
            elif outcome < 0.8:
                rec = R.fail(job, attempt, "boom")
            elif outcome < 0.9:
                rec = R.timeout(job, attempt)
            else:
                rec = R.requeue(job, attempt)
        else:
            continue
        R.apply(shadow, {**rec, "seq": shadow.last_seq + 1})
        plan.append(rec)
        if (len(plan) - plan.count(CHECKPOINT)) % every == 0:
            plan.append(CHECKPOINT)
    return plan


def reference(records: list[dict[str, Any]], n: int) -> JobQueue:
    """The model: the first n records replayed into a fresh queue, no snapshot, no WAL."""
    q = JobQueue()
    for seq, rec in enumerate(records[:n], 1):
        R.apply(q, {**rec, "seq": seq})
    return q


@dataclass
class Run:
    appended: int = 0  # records handed to Storage.append
    acked: int = 0  # records whose flush returned
    ends: list[int] = field(default_factory=list)
    claimed_durable: int = 0
    checkpointed: int = 0  # seq of the last checkpoint that returned
    marks: list[str] = field(default_factory=list)
    events: int = 0
    crash: str = "after the last call"


def execute(plan: list[Any], fsync: str, crash_at: int | None, keep_seed: int) -> tuple[SimFS, Run]:
    fs = SimFS()
    run = Run()
    events = itertools.count()

    def hook(op: str, path: str, n: int) -> int | None:
        i = next(events)
        if op == "mark":
            run.marks.append(path)
        if i != crash_at:
            return None
        keep = keep_seed % (n + 1) if op == "write" else 0
        run.crash = f"event {i}: {op} {path}" + (f" after {keep} of {n} bytes" if op == "write" else "")
        return keep

    fs.hook = hook
    s = None
    try:
        s = Storage.open(fs, DATA, fsync=fsync, segment_bytes=1500)
        for item in plan:
            if item == CHECKPOINT:
                run.checkpointed = s.checkpoint()
            else:
                s.append(dict(item))
                run.appended += 1
                run.ends.append(s.wal.lsn)
                s.wal.flush()
                run.acked += 1
    except SimulatedCrash:
        pass
    fs.hook = None
    run.events = next(events)
    if s is not None:
        run.claimed_durable = sum(1 for e in run.ends if e <= s.wal.durable_lsn)
    return fs, run


def check(plan: list[Any], fs: SimFS, run: Run, fsync: str, model: str, torn: int) -> None:
    records = [r for r in plan if r != CHECKPOINT]
    where = f"{run.crash}, {model} torn={torn}"
    s = Storage.open(fs.after_crash(model, torn), DATA, fsync=fsync, segment_bytes=1500)
    n = s.state.last_seq
    assert s.state.to_state() == reference(records, n).to_state(), where
    s.state.validate()
    assert n <= run.appended, where  # nothing that was never logged
    assert n >= run.checkpointed, where  # a completed checkpoint is never undone
    if model == PROCESS or fsync == "always":
        assert n >= run.acked, where  # flushed: written (process) or synced (always)
    if model in POWER_LOSSES:
        assert n >= run.claimed_durable, where
    # run on to the end from where recovery left off: the rest of the plan is still valid
    for rec in records[n:]:
        s.append(dict(rec))
    s.wal.flush()
    s.checkpoint()
    s.close()
    end = Storage.open(s.fs, DATA)
    assert end.state.to_state() == reference(records, len(records)).to_state(), where
    end.close()


MODELS = ((PROCESS, 0), (POWER_LOSS, 0), (POWER_LOSS, 40), (METADATA_FIRST, 0), (TORN_BLOCKS, 0))


@pytest.mark.parametrize("fsync", ["always", "never"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_crash_at_every_call_recovers_the_reference_state(fsync: str, seed: int) -> None:
    plan = workload(seed, n_records=36, every=7)
    _, full = execute(plan, fsync, None, 0)
    assert full.acked == 36 and full.checkpointed == 36 - 36 % 7
    assert set(full.marks) >= MARKS, set(full.marks)  # every named persistence point is reached
    for crash_at in range(full.events + 1):
        for keep_seed in (0, 1 << 20) if crash_at % 2 else (11,):
            fs, run = execute(plan, fsync, crash_at, keep_seed)
            for model, torn in MODELS:
                check(plan, fs, run, fsync, model, torn)


def test_the_checkpoint_steps_come_in_order() -> None:
    plan = workload(3, n_records=21, every=7)
    _, run = execute(plan, "always", None, 0)
    starts = [i for i, m in enumerate(run.marks) if m == "snapshot-tmp-written"]
    assert len(starts) == 3
    groups = [run.marks[a:b] for a, b in zip(starts, [*starts[1:], len(run.marks)])]
    durable_snapshot = [
        "snapshot-tmp-written",
        "snapshot-tmp-synced",
        "snapshot-renamed",
        "snapshot-dir-synced",
    ]
    for g in groups:
        assert g[:5] == [*durable_snapshot, "wal-rotated"]  # the snapshot is durable before the WAL moves
    assert "wal-segments-deleted" not in groups[0]  # one snapshot: no fallback yet, keep the whole WAL
    assert groups[1][5] == "wal-segments-deleted"  # two: the older one covers the first segment
    assert groups[2][5:7] == ["snapshots-pruned", "wal-segments-deleted"]  # three: prune, then compact


def test_the_workload_is_valid_and_deterministic() -> None:
    plan = workload(5, n_records=50, every=10)
    assert plan == workload(5, n_records=50, every=10)
    records = [r for r in plan if r != CHECKPOINT]
    q = reference(records, len(records))
    q.validate()
    types = {r["type"] for r in records}
    assert {R.ENQUEUE, R.DISPATCH, R.ACK} <= types
    assert isinstance(next(iter(q.leases.values()), Lease(1, 0, 0.0)), Lease)
