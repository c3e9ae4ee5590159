"""A poison job in the simulator: handlers that hang, then healthy jobs, on the real Controller with
SimWorkers modelling the real pool (2 x worker_count threads). It shows what the slot rule buys:
under the old rule (`free-slot-at-timeout`) hung attempts keep every thread, new attempts spend their
timeout waiting for one and healthy jobs die unrun; under the rule, a killed attempt holds its slot
until gone and the healthy jobs run at once. `stoppable=False` is a handler no one can stop (a
thread blocked in C): the rule then makes the controller wait, and no healthy attempt is spent.
`crash_at` kills the process at that time (kill -9) and recovers: the handlers die with it, so the
next life starts with every thread free and the interrupted attempts requeued."""

from __future__ import annotations

from typing import Any

from beaver_sim.core.controller import Controller
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import Config, JobStatus
from beaver_sim.sim import mutants
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.faults import survivors
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workers import SimWorkers

RULES = ("slot-held", *mutants.LIVENESS)
STOP_AFTER = 0.05  # virtual seconds from the timeout until a stopped attempt is gone (TERM, exit)


def run_poison(
    rule: str = "slot-held",
    stoppable: bool = True,
    *,
    workers: int = 4,
    timeout: float = 0.3,
    max_retry: int = 3,
    hung: int = 8,
    healthy: int = 8,
    healthy_at: float = 4.0,
    seed: int = 42,
    crash_at: float | None = None,
    spare: int | None = None,
) -> dict[str, Any]:
    """`hung` jobs whose handler never returns at t=0, `healthy` quick ones at `healthy_at`; run
    until nothing can happen any more. Returns the jobs' fates and the controller's counters.
    `spare`: timed-out attempts that may run on without a slot (default `workers`, the pool as the
    report found it; the runtime's thread pool now has 64), on `workers + spare` threads."""
    spare = workers if spare is None else spare
    config = Config(
        data_dir="/poison",
        worker_count=workers,
        task_timeout=timeout,
        max_retry=max_retry,
        snapshot_interval=0,
        failure_rate=0.0,
        work_min=0.01,
        work_max=0.05,
    )
    clock = VirtualClock()
    pool = SimWorkers(
        clock,
        seed,
        config.failure_rate,
        config.work_min,
        config.work_max,
        record=True,
        threads=workers + spare,
        hang=("hang",),
        stop_after=STOP_AFTER if stoppable else None,
        spare=spare,
    )
    controller_cls = Controller if rule == "slot-held" else mutants.LIVENESS[rule]
    fs = SimFS()
    ctl = controller_cls(config, clock, Storage.from_config(fs, config), pool)
    ctl.start()
    ctl.enqueue([(f"hung-{i}", {"type": "hang"}) for i in range(1, hung + 1)])
    ok_jobs = [(f"ok-{i}", {"type": "noop"}) for i in range(1, healthy + 1)]
    clock.call_at(healthy_at, ctl.enqueue, ok_jobs)
    out: dict[str, Any] = {"rule": rule, "stoppable": stoppable}
    if crash_at is not None:
        clock.run(until=crash_at)
        clock.clear()
        clock = VirtualClock(crash_at)
        out["died with the process"] = pool.crash(clock)
        ctl = controller_cls(config, clock, Storage.from_config(survivors(fs, "process"), config), pool)
        ctl.start()
        arrived = any(job_id.startswith("ok-") for job_id in ctl.state.jobs)
        if not arrived:
            clock.call_at(healthy_at, ctl.enqueue, ok_jobs)
    clock.run()
    jobs = ctl.state.jobs
    for group in ("hung", "ok"):
        mine = [job for job_id, job in jobs.items() if job_id.startswith(group + "-")]
        for status in JobStatus:
            out[f"{group} {status.value}"] = sum(1 for job in mine if job.status is status)
        out[f"{group} attempts"] = sum(job.attempt for job in mine)
    c = ctl.counters
    out.update(timeouts=c.timeouts, killed=c.killed, abandoned=c.abandoned, stuck=len(ctl.stuck))
    out["end"] = round(clock.now(), 3)
    return out
