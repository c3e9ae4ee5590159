"""The WAL's reader on real files skips the hole that ends a preallocated segment (fallocate, never
written) and reads everything else: its verdict is the one a reader of the whole file gives, for a
sound log and for one with records after a run of zeros (what a power loss may leave)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from beaver_sim.core import records as R
from beaver_sim.storage.fs import RealFS
from beaver_sim.storage.wal import SEGMENT_BYTES, Scan, WriteAheadLog, list_segments, log_bytes, scan


class Whole:
    """A read-only view of the real files that reads each whole, as a file system that does not
    report holes would."""

    def listdir(self, path: str) -> list[str]:
        return RealFS().listdir(path)

    def read_bytes(self, path: str) -> bytes:
        return RealFS().read_bytes(path)


class Counted(RealFS):
    """RealFS, counting the bytes its reads return."""

    read = 0

    def read_bytes(self, path: str) -> bytes:
        data = super().read_bytes(path)
        self.read += len(data)
        return data

    def read_written(self, path: str) -> bytes:
        data = super().read_written(path)
        self.read += len(data)
        return data


def write_log(d: str, n: int) -> str:
    """`n` records in a segment preallocated to SEGMENT_BYTES; returns its path."""
    wal, _, _ = WriteAheadLog.open(RealFS(), d, preallocate="fallocate")
    for i in range(n):
        wal.append(R.enqueue(f"job-{i}", {"n": i}))
    wal.flush()
    wal.close()
    (name,) = list_segments(RealFS(), d)
    return posixpath.join(d, name)


def same_verdict(d: str) -> Scan:
    """Scan `d` through RealFS and through whole reads: the same result, which is returned."""
    s = scan(RealFS(), d)
    assert s == scan(Whole(), d)
    return s


def test_a_preallocated_segment_is_read_without_its_zeros(tmp_path: Path) -> None:
    path = write_log(str(tmp_path / "wal"), 20)
    fs = Counted()
    s = scan(fs, str(tmp_path / "wal"))
    assert s.problem is None and s.next_seq == 21
    assert os.path.getsize(path) == SEGMENT_BYTES and fs.read < 8192  # the records' pages, not 64 MiB
    assert same_verdict(str(tmp_path / "wal")) == s


@pytest.mark.parametrize("at", [1 << 16, (1 << 16) + 100, 5 << 20])
@pytest.mark.parametrize("cached", [False, True])
def test_a_record_after_a_hole_is_read(tmp_path: Path, at: int, cached: bool) -> None:
    """The last two records moved past a hole, after a run of zeros that runs to `at` (one
    ending on a sector boundary: a lost block, a torn tail; else corruption, a valid record
    following a bad one). Read into the page cache first or not (cached zeros count as data): the
    same verdict as a whole read either way."""
    d = str(tmp_path / "wal")
    path = write_log(d, 20)
    data = log_bytes(RealFS(), path)
    cut = data.rindex(b"\n", 0, data.rindex(b"\n", 0, len(data) - 1)) + 1
    last = data[cut:]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, cut)
        os.posix_fallocate(fd, 0, SEGMENT_BYTES)
        os.pwrite(fd, b"\n" + last, at)
    finally:
        os.close(fd)
    if cached:
        assert len(Whole().read_bytes(path)) == SEGMENT_BYTES
    written = RealFS().read_written(path)
    whole = Whole().read_bytes(path)
    assert whole.startswith(written) and not whole[len(written) :].strip(b"\0") and last in written
    s = same_verdict(d)
    assert s.problem is not None and s.next_seq == 19
    assert s.problem.torn is (at % 512 == 0), s.problem


def test_a_sparse_file_and_a_file_without_holes(tmp_path: Path) -> None:
    """A hole made by extending the file (not fallocate), data after it, zeros written out: only the
    zeros the last hole holds are left unread."""
    path = str(tmp_path / "f")
    fs = RealFS()
    with open(path, "wb") as f:
        f.write(b"a" * 100)
        f.truncate(1 << 20)
        f.seek(1 << 19)
        f.write(b"b")
    assert fs.read_written(path).rstrip(b"\0") == fs.read_bytes(path).rstrip(b"\0")
    assert b"b" in fs.read_written(path)
    with open(path, "wb") as f:
        f.write(b"a" * 100 + bytes(1 << 16))
    assert fs.read_written(path) == fs.read_bytes(path)
