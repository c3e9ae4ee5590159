"""Storage: open = newest valid snapshot + replay through `apply`; append = log, then apply (rolled
back when apply refuses); checkpoint = snapshot, rotate, prune, compact; and the recovery report."""

from __future__ import annotations

import itertools
import posixpath
from pathlib import Path

import pytest

from beaver_sim.core import records as R
from beaver_sim.core.durable import RecoveryReport, Storage
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import BeaverError, CorruptLog, IllegalTransition, JobStatus
from beaver_sim.sim.fs import CRASH_MODELS, POWER_LOSS, SimFS
from beaver_sim.storage.fs import FS, RealFS
from beaver_sim.storage.log_format import segment_name
from beaver_sim.storage.snapshot import snapshot_name
from beaver_sim.storage.wal import RecordTooLarge, list_segments, scan
from tests.denied import DeniedRealFS

DATA = "/data"


def work(s: Storage, jobs: range, *, flush: bool = True) -> None:
    """Each job: enqueue, dispatch, then ack (even), fail + redispatch + ack (odd, not 3s), dead (3s)."""
    for i in jobs:
        job = f"job-{i}"
        s.append(R.enqueue(job, {"i": i, "to": f"user{i}@example.com"}))
        s.append(R.dispatch(job, 1, i % 4, 10.0 + i))
        if i % 3 == 0:
            s.append(R.dead(job, 1, "max retries"))
        elif i % 2:
            s.append(R.fail(job, 1, "boom"))
            s.append(R.dispatch(job, 2, 0, 20.0 + i))
            s.append(R.ack(job, 2))
        else:
            s.append(R.ack(job, 1))
    if flush:
        s.wal.flush()


def replay_all(fs: FS, data_dir: str = DATA) -> JobQueue:
    """The reference: every record in the WAL applied to a fresh queue (no snapshot)."""
    q = JobQueue()
    s = scan(fs, posixpath.join(data_dir, "wal"), on_record=lambda r, _lsn: R.apply(q, r))
    assert s.problem is None
    return q


@pytest.mark.parametrize("kind", ["RealFS", "SimFS"])
def test_a_fresh_data_directory(kind: str, tmp_path: Path) -> None:
    fs, d = (RealFS(), str(tmp_path / "data")) if kind == "RealFS" else (SimFS(), DATA)
    s = Storage.open(fs, d)
    assert s.state.stats() == JobQueue().stats()
    assert fs.listdir(d) == ["snap", "wal"]
    assert fs.listdir(posixpath.join(d, "wal")) == [segment_name(1)]
    r = s.report
    assert (r.snapshot, r.snapshot_seq, r.records_replayed, r.bytes_truncated) == (None, 0, 0, 0)
    assert r.broken_snapshots == [] and r.seconds == 0.0
    assert set(r.as_dict()) == {
        "snapshot",
        "snapshot_seq",
        "snapshot_bytes",
        "records_replayed",
        "wal_bytes",
        "bytes_truncated",
        "broken_snapshots",
        "seconds",
    }
    s.close()


@pytest.mark.parametrize("kind", ["RealFS", "SimFS"])
def test_append_then_reopen_rebuilds_the_same_state(kind: str, tmp_path: Path) -> None:
    fs, d = (RealFS(), str(tmp_path / "data")) if kind == "RealFS" else (SimFS(), DATA)
    s = Storage.open(fs, d)
    work(s, range(10))
    expected = s.state.to_state()
    assert s.state.stats()["completed"] + s.state.stats()["dead"] == 10
    s.close()
    s2 = Storage.open(fs, d)
    assert s2.state.to_state() == expected
    assert s2.report.records_replayed == expected["last_seq"]
    assert s2.report.wal_bytes == s2.wal.lsn
    s2.close()


def test_append_returns_the_seq_and_applies() -> None:
    s = Storage.open(SimFS(), DATA)
    assert s.append(R.enqueue("a", {"x": 1})) == 1
    assert s.state.get("a").status is JobStatus.PENDING  # type: ignore[union-attr]
    assert s.append(R.dispatch("a", 1, 0, 5.0)) == 2
    assert s.state.last_seq == 2


@pytest.mark.parametrize(
    "bad",
    [
        R.ack("nope", 1),  # no such job
        R.dispatch("a", 2, 0, 1.0),  # not the next attempt
        R.enqueue("a", {}),  # duplicate
        {"seq": 0, "type": "frobnicate", "job": "a"},  # unknown type
    ],
    ids=["unknown-job", "wrong-attempt", "duplicate", "unknown-type"],
)
def test_append_rolls_back_the_record_when_apply_refuses(bad: R.Record) -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    s.append(R.enqueue("a", {}))
    wal = s.wal
    before = (wal.next_seq, wal.lsn, wal.crc, wal.pending_bytes, s.state.to_state())
    with pytest.raises(BeaverError) as excinfo:
        s.append(bad)
    assert isinstance(excinfo.value, (IllegalTransition, R.UnknownRecord))
    assert (wal.next_seq, wal.lsn, wal.crc, wal.pending_bytes, s.state.to_state()) == before
    assert s.append(R.dispatch("a", 1, 0, 1.0)) == 2  # the seq was not used up
    s.close()
    s2 = Storage.open(fs, DATA)  # and the refused record never reached the log
    assert s2.report.records_replayed == 2
    assert s2.state.to_state() == s.state.to_state()


def test_a_record_too_large_changes_nothing() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA, max_record_bytes=200)
    s.append(R.enqueue("a", {}))
    with pytest.raises(RecordTooLarge, match="record for job 'big'"):
        s.append(R.enqueue("big", {"blob": "x" * 300}))
    assert "big" not in s.state and s.wal.next_seq == 2


def test_checkpoint_then_reopen_replays_only_what_follows() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    work(s, range(6))
    seq = s.checkpoint()
    assert seq == s.state.last_seq
    assert s.snapshots.seqs() == [seq]
    assert [int(n[4:24]) for n in list_segments(fs, "/data/wal")] == [1, seq + 1]
    work(s, range(6, 9))
    expected = s.state.to_state()
    s.close()
    s2 = Storage.open(fs, DATA)
    assert s2.report.snapshot == posixpath.join(DATA, "snap", snapshot_name(seq))
    assert s2.report.snapshot_seq == seq and s2.report.snapshot_bytes > 0
    assert s2.report.records_replayed == expected["last_seq"] - seq
    assert s2.state.to_state() == expected
    assert replay_all(fs).to_state() == expected  # snapshot + tail == the whole log


def test_checkpoint_syncs_the_wal_first_so_a_snapshot_is_never_ahead() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA, fsync="never")
    work(s, range(4), flush=False)
    seq = s.checkpoint()
    assert s.wal.durable_lsn == s.wal.lsn
    s2 = Storage.open(fs.after_crash(POWER_LOSS), DATA)
    assert s2.state.last_seq == seq and s2.state.to_state() == s.state.to_state()


def test_repeated_checkpoints_compact_and_recover() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    for round_ in range(6):
        work(s, range(4 * round_, 4 * round_ + 4))
        s.checkpoint()
        for model in CRASH_MODELS:
            s2 = Storage.open(fs.after_crash(model), DATA)
            assert s2.state.to_state() == s.state.to_state()
    assert len(s.snapshots.seqs()) == 2
    assert len(list_segments(fs, "/data/wal")) <= 3


def test_a_torn_tail_is_reported() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    work(s, range(3))
    s.close()
    seg = posixpath.join(DATA, "wal", segment_name(1))
    f = fs.open_append(seg)
    f.write(b'0000abcd 99 {"seq":')
    s2 = Storage.open(fs, DATA)
    assert s2.report.bytes_truncated == len(b'0000abcd 99 {"seq":')
    assert s2.state.to_state() == s.state.to_state()
    assert fs.exists(seg + ".broken")


def test_corruption_refuses_to_open_with_one_line() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    work(s, range(4))
    s.close()
    seg = posixpath.join(DATA, "wal", segment_name(1))
    data = bytearray(fs.read_bytes(seg))
    data[len(data) // 3] ^= 0x01
    fs.create(seg).write(bytes(data))
    with pytest.raises(CorruptLog) as excinfo:
        Storage.open(fs, DATA)
    assert seg in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_deleted_log_under_a_snapshot_is_refused() -> None:
    fs = SimFS()
    s = Storage.open(fs, DATA)
    work(s, range(2))
    seq = s.checkpoint()
    s.close()
    for name in fs.listdir("/data/wal"):
        fs.remove(posixpath.join("/data/wal", name))
    with pytest.raises(CorruptLog, match=rf"no WAL segment, but a snapshot covers seq {seq}"):
        Storage.open(fs, DATA)


def test_a_replay_that_apply_refuses_is_corruption() -> None:
    """A record that is framed and chained correctly but illegal for the state cannot be replayed."""
    fs = SimFS()
    s = Storage.open(fs, DATA)
    work(s, range(2))
    s.wal.append(R.ack("ghost", 1))  # bypass apply, as a buggy writer would
    s.close()
    with pytest.raises(CorruptLog, match=r"job 'ghost': cannot complete .* after seq \d+"):
        Storage.open(fs, DATA)


def test_the_timer_measures_recovery() -> None:
    ticks = itertools.count(0.0, 0.25)
    fs = SimFS()
    Storage.open(fs, DATA).close()
    s = Storage.open(fs, DATA, timer=lambda: next(ticks))
    assert s.report.seconds > 0


def test_the_recovery_report_is_plain_data() -> None:
    r = RecoveryReport("p", 3, 10, 4, 100, 0, ["b"], 0.5)
    assert r.as_dict() == {
        "snapshot": "p",
        "snapshot_seq": 3,
        "snapshot_bytes": 10,
        "records_replayed": 4,
        "wal_bytes": 100,
        "bytes_truncated": 0,
        "broken_snapshots": ["b"],
        "seconds": 0.5,
    }


def test_an_unreadable_wal_segment_names_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = Storage.open(RealFS(), str(data))
    work(s, range(2))
    s.close()
    seg = data / "wal" / segment_name(1)
    with pytest.raises(PermissionError) as excinfo:
        Storage.open(DeniedRealFS(str(seg)), str(data))
    assert str(seg) in str(excinfo.value)
