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
Batch = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Workload:
    """What the clients send: `jobs` jobs, all at t=0 in one batch (the seed's `enqueue --file`) or
    as Poisson arrivals at `rate` per virtual second of `batch` jobs each (one `enqueue --file`).
    Attempt durations are `uniform` in [work_min, work_max] (the seed's) or `exponential`: the
    same mean, at least work_min, with a long tail that runs into timeouts. Failure rate and
    duration range come from the Config. `misbehave` names hostile handler behaviours, comma
    separated (`sim.workers.MISBEHAVIOURS`: huge-reason, unprintable-reason, mutate-payload)."""

    jobs: int = 100
    rate: float = 0.0
    durations: str = "uniform"
    batch: int = 1
    misbehave: str = ""

    @property
    def misbehaviours(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.misbehave.split(",") if k.strip())

    def __post_init__(self) -> None:
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
        name = f"task-{{:0{max(3, len(str(self.jobs)))}d}}".format
        jobs = [(name(i), {"type": "compute", "value": 37 * i}) for i in range(1, self.jobs + 1)]
        if not self.rate:
            return [(0.0, jobs)] if jobs else []
        rng = random.Random(f"arrivals:{seed}")
        t = 0.0
        out = []
        for i in range(0, len(jobs), self.batch):
            t += rng.expovariate(self.rate)
            out.append((t, jobs[i : i + self.batch]))
        return out


class ExponentialWorkers(SimWorkers):
    """SimWorkers with exponential durations: work_min plus a mean of (work_max - work_min) / 2."""

    def draw(self, job_id: str, attempt: int) -> tuple[float, bool]:
        return self.draws.exponential_work(job_id, attempt, self.work_min, self.work_max, self.failure_rate)
