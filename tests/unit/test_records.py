"""records: the builders and the one transition function `apply`, for every record type."""

import orjson
import pytest

from beaver_sim.core import records as R
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, IllegalTransition, JobStatus, Lease


def logged(rec: R.Record, seq: int) -> R.Record:
    rec["seq"] = seq  # what the WAL does on append
    return rec


def in_flight() -> JobQueue:
    """Job 'a' in flight (attempt 1), job 'b' pending; seqs 1..3 applied."""
    q = JobQueue()
    R.apply(q, logged(R.enqueue("a", {"x": 1}), 1))
    R.apply(q, logged(R.enqueue("b", {"x": 2}), 2))
    R.apply(q, logged(R.dispatch("a", 1, 4, 30.5), 3))
    return q


def test_builders_make_plain_json_records_with_seq_zero() -> None:
    built = [
        R.enqueue("a", {"k": [1, 2]}),
        R.dispatch("a", 1, 2, 3.5),
        R.ack("a", 1),
        R.fail("a", 1, "boom"),
        R.timeout("a", 1),
        R.requeue("a", 1),
        R.dead("a", 3, "max retries"),
    ]
    assert [r["type"] for r in built] == [R.ENQUEUE, R.DISPATCH, R.ACK, R.FAIL, R.TIMEOUT, R.REQUEUE, R.DEAD]
    for r in built:
        assert r["seq"] == 0 and r["job"] == "a"
        assert orjson.loads(orjson.dumps(r)) == r
    assert built[0]["payload"] == {"k": [1, 2]}
    assert built[1] | {} == {
        "seq": 0,
        "type": "dispatch",
        "job": "a",
        "attempt": 1,
        "worker": 2,
        "deadline": 3.5,
    }
    assert built[3]["error"] == "boom" and built[6]["reason"] == "max retries"
    assert set(R.APPLY) == {R.ENQUEUE, R.DISPATCH, R.ACK, R.FAIL, R.TIMEOUT, R.REQUEUE, R.DEAD, R.CONFIG} | {
        R.RELEASE,
        R.REVIVE,
        R.CANCEL,
    }


def test_apply_enqueue_keeps_the_payload() -> None:
    q = JobQueue()
    R.apply(q, logged(R.enqueue("a", {"x": 1}), 1))
    assert q.get("a").payload == {"x": 1}  # type: ignore[union-attr]
    assert q.get("a").status is JobStatus.PENDING  # type: ignore[union-attr]
    assert q.last_seq == 1


def test_apply_dispatch_sets_the_lease() -> None:
    q = in_flight()
    assert q.get("a").status is JobStatus.IN_FLIGHT  # type: ignore[union-attr]
    assert q.leases["a"] == Lease(1, 4, 30.5)
    assert q.last_seq == 3


@pytest.mark.parametrize(
    ("rec", "status"),
    [
        (R.ack("a", 1), JobStatus.COMPLETED),
        (R.fail("a", 1, "boom"), JobStatus.PENDING),
        (R.timeout("a", 1), JobStatus.PENDING),
        (R.requeue("a", 1), JobStatus.PENDING),
        (R.dead("a", 1, "max retries"), JobStatus.DEAD),
    ],
)
def test_apply_ends_an_attempt(rec: R.Record, status: JobStatus) -> None:
    q = in_flight()
    R.apply(q, logged(rec, 4))
    assert q.get("a").status is status  # type: ignore[union-attr]
    assert "a" not in q.leases
    assert q.last_seq == 4
    if status is JobStatus.PENDING:
        assert list(q.pending) == ["b", "a"]
    q.validate()


@pytest.mark.parametrize("kind", ["ack", "fail", "timeout", "requeue", "dead"])
def test_apply_refuses_a_stale_attempt(kind: str) -> None:
    q = in_flight()
    rec = {"seq": 4, "type": kind, "job": "a", "attempt": 2, "error": "e", "reason": "r"}
    with pytest.raises(IllegalTransition, match="not the current attempt"):
        R.apply(q, rec)
    assert q.last_seq == 3  # a refused record does not advance the state's seq


def test_apply_of_an_unknown_type_names_type_and_seq() -> None:
    q = in_flight()
    before = q.to_state()
    with pytest.raises(R.UnknownRecord, match=r"unknown record type 'frobnicate' at seq 9"):
        R.apply(q, {"seq": 9, "type": "frobnicate", "job": "a"})
    assert isinstance(R.UnknownRecord("x"), BeaverError)
    assert q.to_state() == before


def test_apply_refuses_a_seq_that_is_not_after_the_state() -> None:
    q = in_flight()
    with pytest.raises(BeaverError, match=r"record seq 3 is not after the state's last seq 3"):
        R.apply(q, logged(R.ack("a", 1), 3))
    with pytest.raises(BeaverError, match=r"record seq 1 is not after"):
        R.apply(q, logged(R.enqueue("c", {}), 1))
    assert "c" not in q and q.get("a").status is JobStatus.IN_FLIGHT  # type: ignore[union-attr]


def test_apply_accepts_seq_gaps_forward() -> None:
    # seq contiguity is the WAL's job (it refuses gaps); apply only needs seqs to increase
    q = JobQueue()
    R.apply(q, logged(R.enqueue("a", {}), 5))
    assert q.last_seq == 5


def test_a_full_job_life_through_apply() -> None:
    q = JobQueue()
    recs = [
        R.enqueue("a", {"p": 1}),
        R.dispatch("a", 1, 0, 1.0),
        R.fail("a", 1, "boom"),
        R.dispatch("a", 2, 1, 2.0),
        R.timeout("a", 2),
        R.dispatch("a", 3, 0, 3.0),
        R.requeue("a", 3),
        R.dispatch("a", 4, 0, 4.0),
        R.dead("a", 4, "max retries"),
    ]
    for seq, r in enumerate(recs, 1):
        R.apply(q, logged(r, seq))
    job = q.get("a")
    assert job is not None and job.status is JobStatus.DEAD and job.attempt == 4
    stats = {"pending": 0, "in_flight": 0, "completed": 0, "dead": 1, "delayed": 0, "cancelled": 0}
    assert q.stats() == stats | {"jobs": 1, "last_seq": 9}
