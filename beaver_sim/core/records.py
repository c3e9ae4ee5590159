"""WAL record types and the one transition function, `apply`, used at run time and in replay.

A record is a plain dict, exactly what the WAL stores as JSON: `seq` (0 until the log assigns it),
`type`, `job`, and the fields of its type. ENQUEUE carries the whole payload, so snapshot + replay
rebuilds every job (the seed's payload-less ENQUEUE could not).

Every record of an accepted job must fit the log's `max_record_bytes`, or the job would stop the
queue at its first dispatch or failure: a FAIL error or DEAD reason is cut here, where the record is
built, to MAX_REASON_BYTES with a visible marker, and `record_bound` gives the largest record a job
can ever have, which the enqueue checks against the limit (core/limits.py).

An ACK carries the handler's result (omitted when it returned None), bounded by `result_room` so the
record fits whatever the job's id; a DEAD keeps its reason: both live in the state and its snapshots.
An ENQUEUE, FAIL or TIMEOUT may carry `not_before` (epoch seconds: a delayed job, a retry's backoff):
the job is then delayed, and a RELEASE record, logged once that time has come, makes it pending.
REVIVE (`beaver requeue`) and CANCEL are an operator's transitions.

A CONFIG record carries the settings that change what `apply` does (`completed_retention`), so replay
follows the live run whatever the config file says at the next start: a change takes effect from
its record onward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import ACK as ACK
from beaver_sim.core.types import CANCEL as CANCEL
from beaver_sim.core.types import CONFIG as CONFIG
from beaver_sim.core.types import DEAD as DEAD
from beaver_sim.core.types import DISPATCH as DISPATCH
from beaver_sim.core.types import ENQUEUE as ENQUEUE
from beaver_sim.core.types import FAIL as FAIL
from beaver_sim.core.types import RELEASE as RELEASE
from beaver_sim.core.types import REQUEUE as REQUEUE
from beaver_sim.core.types import REVIVE as REVIVE
from beaver_sim.core.types import STARTS as STARTS
from beaver_sim.core.types import TIMEOUT as TIMEOUT
from beaver_sim.core.types import BeaverError, Lease
from beaver_sim.errors import brief

Record = dict[str, Any]

MAX_REASON_BYTES = 2048  # a FAIL error or DEAD reason as stored: its JSON text, quotes included


def enqueue(job_id: str, payload: dict[str, Any], not_before: float | None = None) -> Record:
    rec = {"seq": 0, "type": ENQUEUE, "job": job_id, "payload": payload}
    if not_before is not None:
        rec["not_before"] = not_before
    return rec


def dispatch(job_id: str, attempt: int, worker: int, deadline: float) -> Record:
    return {
        "seq": 0,
        "type": DISPATCH,
        "job": job_id,
        "attempt": attempt,
        "worker": worker,
        "deadline": deadline,
    }


def ack(job_id: str, attempt: int, result: Any = None) -> Record:
    rec = {"seq": 0, "type": ACK, "job": job_id, "attempt": attempt}
    if result is not None:
        rec["result"] = result
    return rec


def fail(job_id: str, attempt: int, error: object, not_before: float | None = None) -> Record:
    rec = {"seq": 0, "type": FAIL, "job": job_id, "attempt": attempt, "error": reason(error)}
    if not_before is not None:
        rec["not_before"] = not_before
    return rec


def timeout(job_id: str, attempt: int, not_before: float | None = None) -> Record:
    rec = {"seq": 0, "type": TIMEOUT, "job": job_id, "attempt": attempt}
    if not_before is not None:
        rec["not_before"] = not_before
    return rec


def requeue(job_id: str, attempt: int) -> Record:
    return {"seq": 0, "type": REQUEUE, "job": job_id, "attempt": attempt}


def dead(job_id: str, attempt: int, why: object) -> Record:
    return {"seq": 0, "type": DEAD, "job": job_id, "attempt": attempt, "reason": reason(why)}


def release(job_id: str) -> Record:
    return {"seq": 0, "type": RELEASE, "job": job_id}


def revive(job_id: str) -> Record:
    return {"seq": 0, "type": REVIVE, "job": job_id}


def cancel(job_id: str) -> Record:
    return {"seq": 0, "type": CANCEL, "job": job_id}


def config(completed_retention: int) -> Record:
    return {"seq": 0, "type": CONFIG, "job": "", "completed_retention": completed_retention}


def reason(error: object) -> str:
    """`error` as the text a record stores, at most MAX_REASON_BYTES of JSON: a longer one is cut
    with a marker saying how long it was, lone surrogates are escaped (orjson refuses them), and an
    object whose str() and repr() both fail is named by its type. A handler's exception, however
    large or odd, becomes a FAIL like any other."""
    text = error if type(error) is str else _text(error)
    if text.isascii() and len(text) * 6 + 2 <= MAX_REASON_BYTES:  # 6: the widest escape, \u001f
        return text
    text = text.encode("utf-8", "backslashreplace").decode()
    if len(orjson.dumps(text)) <= MAX_REASON_BYTES:
        return text
    marker = f" ...[cut: {len(text.encode())} bytes in all]"
    room = MAX_REASON_BYTES - len(orjson.dumps(marker))  # for the kept prefix's JSON, quotes excluded
    lo, hi = 0, min(len(text), room)  # a character is at least one byte: no longer prefix fits
    while lo < hi:  # the longest prefix whose JSON fits the room
        mid = (lo + hi + 1) // 2
        if len(orjson.dumps(text[:mid])) - 2 <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + marker


def _text(error: object) -> str:
    for show in (str, repr):
        try:
            text = show(error)
        except Exception:  # a handler's object may raise anything here
            continue
        if isinstance(text, str):
            return str.__str__(text)
    return f"<unprintable {type(error).__name__}>"


def _widest() -> tuple[int, int]:
    """(bytes of the widest ENQUEUE, of the widest later record) of a job whose id and payload
    encode to nothing: every number at its widest, reasons at MAX_REASON_BYTES."""
    n, f = -(2**63), -2.2250738585072014e-308  # the longest int and float texts orjson writes
    later = [dispatch("", n, n, f), ack("", n), timeout("", n, f), requeue("", n)]
    later += [fail("", n, "", f), dead("", n, ""), release(""), revive(""), cancel("")]
    sizes = []
    for rec in [enqueue("", {}, f), *later]:
        rec["seq"] = n
        text = len(orjson.dumps(rec)) - 2  # without the id's quotes
        sizes.append(text - 2 + MAX_REASON_BYTES if rec["type"] in (FAIL, DEAD) else text)
    return sizes[0] - 2, max(sizes[1:])


_ENQUEUE_BYTES, _LATER_BYTES = _widest()
_ACK_BYTES = len(orjson.dumps(ack("", -(2**63)) | {"seq": -(2**63), "result": None})) - 2 - 4  # no "", null


def result_room(id_json: int, max_record_bytes: int) -> int:
    """The most bytes of JSON a job's result may take in its ACK record, which must fit
    `max_record_bytes`, given the JSON size of the job's id."""
    return max_record_bytes - _ACK_BYTES - id_json


def record_bound(id_json: int, payload_json: int) -> int:
    """The largest record, in bytes, a job can ever have, given the JSON sizes of its id and payload:
    its ENQUEUE, or the widest of its later records."""
    return max(_ENQUEUE_BYTES + id_json + payload_json, _LATER_BYTES + id_json)


def _enqueue(q: JobQueue, r: Record) -> None:
    q.enqueue(r["job"], r["payload"], r.get("not_before"))


def _dispatch(q: JobQueue, r: Record) -> None:
    q.dispatch(r["job"], Lease(r["attempt"], r["worker"], r["deadline"]))


def _ack(q: JobQueue, r: Record) -> None:
    q.complete(r["job"], r["attempt"], r.get("result"))


def _requeue(q: JobQueue, r: Record) -> None:
    q.requeue(r["job"], r["attempt"])


def _retry(q: JobQueue, r: Record) -> None:
    """FAIL or TIMEOUT: pending again, or delayed by its backoff."""
    not_before = r.get("not_before")
    if not_before is None:
        q.requeue(r["job"], r["attempt"])
    else:
        q.delay(r["job"], r["attempt"], not_before)


def _dead(q: JobQueue, r: Record) -> None:
    reason = r["reason"]
    if type(reason) is not str:
        raise ValueError(f"reason {brief(reason)} is not a string")
    q.kill(r["job"], r["attempt"], reason)


def _release(q: JobQueue, r: Record) -> None:
    q.release(r["job"])


def _revive(q: JobQueue, r: Record) -> None:
    q.revive(r["job"])


def _cancel(q: JobQueue, r: Record) -> None:
    q.cancel(r["job"])


def _config(q: JobQueue, r: Record) -> None:
    n = r["completed_retention"]
    if type(n) is not int or n < 0:
        raise ValueError(f"completed_retention {brief(n)} is not a count")
    q.set_retention(n)


APPLY: dict[str, Callable[[JobQueue, Record], None]] = {
    ENQUEUE: _enqueue,
    DISPATCH: _dispatch,
    ACK: _ack,
    FAIL: _retry,
    TIMEOUT: _retry,
    REQUEUE: _requeue,
    DEAD: _dead,
    RELEASE: _release,
    REVIVE: _revive,
    CANCEL: _cancel,
    CONFIG: _config,
}


class UnknownRecord(BeaverError):
    """A record whose type this version does not know (a newer writer, or corruption)."""


class BadRecord(BeaverError):
    """A record of a known type without the fields its type needs."""


def apply(q: JobQueue, r: Record, _lsn: int = 0) -> None:
    """Apply one logged record to the state; the only way state changes, live or in replay.
    (`_lsn` is what the WAL's scan passes along: recovery hands it `partial(apply, q)` as is.)"""
    kind = r["type"]
    fn = APPLY.get(kind) if kind.__class__ is str else None
    if fn is None:
        raise UnknownRecord(f"unknown record type {brief(kind)} at seq {r.get('seq')}")
    seq = r["seq"]
    if seq <= q.last_seq:
        raise BeaverError(f"record seq {seq} is not after the state's last seq {q.last_seq}")
    try:
        fn(q, r)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # it checksums, but is not a record
        raise BadRecord(f"record seq {seq} ({r['type']}) is malformed: {type(e).__name__}: {e}") from e
    q.last_seq = seq
