"""`scan(known=...)`: a scan handed what earlier scans of the same growing log verified gives the
verdict, the replay and the figures of a scan from the start, on every prefix a crash may leave and
whatever damage hits the bytes already verified (a crash sweep recovers thousands of such copies)."""

from __future__ import annotations

import posixpath
import random
from dataclasses import asdict
from typing import Any

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.core.types import BeaverError, Config
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.wal import Known, Scan, Verified, WriteAheadLog, list_segments, scan

D = "/wal"


def grown_log(n: int, segment_bytes: int) -> tuple[dict[str, bytes], list[tuple[str, int]]]:
    """A log of `n` records, one write each, and every moment of its growth: (segment, length)
    after each write, so that the files a crash there leaves are every segment before it whole
    and this one cut at that length."""
    fs = SimFS()
    wal, _s, _d = WriteAheadLog.open(fs, D, segment_bytes=segment_bytes)
    moments = []
    for i in range(n):
        wal.append(R.enqueue(f"job-{i}", {"n": i, "pad": "x" * (i % 7)}))
        wal.flush()
        path = wal.segments[-1].path
        moments.append((path, fs.size(path)))
    wal.close()
    return {p: fs.read_bytes(p) for p in (posixpath.join(D, n) for n in list_segments(fs, D))}, moments


def files_at(segments: dict[str, bytes], path: str, length: int) -> SimFS:
    """The segments as a crash in the write that brought `path` to `length` bytes leaves them."""
    fs = SimFS()
    fs.makedirs(D)
    for p, data in sorted(segments.items()):
        if p > path:
            break
        f = fs.create(p)
        f.write(data[:length] if p == path else data)
        f.sync()
    return fs


def scanned(
    fs: SimFS, after_seq: int, known: Known | None
) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """The scan's every figure and problem, and the (record, LSN) it replayed; then the same of a
    scan that replays nothing (a verifier's: it may skip every verified record), on a copy of
    `known`."""
    got: list[Any] = []
    s: Scan = scan(fs, D, after_seq, lambda rec, lsn: got.append((rec, lsn)), known=known)
    check = scan(fs, D, after_seq, known=None if known is None else dict(known))
    return asdict(s), got, asdict(check)


@pytest.mark.parametrize("segment_bytes", [1 << 20, 700])
def test_every_prefix_scans_as_from_the_start(segment_bytes: int) -> None:
    """Prefixes in growing order (a sweep task's points), each cut at a record's end, then inside
    a record (or a new segment's header), with snapshots covering none, some, or all of them: the
    same figures, problem and replay as a scan from the start."""
    segments, moments = grown_log(60, segment_bytes)
    known: Known = {}
    rng = random.Random(5)
    for k, (path, length) in enumerate(moments):
        for cut in (length, length - rng.randint(1, 20)):  # a record boundary, then a torn record
            after = rng.choice([0, k // 2, max(0, k - 3), k + 5])  # (beyond the end: replays nothing)
            fs = files_at(segments, path, cut)
            assert scanned(fs, after, known) == scanned(fs, after, None)
    last, end = moments[-1]
    scanned(files_at(segments, last, end), 0, known)
    assert known[last].data == segments[last][:end]  # (the whole of the last segment's records)


def test_damage_inside_the_verified_bytes_is_found() -> None:
    """A byte changed, or cut away, in records an earlier scan verified (and a snapshot covers):
    the segment no longer begins with the verified bytes, so it is scanned whole and the damage
    named exactly as a scan from the start names it."""
    segments, moments = grown_log(40, 1 << 20)
    path, end = moments[-1]
    known: Known = {}
    scanned(files_at(segments, path, end), 0, known)
    verified = known[path]
    assert verified.data == segments[path][:end] and len(verified.ends) == 40
    rng = random.Random(9)
    for _ in range(60):
        fs = files_at(segments, path, end)
        data = bytearray(fs.read_bytes(path))
        at = rng.randrange(data.index(b"\n") + 1, end - 1)
        if rng.random() < 0.3:
            del data[at : at + rng.randint(1, 40)]  # bytes lost in the middle
        else:
            data[at] ^= 1 << rng.randrange(8)  # a flipped bit
        fs.files[path].data[:] = data
        mine, plain = scanned(fs, 35, dict(known)), scanned(fs, 35, None)
        assert mine == plain and plain[0]["problem"] is not None


def test_the_seam_checks_the_bytes_it_skips() -> None:
    """A Verified whose bytes are not the file's start (here: the same length, one record
    altered and re-chained would still differ in its bytes) is ignored, never trusted."""
    segments, moments = grown_log(30, 1 << 20)
    path, end = moments[-1]
    fs = files_at(segments, path, end)
    good: Known = {}
    scanned(fs, 0, good)
    v = good[path]
    other = bytearray(v.data)
    other[v.ends[3] - 5] ^= 1
    forged: Known = {path: Verified(bytes(other), v.ends, v.crcs)}
    data = bytearray(fs.read_bytes(path))
    data[v.ends[3] - 5] ^= 2  # the file is damaged there too, differently
    fs.files[path].data[:] = data
    assert scanned(fs, 25, forged) == scanned(fs, 25, None)
    assert scanned(fs, 25, None)[0]["problem"] is not None


def test_storage_open_with_known_recovers_the_same_state() -> None:
    """Storage.open (snapshot + replay) with `wal_known`: the same state, last seq, log position
    and report (bar the wall time) as without, on every prefix of a log with snapshots."""
    cfg = Config(data_dir="/d", snapshot_interval=0)
    fs = SimFS()
    st = Storage.from_config(fs, cfg)
    copies = []
    for i in range(40):
        st.append(R.enqueue(f"job-{i}", {"n": i}))
        st.wal.flush()
        if i % 9 == 8:
            st.checkpoint()
        copies.append({p: bytes(f.data) for p, f in fs.files.items()})
    known: Known = {}

    def recovered(files: dict[str, bytes], k: Known | None) -> Any:
        sim = SimFS()
        for p, data in sorted(files.items()):
            sim.makedirs(posixpath.dirname(p))
            f = sim.create(p)
            f.write(data)
            f.sync()
        try:
            s = Storage.from_config(sim, cfg, wal_known=k)
        except BeaverError as e:
            return str(e)
        jobs = [(j.id, j.status, j.raw) for j in s.state.jobs.values()]
        return jobs, s.state.last_seq, s.wal.lsn, s.wal.crc, s.report.as_dict()

    for files in copies:
        assert recovered(files, known) == recovered(files, None)
    assert known
