"""`beaver`, the command line: run, enqueue, status, wal verify|dump|repair, demo (and sim,
crash-sweep from beaver_sim.sim.cli). A thin layer over runtime.service and the storage modules.

Every error a user can cause (BeaverError, OSError) is one line on stderr and exit code 2; no
traceback. Config precedence is flag > BEAVER_* environment > YAML > default (beaver_sim.config)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from beaver_sim.config import load_config
from beaver_sim.core.recovery import Inspection, RepairPlan, apply_repair, inspect, plan_repair
from beaver_sim.core.types import BeaverError, Config, JobStatus
from beaver_sim.runtime.lock import DataDirLock
from beaver_sim.storage.fs import RealFS

if TYPE_CHECKING:  # the runtime (asyncio, workers, server) is imported only by the commands that use it,
    # so `beaver sim` and `beaver crash-sweep` do not pay for it
    from beaver_sim.runtime.service import Job, Service

try:
    from beaver_sim.sim.cli import register as register_sim
except ImportError:  # the simulator's commands are optional: cli.py works without them
    register_sim = None

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
DEMO = {  # a short, lively config: 100 jobs end in seconds; work that may outrun the timeout and a
    # 10 % failure rate make retries, and the few jobs whose three attempts all fail end dead
    "worker_count": "8",
    "task_timeout": "500ms",
    "work_min": "50ms",
    "work_max": "600ms",
    "failure_rate": "0.1",
    "max_retry": "3",
    "snapshot_interval": "1s",
}
DEMO_FLAGS = [arg for key, flag in RUN_FLAGS.values() if key in DEMO for arg in (flag, DEMO[key])]
RECOVERED = re.compile(r"recovered in ([0-9.]+) s: (\d+) records replayed.* (\d+) in-flight jobs requeued")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


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
    service = Service(config)
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
    return 0


# -- enqueue -------------------------------------------------------------------------------------


def read_jobs(path: str) -> list[Job]:
    """Validate a whole job file (a JSON list of {"id": str, "payload": object}) before anything
    is written; BeaverError naming the file and the first problem. An id repeated with the same
    payload is one job (the controller counts it once); with another payload it is a conflict,
    refused here before the data directory is touched."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise BeaverError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as e:
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
        extra = sorted(set(item) - {"id", "payload"})
        if extra:
            raise BeaverError(f"{where}: unknown field {extra[0]!r} (a job has id and payload)")
        job_id, payload = item["id"], item["payload"]
        if not isinstance(job_id, str) or not job_id:
            raise BeaverError(f"{where}: id must be a non-empty string, got {job_id!r}")
        if not isinstance(payload, dict):
            raise BeaverError(f"{where} ({job_id}): payload must be an object, got {type(payload).__name__}")
        canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        if seen.setdefault(job_id, canonical) != canonical:
            raise BeaverError(f"{where}: id {job_id!r} appears earlier in the file with a different payload")
        jobs.append((job_id, payload))
    return jobs


def cmd_enqueue(args: argparse.Namespace) -> int:
    from beaver_sim.runtime.service import enqueue

    jobs = read_jobs(args.file)
    config = config_from(args)
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
    for key in ("pending", "in_flight", "completed", "dead", "jobs", "last_seq"):
        say(f"  {key:<10}{st[key]:>10}")
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
    """Read the data directory as recovery does: the newest good snapshot, then the log after it."""
    config = config_from(args)
    directory = _wal_dir(config)
    found = inspect(
        RealFS(),
        directory,
        config.snapshot_dir,
        lambda rec, lsn: None,
        check_snapshots=True,
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
            job = rec["job"]
            job = job if job.isprintable() and not any(c.isspace() for c in job) else repr(job)
            write(f"lsn={lsn} seq={rec['seq']} {rec['type']} {job} {orjson.dumps(rest).decode()}\n")

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
    plan = plan_repair(fs, directory, config.snapshot_dir, config.wal_recovery)
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
        again = plan_repair(fs, directory, config.snapshot_dir, config.wal_recovery)
        if again is None or again.as_dict() != plan.as_dict():
            raise BeaverError(f"{directory}: the log changed since the plan; nothing cut, run repair again")
        backups = apply_repair(fs, directory, plan)
    if not args.json:
        say(f"done: {plan.bytes_dropped} bytes dropped; backups: {', '.join(backups)}")
        if (after := plan_repair(fs, directory, config.snapshot_dir, config.wal_recovery)) is not None:
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
        f"{plan.unreadable} unreadable line(s)"
    )
    say(
        f"  loses {plan.jobs_lost} acknowledged job(s) whose enqueue is cut; {plan.completions_lost} "
        f"completion(s) (those jobs would run again); {plan.dead_lost} dead-letter(s) "
        "(those jobs would be retried)"
    )


# -- demo ----------------------------------------------------------------------------------------


class RunProcess:
    """A `beaver run` subprocess; a thread collects its stdout lines so we can wait for one."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[str] = []
        self.ended = False  # stdout closed: the process exited
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first line matching `pattern`; BeaverError if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if m := pattern.search(line):
                        return m
                if self.ended:
                    raise BeaverError(
                        f"beaver run exited with code {self.proc.wait()} (see its errors above)"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BeaverError(f"beaver run did not print {pattern.pattern!r} within {timeout:g} s")
                self.cond.wait(left)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BeaverError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def _jobs_file(name: str | None) -> str:
    if name:
        return name
    here = Path("data/jobs.json")
    return str(here if here.is_file() else Path(__file__).resolve().parent.parent / "data" / "jobs.json")


def cmd_demo(args: argparse.Namespace) -> int:
    from beaver_sim.runtime.service import read_state, status_of

    jobs_file = _jobs_file(args.jobs)
    jobs = read_jobs(jobs_file)
    if args.data_dir:
        if os.path.exists(args.data_dir) and os.listdir(args.data_dir):
            raise BeaverError(f"{args.data_dir}: not empty; the demo needs a fresh data directory")
        data_dir = args.data_dir
    else:
        data_dir = tempfile.mkdtemp(prefix="beaver-demo-")
    base = [sys.executable, "-m", "beaver_sim.cli"]
    where = ["--data-dir", data_dir] + (["--config", args.config] if args.config else [])
    run_argv = [*base, "run", *where, "--metrics-port", "0", *([] if args.config else DEMO_FLAGS)]
    config = load_config(args.config, {"data_dir": data_dir} | ({} if args.config else DEMO))
    t_start = time.monotonic()
    say("=== beaver demo: a durable job queue, killed with -9 and recovered ===")
    kept = "kept" if args.data_dir else "temporary: removed at the end unless the demo fails"
    say(f"data dir: {data_dir} ({kept}; --data-dir DIR keeps one)")
    say(
        f"settings: {config.worker_count} workers; work takes {config.work_min * 1e3:g}-"
        f"{config.work_max * 1e3:g} ms and fails {config.failure_rate:.0%} of the time; an attempt still "
        f"running after {config.task_timeout * 1e3:g} ms times out; {config.max_retry} attempts, then dead"
    )
    run = RunProcess(run_argv)
    try:
        run.wait_line(re.compile(r"^ready"), 60)
        port = run.wait_line(re.compile(r"^metrics: (\S+)"), 1).group(1)
        say(f"1. started `beaver run` (pid {run.proc.pid}), metrics at {port}")
        out = subprocess.run([*base, "enqueue", "--file", jobs_file, *where], capture_output=True, text=True)
        if out.returncode != 0:
            raise BeaverError(f"beaver enqueue failed: {out.stderr.strip()}")
        say(f"2. {out.stdout.strip()}")
        some = max(1, len(jobs) // 4)
        _wait_until(f"{some} jobs to end", lambda: _ended(status_of(config)) >= some, 60)
        say(f"3. some jobs ended: {_counts(status_of(config))}")
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait()
        after = read_state(config).state.stats()
        say(f"4. kill -9 {run.proc.pid} in the middle of the work; the files then hold: {_counts(after)}")
        run = RunProcess(run_argv)
        m = run.wait_line(RECOVERED, 60)
        run.wait_line(re.compile(r"^ready"), 60)
        say(
            f"5. restarted (pid {run.proc.pid}): recovery took {float(m.group(1)) * 1000:.1f} ms, "
            f"{m.group(2)} WAL records replayed, {m.group(3)} in-flight jobs requeued"
        )
        _wait_until("every job to end", lambda: _ended(status_of(config)) >= len(jobs), 120)
        say(f"6. every job ended: {_counts(status_of(config))}")
        run.proc.send_signal(signal.SIGTERM)
        if run.proc.wait(timeout=60) != 0:
            raise BeaverError(f"beaver run exited with code {run.proc.returncode} on SIGTERM")
        say("7. stopped with SIGTERM (WAL synced, snapshot written, lock released)")
    finally:
        run.stop()
    problems = check_demo(config, [job_id for job_id, _ in jobs])
    final = read_state(config).state.stats()
    say(f"final status (from the files): {_counts(final)}, last seq {final['last_seq']}")
    if problems:
        for line in problems:
            print(f"beaver demo: FAILED: {line}", file=sys.stderr)
        say(f"data dir kept for inspection: {data_dir}")
        return 1
    if final["dead"]:
        say(
            f"dead {final['dead']}: each of those jobs failed or timed out on all {config.max_retry} "
            "attempts and was set aside (the dead-letter state), as the settings above make a few do"
        )
    say(
        f"=== demo passed in {time.monotonic() - t_start:.1f} s: all {len(jobs)} acknowledged jobs survived "
        "the kill -9 and each ended exactly once (completed or dead) ==="
    )
    if args.data_dir:
        say(f"data dir kept: {data_dir} (try `beaver status --data-dir {data_dir}`)")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        say(f"removed the temporary data dir {data_dir}")
    return 0


def _ended(st: dict[str, Any]) -> int:
    return st["completed"] + st["dead"]


def _counts(st: dict[str, Any]) -> str:
    return ", ".join(f"{k} {st[k]}" for k in ("completed", "dead", "in_flight", "pending"))


def check_demo(config: Config, ids: Sequence[str]) -> list[str]:
    """Every acknowledged job is known, in exactly one final state, and nothing else is."""
    from beaver_sim.runtime.service import read_state

    q = read_state(config).state
    problems = []
    try:
        q.validate()
    except AssertionError as e:
        problems.append(f"state is inconsistent: {e}")
    missing = [i for i in ids if i not in q.jobs]
    unknown = sorted(set(q.jobs) - set(ids))
    unfinished = [
        i for i in ids if i in q.jobs and q.jobs[i].status not in (JobStatus.COMPLETED, JobStatus.DEAD)
    ]
    if missing:
        problems.append(f"{len(missing)} acknowledged jobs are missing, e.g. {missing[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} jobs nobody enqueued, e.g. {unknown[:3]}")
    if unfinished:
        problems.append(f"{len(unfinished)} jobs did not end, e.g. {unfinished[:3]}")
    ended = q.counts[JobStatus.COMPLETED] + q.counts[JobStatus.DEAD]
    if ended != len(ids):
        problems.append(f"completed + dead = {ended}, expected {len(ids)}")
    return problems


# -- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--data-dir", help="the data directory (default: data_dir in the config, ./data/run)")
    common.add_argument("--config", help="YAML config file (default: configs/default.yaml if present)")

    parser = Parser(prog="beaver", description="A durable job queue: WAL + snapshots, real and simulated.")
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
    enq.set_defaults(func=cmd_enqueue)

    st = sub.add_parser("status", parents=[common], help="counts per state, running or not")
    st.add_argument("--json", action="store_true", help="one JSON object (docs/contracts.md)")
    st.set_defaults(func=cmd_status)

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
    demo.add_argument("--jobs", help="job file (default: data/jobs.json)")
    demo.set_defaults(func=cmd_demo)

    if register_sim is not None:
        register_sim(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `beaver` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
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
