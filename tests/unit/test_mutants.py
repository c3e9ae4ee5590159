"""Every durability mutant is caught by a crash sweep, and the same sweep over the correct design finds
nothing: the checker sees what it claims to, and each lesson has its counterexample."""

from __future__ import annotations

import re

import pytest

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim import mutants
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.fs import CRASH_MODELS, METADATA_FIRST, POWER_LOSS, POWER_LOSSES, TORN_BLOCKS
from beaver_sim.sim.sweep import crash_sweep, failing, violations
from beaver_sim.sim.workload import Workload

JOBS = 30
SEEDS = (11, 12, 13)
EXPECTED = {  # the invariant that catches each mutant on every seed, and how it says so
    "append-outside-lock": (6, "recovery refused to start: .*not at the head of the queue"),
    "no-fsync": (1, "acknowledged, but missing after recovery"),
    "interval-without-sync": (1, "acknowledged, but missing after recovery"),
    "no-dir-fsync": (1, "missing after recovery"),
    "snapshot-in-place": (6, "records 1..\\d+ are missing"),
    "rename-before-fsync": (6, "records 1..\\d+ are missing"),
    "no-checksum": (1, "payload changed: \\{'type': 'compute', 'value': \\d+\\} != "),
    "replay-whole-log": (6, "recovery refused to start: .*record seq \\d+ is not after the state's last seq"),
    "replay-without-completed-check": (3, "its ACK was durable, but after recovery it is pending"),
    "timeouts-without-retry-limit": (4, "max_retry is 3"),
    "seq-reset-on-rotation": (5, "seq 1 where \\d+ was expected"),
    "payload-less-enqueue": (1, "payload changed: \\{\\}"),
}


def sweep(name: str | None, catch: dict, seed: int) -> object:
    config = Config(data_dir="/sim", **catch.get("config", {}))
    sim = Simulation(config, Workload(JOBS), seed, model=catch["model"], mutant=name)
    return crash_sweep(sim, catch["points"], executor="serial", progress=False)


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_a_sweep_catches_the_mutant_by_its_invariant_on_every_seed(name: str) -> None:
    """On three seeds, the mutant's sweep breaks the invariant EXPECTED names (with its words),
    the same sweep over the correct design breaks none, and the violation's token replays it."""
    invariant, pattern = EXPECTED[name]
    catch = mutants.MUTANTS[name].catch
    for seed in SEEDS:
        found = violations(sweep(name, catch, seed))
        hits = [v for v in found if v["invariant"] == invariant and re.search(pattern, v["detail"])]
        assert hits, (name, seed, found[:3])
        correct = sweep(None, catch, seed)
        assert not failing(correct) and (correct["outcome"] == "ok").all(), violations(correct)[:3]
    replay = Simulation.from_token(hits[0]["token"]).run()
    assert any(v.invariant == invariant for v in replay.violations)  # the token reproduces it


# Which crash models catch each durability mutant (its sweep, seed 11): the strict power-loss model
# alone misses rename-before-fsync, which a file system that commits names before data (ext4, xfs,
# btrfs) exposes; a design that never syncs a directory survives there, and nowhere else.
CAUGHT_BY = {
    "no-fsync": {POWER_LOSS, METADATA_FIRST, TORN_BLOCKS},
    "interval-without-sync": {POWER_LOSS, METADATA_FIRST, TORN_BLOCKS},
    "no-dir-fsync": {POWER_LOSS, TORN_BLOCKS},
    "snapshot-in-place": {POWER_LOSS, METADATA_FIRST, TORN_BLOCKS},
    "rename-before-fsync": {METADATA_FIRST},
}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_each_crash_model_catches_the_durability_mutants_it_should(name: str) -> None:
    catch = mutants.MUTANTS[name].catch
    caught = {m for m in POWER_LOSSES if failing(sweep(name, {**catch, "model": m}, SEEDS[0]))}
    assert caught == CAUGHT_BY[name]
    assert not failing(sweep(name, {**catch, "model": "process"}, SEEDS[0]))  # the page cache survives


def test_the_checksum_refuses_the_bit_flip_that_the_reader_without_one_replays() -> None:
    """What checksums buy: on the same rotting disk (one flipped bit in a synced ENQUEUE, the line
    still parses), the log without CRCs replays an altered job (invariant 1, its payload changed);
    the real log refuses to start at every point, naming the record, and never replays it."""
    rot = mutants.Mutant("bit-rot-only", 2, fs_cls=mutants.BitRotFS)
    healthy = mutants.Mutant("no-checksum-healthy-disk", 2, wal_cls=mutants.NoChecksumWAL)
    mutants.MUTANTS.update({rot.name: rot, healthy.name: healthy})
    catch = {"model": "process", "points": "records"}
    try:
        found = violations(sweep(rot.name, catch, SEEDS[0]))
        # crashes alone: a torn line fails its length field, so without the rot no job is lost or
        # altered; the only complaint is that its log is not in the format `wal verify` reads
        alone = violations(sweep(healthy.name, catch, SEEDS[0]))
        assert {v["invariant"] for v in alone} == {5}
    finally:
        del mutants.MUTANTS[rot.name], mutants.MUTANTS[healthy.name]
    assert found and all(v["invariant"] == 6 and "checksum mismatch" in v["detail"] for v in found)
    assert not any("payload changed" in v["detail"] for v in found)


def test_no_fsync_loses_acknowledged_jobs_before_any_refusal() -> None:
    """The lesson of no-fsync is the loss itself: recovery starts, and acknowledged jobs are gone."""
    df = sweep("no-fsync", mutants.MUTANTS["no-fsync"].catch, SEEDS[0])
    lost = df[(df["outcome"] == "violation") & (df["jobs_lost"] > 0)]
    assert len(lost) > 0 and lost["invariants"].str.contains("1").all()
    refused = df[df["outcome"] == "refused"]["point"]
    assert refused.empty or int(lost["point"].min()) < int(refused.min())


def test_each_mutant_says_which_checkpoint_it_illustrates() -> None:
    assert set(EXPECTED) == set(mutants.MUTANTS)
    for name, m in mutants.MUTANTS.items():
        assert f"Checkpoint {m.checkpoint}" in m.doc and 1 <= m.checkpoint <= 6, name
    assert {m.checkpoint for m in mutants.MUTANTS.values()} == {1, 2, 3, 4, 5, 6}
    assert mutants.get(None) is None and mutants.get("none") is None
    with pytest.raises(BeaverError, match="known: append-outside-lock, no-fsync"):
        mutants.get("no-such-mutant")


def test_a_mutant_fs_stays_broken_after_a_crash() -> None:
    fs = mutants.NoFsyncFS()
    fs.makedirs("/d")
    fs.create("/d/f").write(b"x")
    assert isinstance(fs.after_crash("process"), mutants.NoFsyncFS)


OPERATOR_EXPECTED = {  # the operator's transitions' classic bugs, caught on every seed
    "requeue-keeps-attempts": (4, "requeued after 3 attempts, then dead after 1 more"),
    "delay-lost-on-restart": (11, "attempt 1 started at [\\d.]+, due at [\\d.]+"),
}


@pytest.mark.parametrize("name", sorted(mutants.OPERATOR_MUTANTS))
def test_a_sweep_with_delays_cancels_and_requeues_catches_the_operator_mutant(name: str) -> None:
    """Their sweeps run a workload that delays, cancels and requeues jobs (`catch["workload"]`);
    the correct design passes the same sweep, under every crash model."""
    invariant, pattern = OPERATOR_EXPECTED[name]
    catch = mutants.OPERATOR_MUTANTS[name].catch
    assert mutants.get(name) is mutants.OPERATOR_MUTANTS[name] and name not in mutants.MUTANTS
    for seed in SEEDS:
        config = Config(data_dir="/sim", **catch.get("config", {}))
        workload = Workload(JOBS, **catch["workload"])
        sim = Simulation(config, workload, seed, model=catch["model"], mutant=name)
        found = violations(crash_sweep(sim, catch["points"], executor="serial", progress=False))
        assert any(v["invariant"] == invariant and re.search(pattern, v["detail"]) for v in found), found[:3]
    both = Workload(JOBS, delayed=2, cancel=2, requeue_at=2.0)
    for model in CRASH_MODELS:
        sim = Simulation(Config(data_dir="/sim", failure_rate=0.5), both, SEEDS[0], model=model)
        correct = crash_sweep(sim, "records", executor="serial", progress=False)
        assert not failing(correct) and (correct["outcome"] == "ok").all(), violations(correct)[:3]


def test_the_checker_sees_a_cancelled_job_that_runs_and_a_delayed_job_that_starts_early() -> None:
    """Invariants 10 and 11 on attempts the workers report (a checker that cannot fail is no check)."""
    from beaver_sim.sim.checker import Checker
    from beaver_sim.sim.workers import Attempt

    checker = Checker(3, "token")
    checker.submit([("d", {}, {"delay": 2.0}), ("c", {}, {"delay": 5.0})], at=1.0)
    checker.cancelled("c", 1.5)
    checker.ran([Attempt("d", 1, 0, 3.0, 0.1, True)])
    assert checker.ok  # d when due
    checker.ran([Attempt("d", 2, 0, 2.5, 0.1, True), Attempt("c", 2, 0, 7.0, 0.1, True)])
    assert [(v.invariant, v.job) for v in checker.violations] == [(11, "d"), (10, "c")]
