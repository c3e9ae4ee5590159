"""ALICE-style crash states from a real run (Pillai et al., OSDI 2014): `beaver enqueue` and
`beaver run` are recorded under `strace`, and the state every prefix of their file-system calls
would leave after a crash (beaver_sim/sim/trace.py: process, power-loss, torn, metadata-first) is
recovered by the real `Storage.open` and checked: `wal verify` clean or a torn tail, recovery
starts, every job acknowledged before the crash point is back with its payload. Then the same
trace with one durability call taken out must fail: that is what makes the first test mean
something."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

import orjson
import pytest

from beaver_sim.sim.checker import Violation
from beaver_sim.sim.fs import POWER_LOSS
from beaver_sim.sim.trace import METADATA_FIRST, MODELS, TORN, Op, check, parse, strace_argv
from tests.traced import feed_traced_controller

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("strace") is None, reason="strace is not installed (Debian package strace)"
    ),
]

BEAVER = [sys.executable, "-m", "beaver_sim.cli"]
# `beaver enqueue`'s line when it wrote the log itself; the running controller's socket reply
ACK = re.compile(rb'^enqueued \d+ jobs .*; durable|^\{"ok":true,"enqueued"')
SEGMENT = re.compile(r"/wal/wal-\d{20}\.log$")


@dataclass
class Recording:
    ops: list[Op]
    batches: list[dict[str, dict[str, object]]]  # in the order they were acknowledged
    root: str


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """Batch 0 written by `beaver enqueue` alone, then `beaver run` (4 KiB segments, a snapshot
    every 50 ms) taking batches 1-7 over its control socket, one client after another: 60 jobs,
    rotations, snapshot renames, prunings and segment deletions."""
    tmp = tmp_path_factory.mktemp("alice")
    root = str(tmp / "d")
    batches = [{f"b{b}-{i}": {"type": "noop", "n": i} for i in range(4 + b)} for b in range(8)]
    files = []
    for b, batch in enumerate(batches):
        files.append(tmp / f"{b}.json")
        files[-1].write_bytes(orjson.dumps([{"id": k, "payload": v} for k, v in batch.items()]))
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("BEAVER_")]:
            mp.delenv(name)
        mp.setenv("BEAVER_SEGMENT_BYTES", "4096")
        # appended segments, whose torn tails the torn model cuts (the preallocated layout's crash
        # states are SimFS's: tests/unit/test_prealloc.py)
        mp.setenv("BEAVER_WAL_PREALLOCATE", "none")
        mp.chdir(tmp)  # no configs/ here: built-in defaults + the flags
        argv = [*BEAVER, "enqueue", "--create", "--data-dir", root, "--file", str(files[0])]
        out = subprocess.run(
            strace_argv(str(tmp / "0.trace"), argv), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "written directly" in out.stdout, out.stderr
        feed_traced_controller(strace_argv(str(tmp / "1.trace"), []), root, files[1:], pause=0.1)
    ops = []
    for name in ("0.trace", "1.trace"):
        ops += parse((tmp / name).read_text(), root, ACK, name)
    return Recording(ops, batches, root)


def lost(violations: list[Violation]) -> set[str]:
    return {v.job for v in violations if v.invariant == 1 and v.job is not None}


def test_every_prefix_of_a_real_run_recovers_every_acknowledged_job(recording: Recording) -> None:
    ops = recording.ops
    kinds = Counter(op.kind for op in ops)
    renamed = [op.target for op in ops if op.kind == "rename"]
    assert kinds["ack"] == len(recording.batches)
    assert sum("/snap/" in t for t in renamed) >= 3 and sum(bool(SEGMENT.search(t)) for t in renamed) >= 3
    assert any(op.kind == "unlink" and SEGMENT.search(op.path) for op in ops)  # a segment deleted
    assert any(op.kind == "unlink" and "/snap/" in op.path for op in ops)  # a snapshot pruned
    outcomes = check(ops, recording.batches, recording.root)
    assert [o.model for o in outcomes] == list(MODELS)
    for out in outcomes:
        assert out.states == len(ops) + 1
        assert not out.violations, "\n".join(map(str, out.violations[:10]))
    assert next(o for o in outcomes if o.model == TORN).torn > 0  # recovery cut torn records


def wal_sync_before(ops: list[Op], end: int) -> int:
    return max(i for i, op in enumerate(ops[:end]) if op.kind == "sync" and SEGMENT.search(op.path))


def test_an_fdatasync_taken_out_before_any_acknowledgement_loses_that_batch(recording: Recording) -> None:
    ops, batches = recording.ops, recording.batches
    acks = [i for i, op in enumerate(ops) if op.kind == "ack"]
    for n, ack in enumerate(acks):
        broken = ops[:]
        del broken[wal_sync_before(ops, ack)]
        (out,) = check(broken, batches, recording.root, [POWER_LOSS])
        assert lost(out.violations) & batches[n].keys(), f"batch {n}: no loss found without its fdatasync"
        assert all("after op" in v.crash for v in out.violations)


def test_a_segment_renamed_without_a_directory_fsync_loses_what_was_acknowledged_from_it(
    recording: Recording,
) -> None:
    """The first segment (`beaver enqueue`'s): batch 0 is acknowledged from it before any later
    fsync of the WAL directory could make its name durable."""
    ops, batches = recording.ops, recording.batches
    i = next(i for i, op in enumerate(ops) if op.kind == "rename" and SEGMENT.search(op.target))
    wal_dir = os.path.dirname(ops[i].target)
    assert ops[i + 1].kind == "sync" and ops[i + 1].path == wal_dir
    (out,) = check([*ops[: i + 1], *ops[i + 2 :]], batches, recording.root, [POWER_LOSS])
    assert lost(out.violations) == batches[0].keys()


def test_a_data_directory_its_parent_never_synced_loses_everything(recording: Recording) -> None:
    """What the first recording found: `beaver` created the data directory with os.makedirs and
    no fsync of its parent, so a power loss could take the directory and every acknowledged job."""
    ops = recording.ops
    parent = os.path.dirname(recording.root)
    broken = [op for op in ops if not (op.kind == "sync" and op.path == parent)]
    assert len(broken) == len(ops) - 1
    (out,) = check(broken, recording.batches, recording.root, [POWER_LOSS])
    assert lost(out.violations) == {job for batch in recording.batches for job in batch}


def test_a_segment_renamed_before_its_tmp_file_was_synced_is_refused_on_a_metadata_first_disk(
    recording: Recording,
) -> None:
    """Power loss alone cannot see this order: the rename is not durable before the directory
    fsync, and by then the data is synced. A file system that writes metadata first can."""
    ops = recording.ops
    i = next(i for i, op in enumerate(ops) if op.kind == "rename" and SEGMENT.search(op.target))
    assert ops[i - 1].kind == "sync" and ops[i - 1].path == ops[i].path  # the tmp file's fdatasync
    broken = [*ops[: i - 1], ops[i], Op("sync", ops[i].target, line="moved"), *ops[i + 1 :]]
    power, metadata = check(broken, recording.batches, recording.root, [POWER_LOSS, METADATA_FIRST])
    assert not power.violations
    assert any(v.invariant == 6 and "bad segment header" in v.detail for v in metadata.violations)
