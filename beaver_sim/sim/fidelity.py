"""Fidelity: the simulator's prediction of a real run, compared job by job.

A real run (`beaver enqueue` of the workload's jobs, then `beaver run --exit-when-idle --seed S`)
and the simulated run of the same jobs, seed and config draw the same duration and outcome for each
attempt (core.draws). What the simulator leaves out is the real machine's delay: the real timers
fire late (`timer_lateness_p99` in `status --json`), the real attempt starts once its DISPATCH
record is synced and reports through a thread. So an attempt whose drawn duration lies within that
lateness of the task timeout is *borderline*: its result and its deadline race, and it may end the
other way for real. `compare` names, for each job, whether both runs ended it the same way (same
attempt count, same end state) and which of its attempts were borderline; a job that differs with
no borderline attempt is a real disagreement, a bug in the prediction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from beaver_sim.core.draws import Draws
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.recovery import inspect
from beaver_sim.core.types import BeaverError, Config, Job
from beaver_sim.sim.workload import Workload
from beaver_sim.storage.fs import RealFS


@dataclass(frozen=True, slots=True)
class JobFidelity:
    """One job in both runs: attempts and end state each, and its borderline attempts."""

    job: str
    sim_attempts: int
    sim_end: str
    real_attempts: int
    real_end: str
    borderline: tuple[int, ...]

    @property
    def same(self) -> bool:
        return (self.sim_attempts, self.sim_end) == (self.real_attempts, self.real_end)

    @property
    def explained(self) -> bool:
        """Equal, or different with a borderline attempt that may have gone either way."""
        return self.same or bool(self.borderline)


@dataclass(frozen=True, slots=True)
class Fidelity:
    """Every job of a comparison, and the margin (seconds) that made an attempt borderline."""

    jobs: tuple[JobFidelity, ...]
    margin: float

    @property
    def agree(self) -> int:
        return sum(j.same for j in self.jobs)

    @property
    def unexplained(self) -> list[JobFidelity]:
        """Jobs that ended differently with no borderline attempt: the prediction was wrong."""
        return [j for j in self.jobs if not j.explained]

    @property
    def borderline_attempts(self) -> int:
        return sum(len(j.borderline) for j in self.jobs)

    def summary(self) -> dict[str, Any]:
        return {
            "jobs": len(self.jobs),
            "same": self.agree,
            "different_borderline": sum(not j.same and j.explained for j in self.jobs),
            "different_unexplained": len(self.unexplained),
            "borderline_attempts": self.borderline_attempts,
            "margin_ms": round(self.margin * 1e3, 3),
        }

    def frame(self) -> pd.DataFrame:
        """One row per job: both runs' attempts and ends, whether they agree, the borderline attempts."""
        rows = [
            (j.job, j.sim_attempts, j.sim_end, j.real_attempts, j.real_end, j.same, j.borderline)
            for j in self.jobs
        ]
        columns = ["job", "sim_attempts", "sim_end", "real_attempts", "real_end", "same", "borderline"]
        return pd.DataFrame(rows, columns=columns)


def job_file(workload: Workload, seed: int) -> list[dict[str, Any]]:
    """The workload's jobs as a `beaver enqueue --file` list, so the real run gets the same jobs."""
    if workload.rate:
        raise BeaverError("a fidelity comparison enqueues every job at once: use a workload with rate 0")
    return [
        {"id": job_id, "payload": payload} for _, batch in workload.batches(seed) for job_id, payload in batch
    ]


def real_jobs(config: Config) -> Mapping[str, Job]:
    """The jobs of a real data directory, read as recovery would (read-only; a torn tail is fine)."""
    found = inspect(RealFS(), config.wal_dir, config.snapshot_dir, retention=config.completed_retention)
    if found.problem is not None and not found.problem.torn:
        raise BeaverError(f"{config.data_dir}: {found.problem}")
    return found.state.jobs


def borderline(config: Config, job: str, attempts: int, margin: float) -> tuple[int, ...]:
    """The attempts of `job` (1..attempts) whose drawn duration is within `margin` of the timeout."""
    draws, timeout = Draws(config.seed), config.task_timeout
    out = []
    for attempt in range(1, attempts + 1):
        duration, _ok = draws.work(job, attempt, config.work_min, config.work_max, config.failure_rate)
        if abs(duration - timeout) <= margin:
            out.append(attempt)
    return tuple(out)


def compare(
    config: Config, simulated: JobQueue | Mapping[str, Job], real: Mapping[str, Job], margin: float
) -> Fidelity:
    """Job by job, the simulated run against the real one; `margin` is the real run's timer
    lateness (its p99), within which of the timeout an attempt is borderline."""
    sim_jobs = simulated.jobs if isinstance(simulated, JobQueue) else simulated
    if set(sim_jobs) != set(real):
        only = sorted(set(sim_jobs) ^ set(real))[:3]
        raise BeaverError(f"the two runs hold different jobs (e.g. {', '.join(map(repr, only))})")
    rows = []
    for job_id in sorted(sim_jobs):
        s, r = sim_jobs[job_id], real[job_id]
        worst = max(s.attempt, r.attempt)
        rows.append(
            JobFidelity(
                job_id,
                s.attempt,
                s.status.value,
                r.attempt,
                r.status.value,
                borderline(config, job_id, worst, margin),
            )
        )
    return Fidelity(tuple(rows), margin)
