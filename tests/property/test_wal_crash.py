"""The WAL under crashes: random appends, flushes, syncs and rotations on SimFS, a crash at a random
byte of a write or before a random call, under each crash model; then recovery on the survivors.

What had to survive is worked out from the FS calls alone, not from the log's own bookkeeping:
every byte written to a `.log` file is record lines (headers go to `.tmp` files first), so
`complete(bytes)` counts the records those bytes hold. A process crash keeps exactly the complete
records written; a power loss keeps at least every record synced, at most every record written.
Both layouts: appended segments, and preallocated ones whose records overwrite zeros."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

from beaver_sim.core import records as R
from beaver_sim.sim.fs import (
    CRASH_MODELS,
    METADATA_FIRST,
    POWER_LOSS,
    PROCESS,
    TORN_BLOCKS,
    SimFS,
    SimulatedCrash,
)
from beaver_sim.storage.log_format import FSYNC_POLICIES, PREALLOCATE
from beaver_sim.storage.wal import WriteAheadLog, verify

D = "/data/wal"


def line_len(rec: dict[str, Any]) -> int:
    """Bytes of a record's line, `<crc:8 hex> <len> <body>\\n`, known without the WAL's help."""
    body = orjson.dumps(rec)
    return 8 + 1 + len(str(len(body))) + 1 + len(body) + 1


@dataclass
class Run:
    """One run up to its crash, and what the FS calls say must or may survive it."""

    appended: list[dict[str, Any]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # each record's end LSN, as the WAL counted it
    log_bytes: int = 0  # bytes that reached .log files (the page cache)
    synced_bytes: int = 0  # of those, bytes made durable by a sync of a .log file
    crash: str = "after the last call"
    claimed_durable: int = 0  # records the WAL called durable (end LSN <= durable_lsn)
    events: int = 0  # FS calls the run made (a write counts once)

    def complete(self, nbytes: int) -> int:
        """How many of the appended records the first `nbytes` of record lines hold whole."""
        total = 0
        for k, r in enumerate(self.appended):
            total += line_len(r)
            if total > nbytes:
                return k
        return len(self.appended)


def execute(
    ops: list[tuple[str, int]],
    policy: str,
    segment_bytes: int,
    crash_at: int | None,
    keep_seed: int,
    prealloc: str = "none",
) -> tuple[SimFS, Run]:
    """Run `ops` on a fresh SimFS; stop the world at FS event number `crash_at` (a write keeps
    `keep_seed % (n + 1)` of its n bytes), or after the last op if it is never reached."""
    fs = SimFS()
    run = Run()
    events = itertools.count()

    def hook(op: str, path: str, n: int) -> int | None:
        i = next(events)
        is_log = path.endswith(".log")
        if i == crash_at:
            keep = keep_seed % (n + 1) if op == "write" else 0
            run.crash = f"event {i}: {op} {path}" + (f" after {keep} of {n} bytes" if op == "write" else "")
            if op == "write" and is_log:
                run.log_bytes += keep
            return keep
        if op == "write" and is_log:
            run.log_bytes += n
        elif op == "sync" and is_log:  # earlier segments were synced before the log moved on
            run.synced_bytes = run.log_bytes
        return None

    fs.hook = hook
    wal = None
    try:
        wal, _, _ = WriteAheadLog.open(fs, D, fsync=policy, segment_bytes=segment_bytes, preallocate=prealloc)
        for i, (op, size) in enumerate(ops):
            if op == "append":
                r = R.enqueue(f"job-{i}", {"pad": "x" * size, "i": i})
                wal.append(r)
                run.appended.append(dict(r))
                run.ends.append(wal.lsn)
            elif op == "flush":
                wal.flush()
                if policy == "always":  # acknowledged: the WAL must say so
                    assert wal.durable_lsn == wal.lsn
            elif op == "sync":
                wal.sync()
            else:
                wal.rotate()
    except SimulatedCrash:
        pass
    fs.hook = None
    run.events = next(events)
    if wal is not None:
        run.claimed_durable = sum(1 for e in run.ends if e <= wal.durable_lsn)
    return fs, run


def recover(fs: SimFS, prealloc: str = "none") -> tuple[WriteAheadLog, list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    wal, _, _ = WriteAheadLog.open(
        fs, D, on_record=lambda r, _lsn: got.append(r), preallocate=prealloc, segment_bytes=1 << 14
    )
    return wal, got


def check(fs: SimFS, run: Run, model: str, torn: int, prealloc: str = "none") -> None:
    survivor = fs.after_crash(model, torn)
    wal, got = recover(survivor, prealloc)
    n = len(got)
    written = run.complete(run.log_bytes)
    synced = run.complete(run.synced_bytes)
    if currently_in_test_context():
        note(f"{run.crash}; {model} torn={torn}: recovered {n}, written {written}, synced {synced}")
    # in order, exactly as appended, and nothing that was never written
    assert got == run.appended[:n]
    assert n <= written
    if model == PROCESS:
        assert n == written  # every complete record written survives a process crash
    else:
        assert n >= synced  # every synced record survives a power loss
        assert n >= run.claimed_durable  # and so does everything the WAL acknowledged as durable
        if torn == 0:
            assert n == synced  # with no torn tail, unsynced bytes do not survive
    # the recovered log is sound and goes on at the next seq
    assert verify(survivor, D).problem is None
    assert wal.append(R.enqueue("after-crash", {})) == n + 1
    wal.flush()
    wal.close()
    _, again = recover(survivor, prealloc)
    assert [r["seq"] for r in again] == list(range(1, n + 2))


ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 80)),
        st.tuples(st.sampled_from(["flush", "sync", "rotate"]), st.just(0)),
    ),
    min_size=3,
    max_size=50,
)


@settings(max_examples=settings.default.max_examples * 10)
@given(
    ops=ops_strategy,
    policy=st.sampled_from(FSYNC_POLICIES),
    segment_bytes=st.sampled_from([300, 1000, 1 << 20]),
    data=st.data(),
    keep_seed=st.integers(0, 1 << 16),
    model=st.sampled_from(CRASH_MODELS),
    torn=st.sampled_from([0, 1, 17, 100, 10_000]),
    prealloc=st.sampled_from(PREALLOCATE),
)
def test_recovery_keeps_what_had_to_survive(
    ops: list[tuple[str, int]],
    policy: str,
    segment_bytes: int,
    data: st.DataObject,
    keep_seed: int,
    model: str,
    torn: int,
    prealloc: str,
) -> None:
    if prealloc != "none":  # 16 KiB is never full here either; a MiB of zeros per read would be slow
        segment_bytes = min(segment_bytes, 1 << 14)
    # runs are deterministic: count the FS events of the whole run, then crash at one of them
    # (or, at index == events, after the last call)
    events = execute(ops, policy, segment_bytes, None, 0, prealloc)[1].events
    crash_at = data.draw(st.integers(0, events), label="crash_at")
    fs, run = execute(ops, policy, segment_bytes, crash_at, keep_seed, prealloc)
    event("crash " + (run.crash.split(" ")[2].rstrip(":") if run.crash.startswith("event") else "at the end"))
    check(fs, run, model, torn if model == POWER_LOSS else 0, prealloc)


FIXED_OPS = [("append", 10), ("append", 40), ("flush", 0)] * 3 + [
    ("append", 5),
    ("sync", 0),
    ("rotate", 0),
    ("append", 70),
    ("append", 0),
    ("append", 30),
    ("flush", 0),
    ("append", 1),
    ("flush", 0),
]


@pytest.mark.parametrize("prealloc", ["none", "fallocate"])
@pytest.mark.parametrize("policy", FSYNC_POLICIES)
def test_a_crash_at_every_event_of_a_fixed_run(policy: str, prealloc: str) -> None:
    """Exhaustive over one run: a crash before every FS call and in the middle, at the start and
    at the end of every write, under both models; with preallocation, also before each segment is
    extended with zeros, and recovery reopens the log in the same layout and in the other one."""
    _, full = execute(FIXED_OPS, policy, 400, None, 0, prealloc)
    events = full.events
    assert events > 20 and len(full.appended) == 11
    for crash_at in range(events):
        for keep_seed in (0, 7, 1 << 20):  # nothing, a few bytes, or (mostly) a whole write
            fs, run = execute(FIXED_OPS, policy, 400, crash_at, keep_seed, prealloc)
            for model, torn in (
                (PROCESS, 0),
                (POWER_LOSS, 0),
                (POWER_LOSS, 9),
                (POWER_LOSS, 1000),
                (METADATA_FIRST, 0),
                (TORN_BLOCKS, 0),
            ):
                check(fs, run, model, torn, prealloc)
            if prealloc != "none":  # turning preallocation off cuts the zeros; nothing else changes
                check(fs, run, POWER_LOSS, 9, "none")
