"""SimWorkers: durations and outcomes drawn per (seed, job, attempt), results delivered on the
clock after the drawn duration, failure rate and duration range respected, same seed same run."""

from __future__ import annotations

from typing import Any

import pytest

from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.workers import SimWorkers

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
