#!/usr/bin/env python3
"""Benchmark anchor, vendored here so the project stands alone: the seed's workload (docs/original-
design.md) as a bare SimPy 4 model, with no WAL and no state machine. N jobs at t=0, 8 workers,
uniform 100-500 ms per attempt, 10 % failure, requeue at the back until 3 attempts, then dead, a 3 s
timeout armed per attempt. Prints one JSON line. bench/bench_sim.py loads it and compares the
simulator's speed with it (`pip install simpy==4.1.2`, in the bench extra).

    python bench/anchors/simpy_seed_model.py [N]"""

import json
import random
import sys

import simpy

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def main():
    env = simpy.Environment()
    store = simpy.Store(env)
    store.items.extend(range(N))
    attempts = [0] * N
    rng = random.Random(42)
    st = {"attempts": 0, "done": 0, "dead": 0}

    def worker():
        while True:
            job = yield store.get()
            attempts[job] += 1
            st["attempts"] += 1
            dur = rng.uniform(0.1, 0.5)
            fail = rng.random() < 0.10
            att = env.timeout(dur)
            yield att | env.timeout(3.0)
            if fail:
                if attempts[job] < 3:
                    yield store.put(job)
                else:
                    st["dead"] += 1
            else:
                st["done"] += 1

    for _ in range(8):
        env.process(worker())
    env.run()
    st["virtual_seconds"] = env.now
    print(json.dumps(st))


if __name__ == "__main__":
    main()
