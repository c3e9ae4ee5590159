"""`beaver demo`: the kill -9 demonstration, end to end with real processes. A `beaver run` on a
fresh data directory, the seed's 100 jobs enqueued, the process killed with SIGKILL in the middle of
the work, restarted (recovery timed from its own report), run until every job ended, stopped with
SIGTERM; then the files are checked: every acknowledged job is there, ended exactly once.
`RunProcess` (a `beaver run` child whose output lines can be waited for) and `RECOVERED` serve the
integration tests, the fidelity check and the notebooks too."""

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
from typing import Any

from beaver_sim.cli import RUN_FLAGS, read_jobs, say
from beaver_sim.config import load_config
from beaver_sim.core.types import BeaverError, Config, JobStatus

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


class RunProcess:
    """A `beaver run` subprocess; a thread collects its stdout lines so we can wait for one."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=cwd)
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
        deadline = time.monotonic() + timeout  # wall-clock ok: real processes
        with self.cond:
            while True:
                for line in self.lines:
                    if m := pattern.search(line):
                        return m
                if self.ended:
                    raise BeaverError(
                        f"beaver run exited with code {self.proc.wait()} (see its errors above)"
                    )
                left = deadline - time.monotonic()  # wall-clock ok: real processes
                if left <= 0:
                    raise BeaverError(f"beaver run did not print {pattern.pattern!r} within {timeout:g} s")
                self.cond.wait(left)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout  # wall-clock ok: real processes
    while not check():
        if time.monotonic() > deadline:  # wall-clock ok: real processes
            raise BeaverError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo on --jobs, or on the seed's 100 jobs shipped in the package (any working directory)."""
    if args.jobs:
        return run_demo(args, args.jobs)
    from importlib.resources import as_file

    from beaver_sim.course import shared

    with as_file(shared("data/jobs.json")) as path:
        return run_demo(args, str(path))


def run_demo(args: argparse.Namespace, jobs_file: str) -> int:
    from beaver_sim.runtime.service import read_state, status_of

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
    t_start = time.monotonic()  # wall-clock ok: real processes
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
    took = time.monotonic() - t_start  # wall-clock ok: the demo reports its real duration
    say(
        f"=== demo passed in {took:.1f} s: all {len(jobs)} acknowledged jobs survived "
        "the kill -9 and each ended exactly once (completed or dead) ==="
    )
    if args.data_dir:
        say(f"data dir kept: {data_dir} (try `beaver status --data-dir {data_dir}`)")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
        say(f"removed the temporary data dir {data_dir}")
    return 0


def _ended(st: dict[str, Any]) -> int:
    ended: int = st["completed"] + st["dead"]
    return ended


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
