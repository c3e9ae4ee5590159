"""SimWorkers: the simulator's worker pool. Each attempt's duration and outcome are a pure function
of (seed, job id, attempt) (core.draws.Draws, the real pool's draws too), so a run is fixed by its
seed. An attempt that runs past the task timeout reports late and its result is stale; the real
runtime's timers fire a little late, so an attempt that ends within that lateness of its deadline
may end either way for real ("borderline", beaver_sim/fidelity.py).

By default every attempt starts at once and an abandoned one runs on without a slot (what the
thread pool does with a handler it cannot interrupt). The real pools' limits can be modelled too:
`threads` bounds the pool (an attempt waits for a free thread, and the wait counts toward its
timeout), `hang` names payload types whose attempts never return on their own (a poison job),
`stop_after` stops an abandoned attempt that long after its timeout (a killed process; it holds its
slot until then) and `spare` bounds how many abandoned attempts may run on without a slot (beyond
it, the slot is held until the attempt ends, as the real thread pool does). `misbehaving` gives a
pool hostile handlers (huge or unprintable failure reasons, payload mutation), for the sweeps."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, ClassVar, NamedTuple

from beaver_sim.core.draws import Draws
from beaver_sim.core.types import Abandoned, BeaverError, OnResult
from beaver_sim.sim.clock import VirtualClock

_new = tuple.__new__
_RELEASED = Abandoned(False)


class Attempt(NamedTuple):
    """One simulated attempt: who ran it, when, for how long, and whether it would succeed."""

    job: str
    attempt: int
    worker: int
    start: float
    duration: float
    ok: bool


@dataclass(slots=True)
class _Running:
    """A modelled attempt: its outcome, and the clock handle of its end (None: it hangs)."""

    job: str
    attempt: int
    worker: int
    duration: float
    ok: bool
    hangs: bool
    done: OnResult
    end: Any = None
    detached: bool = False


@dataclass
class SimWorkers:
    """Durations uniform in [work_min, work_max] seconds; failure with probability failure_rate.
    A modelled attempt only reads its payload (`hang`), so the pool is `payload_read_only`
    (core.types.Workers); a subclass that overrides `submit` is not, unless it says so itself."""

    payload_read_only: ClassVar[bool] = True
    _own_draw: ClassVar[bool] = False  # set per subclass: does it override `draw`?
    clock: VirtualClock
    seed: int = 42
    failure_rate: float = 0.1
    work_min: float = 0.1
    work_max: float = 0.5
    record: bool = False  # keep every Attempt (for DataFrames); off for speed
    attempts: list[Attempt] = field(default_factory=list)
    threads: int = 0  # 0: unbounded, every attempt starts at once
    hang: tuple[str, ...] = ()  # payload types whose attempts never return on their own
    stop_after: float | None = None  # None: an abandoned attempt cannot be stopped
    spare: int | None = None  # abandoned attempts that may run on without a slot (None: any number)
    draws: Draws = field(init=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_draw = cls.draw is not SimWorkers.draw
        if "submit" in cls.__dict__ and "payload_read_only" not in cls.__dict__:
            cls.payload_read_only = False  # its own submit may hand the payload to code that changes it

    def __post_init__(self) -> None:
        self.draws = Draws(self.seed)
        limits = (self.stop_after, self.spare)
        self.modelled = bool(self.threads or self.hang or limits != (None, None))
        self.running: dict[tuple[str, int], _Running] = {}
        self.waiting: deque[_Running] = deque()  # for a thread, in submit order
        self.detached = 0  # abandoned attempts still running without a slot

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        if self._own_draw:
            duration, ok = self.draw(job_id, attempt)
        else:  # `draw`, inline: one call fewer per attempt
            duration, ok = self.draws.work(job_id, attempt, self.work_min, self.work_max, self.failure_rate)
        if self.modelled:
            hangs = payload.get("type") in self.hang
            run = _Running(job_id, attempt, worker, duration, ok, hangs, done)
            if self.threads and len(self.running) >= self.threads:
                self.waiting.append(run)
            else:
                self._start(run)
            return
        if self.record:  # tuple.__new__: an Attempt without the Python-level NamedTuple constructor
            self.attempts.append(_new(Attempt, (job_id, attempt, worker, self.clock.now(), duration, ok)))
        self.clock.call_later(duration, done, job_id, attempt, ok, None if ok else "simulated failure")

    def draw(self, job_id: str, attempt: int) -> tuple[float, bool]:
        """This attempt's (duration, succeeds): the seed's uniform work."""
        return self.draws.work(job_id, attempt, self.work_min, self.work_max, self.failure_rate)

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        """Model what the real pools do at a timeout: stop the attempt if they can (`stop_after`),
        else let it run on without its slot while `spare` allows, else keep its slot until it ends."""
        run = self.running.get((job_id, attempt))
        if run is None:
            for waiting in self.waiting:  # never started: it is dropped and reports nothing
                if (waiting.job, waiting.attempt) == (job_id, attempt):
                    self.waiting.remove(waiting)
                    break
            return _RELEASED
        if self.stop_after is not None:
            if run.end is not None:
                self.clock.cancel(run.end)
            run.ok, run.hangs = False, False
            run.end = self.clock.call_later(self.stop_after, self._end, run, "timeout: handler killed")
            return Abandoned(True, "handler killed")
        if self.spare is not None and self.detached >= self.spare:
            return Abandoned(True, "handler still running")
        run.detached = True
        self.detached += 1
        return _RELEASED

    def crash(self, clock: VirtualClock) -> int:
        """The process running the pool died (kill -9): its attempts die with it, as real handler
        processes do with `beaver run`, and the pool goes on with the next life's `clock`. Returns
        how many were running (each would be an orphan holding a thread had it survived)."""
        gone = len(self.running)
        self.running.clear()
        self.waiting.clear()
        self.detached = 0
        self.clock = clock
        return gone

    def _start(self, run: _Running) -> None:
        self.running[(run.job, run.attempt)] = run
        if self.record:
            now = self.clock.now()
            self.attempts.append(Attempt(run.job, run.attempt, run.worker, now, run.duration, run.ok))
        if not run.hangs:
            error = None if run.ok else "simulated failure"
            run.end = self.clock.call_later(run.duration, self._end, run, error)

    def _end(self, run: _Running, error: str | None) -> None:
        del self.running[(run.job, run.attempt)]
        if run.detached:
            self.detached -= 1
        if self.waiting:
            self._start(self.waiting.popleft())
        run.done(run.job, run.attempt, error is None, error)


# -- hostile handlers (issue 17): what a careless or hostile handler does, for sweeps to cover ---

MISBEHAVIOURS = ("huge-reason", "unprintable-reason", "mutate-payload")
HUGE_REASON = "E" * (2 << 20)  # a failure message of 2 MiB: twice the default max_record_bytes


class Unprintable(Exception):
    """A handler's exception whose str() and repr() both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")

    __repr__ = __str__


@cache
def misbehaving(cls: type[SimWorkers], kinds: tuple[str, ...]) -> type[SimWorkers]:
    """`cls` with handlers that misbehave: `huge-reason` fails with a 2 MiB message,
    `unprintable-reason` with an exception that cannot be printed, `mutate-payload` empties the
    payload dict it was handed and writes into it. The outcomes and their draws are the pool's own:
    only what a handler does to its payload and what a failure reports change."""
    bad = [k for k in kinds if k not in MISBEHAVIOURS]
    if bad:
        raise BeaverError(f"misbehaviour {bad[0]!r} is not one of {', '.join(MISBEHAVIOURS)}")
    reports: list[object] = [HUGE_REASON] if "huge-reason" in kinds else []
    reports += [Unprintable()] if "unprintable-reason" in kinds else []  # both: by turns
    mutate = "mutate-payload" in kinds

    def submit(
        self: SimWorkers, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult
    ) -> None:
        if reports:
            done = partial(_reporting, done, reports[attempt % len(reports)])
        cls.submit(self, job_id, attempt, worker, payload, done)
        if mutate:  # the handler runs once it is handed its payload
            payload.clear()
            payload["mutated"] = attempt

    return type(f"Misbehaving{cls.__name__}", (cls,), {"submit": submit, "payload_read_only": not mutate})


def _reporting(done: OnResult, report: object, job_id: str, attempt: int, ok: bool, error: object) -> None:
    """`done`, with a failure's error replaced by what the hostile handler raised."""
    done(job_id, attempt, ok, error if ok else report)
