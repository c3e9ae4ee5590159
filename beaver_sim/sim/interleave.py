"""Every interleaving of a few threads' steps, explored: a small model checker for checkpoint 1.

The seed ran four goroutines over one queue and one WAL under one mutex, and its `dispatchLoop`
appended its record *outside* the lock. Whether that loses a job depends on how the threads
interleave, so a test that runs real threads a few times proves little. Here each thread is a list
of atomic steps: a critical section (lock ... unlock) is one step, since no other thread's critical
section can run inside it, and an access outside the lock is a step of its own. `explore` runs
every order of the threads' steps (depth first, as DSLabs' search and TLA+'s TLC do, with visited
states merged) and checks each end state with recovery's rule: the last snapshot plus the log after
it must rebuild the state the process had. Small, exhaustive and deterministic: nbval can compare
its output, and the shortest failing schedule is a counterexample a learner can read step by step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

Log = tuple[tuple[str, str], ...]  # (record type, job id)


@dataclass(frozen=True)
class World:
    """The shared memory: the queue's three lists, the log, the last snapshot and what each thread
    holds in its local variables (`held`: thread name -> the job it popped, if any)."""

    pending: tuple[str, ...] = ()
    in_flight: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()
    log: Log = ()
    snapshot: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None  # the 3 lists
    snapshot_seq: int = 0
    held: tuple[tuple[str, str], ...] = ()

    def states(self) -> dict[str, str]:
        """job -> state, as a snapshot would write it (a popped job in limbo is in no list)."""
        out = {j: "pending" for j in self.pending}
        out.update({j: "in_flight" for j in self.in_flight})
        out.update({j: "completed" for j in self.completed})
        return out

    def holding(self, thread: str) -> str | None:
        return dict(self.held).get(thread)

    def hold(self, thread: str, job: str | None) -> World:
        rest = tuple((t, j) for t, j in self.held if t != thread)
        return replace(self, held=rest + (((thread, job),) if job else ()))


Step = tuple[str, Callable[[World, str], World]]  # (label, world x thread -> world)


def recover(world: World) -> tuple[World, str | None]:
    """Snapshot plus the log after it, with the checks replay makes (an enqueue's job is new, a
    dispatch takes the head of the FIFO, an ack finds its job in flight); returns the rebuilt
    world and the first refusal, if any."""
    pending, in_flight, completed = world.snapshot or ((), (), ())
    rebuilt = World(pending=pending, in_flight=in_flight, completed=completed)
    for seq, (kind, job) in enumerate(world.log[world.snapshot_seq :], start=world.snapshot_seq + 1):
        where = rebuilt.states().get(job, "absent")
        if kind == "enqueue" and where == "absent":
            rebuilt = replace(rebuilt, pending=(*rebuilt.pending, job))
        elif kind == "dispatch" and rebuilt.pending[:1] == (job,):
            rebuilt = replace(rebuilt, pending=rebuilt.pending[1:], in_flight=(*rebuilt.in_flight, job))
        elif kind == "ack" and where == "in_flight":
            flying = tuple(j for j in rebuilt.in_flight if j != job)
            rebuilt = replace(rebuilt, in_flight=flying, completed=(*rebuilt.completed, job))
        else:
            head = f", the head is {rebuilt.pending[0]}" if kind == "dispatch" and rebuilt.pending else ""
            return rebuilt, f"record {seq} ({kind} {job}) finds the job {where}{head}"
    return rebuilt, None


def check(world: World) -> str | None:
    """None if recovery would rebuild the live state, else what goes wrong."""
    rebuilt, refusal = recover(world)
    if refusal:
        return "replay refuses: " + refusal
    live, states = world.states(), rebuilt.states()
    lost = sorted(j for j in live if j not in states)
    if lost:
        return f"job {', '.join(lost)} lost: in the live state, not in snapshot + log"
    differ = sorted(j for j in live if states[j] != live[j])
    if differ:
        return ", ".join(f"job {j} recovers {states[j]}, was {live[j]}" for j in differ)
    return None


@dataclass
class Exploration:
    """What `explore` found: every schedule run to its end and checked."""

    schedules: int = 0
    states: int = 0  # distinct (program counters, world) pairs reached
    violations: int = 0  # schedules whose end state recovery would not rebuild
    first: list[tuple[str, str]] = field(default_factory=list)  # the failing schedule with fewest switches
    problem: str | None = None


def switches(schedule: list[tuple[str, str]]) -> int:
    """How often the schedule passes from one thread to another: fewer is easier to read."""
    return sum(a[0] != b[0] for a, b in itertools.pairwise(schedule))


def explore(threads: dict[str, list[Step]], world: World) -> Exploration:
    """Run every interleaving of `threads` from `world` (threads in name order, so the search and
    its counterexample are the same on every run); check each end state with `check`."""
    names = sorted(threads)
    result = Exploration()
    seen: set[tuple[tuple[int, ...], World]] = set()

    def visit(pcs: tuple[int, ...], world: World, path: list[tuple[str, str]]) -> None:
        seen.add((pcs, world))
        runnable = [i for i, name in enumerate(names) if pcs[i] < len(threads[name])]
        if not runnable:
            result.schedules += 1
            problem = check(world)
            if problem:
                result.violations += 1
                if not result.first or switches(path) < switches(result.first):
                    result.first, result.problem = list(path), problem
            return
        for i in runnable:
            label, run = threads[names[i]][pcs[i]]
            nxt = (*pcs[:i], pcs[i] + 1, *pcs[i + 1 :])
            visit(nxt, run(world, names[i]), [*path, (names[i], label)])

    visit(tuple(0 for _ in names), world, [])
    result.states = len(seen)
    return result


# -- the seed's loops, as steps ------------------------------------------------------------------


def _pop(world: World, me: str) -> World:
    if not world.pending:
        return world
    return replace(world.hold(me, world.pending[0]), pending=world.pending[1:])


def _append_dispatch(world: World, me: str) -> World:
    job = world.holding(me)
    return replace(world, log=(*world.log, ("dispatch", job))) if job else world


def _mark_in_flight(world: World, me: str) -> World:
    job = world.holding(me)
    if not job:
        return world
    return replace(world.hold(me, None), in_flight=(*world.in_flight, job))


def _locked_dispatch(world: World, me: str) -> World:
    return _mark_in_flight(_append_dispatch(_pop(world, me), me), me)


def _snapshot(world: World, me: str) -> World:
    return replace(
        world, snapshot=(world.pending, world.in_flight, world.completed), snapshot_seq=len(world.log)
    )


def _enqueue(job: str) -> Callable[[World, str], World]:
    def run(world: World, me: str) -> World:
        return replace(world, log=(*world.log, ("enqueue", job)), pending=(*world.pending, job))

    return run


SEED_DISPATCH: list[Step] = [
    ("lock; pop the head; unlock", _pop),
    ("append DISPATCH (no lock)", _append_dispatch),
    ("lock; mark in flight; unlock", _mark_in_flight),
]
LOCKED_DISPATCH: list[Step] = [("lock; pop, append DISPATCH, mark in flight; unlock", _locked_dispatch)]
SNAPSHOT: list[Step] = [("lock; snapshot the state, note the log's length; unlock", _snapshot)]


def enqueuer(job: str) -> list[Step]:
    return [(f"lock; append ENQUEUE {job}, add it; unlock", _enqueue(job))]


def start(jobs: list[str]) -> World:
    """A world whose log already holds these jobs' enqueues, all pending."""
    return World(pending=tuple(jobs), log=tuple(("enqueue", j) for j in jobs))
