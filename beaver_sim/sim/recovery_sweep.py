"""The recovery sweep: crash, then crash again while recovering from it (at each FS call of the
recovery, in the first write after it, at each persistence point of the first checkpoint), recover
a second time and run on to the end, checking every invariant. One DataFrame row per pair of
crashes; each pair runs from scratch (no sharing: the second crash is in the second life)."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from beaver_sim.sim.executors import executor as make_executor
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import POINTS, CrashPlan
from beaver_sim.sim.frames import RECOVERY_COLUMNS, recovery_row
from beaver_sim.sim.points import base_run, enumerate_points
from beaver_sim.storage.log_format import segment_seq

if TYPE_CHECKING:
    import pandas as pd


def recovery_points(sim: Simulation, first: CrashPlan) -> list[tuple[str, CrashPlan]]:
    """Where a second crash can hit the life that recovers from `first`, labelled by phase:
    `recovery` (each FS call of it: removing a stale .tmp, the torn tail's `.broken` copy, its
    write, sync, and the truncation), `first-write` (each FS call up to the first WAL fdatasync
    after recovery, and the end and middle of each record of that write: the REQUEUE and DISPATCH
    records `start` appends), `checkpoint` (each persistence point of the first checkpoint)."""
    r = replace(sim, crash=[first], observe=True, sample_every=0).run()
    if len(r.lives) < 2 or r.lives[1].hook is None:
        return []
    life = r.lives[1]
    hook = life.hook
    assert hook is not None
    calls, opened = hook.calls, life.recovery_ops

    def is_wal_sync(op: str, path: str) -> bool:
        return op == "sync" and segment_seq(posixpath.basename(path)) is not None

    synced = next((k + 1 for k in range(opened, len(calls)) if is_wal_sync(*calls[k])), len(calls))
    out = [("recovery" if k <= opened else "first-write", CrashPlan("op", k)) for k in range(1, synced + 1)]
    first_write = next(((start, n) for op, start, n in hook.writes if op > opened), None)
    if first_write is not None:
        start, n = first_write
        for _rec, a, b in r.records(1):
            if start <= a < start + n:
                out += [("first-write", CrashPlan("lsn", (a + b) // 2)), ("first-write", CrashPlan("lsn", b))]
    seen = {(name, k) for name, k, _lsn, _t in hook.points}
    out += [("checkpoint", CrashPlan("point", name, 1)) for name in POINTS if (name, 1) in seen]
    return out


def _recovery_rows(token: str, firsts: list[list[Any]]) -> list[dict[str, Any]]:
    """The rows of some first crashes: each second crash of `recovery_points`, run from scratch."""
    sim = Simulation.from_token(token, sample_every=0)
    rows = []
    for f in firsts:
        first = CrashPlan.from_list(f)
        for phase, second in recovery_points(sim, first):
            run = replace(sim, crash=[first, second])
            rows.append(recovery_row(first, second, phase, run, run.run()))
    return rows


def recovery_sweep(
    sim: Simulation,
    first: str | Sequence[CrashPlan | str],
    *,
    executor: Executor | str | None = "serial",
    workers: int | None = None,
) -> pd.DataFrame:
    """Crash, then crash again while recovering from it (`recovery_points`), recover a second time
    and run on to the end, checking every invariant: one row per pair. `first` names the first
    crashes as crash_sweep does (a point set or plans). `lives` is 3 when both crashes happened
    (negative: the second crash was never reached, the run had that many lives); `truncated`
    lists each recovery's torn bytes cut; `requeued` is False when the second crash came before
    the storage opened (inside recovery itself)."""
    base = base_run(sim)
    firsts = [p.as_list() for p in enumerate_points(base, first, sim.seed)]
    token = replace(sim, crash=None).token()
    rows: list[dict[str, Any]] = []
    with make_executor(executor, workers, None) as ex:
        if ex is None:
            rows = _recovery_rows(token, firsts)
        else:
            for part in ex.map(partial(_recovery_rows, token), [[f] for f in firsts]):
                rows += part
    import pandas as pd

    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)
