"""WriteAheadLog: framing, seq and LSN, fsync policies, fatal I/O errors, and recovery from torn
tails (truncated, with a `.broken` copy) versus corruption in the middle (refused, then repaired)."""

from __future__ import annotations

import os
import posixpath
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from crc32c import crc32c

from beaver_sim.core import records as R
from beaver_sim.core.types import BeaverError, CorruptLog
from beaver_sim.sim.fs import POWER_LOSS, PROCESS, SimFS
from beaver_sim.storage.fs import FS, RealFS
from beaver_sim.storage.log_format import frame, segment_name, unframe
from beaver_sim.storage.wal import (
    MAX_RECORD,
    RecordTooLarge,
    WALFailed,
    WriteAheadLog,
    list_segments,
    repair,
    verify,
)

D = "/wal"
LINE = re.compile(rb"([0-9a-f]{8}) (\d+) (.*)")


def rec(i: int) -> dict[str, Any]:
    return R.enqueue(f"job-{i}", {"type": "email", "to": f"user{i}@example.com", "n": i})


def reopen(fs: FS, d: str = D, **kw: Any) -> tuple[WriteAheadLog, list[tuple[dict[str, Any], int]], int]:
    """Open the log, collecting (record, LSN) of every replayed record; returns (wal, got, dropped)."""
    got: list[tuple[dict[str, Any], int]] = []
    wal, _scan, dropped = WriteAheadLog.open(fs, d, on_record=lambda r, lsn: got.append((r, lsn)), **kw)
    return wal, got, dropped


def fill(wal: WriteAheadLog, start: int, n: int, *, flush_every: int = 1) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        r = rec(i)
        wal.append(r)
        out.append(r)
        if (i - start + 1) % flush_every == 0:
            wal.flush()
    wal.flush()
    return out


def segment_files(fs: FS, d: str = D) -> dict[str, bytes]:
    return {n: fs.read_bytes(posixpath.join(d, n)) for n in list_segments(fs, d)}


def all_files(fs: FS, d: str = D) -> dict[str, bytes]:
    return {n: fs.read_bytes(posixpath.join(d, n)) for n in fs.listdir(d)}


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record line in a segment file, after its header line."""
    spans = []
    start = data.index(b"\n") + 1
    while start < len(data):
        nl = data.find(b"\n", start)
        if nl < 0:
            break
        spans.append((start, nl + 1))
        start = nl + 1
    return spans


def header(data: bytes) -> dict[str, Any]:
    return orjson.loads(data[: data.index(b"\n")].split(b" ", 2)[2])


def make_fs(kind: str, tmp_path: Path, files: dict[str, bytes]) -> tuple[FS, str]:
    """A log directory holding exactly `files`, on RealFS (in tmp_path) or on a fresh SimFS."""
    if kind == "RealFS":
        d = tmp_path / f"wal-{random.getrandbits(64):x}"
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
        return RealFS(), str(d)
    fs = SimFS()
    fs.makedirs(D)
    for name, data in files.items():
        f = fs.create(posixpath.join(D, name))
        f.write(data)
        f.sync()
    fs.sync_dir(D)
    return fs, D


both = pytest.mark.parametrize("kind", ["RealFS", "SimFS"])


# -- appending, framing, seq and LSN ---------------------------------------------------------------


def test_a_new_log_has_one_segment_and_starts_at_seq_1() -> None:
    fs = SimFS()
    wal, got, dropped = reopen(fs)
    assert got == [] and dropped == 0
    assert fs.listdir(D) == [segment_name(1)] == ["wal-00000000000000000001.log"]
    assert wal.next_seq == 1 and wal.lsn == fs.size(posixpath.join(D, segment_name(1)))
    h = header(fs.read_bytes(posixpath.join(D, segment_name(1))))
    assert h["magic"] == "beaver-wal" and h["first_seq"] == 1 and h["base_lsn"] == 0 and h["prev_crc"] == 0


@both
def test_append_flush_reopen(kind: str, tmp_path: Path) -> None:
    fs, d = (RealFS(), str(tmp_path / "wal")) if kind == "RealFS" else (SimFS(), D)
    wal, _, _ = reopen(fs, d)
    seqs = [wal.append(rec(i)) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert wal.pending_bytes == sum(map(len, wal.pending)) > 0
    assert [orjson.loads(unframe(line[:-1]) or b"")["seq"] for line in wal.pending] == seqs
    wal.flush()
    assert wal.pending_bytes == 0 and wal.pending == ()
    wal.close()
    wal2, got, dropped = reopen(fs, d)
    assert dropped == 0
    assert [r["seq"] for r, _ in got] == [1, 2, 3, 4, 5]
    assert [r["job"] for r, _ in got] == [f"job-{i}" for i in range(5)]
    assert got[2][0] == {**rec(2), "seq": 3}  # the whole record, payload included
    assert wal2.next_seq == 6
    assert wal2.append(rec(5)) == 6
    wal2.close()


def test_append_sets_seq_on_the_record() -> None:
    wal, _, _ = reopen(SimFS())
    r = rec(0)
    assert wal.append(r) == 1 and r["seq"] == 1


def test_every_line_is_framed_and_chained() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, segment_bytes=600)
    fill(wal, 0, 20)
    files = segment_files(fs)
    assert len(files) > 2
    crc = 0
    seq = 1
    for name, data in files.items():
        lines = data.split(b"\n")
        assert lines.pop() == b""  # every line ends in a newline
        h = header(data)
        assert h["prev_crc"] == crc and h["first_seq"] == seq and name == segment_name(seq)
        for line in lines[1:]:
            m = LINE.fullmatch(line)
            assert m is not None, line
            body = m.group(3)
            assert int(m.group(2)) == len(body)
            crc = crc32c(body, crc)  # the CRC covers the exact body bytes, chained
            assert int(m.group(1), 16) == crc
            assert orjson.loads(body)["seq"] == seq
            seq += 1
    assert seq == 21
    assert frame(b"{}", 0xABC) == b"00000abc 2 {}\n"


def test_seq_is_monotonic_across_rotation_and_reopen() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, segment_bytes=500)
    fill(wal, 0, 12)
    wal.rotate()
    wal.close()
    for round_ in range(3):
        wal, got, _ = reopen(fs, segment_bytes=500)
        assert [r["seq"] for r, _ in got] == list(range(1, 13 + 7 * round_))
        fill(wal, 100 + 10 * round_, 7)
        wal.close()
    names = list_segments(fs, D)
    firsts = [int(n[4:24]) for n in names]
    assert firsts == sorted(firsts) and len(firsts) >= 4 and firsts[0] == 1
    for name in names:  # each segment is named by its first seq, never reset
        data = fs.read_bytes(posixpath.join(D, name))
        spans = record_spans(data)
        if spans:
            s, e = spans[0]
            assert orjson.loads(data[s:e].split(b" ", 2)[2])["seq"] == int(name[4:24])


@both
def test_lsn_is_the_byte_offset_across_all_segments(kind: str, tmp_path: Path) -> None:
    fs, d = (RealFS(), str(tmp_path / "wal")) if kind == "RealFS" else (SimFS(), D)
    wal, _, _ = reopen(fs, d, segment_bytes=700)
    fill(wal, 0, 30, flush_every=3)
    assert wal.lsn == wal.written_lsn == wal.durable_lsn
    files = segment_files(fs, d)
    assert len(files) >= 3
    assert sum(len(b) for b in files.values()) == wal.lsn
    wal.close()
    _, got, _ = reopen(fs, d)
    expected = []
    base = 0
    for data in files.values():
        assert header(data)["base_lsn"] == base  # the next segment starts where the last ended
        expected += [header(data)["base_lsn"] + start for start, _ in record_spans(data)]
        base += len(data)
    lsns = [lsn for _, lsn in got]
    assert lsns == expected
    assert lsns == sorted(set(lsns))  # strictly increasing


def test_rotate_of_an_empty_segment_is_a_no_op() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    wal.rotate()
    assert list_segments(fs, D) == [segment_name(1)]
    fill(wal, 0, 3)
    wal.rotate()
    wal.rotate()
    assert list_segments(fs, D) == [segment_name(1), segment_name(4)]
    assert wal.lsn == sum(len(b) for b in segment_files(fs).values())


def test_flush_rotates_by_size() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, segment_bytes=400)
    fill(wal, 0, 10)
    sizes = [len(b) for b in segment_files(fs).values()]
    assert len(sizes) >= 3
    record_len = len(frame(orjson.dumps({**rec(0), "seq": 1}), 0))
    assert all(s < 400 + record_len for s in sizes)


def test_discard_last_takes_back_a_buffered_record() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    wal.append(rec(0))
    lsn, crc = wal.lsn, wal.crc
    wal.append(rec(1))
    wal.discard_last()
    assert (wal.next_seq, wal.lsn, wal.crc) == (2, lsn, crc)
    assert wal.append(rec(2)) == 2
    wal.close()
    _, got, _ = reopen(fs)
    assert [(r["seq"], r["job"]) for r, _ in got] == [(1, "job-0"), (2, "job-2")]


def test_close_syncs_what_is_buffered() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="never")
    wal.append(rec(0))
    wal.close()
    _, got, _ = reopen(fs.after_crash(POWER_LOSS))
    assert len(got) == 1


# -- fsync policies ------------------------------------------------------------------------------


def test_always_is_group_commit_one_write_and_one_sync_per_flush() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="always")
    ops: list[str] = []
    fs.hook = lambda op, path, n: ops.append(op)
    syncs = fs.syncs
    for i in range(64):
        wal.append(rec(i))
    assert ops == [] and fs.syncs == syncs  # appends only buffer
    wal.flush()
    assert ops == ["write", "sync"] and fs.syncs == syncs + 1 and wal.syncs == 1
    assert wal.durable_lsn == wal.lsn
    wal.flush()  # nothing new: no write, no sync
    assert fs.syncs == syncs + 1
    _, got, _ = reopen(fs.after_crash(POWER_LOSS))
    assert len(got) == 64  # synced: survives a power loss


def test_always_syncs_once_per_flush() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="always")
    syncs = fs.syncs
    fill(wal, 0, 10)
    assert fs.syncs - syncs == 10 == wal.syncs


def test_never_does_not_sync() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="never")
    syncs = fs.syncs
    fill(wal, 0, 64, flush_every=8)
    assert fs.syncs == syncs and wal.syncs == 0
    assert wal.written_lsn == wal.lsn and wal.durable_lsn < wal.lsn
    assert len(reopen(fs.after_crash(PROCESS))[1]) == 64
    assert len(reopen(fs.after_crash(POWER_LOSS))[1]) == 0


def test_interval_writes_on_flush_and_syncs_on_sync() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="interval")
    syncs = fs.syncs
    fill(wal, 0, 5)
    assert fs.syncs == syncs
    wal.sync()
    assert fs.syncs == syncs + 1
    wal.sync()  # nothing new
    assert fs.syncs == syncs + 1
    fill(wal, 5, 3)
    assert len(reopen(fs.after_crash(POWER_LOSS))[1]) == 5
    assert len(reopen(fs.after_crash(PROCESS))[1]) == 8


def test_sync_writes_what_is_buffered_first() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, fsync="never")
    wal.append(rec(0))
    wal.sync()
    assert wal.pending_bytes == 0 and wal.durable_lsn == wal.lsn
    assert len(reopen(fs.after_crash(POWER_LOSS))[1]) == 1


def test_an_unknown_fsync_policy_is_refused() -> None:
    with pytest.raises(BeaverError, match="fsync policy 'sometimes' is not one of always, interval, never"):
        reopen(SimFS(), fsync="sometimes")


# -- fatal I/O errors ---------------------------------------------------------------------------


class FailingFS:
    """SimFS whose open files raise OSError(EIO) on the ops named in `fail`."""

    def __init__(self) -> None:
        self.inner = SimFS()
        self.fail: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_append(self, path: str) -> FailingFile:
        return FailingFile(self, self.inner.open_append(path))

    def create(self, path: str) -> FailingFile:
        return FailingFile(self, self.inner.create(path))


class FailingFile:
    def __init__(self, fs: FailingFS, f: Any) -> None:
        self.fs, self.f = fs, f

    def write(self, data: bytes) -> None:
        if "write" in self.fs.fail:
            raise OSError(5, "Input/output error")
        self.f.write(data)

    def sync(self) -> None:
        if "sync" in self.fs.fail:
            raise OSError(5, "Input/output error")
        self.f.sync()

    def preallocate(self, size: int, zeros: bool = False) -> None:
        if "preallocate" in self.fs.fail:
            raise OSError(28, "No space left on device")
        self.f.preallocate(size, zeros)

    def close(self) -> None:
        self.f.close()


@pytest.mark.parametrize("op", ["write", "sync"])
def test_an_io_error_makes_the_log_fatal(op: str) -> None:
    fs = FailingFS()
    wal, _, _ = reopen(fs)  # type: ignore[arg-type]
    fill(wal, 0, 2)
    wal.append(rec(2))
    fs.fail.add(op)
    with pytest.raises(WALFailed, match=r"wal-00000000000000000001\.log: .*Input/output error.*restart"):
        wal.flush()
    fs.fail.clear()  # the disk "recovers": a retried fsync could lie (fsyncgate), so the log stays shut
    for call in (lambda: wal.append(rec(3)), wal.flush, wal.sync, wal.rotate):
        with pytest.raises(WALFailed, match="the log failed earlier"):
            call()
    wal.close()  # closing a failed log does not try to sync
    # a restart recovers from what reached the file
    _, got, _ = reopen(fs.inner.after_crash(PROCESS))
    assert [r["seq"] for r, _ in got] == ([1, 2] if op == "write" else [1, 2, 3])


def test_no_space_to_preallocate_the_next_segment_closes_the_log_naming_it() -> None:
    fs = FailingFS()
    wal, _, _ = reopen(fs, preallocate="fallocate", segment_bytes=4096)  # type: ignore[arg-type]
    fill(wal, 0, 2)
    fs.fail.add("preallocate")
    wal.append(rec(2))
    with pytest.raises(WALFailed, match=r"wal-00000000000000000004\.log: .*No space left.*restart"):
        wal.rotate()
    for call in (lambda: wal.append(rec(3)), wal.flush, wal.rotate):
        with pytest.raises(WALFailed, match="the log failed earlier"):
            call()
    wal.close()
    _, got, _ = reopen(fs.inner.after_crash(PROCESS), preallocate="fallocate", segment_bytes=4096)
    assert [r["seq"] for r, _ in got] == [1, 2, 3]  # rotate synced the records before it failed


def test_an_io_error_is_not_swallowed_by_interval_flush() -> None:
    fs = FailingFS()
    wal, _, _ = reopen(fs, fsync="interval")  # type: ignore[arg-type]
    wal.append(rec(0))
    fs.fail.add("write")
    with pytest.raises(WALFailed):
        wal.flush()
    with pytest.raises(WALFailed):
        wal.append(rec(1))


# -- record size -----------------------------------------------------------------------------------


def test_a_record_too_large_leaves_nothing_written() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs, max_record=300)
    fill(wal, 0, 2)
    before = all_files(fs)
    state = (wal.next_seq, wal.lsn, wal.crc, wal.pending_bytes)
    big = R.enqueue("huge", {"blob": "x" * 400})
    with pytest.raises(RecordTooLarge, match=r"record for job 'huge' is \d+ bytes; the limit is 300"):
        wal.append(big)
    assert isinstance(RecordTooLarge("x"), BeaverError)
    assert big["seq"] == 0
    assert (wal.next_seq, wal.lsn, wal.crc, wal.pending_bytes) == state
    wal.flush()
    assert all_files(fs) == before
    assert wal.append(rec(9)) == 3
    wal.close()
    assert [r["seq"] for r, _ in reopen(fs)[1]] == [1, 2, 3]


def test_the_default_record_limit_is_one_mib() -> None:
    wal, _, _ = reopen(SimFS())
    assert wal.max_record == MAX_RECORD == 1 << 20
    with pytest.raises(RecordTooLarge):
        wal.append(R.enqueue("huge", {"blob": "x" * MAX_RECORD}))
    assert wal.append(R.enqueue("fits", {"blob": "x" * (MAX_RECORD - 200)})) == 1


# -- torn tails: truncated, with a .broken copy --------------------------------------------------


def _two_segment_log() -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    recs = fill(wal, 0, 3)
    wal.rotate()
    recs += fill(wal, 3, 4)
    wal.close()
    return all_files(fs), recs


@both
def test_a_crash_at_every_byte_of_the_last_two_records(kind: str, tmp_path: Path) -> None:
    files, recs = _two_segment_log()
    last_name = max(files)
    data = files[last_name]
    spans = record_spans(data)
    earlier = len(recs) - len(spans)
    boundaries = [spans[0][0]] + [e for _, e in spans]  # header end, then each record's end
    for cut in range(spans[-2][0], len(data) + 1):
        fs, d = make_fs(kind, tmp_path, {**files, last_name: data[:cut]})
        wal, got, dropped = reopen(fs, d)
        keep = max(b for b in boundaries if b <= cut)
        complete = earlier + sum(1 for _, e in spans if e <= cut)
        assert complete >= len(recs) - 2  # loses at most the record cut short
        assert [r for r, _ in got] == recs[:complete], cut
        assert dropped == cut - keep
        seg = posixpath.join(d, last_name)
        assert fs.size(seg) == keep
        if dropped:
            assert fs.read_bytes(seg + ".broken") == data[:cut]  # the torn bytes are kept for humans
        else:
            assert not fs.exists(seg + ".broken")
        # the log goes on from the last complete record: nothing lost twice, nothing applied twice
        assert wal.append(rec(99)) == complete + 1
        wal.close()
        _, again, dropped2 = reopen(fs, d)
        assert dropped2 == 0
        assert [r["seq"] for r, _ in again] == list(range(1, complete + 2))


@both
@pytest.mark.parametrize(
    "tail",
    [
        b"\0" * 512,
        b"\0" * 7 + b"\n" + b"\0" * 40,
        bytes(random.Random(1).getrandbits(8) for _ in range(300)),
        b"00000000 2 {}\n",  # a well-formed line with the wrong checksum
        b"zz\n\n\xff\xfe garbage\n\n",
    ],
    ids=["zeros", "zeros-with-newline", "random", "bad-crc-line", "garbage-lines"],
)
def test_a_zero_or_garbage_tail_is_dropped(kind: str, tail: bytes, tmp_path: Path) -> None:
    files, recs = _two_segment_log()
    last_name = max(files)
    fs, d = make_fs(kind, tmp_path, {**files, last_name: files[last_name] + tail})
    wal, got, dropped = reopen(fs, d)
    assert [r for r, _ in got] == recs
    assert dropped == len(tail.rstrip(b"\0"))  # zeros to the end of the file are the end of the log
    assert fs.read_bytes(posixpath.join(d, last_name)) == files[last_name]
    wal.close()


def test_zeros_over_the_last_record_are_the_end_of_the_log() -> None:
    """An unsynced record that a power loss left as zeros (ext4 may): the log ends before it, and
    the appending layout cuts the zeros so the next record follows the last good one."""
    files, recs = _two_segment_log()
    last_name = max(files)
    data = files[last_name]
    start, end = record_spans(data)[-1]
    fs, d = make_fs("SimFS", Path("/unused"), {**files, last_name: data[:start] + b"\0" * (end - start)})
    _, got, dropped = reopen(fs, d)
    assert [r for r, _ in got] == recs[:-1] and dropped == 0
    assert fs.read_bytes(posixpath.join(d, last_name)) == data[:start]


def test_a_duplicated_last_record_is_dropped_as_torn() -> None:
    files, recs = _two_segment_log()
    last_name = max(files)
    data = files[last_name]
    start, end = record_spans(data)[-1]
    fs, d = make_fs("SimFS", Path("/unused"), {**files, last_name: data + data[start:end]})
    _, got, dropped = reopen(fs, d)  # its chained CRC cannot match a second time
    assert [r for r, _ in got] == recs and dropped == end - start


# -- corruption in the middle: refused, then repaired ---------------------------------------------


def _one_segment_log(n: int = 10) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    recs = fill(wal, 0, n)
    wal.close()
    return all_files(fs), recs


@both
@pytest.mark.parametrize("where", ["body", "checksum", "length"])
def test_a_flipped_byte_in_a_middle_record_is_refused_then_repaired(
    kind: str, where: str, tmp_path: Path
) -> None:
    files, recs = _one_segment_log()
    (name,) = files
    data = bytearray(files[name])
    start, end = record_spans(bytes(data))[3]  # the record with seq 4
    pos = {"body": (start + end) // 2, "checksum": start + 2, "length": start + 9}[where]
    data[pos] ^= 0x01
    fs, d = make_fs(kind, tmp_path, {name: bytes(data)})
    path = posixpath.join(d, name)
    before = all_files(fs, d)
    with pytest.raises(CorruptLog) as excinfo:
        reopen(fs, d)
    msg = str(excinfo.value)
    assert path in msg and f"at offset {start}" in msg and "after seq 3" in msg
    assert "\n" not in msg and "beaver wal repair" in msg
    assert all_files(fs, d) == before  # refusing changes nothing

    s = verify(fs, d)
    assert s.problem is not None and not s.problem.torn
    assert (s.problem.path, s.problem.offset, s.problem.last_good_seq) == (path, start, 3)
    assert s.problem.lsn == start  # one segment: LSN == offset
    assert all_files(fs, d) == before  # verify changes nothing

    scan_, dropped, backups = repair(fs, d)
    assert scan_.problem is not None and dropped == len(data) - start
    assert backups == [path + ".broken"]
    assert fs.read_bytes(path + ".broken") == bytes(data)
    assert fs.read_bytes(path) == bytes(data[:start])
    assert verify(fs, d).problem is None
    wal, got, dropped = reopen(fs, d)
    assert [r for r, _ in got] == recs[:3] and dropped == 0
    assert wal.append(rec(50)) == 4
    wal.close()


def test_a_stale_copy_of_a_record_in_the_middle_is_refused() -> None:
    files, _ = _one_segment_log()
    (name,) = files
    data = files[name]
    spans = record_spans(data)
    s, e = spans[2]
    forged = data[:e] + data[s:e] + data[e:]  # seq 3 twice: its checksum is valid, its chain is not
    fs, d = make_fs("SimFS", Path("/unused"), {name: forged})
    with pytest.raises(CorruptLog, match=rf"checksum mismatch at offset {e} .*after seq 3"):
        reopen(fs, d)


def test_a_seq_gap_in_the_middle_is_refused() -> None:
    crc = 0
    fs = SimFS()
    wal, _, _ = reopen(fs)
    wal.close()
    path = posixpath.join(D, segment_name(1))
    lines = []
    for seq in (1, 2, 4, 5):  # correctly framed and chained, but seq 3 is missing
        body = orjson.dumps({**rec(seq), "seq": seq})
        crc = crc32c(body, crc)
        lines.append(frame(body, crc))
    f = fs.open_append(path)
    f.write(b"".join(lines))
    with pytest.raises(CorruptLog, match=r"seq 4 where 3 was expected .*after seq 2"):
        reopen(fs)


def test_a_torn_record_at_the_end_of_an_earlier_segment_is_refused() -> None:
    files, _ = _two_segment_log()
    first = min(files)
    fs, d = make_fs("SimFS", Path("/unused"), {**files, first: files[first][:-5]})
    with pytest.raises(CorruptLog, match=rf"{first}: incomplete record"):
        reopen(fs, d)


def test_a_flipped_byte_in_an_earlier_segment_is_refused_then_repaired() -> None:
    files, recs = _two_segment_log()
    first, last = sorted(files)
    data = bytearray(files[first])
    start, end = record_spans(bytes(data))[-1]  # the last record of the first segment: seq 3
    data[(start + end) // 2] ^= 0x01
    fs, d = make_fs("SimFS", Path("/unused"), {**files, first: bytes(data)})
    with pytest.raises(CorruptLog, match=rf"{first}: checksum mismatch at offset {start} .*after seq 2"):
        reopen(fs, d)
    _, dropped, backups = repair(fs, d)
    assert backups == [posixpath.join(d, first) + ".broken", posixpath.join(d, last) + ".broken"]
    assert dropped == len(data) - start + len(files[last])
    _, got, _ = reopen(fs, d)
    assert [r for r, _ in got] == recs[:2]


def test_repair_of_a_sound_log_does_nothing() -> None:
    files, _ = _one_segment_log()
    fs, d = make_fs("SimFS", Path("/unused"), files)
    s, dropped, backups = repair(fs, d)
    assert s.problem is None and dropped == 0 and backups == []
    assert all_files(fs, d) == files


@both
def test_a_missing_middle_segment_is_refused(kind: str, tmp_path: Path) -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    for i in range(3):
        fill(wal, 10 * i, 3)
        wal.rotate()
    wal.close()
    files = all_files(fs)
    names = sorted(files)
    assert len(names) == 4
    del files[names[1]]
    fs2, d = make_fs(kind, tmp_path, files)
    before = all_files(fs2, d)
    with pytest.raises(CorruptLog, match=rf"{names[2]}: segment does not continue the log .*missing"):
        reopen(fs2, d)
    s = verify(fs2, d)
    assert s.problem is not None and s.problem.path == posixpath.join(d, names[2])
    assert s.problem.last_good_seq == 3
    assert all_files(fs2, d) == before


def test_a_missing_first_segment_is_refused() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    fill(wal, 0, 3)
    wal.rotate()
    fill(wal, 3, 2)
    wal.close()
    fs.remove(posixpath.join(D, segment_name(1)))
    with pytest.raises(CorruptLog, match=r"records 1\.\.3 are missing \(log starts at seq 4\)"):
        reopen(fs)
    # ... unless a snapshot covers them
    _, got, _ = reopen(fs, after_seq=3)
    assert [r["seq"] for r, _ in got] == [4, 5]


def test_verify_of_a_sound_log() -> None:
    files, recs = _two_segment_log()
    fs, d = make_fs("SimFS", Path("/unused"), files)
    s = verify(fs, d)
    assert s.problem is None
    assert s.records == len(recs) and s.next_seq == len(recs) + 1 and s.replayed == 0
    assert s.bytes_total == s.end_lsn == sum(len(b) for b in files.values())
    assert [seg.first_seq for seg in s.segments] == [1, 4]


def test_verify_reports_a_torn_tail_without_truncating_it() -> None:
    files, _ = _two_segment_log()
    last = max(files)
    fs, d = make_fs("SimFS", Path("/unused"), {**files, last: files[last][:-3]})
    before = all_files(fs, d)
    s = verify(fs, d)
    assert s.problem is not None and s.problem.torn and s.problem.reason == "incomplete record"
    assert all_files(fs, d) == before


def test_a_bad_segment_header_is_refused() -> None:
    files, _ = _two_segment_log()
    last = max(files)
    fs, d = make_fs("SimFS", Path("/unused"), {**files, last: b"x" + files[last][1:]})
    with pytest.raises(CorruptLog, match=rf"{last}: bad segment header at offset 0"):
        reopen(fs, d)


# -- segments, snapshots and the directory ------------------------------------------------------


def test_delete_through_deletes_only_covered_segments_never_the_current_one() -> None:
    fs = SimFS()
    wal, _, _ = reopen(fs)
    for i in range(3):
        fill(wal, 10 * i, 4)
        wal.rotate()
    assert [int(n[4:24]) for n in list_segments(fs, D)] == [1, 5, 9, 13]
    assert wal.delete_through(3) == 0  # segment 1 holds seq 4, not yet covered
    assert wal.delete_through(4) == 1
    assert [int(n[4:24]) for n in list_segments(fs, D)] == [5, 9, 13]
    assert wal.delete_through(100) == 2  # the current segment stays
    assert list_segments(fs, D) == [segment_name(13)]
    wal.close()
    with pytest.raises(CorruptLog, match="missing"):
        reopen(fs, after_seq=11)
    _, got, _ = reopen(fs, after_seq=12)
    assert got == []


def test_a_snapshot_ahead_of_the_log_is_refused() -> None:
    files, _ = _one_segment_log(3)
    fs, d = make_fs("SimFS", Path("/unused"), files)
    with pytest.raises(CorruptLog, match=r"the log ends at seq 3 but the snapshot covers seq 5"):
        reopen(fs, d, after_seq=5)
    fs2 = SimFS()
    fs2.makedirs(D)
    with pytest.raises(CorruptLog, match=r"no WAL segment, but a snapshot covers seq 5"):
        reopen(fs2, after_seq=5)


def test_replay_skips_records_a_snapshot_covers() -> None:
    files, recs = _one_segment_log(6)
    fs, d = make_fs("SimFS", Path("/unused"), files)
    wal, got, _ = reopen(fs, d, after_seq=4)
    assert [r for r, _ in got] == recs[4:]
    assert wal.next_seq == 7


def test_a_refused_replay_names_the_record() -> None:
    files, _ = _one_segment_log(4)
    fs, d = make_fs("SimFS", Path("/unused"), files)

    def on_record(r: dict[str, Any], lsn: int) -> None:
        if r["seq"] == 3:
            raise BeaverError("cannot apply")

    with pytest.raises(CorruptLog, match=r"cannot apply at offset \d+ .*after seq 2"):
        WriteAheadLog.open(fs, d, on_record=on_record)


def test_leftover_tmp_files_are_removed() -> None:
    fs = SimFS()
    fs.makedirs(D)
    fs.create(posixpath.join(D, segment_name(7) + ".tmp")).write(b"half a header")
    _, got, _ = reopen(fs)
    assert got == [] and fs.listdir(D) == [segment_name(1)]


@both
def test_a_wal_directory_that_is_a_file_is_refused(kind: str, tmp_path: Path) -> None:
    fs, d = make_fs(kind, tmp_path, {"wal": b"not a directory"})
    path = posixpath.join(d, "wal")
    with pytest.raises(BeaverError, match=f"{path}: WAL directory is a file"):
        reopen(fs, path)


def test_real_wal_files_are_what_cat_shows(tmp_path: Path) -> None:
    fs = RealFS()
    wal, _, _ = reopen(fs, str(tmp_path))
    fill(wal, 0, 3)
    wal.close()
    (name,) = os.listdir(tmp_path)
    text = (tmp_path / name).read_text()
    assert text.count("\n") == 4 and '"job":"job-2"' in text


def test_a_flipped_crc_of_the_second_to_last_record_is_refused_not_truncated() -> None:
    """The record after a bad CRC field still chains to the CRC its body should have had."""
    fs = SimFS()
    wal, _, _ = reopen(fs)
    fill(wal, 1, 5)
    wal.close()
    (name,) = segment_files(fs)
    path = posixpath.join(D, name)
    data = bytearray(fs.read_bytes(path))
    start, _ = record_spans(bytes(data))[-2]
    data[start] = ord("0") if data[start] != ord("0") else ord("1")
    fs.files[path].data[:] = data
    with pytest.raises(CorruptLog, match="checksum mismatch at offset"):
        reopen(fs)


def test_a_segment_spliced_in_from_another_log_is_refused_naming_the_chain() -> None:
    """Two logs of the same shape (same seqs, same record lengths, so the same base LSNs): the second
    segment of one, copied over the other's, continues its seq and LSN but not its checksum chain."""

    def log(domain: str) -> dict[str, bytes]:
        fs = SimFS()
        wal, _, _ = reopen(fs)
        for i in range(6):
            wal.append(R.enqueue(f"job-{i}", {"to": f"user{i}@example.{domain}"}))
            wal.flush()
            if i == 2:
                wal.rotate()
        wal.close()
        return all_files(fs)

    mine, other = log("com"), log("org")
    second = sorted(mine)[1]
    assert header(mine[second])["base_lsn"] == header(other[second])["base_lsn"]
    assert header(mine[second])["prev_crc"] != header(other[second])["prev_crc"]
    fs, d = make_fs("SimFS", Path("/unused"), {**mine, second: other[second]})
    with pytest.raises(CorruptLog, match=rf"{second}: segment breaks the checksum chain .* another log"):
        reopen(fs, d)
    s = verify(fs, d)
    assert s.problem is not None and not s.problem.torn and s.problem.last_good_seq == 3
    assert "missing" not in s.problem.reason


@pytest.mark.parametrize(("hole_end", "torn"), [(512, True), (1024, True), (700, False)])
def test_zeros_that_end_on_a_sector_are_a_lost_block_of_an_unsynced_write(hole_end: int, torn: bool) -> None:
    """A power loss may keep a later block of an unsynced write and lose an earlier one (crash model
    torn-blocks): zeros from the end of the synced log to a 512-byte boundary, then records. That
    is a torn tail, cut whatever follows it; zeros over records that end elsewhere are damage."""
    files, _ = _one_segment_log(30)
    name, data = next(iter(files.items()))
    start = record_spans(data)[2][0]  # records 1 and 2 synced, the rest written after the last sync
    assert start < 512 and len(data) > hole_end + 200
    fs, d = make_fs(
        "SimFS", Path("/unused"), {name: data[:start] + bytes(hole_end - start) + data[hole_end:]}
    )
    s = verify(fs, d)
    assert s.problem is not None and s.problem.offset == start and s.problem.torn is torn
    if torn:
        _, got, dropped = reopen(fs, d)
        assert [r["seq"] for r, _ in got] == [1, 2] and dropped == len(data) - start
    else:
        with pytest.raises(CorruptLog, match="after seq 2"):
            reopen(fs, d)


@pytest.mark.parametrize("mode", ["tolerate-tail", "strict"])
def test_a_bit_flip_in_the_whole_last_record_is_cut_or_refused_as_wal_recovery_says(mode: str) -> None:
    """One flipped bit in the last record, which ends with its newline (it was written whole, and may
    have been synced and acknowledged): `tolerate-tail` cuts it as a torn write, as etcd, LevelDB and
    PostgreSQL treat a bad record at the end; `strict` refuses. A record cut short is torn under both."""
    files, recs = _one_segment_log()
    name, data = next(iter(files.items()))
    start, end = record_spans(data)[-1]
    flipped = bytearray(data)
    flipped[end - 4] ^= 0x01  # a digit of the last payload's "n": the line still parses
    fs, d = make_fs("SimFS", Path("/unused"), {name: bytes(flipped)})
    s = verify(fs, d)
    assert s.problem is not None and s.problem.torn and s.problem.whole
    if mode == "strict":
        with pytest.raises(CorruptLog, match=r"last record is whole .* wal_recovery: strict refuses it"):
            reopen(fs, d, recovery=mode)
        assert fs.read_bytes(posixpath.join(d, name)) == bytes(flipped)  # nothing changed
    else:
        _, got, dropped = reopen(fs, d, recovery=mode)
        assert len(got) == len(recs) - 1 and dropped == end - start
    fs, d = make_fs("SimFS", Path("/unused"), {name: data[: end - 5]})  # cut short: torn, whatever the mode
    _, got, _ = reopen(fs, d, recovery=mode)
    assert len(got) == len(recs) - 1
    with pytest.raises(BeaverError, match="wal recovery 'lenient' is not one of tolerate-tail, strict"):
        reopen(SimFS(), recovery="lenient")
