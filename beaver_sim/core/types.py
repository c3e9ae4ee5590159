"""The nouns of the queue: job states, jobs, leases and the errors that name them.

Everything here is plain data; no clock, no I/O. `Config` lives in `beaver_sim.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """The four states a job can be in; a job is in exactly one of them."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"
    DEAD = "dead"


@dataclass(slots=True)
class Job:
    """A job with its payload; `attempt` counts the dispatches started so far."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    status: JobStatus = JobStatus.PENDING


@dataclass(slots=True, frozen=True)
class Lease:
    """Who runs an in-flight job, which attempt it is, and when it times out (clock seconds)."""

    attempt: int
    worker: int
    deadline: float


class BeaverError(Exception):
    """Base of every error beaver_sim reports to a user as one line."""


class IllegalTransition(BeaverError):
    """A state change that the job's current state does not allow."""

    def __init__(self, job_id: str, status: JobStatus | None, action: str, why: str = "") -> None:
        state = status.value if status is not None else "unknown"
        msg = f"job {job_id!r}: cannot {action} when state={state}"
        super().__init__(msg + (f" ({why})" if why else ""))
        self.job_id, self.status, self.action = job_id, status, action


class DuplicateJob(BeaverError):
    """An enqueue of a job id that is already known."""


class CorruptLog(BeaverError):
    """The WAL or a snapshot cannot be trusted; the message names file, offset and seq."""
