"""The nouns of the queue: job states, jobs, leases, the record types and the state machine that
says which job states each record may start from, and the errors that name them.

Everything here is plain data and interfaces; no clock, no I/O. `beaver_sim.config` loads `Config`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

import orjson

from beaver_sim.errors import BeaverError as BeaverError
from beaver_sim.errors import CorruptLog as CorruptLog
from beaver_sim.errors import brief
from beaver_sim.storage import log_format
from beaver_sim.storage.log_format import FSYNC_POLICIES


class JobStatus(StrEnum):
    """The states a job can be in; a job is in exactly one of them. Completed, dead and cancelled
    are ended (only `beaver requeue` takes a dead job back to pending)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    DEAD = "dead"
    DELAYED = "delayed"  # waits for its not_before, then pending
    CANCELLED = "cancelled"  # cancelled while pending or delayed: never runs


@dataclass(slots=True)
class Job:
    """A job with its payload; `attempt` counts the dispatches started so far. A job loaded from a
    snapshot keeps its payload as the JSON text the snapshot stored (`raw`) until something reads
    `payload` (a dispatch): a million payload dicts would double a recovery's memory and time."""

    id: str
    raw: dict[str, Any] | str = field(default_factory=dict)
    attempt: int = 0
    status: JobStatus = JobStatus.PENDING
    # the payload's JSON text once a snapshot wrote it (core.codec.to_columns), or the text it was
    # decoded from: a stored payload never changes, so each later snapshot writes it as it is (code
    # that replaces `raw`, as a test damaging a payload does, sets this too)
    text: str | None = field(default=None, compare=False, repr=False)

    @property
    def payload(self) -> dict[str, Any]:
        raw = self.raw
        if isinstance(raw, str):
            decoded: dict[str, Any] = orjson.loads(raw)
            self.raw, self.text = decoded, raw
            return decoded
        return raw

    def copy_payload(self) -> dict[str, Any]:
        """A fresh copy of the payload for one attempt: a handler that changes its dict changes
        neither the stored job (its snapshot, its retries) nor the duplicate check. Decoded from the
        snapshot's text, or copied through JSON (a payload is plain JSON: checked at enqueue)."""
        raw = self.raw
        copy: dict[str, Any] = orjson.loads(raw if type(raw) is str else orjson.dumps(raw))
        return copy


@dataclass(slots=True)
class Lease:
    """Who runs an in-flight job, which attempt it is, and when it times out (clock seconds).
    Never changed once made (not `frozen`: that costs 2.5x per construction, on the replay path)."""

    attempt: int
    worker: int
    deadline: float


# The record types (core/records.py builds and applies them; docs/contracts.md documents them).
ENQUEUE = "enqueue"  # a new job, with its payload
DISPATCH = "dispatch"  # attempt N of a job handed to a worker, with its deadline
ACK = "ack"  # attempt N succeeded: completed
FAIL = "fail"  # attempt N failed with an error: back to pending
TIMEOUT = "timeout"  # attempt N passed its deadline: back to pending
REQUEUE = "requeue"  # attempt N was interrupted by a crash: back to pending
DEAD = "dead"  # attempt N was the last allowed: dead
RELEASE = "release"  # a delayed job's not_before has come: pending
REVIVE = "revive"  # a dead job back to pending with a fresh attempt budget (`beaver requeue`)
CANCEL = "cancel"  # a pending or delayed job cancelled: it never runs (`beaver cancel`)
CONFIG = "config"  # settings replay depends on, in effect from this record on (job: "")

# The state machine: the job states each record type may start from. ENQUEUE starts from none (its
# id must be new); CONFIG concerns no job. JobQueue's transitions test these inline (one flat
# function each, the replay path) and `IllegalTransition` is raised against them;
# tests/unit/test_state_machine.py holds the transitions and docs/contracts.md's table to this one.
STARTS: dict[str, tuple[JobStatus, ...]] = {
    ENQUEUE: (),
    DISPATCH: (JobStatus.PENDING,),
    ACK: (JobStatus.IN_FLIGHT,),
    FAIL: (JobStatus.IN_FLIGHT,),
    TIMEOUT: (JobStatus.IN_FLIGHT,),
    REQUEUE: (JobStatus.IN_FLIGHT,),
    DEAD: (JobStatus.IN_FLIGHT,),
    RELEASE: (JobStatus.DELAYED,),
    REVIVE: (JobStatus.DEAD,),
    CANCEL: (JobStatus.PENDING, JobStatus.DELAYED),
}


class IllegalTransition(BeaverError):
    """A state change that the job's current state does not allow."""

    def __init__(self, job_id: str, status: JobStatus | None, action: str, why: str = "") -> None:
        state = status.value if status is not None else "unknown"
        msg = f"job {brief(job_id)}: cannot {action} when state={state}"
        super().__init__(msg + (f" ({why})" if why else ""))
        self.job_id, self.status, self.action = job_id, status, action


class DuplicateJob(BeaverError):
    """An enqueue of a job id that is already known with a different payload (a conflict: the
    same id with the same payload is already present, which is not an error)."""


class Handle(Protocol):
    """Whatever a clock returns from `call_at`; only ever passed back to `cancel`."""


class Clock(Protocol):
    """Time as the controller sees it: the real asyncio loop or the simulator's VirtualClock."""

    def now(self) -> float: ...
    def epoch(self) -> float: ...  # seconds since the Unix epoch, for times kept across restarts
    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Any: ...
    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Any: ...
    def cancel(self, handle: Any) -> None: ...


# on_result(job_id, attempt, ok, detail): a worker's outcome, delivered on the clock's thread. Not ok:
# detail is the error, None or anything (a string, an exception): records.reason turns it into
# bounded text. Ok: detail is the handler's return value, which the ACK keeps if it is JSON and fits.
OnResult = Callable[[str, int, bool, object], None]


class Abandoned(NamedTuple):
    """What the workers do with an attempt the controller gave up on (its deadline passed).
    `held`: the worker slot stays taken until `done` reports the attempt gone (returned, raised,
    killed); else the slot is free now and the attempt, if it still runs, runs without one.
    `how` ("handler killed", ...) is added to a DEAD record's reason; empty says nothing more."""

    held: bool
    how: str = ""


class Workers(Protocol):
    """Runs payloads: threads or processes in real mode, seeded outcomes in the simulator.

    Slot rule: worker slot `worker` runs one attempt at a time, and is free again only once that
    attempt is really gone. `done` is called for an attempt when it ends, never from inside
    `submit` or `abandon`; for an attempt abandoned with `held` it is the signal that frees the slot,
    so it must come (a killed attempt reports too).

    Payloads: each attempt is handed a copy of its job's payload, since a handler may change the
    dict it gets. A pool whose handlers never change nor keep it may say so with a class attribute
    `payload_read_only = True`: the controller then hands it the stored dict itself (the
    simulator's pool, whose attempts only read it, saves a JSON round trip per attempt)."""

    def submit(
        self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult
    ) -> None: ...

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """`retry_backoff`: the wait before the retry after the n-th failed or timed-out attempt of a
    budget is min(max, base x 2^(n-1)) x (1 - jitter x u), u drawn in [0, 1) for (job, attempt)
    (core.draws): exponential, spread so that jobs failing together do not retry together."""

    base: float
    max: float
    jitter: float = 0.5

    def problems(self) -> list[str]:
        if not 0 < self.base <= self.max:
            return [f"retry_backoff must satisfy 0 < base <= max, got {self.base}..{self.max}"]
        if not 0 <= self.jitter <= 1:
            return [f"retry_backoff jitter must be in [0, 1], got {self.jitter}"]
        return []


PREALLOCATE = ("auto", *log_format.PREALLOCATE)  # auto: fallocate where the file system can
MIN_RECORD_BYTES = 4096  # records.MAX_REASON_BYTES plus a record's fields, with room for an id
WAL_RECOVERY = log_format.RECOVERY


@dataclass(slots=True)
class Config:
    """Every setting, in seconds and plain values; `beaver_sim.config` loads it from YAML, the
    environment and flags. The first seven are the seed's keys."""

    worker_count: int = 8
    task_timeout: float = 3.0
    snapshot_interval: float = 2.0
    snapshot_log_ratio: float = 1.0  # snapshot only once the log since the last one is this x jobs
    max_retry: int = 3
    wal_path: str = ""  # default: <data_dir>/wal
    snapshot_path: str = ""  # default: <data_dir>/snap
    metrics_port: int = 9090
    data_dir: str = "./data/run"
    metrics_host: str = "127.0.0.1"
    fsync: str = "always"
    fsync_interval: float = 0.05
    segment_bytes: int = 64 << 20
    # auto | none | fallocate | zeros: segments made segment_bytes long up front; auto: fallocate
    # where the file system supports it, else none (the simulator's SimFS: none)
    wal_preallocate: str = "auto"
    wal_recovery: str = (
        "tolerate-tail"  # tolerate-tail | strict: may a whole last record that fails its CRC be cut?
    )
    max_record_bytes: int = 1 << 20
    max_result_bytes: int = 64 << 10  # a handler's return value, as JSON; larger fails the attempt
    snapshots_kept: int = 2
    completed_retention: int = 0  # ended jobs kept in memory and snapshots (0: all); see JobQueue
    seed: int = 42
    failure_rate: float = 0.1
    work_min: float = 0.1
    work_max: float = 0.5
    executor: str = "thread"
    handlers: dict[str, str] = field(default_factory=dict)
    retry_backoff: Backoff | None = None  # None: a failed attempt's retry is pending at once
    # the simulator only: seconds from a crash to the restarted controller's start, as measured for
    # `beaver run` (kill -9 to `ready`: median 0.19 s of 23, 0.11-0.48 s at load 2.4-4 on 2 cores;
    # python bench/bench_fidelity.py --restarts N)
    restart_delay: float = 0.19

    def problems(self) -> list[str]:
        """Every invalid value, one line each (empty when the config is usable)."""
        out = []
        if self.worker_count < 1:
            out.append(f"worker_count must be >= 1, got {self.worker_count}")
        if self.task_timeout <= 0:
            out.append(f"task_timeout must be > 0, got {self.task_timeout}")
        if self.snapshot_interval < 0:
            out.append(f"snapshot_interval must be >= 0 (0 disables), got {self.snapshot_interval}")
        if self.snapshot_log_ratio < 0:
            out.append(f"snapshot_log_ratio must be >= 0, got {self.snapshot_log_ratio}")
        if self.max_retry < 1:
            out.append(f"max_retry must be >= 1, got {self.max_retry}")
        if self.fsync not in FSYNC_POLICIES:
            out.append(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}")
        if self.fsync_interval <= 0:
            out.append(f"fsync_interval must be > 0, got {self.fsync_interval}")
        if not 0 <= self.failure_rate <= 1:
            out.append(f"failure_rate must be in [0, 1], got {self.failure_rate}")
        if not 0 <= self.work_min <= self.work_max:
            out.append(
                f"work duration range must satisfy 0 <= min <= max, got {self.work_min}..{self.work_max}"
            )
        if not 0 <= self.metrics_port <= 65535:
            out.append(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.segment_bytes < 4096:
            out.append(f"segment_bytes must be >= 4096, got {self.segment_bytes}")
        if self.max_record_bytes < MIN_RECORD_BYTES:  # room for a FAIL with the longest reason
            out.append(f"max_record_bytes must be >= {MIN_RECORD_BYTES}, got {self.max_record_bytes}")
        if self.max_result_bytes < 0:
            out.append(f"max_result_bytes must be >= 0, got {self.max_result_bytes}")
        if self.wal_preallocate not in PREALLOCATE:
            out.append(
                f"wal_preallocate must be one of {', '.join(PREALLOCATE)}, got {self.wal_preallocate!r}"
            )
        if self.wal_recovery not in WAL_RECOVERY:
            out.append(f"wal_recovery must be one of {', '.join(WAL_RECOVERY)}, got {self.wal_recovery!r}")
        if self.completed_retention < 0:
            out.append(
                f"completed_retention must be >= 0 (0 keeps every job), got {self.completed_retention}"
            )
        if self.snapshots_kept < 1:
            out.append(f"snapshots_kept must be >= 1, got {self.snapshots_kept}")
        if self.restart_delay < 0:
            out.append(f"restart_delay must be >= 0, got {self.restart_delay}")
        if self.retry_backoff is not None:
            out.extend(self.retry_backoff.problems())
        if self.executor not in ("thread", "process"):
            out.append(f"executor must be thread or process, got {self.executor!r}")
        return out

    @property
    def wal_dir(self) -> str:
        return self.wal_path or f"{self.data_dir.rstrip('/')}/wal"

    @property
    def snapshot_dir(self) -> str:
        return self.snapshot_path or f"{self.data_dir.rstrip('/')}/snap"
