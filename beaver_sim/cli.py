"""`beaver`, the command line: run, enqueue, status, wal verify|dump|repair, demo, notebooks (and
sim, crash-sweep from beaver_sim.sim.cli). A thin layer over runtime.service and the storage modules.

Every error a user can cause (BeaverError, OSError) is one line on stderr and exit code 2; no
traceback. Config precedence is flag > BEAVER_* environment > YAML > default (beaver_sim.config)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

import orjson

from beaver_sim import __version__
from beaver_sim.config import load_config, parse_duration
from beaver_sim.core.limits import check_job, check_when, loads_exact
from beaver_sim.core.repair import Inspection, RepairPlan, apply_repair, inspect, plan_repair
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.errors import brief
from beaver_sim.runtime.lock import DataDirLock
from beaver_sim.sim.cli import register as register_sim
from beaver_sim.storage.fs import RealFS
from beaver_sim.storage.wal import MAX_RECORD

if TYPE_CHECKING:  # the runtime (asyncio, workers, server) is imported only by the commands that use it,
    # so `beaver sim` and `beaver crash-sweep` do not pay for it
    from beaver_sim.runtime.service import Job, Service

_N = TypeVar("_N")  # a namespace given to parse_known_args

# flag dest -> (Config key, flag as typed); values stay strings so load_config names the flag in errors
RUN_FLAGS = {
    "workers": ("worker_count", "--workers"),
    "timeout": ("task_timeout", "--timeout"),
    "snapshot_interval": ("snapshot_interval", "--snapshot-interval"),
    "max_retry": ("max_retry", "--max-retry"),
    "metrics_port": ("metrics_port", "--metrics-port"),
    "metrics_host": ("metrics_host", "--metrics-host"),
    "fsync": ("fsync", "--fsync"),
    "seed": ("seed", "--seed"),
    "failure_rate": ("failure_rate", "--failure-rate"),
    "work_min": ("work_min", "--work-min"),
    "work_max": ("work_max", "--work-max"),
    "executor": ("executor", "--executor"),
}
COMMON_FLAGS = {"data_dir": ("data_dir", "--data-dir")}


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error of the CLI, each named by the
    command it belongs to (`beaver enqueue: error: ...`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    @overload
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: None = None
    ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(self, args: Iterable[str] | None, namespace: _N) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: _N | None = None
    ) -> tuple[argparse.Namespace | _N, list[str]]:
        """No parser here lets another take what it did not know: a (sub)command refuses it
        itself, under its own name, instead of the top level saying `beaver: error`."""
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def say(*parts: Any) -> None:
    print(*parts, flush=True)  # flushed: `run` is read line by line through a pipe


def config_from(args: argparse.Namespace, flags: dict[str, tuple[str, str]] | None = None) -> Config:
    """load_config with this command's flags (those the user gave)."""
    table = {**COMMON_FLAGS, **(flags or {})}
    values = {key: getattr(args, dest, None) for dest, (key, _) in table.items()}
    names = {key: flag for key, flag in table.values()}
    return load_config(args.config, values, flag_names=names)


# -- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from beaver_sim.runtime.service import Service

    config = config_from(args, RUN_FLAGS)
    service = Service(config, log=say)
    code = asyncio.run(serve(service, args.exit_when_idle))
    if service.abandoned:  # daemon threads: they do not keep the process alive (processes are stopped)
        say(f"{service.abandoned} abandoned attempt(s) still running; exiting without waiting for them")
    return code


async def serve(service: Service, exit_when_idle: bool) -> int:
    """`beaver run`: start, report, serve until a signal (or idle), stop cleanly."""
    import asyncio

    config = service.config
    await service.start()
    ctl = service.controller
    r = ctl.storage.report
    say(f"beaver run: data dir {config.data_dir}, pid {os.getpid()}")
    say(
        f"recovered in {service.recovery_seconds:.4f} s: {r.records_replayed} records replayed after "
        f"snapshot seq {r.snapshot_seq} ({r.wal_bytes} WAL bytes read, "
        f"{r.bytes_truncated} torn bytes dropped), "
        f"{ctl.counters.requeued_on_recovery} in-flight jobs requeued"
    )
    for path in r.broken_snapshots:
        say(f"warning: snapshot {path} failed its checksum; set aside as .broken, used the previous one")
    say("state: " + ", ".join(f"{k} {v}" for k, v in ctl.status().items()))
    say(
        f"workers: {config.worker_count} ({config.executor}), task timeout {config.task_timeout:g} s, "
        f"max retry {config.max_retry}, fsync {config.fsync}"
    )
    if service.metrics_server is not None:
        say(f"metrics: {service.metrics_server.url}")
    if service.control is not None:
        say(f"control socket: {service.control.path}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.request_stop)
    say("ready" + (" (exits when idle)" if exit_when_idle else " (Ctrl-C or SIGTERM stops; twice: now)"))
    await service.run(exit_when_idle)
    if service.fatal is None:
        say("stopping: letting running attempts end, then syncing the WAL and writing a snapshot")
    else:
        say("stopping after a fatal error: nothing more is written; restart to recover")
    await service.close()
    if service.fatal is not None:
        raise BeaverError(f"stopped after a fatal error: {service.fatal}")
    say("stopped: " + ", ".join(f"{k} {v}" for k, v in ctl.status().items()))
    late = service.lateness
    say(
        f"timer lateness: p99 {late.p99() * 1e3:.3f} ms, max {late.max() * 1e3:.3f} ms over the last "
        f"{len(late.recent)} of {late.count} timers and results"
    )
    return 0


# -- enqueue -------------------------------------------------------------------------------------


def read_jobs(path: str, max_record_bytes: int = MAX_RECORD) -> list[Job]:
    """Validate a whole job file (a JSON list of {"id": str, "payload": object}) before anything
    is written, the data directory included; BeaverError naming the file and the first problem
    (core.limits: every record of each job fits `max_record_bytes`, payloads stored exactly). An
    id repeated with the same payload is one job (the controller counts it once); with another
    payload it is a conflict."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise BeaverError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        items = loads_exact(data)
    except ValueError as e:
        raise BeaverError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise BeaverError(f'{path}: expected a JSON list of {{"id": ..., "payload": {{...}}}} objects')
    jobs: list[Job] = []
    seen: dict[str, bytes] = {}
    for n, item in enumerate(items, 1):
        where = f"{path}: job #{n}"
        if not isinstance(item, dict):
            raise BeaverError(f"{where}: expected an object with id and payload, got {type(item).__name__}")
        missing = [k for k in ("id", "payload") if k not in item]
        if missing:
            raise BeaverError(f"{where}: missing {' and '.join(missing)}")
        extra = sorted(set(item) - {"id", "payload", "delay", "not_before"})
        if extra:
            raise BeaverError(
                f"{where}: unknown field {brief(extra[0])} (a job has id, payload and optionally "
                "delay or not_before)"
            )
        job_id, payload = item["id"], item["payload"]
        named = where if not isinstance(job_id, str) or not job_id else f"{where} ({brief(job_id)})"
        check_job(job_id, payload, max_record_bytes, named)
        when = _when(item, named)
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        if seen.setdefault(job_id, canonical) != canonical:
            raise BeaverError(
                f"{where}: id {brief(job_id)} appears earlier in the file with a different payload"
            )
        jobs.append((job_id, payload) if when is None else (job_id, payload, when))
    return jobs


def _when(item: dict[str, Any], where: str) -> dict[str, float] | None:
    """A job's `delay` (a duration: `30s`, `1m30s`, seconds) or `not_before` (epoch seconds, or
    an ISO 8601 time with its UTC offset) as the controller takes it; BeaverError naming the job."""
    if "delay" in item and "not_before" in item:
        raise BeaverError(f"{where}: give delay or not_before, not both")
    try:
        if "delay" in item:
            return {"delay": check_when("delay", parse_duration(item["delay"]))}
        if "not_before" in item:
            at = item["not_before"]
            if isinstance(at, str):
                t = datetime.fromisoformat(at)
                if t.tzinfo is None:
                    raise ValueError("needs its UTC offset, e.g. 2026-12-07T10:00:00+00:00")
                at = t.timestamp()
            return {"not_before": check_when("not_before", at)}
    except ValueError as e:
        key = "delay" if "delay" in item else "not_before"
        raise BeaverError(f"{where}: {key} {brief(item[key])} {e}") from None
    return None


def refuse_new_data_dir(data_dir: str, create: bool) -> None:
    """A typo'd --data-dir must not silently start a second queue: only `run` and `enqueue
    --create` make a data directory."""
    if not create and not os.path.exists(data_dir):
        raise BeaverError(
            f"{data_dir}: no such data directory (check --data-dir; `beaver run` or --create makes it)"
        )


def cmd_enqueue(args: argparse.Namespace) -> int:
    from beaver_sim.runtime.service import enqueue

    config = config_from(args)
    jobs = read_jobs(args.file, config.max_record_bytes)  # all checked before the data dir is touched
    refuse_new_data_dir(config.data_dir, args.create)
    try:
        done, how = enqueue(config, jobs)
    except BeaverError as e:
        raise BeaverError(f"{args.file}: {e}") from None
    if args.json:
        say(
            orjson.dumps(
                {"file": args.file, "new": done.new, "already_present": done.already_present, "durable": True}
            ).decode()
        )
    else:
        n = done.new + done.already_present
        say(
            f"enqueued {n} jobs from {args.file} into {config.data_dir} ({how}): {done.new} new, "
            f"{done.already_present} already present; durable"
        )
    return 0


# -- status --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from beaver_sim.runtime.service import status_of

    config = config_from(args)
    st = status_of(config)
    if args.json:
        say(orjson.dumps(st).decode())
        return 0
    who = f"running (pid {st['pid']})" if st.get("running") else "not running (read from the files)"
    say(f"{config.data_dir}: {who}")
    for key in ("pending", "in_flight", "completed", "dead", "delayed", "cancelled", "jobs", "last_seq"):
        say(f"  {key:<10}{st[key]:>10}")
    return 0


# -- jobs, job -----------------------------------------------------------------------------------


def shown(job_id: str) -> str:
    """A job id as one word on a line: quoted when it holds spaces or unprintable characters."""
    return job_id if job_id.isprintable() and not any(c.isspace() for c in job_id) else repr(job_id)


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def cmd_jobs(args: argparse.Namespace) -> int:
    """One line (or JSON object) per job, from the running controller or read-only from the files."""
    from beaver_sim.runtime.jobs import list_jobs

    rows = list_jobs(config_from(args), args.state, args.limit)
    if args.json:
        say(orjson.dumps(rows).decode())
        return 0
    for r in rows:
        extra = "".join(
            f" {key}={orjson.dumps(r[key]).decode()}"
            for key in ("reason", "result", "not_before")
            if r.get(key) is not None or (key == "reason" and key in r)
        )
        say(f"{shown(r['id'])} {r['state']} attempts={r['attempts']}{extra}")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    """One job and its attempts; exit 1 when the data directory holds no such job."""
    from beaver_sim.runtime.jobs import find_job

    config = config_from(args)
    job = find_job(config, args.id)
    if job is None:
        window = (
            " (or it ended and left the completed_retention window)" if config.completed_retention else ""
        )
        print(f"beaver job: no job {shown(args.id)} in {config.data_dir}{window}", file=sys.stderr)
        return 1
    if args.json:
        say(orjson.dumps(job).decode())
        return 0
    for key in ("id", "state", "attempts"):
        say(f"{key:<10}{shown(job[key]) if key == 'id' else job[key]}")
    say(f"{'payload':<10}{orjson.dumps(job['payload']).decode()}")
    if job["state"] == JobStatus.DEAD:
        say(f"{'reason':<10}{job['reason'] if job['reason'] is not None else '(no longer in the log)'}")
    if job.get("result") is not None:
        say(f"{'result':<10}{orjson.dumps(job['result']).decode()}")
    if job.get("not_before") is not None:
        say(f"{'delayed':<10}until {job['not_before']:.3f} (epoch seconds)")
    if (lease := job["lease"]) is not None:
        at = f"attempt {lease['attempt']} on worker {lease['worker']}, deadline {lease['deadline']:.3f}"
        say(f"{'running':<10}{at}")
    start = "from its enqueue" if job["history_complete"] else "from where the log now starts"
    say(f"history   {len(job['history'])} attempt(s) in the log ({start})")
    for a in job["history"]:
        began = "dispatched before the log starts"
        if a["dispatch_seq"] is not None:
            began = (
                f"dispatched at seq {a['dispatch_seq']} to worker {a['worker']}, deadline {a['deadline']:.3f}"
            )
        end = "running" if a["outcome"] is None else f"{a['outcome']} at seq {a['end_seq']}"
        error = f": {a['error']}" if a["error"] else ""
        say(f"  attempt {a['attempt']}: {began}; {end}{error}")
    return 0


# -- requeue, cancel ------------------------------------------------------------------------------


def cmd_requeue(args: argparse.Namespace) -> int:
    """Dead jobs back to pending with a fresh budget of attempts."""
    return _operate(args, "requeue", "requeued")


def cmd_cancel(args: argparse.Namespace) -> int:
    """Pending or delayed jobs cancelled: they never run."""
    return _operate(args, "cancel", "cancelled")


def _operate(args: argparse.Namespace, op: str, done: str) -> int:
    from beaver_sim.runtime.service import operate_on

    config = config_from(args)
    dead = getattr(args, "dead", False)
    if not args.ids and not dead:
        raise BeaverError("name the jobs (or --dead: every dead job)")
    refuse_new_data_dir(config.data_dir, False)
    n, how = operate_on(config, op, list(args.ids), dead)
    if args.json:
        say(orjson.dumps({done: n, "durable": True}).decode())
    else:
        say(f"{done} {n} job{'s' * (n != 1)} in {config.data_dir} ({how}); durable")
    return 0


# -- wal -----------------------------------------------------------------------------------------


def _wal_dir(config: Config) -> str:
    if not os.path.isdir(config.wal_dir):
        raise BeaverError(f"{config.wal_dir}: no WAL directory here (check --data-dir)")
    return config.wal_dir


def _covered(found: Inspection) -> str:
    """Where the log starts, when a snapshot covers its front."""
    s = found.scan
    if not found.snapshot_seq:
        return ""
    return f"; seq 1..{found.snapshot_seq} are in snapshot {found.snapshot}" + (
        f" (segments before seq {s.first_seq} were deleted after it)" if s.first_seq > 1 else ""
    )


def cmd_wal_verify(args: argparse.Namespace) -> int:
    """Read the data directory as recovery does: the newest good snapshot, then the log after it,
    replayed through the same `apply` with the same recorded configuration, so ok <=> run opens."""
    config = config_from(args)
    directory = _wal_dir(config)
    found = inspect(
        RealFS(),
        directory,
        config.snapshot_dir,
        check_snapshots=True,
        retention=config.completed_retention,
        recovery=config.wal_recovery,
    )
    s, p = found.scan, found.problem
    torn = p is not None and p.torn
    summary = {
        "ok": found.ok,
        "segments": len(s.segments),
        "records": s.records,
        "first_seq": s.first_seq,
        "last_seq": s.next_seq - 1,
        "bytes": s.bytes_total,
        "end_lsn": s.end_lsn,
        "snapshot": found.snapshot,
        "snapshot_seq": found.snapshot_seq,
        "broken_snapshots": found.broken_snapshots,
        "problem": None
        if p is None
        else {"path": p.path, "offset": p.offset, "lsn": p.lsn, "reason": p.reason}
        | {"after_seq": p.last_good_seq, "torn_tail": p.torn},
    }
    if args.json:
        say(orjson.dumps(summary).decode())
    elif found.ok:
        say(
            f"{directory}: ok: {s.records} records (seq {s.first_seq}..{s.next_seq - 1}) in "
            f"{len(s.segments)} segment(s), {s.bytes_total} bytes{_covered(found)}"
        )
        if torn:
            say(
                f"  the log ends in a torn write at {p}: the next start truncates it (a .broken copy is kept)"
            )
    else:
        say(f"{directory}: corruption: {p}; `beaver wal repair` shows what cutting the log there would cost")
    for path in found.broken_snapshots:
        say(f"warning: snapshot {path} fails its checksum; recovery sets it aside and uses an older one")
    return 0 if found.ok and not found.broken_snapshots else 1


def cmd_wal_dump(args: argparse.Namespace) -> int:
    config = config_from(args)
    directory = _wal_dir(config)
    write = sys.stdout.write

    def show(rec: dict[str, Any], lsn: int) -> None:
        if args.json:
            write(orjson.dumps({"lsn": lsn, **rec}).decode() + "\n")
        else:
            rest = {k: v for k, v in rec.items() if k not in ("seq", "type", "job")}
            job, body = shown(rec["job"]), orjson.dumps(rest).decode()
            write(f"lsn={lsn} seq={rec['seq']} {rec['type']} {job} {body}\n")

    found = inspect(RealFS(), directory, config.snapshot_dir, show, every_record=True)
    sys.stdout.flush()
    if found.snapshot_seq and found.scan.first_seq > 1:
        print(
            f"beaver wal dump: the log starts at seq {found.scan.first_seq}{_covered(found)}", file=sys.stderr
        )
    p = found.problem
    if p is not None:
        what = "the log ends in a torn write (the next start truncates it)" if p.torn else "stopped"
        print(f"beaver wal dump: {what} at {p}", file=sys.stderr)
    return 0 if found.ok else 1


def cmd_wal_repair(args: argparse.Namespace) -> int:
    """Plan first, say what the cut costs, change nothing without --yes."""
    config = config_from(args)
    directory = _wal_dir(config)
    fs = RealFS()

    def planned() -> RepairPlan | None:  # replayed with the config's retention and wal_recovery
        retention, recovery = config.completed_retention, config.wal_recovery
        return plan_repair(fs, directory, config.snapshot_dir, retention, recovery)

    plan = planned()
    if plan is None:
        if args.json:
            say(orjson.dumps({"ok": True, "plan": None, "repaired": False}).decode())
        else:
            say(f"{directory}: recovery starts from this directory as it is; nothing to repair")
        return 0
    if args.json:
        say(
            orjson.dumps(
                {"ok": False, "plan": plan.as_dict(), "repaired": bool(args.yes and not plan.refused)}
            ).decode()
        )
    else:
        _say_plan(directory, plan)
    if plan.refused:
        raise BeaverError(f"{directory}: no safe repair: {plan.refused}")
    if not args.yes:
        if not args.json:
            say("nothing changed; run again with --yes to cut the log as planned")
        return 1
    with DataDirLock(config.data_dir):  # never cut a log a running controller is writing
        again = planned()
        if again is None or again.as_dict() != plan.as_dict():
            raise BeaverError(f"{directory}: the log changed since the plan; nothing cut, run repair again")
        backups = apply_repair(fs, directory, plan)
    if not args.json:
        say(f"done: {plan.bytes_dropped} bytes dropped; backups: {', '.join(backups)}")
        if (after := planned()) is not None:
            say(f"the log has another problem further on: {after.cut}; run `beaver wal repair` again")
    return 0


def _say_plan(directory: str, plan: RepairPlan) -> None:
    p = plan.cut
    say(f"{directory}: recovery refuses this log: {p}")
    if plan.refused:
        return
    if plan.covered:
        say(f"plan: set {p.path} aside (.removed): snapshot {plan.inspection.snapshot} holds all its records")
        say("  loses nothing")
        return
    moved = f", and move {len(plan.moved)} later segment(s) aside (.broken)" if plan.moved else ""
    say(f"plan: cut {p.path} at offset {p.offset} (LSN {p.lsn}), after seq {p.last_good_seq}{moved}")
    kinds = ", ".join(f"{n} {kind}" for kind, n in plan.records_dropped.items()) or "no record"
    say(
        f"  drops {plan.bytes_dropped} bytes: {kinds} after the snapshot; "
        f"{plan.unreadable} line(s) that do not verify (the damage: not counted as any record)"
    )
    say(
        f"  loses {plan.jobs_lost} acknowledged job(s) whose enqueue is cut; {plan.completions_lost} "
        f"completion(s) (those jobs would run again); {plan.dead_lost} dead-letter(s) "
        "(those jobs would be retried)"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from beaver_sim.demo import cmd_demo  # it uses this module's helpers: imported when run

    return cmd_demo(args)


# -- notebooks -----------------------------------------------------------------------------------


def cmd_notebooks(args: argparse.Namespace) -> int:
    from importlib.util import find_spec

    from beaver_sim.course import LABS, write_course

    dest = Path(args.dir)
    written = write_course(dest, solutions=args.solutions, force=args.force)
    labs = sum(1 for p in written if p.parent == dest / LABS)
    kind = (
        "with their solutions" if args.solutions else "to solve: each solution is `raise NotImplementedError`"
    )
    say(f"wrote {len(written)} files to {dest}: the notebooks, {labs} labs ({kind}) and the files they read")
    if find_spec("jupyterlab") is None:
        say("JupyterLab is not installed here: pip install 'beaver_sim[notebooks]'")
    say(f"open them: jupyter lab {dest}")
    return 0


# -- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data-dir", help="the data directory (default: data_dir in the config, ./data/run)")
    common.add_argument("--config", help="YAML config file (default: configs/default.yaml if present)")

    parser = Parser(prog="beaver", description="A durable job queue: WAL + snapshots, real and simulated.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser("run", parents=[common], help="serve a data directory: recover, dispatch, metrics")
    run.add_argument("--workers", help="attempts running at once (worker_count)")
    run.add_argument("--timeout", help="per-attempt timeout, e.g. 3s (task_timeout)")
    run.add_argument("--snapshot-interval", help="e.g. 2s; 0 disables")
    run.add_argument("--max-retry", help="attempts before a job is dead")
    run.add_argument("--metrics-port", help="Prometheus /metrics port; 0 picks a free one")
    run.add_argument("--metrics-host", help="address to bind /metrics to (default 127.0.0.1)")
    run.add_argument("--fsync", help="always | interval | never")
    run.add_argument("--seed", help="seed of the simulated work's durations and failures")
    run.add_argument("--failure-rate", help="simulated work: probability an attempt fails")
    run.add_argument("--work-min", help="simulated work: shortest duration, e.g. 100ms")
    run.add_argument("--work-max", help="simulated work: longest duration, e.g. 500ms")
    run.add_argument("--executor", help="thread | process")
    run.add_argument("--exit-when-idle", action="store_true", help="stop once nothing is pending or running")
    run.set_defaults(func=cmd_run)

    enq = sub.add_parser(
        "enqueue",
        parents=[common],
        help="add jobs from a JSON file, durably; retry-safe (same id and payload: already present)",
    )
    enq.add_argument(
        "--file", "-f", required=True, help='JSON list of {"id": ..., "payload": {...}}; - = stdin'
    )
    enq.add_argument(
        "--json", action="store_true", help="one JSON object: file, new, already_present, durable"
    )
    enq.add_argument(
        "--create", action="store_true", help="make the data directory if it does not exist (default: refuse)"
    )
    enq.set_defaults(func=cmd_enqueue)

    st = sub.add_parser("status", parents=[common], help="counts per state, running or not")
    st.add_argument("--json", action="store_true", help="one JSON object (docs/contracts.md)")
    st.set_defaults(func=cmd_status)

    add_job_commands(sub, common)

    w = sub.add_parser("wal", help="inspect or repair the write-ahead log")
    wsub = w.add_subparsers(dest="wal_command", metavar="ACTION", required=True, parser_class=Parser)
    verify = wsub.add_parser(
        "verify",
        parents=[common],
        help="check the snapshots and every record as recovery reads them; exit 1 if recovery would refuse",
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_wal_verify)
    dump = wsub.add_parser("dump", parents=[common], help="print every record with its LSN")
    dump.add_argument("--json", action="store_true", help="JSON lines: {lsn, seq, type, job, ...}")
    dump.set_defaults(func=cmd_wal_dump)
    repair = wsub.add_parser(
        "repair",
        parents=[common],
        help="plan a cut of the log at its first bad record and say what it loses; --yes does it",
    )
    repair.add_argument("--yes", action="store_true", help="carry out the plan (default: only print it)")
    repair.add_argument("--json", action="store_true", help="the plan as one JSON object")
    repair.set_defaults(func=cmd_wal_repair)

    demo = sub.add_parser("demo", help="run, enqueue 100 jobs, kill -9, recover, check")
    demo.add_argument(
        "--data-dir", help="a new or empty directory, kept afterwards (default: a temporary one, removed)"
    )
    demo.add_argument(
        "--config", help="YAML config file (default: the demo's own settings, printed when it starts)"
    )
    demo.add_argument("--jobs", help="job file (default: the seed's 100 jobs, data/jobs.json in the package)")
    demo.set_defaults(func=_cmd_demo)

    register_sim(sub)

    nb = sub.add_parser(
        "notebooks",
        help="write the course (notebooks, labs, the files they read) to DIR for `jupyter lab DIR`",
    )
    nb.add_argument("dir", metavar="DIR", help="a new or empty directory")
    nb.add_argument(
        "--solutions", action="store_true", help="the labs with their solutions (default: to solve)"
    )
    nb.add_argument(
        "--force", action="store_true", help="write into a non-empty DIR, overwriting the course's files"
    )
    nb.set_defaults(func=cmd_notebooks)
    return parser


def add_job_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`beaver jobs`, `beaver job ID`, `beaver requeue` and `beaver cancel`."""
    js = sub.add_parser(
        "jobs", parents=[common], help="one line per job: id, state, attempts (reason if dead)"
    )
    js.add_argument("--state", choices=[s.value for s in JobStatus], help="only the jobs in this state")
    js.add_argument("--limit", type=_limit, help="at most N jobs (the first enqueued first)")
    js.add_argument("--json", action="store_true", help="a JSON list of {id, state, attempts[, reason]}")
    js.set_defaults(func=cmd_jobs)
    j = sub.add_parser(
        "job", parents=[common], help="one job: state, attempts, payload, reason, its attempts"
    )
    j.add_argument("id", help="the job id (one that starts with - goes after --: job -- -x)")
    j.add_argument("--json", action="store_true", help="one JSON object (docs/contracts.md)")
    j.set_defaults(func=cmd_job)
    rq = sub.add_parser(
        "requeue", parents=[common], help="dead jobs back to pending, with a fresh budget of attempts"
    )
    rq.add_argument("ids", nargs="*", metavar="ID", help="the dead jobs (after -- if one starts with -)")
    rq.add_argument("--dead", action="store_true", help="every dead job")
    rq.add_argument("--json", action="store_true", help='one JSON object: {"requeued": N, "durable": true}')
    rq.set_defaults(func=cmd_requeue)
    cn = sub.add_parser(
        "cancel", parents=[common], help="pending or delayed jobs cancelled: they never run (not in flight)"
    )
    cn.add_argument("ids", nargs="+", metavar="ID", help="the jobs (after -- if one starts with -)")
    cn.add_argument("--json", action="store_true", help='one JSON object: {"cancelled": N, "durable": true}')
    cn.set_defaults(func=cmd_cancel)


def main(argv: list[str] | None = None) -> int:
    """The `beaver` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
        return code
    except (BeaverError, OSError) as e:
        if isinstance(e, BrokenPipeError):  # `beaver wal dump | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"beaver {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
