"""The simulated timeline of a crash holds the restart: the next life starts `restart_delay` after
the crash (a measured `beaver run` restart by default); what each job does is unchanged by it."""

from __future__ import annotations

import pytest

from beaver_sim.config import load_config
from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.workload import Workload

pytestmark = pytest.mark.usefixtures("clean_env")


def crashed(delay: float) -> Simulation:
    config = Config(data_dir="/sim", task_timeout=0.3, restart_delay=delay)
    return Simulation(config, Workload(jobs=60), 3, crash=[CrashPlan("time", 1.0), CrashPlan("record", 150)])


@pytest.mark.parametrize("delay", [0.0, 0.19, 2.5])
def test_each_life_starts_restart_delay_after_the_crash_before_it(delay: float) -> None:
    r = crashed(delay).run()
    assert len(r.lives) == 3
    for before, after in zip(r.lives, r.lives[1:]):
        assert before.crash is not None and after.start == pytest.approx(before.end + delay)
    assert r.summary["invariants"]["ok"]


def test_the_delay_moves_the_timeline_not_the_jobs() -> None:
    quick, slow = crashed(0.0).run(), crashed(1.0).run()
    assert slow.summary["virtual_seconds"] == pytest.approx(quick.summary["virtual_seconds"] + 2.0)
    attempts = {j: (job.attempt, job.status) for j, job in quick.state.jobs.items()}
    assert {j: (job.attempt, job.status) for j, job in slow.state.jobs.items()} == attempts


def test_the_default_is_the_measured_restart_and_a_negative_one_is_refused() -> None:
    assert Config().restart_delay == 0.19
    assert load_config(None, {"restart_delay": "400ms"}).restart_delay == pytest.approx(0.4)
    with pytest.raises(BeaverError, match="restart_delay must be >= 0"):
        load_config(None, {"restart_delay": "-1"})
