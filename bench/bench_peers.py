"""The durable queues a user would weigh against beaver on one machine, in one interleaved run.

    .venv/bin/pip install -e '.[peers]'          # huey, rq + redis, persist-queue (not in `dev`)
    apt-get install -y redis-server              # for the two RQ rows
    .venv/bin/python bench/bench_peers.py [--jobs 20000] [--rounds 3] [--only huey,rq_always,...]

Every contender does the same work: N noop jobs, one producer, 8 consumers, each job completed
durably; jobs/s is N over the time from the first enqueue to the last completion (process, server
and worker start-up are outside it). Each run is a fresh process with a fresh directory; a round
runs every contender once, the order rotated each round, and the table gives best and median.
The durability each ran with is read from the live connection or server, not assumed:

  beaver_batched     bench_e2e.run_batched: enqueue calls of 1000, 8 PoolWorkers, the WAL's fsync policy
  beaver_one_by_one  bench_e2e.run_one_by_one: one enqueue at a time, each awaited until durable
  huey               SqliteHuey, its consumer with 8 worker threads, the task returns None
  huey_result        the same, the task returns True, so each job also writes a result row
  rq_always          RQ + redis-server --appendonly yes --appendfsync always, 8 SimpleWorker processes
  rq_everysec        the same with --appendfsync everysec (a crash may lose the last second)
  pq_seq             persist-queue SQLiteAckQueue: put N, then get + ack N (bench_e2e's loop)

A contender whose package or redis-server is missing is skipped, with the reason. Prints JSON,
then a markdown table."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 1000  # the producer's enqueue call size where a contender has a bulk call
DEADLINE = 300.0  # seconds a run may take before it gives up waiting (and reports what completed)
SQLITE_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}

Runner = Callable[[str, int, str, int], dict[str, Any]]


def rq_noop(_i: int) -> None:
    """The RQ job; the workers import it as `bench_peers.rq_noop` (this directory is their sys.path[0])."""


# ---------------------------------------------------------------------------------------- beaver
def run_beaver(kind: str, n: int, d: str, workers: int) -> dict[str, Any]:
    sys.path.insert(0, HERE)
    import bench_e2e  # the same runs as bench_e2e.py's own rows

    fn = bench_e2e.run_batched if kind.startswith("beaver_batched") else bench_e2e.run_one_by_one
    out = fn(d, n, workers=workers, preallocate="fallocate" if kind.endswith("_prealloc") else "auto")
    durability = f"WAL fsync {out['fsync']} (fdatasync before each acknowledgement)"
    return {
        **out,
        "durability": durability + (", preallocated segments" if out["preallocate"] != "none" else ""),
    }


# ------------------------------------------------------------------------------------------ huey
def run_huey(kind: str, n: int, d: str, workers: int) -> dict[str, Any]:
    from huey import SqliteHuey
    from huey.signals import SIGNAL_COMPLETE, SIGNAL_ERROR

    huey = SqliteHuey("bench", filename=os.path.join(d, "huey.db"))  # its defaults
    finished = {SIGNAL_COMPLETE: 0, SIGNAL_ERROR: 0}
    lock = threading.Lock()
    result: Any = None if kind == "huey" else True

    @huey.task()
    def job(_i: int) -> Any:
        return result  # True is stored in the result table before SIGNAL_COMPLETE

    @huey.signal(SIGNAL_COMPLETE, SIGNAL_ERROR)
    def on_finished(signal_: str, _task: Any, _exc: Any = None) -> None:
        with lock:
            finished[signal_] += 1

    conn = huey.storage.conn
    sync = conn.execute("pragma synchronous").fetchone()[0]
    mode = conn.execute("pragma journal_mode").fetchone()[0]
    consumer = huey.create_consumer(workers=workers, worker_type="thread")
    consumer.start()
    t0 = time.perf_counter()
    end = t0 + DEADLINE
    for start in range(0, n, BATCH):
        job.map(range(start, min(n, start + BATCH)))  # its bulk call: still one INSERT + COMMIT per task
    while sum(finished.values()) < n and time.perf_counter() < end:
        time.sleep(0.001)
    seconds = time.perf_counter() - t0
    consumer.stop(graceful=True)
    return {
        "seconds": seconds,
        "completed": finished[SIGNAL_COMPLETE],
        "failed": finished[SIGNAL_ERROR],
        "durability": f"SQLite journal_mode={mode}, synchronous={SQLITE_SYNC.get(sync, sync)}",
    }


# -------------------------------------------------------------------------------------------- rq
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} not ready after {seconds:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID: `sig`, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def run_rq(kind: str, n: int, d: str, workers: int) -> dict[str, Any]:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisDown
    from rq import Queue, Worker

    fsync = "always" if kind == "rq_always" else "everysec"
    port = _free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", ""),
            *("--appendonly", "yes", "--appendfsync", fsync, "--logfile", os.path.join(d, "redis.log")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conn = Redis(host="127.0.0.1", port=port)

        def up() -> bool:
            try:
                return bool(conn.ping())
            except RedisDown:
                return False

        _wait("redis-server", up, 10)
        config = conn.config_get("append*")
        with open(os.path.join(d, "workers.log"), "ab") as log:
            for _ in range(workers):
                cmd = [sys.executable, os.path.abspath(__file__), "--rq-worker", str(port)]
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
        _wait("RQ workers", lambda: Worker.count(connection=conn) >= workers, 60)
        q = Queue("default", connection=conn)
        finished_key, failed_key = q.finished_job_registry.key, q.failed_job_registry.key
        time.sleep(0.2)  # let the workers reach their blocking pop
        commands0 = conn.info("stats")["total_commands_processed"]
        t0 = time.perf_counter()
        end = t0 + DEADLINE
        for start in range(0, n, BATCH):
            batch = range(start, min(n, start + BATCH))
            q.enqueue_many([Queue.prepare_data("bench_peers.rq_noop", (i,)) for i in batch])
        polls = 0
        done = 0
        while time.perf_counter() < end:
            with conn.pipeline(transaction=False) as pipe:  # one round trip per poll
                fin, failed = pipe.zcard(finished_key).zcard(failed_key).execute()
            polls += 1
            done = fin + failed
            if done >= n:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        commands = conn.info("stats")["total_commands_processed"] - commands0 - 2 * polls
        return {
            "seconds": seconds,
            "completed": fin,
            "failed": failed,
            "durability": f"Redis appendonly {config['appendonly']}, appendfsync {config['appendfsync']}",
            "redis_commands_per_job": round(commands / n, 1),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # RQ's warm shutdown
        for p in procs:
            _stop(p)
        _stop(server)


def rq_worker(port: int) -> None:
    """One RQ SimpleWorker (no fork per job) on queue `default`; exits after 120 s idle at most."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    conn = Redis(host="127.0.0.1", port=port)
    worker = SimpleWorker([Queue("default", connection=conn)], connection=conn)
    worker.work(burst=False, logging_level="WARNING", max_idle_time=120)


# ------------------------------------------------------------------------------- persist-queue
def run_pq(_kind: str, n: int, d: str, _workers: int) -> dict[str, Any]:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(d, auto_commit=True)
    sync = q._putter.execute("pragma synchronous").fetchone()[0]
    mode = q._putter.execute("pragma journal_mode").fetchone()[0]
    t0 = time.perf_counter()
    for i in range(n):
        q.put({"id": f"j{i}", "payload": {"type": "noop", "value": i}})
    for _ in range(n):
        q.ack(q.get(block=False))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "completed": n,
        "durability": f"SQLite journal_mode={mode}, synchronous={SQLITE_SYNC.get(sync, sync)}",
    }


# -------------------------------------------------------------------------------------- driver
# name: (runner, what it needs, label)
CONTENDERS: dict[str, tuple[Runner, tuple[str, ...], str]] = {
    "beaver_batched": (run_beaver, (), "beaver, enqueue calls of 1000, 8 worker threads"),
    "beaver_one_by_one": (run_beaver, (), "beaver, one durable enqueue at a time, 8 worker threads"),
    "beaver_batched_prealloc": (run_beaver, (), "beaver batched, wal_preallocate: fallocate"),
    "beaver_one_by_one_prealloc": (run_beaver, (), "beaver one by one, wal_preallocate: fallocate"),
    "huey": (run_huey, ("huey",), "huey SqliteHuey, 8 worker threads, task returns None"),
    "huey_result": (run_huey, ("huey",), "huey SqliteHuey, 8 worker threads, task returns True (result row)"),
    "rq_always": (run_rq, ("rq", "redis", "redis-server"), "RQ + Redis, 8 SimpleWorker processes"),
    "rq_everysec": (run_rq, ("rq", "redis", "redis-server"), "RQ + Redis, 8 SimpleWorker processes"),
    "pq_seq": (run_pq, ("persistqueue",), "persist-queue SQLiteAckQueue, put N then get + ack N"),
}
DISTRIBUTION = {"persistqueue": "persist-queue"}


def missing(needs: tuple[str, ...]) -> str | None:
    """Why a contender cannot run here, or None."""
    for need in needs:
        if need == "redis-server":
            if shutil.which("redis-server") is None:
                return "redis-server not found (Debian: apt-get install -y redis-server)"
        elif importlib.util.find_spec(need) is None:
            return f"{DISTRIBUTION.get(need, need)} not installed (pip install -e '.[peers]')"
    return None


def versions() -> dict[str, str]:
    out = {}
    for dist in ("huey", "rq", "redis", "persist-queue", "orjson"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    server = shutil.which("redis-server")
    if server:
        line = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        out["redis-server"] = line.split()[2].removeprefix("v=")
    return out


def run_one(name: str, n: int, d: str, workers: int) -> dict[str, Any]:
    """One run of `name` in a fresh process and a fresh directory; its JSON line, or the error."""
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--jobs", str(n), "--dir", d]
    cmd += ["--workers", str(workers)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=DEADLINE + 120)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer after {DEADLINE + 120:.0f} s"}
    finally:
        _stop(p)  # on a timeout or when we are stopped: its own finally stops its server and workers
        shutil.rmtree(d, ignore_errors=True)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (stderr or stdout).strip().splitlines()[-1:] or f"exit {p.returncode}"}
    return json.loads(lines[-1])


def summarise(names: list[str], runs: dict[str, list[dict[str, Any]]], n: int) -> dict[str, Any]:
    out = {}
    for name in names:
        ok = [r["jobs_per_s"] for r in runs[name] if r.get("completed") == n]
        first = next((r for r in runs[name] if "durability" in r), {})
        out[name] = {
            "label": CONTENDERS[name][2],
            "durability": first.get("durability"),
            "best": round(max(ok)) if ok else None,
            "median": round(statistics.median(ok)) if ok else None,
            "all": [round(x) for x in ok],
            "errors": [r["error"] for r in runs[name] if "error" in r],
            **{k: first[k] for k in ("fsyncs_per_job", "redis_commands_per_job") if k in first},
        }
    return out


def table(res: dict[str, Any]) -> str:
    s, skipped = res["summary"], res["skipped"]
    huey = (s.get("huey") or {}).get("median")
    rows = [
        "| Contender | durability (read from the live connection / server) | jobs/s best | jobs/s median "
        "| median / huey |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in s.items():
        if r["median"] is None:
            rows.append(f"| {name}: {r['label']} | {r['durability']} | failed: {r['errors'][:1]} | | |")
            continue
        ratio = f"{r['median'] / huey:.2f}x" if huey else ""
        rows.append(
            f"| {name}: {r['label']} | {r['durability']} | {r['best']:,} | {r['median']:,} | {ratio} |"
        )
    for name, why in skipped.items():
        rows.append(f"| {name}: {CONTENDERS[name][2]} | skipped: {why} | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best and median are reported")
    ap.add_argument("--workers", type=int, default=8, help="consumers (threads or processes) per contender")
    ap.add_argument("--only", default="", help="comma-separated contender names (default: all)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--one", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)  # a single run, in-process
    ap.add_argument("--rq-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rq_worker:
        rq_worker(args.rq_worker)
        return 0
    if args.one:
        out = CONTENDERS[args.one][0](args.one, args.jobs, args.dir, args.workers)
        print(json.dumps({**out, "jobs_per_s": args.jobs / out["seconds"]}), flush=True)
        return 0
    names = [x for x in args.only.split(",") if x] or list(CONTENDERS)
    unknown = [x for x in names if x not in CONTENDERS]
    if unknown:
        ap.error(f"unknown contender {unknown[0]!r}; choose from {', '.join(CONTENDERS)}")
    skipped = {name: why for name in names if (why := missing(CONTENDERS[name][1]))}
    names = [name for name in names if name not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", file=sys.stderr)
    root = tempfile.mkdtemp(prefix="beaver-bench-peers-", dir=args.dir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)] if names else []
            for name in order:
                out = run_one(name, args.jobs, os.path.join(root, name), args.workers)
                out["round"], out["load1"] = r + 1, os.getloadavg()[0]
                runs[name].append(out)
                got = f"{out['jobs_per_s']:,.0f} jobs/s" if "jobs_per_s" in out else f"error {out['error']}"
                print(f"round {r + 1} {name}: {got}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "workers": args.workers,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": versions(),
        "summary": summarise(names, runs, args.jobs),
        "skipped": skipped,
        "runs": runs,
    }
    print(json.dumps(res, indent=2))
    print()
    print(table(res))
    return 0


if __name__ == "__main__":
    # SIGTERM unwinds like SIGINT, so the finally blocks stop every process a run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
