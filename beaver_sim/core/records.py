"""WAL record types and the one transition function, `apply`, used at run time and in replay.

A record is a plain dict, exactly what the WAL stores as JSON: `seq` (0 until the log assigns it),
`type`, `job`, and the fields of its type. ENQUEUE carries the whole payload, so snapshot + replay
rebuilds every job (the seed's payload-less ENQUEUE could not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, Lease

Record = dict[str, Any]

ENQUEUE = "enqueue"  # a new job, with its payload
DISPATCH = "dispatch"  # attempt N of a job handed to a worker, with its deadline
ACK = "ack"  # attempt N succeeded: completed
FAIL = "fail"  # attempt N failed with an error: back to pending
TIMEOUT = "timeout"  # attempt N passed its deadline: back to pending
REQUEUE = "requeue"  # attempt N was interrupted by a crash: back to pending
DEAD = "dead"  # attempt N was the last allowed: dead


def enqueue(job_id: str, payload: dict[str, Any]) -> Record:
    return {"seq": 0, "type": ENQUEUE, "job": job_id, "payload": payload}


def dispatch(job_id: str, attempt: int, worker: int, deadline: float) -> Record:
    return {
        "seq": 0,
        "type": DISPATCH,
        "job": job_id,
        "attempt": attempt,
        "worker": worker,
        "deadline": deadline,
    }


def ack(job_id: str, attempt: int) -> Record:
    return {"seq": 0, "type": ACK, "job": job_id, "attempt": attempt}


def fail(job_id: str, attempt: int, error: str) -> Record:
    return {"seq": 0, "type": FAIL, "job": job_id, "attempt": attempt, "error": error}


def timeout(job_id: str, attempt: int) -> Record:
    return {"seq": 0, "type": TIMEOUT, "job": job_id, "attempt": attempt}


def requeue(job_id: str, attempt: int) -> Record:
    return {"seq": 0, "type": REQUEUE, "job": job_id, "attempt": attempt}


def dead(job_id: str, attempt: int, reason: str) -> Record:
    return {"seq": 0, "type": DEAD, "job": job_id, "attempt": attempt, "reason": reason}


def _enqueue(q: JobQueue, r: Record) -> None:
    q.enqueue(r["job"], r["payload"])


def _dispatch(q: JobQueue, r: Record) -> None:
    q.dispatch(r["job"], Lease(r["attempt"], r["worker"], r["deadline"]))


def _ack(q: JobQueue, r: Record) -> None:
    q.complete(r["job"], r["attempt"])


def _requeue(q: JobQueue, r: Record) -> None:
    q.requeue(r["job"], r["attempt"])


def _dead(q: JobQueue, r: Record) -> None:
    q.kill(r["job"], r["attempt"])


APPLY: dict[str, Callable[[JobQueue, Record], None]] = {
    ENQUEUE: _enqueue,
    DISPATCH: _dispatch,
    ACK: _ack,
    FAIL: _requeue,
    TIMEOUT: _requeue,
    REQUEUE: _requeue,
    DEAD: _dead,
}


class UnknownRecord(BeaverError):
    """A record whose type this version does not know (a newer writer, or corruption)."""


def apply(q: JobQueue, r: Record, _lsn: int = 0) -> None:
    """Apply one logged record to the state; the only way state changes, live or in replay.
    (`_lsn` is what the WAL's scan passes along: recovery hands it `partial(apply, q)` as is.)"""
    fn = APPLY.get(r["type"])
    if fn is None:
        raise UnknownRecord(f"unknown record type {r['type']!r} at seq {r.get('seq')}")
    seq = r["seq"]
    if seq <= q.last_seq:
        raise BeaverError(f"record seq {seq} is not after the state's last seq {q.last_seq}")
    fn(q, r)
    q.last_seq = seq
