"""Recovery and replay taken apart (issue 23): CPU seconds (`time.process_time`, which a shared
machine's load disturbs far less than wall time) of each step, each figure in a fresh process,
best of `--repeat`, the steps interleaved round by round.

    .venv/bin/python bench/bench_parts.py [--jobs 1000000] [--records 100000] [--replay 300000] [--repeat 3]
        [--code DIR]

Recovery, on bench_recovery.build's data directory (`--jobs` in the snapshot, `--records` after
it): the snapshot read and its CRC, `orjson.loads` of its body, `codec.from_columns`, then the
replay through `apply`; and apart, the parts of `from_columns`: a `Job` per id, the dict of every
id (to the `Job`s, or to positions: what building jobs on first touch would still build), the
type checks. Replay, on bench_storage.build_wal's log of `--replay` records: the raw loop (read,
split, chained CRC, `orjson.loads`), `WriteAheadLog.open` with a no-op callback (the scan alone)
and through `apply`, and `Storage.open`. With `--code DIR`, each step runs on DIR's `beaver_sim` too (another
checkout: "before"), interleaved. Prints JSON."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any

RECOVERY = ("read", "loads", "from_columns", "replay", "jobs", "dict_of_jobs", "dict_of_positions", "types")
REPLAY = ("raw", "scan", "scan_apply", "storage_open")


def one(step: str, path: str) -> float:
    """CPU seconds of `step` on the data directory `path`, in this process."""
    import orjson

    from beaver_sim.core import codec
    from beaver_sim.core.codec import _STATUS_OF
    from beaver_sim.core.durable import Storage
    from beaver_sim.core.queue import JobQueue
    from beaver_sim.core.records import apply
    from beaver_sim.core.types import Job
    from beaver_sim.storage import snapshot as S
    from beaver_sim.storage.fs import RealFS
    from beaver_sim.storage.wal import WriteAheadLog

    clock = time.process_time
    wal_dir = os.path.join(path, "wal")
    if step in REPLAY:
        from bench_storage import raw_loop

        t0 = clock()
        if step == "raw":
            raw_loop(wal_dir)
        elif step == "storage_open":
            Storage.open(RealFS(), path).close()
        else:
            on_record = partial(apply, JobQueue()) if step == "scan_apply" else (lambda _rec, _lsn: None)
            WriteAheadLog.open(RealFS(), wal_dir, after_seq=0, on_record=on_record)[0].close()
        return clock() - t0
    gc.disable()  # as recovery runs these
    snap_dir = os.path.join(path, "snap")
    name = sorted(os.listdir(snap_dir))[-1]
    t0 = clock()
    with open(os.path.join(snap_dir, name), "rb") as f:
        snap = S.decode(f.read(), name)
    if step == "read":
        return clock() - t0
    t0 = clock()
    cols = orjson.loads(snap.body)
    if step == "loads":
        return clock() - t0
    ids, status, attempts, payloads = cols["ids"], cols["status"], cols["attempts"], cols["payloads"]
    t0 = clock()
    if step == "from_columns":
        codec.from_columns(cols)
    elif step == "replay":
        q = codec.from_columns(cols)
        t0 = clock()
        WriteAheadLog.open(RealFS(), wal_dir, after_seq=q.last_seq, on_record=partial(apply, q))[0].close()
    elif step == "jobs":
        list(map(Job, ids, payloads, attempts, map(_STATUS_OF, status)))
    elif step == "dict_of_jobs":
        jobs = list(map(Job, ids, payloads, attempts, map(_STATUS_OF, status)))
        t0 = clock()
        dict(zip(ids, jobs))
    elif step == "dict_of_positions":
        dict(zip(ids, range(len(ids))))
    elif step == "types":
        assert set(map(type, ids)) <= {str} and set(map(type, payloads)) <= {str}
    return clock() - t0


def in_a_new_process(step: str, path: str, code: str | None) -> float:
    env = dict(os.environ, PYTHONPATH=code or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, __file__, "--one", step, "--path", path]
    return float(subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--replay", type=int, default=300_000, help="records of the replay figures")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--code", help="also run each step on the beaver_sim package of this checkout")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # one step in this process
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(one(args.one, args.path))
        return 0
    from bench_recovery import build, seed_payload
    from bench_storage import build_wal

    root = tempfile.mkdtemp(prefix="beaver-bench-parts-")
    try:
        recovery, replay = os.path.join(root, "recovery", "data"), os.path.join(root, "replay")
        os.makedirs(os.path.dirname(recovery))
        build(recovery, args.jobs, args.records, seed_payload)
        build_wal(replay, args.replay)
        codes = {"this checkout": None} | ({args.code: args.code} if args.code else {})
        best: dict[str, dict[str, float]] = {name: {} for name in codes}
        for _ in range(args.repeat):
            for step, path in [*((s, recovery) for s in RECOVERY), *((s, replay) for s in REPLAY)]:
                for name, code in codes.items():
                    s = in_a_new_process(step, path, code)
                    best[name][step] = min(best[name].get(step, s), s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {name: {k: round(v, 3) for k, v in b.items()} for name, b in best.items()}
    for name, b in best.items():
        out[name]["replay_ratio"] = round(b["raw"] / b["storage_open"], 3)
    out["load"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
