"""Preallocated WAL segments: the zero-filled remainder read as the end of the log, torn writes into
it, LSNs equal to the appending layout's, recovery cutting and re-extending, operator tools that
ignore the zeros, and the every-byte crash sweeps under every crash model in this layout."""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import apply_repair, plan_repair
from beaver_sim.core.types import Config, CorruptLog
from beaver_sim.sim.fs import CRASH_MODELS, METADATA_FIRST, POWER_LOSS, PROCESS, TORN_BLOCKS, SimFS
from beaver_sim.sim.sweep import (
    base_run,
    crash_sweep,
    enumerate_points,
    failing,
    lifecycle,
    recovery_sweep,
    violations,
    with_torn,
)
from beaver_sim.storage.fs import FS, RealFS
from beaver_sim.storage.log_format import frame, parse_line
from beaver_sim.storage.wal import WriteAheadLog, list_segments, scan

SEG = 4096


def rec(i: int) -> dict[str, Any]:
    return R.enqueue(f"job-{i}", {"type": "email", "to": f"user{i}@example.com", "n": i})


def write_log(fs: FS, d: str, n: int, prealloc: str = "fallocate", **kw: Any) -> list[int]:
    """n records, one flush each; returns each record's LSN as replay reports it."""
    wal, _, _ = WriteAheadLog.open(fs, d, preallocate=prealloc, segment_bytes=SEG, **kw)
    for i in range(n):
        wal.append(rec(i))
        wal.flush()
    wal.close()
    return lsns(fs, d)


def lsns(fs: FS, d: str) -> list[int]:
    out: list[int] = []
    scan(fs, d, 0, lambda _r, lsn: out.append(lsn))
    return out


def reopen(fs: FS, d: str, prealloc: str = "fallocate") -> tuple[WriteAheadLog, list[dict[str, Any]], int]:
    got: list[dict[str, Any]] = []
    wal, _, dropped = WriteAheadLog.open(
        fs, d, on_record=lambda r, _l: got.append(r), preallocate=prealloc, segment_bytes=SEG
    )
    return wal, got, dropped


def last_segment(fs: FS, d: str) -> str:
    return posixpath.join(d, list_segments(fs, d)[-1])


def fs_dir(kind: str, tmp_path: Path) -> tuple[FS, str]:
    return (RealFS(), str(tmp_path / "wal")) if kind == "RealFS" else (SimFS(), "/wal")


def overwrite(fs: FS, path: str, offset: int, data: bytes) -> None:
    """Put `data` at `offset` of a file, whichever FS (damage made by hand, not by the WAL)."""
    whole = bytearray(fs.read_bytes(path))
    whole[offset : offset + len(data)] = data
    f = fs.create(path)
    f.write(bytes(whole))
    f.sync()
    f.close()


both = pytest.mark.parametrize("kind", ["RealFS", "SimFS"])


@both
@pytest.mark.parametrize("prealloc", ["fallocate", "zeros"])
def test_segments_are_full_size_and_the_zeros_are_the_end_of_the_log(
    kind: str, prealloc: str, tmp_path: Path
) -> None:
    fs, d = fs_dir(kind, tmp_path)
    got = write_log(fs, d, 60, prealloc)
    other, other_dir = SimFS(), "/appended"
    assert got == write_log(other, other_dir, 60, "none")  # the same LSNs as the appending layout
    names = list_segments(fs, d)
    assert len(names) == 2 and names == list_segments(other, other_dir)
    for name in names:
        data, appended = fs.read_bytes(posixpath.join(d, name)), other.read_bytes(f"{other_dir}/{name}")
        # records, then zeros; the flush that fills a segment may run past its end (then it rotates)
        assert data == appended + bytes(max(0, SEG - len(appended)))
    s = scan(fs, d)
    assert s.problem is None and s.next_seq == 61 and s.bytes_total == scan(other, other_dir).bytes_total
    wal, recs, dropped = reopen(fs, d, prealloc)
    assert len(recs) == 60 and dropped == 0
    wal.append(rec(60))  # goes on exactly where the log ended, over the zeros
    wal.flush()
    wal.close()
    assert lsns(fs, d) == write_log(SimFS(), "/x", 61, "none")


def test_a_zero_header_is_never_a_record() -> None:
    for n in (1, 8, 9, 20, 100):
        assert isinstance(parse_line(bytes(n), 0), str)
        assert isinstance(parse_line(bytes(n), crc32c(bytes(n))), str)


@given(
    st.recursive(
        st.text() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.booleans(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_no_record_byte_is_zero(payload: Any) -> None:
    """What makes the zero remainder unambiguous: a record line never holds a 0 byte."""
    body = orjson.dumps({**R.enqueue("id\0with nul", payload), "seq": 1})
    assert b"\0" not in frame(body, crc32c(body))


@both
def test_a_torn_record_followed_by_zeros_is_cut_and_the_zeros_restored(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    write_log(fs, d, 10)
    path = last_segment(fs, d)
    end = scan(fs, d).end_offset
    torn = b'0badc0de 57 {"seq":11,"type":"enq'
    overwrite(fs, path, end, torn)  # half a record, zeros after
    s = scan(fs, d)
    assert s.problem is not None and s.problem.torn and s.problem.offset == end
    wal, recs, dropped = reopen(fs, d)
    assert len(recs) == 10 and dropped == len(torn)
    assert fs.read_bytes(path + ".broken").endswith(b'"type":"enq')  # the torn bytes, not the zeros
    data = fs.read_bytes(path)
    assert len(data) == SEG and not data[end:].strip(b"\0")  # the stale bytes can never be read back
    wal.append(rec(10))
    wal.flush()
    wal.close()
    assert [r["seq"] for r in reopen(fs, d)[1]] == list(range(1, 12))


@both
def test_zeros_then_bytes_are_a_bad_record(kind: str, tmp_path: Path) -> None:
    """Zeros followed by garbage at the end of the last segment: a torn tail (a power loss can keep
    a later page of an unsynced write and lose an earlier one). Followed by good records, or in a
    segment before the last: corruption, and the log refuses to open."""
    fs, d = fs_dir(kind, tmp_path)
    write_log(fs, d, 10)
    path = last_segment(fs, d)
    end = scan(fs, d).end_offset
    overwrite(fs, path, end + 100, b"garbage\n")
    s = scan(fs, d)
    assert s.problem is not None and s.problem.torn and s.problem.offset == end
    assert len(reopen(fs, d)[1]) == 10 and not fs.read_bytes(path)[end:].strip(b"\0")

    fs, d = fs_dir(kind, tmp_path / "corrupt")
    write_log(fs, d, 10)
    path = last_segment(fs, d)
    data = fs.read_bytes(path)
    first = data.index(b"\n") + 1
    overwrite(fs, path, first, bytes(data.index(b"\n", first) + 1 - first))  # record 1 zeroed, 2..10 follow
    s = scan(fs, d)
    assert s.problem is not None and not s.problem.torn and s.problem.last_good_seq == 0
    with pytest.raises(CorruptLog, match="offset"):
        reopen(fs, d)

    fs, d = fs_dir(kind, tmp_path / "middle")
    write_log(fs, d, 60)  # two segments
    first_seg = posixpath.join(d, list_segments(fs, d)[0])
    overwrite(fs, first_seg, SEG - 10, b"junk")
    s = scan(fs, d)
    assert s.problem is not None and not s.problem.torn and s.problem.path == first_seg


@pytest.mark.parametrize("model", CRASH_MODELS)
def test_simfs_keeps_the_zeros_a_sync_made_durable(model: str) -> None:
    fs = SimFS()
    fs.makedirs("/d")
    f = fs.create("/d/f")
    f.write(b"head\n")
    f.preallocate(100)
    assert not fs.after_crash(POWER_LOSS).exists("/d/f")  # neither the name nor the bytes are durable
    f.sync()
    fs.sync_dir("/d")
    g = fs.open_at("/d/f", 5)
    g.write(b"record\n")  # over the zeros, not synced
    after = fs.after_crash(model, 3)
    # process keeps the write; power-loss its first 3 (torn) bytes; metadata-first and torn-blocks
    # (which keeps only every second unsynced block, and this write lies in the first) none of it
    expect = {PROCESS: b"head\nrecord\n", POWER_LOSS: b"head\nrec"}.get(model, b"head\n")
    assert after.read_bytes("/d/f") == expect + bytes(100 - len(expect)) and after.size("/d/f") == 100
    with pytest.raises(ValueError, match="end of the written bytes"):
        fs.open_at("/d/f", 2)  # over bytes that are not zeros: not what the WAL does


def test_realfs_preallocates_with_fallocate_or_zeros(tmp_path: Path) -> None:
    for zeros in (False, True):
        path = str(tmp_path / f"f{zeros}")
        f = RealFS().create(path)
        f.write(b"abc")
        f.preallocate(1 << 16, zeros)
        f.write(b"def")  # the write offset did not move
        f.sync()
        f.close()
        assert Path(path).read_bytes() == b"abcdef" + bytes((1 << 16) - 6)
        st_ = os.stat(path)
        assert st_.st_size == 1 << 16 and st_.st_blocks * 512 >= 1 << 16  # the blocks exist


@both
def test_turning_preallocation_off_and_on_keeps_the_log(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    write_log(fs, d, 5)
    wal, recs, _ = reopen(fs, d, "none")  # the zeros are cut: appending lands right after the log
    assert len(recs) == 5 and fs.size(last_segment(fs, d)) == scan(fs, d).end_offset
    wal.append(rec(5))
    wal.flush()
    wal.close()
    wal, recs, _ = reopen(fs, d, "zeros")
    assert len(recs) == 6 and fs.size(last_segment(fs, d)) == SEG
    wal.close()


@both
def test_repair_counts_and_keeps_log_bytes_not_zeros(kind: str, tmp_path: Path) -> None:
    fs, d = fs_dir(kind, tmp_path)
    write_log(fs, d, 10)
    path = last_segment(fs, d)
    data = fs.read_bytes(path)
    end = scan(fs, d).end_offset
    spans = [i + 1 for i, b in enumerate(data[:end]) if b == 10]
    overwrite(fs, path, spans[3] + 2, b"X")  # record 4 damaged, 5..10 after it: corruption
    snap = d + "-snap"
    plan = plan_repair(fs, d, snap)
    assert plan is not None and not plan.refused
    # record 4 does not verify: counted as damage, never as the job its body names; 5..10 verify
    assert plan.bytes_dropped == end - spans[3] and plan.unreadable == 1 and plan.jobs_lost == 6
    backups = apply_repair(fs, d, plan)
    assert fs.read_bytes(backups[0]) == fs.read_bytes(path + ".broken")
    assert fs.read_bytes(backups[0])[: spans[3]] == data[: spans[3]] and len(fs.read_bytes(backups[0])) == end
    assert scan(fs, d).problem is None and scan(fs, d).next_seq == 4
    wal, recs, _ = reopen(fs, d)
    assert len(recs) == 3 and fs.size(path) == SEG
    wal.close()


# -- the crash sweeps, in the preallocated layout ------------------------------------------------


def test_the_simulated_run_writes_the_same_records_at_the_same_lsns() -> None:
    appended, preallocated = base_run(lifecycle(12)), base_run(lifecycle(12, wal_preallocate="fallocate"))
    assert preallocated.trace == appended.trace and preallocated.end == appended.end
    assert preallocated.result.files == appended.result.files  # the bytes written; the zeros aside


@pytest.mark.parametrize(
    ("model", "torn"),
    [("process", 0), ("power-loss", 0), ("power-loss", "random"), (METADATA_FIRST, 0), (TORN_BLOCKS, 0)],
)
def test_every_byte_of_a_preallocated_run_keeps_every_invariant(model: str, torn: int | str) -> None:
    """Every WAL byte and every persistence point of the life-cycle run (rotations, snapshots,
    segment deletion) with preallocated 4 KiB segments: each crash leaves a torn write over zeros,
    a segment being extended, or a cut tail to extend again."""
    df = crash_sweep(
        lifecycle(16, 3, model, wal_preallocate="fallocate"),
        "all",
        executor="serial",
        progress=False,
        torn=torn,
    )
    assert not failing(df), violations(df)[:3]
    assert set(df["outcome"]) == {"ok"}
    torn_cut = (df[df["kind"] == "lsn"]["bytes_truncated"] > 0).sum()
    assert (torn_cut > 0) == (model in (PROCESS, TORN_BLOCKS) or torn != 0)


@pytest.mark.parametrize("model", CRASH_MODELS)
def test_a_crash_while_recovery_cuts_and_extends_again(model: str) -> None:
    sim = lifecycle(16, 3, model, wal_preallocate="zeros")
    torn = [p for p in enumerate_points(base_run(sim), "records") if p.kind == "lsn"][10::24]
    firsts = with_torn(torn, "random", 9) if model == POWER_LOSS else torn
    df = recovery_sweep(sim, firsts)
    assert (df["outcome"] == "ok").all(), df[df["outcome"] != "ok"][["first", "second", "detail"]].head()


def test_config_names_the_layout() -> None:
    assert Config().wal_preallocate == "auto" and not Config().problems()
    assert Config(wal_preallocate="yes").problems() == [
        "wal_preallocate must be one of auto, none, fallocate, zeros, got 'yes'"
    ]


def test_auto_is_fallocate_on_real_files_and_none_in_the_simulator(tmp_path: Path) -> None:
    real = Storage.from_config(RealFS(), Config(data_dir=str(tmp_path / "d"), segment_bytes=1 << 20))
    sim = Storage.from_config(SimFS(), Config(data_dir="/run", segment_bytes=1 << 20))
    try:
        assert (real.wal.preallocate, sim.wal.preallocate) == ("fallocate", "none")
        (segment,) = (tmp_path / "d" / "wal").iterdir()  # the probe file is gone
        assert segment.stat().st_size == 1 << 20
    finally:
        real.close()
        sim.close()


def test_auto_falls_back_to_none_where_fallocate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", refused)
    s = Storage.from_config(RealFS(), Config(data_dir=str(tmp_path / "d"), segment_bytes=1 << 20))
    try:
        assert s.wal.preallocate == "none"
        assert [p.name for p in (tmp_path / "d" / "wal").iterdir()] == ["wal-00000000000000000001.log"]
    finally:
        s.close()


def test_the_no_fsync_mutant_is_still_caught_in_this_layout() -> None:
    s = lifecycle(12, 3, "power-loss", wal_preallocate="fallocate")
    df = crash_sweep(replace(s, mutant="no-fsync"), "records", executor="serial", progress=False)
    assert any(v["invariant"] == 1 for v in violations(df))
