"""SimWorkers: durations and outcomes drawn per (seed, job, attempt), results delivered on the
clock after the drawn duration, failure rate and duration range respected, same seed same run."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from beaver_sim.core import records as R
from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.results import SimResult
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.sim.workload import Workload

Result = tuple[float, str, int, bool, "str | None"]


def drive(seed: int, n: int, **kw: Any) -> tuple[list[Result], SimWorkers]:
    clock = VirtualClock()
    workers = SimWorkers(clock, seed=seed, record=True, **kw)
    results: list[Result] = []

    def done(job_id: str, attempt: int, ok: bool, error: str | None) -> None:
        results.append((clock.now(), job_id, attempt, ok, error))

    for i in range(n):
        workers.submit(f"job-{i}", 1 + i % 3, i % 4, {"i": i}, done)
    clock.run()
    return results, workers


def test_each_result_arrives_after_its_drawn_duration() -> None:
    results, workers = drive(7, 200, failure_rate=0.3, work_min=0.1, work_max=0.5)
    assert len(workers.attempts) == len(results) == 200
    by_job = {a.job: a for a in workers.attempts}
    for t, job, attempt, ok, error in results:
        a = by_job[job]
        assert t == pytest.approx(a.start + a.duration)
        assert 0.1 <= a.duration <= 0.5
        assert (attempt, ok) == (a.attempt, a.ok)
        assert error == (None if ok else "simulated failure")
    assert [r[0] for r in results] == sorted(r[0] for r in results)


@pytest.mark.parametrize(
    ("rate", "low", "high"), [(0.0, 0, 0), (0.1, 50, 150), (0.5, 400, 600), (1.0, 1000, 1000)]
)
def test_failure_rate(rate: float, low: int, high: int) -> None:
    results, _ = drive(3, 1000, failure_rate=rate)
    failures = sum(not r[3] for r in results)
    assert low <= failures <= high


def test_same_seed_same_run_different_seed_different_run() -> None:
    a, _ = drive(11, 100)
    b, _ = drive(11, 100)
    c, _ = drive(12, 100)
    assert a == b
    assert a != c


def test_recording_is_off_by_default() -> None:
    clock = VirtualClock()
    workers = SimWorkers(clock, seed=1)
    workers.submit("j", 1, 0, {}, lambda *a: None)
    assert workers.attempts == []
    assert clock.run() == 1


def test_a_fixed_duration() -> None:
    results, _ = drive(5, 10, work_min=2.0, work_max=2.0, failure_rate=0.0)
    assert {r[0] for r in results} == {2.0}


# -- hostile handlers (issue 17) -----------------------------------------------------------------


def hostile_run(misbehave: str, crash: CrashPlan | None = None) -> SimResult:
    config = Config(data_dir="/sim", failure_rate=0.4, snapshot_interval=0.5, max_retry=3)
    return Simulation(config, Workload(30, rate=20.0, batch=3, misbehave=misbehave), 5, crash=crash).run()


def test_a_misbehaving_pool_draws_the_same_outcomes_as_the_plain_one() -> None:
    plain, hostile = hostile_run(""), hostile_run("huge-reason,unprintable-reason,mutate-payload")
    assert plain.workers.attempts == hostile.workers.attempts
    assert hostile.ok and hostile.summary["dead"] == plain.summary["dead"] > 0
    with pytest.raises(BeaverError, match="misbehaviour 'explode' is not one of"):
        Workload(misbehave="huge-reason,explode")


@pytest.mark.parametrize("misbehave", ["huge-reason", "unprintable-reason"])
def test_huge_and_unprintable_reasons_become_bounded_fails(misbehave: str) -> None:
    r = hostile_run(misbehave, CrashPlan("record", 70))
    assert r.ok and len(r.lives) == 2
    fails = [rec for rec, _, _ in r.records(1) if rec["type"] in (R.FAIL, R.DEAD)]
    texts = [rec.get("error", rec.get("reason")) for rec in fails]
    assert fails and all(len(orjson.dumps(t)) <= R.MAX_REASON_BYTES for t in texts)
    mark = "...[cut: 2097152 bytes in all]" if misbehave == "huge-reason" else "<unprintable Unprintable>"
    errors = [rec["error"] for rec in fails if rec["type"] == R.FAIL]
    assert errors and all(mark in t for t in errors)


def test_a_handler_mutating_its_payload_leaves_the_stored_one_unchanged() -> None:
    r = hostile_run("mutate-payload", CrashPlan("time", 1.0))
    assert r.ok and len(r.lives) == 2 and r.workers.attempts
    sent = dict(Workload(30).batches(5)[0][1])
    assert {j: job.payload for j, job in r.state.jobs.items()} == {j: sent[j] for j in r.state.jobs}
    enqueued = [rec["payload"] for rec, _, _ in r.records(0) + r.records(1) if rec["type"] == R.ENQUEUE]
    assert enqueued and all("mutated" not in p for p in enqueued)
