"""Controller: dispatch, results, timeouts and snapshots as callbacks on an injected clock.

The seed ran four goroutine loops under one mutex and polled every 100 ms. Here every change is an
event on one thread: a record is appended to the WAL, then applied (Storage.append), and nothing
leaves the controller before its record is written: a worker starts an attempt only after its
DISPATCH record is flushed, an enqueue is acknowledged only once its ENQUEUE is durable under the
fsync policy. Appends made in one clock turn share one write and one fdatasync (group commit).

Rules the seed got wrong: failures *and* timeouts count toward `max_retry`, then the job is dead;
a result or timeout for an attempt that is no longer current is stale and ignored; jobs in flight
when the previous process died are requeued (the interrupted attempt counts, as SQS's
maxReceiveCount does).

A worker slot is free only once its attempt is gone. At a timeout the workers are told to abandon
the attempt: they either release the slot at once (the attempt runs on without one, as a detached
thread) or hold it while they stop the attempt (kill its process, interrupt its thread), and its
late `done` then frees the slot. So a hung handler never lets a new attempt start without a worker
to run on, and no attempt's timeout is spent waiting for one.

A handler's result is kept in its ACK if it is JSON and fits `max_result_bytes` (and the record);
otherwise the attempt fails, saying why. A delayed job (or a retry waiting out its backoff) has a
timer for its `not_before`, which is wall time (the clock's `epoch`) so that it holds across
restarts: when it fires a RELEASE record makes the job pending. `requeue` and `cancel` are the
operator's transitions, each checked whole before a record is written."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.draws import Draws
from beaver_sim.core.durable import Storage
from beaver_sim.core.limits import PayloadRefused, all_fit, check_job, check_when, result_json
from beaver_sim.core.records import apply
from beaver_sim.core.types import Abandoned, BeaverError, Clock, Config, DuplicateJob, JobStatus, Workers
from beaver_sim.errors import brief

DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0)  # the seed's histogram buckets, seconds
# Writes the state as a snapshot (`Storage.save_snapshot`) and calls back with whether it is
# durable: at once (`write_inline`), or later on the controller's thread (runtime/snapshots.py).
SnapshotWriter = Callable[[Storage, Callable[[bool], None]], None]


def write_inline(storage: Storage, done: Callable[[bool], None]) -> None:
    """The snapshot written before returning (the simulator's and the tests' writer); a failure raises."""
    storage.save_snapshot()
    done(True)


CANCEL_REFUSED = (
    "only a pending or delayed job can be cancelled: an attempt in flight may already have had effects"
)


@dataclass(slots=True)
class Counters:
    """Plain counters the metrics collector reads at scrape time (no locks on the hot path)."""

    dispatched: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    timeouts: int = 0
    abandoned: int = 0  # timed out and left running without a slot (the workers could not stop it)
    killed: int = 0  # timed out and stopped by the workers, holding its slot until gone
    stale: int = 0
    requeued_on_recovery: int = 0
    snapshots: int = 0
    enqueued: int = 0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def observe_duration(self, seconds: float) -> None:
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The answer to an enqueue: how many jobs were new, how many were already present."""

    new: int
    already_present: int


def _check_when(job_id: str, when: Any) -> None:
    """None, {"delay": seconds} or {"not_before": epoch seconds} (limits.check_when), else
    BeaverError naming the job."""
    if when is None:
        return
    if not isinstance(when, dict) or len(when) != 1 or not {"delay", "not_before"} >= set(when):
        raise BeaverError(f"job {brief(job_id)}: when must be {{delay: seconds}} or {{not_before: seconds}}")
    key, value = next(iter(when.items()))
    try:
        check_when(key, value)
    except ValueError as e:
        raise BeaverError(f"job {brief(job_id)}: {key} {brief(value)} {e}") from None


def _canonical(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


class Controller:
    """Runs one data directory's queue on `clock` with `workers`; it does no I/O of its own.
    `write_snapshot` writes a checkpoint's snapshot (inline unless the runtime hands another).
    `log` calls the `append` hook only when a subclass overrides it (bound once per class, as the
    WAL's hooks are): every record goes through `log`."""

    _own_append = False  # set per subclass by __init_subclass__: does it override `append`?

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_append = cls.append is not Controller.append

    def __init__(
        self,
        config: Config,
        clock: Clock,
        storage: Storage,
        workers: Workers,
        write_snapshot: SnapshotWriter = write_inline,
    ) -> None:
        problems = config.problems()
        if problems:
            raise BeaverError("; ".join(problems))
        self.config, self.clock, self.storage, self.workers = config, clock, storage, workers
        self.state = storage.state
        # `log` may do Storage.append's work inline: neither this class nor the storage's overrides it
        self._fused = not self._own_append and type(storage).append is Storage.append
        # Workers.payload_read_only: the pool neither changes nor keeps the payload dicts it is
        # handed, so each attempt gets the stored one rather than a copy through JSON
        self._payload_read_only = getattr(workers, "payload_read_only", False) is True
        self.counters = Counters()
        self.free_workers: deque[int] = deque(range(config.worker_count))
        self.stuck: dict[tuple[str, int], int] = {}  # (job, attempt) timed out, still holding worker
        self._timers: dict[str, Any] = {}
        self._delays: dict[str, Any] = {}  # delayed jobs' release timers
        self.draws = Draws(config.seed)  # the backoff's jitter: the same in both worlds
        self._to_start: list[tuple[str, int, int]] = []  # dispatched, waiting for their record
        self._acks: list[Callable[[], None]] = []  # enqueue acknowledgements waiting for a flush
        self._flush_handle: Any = None
        self._sync_handle: Any = None
        self._snapshot_handle: Any = None
        self.last_snapshot_seq = storage.report.snapshot_seq
        self._write_snapshot = write_snapshot
        self.snapshot_in_flight: int | None = None  # the seq of the snapshot being written
        self.started = False
        self.stopped = False
        if self.state.retention != config.completed_retention:  # replay must not read the config file
            self.log(R.config(config.completed_retention))  # in effect from here on, live and replayed
        self._fit_accepted()

    def _fit_accepted(self) -> None:
        """Jobs accepted under a larger max_record_bytes (lowered since) still run: the log takes
        their later records whatever the new limit, which the door applies to new jobs only. The
        common case costs one pass over the live ids' lengths. A cancelled job's tombstone in the
        pending FIFO is not live: nothing more is ever written for it."""
        live = [*self.state.pending_ids(), *self.state.leases]
        wal = self.storage.wal
        if not live or R.record_bound(6 * max(map(len, live)) + 2, 0) <= wal.max_record:  # 6: \u001f
            return
        wal.max_record = max(wal.max_record, *(R.record_bound(len(orjson.dumps(j)), 0) for j in live))

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Requeue what the previous process left in flight, arm the delayed jobs' timers (at their
        recorded not_before, however long the controller was down), then start dispatching."""
        for job_id, lease in list(self.state.leases.items()):
            self.end_interrupted(job_id, lease.attempt)
        for job_id, not_before in list(self.state.not_before.items()):
            self._arm_release(job_id, not_before)
        self.started = True
        self._dispatch()

    def stop(self, snapshot: bool = True) -> None:
        """Stop dispatching, cancel timers, make the log durable and (optionally) snapshot. Jobs
        still in flight stay in flight in the log and are requeued by the next start. A snapshot
        still being written must have ended (or been abandoned) first."""
        self.halt()
        if snapshot and self.snapshot_due:
            self.checkpoint()
        self.storage.close()

    def halt(self) -> None:
        """The first half of `stop`: no more dispatch, no timer, the log flushed and durable."""
        self.stopped = True
        for handle in (
            self._flush_handle,
            self._sync_handle,
            self._snapshot_handle,
            *self._timers.values(),
            *self._delays.values(),
        ):
            if handle is not None:
                self.clock.cancel(handle)
        self._timers.clear()
        self._delays.clear()
        self._flush_handle = self._sync_handle = self._snapshot_handle = None
        self.flush()
        self.storage.wal.sync()

    @property
    def snapshot_due(self) -> bool:
        """The log holds records the last snapshot does not (the final snapshot of a stop)."""
        return self.state.last_seq > self.last_snapshot_seq

    def drain(self) -> None:
        """Dispatch nothing more; running attempts still end by result or timeout, so a clean
        shutdown (stop once no lease is left) costs no job an attempt."""
        self.started = False

    @property
    def acks_waiting(self) -> int:
        """Enqueue acknowledgements (and operator commands' answers) waiting for the turn's flush:
        clients told nothing yet about records already appended."""
        return len(self._acks)

    @property
    def idle(self) -> bool:
        """Nothing pending, delayed or in flight, nothing waiting to be written."""
        state = self.state
        return not (state.pending or state.leases or state.not_before or self._acks or self._to_start)

    # -- the event handlers --------------------------------------------------------------------

    def enqueue(
        self, jobs: Iterable[tuple[Any, ...]], on_durable: Callable[[], None] | None = None
    ) -> Enqueued:
        """Log the new jobs of a batch; `on_durable` runs once the whole batch is durable under the
        fsync policy. Retry-safe: a job whose id is already known with the identical payload is
        already present (not logged again), so resending a batch whose answer was lost, or that
        failed half-written, is always right; the same id with another payload is a conflict.
        The whole batch is checked first (conflicts, and `limits.check_job`: ids, payloads stored
        exactly, every later record within max_record_bytes): all or nothing. A job is
        `(id, payload)`, or `(id, payload, when)` with `when` `{"delay": seconds}` or
        `{"not_before": epoch seconds}`: delayed until then (made absolute here, on the clock's
        epoch, so that it holds across restarts; a time already past is no delay)."""
        new, present = self._check_batch(jobs)
        now = self.clock.epoch()
        for job_id, payload, when in new:
            not_before = None if when is None else when.get("not_before", now + when.get("delay", 0.0))
            if not_before is not None and not_before <= now:
                not_before = None
            self.log(R.enqueue(job_id, payload, not_before))
            if not_before is not None and self.started:  # else start() arms it
                self._arm_release(job_id, not_before)
        self.counters.enqueued += len(new)
        if on_durable is not None:
            # also for jobs already present: their records may not be durable yet (another batch
            # of this turn, a recovered tail not yet synced), so they wait for the same flush
            self._acks.append(on_durable)
            if self._flush_handle is None:  # nothing logged, but still answered after a flush
                self._flush_handle = self.clock.call_later(0, self._flush)
        self._dispatch()
        return Enqueued(len(new), present)

    def _check_batch(self, jobs: Iterable[tuple[Any, ...]]) -> tuple[list[tuple[str, Any, Any]], int]:
        """(new jobs to log as (id, payload, when), in batch order, each once; how many ids were
        already present). Payloads compare as canonical JSON (sorted keys), so 1 and true or 1
        and 1.0 differ; a job's delay does not count (a resent batch is sent later)."""
        known = self.state.jobs
        limit = self.config.max_record_bytes
        jobs = jobs if type(jobs) is list else list(jobs)
        # a batch of new jobs without delays, each passing check_job: found in a few passes over the
        # whole batch; anything else (or any doubt) goes job by job, which names the first problem
        if set(map(type, jobs)) <= {tuple, list} and set(map(len, jobs)) == {2}:
            ids, payloads = [job[0] for job in jobs], [job[1] for job in jobs]
            # (all_fit first: the ids are strings before they are hashed)
            if all_fit(ids, payloads, limit) and len(dict.fromkeys(ids)) == len(ids):
                if known.keys().isdisjoint(ids):
                    return [(job_id, payload, None) for job_id, payload in jobs], 0
                # a batch sent again (its answer lost): the known ids with the payloads they hold
                if all(j not in known or _canonical(known[j].payload) == _canonical(p) for j, p in jobs):
                    fresh = [(job_id, payload, None) for job_id, payload in jobs if job_id not in known]
                    return fresh, len(jobs) - len(fresh)
        new: dict[str, tuple[dict[str, Any], Any]] = {}
        present: set[str] = set()
        for job in jobs:
            job_id, payload, when = job if len(job) == 3 else (*job, None)
            check_job(job_id, payload, limit)  # every record it may ever have fits: it can run
            _check_when(job_id, when)
            earlier = known[job_id].payload if job_id in known else new.get(job_id, (None,))[0]
            if earlier is None:
                new[job_id] = (payload, when)
            elif _canonical(earlier) != _canonical(payload):
                where = "already enqueued" if job_id in known else "earlier in the same batch"
                raise DuplicateJob(f"job id {brief(job_id)} is {where} with a different payload")
            elif job_id in known:
                present.add(job_id)
        return [(k, p, w) for k, (p, w) in new.items()], len(present)

    def on_result(self, job_id: str, attempt: int, ok: bool, detail: object) -> None:
        """A worker finished attempt `attempt` of `job_id`. Not ok: `detail` is the error, any object
        of any size, which the record stores as bounded text (`records.reason`). Ok: it is the
        handler's return value, kept in the ACK (`_result`); one that cannot be kept fails the attempt."""
        lease = self.state.leases.get(job_id)
        if lease is None or lease.attempt != attempt or self.stopped:
            self.counters.stale += 1  # its attempt timed out, or the job moved on
            worker = self.stuck.pop((job_id, attempt), None)
            if worker is not None:  # the timed-out attempt is gone at last: its slot is free
                self.free_workers.append(worker)
                self._dispatch()
            return
        clock, counters = self.clock, self.counters
        clock.cancel(self._timers.pop(job_id))
        self.free_workers.append(lease.worker)
        seconds = clock.now() - (lease.deadline - self.config.task_timeout)
        counters.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1  # observe_duration: hot
        counters.duration_sum += seconds
        result = None
        if ok and detail is not None:  # a result to keep (most handlers return None)
            result, detail = self._result(job_id, detail)
            ok = detail is None
        if ok:
            self.log(R.ack(job_id, attempt, result))
            counters.completed += 1
        else:
            counters.failed += 1
            text = "error" if detail is None else R.reason(detail) or "error"  # cut: a FAIL always fits
            self.retry_or_bury(job_id, attempt, R.fail(job_id, attempt, text), "failed: " + text)
        self._dispatch()

    def _result(self, job_id: str, value: object) -> tuple[Any, str | None]:
        """(the result to keep, None), or (None, why it cannot be kept): not JSON as stored, or
        larger than max_result_bytes or than the job's ACK record has room for. The kept value is
        the JSON decoded again: the handler keeps no reference to it, and replay rebuilds the same."""
        if value is None:
            return None, None
        try:
            body = result_json(value)
        except PayloadRefused as e:
            return None, f"result refused: {e}"
        limit = self.config.max_result_bytes
        room = R.result_room(len(orjson.dumps(job_id)), self.storage.wal.max_record)
        if len(body) > min(limit, room):
            bound = f"max_result_bytes = {limit}" if limit <= room else f"the {room} bytes the ACK can hold"
            return None, f"result refused: {len(body)} bytes of JSON, over {bound}"
        return orjson.loads(body), None

    def _on_timeout(self, job_id: str, attempt: int) -> None:
        lease = self.state.leases[job_id]
        del self._timers[job_id]
        held, how = self.abandon(job_id, attempt, lease.worker)  # its result will be stale
        if held:
            self.stuck[(job_id, attempt)] = lease.worker
            self.counters.killed += 1
        else:
            self.free_workers.append(lease.worker)
            self.counters.abandoned += 1
        self.counters.timeouts += 1
        why = f"timeout: {how}" if how else "timeout"
        self.retry_or_bury(job_id, attempt, R.timeout(job_id, attempt), why)
        self._dispatch()

    # -- extension points ------------------------------------------------------------------------
    # A subclass (the simulator's broken variants, a lab's learner code) may override these, within
    # what each docstring says it must keep; every other method is fixed.

    def retry_or_bury(self, job_id: str, attempt: int, retry: R.Record, why: str) -> None:
        """An attempt failed or timed out (`retry`: its FAIL or TIMEOUT record; `why`: the reason a
        DEAD record would give): dead if `attempt` used the last attempt of the job's budget, else
        `retry`, pending at once or, under `retry_backoff`, delayed until its `not_before`. A
        subclass may decide otherwise; it must `log` exactly one record that ends the attempt
        (FAIL, TIMEOUT, REQUEUE or DEAD) and count it (`counters.dead` or `counters.retried`)."""
        if self.state.budget_used(job_id, attempt) >= self.config.max_retry:
            self.log(R.dead(job_id, attempt, why))
            self.counters.dead += 1
            return
        not_before = self._backoff(job_id, attempt)
        if not_before is not None:
            retry["not_before"] = not_before
        self.log(retry)
        if not_before is not None:
            self._arm_release(job_id, not_before)
        self.counters.retried += 1

    def end_interrupted(self, job_id: str, attempt: int) -> None:
        """At `start`, attempt `attempt` that the previous process left in flight: the crash ended
        it, and it counts (as SQS's maxReceiveCount does), so the job is dead if that was the last
        of its budget, else requeued. A subclass may decide otherwise; like `retry_or_bury`, it
        must `log` exactly one record that ends the attempt, and count it."""
        if self.state.budget_used(job_id, attempt) >= self.config.max_retry:
            self.log(R.dead(job_id, attempt, "interrupted"))
            self.counters.dead += 1
        else:
            self.log(R.requeue(job_id, attempt))
            self.counters.requeued_on_recovery += 1

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        """At its deadline, what becomes of attempt `attempt` and its slot `worker`: the workers'
        answer (`Workers.abandon`: the slot held until the attempt is gone, or free now). A subclass
        may answer for them (a mutant frees the slot and never tells them); whatever it returns, the
        attempt's result is stale from here on and a held slot is freed only by its `done`."""
        return self.workers.abandon(job_id, attempt, worker)

    def _backoff(self, job_id: str, attempt: int) -> float | None:
        """When the retry after `attempt` may start (epoch seconds), or None without retry_backoff:
        base x 2^(n-1), n the attempts of this budget so far, capped at max, times a jitter drawn
        in [1 - jitter, 1] for (job, attempt): deterministic, and the same in both worlds."""
        backoff = self.config.retry_backoff
        if backoff is None:
            return None
        n = self.state.budget_used(job_id, attempt)
        wait: float = min(backoff.max, backoff.base * 2 ** (n - 1))
        wait *= 1 - backoff.jitter * self.draws.jitter(job_id, attempt)
        return self.clock.epoch() + wait

    def _arm_release(self, job_id: str, not_before: float) -> None:
        """Release `job_id` once the clock's epoch reaches `not_before` (now, if it has)."""
        clock = self.clock
        when = clock.now() + max(0.0, not_before - clock.epoch())
        self._delays[job_id] = clock.call_at(when, self._release, job_id)

    def _release(self, job_id: str) -> None:
        del self._delays[job_id]
        not_before = self.state.not_before.get(job_id)
        if self.stopped or not_before is None:
            return
        if self.clock.epoch() < not_before:  # the loop's clock ran ahead of the wall's: never early
            self._arm_release(job_id, not_before)
            return
        self.log(R.release(job_id))
        self._dispatch()

    # -- the operator's transitions ------------------------------------------------------------

    def requeue(self, ids: Iterable[str], on_durable: Callable[[], None] | None = None) -> int:
        """Dead jobs back to pending, each with a fresh budget of max_retry attempts. All or
        nothing: BeaverError naming the first id that is unknown or not dead. Returns how many."""
        ids = list(dict.fromkeys(ids))
        for job_id in ids:
            self._check_op(job_id, "requeue", (JobStatus.DEAD,), "only a dead job can be requeued")
        for job_id in ids:
            self.log(R.revive(job_id))
        self._when_durable(on_durable)
        self._dispatch()
        return len(ids)

    def cancel(self, ids: Iterable[str], on_durable: Callable[[], None] | None = None) -> int:
        """Pending or delayed jobs cancelled: they never run. All or nothing: BeaverError naming the
        first id that is unknown, in flight (its handler is running and may have had effects: what
        it did cannot be taken back, so it ends as it ends) or already ended. Returns how many."""
        ids = list(dict.fromkeys(ids))
        for job_id in ids:
            self._check_op(job_id, "cancel", (JobStatus.PENDING, JobStatus.DELAYED), CANCEL_REFUSED)
        for job_id in ids:
            self.log(R.cancel(job_id))
            handle = self._delays.pop(job_id, None)
            if handle is not None:
                self.clock.cancel(handle)
        self._when_durable(on_durable)
        return len(ids)

    def _check_op(self, job_id: object, op: str, states: tuple[JobStatus, ...], why: str) -> None:
        job = self.state.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise BeaverError(f"cannot {op} job {brief(job_id)}: no such job")
        if job.status not in states:
            raise BeaverError(f"cannot {op} job {brief(job_id)}: it is {job.status.value} ({why})")

    def _when_durable(self, on_durable: Callable[[], None] | None) -> None:
        if on_durable is not None:
            self._acks.append(on_durable)
            if self._flush_handle is None:
                self._flush_handle = self.clock.call_later(0, self._flush)

    def _dispatch(self) -> None:
        pending, free = self.state.pending, self.free_workers
        if not (pending and free) or self.stopped or not self.started:
            return  # (most calls: the test first, before the loop's locals)
        jobs = self.state.jobs
        timeout, now = self.config.task_timeout, self.clock.now()
        log, call_at, on_timeout = self.log, self.clock.call_at, self._on_timeout
        timers, to_start, counters = self._timers, self._to_start, self.counters
        while free and pending:
            job_id = pending[0]
            attempt = jobs[job_id].attempt + 1
            worker = free.popleft()
            log(R.dispatch(job_id, attempt, worker, now + timeout))
            timers[job_id] = call_at(now + timeout, on_timeout, job_id, attempt)
            to_start.append((job_id, attempt, worker))
            counters.dispatched += 1

    # -- the log -------------------------------------------------------------------------------

    def log(self, rec: R.Record) -> None:
        """The one way the controller changes the state: `append` the record, and see that this
        turn's flush and the snapshot timer are armed."""
        if self._fused:  # Storage.append, inline: logged, then applied (one call fewer a record)
            wal = self.storage.wal
            wal.append(rec)
            try:
                apply(self.state, rec)
            except BaseException:
                wal.discard_last()
                raise
        elif self._own_append:
            self.append(rec)
        else:
            self.storage.append(rec)  # what `append` does, one call fewer
        if self._flush_handle is None:
            self._flush_handle = self.clock.call_later(0, self._flush)
        if self._snapshot_handle is None and self.config.snapshot_interval > 0:
            self._snapshot_handle = self.clock.call_later(self.config.snapshot_interval, self._snapshot)

    def append(self, rec: R.Record) -> None:
        """Put `rec` in the log and the state: `Storage.append`, logged then applied, under the
        controller's one thread. A subclass may change how records reach the log within a turn (a
        mutant reorders them, as a lock left out would); it must apply each record to `state` once,
        keep `state.last_seq` the highest seq logged, and have every record appended by the time
        `flush` writes the turn."""
        self.storage.append(rec)

    def _flush(self) -> None:
        """The end-of-turn timer (its name is what the clock's event log shows)."""
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """The end of a turn: one write (and, under `always`, one fdatasync) for everything logged
        in it (`WriteAheadLog.flush`), then `release_turn`. A subclass may commit the turn another
        way (a lab hands the lines to the learner: `WriteAheadLog.take_pending`); it must call
        `release_turn` only once the turn's records are as durable as the fsync policy promises."""
        wal = self.storage.wal
        wal.flush()
        if wal.fsync == "interval" and self._sync_handle is None and wal.durable_lsn < wal.written_lsn:
            self._sync_handle = self.clock.call_later(self.config.fsync_interval, self._sync)
        self.release_turn()

    def release_turn(self) -> None:
        """What waited for the turn's records: start the attempts dispatched in it, acknowledge its
        enqueues (and operator commands). Called by `flush` once they are written."""
        to_start, self._to_start = self._to_start, []
        acks, self._acks = self._acks, []
        if not self.stopped:
            jobs, submit, done = self.state.jobs, self.workers.submit, self.on_result
            if self._payload_read_only:  # the stored dict itself: nothing will change it
                for job_id, attempt, worker in to_start:
                    submit(job_id, attempt, worker, jobs[job_id].payload, done)
            else:
                for job_id, attempt, worker in to_start:
                    submit(job_id, attempt, worker, jobs[job_id].copy_payload(), done)  # each its own
        for ack in acks:
            ack()

    def _sync(self) -> None:
        """The `fsync_interval` timer."""
        self._sync_handle = None
        self.interval_sync()

    def interval_sync(self) -> None:
        """Under `fsync: interval`, `fsync_interval` after a flush left records not durable: sync
        the log, which bounds what a power loss may lose to that window. A subclass may leave it
        out (the mutant that shows what the window is for); nothing else syncs until a rotation,
        snapshot or stop."""
        self.storage.wal.sync()

    def _snapshot(self) -> None:
        """Every `snapshot_interval`, if the log has grown by `snapshot_log_ratio` x the number of
        jobs since the last snapshot: a snapshot costs O(jobs), so this keeps its cost per record
        constant (Redis rewrites its AOF on the same rule)."""
        self._snapshot_handle = None
        grown = self.state.last_seq - self.last_snapshot_seq
        if grown > 0 and grown >= self.config.snapshot_log_ratio * len(self.state.jobs):
            self.checkpoint()  # else the next logged record arms the timer again

    def checkpoint(self) -> None:
        """Snapshot the state at its last seq, then compact the log (Storage.checkpoint's order).
        At most one snapshot is in flight: while one is written this does nothing. A snapshot that
        fails in the background (done(False)) changes nothing: the log still holds every record,
        and the next record logged arms the timer again."""
        if self.snapshot_in_flight is not None:
            return
        seq = self.storage.begin_checkpoint()
        self.snapshot_in_flight = seq
        try:
            self._write_snapshot(self.storage, partial(self._snapshot_written, seq))
        except BaseException:
            self.snapshot_in_flight = None
            raise

    def _snapshot_written(self, seq: int, ok: bool) -> None:
        self.snapshot_in_flight = None
        if ok:
            self.storage.end_checkpoint()
            self.last_snapshot_seq = seq
            self.counters.snapshots += 1

    # -- reading -------------------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """The `status --json` contract: counts per state and `last_seq`."""
        return self.state.stats()

    def stuck_workers(self) -> list[dict[str, Any]]:
        """Worker slots held by a timed-out attempt that is not gone yet, by slot."""
        held = sorted((w, job, attempt) for (job, attempt), w in self.stuck.items())
        return [{"worker": w, "job": job, "attempt": attempt} for w, job, attempt in held]
