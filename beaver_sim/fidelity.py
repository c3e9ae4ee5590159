"""Fidelity: the simulator's prediction of a real run, compared job by job.

A real run (`beaver enqueue` of the workload's jobs, then `beaver run --exit-when-idle`, optionally
killed with SIGKILL part way and restarted) and the simulated run of the same jobs, seed and config
draw the same duration and outcome for each attempt (core.draws). What the simulator leaves out is
the real machine's delay: the real timers fire late (`timer_lateness_p99` in `status --json`), the
real attempt starts once its DISPATCH record is synced and reports through a thread. So an attempt
whose drawn duration lies within that lateness of the task timeout is *borderline*: its result and
its deadline race, and it may end the other way for real. `compare` says, for each job, whether
both runs ended it the same way (same attempt count, same end state) and which of its attempts were
borderline; a job that differs with no borderline attempt is a real disagreement, a bug in the
prediction. `run_real` and `simulate` run the two sides (tests/integration/test_fidelity.py,
bench/bench_fidelity.py, notebook 10)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pandas as pd
import yaml

from beaver_sim.config import load_config
from beaver_sim.core.draws import Draws
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.repair import Inspection, inspect
from beaver_sim.core.types import BeaverError, Config, Job
from beaver_sim.demo import RunProcess
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.workload import Workload
from beaver_sim.storage.fs import RealFS
from beaver_sim.storage.wal import OnRecord

Mark = tuple[str, str, int]  # a record's (type, job, attempt): what it says, whatever its seq
Cut = tuple[int, Mark]  # the last record a killed process left: its seq and its mark
BEAVER = (sys.executable, "-m", "beaver_sim.cli")
READY = re.compile(r"^ready")
LATENESS = re.compile(r"^timer lateness: p99 ([0-9.]+) ms, max ([0-9.]+) ms")


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
    """Job by job, the simulated run against the real one; an attempt drawn within `margin` of the
    timeout is borderline (the real run's lateness: RealRun.margin, the worst its lives saw, so
    that one late event above the p99 cannot make an agreement look like a wrong prediction)."""
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


@dataclass(frozen=True, slots=True)
class RealRun:
    """What a real run left: its jobs, the timer lateness its lives reported (the worst p99, and
    the worst max: the margin for borderline attempts), the last record the killed life wrote,
    and its wall time."""

    jobs: Mapping[str, Job]
    p99: float
    margin: float
    killed_after: Cut | None
    seconds: float


def run_real(
    config: Config,
    workload: Workload,
    *,
    kill_after: float | None = None,
    beaver: Sequence[str] = BEAVER,
    timeout: float = 120.0,
) -> RealRun:
    """Enqueue the workload's jobs into the new data directory `config.data_dir`, then run `beaver
    run --exit-when-idle` as a real process with exactly `config` (a YAML file next to the data
    directory; no BEAVER_* variable reaches it; /metrics on a free port). With `kill_after`, the
    first process is killed with SIGKILL that many seconds after `ready`, and a second one recovers
    and finishes."""
    if os.path.exists(config.data_dir):
        raise BeaverError(f"{config.data_dir}: the real run needs a new data directory")
    base = os.path.abspath(config.data_dir)
    settings = dataclasses.asdict(replace(config, data_dir=base, metrics_port=0))
    config_file, jobs_path = f"{base}.yaml", f"{base}.jobs.json"
    with open(config_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(settings, f)
    with open(jobs_path, "wb") as f:
        f.write(orjson.dumps(job_file(workload, config.seed)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEAVER_")}
    cwd = tempfile.gettempdir()  # no configs/default.yaml under it: the YAML file says everything
    common = ["--config", config_file]
    t0 = time.monotonic()  # wall-clock ok: times the real processes, never the simulator
    enqueue = [*beaver, "enqueue", *common, "--create", "--file", jobs_path]
    subprocess.run(enqueue, check=True, capture_output=True, env=env, cwd=cwd)
    lateness: list[tuple[float, float]] = []  # (p99, max) per life that reported it
    killed_after = None
    if kill_after is not None:
        first = RunProcess([*beaver, "run", *common, "--exit-when-idle"], env=env, cwd=cwd)
        try:
            first.wait_line(READY, timeout)
            time.sleep(kill_after)
            status = subprocess.run(
                [*beaver, "status", *common, "--json"], capture_output=True, env=env, cwd=cwd
            )
            if status.returncode == 0:
                st = orjson.loads(status.stdout)
                lateness.append((st["timer_lateness_p99"], st["timer_lateness_max"]))
        finally:
            first.stop()  # SIGKILL
        killed_after = last_record(config_file)
    last = RunProcess([*beaver, "run", *common, "--exit-when-idle"], env=env, cwd=cwd)
    try:
        if last.proc.wait(timeout) != 0:
            raise BeaverError(f"beaver run exited with code {last.proc.returncode}: {last.lines[-3:]}")
        m = last.wait_line(LATENESS, 5.0)
    finally:
        last.stop()
    lateness.append((float(m.group(1)) / 1e3, float(m.group(2)) / 1e3))
    p99, worst = max(p for p, _ in lateness), max(w for _, w in lateness)
    return RealRun(real_state(config_file).jobs, p99, worst, killed_after, time.monotonic() - t0)


def real_state(config_file: str) -> JobQueue:
    """The state of the data directory a config file names, read as recovery would (read-only)."""
    return _inspect(config_file).state


def last_record(config_file: str) -> Cut | None:
    """The seq and mark of the last whole record in the log of the config file's data directory."""
    last: list[dict[str, Any]] = []
    _inspect(config_file, lambda rec, _lsn: last.append(rec))
    return (last[-1]["seq"], _mark(last[-1])) if last else None


def _inspect(config_file: str, on_record: OnRecord | None = None) -> Inspection:
    config = load_config(config_file, {})
    found = inspect(
        RealFS(),
        config.wal_dir,
        config.snapshot_dir,
        on_record,
        every_record=on_record is not None,
        retention=config.completed_retention,
    )
    if found.problem is not None and not found.problem.torn:
        raise BeaverError(f"{config.data_dir}: {found.problem}")
    return found


def _mark(rec: dict[str, Any]) -> Mark:
    return rec["type"], rec["job"], rec.get("attempt", 0)


def simulate(config: Config, workload: Workload, killed_after: Cut | None = None) -> JobQueue:
    """The simulated run of the same jobs. With `killed_after` (a real run's kill -9), it crashes
    (process model) right after the record that says what the real log's last record says, and
    recovers: cut by content, not by seq, so a borderline attempt that wrote one record more or
    less before the kill does not move the cut for every other job."""
    sim = Simulation(replace(config, data_dir="sim:/run"), workload, config.seed)
    if killed_after is not None:
        seq, mark = killed_after
        same = [rec["seq"] for rec, _start, _end in sim.run().records(0) if _mark(rec) == mark]
        sim = replace(sim, crash=CrashPlan("record", same[0] if same else seq))
    result = sim.run()
    if not result.summary["invariants"]["ok"]:
        raise BeaverError(
            f"the simulated run broke an invariant: {result.summary['invariants']['violations'][0]}"
        )
    state: JobQueue = result.state  # (SimResult.state is Any: None only if the run ended refused or failed)
    return state
