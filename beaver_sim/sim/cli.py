"""`beaver sim` and `beaver crash-sweep`: the simulator on the command line.

`register(subparsers)` adds both commands to the main parser (beaver_sim/cli.py). The simulator's
modules (and pandas) are imported only when one of them runs, so `beaver --help` stays fast. Both
exit 0 when every invariant held, 1 when the checker found a violation; errors are BeaverError lines."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from itertools import islice
from typing import Any

from beaver_sim.core.types import BeaverError
from beaver_sim.extras import require
from beaver_sim.sim.fs import CRASH_MODELS, METADATA_FIRST, POWER_LOSSES, TORN_BLOCKS

SIM_DATA_DIR = "sim:/run"  # SimFS treats sim:/x as /x (beaver_sim/sim/fs.py)
CONFIG_FLAGS = {  # dest -> (Config field, flag as the user typed it)
    "workers": ("worker_count", "--workers"),
    "timeout": ("task_timeout", "--timeout"),
    "snapshot_interval": ("snapshot_interval", "--snapshot-interval"),
    "max_retry": ("max_retry", "--max-retry"),
    "fsync": ("fsync", "--fsync"),
    "seed": ("seed", "--seed"),
    "failure_rate": ("failure_rate", "--failure-rate"),
    "restart_delay": ("restart_delay", "--restart-delay"),
}
CRASH_FLAGS = {
    "--crash-at-offset": "lsn",
    "--crash-at-record": "record",
    "--crash-at-point": "point",
    "--crash-at-time": "time",
}


class _Crash(argparse.Action):
    """Collect the --crash-at-* flags in the order given: the i-th crash hits the i-th life."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        flag = option_string or ""
        kind = CRASH_FLAGS[flag]
        if not _crash_value_ok(kind, values):
            parser.error(f"{flag} {values}: expected {_CRASH_VALUE[kind]}")
        crashes = list(getattr(namespace, "crashes", None) or [])
        crashes.append(f"{kind}:{values}")
        namespace.crashes = crashes


_CRASH_VALUE = {
    "lsn": "a WAL byte offset (a whole number), e.g. 5000",
    "record": "a record number (a whole number), e.g. 17",
    "point": "a point name, optionally #N for its N-th time, e.g. snapshot-renamed#2",
    "time": "virtual seconds (a number), e.g. 1.5",
}


def _crash_value_ok(kind: str, value: str) -> bool:
    """Checked as typed, so an error quotes the flag rather than the internal KIND:WHERE spelling."""
    try:
        if kind == "time":
            return float(value) >= 0
        if kind == "point":
            name, _, occurrence = value.partition("#")
            return bool(name) and int(occurrence or 1) >= 1
        return int(value) >= 0
    except ValueError:
        return False


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: configs/default.yaml if present)")
    p.add_argument("--jobs", type=int, default=None, help="jobs in the workload (default 100)")
    p.add_argument("--seed", help="seed of the workload, the work's durations and failures")
    p.add_argument("--workers", help="attempts running at once (worker_count)")
    p.add_argument("--failure-rate", help="probability an attempt fails")
    p.add_argument("--timeout", help="per-attempt timeout, e.g. 3s (task_timeout)")
    p.add_argument("--snapshot-interval", help="e.g. 2s; 0 disables")
    p.add_argument("--max-retry", help="attempts before a job is dead")
    p.add_argument("--restart-delay", help="crash to the restarted controller's start, e.g. 150ms")
    p.add_argument("--fsync", help="always | interval | never")
    p.add_argument(
        "--rate", type=float, default=None, help="Poisson arrivals per virtual second (default: all at t=0)"
    )
    p.add_argument(
        "--durations", choices=("uniform", "exponential"), help="attempt durations (default uniform)"
    )
    p.add_argument(
        "--misbehave",
        help="hostile handlers, comma separated: huge-reason, unprintable-reason, mutate-payload",
    )
    p.add_argument("--delayed", type=int, default=0, metavar="N", help="every N-th job delayed 0.5-2.5 s")
    p.add_argument("--cancel", type=int, default=0, metavar="N", help="every N-th delayed job cancelled")
    p.add_argument("--requeue-at", type=float, default=0.0, metavar="T", help="requeue dead jobs at T s")
    p.add_argument(
        "--crash-model",
        choices=CRASH_MODELS,
        default=None,
        help="default process; what each keeps: docs/contracts.md, Crash models",
    )
    p.add_argument("--mutant", help="a deliberately broken variant (see `beaver sim --list-mutants`)")
    p.add_argument("--json", action="store_true", help="one JSON object (docs/contracts.md)")


def register(subparsers: Any) -> None:
    """Add `sim` and `crash-sweep` to the main parser's subcommands."""
    sim = subparsers.add_parser(
        "sim", help="one deterministic simulated run, optionally crashed and recovered"
    )
    _common(sim)
    for flag, kind in CRASH_FLAGS.items():
        what = {"lsn": "LSN", "record": "K", "point": "NAME[#N]", "time": "SECONDS"}[kind]
        sim.add_argument(flag, metavar=what, action=_Crash, dest="crashes", help=_CRASH_HELP[kind])
    sim.add_argument(
        "--torn-bytes", type=int, default=0, help="power loss: unsynced bytes per file that survive"
    )
    sim.add_argument("--replay", metavar="TOKEN", help="rerun exactly what a replay token describes")
    sim.add_argument(
        "--export",
        metavar="DIR",
        help="write the simulated data directory to DIR (new or empty), for wal dump/verify and status",
    )
    sim.add_argument(
        "--export-crash",
        metavar="N",
        type=int,
        help="with --export: the files the N-th crash left (what recovery read), not the run's end",
    )
    sim.add_argument("--list-mutants", action="store_true", help="name and explain every mutant, then exit")
    sim.set_defaults(func=cmd_sim, crashes=None)

    sweep = subparsers.add_parser(
        "crash-sweep", help="crash a run at every point, recover, check the invariants, run on"
    )
    _common(sweep)
    sweep.add_argument(
        "--points",
        default="records",
        help="records (default) | all | bytes | marks | io | sample:N and lsn:X record:K point:NAME#N "
        "time:T enospc:K short:K eio:K erename:K edirsync:K, joined with + or commas",
    )
    sweep.add_argument("--executor", choices=("process", "dask", "serial"), default="process")
    sweep.add_argument(
        "--scheduler", help="with --executor dask: a scheduler address (default: a LocalCluster)"
    )
    sweep.add_argument("--processes", type=int, default=None, help="workers of the executor (default: CPUs)")
    sweep.add_argument("--out", help="write the DataFrame: FILE.csv or FILE.parquet")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--no-minimize", action="store_true", help="skip the minimal counterexample search")
    sweep.add_argument(
        "--no-merge",
        action="store_true",
        help="run every continuation to its end, even once its state meets an earlier one's (same rows)",
    )
    sweep.set_defaults(func=cmd_crash_sweep)


_CRASH_HELP = {
    "lsn": "crash while writing WAL byte LSN (the record holding it is torn); repeatable",
    "record": "crash right after record K's last byte; repeatable",
    "point": "crash at a persistence point (snapshot-tmp-written, snapshot-renamed, wal-rotated, ...)",
    "time": "crash at a virtual time; repeatable",
}


def _simulation(args: argparse.Namespace, crash: Any = None) -> Any:
    """The Simulation the flags describe (config: flag > BEAVER_* > YAML > default)."""
    from beaver_sim.config import load_config
    from beaver_sim.sim.experiment import Simulation
    from beaver_sim.sim.workload import Workload

    if args.jobs is not None and args.jobs < 0:
        raise BeaverError(f"--jobs {args.jobs}: must be 0 or more")
    if args.rate is not None and args.rate < 0:
        raise BeaverError(f"--rate {args.rate:g}: must be 0 or more (0: every job at t=0)")
    flags = {key: getattr(args, dest) for dest, (key, _flag) in CONFIG_FLAGS.items()}
    config = load_config(args.config, flags, flag_names=dict(CONFIG_FLAGS.values()))
    # the run lives in SimFS, never in the configured data directory: say so in every path it prints
    config = replace(config, data_dir=SIM_DATA_DIR, wal_path="", snapshot_path="")
    workload = Workload(
        jobs=100 if args.jobs is None else args.jobs,
        rate=args.rate or 0.0,
        durations=args.durations or "uniform",
        misbehave=args.misbehave or "",
        delayed=args.delayed,
        cancel=args.cancel,
        requeue_at=args.requeue_at,
    )
    return Simulation(
        config, workload, config.seed, crash=crash, model=args.crash_model or "process", mutant=args.mutant
    )


def cmd_sim(args: argparse.Namespace) -> int:
    """`beaver sim`: run, print the summary (a table, or JSON), exit 1 on a violation."""
    from beaver_sim.sim import mutants
    from beaver_sim.sim.experiment import Simulation
    from beaver_sim.sim.export import check_destination
    from beaver_sim.sim.faults import CrashPlan

    if args.list_mutants:
        for name, m in {**mutants.MUTANTS, **mutants.OPERATOR_MUTANTS}.items():
            print(f"{name}  (checkpoint {m.checkpoint})\n    {m.doc}\n")
        return 0
    if args.replay:
        given = [
            f
            for f in (
                "jobs",
                "seed",
                "workers",
                "failure_rate",
                "timeout",
                "snapshot_interval",
                "max_retry",
                "restart_delay",
                "fsync",
                "rate",
                "durations",
                "crash_model",
                "mutant",
                "crashes",
            )
            if getattr(args, f) not in (None, False)
        ]
        if given:
            raise BeaverError(f"--replay fixes the whole run; drop --{given[0].replace('_', '-')}")
        sim = Simulation.from_token(args.replay)
    else:
        plans = [CrashPlan.parse(c) for c in args.crashes or []]
        if args.torn_bytes:
            plans = [CrashPlan(p.kind, p.at, p.occurrence, args.torn_bytes) for p in plans]
        sim = _simulation(args, plans or None)
    if args.export_crash is not None and not args.export:
        raise BeaverError("--export-crash needs --export DIR")
    if args.export_crash is not None and not 1 <= args.export_crash <= len(sim.plans):
        raise BeaverError(f"--export-crash {args.export_crash}: the run plans {len(sim.plans)} crash(es)")
    if args.export:
        check_destination(args.export)  # before the run: a destination in use fails at once
    result = sim.run()
    summary = result.summary
    if args.export:
        summary["export"] = _export(sim, result, args.export, args.export_crash)
    if args.json:
        print(json.dumps(summary))
    else:
        print(_sim_table(summary))
    return 0 if summary["invariants"]["ok"] else 1


def _export(sim: Any, result: Any, dest: str, crash: int | None) -> dict[str, Any]:
    """Write the run's data directory (or what crash `crash` left) to `dest`; what was written."""
    from beaver_sim.sim.export import export
    from beaver_sim.sim.faults import survivors

    fs = result.fs
    if crash is not None:
        crashed = [life for life in result.lives if life.crash is not None]
        if not 1 <= crash <= len(crashed):
            raise BeaverError(f"--export-crash {crash}: the run ended after {len(crashed)} crash(es)")
        life = crashed[crash - 1]
        fs = survivors(life.fs, life.crash["model"], sim.plans[life.index].torn)
    files = export(fs, sim.config.data_dir, dest)
    return {"dir": dest, "files": files, "after_crash": crash}


def _sim_table(s: dict[str, Any]) -> str:
    attempts = " ".join(f"{k}:{v}" for k, v in s["attempts"].items())
    lines = [
        f"jobs       {s['jobs']} (seed {s['seed']}, {s['workers']} workers, fsync {s['fsync']}"
        + (f", mutant {s['mutant']})" if s["mutant"] else ")"),
        f"ended      {s['completed']} completed, {s['dead']} dead   attempts {attempts or '-'}",
        f"run        {s['events']} events, {s['virtual_seconds']:.3f} virtual s, WAL {s['wal_bytes']} bytes",
        f"wal sha256 {s['wal_sha256']}",
    ]
    for i, crash in enumerate(s["crashes"]):
        lines.append(
            f"crash      {crash['point']} ({crash['model']}) at {crash['time']:.3f} s, LSN {crash['lsn']}"
        )
        if i < len(s["recoveries"]):
            lines += _recovery_lines(crash, s["recoveries"][i])
    if s["crash"] is not None and not s["crashes"]:
        lines.append(f"crash      {s['crash']['point']}: not reached (the run ended first)")
    v = s["invariants"]["violations"]
    lines.append("invariants ok" if not v else f"invariants {len(v)} violation(s):")
    for x in v[:10]:
        job = f" job {x['job']}:" if x["job"] else ""
        lines.append(f"  {x['invariant']} {x['code']} after {x['crash']}:{job} {x['detail']}")
    if len(v) > 10:
        lines.append(f"  ... and {len(v) - 10} more (--json lists them all)")
    if "export" in s:
        e = s["export"]
        when = f"after crash {e['after_crash']}" if e["after_crash"] else "at the end of the run"
        lines.append(f"exported   {len(e['files'])} files {when} to {e['dir']}")
    if v:
        lines.append(f"replay     beaver sim --replay {s['token']}")
        if expected := _expected(s["fsync"], s["model"], s["mutant"]):
            lines.append(f"expected   {expected}")
    return "\n".join(lines)


def _recovery_lines(crash: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """What recovery found, and why: how much of the log survived the crash, and what the clients
    did about the enqueues they had not seen acknowledged."""
    power = crash["model"] in POWER_LOSSES
    replayed, durable, written = rec["records_replayed"], crash.get("durable_lsn"), crash["lsn"]
    why = ""
    if not replayed and not rec["snapshot_seq"]:
        why = " (the crash came before the first record was " + ("fsynced)" if power else "complete)")
    lines = [
        f"recovery   {replayed} records replayed{why}, {rec['bytes_truncated']} torn bytes cut, "
        f"{rec['seconds'] * 1e3:.2f} ms measured, {rec['model_seconds'] * 1e3:.2f} ms modelled"
    ]
    if power and durable is not None and written is not None:
        kept = {
            TORN_BLOCKS: "what was fsynced, and some unsynced blocks (recovery cuts them)",
            METADATA_FIRST: "only what was fsynced, under every name made before it",
        }.get(crash["model"], "only what was fsynced")
        lines.append(f"survived   LSN {durable} of {written}: a power loss keeps {kept}")
    resubmitted, found = rec.get("resubmitted", 0), rec.get("found_in_log", 0)
    if resubmitted or found:
        lines.append(
            f"clients    {resubmitted} enqueue(s) never acknowledged were sent again"
            + (f"; {found} of them were already in the log (answered as already present)" if found else "")
        )
    return lines


def _expected(fsync: str, model: str, mutant: str | None) -> str:
    """Why violations are the point of this run (a known-unsafe configuration), or ''."""
    if mutant:
        return f"violations found, as expected of the mutant {mutant} (a deliberately broken design)"
    if fsync == "never" and model in POWER_LOSSES:
        return "violations found, as expected without fsync: a power loss drops acknowledged writes"
    return ""


def cmd_crash_sweep(args: argparse.Namespace) -> int:
    """`beaver crash-sweep`: sweep, print outcomes (a table, or JSON), write --out, exit 1 on a violation."""
    from beaver_sim.sim.sweep import (
        SweepInterrupted,
        crash_sweep,
        failing,
        minimal_counterexample,
        violations,
    )

    if args.out and not args.out.endswith((".csv", ".parquet")):
        raise BeaverError(f"--out {args.out}: expected a .csv or .parquet file name")
    if args.executor == "dask":
        require("dask.distributed", "dask")
    if args.out and args.out.endswith(".parquet"):
        require("pyarrow", "parquet")
    sim = _simulation(args)
    points = args.points
    options = {
        "executor": args.executor,
        "workers": args.processes,
        "scheduler": args.scheduler,
        "progress": False if args.no_progress or args.json else None,
        "merge": not args.no_merge,
    }
    try:
        df = crash_sweep(sim, points, **options)
    except SweepInterrupted as stop:
        print(_interrupted(stop, args.json), flush=True)
        return 130
    example, interrupted = None, False
    if failing(df) and not args.no_minimize:
        try:
            example = minimal_counterexample(sim, df, points, **{**options, "progress": False})
        except KeyboardInterrupt:  # the sweep itself finished: print it, without a counterexample
            interrupted = True
    if args.out:
        if args.out.endswith(".csv"):
            df.to_csv(args.out, index=False)
        else:
            df.to_parquet(args.out, index=False)
    a = df.attrs
    outcomes = {str(k): int(v) for k, v in df["outcome"].value_counts().sort_index().items()}
    result = {
        "points": a["points"],
        "ok": not failing(df),
        "violations": violations(df),
        "wal_bytes": a["wal_bytes"],
        "seconds": a["seconds"],
        "outcomes": outcomes,
        "model": sim.model,
        "mutant": sim.mutant,
        "counterexample": example,
    }
    if args.json:
        print(json.dumps(result | ({"interrupted": True} if interrupted else {})))
    else:
        print(_sweep_table(result, sim))
        if interrupted:
            print("interrupted during the search for a smaller counterexample")
    return 130 if interrupted else 0 if result["ok"] else 1


def _interrupted(stop: Any, as_json: bool) -> str:
    """What a sweep stopped by Ctrl-C finished: how many points, and the violations found there."""
    from beaver_sim.sim.checker import CODES

    if as_json:
        found = [
            {"point": i, "invariant": n, "code": CODES[n], "job": job, "detail": detail}
            for i, n, job, detail in stop.problems()
        ]
        return json.dumps(
            {"interrupted": True, "points": stop.total, "done": stop.done, "seconds": stop.seconds}
            | {"violations": found}
        )
    n = stop.count()
    lines = [
        f"interrupted after {stop.seconds:.1f} s: {stop.done} of {stop.total} crash points done, "
        + (f"{n} violation(s) among them:" if n else "invariants ok at every one of them")
    ]
    for i, inv, job, detail in islice(stop.problems(), 8):
        where = "the run without a crash" if i < 0 else f"point {i}"
        lines.append(f"  {inv} {CODES[inv]} at {where}:" + (f" job {job}:" if job else "") + f" {detail}")
    if n > 8:
        lines.append(f"  ... and {n - 8} more (--json has them all)")
    return "\n".join(lines)


def _sweep_table(r: dict[str, Any], sim: Any) -> str:
    outcomes = ", ".join(f"{n} {k}" for k, n in r["outcomes"].items())
    lines = [
        f"sweep      {r['points']} crash points ({sim.model}, fsync {sim.config.fsync}"
        + (f", mutant {sim.mutant})" if sim.mutant else ")")
        + f" over a {r['wal_bytes']}-byte WAL in {r['seconds']:.1f} s",
        f"outcomes   {outcomes}",
    ]
    v = r["violations"]
    lines.append("invariants ok at every point" if r["ok"] else f"invariants {len(v)} violation(s):")
    for x in v[:8]:
        where = "the run without a crash" if x["point"] < 0 else f"point {x['point']}"
        job = f" job {x['job']}:" if x["job"] else ""
        lines.append(f"  {x['invariant']} {x['code']} at {where}:{job} {x['detail']}")
    if len(v) > 8:
        lines.append(f"  ... and {len(v) - 8} more (--json or --out has them all)")
    c = r["counterexample"]
    if c:
        lines.append(
            f"earliest   point {c['earliest']['point']}: beaver sim --replay {c['earliest']['token']}"
        )
        lines.append(f"smallest   {c['jobs']} job(s): beaver sim --replay {c['smallest']['token']}")
    if not r["ok"] and (expected := _expected(sim.config.fsync, sim.model, sim.mutant)):
        lines.append(f"expected   {expected}")
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m beaver_sim.sim.cli sim ...` without the main CLI
    root = argparse.ArgumentParser(prog="beaver")
    register(root.add_subparsers(dest="command", required=True))
    ns = root.parse_args()
    try:
        sys.exit(ns.func(ns))
    except BeaverError as e:
        print(f"beaver {ns.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
