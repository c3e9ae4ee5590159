"""A crash while recovering from a crash: while truncating a torn tail, while writing the REQUEUE
records `start` appends, during the first checkpoint after recovery; then a second recovery and a
run to the end, with every invariant checked. Two crash plans in one run: the i-th is armed in the
i-th life, and its `op` / `point` counts start again with that life."""

from __future__ import annotations

from dataclasses import replace

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.types import BeaverError
from beaver_sim.sim.faults import POINTS, CrashPlan
from beaver_sim.sim.fs import CRASH_MODELS, METADATA_FIRST, TORN_BLOCKS
from beaver_sim.sim.sweep import (
    base_run,
    enumerate_points,
    lifecycle,
    recovery_points,
    recovery_sweep,
    with_torn,
)

SIM = lifecycle(16)


def firsts(model: str) -> list[CrashPlan]:
    """Five first crashes in the middle of a record, spread over the run (jobs in flight at each)."""
    torn = [p for p in enumerate_points(base_run(SIM), "records") if p.kind == "lsn"][10::12]
    return with_torn(torn, "random", 9) if model == "power-loss" else torn


@pytest.mark.parametrize("model", CRASH_MODELS)
def test_a_crash_anywhere_in_recovery_then_a_second_recovery_keeps_every_invariant(model: str) -> None:
    df = recovery_sweep(replace(SIM, model=model), firsts(model))
    assert (df["outcome"] == "ok").all(), df[df["outcome"] != "ok"][["first", "second", "detail"]].head()
    assert (df["lives"] == 3).all()  # every second crash was reached, and a third life ran to the end
    assert set(df["phase"]) == {"recovery", "first-write", "checkpoint"}
    inside = df[df["phase"] == "recovery"]
    assert len(inside) >= 5 and not inside["requeued"].any()  # before the storage opened
    assert set(df[df["phase"] == "checkpoint"]["second"]) >= {f"point {p}#1" for p in POINTS[:5]}
    if model == METADATA_FIRST:  # no unsynced byte survives: no torn tail to cut
        assert (df["truncated"].map(sum) == 0).all()
        return
    # a crash before the first recovery cut its torn tail: the second recovery cuts it again
    again = inside[inside["truncated"].map(lambda t: len(t) == 1 and t[0] > 0)]
    assert len(again) >= (3 if model == TORN_BLOCKS else 5)  # unsynced bytes within one block: no hole


def test_the_first_write_after_recovery_holds_the_requeue_records() -> None:
    first = firsts("process")[1]
    r = replace(SIM, crash=first).run()
    requeued = [rec for rec, *_ in r.records(1) if rec["type"] == R.REQUEUE]
    assert requeued and r.ok
    points = {p.describe(): phase for phase, p in recovery_points(SIM, first)}
    kinds = {p.split()[0] for p, phase in points.items() if phase == "first-write"}
    assert kinds == {"op", "lsn"}
    assert next(iter(points.values())) == "recovery"


def test_op_plans_parse_and_name_the_call() -> None:
    plan = CrashPlan.parse("op:3")
    assert (plan.kind, plan.at, plan.describe()) == ("op", 3, "op 3")
    assert CrashPlan.from_list(CrashPlan("time", 1.0, model="power-loss").as_list()).model == "power-loss"
    assert CrashPlan("time", 1.0).as_list() == ["time", 1.0, 1, 0]  # tokens of old plans unchanged
    with pytest.raises(BeaverError, match="number of the call"):
        CrashPlan("op", 0)
    with pytest.raises(BeaverError, match="crash model must be"):
        CrashPlan("time", 1.0, model="meteor")
