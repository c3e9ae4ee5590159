"""Hypothesis: random workloads, configs, crash points (one to three per run, any kind, each with the
run's crash model or its own) and crash models never break an invariant of the correct design under
fsync `always`, nor under `interval` (whose power losses may lose only the documented window), and
a run is its own replay."""

from __future__ import annotations

from hypothesis import given, note
from hypothesis import strategies as st

from beaver_sim.core.types import Config
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import POINTS, CrashPlan
from beaver_sim.sim.fs import CRASH_MODELS, POWER_LOSSES
from beaver_sim.sim.workload import Workload

configs = st.builds(
    Config,
    data_dir=st.just("/sim"),
    worker_count=st.integers(1, 8),
    task_timeout=st.sampled_from([0.2, 0.35, 0.6, 3.0]),
    snapshot_interval=st.sampled_from([0.0, 0.2, 0.5, 2.0]),
    snapshot_log_ratio=st.sampled_from([0.0, 0.3, 1.0]),
    max_retry=st.integers(1, 4),
    failure_rate=st.sampled_from([0.0, 0.1, 0.4]),
    segment_bytes=st.sampled_from([4096, 64 << 20]),
    snapshots_kept=st.integers(1, 3),
    fsync=st.sampled_from(["always", "always", "interval"]),
)
workloads = st.builds(
    Workload,
    jobs=st.integers(1, 25),
    rate=st.sampled_from([0.0, 5.0, 40.0]),
    durations=st.sampled_from(["uniform", "exponential"]),
)
plans = st.one_of(
    st.builds(CrashPlan, st.just("lsn"), st.integers(0, 12_000), torn=st.sampled_from([0, 0, 7, 500])),
    st.builds(CrashPlan, st.just("record"), st.integers(0, 150)),
    st.builds(CrashPlan, st.just("point"), st.sampled_from(POINTS), st.integers(1, 3)),
    st.builds(CrashPlan, st.just("time"), st.floats(0, 4, allow_nan=False).map(lambda t: round(t, 3))),
    st.builds(CrashPlan, st.just("op"), st.integers(1, 400), model=st.sampled_from([None, *CRASH_MODELS])),
)


@given(
    config=configs,
    workload=workloads,
    seed=st.integers(0, 2**16),
    crash=st.lists(plans, max_size=3),
    model=st.sampled_from(CRASH_MODELS),
)
def test_no_crash_anywhere_breaks_an_invariant(
    config: Config, workload: Workload, seed: int, crash: list[CrashPlan], model: str
) -> None:
    sim = Simulation(config, workload, seed, crash=crash or None, model=model, sample_every=0)
    note(f"beaver sim --replay {sim.token()}")
    r = sim.run()
    assert r.ok, [str(v) for v in r.violations[:5]]
    s = r.summary
    lost = len(r.checker.lost_in_window)  # `interval` only: acknowledged in the window before a power loss
    assert s["completed"] + s["dead"] + lost == workload.jobs == len(r.jobs)
    # only a power loss (any of its models) under fsync: interval may lose that window's acknowledged jobs
    assert not lost or (config.fsync == "interval" and any(c["model"] in POWER_LOSSES for c in r.crashes))
    assert len(r.recoveries) <= len(r.crashes) <= len(crash)  # a crash may hit a recovery itself


@given(workload=workloads, seed=st.integers(0, 2**16), crash=st.lists(plans, max_size=2))
def test_a_run_and_its_replay_write_the_same_bytes(
    workload: Workload, seed: int, crash: list[CrashPlan]
) -> None:
    sim = Simulation(Config(data_dir="/sim", snapshot_interval=0.3), workload, seed, crash=crash or None)
    a = sim.run()
    b = Simulation.from_token(sim.token()).run()
    assert a.files == b.files
    assert a.summary["wal_sha256"] == b.summary["wal_sha256"]
