"""Does `beaver run` stall while it snapshots a large state (issue 20)? A real `beaver run` on a
data directory holding `--jobs` jobs (bench_recovery's mix: mostly completed, a pending backlog
that the workers run meanwhile), a snapshot considered every `--interval` seconds and taken
whenever anything was logged (`snapshot_log_ratio: 0`), and a client that sends one enqueue of one
job over the control socket every 50 ms, every fifth request a status instead. The round trips are
timed from the client's side (connect, request, answer): the worst and the p99 are what a stall
shows. Then SIGINT, timed to the process's exit.

    .venv/bin/python bench/bench_stall.py --jobs 300000 --interval 0.3 [--seconds 20]
    .venv/bin/python bench/bench_stall.py --jobs 1000000 --interval 3 --code DIR  # before: DIR is main

`--code DIR` runs the `beaver_sim` package found in DIR (a checkout of another version: "before").
Goal: worst enqueue and status round trip <= 50 ms at 1,000,000 jobs, <= 20 ms at 300,000.
Prints the figures as JSON, then a markdown row.

`--listing N`: meanwhile a second client runs `beaver jobs --json` (no limit: every job) N times
one after the other, from the second second on, with the same code as the controller; the figures
then add each listing's seconds and the worst enqueue round trip that overlapped a listing (does
one client's listing stall everyone else's requests?).

    .venv/bin/python bench/bench_stall.py --jobs 1000000 --interval 600 --seconds 40 --listing 3

`--cancels N`: meanwhile, from the second second on, an operator cancels N pending jobs in one
request (`beaver cancel ID...`: ids spread evenly over the back half of the pending backlog, which
the workers do not reach meanwhile), and one second after its answer requeues every dead job
(`beaver requeue --dead`); the figures add each command's round trip and the worst enqueue round
trip that overlapped one (does an operator's command stall everyone else's requests?).

    .venv/bin/python bench/bench_stall.py --jobs 1500000 --interval 600 --seconds 20 --cancels 1000

`--flood S`: meanwhile, from the second second on, another process leaks connections to the
control socket for S seconds (tests/hostile_client.py flood: one every 2 ms, nothing sent, each kept
until the server closes it); the figures add the measuring client's requests refused busy during
the flood (they are not retried: each is one request) and its round trips then (does one process
leaking connections keep the others out?).

    .venv/bin/python bench/bench_stall.py --jobs 100000 --interval 600 --seconds 20 --flood 15"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from bench_recovery import MAX_RETRY, WORKERS, build, seed_payload

from beaver_sim.runtime.server import ControlUnavailable, request

FLOODER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "hostile_client.py"
)
PERIOD = 0.05  # seconds between requests
STATUS_EVERY = 5  # every fifth request is a status


def quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return {
        "n": len(xs),
        "p50_ms": round(statistics.median(xs) * 1e3, 2),
        "p99_ms": round(p99 * 1e3, 2),
        "max_ms": round(xs[-1] * 1e3, 2),
    }


def start(data_dir: str, code: str | None, interval: float, cwd: str) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env.update(
        BEAVER_SNAPSHOT_INTERVAL=str(interval),
        BEAVER_SNAPSHOT_LOG_RATIO="0",
        BEAVER_METRICS_PORT="0",
        PYTHONPATH=code or "",
    )
    cmd = [sys.executable, "-c", "from beaver_sim.cli import main; raise SystemExit(main())"]
    proc = subprocess.Popen(
        [*cmd, "run", "--data-dir", data_dir],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    metrics = ""
    for line in proc.stdout:
        if m := re.search(r"metrics: (\S+)", line):
            metrics = m.group(1)
        if line.startswith("ready"):
            return proc, metrics
    raise RuntimeError(f"beaver run exited with {proc.wait()}")


def snapshots_taken(url: str) -> int:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    m = re.search(r"^queue_snapshots_total (\S+)", text, re.M)
    return int(float(m.group(1))) if m else -1


def list_all(data_dir: str, code: str | None, times: int, cwd: str) -> list[tuple[float, float]]:
    """`beaver jobs --json` `times` times in a row: each one's (start, end) on time.perf_counter;
    its output is counted (a listing of every job) and discarded."""
    env = dict(os.environ, PYTHONPATH=code or "")
    cmd = [sys.executable, "-c", "from beaver_sim.cli import main; raise SystemExit(main())"]
    spans = []
    time.sleep(2.0)  # the enqueue client's round trips settle first
    for _ in range(times):
        t0 = time.perf_counter()
        out = subprocess.run(
            [*cmd, "jobs", "--json", "--data-dir", data_dir],
            cwd=cwd,
            env=env,
            capture_output=True,
            check=True,
        )
        spans.append((t0, time.perf_counter()))
        assert out.stdout.startswith(b"["), out.stderr
    return spans


def backlog_ids(n_jobs: int, n: int) -> list[str]:
    """`n` ids spread evenly over the back half of bench_recovery.big_queue's pending backlog (its
    last jobs: those after the completed, the dead and the in-flight ones)."""
    n_pending = n_jobs - n_jobs * 85 // 100 - n_jobs // 50 - min(WORKERS, n_jobs // 100)
    first = n_jobs - n_pending // 2
    step = max(1, (n_jobs - first) // n)
    return [f"job-{i:08d}" for i in range(first, n_jobs, step)][:n]


def operate(data_dir: str, ids: list[str]) -> dict[str, Any]:
    """Cancel `ids` in one request, then (a second later) requeue every dead job: each one's
    (start, end) on time.perf_counter and its answer."""
    time.sleep(2.0)  # the enqueue client's round trips settle first
    out: dict[str, Any] = {}
    for name, req in (
        ("cancel", {"op": "cancel", "ids": ids}),
        ("requeue_dead", {"op": "requeue", "ids": [], "dead": True}),
    ):
        t0 = time.perf_counter()
        answer = request(data_dir, req)
        out[name] = (t0, time.perf_counter(), answer)
        assert answer.get("ok"), answer
        time.sleep(1.0)
    return out


def flood(data_dir: str, seconds: float) -> tuple[float, float, dict[str, int]]:
    """A process leaking connections for `seconds`, from the second second on: its (start, end) on
    time.perf_counter and the answers it got, counted by error."""
    time.sleep(2.0)  # the enqueue client's round trips settle first
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, FLOODER, "flood", os.path.join(data_dir, "beaver.sock"), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return t0, time.perf_counter(), json.loads(out.stdout.splitlines()[-1])


def measure(data_dir: str, seconds: float) -> dict[str, list[float]]:
    """Round trips of the enqueue and status requests that were answered; the start of each one
    refused busy (not retried) in `refused`."""
    enq: list[float] = []
    enq_at: list[float] = []  # when each enqueue round trip started (time.perf_counter)
    status: list[float] = []
    refused: list[float] = []
    i = 0
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        next_at += PERIOD
        t0 = time.perf_counter()
        is_status = i % STATUS_EVERY == STATUS_EVERY - 1
        if is_status:
            answer = request(data_dir, {"op": "status"})
        else:
            job = [f"stall-{i}", {"type": "compute", "value": i}]
            answer = request(data_dir, {"op": "enqueue", "jobs": [job]})
        rt = time.perf_counter() - t0
        if not answer.get("ok"):
            assert answer.get("retry"), answer
            refused.append(t0)
        elif is_status:
            status.append(rt)
        else:
            enq.append(rt)
            enq_at.append(t0)
        i += 1
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {"enqueue": enq, "enqueue_at": enq_at, "status": status, "refused": refused}


def during(times: dict[str, list[float]], spans: list[tuple[float, float]]) -> list[float]:
    """The enqueue round trips whose time overlapped one of the listings' spans."""
    return [
        rt
        for t0, rt in zip(times["enqueue_at"], times["enqueue"], strict=True)
        if any(t0 < end and t0 + rt > start for start, end in spans)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=300_000)
    ap.add_argument("--interval", type=float, default=0.3, help="snapshot_interval, seconds")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the client measures")
    ap.add_argument("--code", help="run the beaver_sim package of this checkout (before)")
    ap.add_argument("--listing", type=int, default=0, help="`beaver jobs --json` this many times meanwhile")
    ap.add_argument("--cancels", type=int, default=0, help="cancel N pending, then requeue --dead")
    ap.add_argument("--flood", type=float, default=0, help="another process leaks connections, S seconds")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        data_dir = os.path.join(tmp, "run")
        t0 = time.perf_counter()
        build(data_dir, args.jobs, 0, seed_payload)
        os.remove(os.path.join(tmp, "jobs.json"))  # bench_recovery's baseline input: not needed here
        built = time.perf_counter() - t0
        proc, metrics = start(data_dir, args.code, args.interval, tmp)
        try:
            spans: list[tuple[float, float]] = []
            lister = threading.Thread(
                target=lambda: spans.extend(list_all(data_dir, args.code, args.listing, tmp)), daemon=True
            )
            if args.listing:
                lister.start()
            ops: dict[str, Any] = {}
            ids = backlog_ids(args.jobs, args.cancels) if args.cancels else []
            operator = threading.Thread(target=lambda: ops.update(operate(data_dir, ids)), daemon=True)
            if args.cancels:
                operator.start()
            flooded: list[tuple[float, float, dict[str, int]]] = []
            flooder = threading.Thread(
                target=lambda: flooded.append(flood(data_dir, args.flood)), daemon=True
            )
            if args.flood:
                flooder.start()
            times = measure(data_dir, args.seconds)
            if args.listing:
                lister.join()
            if args.cancels:
                operator.join()
            if args.flood:
                flooder.join()
            taken = snapshots_taken(metrics + "/metrics") if metrics else -1
            t1 = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            assert proc.stdout is not None
            tail = proc.stdout.read()
            code = proc.wait(timeout=120)
            stop_s = time.perf_counter() - t1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        try:
            request(data_dir, {"op": "status"}, timeout=1)
        except ControlUnavailable:
            pass
    out: dict[str, Any] = {
        "jobs": args.jobs,
        "interval": args.interval,
        "seconds": args.seconds,
        "code": args.code or "this checkout",
        "build_s": round(built, 1),
        "snapshots": taken,
        "enqueue": quantiles(times["enqueue"]),
        "status": quantiles(times["status"]),
        "stop_s": round(stop_s, 2),
        "exit": code,
        "stop_log": [line for line in tail.splitlines() if "snapshot" in line],
        "load": os.getloadavg()[0],
    }
    if args.listing:
        out["listing_s"] = [round(end - start, 2) for start, end in spans]
        out["enqueue_during_listing"] = quantiles(during(times, spans))
    if args.cancels:
        for name, (began, ended, answer) in ops.items():
            out[f"{name}_s"] = round(ended - began, 3)
            out[f"{name}_answer"] = answer
            out[f"enqueue_during_{name}"] = quantiles(during(times, [(began, ended)]))
        out["dead_at_start"] = args.jobs // 50  # bench_recovery.big_queue's, all with MAX_RETRY attempts
        out["max_retry"] = MAX_RETRY
    if args.flood:
        began, ended, seen = flooded[0]
        out["flood_s"] = round(ended - began, 2)
        out["flood_answers"] = seen
        out["refused_during_flood"] = sum(began <= t < ended for t in times["refused"])
        out["answered_during_flood"] = sum(began <= t < ended for t in times["enqueue_at"])
        out["enqueue_during_flood"] = quantiles(during(times, [(began, ended)]))
    print(json.dumps(out, indent=1))
    e, s = out["enqueue"], out["status"]
    print(
        f"| {args.jobs:,} | {out['code']} | {taken} | {e['p50_ms']} | {e['p99_ms']} | {e['max_ms']} "
        f"| {s['p99_ms']} | {s['max_ms']} | {out['stop_s']} | {out['load']:.1f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
