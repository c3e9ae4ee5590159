"""completed_retention: a queue that runs forever keeps only the newest N ended jobs in memory and
in its snapshots; replay drops exactly what the live run dropped; duplicate detection holds inside
the window only; every invariant holds at every crash point with the window on."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from beaver_sim.core import codec
from beaver_sim.core import records as R
from beaver_sim.core.codec import decode_snapshot
from beaver_sim.core.controller import Controller, Enqueued
from beaver_sim.core.durable import Storage
from beaver_sim.core.queue import RETENTION_UNKNOWN, JobQueue
from beaver_sim.core.repair import inspect
from beaver_sim.core.types import Config, JobStatus, Lease
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.fs import CRASH_MODELS, POWER_LOSS, SimFS
from beaver_sim.sim.sweep import crash_sweep, violations
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.sim.workload import Workload
from beaver_sim.storage import snapshot as S
from beaver_sim.storage.snapshot import snapshot_name

CONFIG = Config(
    data_dir="/data", worker_count=4, task_timeout=1.0, snapshot_interval=0.5, completed_retention=5
)


def ended_queue(n: int, retention: int) -> JobQueue:
    q = JobQueue()
    q.set_retention(retention)
    for i in range(n):
        q.enqueue(f"j{i}", {"i": i})
        q.dispatch(f"j{i}", Lease(1, 0, 1.0))
        q.complete(f"j{i}", 1) if i % 3 else q.kill(f"j{i}", 1)
    return q


def test_only_the_newest_ended_jobs_stay() -> None:
    q = ended_queue(10, 4)
    assert list(q.jobs) == ["j6", "j7", "j8", "j9"] and list(q.ended) == list(q.jobs)
    assert q.dropped == 6
    stats = {
        "pending": 0,
        "in_flight": 0,
        "completed": 2,
        "dead": 2,
        "delayed": 0,
        "cancelled": 0,
        "jobs": 4,
        "last_seq": 0,
        "dropped": 6,
    }
    assert q.stats() == stats
    q.validate()
    q.enqueue("j1", {"again": True})  # a dropped id is unknown again: a new job
    assert q.jobs["j1"].status is JobStatus.PENDING


def test_off_by_default_keeps_every_job_and_the_snapshot_format() -> None:
    q = ended_queue(10, 0)
    assert len(q.jobs) == 10 and q.dropped == 0 and "dropped" not in q.stats()
    assert set(q.to_state()) == {"schema", "last_seq", "jobs", "pending", "leases"}


def test_the_window_survives_a_snapshot_round_trip() -> None:
    q = ended_queue(10, 4)
    q.last_seq = 30
    back = codec.from_state(q.to_state())
    back.set_retention(4)
    assert back.to_state() == q.to_state() and back.dropped == 6
    for bad in (["j6", "j6"], ["nope"]):
        with pytest.raises(AssertionError):
            codec.from_state(q.to_state() | {"ended": bad})


def test_turning_it_on_for_a_state_without_an_end_order_is_deterministic() -> None:
    q = ended_queue(10, 0)
    q.enqueue("p", {})
    q.set_retention(3)
    assert list(q.jobs) == ["j7", "j8", "j9", "p"] and q.dropped == 7
    q.validate()


def run(fs: SimFS, config: Config, jobs: int, seed: int = 1) -> Controller:
    clock = VirtualClock()
    ctl = Controller(config, clock, Storage.from_config(fs, config), SimWorkers(clock, seed))
    ctl.start()
    ctl.enqueue((f"t{i:03d}", {"i": i}) for i in range(jobs))
    clock.run()
    return ctl


@pytest.mark.parametrize("interval", [0.5, 0.0], ids=["snapshots", "wal-only"])
def test_recovery_rebuilds_the_live_state_exactly(interval: float) -> None:
    fs, config = SimFS(), replace(CONFIG, snapshot_interval=interval)
    ctl = run(fs, config, 60)
    live = ctl.state
    assert len(live.jobs) == 5 and live.dropped == 55 and (ctl.counters.snapshots > 0) == (interval > 0)
    crashed = fs.after_crash(POWER_LOSS)
    seen = inspect(crashed, "/data/wal", "/data/snap", retention=5).state  # read-only, as `status` does
    back = Storage.from_config(crashed, config)
    assert back.report.snapshot_seq == ctl.last_snapshot_seq
    assert back.state.to_state() == live.to_state() == seen.to_state()
    back.state.validate()
    seen.validate()


def test_snapshots_hold_only_the_window() -> None:
    fs = SimFS()
    ctl = run(fs, CONFIG, 60)
    path = "/data/snap/" + snapshot_name(ctl.last_snapshot_seq)
    snap = decode_snapshot(fs.read_bytes(path), path)
    c = snap.counts
    assert len(snap.ended) == c[JobStatus.COMPLETED] + c[JobStatus.DEAD] == 5
    assert len(snap.jobs) == 5 + c[JobStatus.PENDING] + c[JobStatus.IN_FLIGHT] < 60 - snap.dropped + 5


def test_duplicate_detection_holds_inside_the_window_only() -> None:
    fs = SimFS()
    ctl = run(fs, CONFIG, 20)
    kept, gone = next(iter(ctl.state.jobs)), "t000"
    assert gone not in ctl.state.jobs
    assert ctl.enqueue([(kept, ctl.state.jobs[kept].payload)]) == Enqueued(0, 1)  # already present
    assert ctl.enqueue([(gone, {"i": 0})]) == Enqueued(1, 0)  # left the window: runs again
    assert ctl.state.jobs[gone].attempt == 1  # dispatched afresh: a new job


def test_turning_the_window_on_later_is_logged_and_replayed_from_its_record() -> None:
    fs = SimFS()
    ctl = run(fs, replace(CONFIG, completed_retention=0), 30)
    assert len(ctl.state.jobs) == 30
    crashed = fs.after_crash(POWER_LOSS)
    storage = Storage.from_config(crashed, CONFIG)
    assert len(storage.state.jobs) == 30  # replay follows the log, not the config file
    clock = VirtualClock()
    back = Controller(CONFIG, clock, storage, SimWorkers(clock))
    assert len(back.state.jobs) == 5 and back.state.dropped == 25  # the CONFIG record applied it
    back.state.validate()
    back.stop(snapshot=False)
    again = Storage.from_config(crashed, replace(CONFIG, completed_retention=0)).state
    assert again.to_state() == back.state.to_state() and again.retention == 5


def test_a_snapshot_from_before_the_window_was_recorded_takes_the_config() -> None:
    """Snapshots written before `retention` was part of them have an end order and no window:
    recovery takes the config's, as the versions that wrote them did."""
    fs = SimFS()
    ctl = run(fs, CONFIG, 40)
    path = "/data/snap/" + snapshot_name(ctl.last_snapshot_seq)
    snap = S.decode(fs.read_bytes(path), path)
    body = orjson.loads(snap.body)
    assert body.pop("retention") == 5
    f = fs.create(path)  # rewritten in place, durably
    f.write(S.encode(snap.seq, snap.version, orjson.dumps(body)))
    f.sync()
    assert codec.from_columns(body).retention == RETENTION_UNKNOWN
    back = Storage.from_config(fs.after_crash(POWER_LOSS), replace(CONFIG, completed_retention=3)).state
    assert back.retention == 3 and len(back.ended) == 3
    back.validate()


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_the_issues_retention_change_at_restart_opens(model: str) -> None:
    """Issue 17 #9: retention 2, A, 3 more, A again (a new job: it left the window), a crash, a
    restart with retention 0. Replay follows the recorded window, so recovery opens, and verify
    agrees; the new setting is logged and replayed from its record on."""
    fs = SimFS()
    config = replace(CONFIG, completed_retention=2, snapshot_interval=0.0)
    clock = VirtualClock()
    ctl = Controller(config, clock, Storage.from_config(fs, config), SimWorkers(clock, 1, failure_rate=0.0))
    ctl.start()
    for batch in (["A"], ["B", "C", "D"], ["A"]):
        ctl.enqueue((j, {"n": 1}) for j in batch)
        clock.run()
    assert ctl.state.jobs["A"].status is JobStatus.COMPLETED and ctl.state.dropped == 3
    crashed = fs.after_crash(model)
    zero = replace(config, completed_retention=0)
    found = inspect(crashed, "/data/wal", "/data/snap", retention=0)
    assert found.ok
    storage = Storage.from_config(crashed, zero)
    assert storage.state.to_state() == ctl.state.to_state()
    clock = VirtualClock()
    Controller(zero, clock, storage, SimWorkers(clock)).stop(snapshot=False)
    assert Storage.from_config(crashed, config).state.retention == 0  # the change, replayed


@pytest.mark.parametrize("model", CRASH_MODELS)
def test_every_invariant_at_every_record_with_retention(model: str) -> None:
    sim = Simulation(config=CONFIG, workload=Workload(jobs=24, rate=20.0, batch=6), seed=3, model=model)
    df = crash_sweep(sim, "records+io", executor="serial", progress=False)
    assert violations(df) == []
    assert (df["outcome"] == "ok").all() and len(df) > 100


def test_every_byte_with_a_tiny_window() -> None:
    sim = Simulation(config=replace(CONFIG, completed_retention=2), workload=Workload(jobs=20), seed=5)
    df = crash_sweep(sim, "all", executor="serial", progress=False)
    assert violations(df) == [] and len(df) > 1000


def test_the_checker_still_sees_a_lost_job_with_retention() -> None:
    """Retention excuses only as many missing jobs as it dropped: a lost acknowledged job is still
    a violation (here: the whole log of a finished run deleted, nothing left to recover)."""
    r = Simulation(config=CONFIG, workload=Workload(jobs=12), seed=2).run()
    assert r.ok and r.state.dropped == 7
    q = JobQueue()
    q.set_retention(5)
    q.dropped = 7  # as many as the run dropped, but the 5 kept ones are gone too
    checker = r.checker
    checker.recovered(q, 10**9)
    assert any(v.invariant == 1 for v in checker.violations)


def test_apply_drops_in_replay_too() -> None:
    q = JobQueue()
    q.set_retention(1)
    seq = 0
    for rec in (R.enqueue("a", {}), R.enqueue("b", {}), R.dispatch("a", 1, 0, 1.0), R.ack("a", 1)):
        seq += 1
        R.apply(q, {**rec, "seq": seq})
    for rec in (R.dispatch("b", 1, 0, 1.0), R.dead("b", 1, "x")):
        seq += 1
        R.apply(q, {**rec, "seq": seq})
    assert list(q.jobs) == ["b"] and q.dropped == 1
