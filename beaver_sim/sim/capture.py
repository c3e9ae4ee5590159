"""Reading a run's log back, and what a crash at one moment of a run leaves besides the files.

`wal_records` reads the records from a SimFS's segment bytes (deleted segments too, which an
`archived` file system keeps); `LogReader` reads one growing log as its run writes it, each byte
once (a sweep's shared run asks it, at every crash point, what came before). `with_ends` notes
where each record ends so a crash can land there. `Capture` is what a crash at one moment leaves
besides the files: `Run.capture` takes it, `Run.resume` goes on from it. Below the run loop
(sim/experiment.py), which only arms these."""

from __future__ import annotations

import bisect
import posixpath
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.sim.checker import ClientView, Trace
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.log_format import records, segment_seq
from beaver_sim.storage.wal import WriteAheadLog

if TYPE_CHECKING:  # the classes the mixins extend, for the type checker; at run time they are
    _WAL = WriteAheadLog  # mixed in front of any subclass (a mutant's, a lab's: with_ends, archived)
    _FS = SimFS
else:
    _WAL = _FS = object


class RecordEnds(_WAL):
    """Mixin for a WAL class: note the end LSN of every record as it is appended, so a crash
    planned at the end of record K can cut the very write that carries it (`Run.life` hands it the
    hook's `ends`)."""

    ends: list[int]

    def append(self, rec: R.Record) -> int:
        seq = super().append(rec)
        self.ends.append(self.lsn)
        return seq

    def discard_last(self) -> None:
        super().discard_last()
        self.ends.pop()


class _Archive(_FS):
    """Mixin for a SimFS class: keep the files the run deletes (compacted WAL segments, pruned
    snapshots), so the whole log a life wrote can still be read once the run is over."""

    def __init__(self) -> None:
        super().__init__()
        self.archive: list[tuple[str, Any]] = []  # (path, inode) in the order they were removed

    def remove(self, path: str) -> None:
        p = SimFS._norm(path)
        inode = self.files.get(p)
        super().remove(path)
        self.archive.append((p, inode))


@cache
def with_ends(cls: type[WriteAheadLog]) -> type[WriteAheadLog]:
    """`cls`, noting the end LSN of every record it appends in `ends`."""
    return type(f"{cls.__name__}WithEnds", (RecordEnds, cls), {})


@cache
def archived(cls: type[SimFS]) -> type[SimFS]:
    """`cls`, keeping the files the run deletes in `archive`."""
    return type(f"Archived{cls.__name__}", (_Archive, cls), {})


def _segments(fs: SimFS, wal_dir: str) -> list[tuple[str, Any]]:
    """(path, inode) of every WAL segment of `fs`, deleted ones too (if it archives them)."""
    wal_dir = SimFS._norm(wal_dir)
    files = [*fs.files.items(), *getattr(fs, "archive", [])]
    return [
        (path, inode)
        for path, inode in files
        if posixpath.dirname(path) == wal_dir and segment_seq(posixpath.basename(path)) is not None
    ]


def wal_records(fs: SimFS, wal_dir: str, since: int = 0) -> Trace:
    """Every complete record in the WAL segments of `fs` (deleted ones too, if it archives them)
    that starts at LSN `since` or later, as (record, start LSN, end LSN), in LSN order. Read from
    the bytes themselves (`log_format.records`, no CRC checked): what the log wrote, not what the
    process meant to write."""
    out: Trace = []
    for _path, inode in _segments(fs, wal_dir):
        out += [t for t in records(bytes(inode.data)) if t[1] >= since]
    out.sort(key=lambda t: t[1])
    return out


class LogReader:
    """The records of one run's growing log, read from its files as the run writes them (each
    byte once): a sweep's shared run asks, at each of its crash points, what came before it."""

    def __init__(self, fs: SimFS, wal_dir: str) -> None:
        self.fs, self.wal_dir = fs, wal_dir
        self.trace: Trace = []  # the records read so far, in LSN order
        self.ends: list[int] = []  # their end LSNs
        self.acks: list[tuple[int, str]] = []  # (end LSN, job) of the ACK records among them
        self._read: dict[str, int] = {}  # segment path -> file offset read up to
        self._at: tuple[int, int] = (-1, -1)  # the file system's (bytes written, renames) then

    def _read_new(self) -> None:
        """Read the whole lines written since the last call, from where the last one ended: each
        byte once, whatever the segment's size. Nothing written or renamed since: nothing to read
        (a sweep asks three times a crash point, mostly between the same two writes)."""
        at = (self.fs.bytes_written, self.fs.renames)
        if at == self._at:
            return
        self._at = at
        for path, inode in sorted(_segments(self.fs, self.wal_dir), key=lambda pi: pi[0]):
            data = inode.data
            head = data.find(b"\n") + 1  # (0: no whole header yet)
            offset = self._read.get(path, head)
            if not head or offset >= len(data):
                continue
            for rec, start, end in records(data, offset):
                self.trace.append((rec, start, end))
                self.ends.append(end)
                if rec["type"] == R.ACK:
                    self.acks.append((end, rec["job"]))
                offset += end - start
            self._read[path] = offset

    def until(self, lsn: int | None) -> Trace:
        """The records that end at or before LSN `lsn` (None: all so far)."""
        self._read_new()
        return list(self.trace) if lsn is None else self.trace[: bisect.bisect_right(self.ends, lsn)]

    def record_before(self, lsn: int | None) -> list[Any] | None:
        """`record_before(self.until(lsn), lsn)`, by bisection (no copy of the trace per point)."""
        if lsn is None:
            return None
        self._read_new()
        i = bisect.bisect_right(self.ends, lsn)
        return [self.trace[i - 1][0][k] for k in ("seq", "type", "job")] if i else None

    def claim(self, durable: int) -> tuple[list[str], int]:
        """What the log claimed durable once synced to LSN `durable`: the jobs whose ACK record
        was synced, and the last synced seq (`Checker.claim`, without a walk of the trace)."""
        self._read_new()
        synced = bisect.bisect_right(self.ends, durable)
        acks = self.acks[: bisect.bisect_right(self.acks, (durable, "\uffff"))]
        return [job for _end, job in acks], self.trace[synced - 1][0]["seq"] if synced else 0


@dataclass
class Capture:
    """What a crash at one moment of a run leaves besides the files, as `Run.capture` copies it:
    when and where it hit, how far the log had synced, the clients' and the operator's view (the
    checker's), the workers' attempts so far (their draws depend on nothing that came before) and
    the events counted. `Run.resume` goes on from it: sweeps share the run up to their crash points
    that way, one capture per moment for every point that crashes then."""

    plan: CrashPlan
    time: float
    lsn: int | None
    durable: int | None  # how far the WAL had synced (None: it was not open yet)
    batches: list[Any]  # the workload's (time, batch) list: the run's own, shared and never changed
    next_batch: int
    attempts: list[Any]  # `sim.workers.Attempt`s
    sent: list[tuple[float, list[str]]]
    acks: list[tuple[float, list[str]]]
    events: int
    checker: ClientView
    requeue_done: bool  # the operator's requeue was acknowledged (or there is none)


def recovered_key(storage: Storage) -> tuple[Any, ...]:
    """What a recovery rebuilt, in a few numbers: the snapshot it used, the last seq applied, where
    the log ends and its checksum chain there. Equal keys, equal states and equal logs."""
    return (storage.report.snapshot_seq, storage.state.last_seq, storage.wal.lsn, storage.wal.crc)


def record_before(trace: Trace, lsn: int | None) -> list[Any] | None:
    """[seq, type, job] of the last whole record before LSN `lsn`: sweeps compare it with the
    uncrashed run to check that both agreed up to the crash (invariant 7)."""
    if lsn is None:
        return None
    for rec, _start, end in reversed(trace):  # the trace usually ends at `lsn`: one step
        if end <= lsn:
            return [rec["seq"], rec["type"], rec["job"]]
    return None
