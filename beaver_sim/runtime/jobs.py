"""What `beaver jobs` and `beaver job ID` show: jobs by state, and one job with its attempts.

The state comes from the running controller over the control socket when one serves the data
directory (the `job` and `jobs` requests, answered by `answer` on the loop thread), else from the
files, read-only as `status` reads them (service.read_state). The state keeps a dead job's reason,
a completed job's result and a delayed job's not_before (snapshots too, since schema 3). What it
does not keep, each attempt's dispatch and end, comes from the WAL records the log still holds
(core.repair.inspect over every record): a checkpoint deletes the segments its snapshot covers,
and those records with them, so then `history` is partial (`history_complete` false). A dead job
whose reason only an older snapshot covered (schema 2 kept none) takes it from the log if it can."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.records import Record
from beaver_sim.core.repair import inspect
from beaver_sim.core.types import BeaverError, Config, Job, JobStatus
from beaver_sim.runtime.server import ask
from beaver_sim.storage.fs import RealFS
from beaver_sim.storage.wal import OnRecord

STATES = tuple(s.value for s in JobStatus)  # `--state` choices: the states that exist
CHUNK = 2000  # jobs looked at per part of a listing: ~2 ms to build and encode (1 M jobs), one loop turn
# Bytes of a listing's answer per piece, at most (plus one row): the server holds a piece until its
# client takes it, so a part of completed jobs with large results (2,000 x max_result_bytes, 128 MiB
# by default) is written a piece at a time, not built whole for a client that may never read it.
PIECE_BYTES = 1 << 20
OUTCOMES = {  # how a record ends an attempt
    R.ACK: "completed",
    R.FAIL: "failed",
    R.TIMEOUT: "timed_out",
    R.REQUEUE: "interrupted",
    R.DEAD: "dead",
}


def row(q: JobQueue, job: Job) -> dict[str, Any]:
    """`id, state, attempts`, plus a dead job's `reason`, a completed job's `result` and a delayed
    job's `not_before` (epoch seconds)."""
    out: dict[str, Any] = {"id": job.id, "state": job.status.value, "attempts": job.attempt}
    status = job.status
    if status is JobStatus.DEAD:
        out["reason"] = q.reasons.get(job.id)
    elif status is JobStatus.COMPLETED:
        out["result"] = q.results.get(job.id)
    elif status is JobStatus.DELAYED:
        out["not_before"] = q.not_before[job.id]
    return out


def select(q: JobQueue, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The jobs in `state` (all when None), in the order they were enqueued, at most `limit`."""
    return [r for rows in listing(q, state, limit) for r in rows]


def listing(
    q: JobQueue, state: str | None = None, limit: int | None = None, size: int = CHUNK
) -> Iterator[list[dict[str, Any]]]:
    """The rows of `select`, built `size` jobs at a time, so that the controller's loop can serve
    everything else between two parts (the server yields to it after each). What a listing gives
    when the state changes while it is produced: its ids are taken when it begins, as its first
    part is built (one copy of the keys, C speed, the one step that grows with the jobs: 10-15 ms
    and 8 MB at 1,000,000; only the first `limit` when no `state` filters), so jobs enqueued after
    that are not listed; each row, and whether it passes the `state` filter, is the job's state
    when its part is built; a job dropped meanwhile (`completed_retention`) is skipped; an id
    dropped and enqueued again meanwhile is listed at its first place with the new job's state.
    `limit` counts the rows given. A part may be empty (no job of it was in `state`). Nothing is
    copied before the first part: a listing the server refuses (busy) costs nothing."""
    ids = list(q.jobs if state is not None or limit is None else islice(q.jobs, limit))
    left = len(ids) if limit is None else limit
    for start in range(0, len(ids), size):
        if left <= 0:
            return
        rows = []
        for job_id in ids[start : start + size]:
            job = q.jobs.get(job_id)
            if job is not None and (state is None or job.status == state):
                rows.append(row(q, job))
                if len(rows) == left:
                    break
        left -= len(rows)
        yield rows


def encode(parts: Iterator[list[dict[str, Any]]]) -> Iterator[bytes]:
    """The answer `{"ok": true, "jobs": rows}` as `orjson.dumps` writes it, byte for byte, at least
    one piece per part of the listing (an empty part gives an empty piece: still one loop turn),
    and a new piece whenever one passes PIECE_BYTES. Rows are appended to the piece one by one and
    nothing but the piece is kept while it waits for its client: each bytes object orjson returns
    takes ~4 KB, so a part's 2,000 of them, held, were 8 MB per silent client."""
    yield b'{"ok":true,"jobs":['
    sep = b""
    for rows in parts:
        piece = bytearray()
        given = False
        for r in rows:
            piece += sep
            piece += orjson.dumps(r)
            sep = b","
            if len(piece) >= PIECE_BYTES:
                out, piece, given = bytes(piece), bytearray(), True
                yield out
        if piece or not given:
            out, piece = bytes(piece), bytearray()
            yield out
    yield b"]}"


def describe(q: JobQueue, job_id: str) -> dict[str, Any] | None:
    """One job as the state holds it, or None. The payload is parsed without caching it on the
    job: a job loaded from a snapshot keeps its payload as text until dispatched."""
    job = q.get(job_id)
    if job is None:
        return None
    raw, lease = job.raw, q.leases.get(job_id)
    return row(q, job) | {
        "payload": orjson.loads(raw) if isinstance(raw, str) else raw,
        "lease": None
        if lease is None
        else {"attempt": lease.attempt, "worker": lease.worker, "deadline": lease.deadline},
    }


def answer(q: JobQueue, req: dict[str, Any]) -> dict[str, Any] | Iterator[bytes]:
    """The control socket's answer to `{"op": "job", "id"}` or `{"op": "jobs", "state", "limit"}`;
    a listing's comes in pieces (`encode`), which the server writes one loop turn each."""
    if req.get("op") == "job":
        job_id = req.get("id")
        if not isinstance(job_id, str):
            return {"ok": False, "error": "bad request: id must be a string"}
        return {"ok": True, "job": describe(q, job_id)}
    state, limit = req.get("state"), req.get("limit")
    if state is not None and state not in STATES:
        return {"ok": False, "error": f"bad request: state must be one of {', '.join(STATES)}"}
    if limit is not None and (type(limit) is not int or limit < 0):
        return {"ok": False, "error": "bad request: limit must be an integer >= 0"}
    return encode(listing(q, state, limit))


def _state(config: Config) -> JobQueue:
    """The state from the files (no controller runs)."""
    from beaver_sim.runtime.service import read_state  # service imports this module for `answer`

    return read_state(config).state


def _log_records(config: Config, keep: Callable[[], OnRecord]) -> None:
    """Hand every record the log holds to a fresh `keep()`, oldest first, without changing a file
    (records before the newest snapshot too, as far as their segments remain). A checkpoint of a
    running controller may delete a segment under us: read again then."""
    fs = RealFS()
    for _ in range(3):
        try:
            inspect(fs, config.wal_dir, config.snapshot_dir, keep(), every_record=True)
        except FileNotFoundError:
            continue
        return
    raise BeaverError(f"{config.wal_dir}: the log kept changing while it was read; try again")


def list_jobs(config: Config, state: str | None, limit: int | None) -> list[dict[str, Any]]:
    """`beaver jobs`: rows of `id, state, attempts`, plus `reason` for dead jobs, `result` for
    completed ones and `not_before` for delayed ones."""
    reply = ask(config.data_dir, {"op": "jobs", "state": state, "limit": limit})
    rows = select(_state(config), state, limit) if reply is None else reply["jobs"]
    dead = {r["id"] for r in rows if r["state"] == JobStatus.DEAD and r.get("reason") is None}
    if dead:
        reasons: dict[str, str] = {}

        def keep() -> OnRecord:
            reasons.clear()

            def take(rec: Record, _lsn: int) -> None:
                if rec["type"] == R.DEAD and rec["job"] in dead:
                    reasons[rec["job"]] = rec["reason"]

            return take

        _log_records(config, keep)
        for r in rows:
            if r["id"] in dead:
                r["reason"] = reasons.get(r["id"])
    return rows


def find_job(config: Config, job_id: str) -> dict[str, Any] | None:
    """`beaver job ID`: the job (`id, state, attempts, payload, lease`) with its `reason`, the
    `history` of its attempts from the log, and whether a controller `running` answered; None if
    the data directory holds no such job."""
    reply = ask(config.data_dir, {"op": "job", "id": job_id})
    job = describe(_state(config), job_id) if reply is None else reply["job"]
    if job is None:
        return None
    mine: list[Record] = []

    def keep() -> OnRecord:
        mine.clear()

        def take(rec: Record, _lsn: int) -> None:
            if rec["job"] == job_id:
                mine.append(rec)

        return take

    _log_records(config, keep)
    complete, history = attempts(mine)
    reason = job.get("reason")
    if reason is None and job["state"] == JobStatus.DEAD and history:
        reason = history[-1].get("error")
    return job | {
        "reason": reason,
        "result": job.get("result"),
        "history": history,
        "history_complete": complete,
        "running": reply is not None,
    }


def attempts(recs: list[Record]) -> tuple[bool, list[dict[str, Any]]]:
    """A job's attempts from its records, oldest first, and whether the records start at its
    ENQUEUE (else older ones were deleted with their segments). An ENQUEUE after the job had ended
    and left the retention window starts a new job: only the newest one's attempts are given."""
    complete = False
    history: list[dict[str, Any]] = []
    for rec in recs:
        kind = rec["type"]
        if kind == R.ENQUEUE:
            complete, history = True, []
        elif kind == R.DISPATCH:
            history.append(
                {"attempt": rec["attempt"], "worker": rec["worker"], "deadline": rec["deadline"]}
                | {"dispatch_seq": rec["seq"], "outcome": None, "end_seq": None, "error": None}
            )
        elif kind in OUTCOMES:
            a = history[-1] if history and history[-1]["attempt"] == rec["attempt"] else None
            if a is None:  # its DISPATCH was in a deleted segment
                a = {"attempt": rec["attempt"], "worker": None, "deadline": None, "dispatch_seq": None}
                history.append(a)
            a.update(outcome=OUTCOMES[kind], end_seq=rec["seq"], error=rec.get("error", rec.get("reason")))
    return complete, history
