"""sim.interleave: the exhaustive search finds the seed's races and none once the lock is held."""

from __future__ import annotations

from beaver_sim.sim.interleave import (
    LOCKED_DISPATCH,
    SEED_DISPATCH,
    SNAPSHOT,
    World,
    check,
    enqueuer,
    explore,
    recover,
    start,
)


def test_every_schedule_is_run_once() -> None:
    # 3 + 1 steps interleave in C(4, 1) = 4 ways; 3 + 3 in C(6, 3) = 20
    assert explore({"d": SEED_DISPATCH, "s": SNAPSHOT}, start(["a"])).schedules == 4
    assert explore({"d1": SEED_DISPATCH, "d2": SEED_DISPATCH}, start(["a", "b"])).schedules == 20


def test_snapshot_between_pop_and_mark_loses_the_job() -> None:
    found = explore({"dispatch": SEED_DISPATCH, "snapshot": SNAPSHOT}, start(["a", "b"]))
    assert found.violations == 2
    assert [thread for thread, _ in found.first] == ["dispatch", "dispatch", "snapshot", "dispatch"]
    assert found.problem == "job a lost: in the live state, not in snapshot + log"


def test_two_dispatchers_log_out_of_order_and_replay_refuses() -> None:
    found = explore({"d1": SEED_DISPATCH, "d2": SEED_DISPATCH}, start(["a", "b"]))
    assert found.violations > 0 and found.problem is not None
    assert found.problem.startswith("replay refuses") and "the head is a" in found.problem


def test_append_inside_the_lock_passes_every_schedule() -> None:
    threads = {"d1": LOCKED_DISPATCH, "d2": LOCKED_DISPATCH, "s": SNAPSHOT, "e": enqueuer("c")}
    found = explore(threads, start(["a", "b"]))
    assert found.schedules == 24 and found.violations == 0 and found.first == []


def test_recover_replays_after_the_snapshot_only() -> None:
    world = World(
        pending=("b",),
        in_flight=("a",),
        log=(("enqueue", "a"), ("enqueue", "b"), ("dispatch", "a")),
        snapshot=(("a", "b"), (), ()),
        snapshot_seq=2,
    )
    rebuilt, refusal = recover(world)
    assert refusal is None and rebuilt.states() == world.states()
    assert check(world) is None
    assert check(World(pending=("a",))) == "job a lost: in the live state, not in snapshot + log"
