"""The fidelity comparison: a job that ends the same way agrees; one that differs is excused only
when one of its attempts drew a duration within the margin of the timeout (borderline)."""

from __future__ import annotations

import pytest

from beaver_sim.core.draws import Draws
from beaver_sim.core.types import BeaverError, Config, Job, JobStatus
from beaver_sim.fidelity import borderline, compare, job_file
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.workload import Workload

CONFIG = Config(task_timeout=0.3, seed=4, data_dir="/sim")


def near_and_far(n: int = 400) -> tuple[str, str]:
    """A job whose first attempt drew within 1 ms of the timeout, and one drawn far from it."""
    draws = Draws(CONFIG.seed)
    durations = {f"task-{i:03d}": draws.work(f"task-{i:03d}", 1, 0.1, 0.5, 0.1)[0] for i in range(1, n)}
    near = min(durations, key=lambda j: abs(durations[j] - 0.3))
    far = max(durations, key=lambda j: abs(durations[j] - 0.3))
    assert abs(durations[near] - 0.3) < 0.001 < abs(durations[far] - 0.3)
    return near, far


def test_borderline_is_the_attempts_drawn_within_the_margin() -> None:
    near, far = near_and_far()
    assert borderline(CONFIG, near, 1, 0.001) == (1,)
    assert borderline(CONFIG, far, 1, 0.001) == ()
    assert borderline(CONFIG, near, 1, 0.0) == ()
    assert borderline(CONFIG, far, 1, 1.0) == (1,)


def test_a_difference_is_explained_only_by_a_borderline_attempt() -> None:
    near, far = near_and_far()
    sim = {near: Job(near, {}, 1, JobStatus.COMPLETED), far: Job(far, {}, 1, JobStatus.COMPLETED)}
    real = {near: Job(near, {}, 2, JobStatus.COMPLETED), far: Job(far, {}, 2, JobStatus.COMPLETED)}
    f = compare(CONFIG, sim, real, margin=0.001)
    by_job = {j.job: j for j in f.jobs}
    assert by_job[near].borderline == (1,) and by_job[near].explained and not by_job[near].same
    assert [j.job for j in f.unexplained] == [far]
    assert f.summary() == {
        "jobs": 2,
        "same": 0,
        "different_borderline": 1,
        "different_unexplained": 1,
        "borderline_attempts": 1,
        "margin_ms": 1.0,
    }
    assert list(f.frame()["job"]) == sorted([near, far])
    assert compare(CONFIG, sim, sim, margin=0.0).agree == 2


def test_a_simulated_run_agrees_with_itself_and_the_job_file_holds_its_jobs() -> None:
    workload = Workload(jobs=30)
    state = Simulation(CONFIG, workload, CONFIG.seed).run().state
    f = compare(CONFIG, state, state.jobs, margin=0.002)
    assert f.agree == 30 and not f.unexplained
    assert [j["id"] for j in job_file(workload, CONFIG.seed)] == sorted(state.jobs)
    with pytest.raises(BeaverError, match="different jobs"):
        compare(CONFIG, state, {}, margin=0.0)
    with pytest.raises(BeaverError, match="rate 0"):
        job_file(Workload(jobs=3, rate=1.0), 1)
