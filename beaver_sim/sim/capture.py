"""Reading a run's log back and going on from a crash point. `wal_records` reads the records from
a SimFS's segment bytes (deleted segments too, which `_Archive` keeps), `_RecordEnds` notes where
each record ends so a crash can land there, `Capture` is what a crash at one moment leaves besides
the files. Sweeps share one run up to each crash point with these (through `_Run.capture`,
`trace_until` and `resume`, which stay in experiment.py as they read the run's own state); apart from
the run loop, which only arms them."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.durable import Storage
from beaver_sim.sim.checker import Trace
from beaver_sim.sim.faults import CrashPlan
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.wal import SEGMENT_NAME, WriteAheadLog


class _RecordEnds:
    """Mixin for a WAL class: note the end LSN of every record as it is appended, so a crash
    planned at the end of record K can cut the very write that carries it."""

    ends: list[int]

    def append(self, rec: R.Record) -> int:
        seq = super().append(rec)  # type: ignore[misc]
        self.ends.append(self.lsn)  # type: ignore[attr-defined]
        return seq

    def discard_last(self) -> None:
        super().discard_last()  # type: ignore[misc]
        self.ends.pop()


class _Archive:
    """Mixin for a SimFS class: keep the files the run deletes (compacted WAL segments, pruned
    snapshots), so the whole log a life wrote can still be read once the run is over."""

    def __init__(self) -> None:
        super().__init__()
        self.archive: list[tuple[str, Any]] = []  # (path, inode) in the order they were removed

    def remove(self, path: str) -> None:
        p = SimFS._norm(path)
        inode = self.files.get(p)  # type: ignore[attr-defined]
        super().remove(path)  # type: ignore[misc]
        self.archive.append((p, inode))


@cache
def _with_ends(cls: type[WriteAheadLog]) -> type[WriteAheadLog]:
    return type(f"{cls.__name__}WithEnds", (_RecordEnds, cls), {})


@cache
def _archived(cls: type[SimFS]) -> type[SimFS]:
    return type(f"Archived{cls.__name__}", (_Archive, cls), {})


def wal_records(fs: SimFS, wal_dir: str, since: int = 0) -> Trace:
    """Every complete record in the WAL segments of `fs` (deleted ones too, if it archives them)
    that starts at LSN `since` or later, as (record, start LSN, end LSN), in LSN order. Read from
    the bytes themselves: what the log wrote, not what the process meant to write."""
    wal_dir = SimFS._norm(wal_dir)
    files = [*fs.files.items(), *getattr(fs, "archive", [])]
    out: Trace = []
    for path, inode in files:
        if posixpath.dirname(path) != wal_dir or not SEGMENT_NAME.fullmatch(posixpath.basename(path)):
            continue
        data = bytes(inode.data)
        nl = data.find(b"\n")
        try:
            base = orjson.loads(data[:nl].split(b" ", 2)[2])["base_lsn"]
        except (ValueError, IndexError, KeyError, TypeError):
            continue  # no readable header: nothing in this file can be placed in the log
        offset = nl + 1
        for line in data[offset:].split(b"\n")[:-1]:  # the last piece is cut short, or empty
            start, offset = base + offset, offset + len(line) + 1
            if start < since:
                continue
            try:
                rec = orjson.loads(line.split(b" ", 2)[2])
            except (ValueError, IndexError):
                break
            out.append((rec, start, base + offset))
    out.sort(key=lambda t: t[1])
    return out


@dataclass
class Capture:
    """What a crash at one moment of a run leaves besides the files: the clients' view, the
    attempts so far, the checker's claims (the workers' draws depend on nothing that came before).
    `_Run.resume` goes on from it (sweeps share the run up to their crash points that way)."""

    plan: CrashPlan
    time: float
    lsn: int | None
    durable: int | None
    next_batch: int
    attempts: int
    submitted: dict[str, dict[str, Any]]
    acked: dict[str, None]
    sent: list[tuple[float, list[str]]]
    acks: list[tuple[float, list[str]]]
    events: int
    open: dict[tuple[str, ...], None]
    operator: tuple[dict[str, Any], ...] = ()  # the checker's view of delays, cancels, requeues
    requeue_done: bool = True  # the operator's requeue was acknowledged (or there is none)


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
