"""The simulator predicts the real run job by job: the 200-job, 300 ms-timeout workload (about half
the attempts time out) for seeds 1-3, and one run killed with SIGKILL 3 s in and restarted, each
run for real (`beaver enqueue` + `beaver run --exit-when-idle`, real threads, fsync, timers) and
simulated with the same jobs, seed and config. Every job must end with the same attempt count and
state in both, except a job with a borderline attempt (drawn within the real run's measured timer
lateness of the timeout: it may end either way). The four real runs go side by side (each mostly
sleeps: ~15 s in all on a loaded 2-core machine); more seeds and loads: bench/bench_fidelity.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from beaver_sim.core.types import Config
from beaver_sim.fidelity import Fidelity, RealRun, compare, run_real, simulate
from beaver_sim.sim.workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_env")]

WORKLOAD = Workload(jobs=200)
CONFIG = Config(task_timeout=0.3)  # work 100-500 ms, 10 % failures, 8 workers, max_retry 3
SEEDS = (1, 2, 3)
KILLED_SEED, KILL_AFTER = 2, 3.0


def check(config: Config, real: RealRun) -> Fidelity:
    f = compare(config, simulate(config, WORKLOAD, real.killed_after), real.jobs, real.margin)
    wrong = "\n".join(str(j) for j in f.unexplained)
    assert not f.unexplained, f"seed {config.seed}: {f.summary()}; differ, none borderline:\n{wrong}"
    assert f.agree >= 0.9 * len(f.jobs), f.summary()  # borderline is the exception, not the rule
    return f


def test_the_simulator_predicts_each_job_of_real_runs_and_a_kill(tmp_path: Path) -> None:
    configs = {seed: replace(CONFIG, seed=seed, data_dir=str(tmp_path / f"seed{seed}")) for seed in SEEDS}
    killed = replace(CONFIG, seed=KILLED_SEED, data_dir=str(tmp_path / "killed"))
    with ThreadPoolExecutor(len(SEEDS) + 1) as pool:
        runs = {seed: pool.submit(run_real, config, WORKLOAD) for seed, config in configs.items()}
        crash = pool.submit(run_real, killed, WORKLOAD, kill_after=KILL_AFTER)
        reals = {seed: run.result() for seed, run in runs.items()}
        crashed = crash.result()
    for seed, config in configs.items():
        assert reals[seed].killed_after is None
        check(config, reals[seed])
    assert crashed.killed_after is not None and crashed.killed_after[0] > WORKLOAD.jobs  # dispatching
    check(killed, crashed)
