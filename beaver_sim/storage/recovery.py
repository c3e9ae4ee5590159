"""Storage: a data directory's WAL, snapshots and state, recovered together and checkpointed together.

Recovery = the newest valid snapshot + replay of every record with seq > its last_included_seq, through
the same `apply` the controller uses. A checkpoint follows the order that keeps every crash safe:
WAL synced through N, snapshot N made durable, new WAL segment, old snapshots pruned, and only then
the segments the oldest kept snapshot covers deleted."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beaver_sim.core.queue import JobQueue
from beaver_sim.core.records import Record, apply
from beaver_sim.core.types import BeaverError, Config
from beaver_sim.storage.fs import FS
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import WriteAheadLog

Apply = Callable[[JobQueue, Record], None]


@dataclass(slots=True)
class RecoveryReport:
    """What recovery used and did; `seconds` is wall time when a timer was given, else 0."""

    snapshot: str | None
    snapshot_seq: int
    snapshot_bytes: int
    records_replayed: int
    wal_bytes: int
    bytes_truncated: int
    broken_snapshots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class Storage:
    """The durable side of one data directory: `wal` and `snapshots` over `fs`, and `state`."""

    fs: FS
    data_dir: str
    wal: WriteAheadLog
    snapshots: SnapshotStore
    state: JobQueue
    report: RecoveryReport

    @classmethod
    def open(
        cls,
        fs: FS,
        data_dir: str,
        *,
        wal_dir: str | None = None,
        snap_dir: str | None = None,
        timer: Callable[[], float] | None = None,
        apply_fn: Apply = apply,
        wal_cls: type[WriteAheadLog] = WriteAheadLog,
        snapshot_cls: type[SnapshotStore] = SnapshotStore,
        keep: int = 2,
        **wal_options: Any,
    ) -> Storage:
        """Recover `data_dir` (created if missing). Raises CorruptLog / BeaverError with one line
        naming the file when it cannot be trusted; the other arguments let the simulator swap in
        its deliberately broken variants."""
        t0 = timer() if timer else 0.0
        if fs.exists(data_dir) and not fs.is_dir(data_dir):  # else a bare FileExistsError from mkdir
            raise BeaverError(f"{data_dir}: data directory is a file")
        snapshots = snapshot_cls(fs, snap_dir or posixpath.join(data_dir, "snap"), keep)
        loaded = snapshots.load()
        q = loaded.state

        def replay(rec: Record, _lsn: int) -> None:
            apply_fn(q, rec)

        wal, scan, dropped = wal_cls.open(
            fs,
            wal_dir or posixpath.join(data_dir, "wal"),
            after_seq=loaded.seq,
            on_record=replay,
            timer=timer,
            **wal_options,
        )
        report = RecoveryReport(
            loaded.path, loaded.seq, loaded.size, scan.replayed, scan.bytes_total, dropped, loaded.broken
        )
        if timer:
            report.seconds = timer() - t0
        return cls(fs, data_dir, wal, snapshots, q, report)

    @classmethod
    def from_config(cls, fs: FS, config: Config, **kwargs: Any) -> Storage:
        """Open the data directory that `config` names, with its WAL and snapshot settings."""
        return cls.open(
            fs,
            config.data_dir,
            wal_dir=config.wal_dir,
            snap_dir=config.snapshot_dir,
            keep=config.snapshots_kept,
            fsync=config.fsync,
            segment_bytes=config.segment_bytes,
            max_record=config.max_record_bytes,
            **kwargs,
        )

    def append(self, rec: Record) -> int:
        """Log `rec`, then apply it: the one way the state changes at run time."""
        seq = self.wal.append(rec)
        try:
            apply(self.state, rec)
        except BaseException:
            self.wal.discard_last()
            raise
        return seq

    def checkpoint(self) -> int:
        """Snapshot the state at its last seq and compact; returns the snapshot's seq."""
        q = self.state
        self.wal.sync()  # never let a snapshot be ahead of the durable log
        self.snapshots.save(q)
        self.wal.rotate()
        oldest = self.snapshots.prune()
        self.wal.delete_through(oldest)
        return q.last_seq

    def close(self) -> None:
        self.wal.close()
