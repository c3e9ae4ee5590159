"""JobQueue against a plain-dict model (zarr's stateful testing style): every rule runs on both,
illegal actions must raise IllegalTransition and change nothing, invariants compare the two. The
model keeps plain lists (the FIFO, the dead in death order, the retention window) where the queue
keeps tombstones and stale places: the two must always read the same."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from beaver_sim.core import codec
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import IllegalTransition, JobStatus, Lease

PENDING, IN_FLIGHT, COMPLETED, DEAD = "pending", "in_flight", "completed", "dead"
DELAYED, CANCELLED = "delayed", "cancelled"
OPERATOR_FROM = {"release": (DELAYED,), "cancel": (PENDING, DELAYED), "revive": (DEAD,)}
OPERATOR_NAME = {"release": "release", "cancel": "cancel", "revive": "requeue"}
times = st.floats(0, 4e9, allow_nan=False)
ACTIONS = ("dispatch", "complete", "requeue", "kill", "enqueue")
LEGAL_FROM = {"dispatch": PENDING, "complete": IN_FLIGHT, "requeue": IN_FLIGHT, "kill": IN_FLIGHT}
ACTION_NAME = {"dispatch": "dispatch", "complete": "complete", "requeue": "requeue", "kill": "mark dead"}

payloads = st.dictionaries(
    st.sampled_from(["a", "b", "type", "n"]),
    st.one_of(st.integers(-5, 5), st.text(max_size=4), st.none(), st.lists(st.booleans(), max_size=2)),
    max_size=3,
)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.q = JobQueue()
        # the model: job -> [status, attempt, payload]; the FIFO; job -> (attempt, worker, deadline)
        self.jobs: dict[str, list[Any]] = {}
        self.fifo: list[str] = []
        self.leases: dict[str, tuple[int, int, float]] = {}
        self.not_before: dict[str, float] = {}
        self.base: dict[str, int] = {}
        self.dead: list[str] = []  # oldest death first; a snapshot reorders them as the jobs are
        self.retention = 0
        self.window: list[str] = []  # with retention: the ended jobs kept, oldest end first
        self.dropped: list[str] = []  # ids the window dropped, free to be enqueued again
        self.drops = 0
        self.next_id = 0

    def _ends(self, job_id: str) -> None:
        """A job ended: with retention, into the window, and the oldest one beyond it forgotten."""
        if not self.retention:
            return
        self.window.append(job_id)
        if len(self.window) > self.retention:
            old = self.window.pop(0)
            if self.jobs.pop(old)[0] == DEAD:
                self.dead.remove(old)
            self.base.pop(old, None)
            self.dropped.append(old)
            self.drops += 1

    def ids(self, status: str) -> list[str]:
        return sorted(j for j, (s, _, _) in self.jobs.items() if s == status)

    # -- legal rules ----------------------------------------------------------------------------

    @rule(payload=payloads)
    def enqueue(self, payload: dict[str, Any]) -> None:
        job_id = f"job-{self.next_id:03d}"
        self.next_id += 1
        note(f"enqueue {job_id}")
        self.q.enqueue(job_id, payload)
        self.jobs[job_id] = [PENDING, 0, payload]
        self.fifo.append(job_id)

    @rule(payload=payloads, at=times)
    def enqueue_delayed(self, payload: dict[str, Any], at: float) -> None:
        job_id = f"job-{self.next_id:03d}"
        self.next_id += 1
        note(f"enqueue {job_id} not before {at}")
        self.q.enqueue(job_id, payload, at)
        self.jobs[job_id] = [DELAYED, 0, payload]
        self.not_before[job_id] = at

    def _pick(self, data: st.DataObject, *states: str) -> str | None:
        ids = sorted(j for j, (s, _, _) in self.jobs.items() if s in states)
        return data.draw(st.sampled_from(ids), label="job") if ids else None

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if (job_id := self._pick(data, DELAYED)) is not None:
            self.q.release(job_id)
            del self.not_before[job_id]
            self.jobs[job_id][0] = PENDING
            self.fifo.append(job_id)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if (job_id := self._pick(data, PENDING, DELAYED)) is not None:
            note(f"cancel {job_id}")
            self.q.cancel(job_id)
            if self.jobs[job_id][0] == PENDING:
                self.fifo.remove(job_id)
            self.not_before.pop(job_id, None)
            self.jobs[job_id][0] = CANCELLED
            self._ends(job_id)

    @rule(data=st.data())
    def revive(self, data: st.DataObject) -> None:
        if (job_id := self._pick(data, DEAD)) is not None:
            note(f"revive {job_id}")
            self.q.revive(job_id)
            self.dead.remove(job_id)
            if self.retention:
                self.window.remove(job_id)
            self.base[job_id] = self.jobs[job_id][1]
            self.jobs[job_id][0] = PENDING
            self.fifo.append(job_id)
            assert self.q.budget_used(job_id, self.jobs[job_id][1] + 1) == 1

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), at=times)
    def retry_after_backoff(self, data: st.DataObject, at: float) -> None:
        job_id = data.draw(st.sampled_from(self.ids(IN_FLIGHT)), label="job")
        self.q.delay(job_id, self.jobs[job_id][1], at)
        del self.leases[job_id]
        self.jobs[job_id][0] = DELAYED
        self.not_before[job_id] = at

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(sorted(OPERATOR_FROM)))
    def operator_action_from_the_wrong_state(self, data: st.DataObject, action: str) -> None:
        job_id = self._pick(
            data, *({PENDING, IN_FLIGHT, COMPLETED, DEAD, DELAYED, CANCELLED} - set(OPERATOR_FROM[action]))
        )
        if job_id is not None:
            call = lambda: getattr(self.q, action)(job_id)  # noqa: E731
            self._refused(call, job_id, OPERATOR_NAME[action], self.jobs[job_id][0])

    @precondition(lambda self: self.fifo)
    @rule(worker=st.integers(0, 7), deadline=st.floats(0, 1e6, allow_nan=False))
    def dispatch_head(self, worker: int, deadline: float) -> None:
        job_id = self.fifo.pop(0)
        attempt = self.jobs[job_id][1] + 1
        note(f"dispatch {job_id} attempt {attempt}")
        self.q.dispatch(job_id, Lease(attempt, worker, deadline))
        self.jobs[job_id][:2] = [IN_FLIGHT, attempt]
        self.leases[job_id] = (attempt, worker, deadline)

    def _end(self, data: st.DataObject, method: str, to: str) -> None:
        job_id = data.draw(st.sampled_from(self.ids(IN_FLIGHT)), label="job")
        attempt = self.jobs[job_id][1]
        note(f"{method} {job_id} attempt {attempt}")
        getattr(self.q, method)(job_id, attempt)
        self.jobs[job_id][0] = to
        del self.leases[job_id]
        if to == PENDING:
            self.fifo.append(job_id)
        if to == DEAD:
            self.dead.append(job_id)
        if to in (COMPLETED, DEAD):
            self._ends(job_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self._end(data, "complete", COMPLETED)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        self._end(data, "requeue", PENDING)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        self._end(data, "kill", DEAD)

    # -- illegal rules ----------------------------------------------------------------------------

    def _refused(self, call: Any, job_id: str, action: str, state: str) -> None:
        before = codec.to_columns(self.q)
        try:
            call()
        except IllegalTransition as e:
            msg = str(e)
            assert f"job {job_id!r}" in msg and f"cannot {action}" in msg and f"state={state}" in msg, msg
        else:
            raise AssertionError(f"{action} of {job_id} in state {state} was allowed")
        assert codec.to_columns(self.q) == before

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(sorted(LEGAL_FROM)))
    def action_from_the_wrong_state(self, data: st.DataObject, action: str) -> None:
        wrong = sorted(j for j, (s, _, _) in self.jobs.items() if s != LEGAL_FROM[action])
        if not wrong:
            return
        job_id = data.draw(st.sampled_from(wrong), label="job")
        status, attempt, _ = self.jobs[job_id]
        note(f"illegal {action} {job_id} in {status}")
        if action == "dispatch":
            call = lambda: self.q.dispatch(job_id, Lease(attempt + 1, 0, 0.0))  # noqa: E731
        else:
            call = lambda: getattr(self.q, action)(job_id, attempt)  # noqa: E731
        self._refused(call, job_id, ACTION_NAME[action], status)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def duplicate_enqueue(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)), label="job")
        self._refused(lambda: self.q.enqueue(job_id, {}), job_id, "enqueue", self.jobs[job_id][0])

    @rule(action=st.sampled_from(sorted(LEGAL_FROM)))
    def unknown_job(self, action: str) -> None:
        call = (
            (lambda: self.q.dispatch("ghost", Lease(1, 0, 0.0)))
            if action == "dispatch"
            else (lambda: getattr(self.q, action)("ghost", 1))
        )
        self._refused(call, "ghost", ACTION_NAME[action], "unknown")

    @precondition(lambda self: len(self.fifo) >= 2)
    @rule(data=st.data())
    def dispatch_not_the_head(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.fifo[1:])), label="job")
        attempt = self.jobs[job_id][1] + 1
        self._refused(lambda: self.q.dispatch(job_id, Lease(attempt, 0, 0.0)), job_id, "dispatch", PENDING)

    @precondition(lambda self: self.fifo)
    @rule(skip=st.sampled_from([-1, 0, 2, 3]))
    def dispatch_the_wrong_attempt(self, skip: int) -> None:
        job_id = self.fifo[0]
        attempt = self.jobs[job_id][1] + 1 + skip if skip else self.jobs[job_id][1]
        self._refused(lambda: self.q.dispatch(job_id, Lease(attempt, 0, 0.0)), job_id, "dispatch", PENDING)

    @precondition(lambda self: self.leases)
    @rule(
        data=st.data(), method=st.sampled_from(["complete", "kill", "requeue"]), off=st.sampled_from([-1, 1])
    )
    def stale_attempt(self, data: st.DataObject, method: str, off: int) -> None:
        job_id = data.draw(st.sampled_from(self.ids(IN_FLIGHT)), label="job")
        attempt = self.jobs[job_id][1] + off
        name = "mark dead" if method == "kill" else method
        self._refused(lambda: getattr(self.q, method)(job_id, attempt), job_id, name, IN_FLIGHT)

    # -- snapshot state -------------------------------------------------------------------------

    @rule()
    def round_trip_through_a_snapshot(self) -> None:
        state = codec.to_columns(self.q)
        self.q = codec.from_columns(orjson.loads(orjson.dumps(state)))
        assert codec.to_columns(self.q) == state
        self.dead = self.ids_in_order(DEAD)  # the snapshot keeps no death order: id-insertion order

    def ids_in_order(self, status: str) -> list[str]:
        return [j for j, (s, _, _) in self.jobs.items() if s == status]

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def validates(self) -> None:
        self.q.validate()

    @invariant()
    def stats_equal_the_model(self) -> None:
        counts = {s: 0 for s in JobStatus}
        for status, _, _ in self.jobs.values():
            counts[status] += 1
        dropped = {"dropped": self.drops} if self.retention else {}
        assert self.q.stats() == {**counts, "jobs": len(self.jobs), "last_seq": 0, **dropped}

    @invariant()
    def jobs_fifo_and_leases_equal_the_model(self) -> None:
        assert self.q.pending_ids() == self.fifo
        assert self.q.peek() == (self.fifo[0] if self.fifo else None)
        assert bool(self.q.pending) == bool(self.fifo)  # the controller's test for work to dispatch
        assert list(self.q.dead) == self.dead
        assert self.q.ended_ids() == self.window
        assert {k: (v.attempt, v.worker, v.deadline) for k, v in self.q.leases.items()} == self.leases
        assert {j.id: [j.status.value, j.attempt, j.payload] for j in self.q.jobs.values()} == self.jobs
        assert self.q.not_before == self.not_before and self.q.base == self.base
        assert all(isinstance(j.status, JobStatus) for j in self.q.jobs.values())


TestQueueMachine = QueueMachine.TestCase


class RetentionMachine(QueueMachine):
    """The same with a window of 2 ended jobs: ids dropped from it come back as new jobs, behind
    the tombstones their cancelled selves left in the FIFO."""

    def __init__(self) -> None:
        super().__init__()
        self.retention = 2
        self.q.set_retention(2)

    @precondition(lambda self: self.dropped)
    @rule(data=st.data(), payload=payloads)
    def enqueue_a_dropped_id(self, data: st.DataObject, payload: dict[str, Any]) -> None:
        job_id = data.draw(st.sampled_from(self.dropped), label="job")
        note(f"enqueue {job_id} again")
        self.q.enqueue(job_id, payload)
        self.dropped.remove(job_id)
        self.jobs[job_id] = [PENDING, 0, payload]
        self.fifo.append(job_id)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def kill_then_requeue_it(self, data: st.DataObject) -> None:
        """A job dies and the operator requeues it at once: its place in the window goes stale
        (more often than the rules apart would make it)."""
        self._end(data, "kill", DEAD)
        self.revive(data)


TestRetentionMachine = RetentionMachine.TestCase
# long runs: a stale place reaches the front of the window only after a revive and two more ends
TestRetentionMachine.settings = settings(settings.default, stateful_step_count=120)
