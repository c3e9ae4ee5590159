#!/usr/bin/env python3
"""Benchmark anchor, vendored here so the project stands alone: persist-queue's SQLiteAckQueue doing
put -> get -> ack for N jobs with its defaults (SQLite WAL mode, synchronous=FULL: one fsync per put
and two per get + ack). Prints the jobs/s of the whole pipeline as one JSON line. bench/bench_e2e.py
runs the same loop in-process (`run_pqueue`) next to beaver_sim's own rows
(`pip install persist-queue==1.1.0`, in the bench extra).

    python bench/anchors/pqueue_e2e.py [N]"""

import json
import sys
import tempfile
import time

import persistqueue

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
with tempfile.TemporaryDirectory() as d:
    q = persistqueue.SQLiteAckQueue(d, auto_commit=True)
    t = time.perf_counter()
    for i in range(N):
        q.put({"id": f"j{i}", "payload": {"type": "noop", "value": i}})
    for _ in range(N):
        item = q.get(block=False)
        q.ack(item)
    e = time.perf_counter() - t
print(json.dumps({"jobs": N, "seconds": e, "jobs_per_s": N / e}))
