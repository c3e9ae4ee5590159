"""The frames a sweep returns, and reading them back: one row per crash point (`COLUMNS`, built by
`point_row` from the crashed run and `sweep_frame` from all of them, in point order) or per pair of
crashes (`RECOVERY_COLUMNS`, `recovery_row`); `violations`, `failing` and `earliest` read a sweep's
frame. Every column is deterministic except `recovery_seconds`, the measured wall time of the real
recovery."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from beaver_sim.sim.checker import CODES, INVARIANTS
from beaver_sim.sim.experiment import Simulation
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.results import SimResult

if TYPE_CHECKING:  # pandas takes 0.3 s to import: a sweep loads it while its tasks run (sweep.py)
    import pandas as pd

COLUMNS = [
    "point",
    "kind",
    "at",
    "occurrence",
    "offset",
    "time",
    "model",
    "outcome",
    "violations",
    "invariants",
    "detail",
    "jobs_lost",
    "duplicates",
    "records_replayed",
    "bytes_truncated",
    "model_seconds",
    "recovery_seconds",
    "problems",
    "token",
]


OWN = ("offset", "time", "record", "records_replayed", "bytes_truncated", "model_seconds", "recovery_seconds")
# a merged row's own columns (its crash and recovery); the rest is the run it merged into


def point_row(r: SimResult) -> dict[str, Any]:
    """The sweep row of one crashed run (without the point's own labels)."""
    crash = r.crashes[0] if r.crashes else None
    rec = r.recoveries[0] if r.recoveries else {}
    vs = r.violations
    if r.ending == "refused":
        outcome = "refused"
    elif vs:
        outcome = "violation"
    else:
        outcome = "ok" if crash is not None else "no-crash"
    return {
        "offset": crash["lsn"] if crash else None,
        "time": crash["time"] if crash else None,
        "outcome": outcome,
        "violations": len(vs),
        "invariants": ",".join(str(i) for i in sorted({v.invariant for v in vs})),
        "detail": describe(vs[0].invariant, vs[0].job, vs[0].detail) if vs else "",
        "jobs_lost": len(r.checker.lost),
        "duplicates": sum(1 for n in r.successes().values() if n > 1),
        "records_replayed": rec.get("records_replayed", 0),
        "bytes_truncated": rec.get("bytes_truncated", 0),
        "model_seconds": rec.get("model_seconds", 0.0),
        "recovery_seconds": rec.get("seconds", 0.0),
        "record": crash["record"] if crash else None,
        "problems": [(v.invariant, v.job, v.detail) for v in vs],
    }


def describe(invariant: int, job: str | None, detail: str) -> str:
    """A violation in the `detail` column's words."""
    return f"invariant {invariant} {CODES[invariant]}: " + (f"job {job}: " if job else "") + detail


def sweep_frame(
    sim: Simulation,
    plans: list[CrashPlan],
    results: dict[int, dict[str, Any]],
    base_violations: list[dict[str, Any]],
    **attrs: Any,
) -> pd.DataFrame:
    """A crash sweep's frame: the row of each of `plans` (`results`: point -> `point_row`), labelled
    with its plan and replay token, in point order. `df.attrs` holds `attrs`, `merged` (rows that
    took a merged continuation's verdict) and `base_violations` (the uncrashed run's, point -1)."""
    rows, merged = [], 0
    tokens = sim.tokens([plan] for plan in plans)
    for i, plan in enumerate(plans):
        row = dict(results[i])
        row.pop("record")
        merged += row.pop("merged", False)
        row["problems"] = json.dumps(row["problems"])
        row.update(point=i, kind=plan.kind, at=str(plan.at), occurrence=plan.occurrence, model=sim.model)
        row["token"] = tokens[i]
        rows.append(row)
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    # small values only: pandas copies attrs into every frame derived from df
    df.attrs.update(attrs, merged=merged, base_violations=base_violations)
    return df


def violations(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Every violation a sweep found, as {point, invariant, code, job, detail, token}: the uncrashed
    run's first (point -1), then each point's in order."""
    out = [
        {"point": v["point"], "invariant": v["invariant"], "code": CODES[v["invariant"]]}
        | {k: v[k] for k in ("job", "detail", "token")}
        for v in df.attrs["base_violations"]
    ]
    for point, token, problems in zip(df["point"], df["token"], df["problems"]):
        for inv, job, detail in json.loads(problems):
            out.append(
                {"point": int(point), "invariant": inv, "code": CODES[inv]}
                | {"job": job, "detail": detail, "token": token}
            )
    return out


def failing(df: pd.DataFrame) -> bool:
    """Did the sweep find any violation (at a crash point or in the uncrashed run)?"""
    return bool(df.attrs["base_violations"]) or bool((df["violations"] > 0).any())


def earliest(df: pd.DataFrame) -> dict[str, Any]:
    """The first violation of a sweep: its point, invariant, detail and token."""
    v = df.attrs["base_violations"]
    if not v:
        row = df[df["violations"] > 0].iloc[0]
        v = [{"point": int(row["point"]), "token": row["token"]}]
        v[0]["invariant"], v[0]["job"], v[0]["detail"] = json.loads(row["problems"])[0]
    return {k: v[0][k] for k in ("point", "invariant", "job", "detail", "token")} | {
        "code": CODES[v[0]["invariant"]],
        "name": INVARIANTS[v[0]["invariant"]],
    }


RECOVERY_COLUMNS = ["first", "second", "phase", "outcome", "violations", "invariants", "detail"]
RECOVERY_COLUMNS += ["lives", "truncated", "requeued", "token"]


def recovery_row(
    first: CrashPlan, second: CrashPlan, phase: str, run: Simulation, r: SimResult
) -> dict[str, Any]:
    """The row of `run`, crashed at `first` and again at `second` while recovering (in `phase`)."""
    vs = r.violations
    crashed = len(r.crashes) == 2
    return {
        "first": first.describe(),
        "second": second.describe(),
        "phase": phase,
        "outcome": "refused" if r.ending == "refused" else "violation" if vs else "ok",
        "violations": len(vs),
        "invariants": ",".join(str(i) for i in sorted({v.invariant for v in vs})),
        "detail": describe(vs[0].invariant, vs[0].job, vs[0].detail) if vs else "",
        "lives": len(r.lives) if crashed else -len(r.lives),
        "truncated": [rec["bytes_truncated"] for rec in r.recoveries],
        "requeued": r.lives[1].recovery is not None,
        "token": run.token(),
    }
