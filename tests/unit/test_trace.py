"""The strace parser and the crash-state replayer (beaver_sim/sim/trace.py) on hand-written traces:
offsets, pwrite, ftruncate, fallocate (a preallocated WAL), interrupted calls, and what each crash
model keeps. The real traces are in tests/integration/test_crash_states.py."""

from __future__ import annotations

import re

import pytest
from crc32c import crc32c

from beaver_sim.sim.fs import POWER_LOSS, PROCESS
from beaver_sim.sim.trace import METADATA_FIRST, TORN, Claim, Disk, Op, TraceError, check, parse
from beaver_sim.storage.log_format import frame, header_line

ACK = re.compile(rb"^done")


def hx(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return '"' + "".join(f"\\x{b:02x}" for b in data) + '"'


def fd(n: int, path: str) -> str:
    return f"{n}<{hx(path)[1:-1]}>"


CWD = f"AT_FDCWD<{hx('/')[1:-1]}>"  # the working directory, as strace -y shows it


def replay(lines: list[str], root: str = "/r") -> tuple[list[Op], Disk]:
    ops = parse("\n".join(lines), root, ACK)
    disk = Disk(root)
    for op in ops:
        disk.apply(op)
    return ops, disk


def test_writes_land_at_the_descriptor_offset_pwrite_at_its_own_and_appends_at_the_end() -> None:
    ops, disk = replay(
        [
            f"9 mkdir({hx('/r')}, 0700) = 0",
            f"9 openat({CWD}, {hx('r/f')}, O_WRONLY|O_CREAT|O_TRUNC, 0600) = {fd(3, '/r/f')}",
            f"9 write({fd(3, '/r/f')}, {hx('abcdef')}, 6) = 4",  # a short write: 4 bytes landed
            f"9 write({fd(3, '/r/f')}, {hx('XY')}, 2) = 2",
            f"9 pwrite64({fd(3, '/r/f')}, {hx('-')}, 1, 0) = 1",
            f"9 close({fd(3, '/r/f')}) = 0",
            f"9 openat({CWD}, {hx('/r/f')}, O_WRONLY|O_APPEND) = {fd(3, '/r/f')}",
            f"9 write({fd(3, '/r/f')}, {hx('!')}, 1) = 1",
            f"9 write({fd(1, '/dev/pts/0')}, {hx('done 1')}, 6) = 6",
            f"9 write({fd(3, '/r/f')}, {hx('lost')}, 4) = -1 ENOSPC (No space left on device)",
        ]
    )
    assert disk.crash(PROCESS) == {"/r": None, "/r/f": b"-bcdXY!"}
    assert [op.kind for op in ops] == [
        "mkdir",
        "create",
        "truncate",
        "write",
        "write",
        "write",
        "write",
        "ack",
    ]
    assert ops[-1].data == b"done 1" and ops[-1].line == "trace:9"


def test_an_interrupted_call_counts_when_it_returns() -> None:
    _, disk = replay(
        [
            f"9 mkdir({hx('/r')}, 0700) = 0",
            f"9 openat({CWD}, {hx('/r/f')}, O_WRONLY|O_CREAT|O_APPEND) = {fd(3, '/r/f')}",
            f"9 write({fd(3, '/r/f')}, {hx('a')}, 1 <unfinished ...>",
            f"10 write({fd(3, '/r/f')}, {hx('b')}, 1) = 1",
            "9 <... write resumed>) = 1",
        ]
    )
    assert disk.crash(PROCESS)["/r/f"] == b"ba"


def test_ftruncate_and_fallocate_as_a_preallocating_wal_would_use_them() -> None:
    seg = "/r/wal/wal-00000000000000000001.log"
    head, rec = header_line(1, 0, 0), frame(b'{"seq":1,"type":"ack","job":"j"}', 7)
    _, disk = replay(
        [
            f"9 mkdir({hx('/r')}, 0700) = 0",
            f"9 mkdir({hx('/r/wal')}, 0700) = 0",
            f"9 openat({CWD}, {hx(seg)}, O_RDWR|O_CREAT, 0600) = {fd(4, seg)}",
            f"9 fallocate({fd(4, seg)}, 0, 0, 4096) = 0",
            f"9 fallocate({fd(4, seg)}, FALLOC_FL_KEEP_SIZE, 0, 8192) = 0",
            f"9 pwrite64({fd(4, seg)}, {hx(head + rec)}, {len(head + rec)}, 0) = {len(head + rec)}",
            f"9 fdatasync({fd(4, seg)}) = 0",
            f"9 fsync({fd(5, '/r/wal')}) = 0",
            f"9 fsync({fd(5, '/r')}) = 0",
            f"9 fsync({fd(5, '/')}) = 0",  # the root's parent: makes /r itself durable
            f"9 fallocate({fd(4, seg)}, FALLOC_FL_KEEP_SIZE|FALLOC_FL_PUNCH_HOLE, 0, 10) = 0",
            f"9 ftruncate({fd(4, seg)}, 4000) = 0",
        ]
    )
    durable = head + rec + bytes(4096 - len(head + rec))
    assert disk.crash(POWER_LOSS)[seg] == durable
    assert disk.crash(PROCESS)[seg] == bytes(10) + durable[10:4000]
    claim = Claim()
    claim.read(durable)  # the zeros after the last record are not records
    assert (claim.seq, claim.lsn, claim.completed) == (1, len(head + rec), {"j"})


def test_each_crash_model_keeps_what_it_should() -> None:
    _, disk = replay(
        [
            f"9 mkdir({hx('/r')}, 0700) = 0",
            f"9 fsync({fd(5, '/')}) = 0",
            f"9 openat({CWD}, {hx('/r/a.tmp')}, O_WRONLY|O_CREAT|O_TRUNC) = {fd(3, '/r/a.tmp')}",
            f"9 write({fd(3, '/r/a.tmp')}, {hx('old')}, 3) = 3",
            f"9 fdatasync({fd(3, '/r/a.tmp')}) = 0",
            f"9 write({fd(3, '/r/a.tmp')}, {hx('1234')}, 4) = 4",
            f"9 rename({hx('/r/a.tmp')}, {hx('/r/a')}) = 0",
        ]
    )
    assert disk.crash(PROCESS) == {"/r": None, "/r/a": b"old1234"}
    assert disk.crash(POWER_LOSS) == {"/r": None}  # /r's entries were never synced
    assert disk.crash(METADATA_FIRST) == {"/r": None, "/r/a": b"old"}
    disk.apply(Op("sync", "/r"))
    assert disk.crash(POWER_LOSS) == {"/r": None, "/r/a": b"old"}
    assert disk.crash(TORN) == {"/r": None, "/r/a": b"old12"}


def test_a_string_strace_cut_short_or_a_relative_path_is_refused() -> None:
    cut = f"9 write({fd(3, '/r/f')}, {hx('abc')}..., 300) = 300"
    with pytest.raises(TraceError, match="trace:1: write to /r/f cut short"):
        parse(cut, "/r", ACK)
    with pytest.raises(TraceError, match="relative path 'r/x'"):
        parse(f"9 unlink({hx('r/x')}) = 0", "/r", ACK)


def test_a_lost_acknowledged_job_is_found_and_an_unsynced_one_is_not_claimed() -> None:
    """The smallest trace `check` can judge: one job written, acknowledged, then synced too late."""
    seg, tmp = "/r/wal/wal-00000000000000000001.log", "/r/wal/wal-00000000000000000001.log.tmp"
    head = header_line(1, 0, 0)
    body = b'{"seq":1,"type":"enqueue","job":"j","payload":{}}'
    rec = frame(body, crc32c(body))  # the chain starts at the header's prev_crc, 0
    lines = [
        f"9 mkdir({hx('/r')}, 0700) = 0",
        f"9 fsync({fd(5, '/')}) = 0",
        f"9 mkdir({hx('/r/wal')}, 0700) = 0",
        f"9 fsync({fd(5, '/r')}) = 0",
        f"9 openat({CWD}, {hx(tmp)}, O_WRONLY|O_CREAT|O_TRUNC) = {fd(4, tmp)}",
        f"9 write({fd(4, tmp)}, {hx(head)}, {len(head)}) = {len(head)}",
        f"9 fdatasync({fd(4, tmp)}) = 0",
        f"9 close({fd(4, tmp)}) = 0",
        f"9 rename({hx(tmp)}, {hx(seg)}) = 0",
        f"9 fsync({fd(5, '/r/wal')}) = 0",
        f"9 openat({CWD}, {hx(seg)}, O_WRONLY|O_CREAT|O_APPEND) = {fd(4, seg)}",
        f"9 write({fd(4, seg)}, {hx(rec)}, {len(rec)}) = {len(rec)}",
        f"9 write({fd(1, '/dev/pts/0')}, {hx('done')}, 4) = 4",
        f"9 fdatasync({fd(4, seg)}) = 0",
    ]
    ops = parse("\n".join(lines), "/r", ACK)
    ack = next(k for k, op in enumerate(ops, 1) if op.kind == "ack")
    process, power = check(ops, [{"j": {}}], "/r", [PROCESS, POWER_LOSS])
    assert (process.states, process.violations) == (len(ops) + 1, [])
    assert [(v.invariant, v.job, v.crash) for v in power.violations] == [
        (1, "j", f"power-loss after op {ack} (trace:{len(lines) - 1}: ack /dev/pts/0)")
    ]
