"""The floor under `beaver sim --jobs N`: the least work any simulator that writes the same WAL
bytes must do, in plain Python, importing nothing from beaver_sim (issue 23, session 7).

    .venv/bin/python bench/bench_sim_floor.py [N]          # one run: prints its summary as JSON
    .venv/bin/python bench/bench_sim_floor.py N --check    # its WAL bytes against `beaver sim`'s
    .venv/bin/python bench/bench_sim_floor.py N --bench [--repeat 5]   # processes, interleaved

What it does for the seed's workload (N jobs at t=0, 8 workers, 100-500 ms, 10 % failure, 3 s
timeout, max_retry 3, snapshots considered every 2 s once the log grew by N records): every record
the simulator logs, built as the same dict, encoded with orjson, CRC32C-chained and framed as the
WAL frames it (`%08x %d %s\\n`), appended to one bytearray, with a segment header at each
checkpoint's rotation; every attempt's end and timeout, and the snapshot timer, through one heapq
(a timeout that finds its attempt ended is dropped when it comes up, which is all a cancel needs);
one keyed BLAKE2b draw per attempt, as core/draws.py draws it. What it leaves out, because the
bytes do not need it: a state machine beyond a pending FIFO and each job's attempt count, the
snapshots' contents, the file system, the checker, the clients' acknowledgements and the turn as an
event of its own (a turn's attempts start right after its records, as the flush would start them).

`--check` runs `beaver sim` in this process with SimFS's writes to the WAL teed aside (the only
place this file imports beaver_sim) and compares the two logs byte for byte. `--bench` times this
script, the SimPy model (bench/anchors/simpy_seed_model.py) and `beaver sim --jobs N --json` as
processes, interleaved, best of `--repeat`, wall and CPU (user + sys from wait4); run it from a
directory holding only a copy of configs/ (see bench/BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import subprocess
import sys
import time
from collections import deque
from hashlib import blake2b
from struct import Struct
from typing import Any

import orjson
from crc32c import crc32c

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR = os.path.join(HERE, "anchors", "simpy_seed_model.py")
LINE = b"%08x %d %s\n"
_UNIT = 2.0**-53
_TWO_WORDS = Struct("<QQ").unpack
END, TIMEOUT, SNAPSHOT = 0, 1, 2  # heap entry kinds


def header(first_seq: int, base_lsn: int, prev_crc: int) -> bytes:
    """A segment's header line (log_format.header_line): its own CRC, not chained."""
    body = orjson.dumps(
        {
            "magic": "beaver-wal",
            "v": 1,
            "first_seq": first_seq,
            "base_lsn": base_lsn,
            "prev_crc": prev_crc,
            "crc": "crc32c",
        }
    )
    return LINE % (crc32c(body), len(body), body)


def run(
    n: int,
    seed: int = 42,
    workers: int = 8,
    timeout: float = 3.0,
    max_retry: int = 3,
    failure_rate: float = 0.1,
    work_min: float = 0.1,
    work_max: float = 0.5,
    snapshot_interval: float = 2.0,
) -> tuple[bytearray, dict[str, Any]]:
    """The run's WAL bytes (every segment, in order) and its summary."""
    dumps = orjson.dumps
    key = blake2b(str(seed).encode(), digest_size=32, person=b"beaver-draws").digest()
    hasher = blake2b(key=key, digest_size=16)
    spread = work_max - work_min
    heap: list[tuple[Any, ...]] = []
    push, pop = heapq.heappush, heapq.heappop

    wal = bytearray(header(1, 0, 0))
    crc, seq = 0, 0  # the chain and the last seq logged
    segment_first = 1  # the live segment's first seq
    snapshot_seq = 0  # the last snapshot's seq
    snapshot_armed = False
    order = 0  # the heap's tie-break: insertion order
    events = 0

    name = f"task-%0{max(3, len(str(n)))}d"
    ids = [name % i for i in range(1, n + 1)]
    attempts = dict.fromkeys(ids, 0)  # the attempt in flight or last ended, per job
    for i, job in enumerate(ids, 1):  # t=0: the whole batch
        seq += 1
        body = dumps(
            {"seq": seq, "type": "enqueue", "job": job, "payload": {"type": "compute", "value": 37 * i}}
        )
        crc = crc32c(body, crc)
        wal += LINE % (crc, len(body), body)
    pending = deque(ids)
    free = deque(range(workers))
    leases: dict[str, int] = {}  # job -> attempt in flight
    completed = dead = 0
    per_attempt = [0] * (max_retry + 1)
    now = 0.0

    def start(now: float) -> None:
        """Dispatch while a worker is free: DISPATCH record, timeout armed, the attempt's draw and
        end event (its start once the turn's records are written)."""
        nonlocal seq, crc, order, wal
        while free and pending:
            job = pending.popleft()
            attempt = attempts[job] + 1
            attempts[job] = leases[job] = attempt
            worker = free.popleft()
            deadline = now + timeout
            seq += 1
            body = dumps(
                {
                    "seq": seq,
                    "type": "dispatch",
                    "job": job,
                    "attempt": attempt,
                    "worker": worker,
                    "deadline": deadline,
                }
            )
            crc = crc32c(body, crc)
            wal += LINE % (crc, len(body), body)
            push(heap, (deadline, order, TIMEOUT, job, attempt, worker))
            h = hasher.copy()
            h.update(attempt.to_bytes(8, "little") + job.encode())
            u, v = _TWO_WORDS(h.digest())
            push(
                heap,
                (
                    now + (work_min + spread * ((u >> 11) * _UNIT)),
                    order + 1,
                    END,
                    job,
                    attempt,
                    worker,
                    (v >> 11) * _UNIT >= failure_rate,
                ),
            )
            order += 2

    start(now)
    if seq:  # the first record logged arms the snapshot timer
        push(heap, (snapshot_interval, order, SNAPSHOT))
        order += 1
        snapshot_armed = True
    while heap:
        entry = pop(heap)
        kind = entry[2]
        if kind == END:
            now, _, _, job, attempt, worker, ok = entry
            events += 1
            del leases[job]
            free.append(worker)
            seq += 1
            if ok:
                body = dumps({"seq": seq, "type": "ack", "job": job, "attempt": attempt})
                completed += 1
                per_attempt[attempt] += 1
            elif attempt >= max_retry:
                body = dumps(
                    {
                        "seq": seq,
                        "type": "dead",
                        "job": job,
                        "attempt": attempt,
                        "reason": "failed: simulated failure",
                    }
                )
                dead += 1
                per_attempt[attempt] += 1
            else:
                body = dumps(
                    {"seq": seq, "type": "fail", "job": job, "attempt": attempt, "error": "simulated failure"}
                )
                pending.append(job)
            crc = crc32c(body, crc)
            wal += LINE % (crc, len(body), body)
            start(now)
            if not snapshot_armed:
                push(heap, (now + snapshot_interval, order, SNAPSHOT))
                order += 1
                snapshot_armed = True
        elif kind == TIMEOUT:
            if leases.get(entry[3]) == entry[4]:  # never, in this workload: an attempt ends in 0.5 s
                raise NotImplementedError("a timeout fired: this workload's attempts never time out")
        else:
            now = entry[0]
            events += 1
            snapshot_armed = False
            if seq - snapshot_seq >= n:  # the checkpoint: snapshot, then a new segment
                snapshot_seq = seq
                if segment_first != seq + 1:
                    wal += header(seq + 1, len(wal), crc)
                    segment_first = seq + 1
    if seq > snapshot_seq and segment_first != seq + 1:  # the stop's final checkpoint
        wal += header(seq + 1, len(wal), crc)
    summary = {
        "jobs": n,
        "completed": completed,
        "dead": dead,
        "attempts": {str(k): count for k, count in enumerate(per_attempt) if count},
        "records": seq,
        "events": events,
        "heap_entries": order,
        "virtual_seconds": now,
        "wal_bytes": len(wal),
    }
    return wal, summary


def check(n: int) -> dict[str, Any]:
    """This floor's WAL against the one `beaver sim --jobs n` writes, captured from its SimFS."""
    import contextlib
    import io

    from beaver_sim.cli import main
    from beaver_sim.sim import fs as simfs

    written: dict[str, bytearray] = {}
    write = simfs.SimFile.write

    def tee(self: Any, data: bytes) -> None:
        if "/wal/" in self.path:  # a segment is written first as its .tmp, then renamed
            written.setdefault(self.path.removesuffix(".tmp"), bytearray()).extend(data)
        write(self, data)

    simfs.SimFile.write = tee  # type: ignore[method-assign]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["sim", "--jobs", str(n), "--json"])
    finally:
        simfs.SimFile.write = write  # type: ignore[method-assign]
    theirs = b"".join(written[path] for path in sorted(written))  # a name sorts as its first seq
    ours, summary = run(n)
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    sim = json.loads(out.getvalue())
    return {
        "floor_bytes": len(ours),
        "sim_bytes": len(theirs),
        "sim_wal_bytes": sim["wal_bytes"],
        "identical": bytes(ours) == theirs,
        "first_difference": first_diff,
        "sha256": hashlib.sha256(ours).hexdigest(),
        "segments": len(written),
        "floor_events": summary["events"],
        "sim_events": sim["events"],
        "same_outcome": all(summary[k] == sim[k] for k in ("completed", "dead", "attempts")),
        # the simulator's clock also runs its metric samples (each virtual second while work
        # remains), so it may end on a later tick than the floor's last event
        "virtual_seconds": [summary["virtual_seconds"], sim["virtual_seconds"]],
    }


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU = user + sys) seconds of one process, its output discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed")
    return wall, usage.ru_utime + usage.ru_stime


def bench(n: int, repeat: int) -> dict[str, Any]:
    """The floor, SimPy's model and `beaver sim` as processes, interleaved, best of `repeat`."""
    py = sys.executable
    cmds = {
        "simpy": [py, ANCHOR, str(n)],
        "floor": [py, os.path.abspath(__file__), str(n)],
        "beaver_sim": [py, "-m", "beaver_sim.cli", "sim", "--jobs", str(n), "--json"],
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for k, cmd in cmds.items():
            runs[k].append(timed(cmd))
    simpy_wall = min(w for w, _ in runs["simpy"])
    simpy_cpu = min(c for _, c in runs["simpy"])
    out: dict[str, Any] = {"jobs": n, "repeat": repeat, "load": os.getloadavg()[0]}
    for k, rs in runs.items():
        wall, cpu = min(w for w, _ in rs), min(c for _, c in rs)
        out[k] = {
            "wall": round(wall, 3),
            "cpu": round(cpu, 3),
            "walls": sorted(round(w, 2) for w, _ in rs),
            "simpy_over_this_wall": round(simpy_wall / wall, 2),
            "simpy_over_this_cpu": round(simpy_cpu / cpu, 2),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", type=int, nargs="?", default=100_000)
    p.add_argument("--check", action="store_true", help="compare the WAL with beaver sim's")
    p.add_argument("--bench", action="store_true", help="time floor, SimPy, beaver sim as processes")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    if a.check:
        print(json.dumps(check(a.jobs)))
    elif a.bench:
        print(json.dumps(bench(a.jobs, a.repeat)))
    else:
        print(json.dumps(run(a.jobs)[1]))


if __name__ == "__main__":
    main()
