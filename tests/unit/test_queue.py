"""JobQueue: legal transitions, the errors for illegal ones, validate(), stats(), snapshot state."""

from collections import deque

import orjson
import pytest

from beaver_sim.core import codec
from beaver_sim.core.codec import SCHEMA_VERSION
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, IllegalTransition, Job, JobStatus, Lease


def lease(attempt: int, worker: int = 0, deadline: float = 10.0) -> Lease:
    return Lease(attempt, worker, deadline)


@pytest.fixture
def q() -> JobQueue:
    q = JobQueue()
    for name in ("a", "b", "c"):
        q.enqueue(name, {"n": name})
    return q


def test_enqueue_adds_pending_jobs_in_fifo_order(q: JobQueue) -> None:
    assert list(q.pending) == ["a", "b", "c"]
    assert q.peek() == "a"
    assert len(q) == 3 and "b" in q and "z" not in q
    job = q.get("b")
    assert job == Job("b", {"n": "b"}, 0, JobStatus.PENDING)
    assert q.get("z") is None
    assert isinstance(q.pending, deque)  # O(1) pops from the front, never list.pop(0)


def test_peek_of_an_empty_queue_is_none() -> None:
    assert JobQueue().peek() is None


def test_dispatch_moves_the_head_in_flight_under_its_lease(q: JobQueue) -> None:
    job = q.dispatch("a", lease(1, worker=3, deadline=7.5))
    assert job.status is JobStatus.IN_FLIGHT and job.attempt == 1
    assert q.leases["a"] == Lease(1, 3, 7.5)
    assert q.peek() == "b"
    assert q.stats()["in_flight"] == 1 and q.stats()["pending"] == 2


def test_complete_is_final(q: JobQueue) -> None:
    q.dispatch("a", lease(1))
    job = q.complete("a", 1)
    assert job.status is JobStatus.COMPLETED
    assert "a" not in q.leases and "a" not in q.pending


def test_requeue_goes_to_the_back_and_keeps_the_attempt_count(q: JobQueue) -> None:
    q.dispatch("a", lease(1))
    job = q.requeue("a", 1)
    assert job.status is JobStatus.PENDING and job.attempt == 1
    assert list(q.pending) == ["b", "c", "a"]
    q.dispatch("b", lease(1))
    q.dispatch("c", lease(1))
    q.dispatch("a", lease(2))  # the next attempt of a requeued job is attempt + 1
    assert q.get("a").attempt == 2  # type: ignore[union-attr]


def test_kill_is_final(q: JobQueue) -> None:
    q.dispatch("a", lease(1))
    assert q.kill("a", 1).status is JobStatus.DEAD
    assert q.stats()["dead"] == 1


def _message(excinfo: pytest.ExceptionInfo[IllegalTransition]) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("setup", "call", "job", "state", "action"),
    [
        ([], lambda q: q.complete("a", 1), "a", "pending", "complete"),
        ([], lambda q: q.requeue("a", 1), "a", "pending", "requeue"),
        ([], lambda q: q.kill("a", 1), "a", "pending", "mark dead"),
        ([], lambda q: q.enqueue("a", {}), "a", "pending", "enqueue"),
        (["dispatch"], lambda q: q.dispatch("a", lease(2)), "a", "in_flight", "dispatch"),
        (["dispatch", "ack"], lambda q: q.dispatch("a", lease(2)), "a", "completed", "dispatch"),
        (["dispatch", "ack"], lambda q: q.complete("a", 1), "a", "completed", "complete"),
        (["dispatch", "ack"], lambda q: q.requeue("a", 1), "a", "completed", "requeue"),
        (["dispatch", "dead"], lambda q: q.dispatch("a", lease(2)), "a", "dead", "dispatch"),
        (["dispatch", "dead"], lambda q: q.kill("a", 1), "a", "dead", "mark dead"),
        (["dispatch", "dead"], lambda q: q.enqueue("a", {}), "a", "dead", "enqueue"),
    ],
)
def test_illegal_transitions_name_job_state_and_action(
    q: JobQueue, setup: list[str], call, job: str, state: str, action: str
) -> None:
    for step in setup:
        if step == "dispatch":
            q.dispatch("a", lease(1))
        elif step == "ack":
            q.complete("a", 1)
        elif step == "dead":
            q.kill("a", 1)
    before = q.to_state()
    with pytest.raises(IllegalTransition) as excinfo:
        call(q)
    msg = _message(excinfo)
    assert f"job {job!r}" in msg and f"state={state}" in msg and f"cannot {action}" in msg
    assert excinfo.value.job_id == job and excinfo.value.action == action
    assert excinfo.value.status == JobStatus(state)
    assert isinstance(excinfo.value, BeaverError)
    assert q.to_state() == before  # a refused transition changes nothing
    q.validate()


def test_unknown_job_is_named_with_state_unknown() -> None:
    q = JobQueue()
    for call, action in [
        (lambda: q.dispatch("x", lease(1)), "dispatch"),
        (lambda: q.complete("x", 1), "complete"),
        (lambda: q.requeue("x", 1), "requeue"),
        (lambda: q.kill("x", 1), "mark dead"),
    ]:
        with pytest.raises(IllegalTransition, match=r"job 'x': cannot .* when state=unknown \(no such job\)"):
            call()
        try:
            call()
        except IllegalTransition as e:
            assert e.action == action and e.status is None


def test_dispatch_must_take_the_head_of_the_queue(q: JobQueue) -> None:
    with pytest.raises(IllegalTransition, match=r"job 'b': cannot dispatch when state=pending .*head"):
        q.dispatch("b", lease(1))


def test_dispatch_must_be_the_next_attempt(q: JobQueue) -> None:
    with pytest.raises(IllegalTransition, match=r"attempt 3 after 0"):
        q.dispatch("a", lease(3))
    with pytest.raises(IllegalTransition, match=r"attempt 0 after 0"):
        q.dispatch("a", lease(0))


@pytest.mark.parametrize("method", ["complete", "requeue", "kill"])
def test_a_stale_attempt_is_refused(q: JobQueue, method: str) -> None:
    q.dispatch("a", lease(1))
    q.requeue("a", 1)
    q.dispatch("b", lease(1))
    q.dispatch("c", lease(1))
    q.dispatch("a", lease(2))
    with pytest.raises(IllegalTransition, match=r"attempt 1 is not the current attempt 2"):
        getattr(q, method)("a", 1)
    assert q.get("a").status is JobStatus.IN_FLIGHT  # type: ignore[union-attr]


def test_stats_counts_every_state() -> None:
    q = JobQueue()
    for i in range(6):
        q.enqueue(f"j{i}", {})
    for i in range(5):
        q.dispatch(f"j{i}", lease(1))
    q.complete("j0", 1)
    q.complete("j1", 1)
    q.kill("j2", 1)
    q.requeue("j3", 1)
    q.last_seq = 42
    assert q.stats() == {
        "pending": 2,
        "in_flight": 1,
        "completed": 2,
        "dead": 1,
        "delayed": 0,
        "cancelled": 0,
        "jobs": 6,
        "last_seq": 42,
    }
    q.validate()


def test_stats_of_an_empty_queue() -> None:
    assert JobQueue().stats() == {
        "pending": 0,
        "in_flight": 0,
        "completed": 0,
        "dead": 0,
        "delayed": 0,
        "cancelled": 0,
        "jobs": 0,
        "last_seq": 0,
    }


# -- validate ---------------------------------------------------------------------------------


def _busy() -> JobQueue:
    q = JobQueue()
    for i in range(4):
        q.enqueue(f"j{i}", {"i": i})
    q.dispatch("j0", lease(1))
    q.dispatch("j1", lease(1))
    q.complete("j1", 1)
    return q


def test_validate_accepts_a_consistent_queue() -> None:
    _busy().validate()
    JobQueue().validate()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda q: q.pending.append("j2"), "appears twice"),
        (lambda q: q.pending.append("j1"), "pending FIFO but not pending"),
        (lambda q: q.pending.append("ghost"), "pending FIFO but not pending"),
        (lambda q: q.pending.remove("j3"), "missing from the pending FIFO"),
        (lambda q: q.leases.pop("j0"), "lease=False"),
        (lambda q: q.leases.__setitem__("j2", lease(1)), "lease=True"),
        (lambda q: q.leases.__setitem__("j0", lease(5)), "lease attempt differs"),
        (lambda q: q.counts.__setitem__(JobStatus.DEAD, 1), "state counts"),
        (lambda q: setattr(q.jobs["j1"], "status", JobStatus.DEAD), "state counts"),
    ],
)
def test_validate_names_the_broken_rule(damage, match: str) -> None:
    q = _busy()
    damage(q)
    with pytest.raises(AssertionError, match=match):
        q.validate()


# -- snapshot state ---------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [1, 3])
def test_snapshot_state_round_trip(schema: int) -> None:
    """Both bodies a snapshot may hold: schema 1 (`to_state`, one list per job, still read) and
    schema 3 (`to_columns`, what snapshots are written as)."""
    to, back_from = {1: (JobQueue.to_state, codec.from_state), 3: (codec.to_columns, codec.from_columns)}[
        schema
    ]
    q = _busy()
    q.dispatch("j2", Lease(1, 7, 123.25))
    q.requeue("j2", 1)
    q.dispatch("j3", Lease(1, 2, 99.5))
    q.enqueue("j4", {"nested": {"list": [1, 2.5, "x", None, True]}, "unicode": "ünï"})
    q.last_seq = 17
    state = to(q)
    assert state["schema"] == schema and state["last_seq"] == 17 and SCHEMA_VERSION == 3
    # through JSON bytes, as a snapshot stores it
    back = back_from(orjson.loads(orjson.dumps(state)))
    assert to(back) == state and back.to_state() == q.to_state()
    assert back.stats() == q.stats()
    assert list(back.pending) == list(q.pending)
    assert back.leases == q.leases
    assert {k: (j.status, j.attempt, j.payload) for k, j in back.jobs.items()} == {
        k: (j.status, j.attempt, j.payload) for k, j in q.jobs.items()
    }
    # the rebuilt queue goes on working
    back.complete("j3", 1)
    back.dispatch("j2", lease(2))
    back.validate()


def test_from_state_of_an_empty_queue() -> None:
    assert codec.from_state(JobQueue().to_state()).to_state() == JobQueue().to_state()
    assert codec.to_columns(codec.from_columns(codec.to_columns(JobQueue()))) == codec.to_columns(JobQueue())


def test_from_state_refuses_an_inconsistent_state() -> None:
    state = _busy().to_state()
    state["pending"].append("j1")  # a completed job listed as pending
    with pytest.raises(AssertionError):
        codec.from_state(state)
