"""The invariant checker: the seven invariants (docs/contracts.md), retry-safe enqueue (8) and
`wal verify` agreeing with recovery (9), checked on one simulated run as it crashes, recovers and
runs on to the end.

The checker knows what the clients were told (which enqueues were acknowledged, with which payload)
and what the log claimed durable at each crash (records whose end LSN the WAL had synced), and
compares that with what the real recovery code rebuilt from the surviving files. Each violation names
the invariant, the job, the crash after which it was seen and the run's replay token, so
`beaver sim --replay TOKEN` shows it again. A recovery that refuses to start counts too: after a crash
the correct design always recovers."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Job, JobStatus
from beaver_sim.storage.fs import FS
from beaver_sim.storage.log_format import parse_header, segment_seq
from beaver_sim.storage.wal import Known, list_segments, scan

INVARIANTS = {
    1: "every acknowledged enqueue survives every crash and recovery",
    2: "no job is in two states; the counts add up to the jobs known",
    3: "a durably completed job stays completed and is never dispatched again",
    4: "no job has more than max_retry attempts per budget (requeue: a fresh one); dead jobs used all",
    5: "sequence numbers and LSNs strictly increase across segments and restarts",
    6: "after recovery, running to quiescence ends with completed + dead == acknowledged jobs",
    7: "same inputs, same bytes (determinism)",
    8: "an unacknowledged batch leaves a prefix of its jobs, payloads exact; its retries end acknowledged",
    9: "a data directory `wal verify` passes is one recovery opens",
    10: "a job whose cancel was acknowledged never runs after it, and ends cancelled",
    11: "a delayed job never starts before its delay has passed",
}
CODES = {  # stable kebab-case names, printed next to the numbers and in JSON as "code"
    1: "acknowledged-job-lost",
    2: "job-state-inconsistent",
    3: "completed-job-redone",
    4: "retry-limit-broken",
    5: "log-order-broken",
    6: "jobs-not-finished",
    7: "nondeterministic-run",
    8: "unacknowledged-batch-broken",
    9: "verify-ok-recovery-refused",
    10: "cancelled-job-ran",
    11: "delayed-job-ran-early",
}
NO_CRASH = "no crash"
ENDED = (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)
Trace = list[tuple[R.Record, int, int]]  # (record, start LSN, end LSN) as the WAL appended them


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which, for which job (None: the whole run), after which crash, why,
    and the token that replays the run."""

    invariant: int
    job: str | None
    crash: str
    detail: str
    token: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "code": CODES[self.invariant],
            "name": INVARIANTS[self.invariant],
            "job": self.job,
            "crash": self.crash,
            "detail": self.detail,
            "token": self.token,
        }

    def __str__(self) -> str:
        job = f" job {self.job}:" if self.job else ""
        return f"invariant {self.invariant} {CODES[self.invariant]} ({self.crash}):{job} {self.detail}"


@dataclass(frozen=True, slots=True)
class ClientView:
    """What a checker knows before the first crash of its run: what the clients sent and were
    told, and what the operator asked for and was told (`Checker.capture`, `Checker.restore`)."""

    submitted: dict[str, dict[str, Any]]
    acked: dict[str, float]
    open: dict[tuple[str, ...], None]
    whens: dict[str, dict[str, float]]
    earliest: dict[str, float]
    cancels: dict[str, float]
    bases: dict[str, int]
    texts: dict[str, tuple[dict[str, Any], str | None]]  # shared, not copied: see Checker.texts


class Checker:
    """Follows one run: `submitted` / `acknowledged` as the clients see them, `crashed` with what
    the log claimed durable, `recovered` with the rebuilt state, `finished` at quiescence."""

    def __init__(self, max_retry: int, token: str | Callable[[], str], window: float = 0.0) -> None:
        self.max_retry, self._token = max_retry, token
        # `fsync: interval` acknowledges after the write and syncs within `window` seconds: a power
        # loss may lose the jobs acknowledged in the last `window` before it (the documented trade)
        self.window = window
        self.loss_since = math.inf  # jobs acknowledged at or after this time may be lost (set by a crash)
        self.submitted: dict[str, dict[str, Any]] = {}  # job -> payload its client sent
        self.acked: dict[str, float] = {}  # job -> when acknowledged, in the order they came
        self.open: dict[tuple[str, ...], None] = {}  # batches sent, not yet acknowledged, in order
        self.completed: set[str] = set()  # durably completed: must stay completed
        self.durable_seq = 0  # the highest seq, and LSN, the log ever claimed durable
        self.durable_lsn = 0
        self.crash = NO_CRASH
        self.lost: set[str] = set()  # acknowledged jobs some recovery did not bring back
        self.lost_in_window: set[str] = set()  # ... within the documented `interval` loss window
        self.violations: list[Violation] = []
        self._seen: set[tuple[int, str | None]] = set()
        # the operator's side: what clients asked for and were told
        self.whens: dict[str, dict[str, float]] = {}  # job -> its delay, as sent
        self.earliest: dict[str, float] = {}  # delayed job -> first sent + its delay: no start before
        self.cancels: dict[str, float] = {}  # job -> when its cancel was acknowledged
        self.bases: dict[str, int] = {}  # job -> its attempts when its requeue was made
        # job -> (the payload sent, its JSON text or None if it has none): a recovered payload that
        # is still a snapshot's text is compared as text first. A text is a function of its dict
        # (payloads are not changed once sent), so continuations of one capture share the cache
        self.texts: dict[str, tuple[dict[str, Any], str | None]] = {}

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def token(self) -> str:
        """The run's replay token; given as a function, made when first asked (a sweep's
        continuation asks only for a violation, and packing a token costs a zlib pass)."""
        if not isinstance(self._token, str):
            self._token = self._token()
        return self._token

    def violation(self, invariant: int, job: str | None, detail: str) -> None:
        """Record a violation, once per invariant and job."""
        if (invariant, job) not in self._seen:
            self._seen.add((invariant, job))
            self.violations.append(Violation(invariant, job, self.crash, detail, self.token))

    # -- what the clients see ------------------------------------------------------------------

    def submit(self, batch: Iterable[tuple[Any, ...]], at: float = 0.0) -> None:
        """Clients send `batch` at `at`: (id, payload) or (id, payload, {"delay": s})."""
        batch = list(batch)
        if set(map(len, batch)) == {2}:  # no delays: (id, payload) pairs, taken in one call
            self.submitted.update(batch)
        else:
            for job in batch:
                self.submitted[job[0]] = job[1]
                if len(job) == 3:
                    self.whens[job[0]] = job[2]
                    self.earliest.setdefault(job[0], at + job[2]["delay"])
        if batch:
            self.open[tuple(job[0] for job in batch)] = None

    def batch(self, ids: Iterable[str]) -> list[tuple[Any, ...]]:
        """The jobs `ids` as their clients send them again."""
        return [
            (j, self.submitted[j], self.whens[j]) if j in self.whens else (j, self.submitted[j]) for j in ids
        ]

    def cancelled(self, job_id: str, at: float) -> None:
        """The operator was told `job_id` is cancelled, at `at`."""
        self.cancels.setdefault(job_id, at)

    def requeued(self, bases: Mapping[str, int]) -> None:
        """The operator was told these dead jobs are pending again; each had `bases[id]` attempts."""
        self.bases.update(bases)

    def capture(self) -> ClientView:
        """What the clients and the operator were told so far, copied (a sweep captures it at a
        crash point and restores it into each continuation's own checker)."""
        return ClientView(
            dict(self.submitted),
            dict(self.acked),
            dict(self.open),
            dict(self.whens),
            dict(self.earliest),
            dict(self.cancels),
            dict(self.bases),
            self.texts,
        )

    def restore(self, view: ClientView) -> None:
        """Start from `view` (a capture of another checker of the same inputs, before any crash):
        copies, as one view starts many continuations."""
        self.submitted, self.acked, self.open = dict(view.submitted), dict(view.acked), dict(view.open)
        self.whens, self.earliest = dict(view.whens), dict(view.earliest)
        self.cancels, self.bases = dict(view.cancels), dict(view.bases)
        self.texts = view.texts

    def ran(self, attempts: Iterable[Any]) -> None:
        """Invariants 10 and 11 on the attempts the workers started (`sim.workers.Attempt`)."""
        earliest, cancels = self.earliest, self.cancels
        if not earliest and not cancels:
            return
        for a in attempts:
            due = earliest.get(a.job)
            if due is not None and a.start < due - 1e-9:  # (float sums of virtual times)
                self.violation(11, a.job, f"attempt {a.attempt} started at {a.start:.3f}, due at {due:.3f}")
            at = cancels.get(a.job)
            if at is not None and a.start >= at:
                self.violation(10, a.job, f"cancelled at {at:.3f}, then attempt {a.attempt} at {a.start:.3f}")

    def acknowledge(self, jobs: Iterable[str], at: float = 0.0) -> None:
        jobs = tuple(jobs)
        if self.acked:
            self.acked.update(dict.fromkeys(jobs, at))
        else:  # the first answer (the t=0 batch): one dict built, not two
            self.acked = dict.fromkeys(jobs, at)
        self.open.pop(jobs, None)

    # -- crashes and recoveries ----------------------------------------------------------------

    def power_loss(self, at: float) -> None:
        """The machine lost power at `at`: under `interval`, jobs acknowledged less than `window`
        before may be gone (a power loss at the very instant a sync was due may come first)."""
        self.loss_since = at - self.window if self.window else math.inf

    def crashed(self, label: str, trace: Trace, durable_lsn: int | None) -> None:
        """The machine stopped; `trace` is what this life appended, `durable_lsn` how far its WAL
        had synced (None: the WAL was not open yet)."""
        if durable_lsn is None:
            self.crash = label
            return
        acks, seq = [], 0
        for rec, _start, end in trace:
            if end > durable_lsn:
                break
            seq = rec["seq"]
            if rec["type"] == R.ACK:
                acks.append(rec["job"])
        self.claim(label, acks, seq, durable_lsn)

    def claim(self, label: str, acked_jobs: Iterable[str], durable_seq: int, durable_lsn: int) -> None:
        """What the log claimed durable when the machine stopped (`crashed`, precomputed): the jobs
        whose ACK was synced, the last synced seq and LSN."""
        self.crash = label
        self.completed.update(acked_jobs)
        self.durable_seq = max(self.durable_seq, durable_seq)
        self.durable_lsn = max(self.durable_lsn, durable_lsn)

    def recovered(self, q: JobQueue, wal_end_lsn: int) -> None:
        """Check the state the real recovery rebuilt from the surviving files."""
        jobs = q.jobs
        since, self.loss_since = self.loss_since - 1e-9, math.inf  # (float sums of virtual times)
        if since < math.inf:
            for job_id in [j for j, at in self.acked.items() if at >= since and j not in jobs]:
                self.lost_in_window.add(job_id)  # lost as documented: the client was told the risk
                del self.acked[job_id]
        # O(jobs in the state), not O(jobs ever acknowledged): a long run recovers many times, and
        # with retention the state is a window of it; only a violation walks every acknowledged job
        acked, submitted, texts, same = self.acked, self.submitted, self.texts, self._same
        present = changed = 0
        job: Job | None  # a state's job, then one looked up (maybe gone)
        for job_id, job in jobs.items():
            if job_id in acked:
                present += 1
                raw, sent = job.raw, submitted[job_id]
                if type(raw) is not str:
                    changed += raw != sent
                elif (t := texts.get(job_id)) is None or t[0] is not sent or raw != t[1]:
                    changed += not same(job_id, raw, sent)  # (the kept text, inline: one call less a job)
        if len(acked) - present > q.dropped:  # with retention, ended jobs leave the state: not lost
            for job_id in [j for j in acked if j not in jobs]:
                self.lost.add(job_id)
                self.violation(1, job_id, "acknowledged, but missing after recovery")
        if changed:
            for job_id in acked:
                job = jobs.get(job_id)
                if job is not None and job.payload != submitted[job_id]:
                    self.violation(1, job_id, f"payload changed: {job.payload!r} != {submitted[job_id]!r}")
        self._structure(q)
        self._unacknowledged(q)
        completed = {j for j, job in jobs.items() if job.status is JobStatus.COMPLETED}
        for job_id in [] if self.completed <= completed else sorted(self.completed):  # (C first)
            job = jobs.get(job_id)
            if job is None and q.dropped:
                continue  # ended and left the retention window (counted above)
            if job is None or job.status is not JobStatus.COMPLETED:
                state = "missing" if job is None else job.status.value
                self.violation(3, job_id, f"its ACK was durable, but after recovery it is {state}")
        if q.last_seq < self.durable_seq:
            self.violation(
                5,
                None,
                f"seq {q.last_seq + 1}..{self.durable_seq} were durable but recovery ended at seq "
                f"{q.last_seq}: those numbers will be used again",
            )
        elif wal_end_lsn < self.durable_lsn:
            self.violation(
                5, None, f"LSN {self.durable_lsn} was durable but the recovered log ends at {wal_end_lsn}"
            )
        self.completed = completed

    def _same(self, job_id: str, raw: str, sent: dict[str, Any]) -> bool:
        """Is `raw` (a stored payload still a snapshot's text) the payload sent as `job_id`? Decoded
        not through `Job.payload`, which would keep the dict: left text, the queue's next snapshot
        writes it as it is instead of encoding it again. The sent payload's own text (kept in
        `texts`) is the same payload; any other text is decoded and compared."""
        if (t := self.texts.get(job_id)) is None or t[0] is not sent:
            try:
                text: str | None = orjson.dumps(sent).decode()
            except TypeError:  # (only a mutant acknowledges what enqueue would refuse)
                text = None
            t = self.texts[job_id] = (sent, text)
        return raw == t[1] or orjson.loads(raw) == sent

    def refused(self, error: BaseException, verify_ok: bool = False) -> None:
        """Recovery raised instead of starting: after a crash, that never happens by design; and
        when `wal verify` passed the same files (`verify_ok`), verify and recovery disagree (9)."""
        why = " ".join(str(error).split())
        self.violation(6, None, f"recovery refused to start: {why}")
        if verify_ok:
            self.violation(9, None, f"wal verify passed the files, but recovery refused: {why}")

    def failed(self, error: BaseException) -> None:
        """The controller raised while running (a state it could not apply)."""
        self.violation(6, None, f"the controller failed: {' '.join(str(error).split())}")

    def life(
        self, attempts: Iterable[tuple[str, int]], completed_at_start: set[str], bases: Mapping[str, int] = {}
    ) -> None:
        """Check the attempts one life handed to workers (job, attempt number): none of a job that
        was completed when the life began, none past max_retry of its budget (`bases`: where the
        life's state says each requeued job's budget starts; a requeue whose answer a crash cut
        off may have happened)."""
        max_retry, told = self.max_retry, self.bases
        for job_id, attempt in attempts:
            if job_id in completed_at_start:
                self.violation(3, job_id, f"completed, then dispatched again (attempt {attempt})")
            if attempt - max(told.get(job_id, 0), bases.get(job_id, 0)) > max_retry:
                self.violation(4, job_id, f"attempt {attempt} dispatched; max_retry is {max_retry}")

    # -- the end -------------------------------------------------------------------------------

    def finished(
        self,
        q: JobQueue,
        fs: FS,
        wal_dir: str,
        snapshot_seq: int = 0,
        since: int = 0,
        known: Known | None = None,
    ) -> None:
        """Quiescence: every acknowledged job ended completed or dead, within its attempts, and the
        log on disk verifies from the oldest kept snapshot (`snapshot_seq`) to its end; `since`: the
        LSN where the last life began (the recovery that started it checked what came before, so
        only the segments from the one holding `since` are read again). `known`: the scan's, what
        earlier scans verified of the log (a sweep's continuation: its recovery)."""
        jobs, acked, submitted, max_retry, bases = (
            q.jobs,
            self.acked,
            self.submitted,
            self.max_retry,
            self.bases,
        )
        self._structure(q)
        # (a subset test first: it builds no set of every acknowledged job, as the difference does)
        missing = [] if jobs.keys() >= acked.keys() else sorted(acked.keys() - jobs.keys())
        if len(missing) > q.dropped:  # with retention, ended jobs leave the state: not lost
            for job_id in missing:
                self.violation(1, job_id, "acknowledged, but missing at the end")
        told, done = bases, q.base  # budget bases: told, or done without an answer (rare: requeues)
        dead, same, texts = JobStatus.DEAD, self._same, self.texts
        job: Job | None  # a state's job, then one looked up (maybe gone)
        for job_id, job in jobs.items():  # one pass: this is O(jobs) at the end of every run
            status = job.status
            if job_id in acked:
                raw, sent = job.raw, submitted[job_id]  # the very dict sent (the simulator's), or equal
                if raw is sent:
                    changed = False
                elif type(raw) is not str:
                    changed = raw != sent
                else:  # (the kept text compared inline, as in `recovered`)
                    t = texts.get(job_id)
                    changed = (t is None or t[0] is not sent or raw != t[1]) and not same(job_id, raw, sent)
                if changed:
                    self.violation(1, job_id, f"payload changed: {job.payload!r} != {submitted[job_id]!r}")
                elif status not in ENDED:
                    self.violation(6, job_id, f"ended {status.value}")
            base = max(told.get(job_id, 0), done.get(job_id, 0)) if told or done else 0
            if job.attempt - base > max_retry:
                self.violation(4, job_id, f"{job.attempt - base} attempts; max_retry is {max_retry}")
            elif status is dead and job.attempt - base != max_retry:
                fresh = (
                    f"requeued after {base} attempts, then dead after {job.attempt - base} more"
                    if base
                    else ""
                )
                self.violation(
                    4, job_id, f"{fresh or f'dead after {job.attempt} attempts'}; max_retry is {max_retry}"
                )
        for job_id in self.cancels:
            job = jobs.get(job_id)
            if job is not None and job.status is not JobStatus.CANCELLED:
                self.violation(10, job_id, f"its cancel was acknowledged, but it ended {job.status.value}")
        for batch in self.open:
            self.violation(8, batch[0], f"its batch of {len(batch)} was never acknowledged, retries or not")
        ended = sum(q.counts[s] for s in ENDED) + q.dropped
        if ended != len(acked):
            why = f" (+ {q.dropped} dropped by retention)" if q.dropped else ""
            self.violation(
                6, None, f"completed + dead + cancelled{why} = {ended}, acknowledged = {len(acked)}"
            )
        view, first = _from(fs, wal_dir, since)
        s = scan(view, wal_dir, max(snapshot_seq, first - 1), known=known)
        if s.problem is not None:
            self.violation(5, None, f"the log does not verify: {s.problem}")
        elif s.next_seq - 1 != q.last_seq:
            self.violation(5, None, f"the log ends at seq {s.next_seq - 1}, the state at {q.last_seq}")

    def _unacknowledged(self, q: JobQueue) -> None:
        """Invariant 8 after a crash or I/O error: of a batch never acknowledged, a prefix is in the
        state (its records were appended in order, and any failure keeps a prefix of the log), each
        with the payload its client sent; the client's retry of the whole batch then completes it."""
        jobs, submitted = q.jobs, self.submitted
        for batch in self.open:
            gap = None
            for job_id in batch:
                job = jobs.get(job_id)
                if job is None:
                    gap = gap or job_id
                elif gap is not None:
                    self.violation(
                        8, job_id, f"present, but {gap} before it in its unacknowledged batch is not"
                    )
                elif job.payload != submitted[job_id]:
                    self.violation(8, job_id, f"payload changed: {job.payload!r} != {submitted[job_id]!r}")

    def _structure(self, q: JobQueue) -> None:
        """Invariant 2: the queue's own structural rules, and only jobs some client sent."""
        try:
            q.validate()
        except AssertionError as e:
            self.violation(2, None, str(e))
        stats = q.stats()
        if sum(stats[s.value] for s in JobStatus) != stats["jobs"]:
            self.violation(2, None, f"state counts do not add up to the jobs: {stats}")
        jobs, submitted = q.jobs.keys(), self.submitted.keys()
        if not submitted >= jobs:  # (a subset test walks the state in C; the difference, rare, too)
            for job_id in sorted(jobs - submitted):
                self.violation(2, job_id, "a job no client enqueued")


class _Tail:
    """A read-only view of a WAL directory that lists only some of its segments."""

    def __init__(self, fs: FS, names: list[str]) -> None:
        self.fs, self.names = fs, names

    def listdir(self, path: str) -> list[str]:
        return self.names

    def read_bytes(self, path: str) -> bytes:
        return self.fs.read_bytes(path)


def _from(fs: FS, wal_dir: str, since: int) -> tuple[Any, int]:
    """A view of `fs` with the segments that hold LSN `since` and later, and the first seq of the
    first of them (1: the whole log)."""
    names = list_segments(fs, wal_dir)
    if not since or len(names) < 2:
        return fs, 1
    keep = 0
    for i, name in enumerate(names):
        data = fs.read_bytes(posixpath.join(wal_dir, name))
        header = parse_header(data[: data.find(b"\n")])
        base = header.get("base_lsn") if header is not None else None
        if type(base) is not int:
            return fs, 1  # let the full scan name the problem
        if base <= since:
            keep = i
    first = segment_seq(names[keep])
    assert first is not None  # (list_segments lists segments only)
    return _Tail(fs, names[keep:]), first


def same_bytes(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> list[str]:
    """Invariant 7: the paths whose bytes differ between two runs of the same inputs."""
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
