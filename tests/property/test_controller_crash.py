"""The Controller under random workloads, crashed at a random point, recovered, and run on: the invariants
of docs/contracts.md hold. A workload is enqueue batches at random virtual times, a failure rate, work
durations against the task timeout, a snapshot interval, an fsync policy; the crash is at a random
virtual time or at a random file-system call (SimFS hook: mid-write at a random byte, or before a sync,
rename or named persistence point), under a random crash model. Under fsync `always` (either model) and
under a process crash (any policy) no acknowledged job may be lost; a power loss under `interval` or
`never` may lose acknowledged jobs (the documented trade), so there only the structural invariants
apply."""

from __future__ import annotations

import itertools
import posixpath
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Config, JobStatus
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import CRASH_MODELS, POWER_LOSS, PROCESS, SimFS, SimulatedCrash
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.storage.log_format import FSYNC_POLICIES
from beaver_sim.storage.wal import scan

DATA = "/data"
WAL = f"{DATA}/wal"
Batch = tuple[float, list[str]]


@dataclass
class Process:
    """One run of the controller on `fs` until it ends or the world stops."""

    clock: VirtualClock
    storage: Storage
    ctl: Controller
    acked: list[str]
    in_flight_at_start: dict[str, int]  # job -> attempt left in flight by the previous process


@dataclass
class Trial:
    """The file system across the crash, the WAL segments deleted (for the whole history), and
    the crash point: an FS event index and how many bytes of a write to keep."""

    config: Config
    removed: dict[str, bytes] = field(default_factory=dict)
    events: int = 0
    crash_at: int = -1
    keep_seed: int = 0
    crashed: str = ""
    enqueued_at: list[int] = field(default_factory=list)  # the FS event count at each enqueue

    def hook(self, fs: SimFS) -> Any:
        def hook(op: str, path: str, n: int) -> int | None:
            if op == "remove" and posixpath.dirname(path) == WAL and path.endswith(".log"):
                self.removed[path] = fs.read_bytes(path)
            i = self.events
            self.events += 1
            if i != self.crash_at:
                return None
            keep = self.keep_seed % (n + 1) if op == "write" else 0
            self.crashed = f"event {i}: {op} {path}" + (f" keeping {keep}/{n} bytes" if op == "write" else "")
            return keep

        return hook

    def boot(self, fs: SimFS, start: float, seed: int, batches: list[Batch]) -> Process:
        """Open (recover) the data dir, start a controller on a new clock, and schedule the enqueues
        of `batches` that the data dir does not know yet (at their time, or now if it has passed)."""
        clock = VirtualClock(start)
        storage = Storage.from_config(fs, self.config)
        c = self.config
        workers = SimWorkers(clock, seed, c.failure_rate, c.work_min, c.work_max)
        ctl = Controller(c, clock, storage, workers)
        p = Process(clock, storage, ctl, [], {j: lease.attempt for j, lease in storage.state.leases.items()})
        ctl.start()
        for when, ids in batches:
            missing = [j for j in ids if j not in storage.state.jobs]
            if missing:
                clock.call_at(when, self.enqueue, p, missing)
        return p

    def enqueue(self, p: Process, ids: list[str]) -> None:
        self.enqueued_at.append(self.events)
        jobs = [(j, {"type": "compute", "id": j}) for j in ids]
        p.ctl.enqueue(jobs, on_durable=lambda: p.acked.extend(ids))


def history(fs: SimFS, removed: dict[str, bytes]) -> list[tuple[int, R.Record]]:
    """Every record of the data dir's life with its LSN, deleted segments included, as one log."""
    files = dict(removed)
    files.update((p, b) for p, b in fs.snapshot_files().items() if posixpath.dirname(p) == WAL)
    h = SimFS()
    h.makedirs(WAL)
    for path, data in files.items():
        h.create(path).write(data)
    out: list[tuple[int, R.Record]] = []
    s = scan(h, WAL, on_record=lambda rec, lsn: out.append((lsn, rec)))
    assert s.problem is None, str(s.problem)
    return out


def check_invariants(
    p: Process, fs: SimFS, removed: dict[str, bytes], acked: list[str], max_retry: int
) -> list[tuple[int, R.Record]]:
    """docs/contracts.md, invariants 1 to 6, on the state and on the WAL's whole history; returns it."""
    q = p.storage.state
    assert [j for j in acked if j not in q.jobs] == []  # 1
    q.validate()  # 2
    assert sum(q.counts.values()) == len(q.jobs)
    recs = history(fs, removed)
    assert [r["seq"] for _, r in recs] == list(range(1, q.last_seq + 1))  # 5
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(recs))
    replayed = JobQueue()
    completed: set[str] = set()
    for _, rec in recs:
        R.apply(replayed, rec)
        if rec["type"] == R.ACK:
            completed.add(rec["job"])
        elif rec["type"] == R.DISPATCH:
            assert rec["job"] not in completed, f"{rec['job']} dispatched after its ACK"  # 3
            assert rec["attempt"] <= max_retry  # 4
    assert replayed.to_state() == q.to_state()
    assert all(q.jobs[j].status is JobStatus.COMPLETED for j in completed)  # 3
    for job in q.jobs.values():  # 4
        assert job.attempt <= max_retry
        assert job.status is not JobStatus.DEAD or job.attempt == max_retry
    assert p.ctl.idle  # 6
    assert q.counts[JobStatus.COMPLETED] + q.counts[JobStatus.DEAD] == len(q.jobs)
    return recs


batches_strategy = st.lists(
    st.tuples(st.floats(0, 3, allow_nan=False).map(lambda t: round(t, 3)), st.integers(1, 30)),
    min_size=1,
    max_size=10,
)


@settings(max_examples=settings.default.max_examples * 3)
@given(
    batches=batches_strategy,
    failure_rate=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    timeout=st.sampled_from([0.25, 0.6, 5.0]),  # work takes 0.1..1.0 s: many, some or no timeouts
    snapshot_interval=st.sampled_from([0.0, 0.2, 1.0]),
    fsync=st.sampled_from(FSYNC_POLICIES),
    segment_bytes=st.sampled_from([4096, 1 << 20]),
    max_retry=st.integers(1, 4),
    worker_count=st.integers(1, 6),
    seed=st.integers(0, 1 << 16),
    crash_kind=st.sampled_from(["time", "call", "enqueue"]),
    model=st.sampled_from(CRASH_MODELS),
    torn=st.sampled_from([0, 1, 60, 10_000]),
    data=st.data(),
)
def test_invariants_hold_after_a_crash_anywhere(
    batches: list[tuple[float, int]],
    failure_rate: float,
    timeout: float,
    snapshot_interval: float,
    fsync: str,
    segment_bytes: int,
    max_retry: int,
    worker_count: int,
    seed: int,
    crash_kind: str,
    model: str,
    torn: int,
    data: st.DataObject,
) -> None:
    config = replace(
        Config(),
        data_dir=DATA,
        worker_count=worker_count,
        task_timeout=timeout,
        snapshot_interval=snapshot_interval,
        snapshot_log_ratio=0.5,
        max_retry=max_retry,
        fsync=fsync,
        segment_bytes=segment_bytes,
        failure_rate=failure_rate,
        work_min=0.1,
        work_max=1.0,
    )
    ids = itertools.count()
    plan = [(t, [f"job-{next(ids):04d}" for _ in range(n)]) for t, n in batches]
    # the first process, crashed at a time, at any FS event, or at one of the first FS events after
    # an enqueue (its flush: where an early acknowledgement would show). A dry run counts the events:
    # runs are deterministic, so the real run reaches the same one.
    trial = Trial(config)
    by_time = crash_kind == "time"
    if by_time:
        crash_time = data.draw(st.floats(0, 4, allow_nan=False), label="crash_time")
    else:
        dry = Trial(config)
        fs = SimFS()
        fs.hook = dry.hook(fs)
        dry.boot(fs, 0.0, seed, plan).clock.run()
        if crash_kind == "call":
            trial.crash_at = data.draw(st.integers(0, dry.events), label="crash_at")  # == events: none
        else:
            at = data.draw(st.sampled_from(dry.enqueued_at), label="enqueue at event")
            trial.crash_at = at + data.draw(st.integers(0, 3), label="events after it")
        trial.keep_seed = data.draw(st.integers(0, 1 << 16), label="keep_seed")
    fs = SimFS()
    fs.hook = trial.hook(fs)
    first = None
    try:
        first = trial.boot(fs, 0.0, seed, plan)
        first.clock.run(until=crash_time if by_time else None)
        trial.crashed = trial.crashed or f"at t={first.clock.now()}"
    except SimulatedCrash:
        pass
    now = first.clock.now() if first is not None else 0.0
    acked = first.acked if first is not None else []
    note(f"crash {trial.crashed}, {model} torn={torn}; acknowledged before: {len(acked)}")
    event(f"crash by {crash_kind}, {model}")
    # stop the world, keep what the crash model keeps, recover on a new clock, run to quiescence
    survivor = fs.after_crash(model, torn if model == POWER_LOSS else 0)
    survivor.hook = Trial(config, trial.removed).hook(survivor)  # keeps collecting deleted segments
    second = trial.boot(survivor, now, seed + 1, plan)
    recovered = second.storage.state.jobs
    lost = [j for j in acked if j not in recovered]
    if fsync == "always" or model == PROCESS:
        assert lost == [], f"acknowledged jobs lost: {lost[:5]}"
    else:
        event("acknowledged jobs lost (allowed)" if lost else "no acknowledged job lost")
        acked = [j for j in acked if j in recovered]
    requeued = [job for job, attempt in second.in_flight_at_start.items() if attempt < max_retry]
    assert second.ctl.counters.requeued_on_recovery == len(requeued)  # a crashed last attempt is dead
    second.clock.run()
    recs = check_invariants(second, survivor, trial.removed, acked + second.acked, max_retry)
    assert sorted(second.storage.state.jobs) == sorted(j for _, b in plan for j in b)
    # the jobs in flight at the crash were requeued (or buried) and the interrupted attempt counted
    for job_id, attempt in second.in_flight_at_start.items():
        after = [(r["type"], r["attempt"]) for _, r in recs if r["job"] == job_id and r["type"] != R.ENQUEUE]
        end = R.REQUEUE if attempt < max_retry else R.DEAD
        i = after.index((end, attempt))
        assert after[i - 1] == (R.DISPATCH, attempt)
        assert after[i + 1 :][:1] in ([], [(R.DISPATCH, attempt + 1)])
