"""What the clients send and how long their work takes: `Workload` (the jobs and their arrival
batches, fixed by the seed) and `ExponentialWorkers`. Apart from the run loop in experiment.py: it is
a run's input, and needs nothing of the controller or storage."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from beaver_sim.core.types import BeaverError
from beaver_sim.sim.workers import MISBEHAVIOURS, SimWorkers

DURATIONS = ("uniform", "exponential")
Batch = list[tuple[Any, ...]]  # (id, payload) or (id, payload, when): Controller.enqueue


@dataclass(frozen=True, slots=True)
class Workload:
    """What the clients send: `jobs` jobs, all at t=0 in one batch (the seed's `enqueue --file`) or
    as Poisson arrivals at `rate` per virtual second of `batch` jobs each (one `enqueue --file`).
    Attempt durations are `uniform` in [work_min, work_max] (the seed's) or `exponential`: the
    same mean, at least work_min, with a long tail that runs into timeouts. Failure rate and
    duration range come from the Config. `misbehave` names hostile handler behaviours, comma
    separated (`sim.workers.MISBEHAVIOURS`: huge-reason, unprintable-reason, mutate-payload).

    The operator's side, off by default: every `delayed`-th job carries a delay (0.5 to 2.5 s,
    by its number); every `cancel`-th of those is cancelled 0.1 s after its batch arrives (while it
    waits); at `requeue_at` virtual seconds (0: never) every dead job is requeued."""

    jobs: int = 100
    rate: float = 0.0
    durations: str = "uniform"
    batch: int = 1
    misbehave: str = ""
    delayed: int = 0
    cancel: int = 0
    requeue_at: float = 0.0

    @property
    def misbehaviours(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.misbehave.split(",") if k.strip())

    def __post_init__(self) -> None:
        if min(self.delayed, self.cancel, self.requeue_at) < 0:
            raise BeaverError("workload needs delayed, cancel and requeue_at >= 0")
        if self.jobs < 0 or self.rate < 0 or self.batch < 1:
            raise BeaverError(
                f"workload needs jobs >= 0, rate >= 0, batch >= 1, got {self.jobs}, {self.rate}, {self.batch}"
            )
        if self.durations not in DURATIONS:
            raise BeaverError(f"durations must be one of {', '.join(DURATIONS)}, got {self.durations!r}")
        bad = [k for k in self.misbehaviours if k not in MISBEHAVIOURS]
        if bad:
            raise BeaverError(f"misbehaviour {bad[0]!r} is not one of {', '.join(MISBEHAVIOURS)}")

    def batches(self, seed: int) -> list[tuple[float, Batch]]:
        """(arrival time, jobs) in order; job `task-NNN` carries the seed demo's payload."""
        name = f"task-%0{max(3, len(str(self.jobs)))}d"  # (% formats an int in half the time of format)
        jobs: Batch = [(name % i, {"type": "compute", "value": 37 * i}) for i in range(1, self.jobs + 1)]
        if self.delayed:
            jobs = [
                (*job, {"delay": 0.5 + (i % 5) * 0.5}) if i % self.delayed == 0 else job
                for i, job in enumerate(jobs, 1)
            ]
        if not self.rate:
            return [(0.0, jobs)] if jobs else []
        rng = random.Random(f"arrivals:{seed}")
        t = 0.0
        out = []
        for i in range(0, len(jobs), self.batch):
            t += rng.expovariate(self.rate)
            out.append((t, jobs[i : i + self.batch]))
        return out

    def cancels(self, batch: Batch) -> list[str]:
        """The jobs of `batch` the operator cancels: every `cancel`-th delayed job of the workload."""
        if not self.cancel:
            return []
        every = self.delayed * self.cancel
        return [job[0] for job in batch if len(job) == 3 and int(job[0].rsplit("-", 1)[1]) % every == 0]


class ExponentialWorkers(SimWorkers):
    """SimWorkers with exponential durations: work_min plus a mean of (work_max - work_min) / 2."""

    def draw(self, job_id: str, attempt: int) -> tuple[float, bool]:
        return self.draws.exponential_work(job_id, attempt, self.work_min, self.work_max, self.failure_rate)
