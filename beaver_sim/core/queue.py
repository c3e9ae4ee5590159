"""JobQueue: the whole state of the queue, pure and in memory.

Rules: every job is in exactly one state; pending jobs leave in FIFO order; in-flight jobs hold a
lease naming the current attempt; a delayed job waits outside the FIFO until its `not_before` (a
RELEASE record moves it to the back); completed, dead and cancelled are ended, and only a REVIVE
(`beaver requeue`) takes a dead job back to pending, with a fresh attempt budget: attempts keep
counting up (an attempt number names one attempt for good, so a late result of an old attempt is
stale), and `base` records where the new budget starts. A dead job's reason and a completed job's
result are kept (`reasons`, `results`) for as long as the job is. Every transition is O(1), the
operator's too (amortized): a cancelled pending job's id stays in the FIFO as a tombstone (counted in
`gone`) that the head skips, and a revived job's old place in the retention window stays too (counted
in `stale`), never searched for in a deque of a million ids while the loop waits. `dead` indexes the
dead jobs (oldest death first; after a snapshot, its dead in id-insertion order), so that `requeue
--dead` costs O(dead), not O(jobs).

Retention: with `retention` N > 0, only the N most recently ended (completed or dead) jobs stay in
memory, and so in the next snapshot; an older one is dropped as the next ends (counted in `dropped`).
The drop happens inside the transitions, so replay drops exactly what the live run dropped: the WAL
and the snapshots stay the source of truth. The window itself is part of the state: a snapshot
carries it and a CONFIG record changes it (core/records.py), so replay never depends on the config
file of the process that replays. A dropped id is unknown again: enqueued again, it is a
new job (duplicate detection holds only inside the window). The WAL's
`apply` (core/records.py) is the only caller at run time and in replay, so these rules hold for both.
"""

from __future__ import annotations

from collections import Counter, deque
from operator import attrgetter
from typing import Any

from beaver_sim.core import types as T
from beaver_sim.core.types import STARTS, IllegalTransition, Job, JobStatus, Lease
from beaver_sim.errors import brief

PENDING, IN_FLIGHT, COMPLETED, DEAD, DELAYED, CANCELLED = (
    JobStatus.PENDING,
    JobStatus.IN_FLIGHT,
    JobStatus.COMPLETED,
    JobStatus.DEAD,
    JobStatus.DELAYED,
    JobStatus.CANCELLED,
)
ENDED = (COMPLETED, DEAD, CANCELLED)
RETENTION_UNKNOWN = -1  # a snapshot written before the window was recorded: recovery sets it
_status = attrgetter("status")


class JobQueue:
    """Jobs by id, a FIFO of pending ids, leases of in-flight jobs, and the last applied seq."""

    __slots__ = (
        "base",
        "counts",
        "dead",
        "dropped",
        "ended",
        "gone",
        "jobs",
        "last_seq",
        "leases",
        "not_before",
        "pending",
        "reasons",
        "results",
        "retention",
        "stale",
        "stale_n",
    )

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        # the FIFO: pending ids, and tombstones of cancelled ones (never at the head: `pending[0]` is
        # the next job to dispatch and an empty deque means none); `gone` counts each id's tombstones,
        # which come before any live place of the same id (a dropped id enqueued again)
        self.pending: deque[str] = deque()
        self.gone: dict[str, int] = {}
        self.leases: dict[str, Lease] = {}
        self.counts: dict[JobStatus, int] = {s: 0 for s in JobStatus}
        self.last_seq = 0
        self.retention = 0  # ended jobs kept in memory; 0 keeps them all
        self.ended: deque[str] = deque()  # with retention: the ended jobs kept, oldest end first
        self.stale: dict[str, int] = {}  # places in `ended` of jobs revived since, by id (the first ones)
        self.stale_n = 0  # how many places in `ended` are stale
        self.dead: dict[str, None] = {}  # the dead jobs' ids, oldest death first (`requeue --dead`)
        self.dropped = 0  # ended jobs dropped from memory (retention)
        # sparse, by job id: what most jobs never have costs nothing
        self.reasons: dict[str, str] = {}  # a dead job's DEAD reason
        self.results: dict[str, Any] = {}  # a completed job's result (the handler's return value, not None)
        self.not_before: dict[str, float] = {}  # a delayed job's due time (epoch seconds)
        self.base: dict[str, int] = {}  # a requeued job's attempts before its fresh budget

    def set_retention(self, n: int) -> None:
        """Keep only the `n` most recently ended jobs (0: all). A state loaded without its end order
        (written with retention off) takes the ended jobs in id-insertion order: deterministic."""
        self.retention = n
        if not n:
            self.ended.clear()
            self.stale.clear()
            self.stale_n = 0
            return
        if not self.ended:
            self.ended.extend(k for k, j in self.jobs.items() if j.status in ENDED)
        while len(self.ended) - self.stale_n > n:
            self._drop()

    def _drop(self) -> None:
        ended = self.ended
        job_id = ended.popleft()
        while self.stale_n and job_id in self.stale:  # the place a revived job had: not its end
            _uncount(self.stale, job_id)
            self.stale_n -= 1
            job_id = ended.popleft()
        job = self.jobs.pop(job_id)
        self.counts[job.status] -= 1
        self.dropped += 1
        if job.status is DEAD:
            del self.dead[job_id]
        if self.reasons or self.results or self.base:
            self.reasons.pop(job_id, None)
            self.results.pop(job_id, None)
            self.base.pop(job_id, None)

    def _ended(self, job_id: str) -> None:
        self.ended.append(job_id)
        if len(self.ended) - self.stale_n > self.retention:
            self._drop()

    def pending_ids(self) -> list[str]:
        """The pending jobs' ids in FIFO order, without the tombstones (O(FIFO))."""
        return _live(self.pending, self.gone)

    def ended_ids(self) -> list[str]:
        """With retention: the ended jobs kept, oldest end first, without stale places (O(window))."""
        return _live(self.ended, self.stale)

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def move(self, job: Job, to: JobStatus) -> None:
        """Change a job's state and the counts, and nothing else: no rule checked, no FIFO or lease
        touched (the dead index is kept, a count by id). The transitions' building block; a replay
        handler that moves jobs as the seed did (sim/mutants.py, lab 3) must keep the FIFO and leases
        in step itself."""
        counts = self.counts
        if job.status is DEAD:
            del self.dead[job.id]
        elif to is DEAD:
            self.dead[job.id] = None
        counts[job.status] -= 1
        counts[to] += 1
        job.status = to

    def _refuse(self, job_id: str, action: str, kind: str, why: str = "") -> IllegalTransition:
        """The error of a transition (`action`, by a record of type `kind`) that the job's state does
        not allow (the slow path: the transitions below test the states of `STARTS[kind]` inline,
        and only call this to name what is wrong); `why` when the state allows it but not the rest."""
        job = self.jobs.get(job_id)
        if job is None:
            return IllegalTransition(job_id, None, action, "no such job")
        if job.status not in STARTS[kind]:
            return IllegalTransition(job_id, job.status, action)
        return IllegalTransition(job_id, job.status, action, why)

    # -- transitions ---------------------------------------------------------------------------
    # Each is one flat function (no helper calls on the good path): replay runs one per record, and
    # every check stays, in the same order, so live operation and replay refuse the same records.

    def enqueue(self, job_id: str, payload: dict[str, Any], not_before: float | None = None) -> Job:
        """Add a new job at the back of the pending FIFO, or delayed until `not_before`."""
        jobs = self.jobs
        if job_id in jobs:
            raise IllegalTransition(job_id, jobs[job_id].status, "enqueue", "duplicate id")
        if not_before is None:
            jobs[job_id] = job = Job(job_id, payload)
            self.pending.append(job_id)
            self.counts[PENDING] += 1
            return job
        if type(not_before) is not float and type(not_before) is not int:
            raise ValueError(f"not_before {brief(not_before)} is not a time")
        jobs[job_id] = job = Job(job_id, payload, 0, DELAYED)
        self.not_before[job_id] = not_before
        self.counts[DELAYED] += 1
        return job

    def delay(self, job_id: str, attempt: int, not_before: float) -> Job:
        """The current attempt failed or timed out and its retry waits (backoff) until `not_before`."""
        job = self.requeue(job_id, attempt)
        if type(not_before) is not float and type(not_before) is not int:
            raise ValueError(f"not_before {brief(not_before)} is not a time")
        self.pending.pop()
        self.move(job, DELAYED)
        self.not_before[job_id] = not_before
        return job

    def release(self, job_id: str) -> Job:
        """A delayed job is due: to the back of the pending FIFO."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not DELAYED:
            raise self._refuse(job_id, "release", T.RELEASE)
        del self.not_before[job_id]
        self.move(job, PENDING)
        self.pending.append(job_id)
        return job

    def cancel(self, job_id: str) -> Job:
        """A pending or delayed job is cancelled: ended, it never runs. A pending one's place in the
        FIFO becomes a tombstone (gone at once at the head), not searched for: O(1) amortized (the
        FIFO is rebuilt once its tombstones outnumber its pending jobs)."""
        job = self.jobs.get(job_id)
        if job is None or (job.status is not PENDING and job.status is not DELAYED):
            raise self._refuse(job_id, "cancel", T.CANCEL)
        if job.status is PENDING:
            gone = self.gone
            gone[job_id] = gone.get(job_id, 0) + 1
            self.move(job, CANCELLED)
            pending = self.pending
            if pending[0] in gone:
                self._skip_gone()
            elif len(pending) > 2 * self.counts[PENDING] + 64:  # tombstones outnumber the pending
                _compact(pending, gone)
        else:
            del self.not_before[job_id]
            self.move(job, CANCELLED)
        if self.retention:
            self._ended(job_id)
        return job

    def _skip_gone(self) -> None:
        """Pop the tombstones at the head of the FIFO: the head is a pending job, or there is none."""
        pending, gone = self.pending, self.gone
        while pending and pending[0] in gone:
            _uncount(gone, pending.popleft())

    def revive(self, job_id: str) -> Job:
        """A dead job goes back to pending with a fresh budget of attempts, counted from `base`
        (its attempts so far); its reason goes (the next DEAD writes a new one)."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not DEAD:
            raise self._refuse(job_id, "requeue", T.REVIVE)
        if self.retention:  # its place in the window goes stale (skipped when it reaches the front)
            stale = self.stale
            stale[job_id] = stale.get(job_id, 0) + 1
            self.stale_n += 1
            if 2 * self.stale_n > len(self.ended) + 64:  # stale places outnumber the kept ones
                _compact(self.ended, stale)
                self.stale_n = 0
        self.reasons.pop(job_id, None)
        self.base[job_id] = job.attempt
        self.move(job, PENDING)
        self.pending.append(job_id)
        return job

    def budget_used(self, job_id: str, attempt: int) -> int:
        """How many attempts of its current budget `attempt` is (all of them, unless requeued)."""
        return attempt - self.base[job_id] if self.base and job_id in self.base else attempt

    def peek(self) -> str | None:
        """The id of the next job to dispatch, or None."""
        return self.pending[0] if self.pending else None

    def dispatch(self, job_id: str, lease: Lease) -> Job:
        """Move the head of the FIFO in flight under `lease`, which must be its next attempt."""
        job = self.jobs.get(job_id)
        pending = self.pending
        if job is None or job.status is not PENDING:
            raise self._refuse(job_id, "dispatch", T.DISPATCH)
        if pending[0] != job_id:
            raise self._refuse(job_id, "dispatch", T.DISPATCH, "not at the head of the queue")
        if lease.attempt != job.attempt + 1:
            raise self._refuse(job_id, "dispatch", T.DISPATCH, f"attempt {lease.attempt} after {job.attempt}")
        pending.popleft()
        if self.gone and pending and pending[0] in self.gone:
            self._skip_gone()
        job.attempt = lease.attempt
        self.leases[job_id] = lease
        counts = self.counts
        counts[PENDING] -= 1
        counts[IN_FLIGHT] += 1
        job.status = IN_FLIGHT
        return job

    def complete(self, job_id: str, attempt: int, result: Any = None) -> Job:
        """The current attempt succeeded: the job is completed for good, with its result."""
        job = self.jobs.get(job_id)
        leases = self.leases
        if job is None or job.status is not IN_FLIGHT or leases[job_id].attempt != attempt:
            raise self._stale(job_id, attempt, "complete", T.ACK)
        del leases[job_id]
        counts = self.counts
        counts[IN_FLIGHT] -= 1
        counts[COMPLETED] += 1
        job.status = COMPLETED
        if result is not None:
            self.results[job_id] = result
        if self.retention:
            self._ended(job_id)
        return job

    def requeue(self, job_id: str, attempt: int) -> Job:
        """The current attempt failed, timed out or was interrupted: back of the FIFO."""
        job = self.jobs.get(job_id)
        leases = self.leases
        if job is None or job.status is not IN_FLIGHT or leases[job_id].attempt != attempt:
            raise self._stale(job_id, attempt, "requeue", T.REQUEUE)
        del leases[job_id]
        counts = self.counts
        counts[IN_FLIGHT] -= 1
        counts[PENDING] += 1
        job.status = PENDING
        self.pending.append(job_id)
        return job

    def kill(self, job_id: str, attempt: int, reason: str | None = None) -> Job:
        """The current attempt was the last one allowed: the job is dead, and `reason` says why."""
        job = self.jobs.get(job_id)
        leases = self.leases
        if job is None or job.status is not IN_FLIGHT or leases[job_id].attempt != attempt:
            raise self._stale(job_id, attempt, "mark dead", T.DEAD)
        del leases[job_id]
        counts = self.counts
        counts[IN_FLIGHT] -= 1
        counts[DEAD] += 1
        job.status = DEAD
        self.dead[job_id] = None
        if reason is not None:
            self.reasons[job_id] = reason
        if self.retention:
            self._ended(job_id)
        return job

    def _stale(self, job_id: str, attempt: int, action: str, kind: str) -> IllegalTransition:
        """Why an attempt cannot end: no such job, not in flight, or not its current attempt."""
        lease = self.leases.get(job_id)
        current = lease.attempt if lease is not None else None
        why = f"attempt {attempt} is not the current attempt {current}"
        return self._refuse(job_id, action, kind, why)

    # -- inspection ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counts per state plus `last_seq` and `jobs`: the `status --json` contract (with
        retention, `dropped`: ended jobs no longer in memory, not in the counts)."""
        c = self.counts
        out = {
            "pending": c[PENDING],
            "in_flight": c[IN_FLIGHT],
            "completed": c[COMPLETED],
            "dead": c[DEAD],
            "delayed": c[DELAYED],
            "cancelled": c[CANCELLED],
            "jobs": len(self.jobs),
            "last_seq": self.last_seq,
        }
        if self.retention or self.dropped:
            out["dropped"] = self.dropped
        return out

    def validate(self) -> None:
        """Check every structural rule; raise AssertionError naming the first broken one."""
        seen = {s: 0 for s in JobStatus}
        seen.update(Counter(map(_status, self.jobs.values())))
        if seen != self.counts:
            raise AssertionError(f"state counts {self.counts} differ from the jobs {seen}")
        self.check_links()

    def check_links(self) -> None:
        """The pending FIFO, the leases, the dead index and the retention window agree with the jobs'
        states, given counts that are right (core/codec.py builds them in bulk from the jobs, then
        checks only this). O(FIFO + in flight + dead + window): each pending id is a pending job
        (once; tombstones as counted, none at the head), each lease an in-flight job with its
        attempt, each indexed id a dead job, each id in the window an ended job (once; stale places
        as counted), and there are as many of each as the counts say."""
        jobs, leases, pending, counts = self.jobs, self.leases, self.pending, self.counts
        if pending and pending[0] in self.gone:
            raise AssertionError(f"a tombstone ({brief(pending[0])}) is at the head of the pending FIFO")
        live = _checked_live(pending, self.gone, "the pending FIFO")
        if len(set(live)) != len(live):
            raise AssertionError("a job id appears twice in the pending FIFO")
        for job_id in live:
            job = jobs.get(job_id)
            if job is None or job.status is not PENDING:
                raise AssertionError(f"job {brief(job_id)} is in the pending FIFO but not pending")
        if counts[PENDING] != len(live):
            raise AssertionError("a pending job is missing from the pending FIFO")
        for job_id, lease in leases.items():
            job = jobs.get(job_id)
            if job is None or job.status is not IN_FLIGHT:
                state = job.status if job is not None else "unknown"
                raise AssertionError(f"job {brief(job_id)}: state {state} but lease=True")
            if lease.attempt != job.attempt:
                raise AssertionError(f"job {brief(job_id)}: lease attempt differs from job attempt")
        if counts[IN_FLIGHT] != len(leases):  # only on error: find the in-flight job with no lease
            job_id = next(k for k, j in jobs.items() if j.status is IN_FLIGHT and k not in leases)
            raise AssertionError(f"job {brief(job_id)}: state {IN_FLIGHT} but lease=False")
        for job_id in self.dead:
            job = jobs.get(job_id)
            if job is None or job.status is not DEAD:
                raise AssertionError(f"job {brief(job_id)} is in the dead index but not dead")
        if counts[DEAD] != len(self.dead):
            raise AssertionError("a dead job is missing from the dead index")
        if self.retention > 0 or self.ended:  # the retention window: every ended job, each once, oldest first
            if self.stale_n != (n := sum(self.stale.values())):
                raise AssertionError(f"{self.stale_n} stale places in the retention window, {n} by id")
            ended = _checked_live(self.ended, self.stale, "the retention window")
            if len(set(ended)) != len(ended):
                raise AssertionError("a job id appears twice in the retention window")
            if self.retention > 0 and len(ended) > self.retention:
                raise AssertionError(f"{len(ended)} ended jobs kept, retention is {self.retention}")
            for job_id in ended:
                job = jobs.get(job_id)
                if job is None or job.status not in ENDED:
                    raise AssertionError(f"job {brief(job_id)} is in the retention window but has not ended")
            if len(ended) != sum(counts[s] for s in ENDED):
                raise AssertionError("an ended job is missing from the retention window")
        elif self.stale or self.stale_n:
            raise AssertionError("stale places counted in a retention window that is off")
        self._check_sparse()

    def _check_sparse(self) -> None:
        """Each kept reason is a dead job's, each result a completed job's, each due time a delayed
        job's (all of them), each budget base a known job's at most its attempts."""
        jobs = self.jobs
        for field, table, states in (
            ("reason", self.reasons, (DEAD,)),
            ("result", self.results, (COMPLETED,)),
            ("not_before", self.not_before, (DELAYED,)),
        ):
            for job_id, value in table.items():
                job = jobs.get(job_id)
                if job is None or job.status not in states:
                    raise AssertionError(f"job {brief(job_id)} has a {field} but is not {states[0]}")
                if field == "not_before" and type(value) is not float and type(value) is not int:
                    raise AssertionError(f"job {brief(job_id)}: not_before {brief(value)} is not a time")
                if field == "reason" and type(value) is not str:
                    raise AssertionError(f"job {brief(job_id)}: reason {brief(value)} is not a string")
        if len(self.not_before) != self.counts[DELAYED]:
            raise AssertionError("a delayed job has no not_before")
        for job_id, base in self.base.items():
            job = jobs.get(job_id)
            if job is None or type(base) is not int or not 0 <= base <= job.attempt:
                raise AssertionError(f"job {brief(job_id)}: budget base {brief(base)} is past its attempts")

    # -- the state as plain data -----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything needed to rebuild this queue, as plain JSON-ready data (with retention, the
        end order and the dropped count too: replay after this snapshot drops what the live run did).
        The body of a schema-1 snapshot, which core/codec.py still reads; compare two states with it."""
        state = {
            "schema": 1,
            "last_seq": self.last_seq,
            "jobs": [[j.id, j.status, j.attempt, j.payload] for j in self.jobs.values()],  # StrEnum: a str
            "pending": self.pending_ids(),
            "leases": [[k, v.attempt, v.worker, v.deadline] for k, v in self.leases.items()],
        }
        if self.retention or self.dropped:
            state["ended"] = self.ended_ids()
            state["dropped"] = self.dropped
            state["retention"] = self.retention
        return state


def _uncount(counts: dict[str, int], key: str) -> None:
    """One fewer of `key` in `counts` (gone from it at zero)."""
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


def _live(fifo: deque[str], skip: dict[str, int]) -> list[str]:
    """`fifo` without the places `skip` counts: of each id, its first `skip[id]` places."""
    if not skip:
        return list(fifo)
    left = dict(skip)
    out = []
    for job_id in fifo:
        n = left.get(job_id)
        if n:
            left[job_id] = n - 1
        else:
            out.append(job_id)
    return out


def _compact(fifo: deque[str], skip: dict[str, int]) -> None:
    """Drop the places `skip` counts from `fifo`, in place (whoever holds the deque sees it)."""
    live = _live(fifo, skip)
    fifo.clear()
    fifo.extend(live)
    skip.clear()


def _checked_live(fifo: deque[str], skip: dict[str, int], name: str) -> list[str]:
    """`_live`, after checking that `skip` counts places `fifo` has (positive counts, each met)."""
    for job_id, n in skip.items():
        if type(n) is not int or n < 1:
            raise AssertionError(f"job {brief(job_id)}: {brief(n)} places skipped in {name}")
    live = _live(fifo, skip)
    if len(fifo) - len(live) != sum(skip.values()):
        raise AssertionError(f"{name} holds fewer skipped places than counted")
    return live
