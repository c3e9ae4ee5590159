"""The snapshot body: a JobQueue's state to bytes and back, in every schema this version reads.

storage/snapshot.py frames and checksums a body without knowing what it holds; this module is what it
holds. Schema 3 (written) is `to_columns`: a column per job field. Schema 2 is 3 without the sparse
tables; schema 1 is `JobQueue.to_state`, one list per job. Both are still read, for older data
directories. Decoding builds the queue in bulk (a million jobs is a recovery's hot path) and checks
it, so a body that decodes is a state the transitions could have reached."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import orjson

from beaver_sim.core.queue import (
    CANCELLED,
    COMPLETED,
    DEAD,
    DELAYED,
    IN_FLIGHT,
    PENDING,
    RETENTION_UNKNOWN,
    JobQueue,
)
from beaver_sim.core.types import Job, JobStatus, Lease
from beaver_sim.errors import BeaverError, CorruptLog
from beaver_sim.speed import paused_gc
from beaver_sim.storage import snapshot as S
from beaver_sim.storage.snapshot import Snapshot

SCHEMA_VERSION = 3  # of the body written; see the module docstring for those still read
_id, _status = attrgetter("id"), attrgetter("status")
# a job's state in `to_columns`
_CODE = {PENDING: "p", IN_FLIGHT: "i", COMPLETED: "c", DEAD: "d", DELAYED: "w", CANCELLED: "x"}
_STATUS_OF = {c: s for s, c in _CODE.items()}.__getitem__
_SPARSE = ("reasons", "results", "not_before", "base")  # JobQueue's tables by id, as snapshot keys


def to_columns(q: JobQueue) -> dict[str, Any]:
    """The snapshot body of schema 3: a column per job field, each job's state one character,
    each payload its JSON text. A million jobs decode as a few long lists of strings and
    small ints, not a million lists and dicts, and payloads stay text until dispatched. What few
    jobs have (a reason, a result, a due time, a budget base) is an object by id, present only
    when not empty (so a body of schema 2 reads as one of 3 without them)."""
    jobs = q.jobs.values()
    dumps, code = orjson.dumps, _CODE
    cols: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "last_seq": q.last_seq,
        "ids": list(q.jobs),
        "status": "".join([code[j.status] for j in jobs]),
        "attempts": [j.attempt for j in jobs],
        "payloads": [t if (t := j.text) is not None else _text(j, dumps) for j in jobs],
        "pending": q.pending_ids(),
        "leases": [[k, v.attempt, v.worker, v.deadline] for k, v in q.leases.items()],
    }
    if q.retention or q.dropped:
        cols["ended"] = q.ended_ids()
        cols["dropped"] = q.dropped
        cols["retention"] = q.retention
    for key in _SPARSE:
        if table := getattr(q, key):
            cols[key] = table
    return cols


def _text(job: Job, dumps: Callable[[Any], bytes]) -> str:
    """A payload's JSON text, kept in its job: the next snapshot writes it without encoding it."""
    raw = job.raw
    job.text = text = raw if type(raw) is str else dumps(raw).decode()
    return text


def from_columns(cols: dict[str, Any]) -> JobQueue:
    """Rebuild a queue from `to_columns` output and check it, like `from_state`."""
    q = JobQueue()
    ids, status, attempts, payloads = cols["ids"], cols["status"], cols["attempts"], cols["payloads"]
    if not len(ids) == len(status) == len(attempts) == len(payloads):
        raise AssertionError("the job columns differ in length")
    if not set(map(type, ids)) <= {str} or not set(map(type, payloads)) <= {str}:
        raise AssertionError("a job id or payload is not a string")
    jobs = list(map(Job, ids, payloads, attempts, map(_STATUS_OF, status)))
    q.jobs = dict(zip(ids, jobs))
    if len(q.jobs) != len(jobs):
        raise AssertionError("a job id appears twice in the snapshot")
    q.counts.update({s: status.count(c) for s, c in _CODE.items()})
    find, at = status.find, -1
    while (at := find("d", at + 1)) >= 0:  # the dead index, C-speed scan for the few dead
        q.dead[ids[at]] = None
    q.pending.extend(cols["pending"])
    q.leases = {k: Lease(a, w, d) for k, a, w, d in cols["leases"]}
    q.last_seq = cols["last_seq"]
    for key in _SPARSE:
        table = cols.get(key, {})
        if type(table) is not dict:
            raise AssertionError(f"{key} is not an object")
        setattr(q, key, table)
    _window(q, cols)
    return q


def from_state(state: dict[str, Any]) -> JobQueue:
    """Rebuild a queue from `JobQueue.to_state` output (schema 1) and check it. The counts come from
    the jobs themselves, so only the links need checking."""
    q = JobQueue()
    rows = state["jobs"]
    status_of = {s.value: s for s in JobStatus}.__getitem__
    jobs = [Job(job_id, payload, attempt, status_of(status)) for job_id, status, attempt, payload in rows]
    q.jobs = dict(zip(map(_id, jobs), jobs))
    if len(q.jobs) != len(jobs):
        raise AssertionError("a job id appears twice in the snapshot")
    q.counts.update(Counter(map(_status, jobs)))
    q.dead = {j.id: None for j in jobs if j.status is DEAD}
    q.pending.extend(state["pending"])
    q.leases = {k: Lease(a, w, d) for k, a, w, d in state["leases"]}
    q.last_seq = state["last_seq"]
    _window(q, state)
    return q


def _window(q: JobQueue, body: dict[str, Any]) -> None:
    """The retention window of a snapshot body, then the links checked. A body with an end
    order but no `retention` predates recording it: RETENTION_UNKNOWN, for recovery to set."""
    q.ended.extend(body.get("ended", ()))
    q.dropped = body.get("dropped", 0)
    retention = body.get("retention", RETENTION_UNKNOWN if "ended" in body else 0)
    if type(retention) is not int or retention < RETENTION_UNKNOWN:
        raise AssertionError(f"retention {retention!r} is not a count")
    q.retention = retention
    q.check_links()


_READERS: dict[int, Callable[[dict[str, Any]], JobQueue]] = {
    1: from_state,
    2: from_columns,
    3: from_columns,
}  # 1, 2: older data directories


def state_body(q: JobQueue) -> bytes:
    """The snapshot body (format SCHEMA_VERSION) for the state of `q`."""
    return orjson.dumps(to_columns(q))


def encode_snapshot(q: JobQueue) -> bytes:
    """The whole snapshot file for the state of `q` at `q.last_seq`."""
    return S.encode(q.last_seq, SCHEMA_VERSION, state_body(q))


def read_state(snap: Snapshot, path: str) -> JobQueue:
    """The JobQueue a verified snapshot holds; CorruptLog if its body is not a valid state,
    BeaverError if it was written by a newer version."""
    build = _READERS.get(snap.version)
    if build is None:
        raise BeaverError(
            f"{path}: snapshot schema version {snap.version} is not supported "
            f"(this version reads {', '.join(map(str, sorted(_READERS)))})"
        )
    # a large state is millions of objects and no cycles (half the decode time with the GC on)
    try:
        with paused_gc():
            q = build(orjson.loads(snap.body))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise CorruptLog(f"{path}: snapshot body is not a valid state ({e})") from e
    if q.last_seq != snap.seq:
        raise CorruptLog(f"{path}: body seq {q.last_seq} differs from header")
    return q


def decode_snapshot(data: bytes, path: str) -> JobQueue:
    """Check and load one snapshot file; CorruptLog if damaged, BeaverError if from a newer version."""
    return read_state(S.decode(data, path), path)
