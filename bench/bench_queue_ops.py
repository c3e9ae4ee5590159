"""The queue's operator commands in process, against its hot path: what `cancel`, `revive` under
retention and `requeue --dead`'s choice of jobs cost at scale, and whether enqueue, dispatch and
complete got any slower for it. Each figure runs in a new process per round, this checkout's
`beaver_sim` and, with `--code DIR`, another checkout's, interleaved round by round (the machine
is shared: compare within a run, best of `--repeat`).

    .venv/bin/python bench/bench_queue_ops.py [--pending 200000] [--ops 1000] [--repeat 5] [--code DIR]
        [--what hot,cancel,revive,dead_ids]

- hot: per job, the seconds of `enqueue` of `--pending` jobs, then `dispatch` + `complete` of each
  (JobQueue's methods, as `apply` calls them), retention off;
- cancel: `--ops` cancels of pending jobs spread evenly over a FIFO of `--pending` (never the head);
- revive: `--ops` revives of dead jobs spread over a retention window of `--pending` ended jobs;
- dead_ids: the ids `requeue --dead` requeues, chosen from `--pending` jobs of which `--ops` are
  dead (runtime/service.py's `operate`: the dead index, or, in older code, every job scanned).
Prints JSON: each figure's best seconds per checkout."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def one(what: str, pending: int, ops: int) -> float:
    """One timed figure in this process (the `beaver_sim` on sys.path)."""
    from beaver_sim.core.queue import JobQueue
    from beaver_sim.core.types import JobStatus, Lease

    q = JobQueue()
    ids = [f"job-{i:09d}" for i in range(pending)]
    every = max(1, pending // ops)
    chosen = ids[1::every][:ops]
    if what == "hot":
        payload = {"type": "compute"}
        t0 = time.perf_counter()
        for job_id in ids:
            q.enqueue(job_id, payload)
        for job_id in ids:
            q.dispatch(job_id, Lease(1, 0, 9.0))
            q.complete(job_id, 1)
        return (time.perf_counter() - t0) / pending
    for job_id in ids:
        q.enqueue(job_id, {})
    if what == "cancel":
        t0 = time.perf_counter()
        for job_id in chosen:
            q.cancel(job_id)
        return time.perf_counter() - t0
    q.set_retention(pending if what == "revive" else 0)
    dead = set(chosen) if what == "dead_ids" else set(ids[::every][:ops])
    for job_id in ids:
        q.dispatch(job_id, Lease(1, 0, 9.0))
        (q.kill if job_id in dead else q.complete)(job_id, 1)
    if what == "revive":
        t0 = time.perf_counter()
        for job_id in ids[::every][:ops]:
            q.revive(job_id)
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    if hasattr(q, "dead"):
        found = list(q.dead)
    else:  # the code before the dead index: runtime/service.py's scan of every job
        found = [k for k, j in q.jobs.items() if j.status is JobStatus.DEAD]
    seconds = time.perf_counter() - t0
    assert len(found) == ops
    return seconds


def in_a_new_process(code: str | None, what: str, pending: int, ops: int) -> float:
    env = dict(os.environ, PYTHONPATH=code or os.path.dirname(HERE))
    args = [sys.executable, __file__, "--one", what, "--pending", str(pending), "--ops", str(ops)]
    return float(subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pending", type=int, default=200_000)
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--code", help="also time the beaver_sim package of this checkout (before)")
    ap.add_argument("--what", default="hot,cancel,revive,dead_ids", help="the figures, comma separated")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # one figure in this process
    args = ap.parse_args(argv)
    if args.one:
        print(one(args.one, args.pending, args.ops))
        return 0
    codes = {"this checkout": None} | ({args.code: args.code} if args.code else {})
    best: dict[str, dict[str, float]] = {name: {} for name in codes}
    for _ in range(args.repeat):
        for what in args.what.split(","):
            for name, code in codes.items():
                s = in_a_new_process(code, what, args.pending, args.ops)
                best[name][what] = min(best[name].get(what, s), s)
    out: dict[str, Any] = {"pending": args.pending, "ops": args.ops, "repeat": args.repeat, "best": best}
    out["load"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
