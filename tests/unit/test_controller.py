"""The Controller on the VirtualClock with SimFS and SimWorkers: thousands of jobs in virtual time,
failures, timeouts, stale results, max_retry, snapshots, enqueue rules, crashes and recovery, with
the seven invariants of docs/contracts.md checked on the state and on the WAL's whole history."""

from __future__ import annotations

import hashlib
import itertools
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from beaver_sim.core import records as R
from beaver_sim.core.controller import DURATION_BUCKETS, Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Abandoned, BeaverError, Config, DuplicateJob, JobStatus, OnResult
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import POWER_LOSS, PROCESS, SimFS
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.storage.wal import RecordTooLarge, list_segments, scan

DATA = "/data"
WAL = f"{DATA}/wal"
SNAP = f"{DATA}/snap"
BASE = Config(
    data_dir=DATA,
    worker_count=8,
    task_timeout=1.0,
    snapshot_interval=0.5,
    max_retry=3,
    segment_bytes=16 << 10,
    seed=7,
    failure_rate=0.1,
    work_min=0.1,
    work_max=0.5,
)


def payload(i: int) -> dict[str, Any]:
    return {"type": "compute", "n": i, "to": f"user{i}@example.com"}


def find_written(fs: SimFS, segments: list[str], needle: bytes, durable: bool) -> bool:
    """Is `needle` in the bytes written (or made durable) to one of the WAL segments, newest first?"""
    for path in reversed(segments):
        inode = fs.files[path]
        end = inode.synced if durable else len(inode.data)
        if inode.data.rfind(needle, 0, end) >= 0:
            return True
    return False


class CheckedWorkers:
    """Wraps a worker pool to check the controller's side of the contract on every call: an attempt
    starts only once its DISPATCH record is written (durable under fsync `always`), and a stale
    result (an attempt that is no longer current) changes neither the state nor the log."""

    def __init__(self, inner: Any, clock: VirtualClock, fs: SimFS, storage: Storage) -> None:
        self.inner, self.clock, self.fs, self.storage = inner, clock, fs, storage
        self.started: list[tuple[float, str, int]] = []
        self.stale = 0

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        wal = self.storage.wal
        needle = b'"type":"dispatch","job":%s,"attempt":%d,' % (orjson.dumps(job_id), attempt)
        segments = [s.path for s in wal.segments]
        assert find_written(self.fs, segments, needle, durable=wal.fsync == "always"), (job_id, attempt)
        self.started.append((self.clock.now(), job_id, attempt))
        self.inner.submit(job_id, attempt, worker, payload, self._checked(done))

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        return self.inner.abandon(job_id, attempt, worker)

    def _checked(self, done: OnResult) -> OnResult:
        state, wal = self.storage.state, self.storage.wal

        def look(job_id: str) -> tuple[Any, ...]:
            # any state change is a logged record (wal.lsn), but look at the job and counts too
            job = state.jobs[job_id]
            return (
                job.status,
                job.attempt,
                state.leases.get(job_id),
                state.stats(),
                wal.lsn,
                len(state.pending),
            )

        def result(job_id: str, attempt: int, ok: bool, error: str | None) -> None:
            lease = state.leases.get(job_id)
            if lease is not None and lease.attempt == attempt:
                done(job_id, attempt, ok, error)
                return
            before = look(job_id)
            done(job_id, attempt, ok, error)
            assert look(job_id) == before, f"stale result of {job_id} #{attempt} changed something"
            self.stale += 1

        return result


@dataclass
class World:
    """One simulated process on a data directory, plus what the test observed: the acknowledged
    job ids and the WAL segments deleted so far (so the log's whole history can be checked)."""

    config: Config
    clock: VirtualClock
    fs: SimFS
    storage: Storage
    workers: CheckedWorkers
    ctl: Controller
    acked: list[str] = field(default_factory=list)
    removed: dict[str, bytes] = field(default_factory=dict)
    recovered_leases: dict[str, int] = field(default_factory=dict)

    def enqueue(self, ids: Iterable[str], check: Callable[[list[str]], None] | None = None) -> None:
        batch = list(ids)

        def durable() -> None:
            if check is not None:
                check(batch)
            self.acked.extend(batch)

        self.ctl.enqueue(((j, payload(int(j.rsplit("-", 1)[1]))) for j in batch), on_durable=durable)

    def at(self, when: float, ids: Iterable[str]) -> None:
        self.clock.call_at(when, self.enqueue, list(ids))


def boot(
    config: Config,
    fs: SimFS | None = None,
    *,
    start: float = 0.0,
    seed: int | None = None,
    workers: Callable[[VirtualClock], Any] | None = None,
    removed: dict[str, bytes] | None = None,
    acked: list[str] | None = None,
) -> World:
    """Open (or recover) the data directory on `fs` and start a controller on a new VirtualClock;
    `workers` builds the pool on that clock (default: SimWorkers from the config, or `seed`)."""
    fs = fs if fs is not None else SimFS()
    stash = removed if removed is not None else {}

    def keep_deleted_segments(op: str, path: str, _n: int) -> None:
        if op == "remove" and posixpath.dirname(path) == WAL and path.endswith(".log"):
            stash[path] = fs.read_bytes(path)

    fs.hook = keep_deleted_segments
    clock = VirtualClock(start)
    storage = Storage.from_config(fs, config)
    if workers is not None:
        inner = workers(clock)
    else:
        s = config.seed if seed is None else seed
        inner = SimWorkers(clock, s, config.failure_rate, config.work_min, config.work_max, record=True)
    checked = CheckedWorkers(inner, clock, fs, storage)
    ctl = Controller(config, clock, storage, checked)
    leases = {j: lease.attempt for j, lease in storage.state.leases.items()}
    world = World(config, clock, fs, storage, checked, ctl, list(acked or []), stash, leases)
    ctl.start()
    return world


def crash(w: World, model: str, torn: int = 0, seed: int | None = None) -> World:
    """Stop the world where it is, keep what the crash model keeps, and recover on a new clock."""
    w.clock.clear()
    w.fs.hook = None
    survivor = w.fs.after_crash(model, torn)
    return boot(w.config, survivor, start=w.clock.now(), seed=seed, removed=w.removed, acked=w.acked)


def history(w: World) -> list[tuple[int, R.Record]]:
    """Every record of the data directory's life with its LSN: the deleted segments and the live
    ones, scanned as one log (scan checks the CRC chain, seq continuity and segment headers)."""
    files = dict(w.removed)
    files.update((p, b) for p, b in w.fs.snapshot_files().items() if posixpath.dirname(p) == WAL)
    h = SimFS()
    h.makedirs(WAL)
    for path, data in files.items():
        f = h.create(path)
        f.write(data)
    out: list[tuple[int, R.Record]] = []
    s = scan(h, WAL, on_record=lambda rec, lsn: out.append((lsn, rec)))
    assert s.problem is None, str(s.problem)
    return out


def check_invariants(w: World, *, quiescent: bool = True) -> list[tuple[int, R.Record]]:
    """docs/contracts.md, invariants 1 to 6 (7 is checked by comparing runs); returns the history."""
    q, max_retry = w.storage.state, w.config.max_retry
    # 1. every acknowledged enqueue survives
    assert [j for j in w.acked if j not in q.jobs] == []
    assert len(set(w.acked)) == len(w.acked)
    # 2. one state per job, and the counts add up to the jobs known
    q.validate()
    assert sum(q.counts.values()) == len(q.jobs)
    by_state = {s: sum(1 for j in q.jobs.values() if j.status is s) for s in JobStatus}
    assert by_state == q.counts
    # 5. seq and LSN strictly increase across segments and restarts
    recs = history(w)
    assert [r["seq"] for _, r in recs] == list(range(1, q.last_seq + 1))
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(recs))
    # the log's whole history, replayed, is the live state: one transition function
    replayed = JobQueue()
    for _, rec in recs:
        R.apply(replayed, rec)
    assert replayed.to_state() == q.to_state()
    # 3. an ACKed job is never dispatched again and stays completed
    completed: set[str] = set()
    for _, rec in recs:
        if rec["type"] == R.ACK:
            completed.add(rec["job"])
        elif rec["type"] == R.DISPATCH:
            assert rec["job"] not in completed, f"{rec['job']} dispatched after its ACK"
            # 4. (in the log) no attempt beyond max_retry
            assert rec["attempt"] <= max_retry
    assert all(q.jobs[j].status is JobStatus.COMPLETED for j in completed)
    # 4. no job over max_retry attempts; the dead have exactly max_retry
    for job in q.jobs.values():
        assert job.attempt <= max_retry
        if job.status is JobStatus.DEAD:
            assert job.attempt == max_retry, job
    # 6. at quiescence every job known, so every acknowledged one, is completed or dead
    if quiescent:
        assert w.ctl.idle
        c = q.counts
        assert c[JobStatus.PENDING] == c[JobStatus.IN_FLIGHT] == 0
        assert c[JobStatus.COMPLETED] + c[JobStatus.DEAD] == len(q.jobs) >= len(w.acked)
    return recs


def load(w: World, n: int, batch: int = 100, every: float = 0.2, first: int = 0) -> list[str]:
    """Schedule n jobs, `batch` at a time every `every` virtual seconds from now."""
    ids = [f"job-{i:05d}" for i in range(first, first + n)]
    t0 = w.clock.now()
    for k in range(0, n, batch):
        w.at(t0 + (k // batch) * every, ids[k : k + batch])
    return ids


def resend(w: World, ids: list[str], batch: int = 100, every: float = 0.2) -> None:
    """The enqueues a crash cut off (the old clock's schedule is gone) arrive at the new process."""
    missing = [j for j in ids if j not in w.storage.state.jobs]
    t0 = w.clock.now()
    for k in range(0, len(missing), batch):
        w.at(t0 + (k // batch) * every, missing[k : k + batch])


def fingerprint(fs: SimFS) -> str:
    h = hashlib.sha256()
    for path, data in fs.snapshot_files().items():
        h.update(path.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def attempts_of(recs: list[tuple[int, R.Record]], job: str) -> list[tuple[str, int]]:
    return [(r["type"], r["attempt"]) for _, r in recs if r["job"] == job and r["type"] != R.ENQUEUE]


# -- thousands of jobs --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_thousands_of_jobs_at_a_failure_rate(rate: float) -> None:
    w = boot(replace(BASE, failure_rate=rate))
    ids = load(w, 3000)
    w.clock.run()
    recs = check_invariants(w)
    assert sorted(w.acked) == ids
    q, c = w.storage.state, w.ctl.counters
    stats = q.stats()
    assert stats["completed"] + stats["dead"] == 3000
    assert (c.completed, c.dead, c.enqueued) == (stats["completed"], stats["dead"], 3000)
    # no timeouts here (work <= 0.5 s < 1 s): every attempt ended in an ACK or a FAIL
    assert c.timeouts == c.stale == w.workers.stale == 0
    assert c.dispatched == sum(j.attempt for j in q.jobs.values()) == len(w.workers.started)
    assert c.dispatched == c.completed + c.failed
    assert c.retried == c.failed - c.dead
    assert sum(c.duration_buckets) == c.completed + c.failed
    assert all(b == 0 for b in c.duration_buckets[2:])  # every duration under 0.5 s
    types = [r["type"] for _, r in recs]
    assert types.count(R.DISPATCH) == c.dispatched and types.count(R.FAIL) == c.retried
    if rate == 0.0:
        assert (c.completed, c.failed, c.dispatched) == (3000, 0, 3000)
    elif rate == 1.0:
        assert (c.dead, c.failed, c.dispatched) == (3000, 9000, 9000)
        assert all(j.attempt == 3 for j in q.jobs.values())
    else:
        assert 0 < c.failed < c.dispatched  # both outcomes happen
        assert c.dead < 3000 * rate  # most failing jobs succeed on a retry
    # snapshots were taken and the log compacted behind them
    assert c.snapshots > 0
    snaps = [n for n in w.fs.listdir(SNAP) if n.endswith(".json")]
    assert 1 <= len(snaps) <= BASE.snapshots_kept
    segments = list_segments(w.fs, WAL)
    assert w.removed and all(posixpath.basename(p) not in segments for p in w.removed)


def test_timeouts_and_stale_results() -> None:
    """Work durations straddle the task timeout: an attempt over it times out, counts as an attempt,
    and its late result is stale (CheckedWorkers asserts it changes nothing)."""
    w = boot(replace(BASE, work_min=0.5, work_max=1.5, failure_rate=0.1))
    ids = load(w, 3000)
    w.clock.run()
    check_invariants(w)
    assert sorted(w.acked) == ids
    c, attempts = w.ctl.counters, w.workers.inner.attempts
    late = sum(1 for a in attempts if a.duration > BASE.task_timeout)
    assert late > 500
    assert c.timeouts == late
    assert c.stale == w.workers.stale == late  # every late result arrived, and was ignored
    failed = sum(1 for a in attempts if a.duration < BASE.task_timeout and not a.ok)
    assert c.failed == failed
    assert c.dispatched == len(attempts) == c.completed + c.failed + c.timeouts
    assert c.dead > 0 and c.retried == c.failed + c.timeouts - c.dead
    # durations are observed for results only; a timed-out attempt has none
    assert sum(c.duration_buckets) == c.completed + c.failed
    assert all(b == 0 for b in c.duration_buckets[3:])  # results later than 1 s are stale
    assert len(c.duration_buckets) == len(DURATION_BUCKETS) + 1


@dataclass
class ScriptedWorkers:
    """Each job's attempts follow a script: "ok", "fail" or "timeout" (which reports success,
    late: a stale success must not complete the job)."""

    clock: VirtualClock
    script: dict[str, list[str]]
    late: float

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        outcome = self.script[job_id][attempt - 1]
        if outcome == "timeout":
            self.clock.call_later(self.late, done, job_id, attempt, True, None)
        else:
            self.clock.call_later(0.1, done, job_id, attempt, outcome == "ok", "boom")

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        return Abandoned(False)  # it runs on: its late success is stale


def test_max_retry_counts_failures_and_timeouts_alike() -> None:
    script = {
        "job-00000": ["timeout", "timeout", "timeout"],  # the seed retried this one forever
        "job-00001": ["fail", "timeout", "fail"],
        "job-00002": ["timeout", "fail", "ok"],
        "job-00003": ["fail", "fail", "fail"],
        "job-00004": ["ok"],
        "job-00005": ["timeout", "ok"],
    }
    config = replace(BASE, max_retry=3, worker_count=2)
    w = boot(config, workers=lambda clock: ScriptedWorkers(clock, script, late=config.task_timeout + 0.75))
    w.enqueue(sorted(script))
    w.clock.run()
    recs = check_invariants(w)
    q = w.storage.state
    status = {j: (q.jobs[j].status.value, q.jobs[j].attempt) for j in script}
    assert status == {
        "job-00000": ("dead", 3),
        "job-00001": ("dead", 3),
        "job-00002": ("completed", 3),
        "job-00003": ("dead", 3),
        "job-00004": ("completed", 1),
        "job-00005": ("completed", 2),
    }
    D, T, F, A, X = R.DISPATCH, R.TIMEOUT, R.FAIL, R.ACK, R.DEAD
    assert attempts_of(recs, "job-00000") == [(D, 1), (T, 1), (D, 2), (T, 2), (D, 3), (X, 3)]
    assert attempts_of(recs, "job-00001") == [(D, 1), (F, 1), (D, 2), (T, 2), (D, 3), (X, 3)]
    assert attempts_of(recs, "job-00002") == [(D, 1), (T, 1), (D, 2), (F, 2), (D, 3), (A, 3)]
    c = w.ctl.counters
    assert (c.timeouts, c.failed, c.dead, c.completed) == (6, 6, 3, 3)
    assert c.stale == w.workers.stale == 6  # the late successes of the timed-out attempts


def test_max_retry_one_means_no_retry() -> None:
    script = {"job-00000": ["timeout"], "job-00001": ["fail"], "job-00002": ["ok"]}
    config = replace(BASE, max_retry=1)
    w = boot(config, workers=lambda clock: ScriptedWorkers(clock, script, late=5.0))
    w.enqueue(sorted(script))
    w.clock.run()
    check_invariants(w)
    assert w.ctl.status() == {
        "pending": 0,
        "in_flight": 0,
        "completed": 1,
        "dead": 2,
        "delayed": 0,
        "cancelled": 0,
        "jobs": 3,
        "last_seq": 9,
    }
    assert w.ctl.counters.retried == 0


def test_snapshots_compact_the_log_and_recovery_starts_from_them() -> None:
    config = replace(BASE, snapshot_interval=0.25, segment_bytes=4096)
    w = boot(config)
    load(w, 1000)
    w.clock.run()
    recs = check_invariants(w)
    assert w.ctl.counters.snapshots >= 2
    snaps = sorted(n for n in w.fs.listdir(SNAP) if n.endswith(".json"))
    assert len(snaps) == config.snapshots_kept
    assert posixpath.join(WAL, "wal-00000000000000000001.log") in w.removed
    # the oldest kept snapshot covers every deleted segment
    oldest = int(snaps[0][5:25])
    live = list_segments(w.fs, WAL)
    assert int(live[0][4:24]) <= oldest + 1
    # a restart reads the newest snapshot and replays only the records after it
    w.ctl.stop(snapshot=False)
    again = Storage.from_config(w.fs.after_crash(PROCESS), config)
    assert again.report.snapshot_seq == int(snaps[-1][5:25])
    assert again.report.records_replayed == len(recs) - again.report.snapshot_seq
    assert again.state.to_state() == w.storage.state.to_state()


def test_stop_syncs_and_snapshots() -> None:
    config = replace(BASE, fsync="never", snapshot_interval=0)
    w = boot(config)
    load(w, 200, batch=50)
    w.clock.run(until=0.7)
    in_flight = dict(w.storage.state.leases)
    assert in_flight
    w.ctl.stop()
    assert w.ctl.counters.snapshots == 1  # snapshot_interval 0: no periodic snapshot, one at stop
    # what stop left is durable: a power loss now loses nothing, and in-flight jobs stay in flight
    again = Storage.from_config(w.fs.after_crash(POWER_LOSS), config)
    assert again.state.to_state() == w.storage.state.to_state()
    assert again.report.records_replayed == 0
    assert {j: lease.attempt for j, lease in again.state.leases.items()} == {
        j: lease.attempt for j, lease in in_flight.items()
    }


# -- enqueue, dispatch and acknowledgement ------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        ([("new-1", {"n": 1}), ("new-1", {"n": True})], DuplicateJob),  # twice, two payloads
        ([("new-1", {}), ("job-00000", {})], DuplicateJob),  # completed
        ([("new-1", {}), ("job-00001", {})], DuplicateJob),  # in flight
        ([("new-1", {}), ("job-00002", {})], DuplicateJob),  # pending
        ([("job-00001", payload(1)), ("job-00002", {**payload(2), "n": 2.0})], DuplicateJob),  # 2 != 2.0
        ([("new-1", {}), ("new-2", ["not", "a", "dict"])], BeaverError),
        ([("new-1", {}), ("", {})], BeaverError),
        ([("new-1", {}), ("new-2", {"pad": "x" * (1 << 20)})], RecordTooLarge),
    ],
)
def test_a_bad_batch_raises_and_writes_nothing(batch: list[tuple[str, Any]], error: type[Exception]) -> None:
    script = {"job-00000": ["ok"], "job-00001": ["ok"], "job-00002": ["ok"]}
    w = boot(replace(BASE, worker_count=1), workers=lambda clock: ScriptedWorkers(clock, script, late=5.0))
    w.enqueue(sorted(script))
    w.clock.run(until=0.15)  # one worker: job-00000 completed, job-00001 in flight, job-00002 pending
    statuses = [w.storage.state.jobs[j].status for j in sorted(script)]
    assert statuses == [JobStatus.COMPLETED, JobStatus.IN_FLIGHT, JobStatus.PENDING]
    before = (w.storage.state.to_state(), w.storage.wal.lsn, w.storage.wal.next_seq, fingerprint(w.fs))
    fired: list[bool] = []
    with pytest.raises(error):
        w.ctl.enqueue(batch, on_durable=lambda: fired.append(True))
    after = (w.storage.state.to_state(), w.storage.wal.lsn, w.storage.wal.next_seq, fingerprint(w.fs))
    assert after == before
    w.clock.run()
    assert fired == []
    assert "new-1" not in w.storage.state.jobs
    assert w.ctl.counters.enqueued == 3
    check_invariants(w)


def test_a_retried_batch_is_already_present_in_every_state_and_logs_nothing() -> None:
    """Retry-safe enqueue: the same ids with the same payloads (keys in any order) are already
    present, whether pending, in flight or completed; an identical repeat inside one batch is one
    job; only the new ones are logged, and the whole batch is answered once durable."""
    script = {"job-00000": ["ok"], "job-00001": ["ok"], "job-00002": ["ok"], "new": ["ok"]}
    w = boot(replace(BASE, worker_count=1), workers=lambda clock: ScriptedWorkers(clock, script, late=5.0))
    w.enqueue(sorted(script)[:3])
    w.clock.run(until=0.15)  # job-00000 completed, job-00001 in flight, job-00002 pending
    seq = w.storage.wal.next_seq
    fired: list[bool] = []
    reordered = dict(reversed(payload(1).items()))
    batch = [
        ("job-00000", payload(0)),
        ("job-00001", reordered),
        ("new", {"x": 1}),
        ("job-00002", payload(2)),
    ]
    done = w.ctl.enqueue([*batch, ("new", {"x": 1})], on_durable=lambda: fired.append(True))
    assert (done.new, done.already_present) == (1, 3)
    assert w.storage.wal.next_seq == seq + 1  # one ENQUEUE (new), nothing for the others
    assert fired == []  # answered only after the flush, like any enqueue
    w.clock.run(until=w.clock.now())
    assert fired == [True]
    again = w.ctl.enqueue(batch, on_durable=lambda: fired.append(True))
    assert (again.new, again.already_present) == (0, 4)
    w.clock.run()
    assert fired == [True, True] and w.ctl.counters.enqueued == 4
    check_invariants(w)


def test_already_present_after_a_crash_is_answered_only_once_synced() -> None:
    """After a process crash, recovery reads records that may be only in the page cache: a retry
    that finds them already present is answered after an fdatasync, never before."""
    w = boot(replace(BASE, snapshot_interval=0))
    ids = [f"job-{i:05d}" for i in range(5)]
    w.ctl.enqueue([(j, payload(i)) for i, j in enumerate(ids)])
    w.storage.wal.flush()  # written by the process; it dies before its reply
    clock = VirtualClock()
    storage = Storage.from_config(w.fs.after_crash(PROCESS), BASE)
    ctl = Controller(BASE, clock, storage, SimWorkers(clock, seed=1))
    syncs = storage.fs.syncs
    acked: list[bool] = []
    done = ctl.enqueue([(j, payload(i)) for i, j in enumerate(ids)], on_durable=lambda: acked.append(True))
    assert (done.new, done.already_present) == (0, 5) and acked == [] and ctl.acks_waiting == 1
    clock.run(until=0.0)
    assert acked == [True] and storage.fs.syncs == syncs + 1 and ctl.acks_waiting == 0


def test_on_durable_fires_only_once_the_records_survive_a_power_loss() -> None:
    w = boot(BASE)
    checked: list[int] = []

    def survives_power_loss(batch: list[str]) -> None:
        wal = w.storage.wal
        assert wal.durable_lsn == wal.lsn
        recovered = Storage.from_config(w.fs.after_crash(POWER_LOSS), BASE).state
        assert all(j in recovered.jobs for j in batch)
        checked.append(len(batch))

    for k in range(5):
        batch = [f"job-{i:05d}" for i in range(k * 40, k * 40 + 40)]
        w.enqueue(batch, check=survives_power_loss)
        # not yet: the records are only buffered in this turn
        assert w.storage.wal.durable_lsn < w.storage.wal.lsn
        assert batch[0] not in Storage.from_config(w.fs.after_crash(PROCESS), BASE).state.jobs
        w.clock.run(until=w.clock.now() + 0.3)
    w.clock.run()
    assert checked == [40] * 5
    check_invariants(w)


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_on_durable_under_weaker_policies_means_written(policy: str) -> None:
    """`interval` and `never` acknowledge once written: a process crash keeps the jobs (a power
    loss may not: that is the documented trade)."""
    config = replace(BASE, fsync=policy)
    w = boot(config)
    seen: list[str] = []

    def survives_a_process_crash(batch: list[str]) -> None:
        assert w.storage.wal.written_lsn == w.storage.wal.lsn
        recovered = Storage.from_config(w.fs.after_crash(PROCESS), config).state
        assert all(j in recovered.jobs for j in batch)
        seen.extend(batch)

    w.enqueue([f"job-{i:05d}" for i in range(50)], check=survives_a_process_crash)
    w.clock.run()
    assert len(seen) == 50
    check_invariants(w)


def test_an_idle_controller_dispatches_an_enqueue_in_the_same_instant() -> None:
    w = boot(replace(BASE, snapshot_interval=0))
    w.clock.run(until=10.0)
    assert w.clock.peek() == float("inf")  # idle means nothing scheduled: no polling
    assert w.ctl.idle
    w.enqueue(["job-00000"])
    w.clock.run(until=10.0)  # the same virtual instant
    assert w.workers.started == [(10.0, "job-00000", 1)]
    w.clock.run()
    w.clock.run(until=37.25)
    w.enqueue(["job-00001", "job-00002"])
    w.clock.run(until=37.25)
    assert w.workers.started[1:] == [(37.25, "job-00001", 1), (37.25, "job-00002", 1)]
    w.clock.run()
    check_invariants(w)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_a_worker_starts_an_attempt_only_after_its_dispatch_record_is_written(policy: str) -> None:
    """CheckedWorkers finds each DISPATCH in the written (under `always`, synced) bytes at submit."""
    w = boot(replace(BASE, fsync=policy, work_min=0.5, work_max=1.5))
    w.enqueue(["job-00000", "job-00001"])
    assert w.workers.started == []  # dispatched in this turn, but not yet written
    assert w.storage.wal.written_lsn < w.storage.wal.lsn
    assert w.storage.state.counts[JobStatus.IN_FLIGHT] == 2
    w.clock.run(until=0.0)
    assert [s[1:] for s in w.workers.started] == [("job-00000", 1), ("job-00001", 1)]
    load(w, 500, first=2)
    w.clock.run()
    check_invariants(w)
    assert len(w.workers.started) == w.ctl.counters.dispatched


# -- determinism --------------------------------------------------------------------------------


def run_to_the_end(seed: int) -> tuple[str, dict[str, int]]:
    w = boot(replace(BASE, seed=seed, work_min=0.3, work_max=1.3, failure_rate=0.2, segment_bytes=8192))
    load(w, 1500, batch=75, every=0.3)
    w.clock.run()
    check_invariants(w)
    assert w.ctl.counters.snapshots > 0 and w.ctl.counters.timeouts > 0
    return fingerprint(w.fs), w.ctl.status()


def test_same_seed_same_bytes_different_seed_different_bytes() -> None:
    a, b, c = run_to_the_end(5), run_to_the_end(5), run_to_the_end(6)
    assert a == b
    assert a[0] != c[0]


# -- crash and recovery -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "model", "torn"),
    [
        ("always", PROCESS, 0),
        ("always", POWER_LOSS, 0),
        ("always", POWER_LOSS, 77),
        ("interval", PROCESS, 0),
        ("interval", POWER_LOSS, 33),
        ("never", PROCESS, 0),
        ("never", POWER_LOSS, 0),
        ("never", POWER_LOSS, 500),
    ],
)
def test_crash_and_recover_mid_load(policy: str, model: str, torn: int) -> None:
    config = replace(BASE, fsync=policy, work_min=0.3, work_max=1.3, segment_bytes=8192)
    w = boot(config)
    ids = load(w, 2000)
    w.clock.run(until=2.05)
    acked_before = list(w.acked)
    assert 0 < len(acked_before) < 2000 and w.storage.state.leases
    w2 = crash(w, model, torn, seed=8)
    survivors = w2.storage.state.jobs
    lost = [j for j in acked_before if j not in survivors]
    if model == PROCESS or policy == "always":
        assert lost == []  # nothing acknowledged is lost
    else:
        w2.acked = [j for j in w2.acked if j in survivors]  # the documented power-loss trade
    # the jobs in flight at the crash were requeued; the interrupted attempt counted
    assert w2.recovered_leases
    requeued = [job for job, attempt in w2.recovered_leases.items() if attempt < config.max_retry]
    assert w2.ctl.counters.requeued_on_recovery == len(requeued)  # a crashed last attempt is dead
    resend(w2, ids)
    w2.clock.run()
    recs = check_invariants(w2)
    assert sorted(w2.storage.state.jobs) == ids
    for job, attempt in w2.recovered_leases.items():
        after = attempts_of(recs, job)
        i = after.index((R.REQUEUE if attempt < config.max_retry else R.DEAD, attempt))
        assert after[i - 1] == (R.DISPATCH, attempt)
        if attempt < config.max_retry:
            assert after[i + 1] == (R.DISPATCH, attempt + 1)


def test_a_crash_during_the_last_attempt_makes_the_job_dead_and_is_not_counted_as_requeued() -> None:
    # max_retry 2: the jobs on their second attempt at the crash have no attempt left
    config = replace(BASE, max_retry=2, worker_count=4, failure_rate=0.9, snapshot_interval=0)
    w = boot(config)
    w.enqueue(f"job-{i:05d}" for i in range(30))
    w.clock.run(until=2.2)  # one job on its first attempt, three on their last
    w2 = crash(w, PROCESS)
    last = sorted(job for job, attempt in w2.recovered_leases.items() if attempt >= 2)
    requeued = sorted(job for job, attempt in w2.recovered_leases.items() if attempt < 2)
    assert last and requeued, "the crash must interrupt both kinds of attempt for this test to mean anything"
    assert all(w2.storage.state.jobs[job].status is JobStatus.DEAD for job in last)
    assert w2.ctl.counters.requeued_on_recovery == len(requeued)
    assert w2.ctl.counters.dead == len(last)


def test_repeated_crashes_keep_every_invariant() -> None:
    config = replace(BASE, work_min=0.3, work_max=1.3, segment_bytes=8192, snapshot_interval=0.3)
    w = boot(config)
    ids = load(w, 1200, batch=40, every=0.1)
    for k, (until, model) in enumerate(
        [(0.9, PROCESS), (1.7, POWER_LOSS), (2.2, PROCESS), (3.1, POWER_LOSS)]
    ):
        w.clock.run(until=until)
        check_invariants(w, quiescent=False)
        w = crash(w, model, torn=13 * k, seed=100 + k)
        resend(w, ids, batch=40, every=0.1)
    w.clock.run()
    check_invariants(w)
    assert sorted(w.storage.state.jobs) == ids
    assert sorted(w.acked) == ids


def test_a_job_in_flight_at_every_crash_ends_dead_not_in_a_loop() -> None:
    """The interrupted attempt counts (SQS's maxReceiveCount): a job that takes the process down
    every time is dead after max_retry crashes."""
    config = replace(BASE, work_min=5.0, work_max=5.0, task_timeout=10.0)
    w = boot(config)
    w.enqueue(["job-00000"])
    for k in range(config.max_retry):
        w.clock.run(until=w.clock.now() + 1.0)
        assert w.storage.state.leases["job-00000"].attempt == k + 1
        w = crash(w, PROCESS)
    w.clock.run()
    recs = check_invariants(w)
    job = w.storage.state.jobs["job-00000"]
    assert (job.status, job.attempt) == (JobStatus.DEAD, config.max_retry)
    assert attempts_of(recs, "job-00000")[-2:] == [(R.DISPATCH, 3), (R.DEAD, 3)]
    assert recs[-1][1]["reason"] == "interrupted"
    assert w.ctl.counters.dead == 1 and w.ctl.counters.dispatched == 0


def test_an_empty_enqueue_is_still_acknowledged() -> None:
    fs = SimFS()
    clock = VirtualClock()
    config = Config(data_dir="/data")
    ctl = Controller(config, clock, Storage.from_config(fs, config), SimWorkers(clock))
    ctl.start()
    acked: list[bool] = []
    ctl.enqueue([], on_durable=lambda: acked.append(True))
    clock.run()
    assert acked == [True]
