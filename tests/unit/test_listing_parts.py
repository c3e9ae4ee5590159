"""The listing the control socket streams (runtime/jobs.py `listing`, `encode`): byte for byte the
answer it replaced when nothing changes, built a bounded number of jobs per part, and a valid
listing by its documented rule when the state changes between parts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import JobStatus, Lease
from beaver_sim.runtime import jobs
from beaver_sim.runtime.jobs import STATES, answer, encode, listing, select


def mixed(n: int) -> JobQueue:
    """`n` jobs in every state, each with what its row shows (results, reasons, not_before)."""
    q = JobQueue()
    for i in range(n):
        q.enqueue(f"j{i:05d}", {"i": i}, 1_800_000_000.0 + i if i % 7 == 3 else None)
    for k, job_id in enumerate(list(q.pending)[: n // 2]):
        q.dispatch(job_id, Lease(1, 0, 10.0))
        if k % 3 == 0:
            q.complete(job_id, 1, {"k": k} if k % 2 else None)
        elif k % 3 == 1:
            q.kill(job_id, 1, f"failed: {k}")
    for job_id in list(q.pending)[::5]:
        q.cancel(job_id)
    q.validate()
    return q


def rows_by_hand(q: JobQueue, state: str | None, limit: int | None) -> list[dict[str, Any]]:
    """What the listing must give: every job in enqueue order, filtered, cut at `limit`."""
    out = []
    for job in q.jobs.values():
        if state is not None and job.status != state:
            continue
        r: dict[str, Any] = {"id": job.id, "state": job.status.value, "attempts": job.attempt}
        if job.status is JobStatus.DEAD:
            r["reason"] = q.reasons.get(job.id)
        elif job.status is JobStatus.COMPLETED:
            r["result"] = q.results.get(job.id)
        elif job.status is JobStatus.DELAYED:
            r["not_before"] = q.not_before[job.id]
        out.append(r)
    return out[:limit]


@pytest.mark.parametrize("state", [None, *STATES])
@pytest.mark.parametrize("limit", [None, 0, 1, 7, 100, 5000])
@pytest.mark.parametrize("size", [1, 3, 64, 2000])
def test_the_streamed_answer_is_the_whole_answer_byte_for_byte(
    state: str | None, limit: int | None, size: int
) -> None:
    q = mixed(700)
    expected = rows_by_hand(q, state, limit)
    assert select(q, state, limit) == expected
    streamed = b"".join(encode(listing(q, state, limit, size)))
    assert streamed == orjson.dumps({"ok": True, "jobs": expected})
    assert b"".join(answer(q, {"op": "jobs", "state": state, "limit": limit})) == streamed


def test_an_empty_queue_lists_nothing() -> None:
    assert b"".join(encode(listing(JobQueue()))) == b'{"ok":true,"jobs":[]}'


def test_each_part_looks_at_no_more_than_its_size_of_jobs() -> None:
    q = mixed(1000)
    parts = list(listing(q, None, None, 64))
    assert len(parts) == -(-1000 // 64) and all(len(p) <= 64 for p in parts)
    dead = list(listing(q, "dead", None, 64))  # a filter walks the same parts, some of them empty
    assert len(dead) == len(parts) and [] in dead
    assert sum(map(len, dead)) == q.counts[JobStatus.DEAD]
    third = [k for k, j in enumerate(q.jobs.values()) if j.status is JobStatus.PENDING][2]
    assert len(list(listing(q, "pending", 3, 64))) == third // 64 + 1  # the limit reached: no more


def test_a_limit_without_a_state_copies_only_the_first_ids() -> None:
    q = mixed(50)
    parts = listing(q, None, 5, 2)
    for i in range(50, 60):
        q.enqueue(f"late{i}", {})
    assert [r["id"] for p in parts for r in p] == list(q.jobs)[:5]


def test_between_parts_the_state_changes_by_the_documented_rule() -> None:
    """Enqueued after the listing began: not listed. Dropped by retention: skipped. Changed
    state: the row shows the state when its part was built, and the filter uses that state."""
    q = mixed(300)
    q.set_retention(10_000)  # keeps every ended job: dropping is what the steps below do
    ids = list(q.jobs)
    parts = listing(q, None, None, 50)
    first = next(parts)
    first_ids = [r["id"] for r in first]
    assert first_ids == ids[:50]
    for i in range(20):
        q.enqueue(f"new{i}", {})
    pending_later = [j for j in ids[50:] if q.jobs[j].status is JobStatus.PENDING]
    moved = pending_later[-1]
    q.cancel(moved)
    early = sum(1 for j in q.ended if j in first_ids)  # retention drops the oldest ended first:
    dropped = list(q.ended)[early : early + 2]  # these two come after the first part
    q.set_retention(len(q.ended) - early - 2)
    assert all(d not in q.jobs and d not in first_ids for d in dropped)
    rest = [r for p in parts for r in p]
    listed = [r["id"] for r in first + rest]
    assert listed == [j for j in ids if j not in dropped]
    assert not any(j.startswith("new") for j in listed)
    assert next(r for r in rest if r["id"] == moved)["state"] == "cancelled"
    for r in rest:  # every later row is the job as it is now
        assert r == rows_by_hand(q, None, None)[list(q.jobs).index(r["id"])]


def test_a_filtered_listing_uses_each_jobs_state_when_its_part_is_built() -> None:
    q = mixed(200)
    parts = listing(q, "pending", None, 100)
    first = next(parts)
    late = [j for j in list(q.jobs)[100:] if q.jobs[j].status is JobStatus.PENDING]
    q.cancel(late[0])
    rest = [r["id"] for p in parts for r in p]
    assert all(r["state"] == "pending" for r in first)
    assert late[0] not in rest and rest == late[1:]


def test_a_part_of_large_rows_is_written_in_pieces_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server holds a piece until its client takes it: a part of completed jobs with large
    results comes in pieces of about PIECE_BYTES (plus one row), byte for byte the same answer,
    and every part still gives at least one piece (one loop turn each)."""
    monkeypatch.setattr(jobs, "PIECE_BYTES", 10_000)
    q = JobQueue()
    for i in range(300):
        q.enqueue(f"j{i:03d}", {})
        q.dispatch(f"j{i:03d}", Lease(1, 0, 10.0))
        q.complete(f"j{i:03d}", 1, {"pad": "r" * 1000})
    pieces = list(encode(listing(q, None, None, 100)))
    assert b"".join(pieces) == orjson.dumps({"ok": True, "jobs": rows_by_hand(q, None, None)})
    assert max(map(len, pieces)) < 10_000 + 1100
    assert len(pieces) == 2 + 3 * 10  # a part of 100 rows of ~1,060 bytes: ten pieces of ten rows
    filtered = list(encode(listing(q, "dead", None, 100)))
    assert filtered == [b'{"ok":true,"jobs":[', b"", b"", b"", b"]}"]
