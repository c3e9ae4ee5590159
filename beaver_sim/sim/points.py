"""Where a sweep crashes: the run without a crash it starts from (`Base`: its records, writes and
persistence points) and the point sets a spec names (`enumerate_points`). Below both sweeps, the
crash sweep (sim/sweep.py) and the recovery sweep (sim/recovery_sweep.py), which each start from it."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from beaver_sim.core.types import BeaverError
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import IO_KINDS, CrashPlan
from beaver_sim.sim.fs import METADATA_FIRST, POWER_LOSS
from beaver_sim.sim.results import SimResult


@dataclass
class Base:
    """The uncrashed run a sweep starts from: its records, writes and persistence points."""

    result: SimResult

    @cached_property
    def starts(self) -> list[int]:
        """The start LSN of every WAL write, in order."""
        return [w[1] for w in self.writes]

    @cached_property
    def trace(self) -> list[tuple[dict[str, Any], int, int]]:
        """The records of the uncrashed run, with their LSNs."""
        return self.result.records(0)

    @property
    def end(self) -> int:
        return self.result.end_lsn

    @property
    def writes(self) -> list[tuple[int, int, int]]:
        hook = self.result.lives[0].hook
        return hook.writes if hook is not None else []

    @property
    def marks(self) -> list[tuple[str, int, int, float]]:
        hook = self.result.lives[0].hook
        return hook.points if hook is not None else []

    def lsn(self, plan: CrashPlan) -> int | None:
        """Where in the log a plan crashes (None: a time)."""
        if plan.kind == "lsn":
            lsn: int = plan.at  # (`at` is an LSN, a seq, a point's name or a time, by kind)
            return lsn
        if plan.kind == "record":
            seqs = self.trace
            i = plan.at - seqs[0][0]["seq"] if seqs else -1
            return seqs[i][2] if 0 <= i < len(seqs) else self.end
        if plan.kind == "point":
            for name, n, lsn, _t in self.marks:
                if name == plan.at and n == plan.occurrence:
                    return lsn
            return None
        return None

    @cached_property
    def ends(self) -> list[int]:
        return [end for _rec, _start, end in self.trace]

    def signature(self, plan: CrashPlan, model: str) -> tuple[Any, ...]:
        """Points with the same signature crash at the same moment, and their files differ at most
        in a torn tail (which recovery must cut): candidates to share the rest of the run."""
        model = plan.model or model
        if plan.kind not in ("lsn", "record"):
            return (plan.kind, plan.at, plan.occurrence, plan.torn)
        x = self.lsn(plan)
        starts = self.starts
        i = bisect.bisect_right(starts, x) - 1 if x is not None else -1
        if x is None or i < 0 or x >= starts[i] + self.writes[i][2]:
            return ("never",)  # past the end of the log: the run ends before reaching it
        if (model == POWER_LOSS and plan.torn == 0) or model == METADATA_FIRST:
            return ("write", i)  # the unsynced tail is lost whole, wherever in it the crash came
        # torn bytes aside: how many records a torn tail keeps is for the recovered key to tell
        return ("write", i, bisect.bisect_right(self.ends, x))


def base_run(sim: Simulation) -> Base:
    """The run without a crash, observed: every WAL write and persistence point it reaches."""
    return Base(replace(sim, crash=None, observe=True, sample_every=0).run())


SETS = ("all", "bytes", "records", "marks", "sample", "io", "times")


def enumerate_points(base: Base, points: str | Sequence[CrashPlan | str], seed: int = 0) -> list[CrashPlan]:
    """The crash points a spec names: point sets (`records+marks`) in the order the run reaches
    them, then explicit points (`lsn:300`, `record:7`, ...) in the order given, each once."""
    items = points.replace("+", ",").split(",") if isinstance(points, str) else list(points)
    found: list[tuple[tuple[int, int], CrashPlan]] = []
    given: list[CrashPlan] = []
    for item in items:
        if isinstance(item, CrashPlan):
            given.append(item)
            continue
        part = item.strip()
        name, _, arg = part.partition(":")
        if name not in SETS:
            if not arg:
                raise BeaverError(
                    f"points {part!r}: expected all, bytes, records, marks, io, sample:N, times:N "
                    "or KIND:WHERE"
                )
            given.append(CrashPlan.parse(part))
        elif name in ("bytes", "all"):
            found += [((x, 1), CrashPlan("lsn", x)) for x in range(base.end)]
        if name in ("marks", "all"):
            found += [((lsn, 0), CrashPlan("point", m, n)) for m, n, lsn, _t in base.marks]
        elif name == "records":
            for rec, start, end in base.trace:
                found.append(((end, 1), CrashPlan("record", rec["seq"])))
                found.append(((start + (end - start) // 2, 1), CrashPlan("lsn", start + (end - start) // 2)))
        elif name == "io":  # each write, fsync, rename and directory fsync fails, one at a time
            fs = base.result.fs
            calls = {"write": 0, "sync": 0, "rename": 0, "dirsync": 0}
            if fs is not None:
                calls = {
                    "write": fs.write_calls,
                    "sync": fs.syncs,
                    "rename": fs.renames,
                    "dirsync": fs.dir_syncs,
                }
            order = 0
            for kind, (op, _code, _keep) in IO_KINDS.items():
                found += [((0, order + k), CrashPlan(kind, k)) for k in range(1, calls[op] + 1)]
                order += calls[op]
        elif name == "times":  # in order with the others: after the writes made by then
            n, hook = _count(part, arg), base.result.lives[0].hook
            times, end = (hook.write_times if hook else []), base.result.summary["virtual_seconds"]
            for k in range(1, n + 1):
                t = round(end * k / (n + 1), 6)
                i = bisect.bisect_right(times, t)
                lsn = base.writes[i - 1][1] + base.writes[i - 1][2] if i else 0
                found.append(((lsn, 2), CrashPlan("time", t)))
        elif name == "sample":
            n = _count(part, arg)
            pool = enumerate_points(base, "all")
            picked = sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))
            found += [
                ((base.lsn(pool[i]) or 0, 0 if pool[i].kind == "point" else 1), pool[i]) for i in picked
            ]
    plans = [plan for _key, plan in sorted(found, key=lambda kp: kp[0])] + given
    return list(dict.fromkeys(plans))


def _count(part: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise BeaverError(f"points {part!r}: expected {part.partition(':')[0]}:N") from None
