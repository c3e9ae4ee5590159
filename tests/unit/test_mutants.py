"""Every durability mutant is caught by a crash sweep, and the same sweep over the correct design finds
nothing: the checker sees what it claims to, and each lesson has its counterexample."""

from __future__ import annotations

import re

import pytest

from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim import mutants
from beaver_sim.sim.experiment import Simulation, Workload
from beaver_sim.sim.sweep import crash_sweep, failing, violations

JOBS = 30


def sweep(name: str | None, catch: dict) -> object:
    config = Config(data_dir="/sim", **catch.get("config", {}))
    sim = Simulation(config, Workload(JOBS), 11, model=catch["model"], mutant=name)
    return crash_sweep(sim, catch["points"], executor="serial", progress=False)


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_a_sweep_catches_the_mutant_and_passes_the_correct_design(name: str) -> None:
    catch = mutants.MUTANTS[name].catch
    broken, correct = sweep(name, catch), sweep(None, catch)
    assert failing(broken), f"{name}: the sweep found nothing"
    assert not failing(correct), violations(correct)[:3]
    assert (correct["outcome"] == "ok").all()


EXPECTED = {  # the invariant each mutant is caught by first, and how
    "no-fsync": (6, "recovery refused"),
    "no-dir-fsync": (1, "missing after recovery"),
    "snapshot-in-place": (6, "records 1..\\d+ are missing"),
    "no-checksum": (5, "checksum mismatch"),
    "replay-without-completed-check": (3, "its ACK was durable, but after recovery it is pending"),
    "timeouts-without-retry-limit": (4, "attempts; max_retry is 3"),
    "seq-reset-on-rotation": (5, "seq 1 where \\d+ was expected"),
    "payload-less-enqueue": (1, "payload changed: \\{\\}"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_violation_names_the_lesson(name: str) -> None:
    invariant, pattern = EXPECTED[name]
    found = violations(sweep(name, mutants.MUTANTS[name].catch))
    assert any(v["invariant"] == invariant and re.search(pattern, v["detail"]) for v in found), found[:3]
    replay = Simulation.from_token(next(v["token"] for v in found if v["invariant"] == invariant)).run()
    assert not replay.ok  # the token reproduces it


def test_each_mutant_says_which_checkpoint_it_illustrates() -> None:
    assert set(EXPECTED) == set(mutants.MUTANTS)
    for name, m in mutants.MUTANTS.items():
        assert f"Checkpoint {m.checkpoint}" in m.doc and 2 <= m.checkpoint <= 6, name
    assert {m.checkpoint for m in mutants.MUTANTS.values()} == {2, 3, 4, 5, 6}
    assert mutants.get(None) is None and mutants.get("none") is None
    with pytest.raises(BeaverError, match="known: no-fsync"):
        mutants.get("no-such-mutant")


def test_a_mutant_fs_stays_broken_after_a_crash() -> None:
    fs = mutants.NoFsyncFS()
    fs.makedirs("/d")
    fs.create("/d/f").write(b"x")
    assert isinstance(fs.after_crash("process"), mutants.NoFsyncFS)
