"""Each attempt's draws are a pure function of (seed, job id, attempt), the same in the real pool
and the simulator's, so no dispatch order, tie or restart can hand an attempt another's draw."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from beaver_sim.core.draws import Draws
from beaver_sim.core.types import Config
from beaver_sim.runtime.workers import PoolWorkers, simulated_work
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.sim.workload import ExponentialWorkers

ids = st.text(min_size=1, max_size=40)  # any string an id may be, lone surrogates included
attempts = st.integers(min_value=1, max_value=1 << 40)


@given(seed=st.integers(), job=ids, attempt=attempts)
def test_a_draw_depends_on_nothing_else(seed: int, job: str, attempt: int) -> None:
    u, v = Draws(seed).uniforms(job, attempt)
    assert 0.0 <= u < 1.0 and 0.0 <= v < 1.0
    other = Draws(seed)
    other.uniforms("something else", 1)  # drawing for another attempt first changes nothing
    assert other.uniforms(job, attempt) == (u, v)


def test_seeds_jobs_and_attempts_each_change_the_draw() -> None:
    base = Draws(1).uniforms("task-001", 1)
    assert Draws(2).uniforms("task-001", 1) != base
    assert Draws(1).uniforms("task-002", 1) != base
    assert Draws(1).uniforms("task-001", 2) != base
    assert Draws(10**100).uniforms("task-001", 1) != base  # any integer seed is a key


def test_draws_are_uniform_and_the_two_are_independent() -> None:
    d = Draws(7)
    pairs = [d.uniforms(f"job-{i}", 1 + i % 3) for i in range(20_000)]
    us, vs = [p[0] for p in pairs], [p[1] for p in pairs]
    for xs in (us, vs):
        deciles = [sum(1 for x in xs if k / 10 <= x < (k + 1) / 10) for k in range(10)]
        assert all(1_800 < n < 2_200 for n in deciles), deciles
    mean_u, mean_v = sum(us) / len(us), sum(vs) / len(vs)
    cov = sum((u - mean_u) * (v - mean_v) for u, v in pairs) / len(pairs)
    assert abs(cov) < 0.003  # a uniform's variance is 1/12 = 0.083


def test_the_real_pool_and_the_simulator_draw_the_same_for_each_attempt() -> None:
    config = Config(seed=5, failure_rate=0.4, work_min=0.01, work_max=0.9)
    sim = SimWorkers(VirtualClock(), config.seed, config.failure_rate, config.work_min, config.work_max)
    loop = asyncio.new_event_loop()
    real = PoolWorkers(loop, config)
    started: list[tuple[Any, tuple[Any, ...]]] = []
    real.pool.start = lambda key, fn, args, report: started.append((fn, args))  # type: ignore[method-assign]
    keys = [(f"task-{i:03d}", a) for i in range(1, 60) for a in (3, 1, 2)]  # not in attempt order
    try:
        for job, attempt in keys:
            real.submit(job, attempt, 0, {"type": "compute"}, lambda *a: None)
    finally:
        real.close(timeout=0)
        loop.close()
    assert all(fn is simulated_work for fn, _ in started)
    assert [args for _, args in started] == [
        (duration, not ok) for duration, ok in (sim.draw(job, attempt) for job, attempt in keys)
    ]


def test_exponential_durations_keep_their_mean_and_floor() -> None:
    w = ExponentialWorkers(VirtualClock(), 3, 0.1, 0.1, 0.5)
    durations = [w.draw(f"job-{i}", 1)[0] for i in range(20_000)]
    assert min(durations) >= 0.1
    assert abs(sum(durations) / len(durations) - 0.3) < 0.01
