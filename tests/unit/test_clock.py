"""VirtualClock: events run by time, then by insertion order; cancel, peek, run(until), clear, and
the events count. The controller's determinism rests on these."""

from __future__ import annotations

import math
import random
from typing import Any

from beaver_sim.sim.clock import VirtualClock


def test_events_run_by_time_then_by_insertion_order() -> None:
    clock = VirtualClock()
    seen: list[tuple[float, str]] = []

    def note(name: str) -> None:
        seen.append((clock.now(), name))

    clock.call_at(2.0, note, "c")
    clock.call_at(1.0, note, "a")
    clock.call_at(2.0, note, "d")  # same time as c, inserted later: runs after it
    clock.call_later(1.0, note, "b")  # also t=1.0, after a
    clock.call_at(0.5, note, "first")
    assert clock.run() == 5
    assert seen == [(0.5, "first"), (1.0, "a"), (1.0, "b"), (2.0, "c"), (2.0, "d")]
    assert clock.now() == 2.0


def test_callbacks_scheduled_while_running_keep_the_order() -> None:
    clock = VirtualClock()
    seen: list[str] = []

    def parent() -> None:
        seen.append("parent")
        clock.call_later(0, seen.append, "child-now")  # same instant, after what is already queued
        clock.call_later(1.0, seen.append, "child-later")

    clock.call_at(1.0, parent)
    clock.call_at(1.0, seen.append, "sibling")
    clock.run()
    assert seen == ["parent", "sibling", "child-now", "child-later"]
    assert clock.now() == 2.0


def test_cancel_drops_an_event_and_peek_skips_it() -> None:
    clock = VirtualClock()
    seen: list[str] = []
    a = clock.call_at(1.0, seen.append, "a")
    clock.call_at(3.0, seen.append, "b")
    assert clock.peek() == 1.0
    clock.cancel(a)
    assert clock.peek() == 3.0
    assert clock.run() == 1
    assert seen == ["b"]
    assert clock.events == 1


def test_cancel_from_inside_a_callback() -> None:
    clock = VirtualClock()
    seen: list[str] = []
    later = clock.call_at(2.0, seen.append, "never")
    clock.call_at(1.0, lambda: clock.cancel(later))
    clock.run()
    assert seen == []
    assert clock.now() == 1.0


def test_peek_is_infinite_when_nothing_is_scheduled() -> None:
    clock = VirtualClock()
    assert clock.peek() == math.inf
    h = clock.call_later(5.0, lambda: None)
    clock.cancel(h)
    assert clock.peek() == math.inf
    assert clock.run() == 0


def test_run_until_stops_before_later_events_and_moves_time_to_until() -> None:
    clock = VirtualClock()
    seen: list[float] = []
    for t in (1.0, 2.0, 2.5, 4.0):
        clock.call_at(t, lambda: seen.append(clock.now()))
    assert clock.run(until=2.5) == 3  # an event exactly at `until` runs
    assert seen == [1.0, 2.0, 2.5]
    assert clock.now() == 2.5
    assert clock.run(until=3.0) == 0
    assert clock.now() == 3.0  # time advances to `until` even with no event there
    assert clock.peek() == 4.0
    assert clock.run(until=10.0) == 1
    assert clock.now() == 10.0
    assert seen == [1.0, 2.0, 2.5, 4.0]


def test_run_until_in_the_past_does_not_move_time_back() -> None:
    clock = VirtualClock(start=5.0)
    assert clock.run(until=1.0) == 0
    assert clock.now() == 5.0


def test_call_at_in_the_past_runs_now_after_what_is_already_due() -> None:
    clock = VirtualClock(start=10.0)
    seen: list[tuple[float, str]] = []
    clock.call_at(10.0, lambda: seen.append((clock.now(), "due")))
    clock.call_at(3.0, lambda: seen.append((clock.now(), "past")))
    clock.call_at(11.0, lambda: seen.append((clock.now(), "future")))
    clock.run()
    assert seen == [(10.0, "due"), (10.0, "past"), (11.0, "future")]


def test_start_time_and_call_later_are_relative_to_now() -> None:
    clock = VirtualClock(start=100.0)
    assert clock.now() == 100.0
    clock.call_later(2.5, lambda: None)
    assert clock.peek() == 102.5


def test_events_counts_callbacks_run_across_runs() -> None:
    clock = VirtualClock()
    for t in range(10):
        clock.call_at(float(t), lambda: None)
    cancelled = clock.call_at(3.5, lambda: None)
    clock.cancel(cancelled)
    assert clock.run(until=4.0) == 5
    assert clock.run() == 5
    assert clock.events == 10  # the cancelled one is not counted


def test_clear_drops_every_scheduled_event() -> None:
    clock = VirtualClock()
    seen: list[int] = []
    for t in range(5):
        clock.call_at(float(t + 1), seen.append, t)
    clock.run(until=2.0)
    clock.clear()
    assert clock.peek() == math.inf
    assert clock.run() == 0
    assert seen == [0, 1]
    assert clock.now() == 2.0


def test_arguments_are_passed_to_the_callback() -> None:
    clock = VirtualClock()
    got: list[tuple[str, int, bool]] = []
    clock.call_later(1.0, lambda *a: got.append(a), "job", 3, True)
    clock.run()
    assert got == [("job", 3, True)]


def test_cancelled_timeouts_do_not_pile_up_in_the_heap() -> None:
    """The controller's pattern: every attempt arms a long timeout and cancels it when the attempt
    ends first. The heap is rebuilt once cancelled entries are most of it, in the same order."""
    clock = VirtualClock()
    seen: list[int] = []
    pending: list = []

    def attempt(i: int) -> None:
        seen.append(i)
        if pending:
            clock.cancel(pending.pop())
        clock.cancel(clock.call_later(0.5, seen.append, -1))  # cancelled twice: counted once
        if i < 10_000:
            pending.append(clock.call_later(3.0, seen.append, -i))  # the timeout, cancelled next turn
            clock.call_later(0.1, attempt, i + 1)
        assert len(clock._heap) <= 2 * 64 + 4

    clock.call_at(0.0, attempt, 0)
    clock.run()
    assert seen == list(range(10_001))  # no cancelled timeout ever ran
    assert math.isclose(clock.now(), 1000.0)


def test_cancel_after_run_or_clear_is_harmless() -> None:
    clock = VirtualClock()
    seen: list[str] = []
    ran = clock.call_at(1.0, seen.append, "a")
    clock.run()
    clock.cancel(ran)
    dropped = clock.call_at(5.0, seen.append, "never")
    clock.clear()
    clock.cancel(dropped)
    clock.call_at(6.0, seen.append, "b")
    assert clock.run() == 1 and seen == ["a", "b"]


def _random_run(seed: int) -> list[tuple[float, int]]:
    """A seeded run of callbacks that schedule more (delays, times already past, ties at now) and
    cancel some: the (due time, sequence) of each callback, in the order they ran."""
    rng = random.Random(seed)
    clock = VirtualClock()
    made: dict[int, tuple[float, int]] = {}  # name -> (due, sequence) as scheduled
    ran: list[int] = []
    handles: list[list[Any]] = []

    def schedule(now: float) -> None:
        name = len(made)
        if rng.random() < 0.4:
            delay = rng.choice([0.0, 0.0, -1.0, 0.25, 1.0])
            handle = clock.call_later(delay, step, name)
            due = now + delay if delay > 0 else now
        else:
            when = now + rng.choice([-0.5, 0.0, 0.0, 0.25, 0.5, 1.0])
            handle = clock.call_at(when, step, name)
            due = max(when, now)
        made[name] = (due, handle[1])
        handles.append(handle)

    def step(name: int) -> None:
        ran.append(name)
        if len(made) < 400:
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                schedule(clock.now())
        if rng.random() < 0.2:
            clock.cancel(handles[rng.randrange(len(handles))])

    for _ in range(3):
        schedule(0.0)
    clock.run()
    assert clock.peek() == math.inf and len(set(ran)) == len(ran)
    return [made[n] for n in ran]


def test_callbacks_due_now_run_in_the_order_a_single_heap_would_run_them() -> None:
    """Entries due now wait in a FIFO of their own, not in the heap; the order must still be
    time, then sequence, whatever mix of delays, past times, ties and cancels a run makes."""
    ran = 0
    for seed in range(30):
        order = _random_run(seed)
        assert order == sorted(order), seed
        ran += len(order)
    assert ran > 3000  # (the runs are not all short)
