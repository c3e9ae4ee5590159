"""What a `beaver run` holds for control clients that ask for a listing and never read it (server
bounds: WRITE_TIMEOUT, MAX_STREAMS, a process's share PEER_STREAMS). A real `beaver run` on a data
directory of `--jobs` jobs (bench_recovery's mix, no snapshot meanwhile), then `--clients`
connections that each ask for every job, read nothing and stay open, made by `--processes`
processes (tests/hostile_client.py hold, one after the other, an equal number each). The
controller's resident memory (VmRSS) and open descriptors are sampled before, 3 s after the
clients asked, 5 s after WRITE_TIMEOUT, at `--hold` seconds, and 3 s after the clients closed;
meanwhile a client times status round trips (one every 50 ms), and once all asked, a listing of 3
jobs from this process (retried while busy, as `beaver jobs` does) is timed. How many of the silent
clients were refused busy, and why, is read from their answers' first bytes.

    .venv/bin/python bench/bench_silent_clients.py --jobs 1000000 --clients 32 --processes 16 [--code DIR]

`--code DIR` runs the `beaver_sim` package found in DIR (a checkout of another version: "before").
Prints the figures as JSON, then a markdown row."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from bench_recovery import build, seed_payload
from bench_stall import quantiles, start

from beaver_sim.runtime.server import WRITE_TIMEOUT, ask, request, socket_path

HOSTILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "hostile_client.py"
)
LISTING = b'{"op": "jobs", "state": null, "limit": null}'


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def holder(data_dir: str, clients: int, seconds: float) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """A process that asked for every job on `clients` connections, reads nothing and keeps them
    for `seconds`; and its answers counted ("began", or the error)."""
    proc = subprocess.Popen(
        [sys.executable, HOSTILE, "hold", socket_path(data_dir), str(clients), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    with proc.stdin:
        proc.stdin.write(LISTING)
    return proc, json.loads(proc.stdout.readline())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=32, help="silent listing clients")
    ap.add_argument("--processes", type=int, default=16, help="processes the clients are spread over")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds the silent clients stay connected")
    ap.add_argument("--code", help="run the beaver_sim package of this checkout (before)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-silent-") as tmp:
        data_dir = os.path.join(tmp, "run")
        build(data_dir, args.jobs, 0, seed_payload)
        os.remove(os.path.join(tmp, "jobs.json"))  # bench_recovery's baseline input: not needed here
        proc, _ = start(data_dir, args.code, 600.0, tmp)
        rtts: list[float] = []
        stop = threading.Event()

        def statuses() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                answer = request(data_dir, {"op": "status"}, timeout=60)
                rtts.append(time.perf_counter() - t0)
                assert answer.get("ok"), answer
                time.sleep(0.05)

        try:
            time.sleep(3.0)  # the backlog's first dispatches settle
            pid = proc.pid
            samples: dict[str, Any] = {"before": (rss_mb(pid), descriptors(pid))}
            prober = threading.Thread(target=statuses, daemon=True)
            prober.start()
            t0 = time.monotonic()
            per = [
                args.clients // args.processes + (i < args.clients % args.processes)
                for i in range(args.processes)
            ]
            holders = [holder(data_dir, n, args.hold + 1.0) for n in per]  # closed after the last mark
            seen: dict[str, int] = {}
            for _, counts in holders:
                for what, n in counts.items():
                    seen[what] = seen.get(what, 0) + n
            t1 = time.perf_counter()
            listed = ask(data_dir, {"op": "jobs", "state": None, "limit": 3}, timeout=60)
            lister_ms = round((time.perf_counter() - t1) * 1000, 2)
            assert listed is not None and len(listed["jobs"]) == 3, listed
            marks = [
                ("asked+3s", 3.0),
                (f"asked+{WRITE_TIMEOUT + 5:g}s", WRITE_TIMEOUT + 5),
                (f"asked+{args.hold:g}s", args.hold),
            ]
            for name, at in marks:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                samples[name] = (rss_mb(pid), descriptors(pid))
            for hold_proc, _ in holders:
                assert hold_proc.wait(timeout=60) == 0
            time.sleep(3.0)
            samples["closed+3s"] = (rss_mb(pid), descriptors(pid))
            stop.set()
            prober.join()
            proc.send_signal(signal.SIGINT)
            assert proc.stdout is not None
            tail = proc.stdout.read()
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = {
        "jobs": args.jobs,
        "clients": args.clients,
        "code": args.code or "this checkout",
        "processes": args.processes,
        "listing_began": seen.pop("began", 0),
        "busy": seen,
        "other_listing_ms": lister_ms,
        "rss_mb_and_fds": samples,
        "status_rtt": quantiles(rtts),
        "dropped_warnings": [line for line in tail.splitlines() if "stopped taking" in line],
        "exit": code,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(out, indent=1))
    cells = " | ".join(f"{rss:g} MB / {fds}" for rss, fds in samples.values())
    print(
        f"| {out['code']} | {args.clients} / {args.processes} | {out['listing_began']} / "
        f"{sum(seen.values())} | {lister_ms:g} ms | {cells} "
        f"| {out['status_rtt']['p99_ms']} / {out['status_rtt']['max_ms']} | {out['load']:.1f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
