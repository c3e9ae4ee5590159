"""What a run produced: `SimResult` with `summary`, the `beaver sim --json` contract of
docs/contracts.md, and pandas DataFrames (jobs, attempts, WAL records, metric samples over virtual
time), plus `Life`, one process lifetime of a run. Apart from the run loop (sim/experiment.py
imports this module, never the other way): reading results needs none of it, and pandas loads only
when a DataFrame is first asked for."""

from __future__ import annotations

import hashlib
import math
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from beaver_sim.core.types import Config, JobStatus
from beaver_sim.sim.capture import wal_records
from beaver_sim.sim.checker import Checker, Trace, Violation
from beaver_sim.sim.faults import CrashHook, CrashPlan
from beaver_sim.sim.fs import SimFS
from beaver_sim.sim.workers import SimWorkers
from beaver_sim.sim.workload import Workload
from beaver_sim.storage.wal import list_segments

if TYPE_CHECKING:  # pandas costs 0.3 s to import: only the DataFrame properties below load it
    import pandas as pd


class Inputs(Protocol):
    """What a result reads of the run's inputs: an `experiment.Simulation` (typed so, this module
    stays below the run loop that imports it)."""

    config: Config
    workload: Workload
    seed: int
    model: str
    mutant: str | None

    @property
    def plans(self) -> tuple[CrashPlan, ...]: ...


@dataclass
class Life:
    """One process lifetime of a run: from its start (0, or a crash plus `restart_delay`) to its
    crash or the end."""

    index: int
    start: float
    first_attempt: int
    start_lsn: int = 0  # where this life began to write the log
    fs: SimFS | None = None  # the files as this life left them (before a crash took its toll)
    end: float = math.inf
    events: int = 0
    recovery: dict[str, Any] | None = None
    crash: dict[str, Any] | None = None
    end_lsn: int | None = None  # a crashed life: the LSN of its crash (nothing after it counts)
    trace: Trace | None = None  # its records, when already read (else read from `fs` on demand)
    recovered_key: tuple[Any, ...] | None = None  # what the recovery that began it rebuilt
    recovered_seq: int | None = None  # last seq the next life recovered (None: this life did not crash)
    hook: CrashHook | None = None  # with `observe`: the WAL writes and persistence points it saw
    recovery_ops: int = 0  # FS calls its recovery made (its hook's count when the storage opened)


def digest(files: dict[str, bytes]) -> str:
    """sha256 over paths and contents, in path order."""
    h = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        h.update(b"%s\0%d\0" % (path.encode(), len(data)))
        h.update(data)
    return h.hexdigest()


@dataclass(eq=False)
class SimResult:
    """What a run produced: `summary` (docs/contracts.md), `violations`, the final files, and DataFrames
    built on first use (jobs, attempts, wal, metrics)."""

    sim: Inputs  # the Simulation that ran
    checker: Checker
    workers: SimWorkers
    lives: list[Life] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    sent: list[tuple[float, list[str]]] = field(default_factory=list)  # (time, jobs) clients sent
    acks: list[tuple[float, list[str]]] = field(default_factory=list)  # (time, jobs) acknowledged
    fs: SimFS | None = None
    state: Any = None  # the final JobQueue (None when the run ended refused or failed)
    end_lsn: int = 0
    ending: str = "quiescent"  # or "refused" (recovery would not start), "error" (the controller raised)

    @property
    def violations(self) -> list[Violation]:
        return self.checker.violations

    @property
    def ok(self) -> bool:
        return self.checker.ok

    @property
    def files(self) -> dict[str, bytes]:
        """Path -> bytes of every file in the final data directory."""
        return self.fs.snapshot_files() if self.fs is not None else {}

    @property
    def crashes(self) -> list[dict[str, Any]]:
        return [life.crash for life in self.lives if life.crash is not None]

    @property
    def recoveries(self) -> list[dict[str, Any]]:
        return [life.recovery for life in self.lives if life.recovery is not None]

    def records(self, life: int = 0) -> Trace:
        """(record, start LSN, end LSN) of every whole record life `life` wrote."""
        return self.life_records(self.lives[life])

    def life_records(self, life: Life) -> Trace:
        """The records `life` wrote, read back from its files (unless already read)."""
        if life.trace is not None:
            return life.trace
        if life.fs is None:
            return []
        trace = wal_records(life.fs, self.sim.config.wal_dir, life.start_lsn)
        if life.end_lsn is not None:
            trace = [t for t in trace if t[2] <= life.end_lsn]
        return trace

    @property
    def virtual_seconds(self) -> float:
        return self.lives[-1].end if self.lives else 0.0

    @cached_property
    def wal_files(self) -> dict[str, bytes]:
        """The final WAL segments, path -> bytes."""
        if self.fs is None:
            return {}
        wal_dir = self.sim.config.wal_dir
        if not self.fs.is_dir(wal_dir):
            return {}
        paths = [posixpath.join(wal_dir, n) for n in list_segments(self.fs, wal_dir)]
        return {SimFS._norm(p): self.fs.read_bytes(p) for p in paths}

    def successes(self) -> dict[str, int]:
        """Job -> how many of its attempts finished successfully (its work was done) before their
        life ended: more than one is a duplicate execution (at-least-once)."""
        done: list[str] = []  # (counted in one Counter call: a sweep asks this of every point)
        attempts = self.workers.attempts
        for life, nxt in zip(self.lives, [*self.lives[1:], None]):
            stop, end = len(attempts) if nxt is None else nxt.first_attempt, life.end
            ran = attempts[life.first_attempt : stop]
            done += [a.job for a in ran if a.ok and a.start + a.duration <= end]
        return dict(Counter(done))

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The `beaver sim --json` contract (docs/contracts.md), plus a few more keys. Every value is
        deterministic except the measured `recovery.seconds`."""
        sim, cfg = self.sim, self.sim.config
        q = self.state
        hist: dict[str, int] = {}
        completed = dead = 0
        if q is not None:
            counts: dict[int, int] = {}
            for job in q.jobs.values():
                counts[job.attempt] = counts.get(job.attempt, 0) + 1
            hist = {str(k): counts[k] for k in sorted(counts)}
            completed, dead = q.counts[JobStatus.COMPLETED], q.counts[JobStatus.DEAD]
        crashes, recoveries = self.crashes, self.recoveries
        dup = sum(1 for n in self.successes().values() if n > 1)
        crash = crashes[0] if crashes else None
        if crash is None and sim.plans:  # planned, but the run ended before reaching it
            crash = {"point": sim.plans[0].describe(), "model": sim.model, "reached": False}
        return {
            "seed": sim.seed,
            "jobs": sim.workload.jobs,
            "completed": completed,
            "dead": dead,
            "attempts": hist,
            "events": sum(life.events for life in self.lives),
            "virtual_seconds": self.virtual_seconds,
            "wal_bytes": self.end_lsn,
            "wal_sha256": digest(self.wal_files),
            "files_sha256": digest(self.files),
            "crash": crash,
            "recovery": recoveries[0] if recoveries else None,
            "crashes": crashes,
            "recoveries": recoveries,
            "ending": self.ending,
            "duplicates": dup,
            "jobs_lost": len(self.checker.lost),
            "model": sim.model,
            "mutant": sim.mutant,
            "fsync": cfg.fsync,
            "workers": cfg.worker_count,
            "invariants": {"ok": self.ok, "violations": [v.as_dict() for v in self.violations]},
            "token": self.checker.token,
        }

    # -- DataFrames ----------------------------------------------------------------------------

    @cached_property
    def jobs(self) -> pd.DataFrame:
        """One row per job a client sent: final status ("missing" if the end state lacks it),
        attempts, when it was submitted and acknowledged, and how often its work succeeded."""
        jobs = self.state.jobs if self.state is not None else {}
        wins = self.successes()
        sent: dict[str, float] = {}
        acked: dict[str, float] = {}
        for when, target in ((sent, self.sent), (acked, self.acks)):
            for t, ids in target:
                for job_id in ids:
                    when.setdefault(job_id, t)
        rows = []
        for job_id in self.checker.submitted:
            job = jobs.get(job_id)
            rows.append(
                (
                    job_id,
                    job.status.value if job is not None else "missing",
                    job.attempt if job is not None else 0,
                    sent.get(job_id, math.nan),
                    acked.get(job_id, math.nan),
                    wins.get(job_id, 0),
                )
            )
        import pandas as pd

        return pd.DataFrame(
            rows, columns=["job", "status", "attempts", "submitted", "acknowledged", "successes"]
        )

    @cached_property
    def attempts(self) -> pd.DataFrame:
        """One row per attempt a worker started. outcome: completed, failed, timeout (it ran past
        task_timeout; its result was stale), or interrupted (a crash came first)."""
        timeout = self.sim.config.task_timeout
        rows = []
        attempts = self.workers.attempts
        for life, nxt in zip(self.lives, [*self.lives[1:], None]):
            stop = len(attempts) if nxt is None else nxt.first_attempt
            for a in attempts[life.first_attempt : stop]:
                end = a.start + a.duration
                if a.start + min(a.duration, timeout) > life.end:
                    outcome = "interrupted"
                elif a.duration > timeout:
                    outcome = "timeout"
                else:
                    outcome = "completed" if a.ok else "failed"
                rows.append((a.job, a.attempt, a.worker, life.index, a.start, a.duration, end, a.ok, outcome))
        import pandas as pd

        return pd.DataFrame(
            rows, columns=["job", "attempt", "worker", "life", "start", "duration", "end", "ok", "outcome"]
        )

    @cached_property
    def wal(self) -> pd.DataFrame:
        """One row per record any life appended, with its LSN (byte offset in the log) and whether
        it survived the crash that ended its life."""
        rows = []
        for life in self.lives:
            kept = math.inf if life.recovered_seq is None else life.recovered_seq
            for rec, start, end in self.life_records(life):
                rows.append(
                    (
                        life.index,
                        rec["seq"],
                        start,
                        end - start,
                        rec["type"],
                        rec["job"],
                        rec.get("attempt", 0),
                        rec["seq"] <= kept,
                    )
                )
        import pandas as pd

        return pd.DataFrame(
            rows, columns=["life", "seq", "lsn", "bytes", "type", "job", "attempt", "survived"]
        )

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Samples of the controller's state and counters every `sample_every` virtual seconds while
        work remained (counters restart with each life)."""
        import pandas as pd

        return pd.DataFrame(
            self.samples,
            columns=[
                "time",
                "life",
                "pending",
                "in_flight",
                "completed",
                "dead",
                "dispatched",
                "retried",
                "timeouts",
                "stale",
                "snapshots",
                "wal_lsn",
            ],
        )
