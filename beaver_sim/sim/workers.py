"""SimWorkers: the simulator's worker pool. Each attempt's duration and outcome come from one seeded
`random.Random`, drawn in dispatch order, so a run is fixed by its seed. An attempt that runs past
the task timeout reports late, exactly like a slow real worker: its result is stale."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from beaver_sim.core.types import OnResult
from beaver_sim.sim.clock import VirtualClock

_new = tuple.__new__


class Attempt(NamedTuple):
    """One simulated attempt: who ran it, when, for how long, and whether it would succeed."""

    job: str
    attempt: int
    worker: int
    start: float
    duration: float
    ok: bool


@dataclass
class SimWorkers:
    """Durations uniform in [work_min, work_max] seconds; failure with probability failure_rate."""

    clock: VirtualClock
    seed: int = 42
    failure_rate: float = 0.1
    work_min: float = 0.1
    work_max: float = 0.5
    record: bool = False  # keep every Attempt (for DataFrames); off for speed
    attempts: list[Attempt] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        random_ = self.rng.random
        lo = self.work_min
        duration = lo + (self.work_max - lo) * random_()  # rng.uniform, inlined (the same draw): hot
        ok = random_() >= self.failure_rate
        if self.record:  # tuple.__new__: an Attempt without the Python-level NamedTuple constructor
            self.attempts.append(_new(Attempt, (job_id, attempt, worker, self.clock.now(), duration, ok)))
        self.clock.call_later(duration, done, job_id, attempt, ok, None if ok else "simulated failure")
