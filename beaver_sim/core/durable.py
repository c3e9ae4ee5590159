"""Storage: a data directory's WAL and snapshots, recovered together and checkpointed together.

Recovery = the newest valid snapshot + replay of every record with seq > its last_included_seq, through
the same `apply` the controller uses. A checkpoint follows the order that keeps every crash safe:
WAL synced through N, snapshot N made durable, new WAL segment, old snapshots pruned, and only then
the segments the oldest kept snapshot covers deleted. storage/ knows bytes, records and files; here
they become a JobQueue (its snapshot body: core/codec.py)."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from beaver_sim.core.codec import SCHEMA_VERSION, read_state, state_body
from beaver_sim.core.queue import RETENTION_UNKNOWN, JobQueue
from beaver_sim.core.records import Record, apply
from beaver_sim.core.types import Config
from beaver_sim.errors import BeaverError
from beaver_sim.storage.fs import FS
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import MAX_RECORD, SEGMENT_BYTES, Known, WriteAheadLog

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
        return {k: getattr(self, k) for k in self.__slots__}


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
        snapshot_dir: str | None = None,
        snapshots_kept: int = 2,
        completed_retention: int = 0,
        fsync: str = "always",
        segment_bytes: int = SEGMENT_BYTES,
        wal_preallocate: str = "none",
        wal_recovery: str = "tolerate-tail",
        max_record_bytes: int = MAX_RECORD,
        timer: Callable[[], float] | None = None,
        on_sync: Callable[[float], None] | None = None,
        apply_fn: Apply = apply,
        wal_cls: type[WriteAheadLog] = WriteAheadLog,
        snapshot_cls: type[SnapshotStore] = SnapshotStore,
        wal_known: Known | None = None,
    ) -> Storage:
        """Recover `data_dir` (created if missing). Raises CorruptLog / BeaverError with one line
        naming the file when it cannot be trusted. The settings are the Config's, by its names
        (`from_config`); each WAL one goes to `WriteAheadLog.open`. Replay keeps the retention window
        the snapshot and the CONFIG records say, whatever `completed_retention` is: that is used only
        for a snapshot written before the window was recorded; the controller logs a change.
        `timer` / `on_sync` time recovery and each fsync (real mode's metrics); `apply_fn`, `wal_cls`
        and `snapshot_cls` let the simulator swap in its deliberately broken variants; `wal_known`
        lets it hand each recovery what earlier scans of the same growing log verified (the WAL's
        `scan(known=...)`: a crash sweep recovers thousands of prefixes of one log)."""
        t0 = timer() if timer else 0.0
        if fs.exists(data_dir) and not fs.is_dir(data_dir):  # else a bare FileExistsError from mkdir
            raise BeaverError(f"{data_dir}: data directory is a file")
        snapshots = snapshot_cls(fs, snapshot_dir or posixpath.join(data_dir, "snap"), snapshots_kept)
        loaded = snapshots.load(read_state)
        q = loaded.state if loaded.state is not None else JobQueue()
        legacy_window(q, completed_retention)

        wal, scan, dropped = wal_cls.open(
            fs,
            wal_dir or posixpath.join(data_dir, "wal"),
            after_seq=loaded.seq,
            on_record=partial(apply, q) if apply_fn is apply else lambda rec, _lsn: apply_fn(q, rec),
            recovery=wal_recovery,
            known=wal_known,
            fsync=fsync,
            segment_bytes=segment_bytes,
            max_record=max_record_bytes,
            preallocate=wal_preallocate,
            timer=timer,
            on_sync=on_sync,
        )
        report = RecoveryReport(
            loaded.path, loaded.seq, loaded.size, scan.replayed, scan.bytes_total, dropped, loaded.broken
        )
        if timer:
            report.seconds = timer() - t0
        return cls(fs, data_dir, wal, snapshots, q, report)

    @classmethod
    def from_config(cls, fs: FS, config: Config, **hooks: Any) -> Storage:
        """Open the data directory that `config` names, with its WAL and snapshot settings; `hooks`
        are `open`'s other arguments (timer, on_sync, apply_fn, wal_cls, snapshot_cls, wal_known)."""
        return cls.open(
            fs,
            config.data_dir,
            wal_dir=config.wal_dir,
            snapshot_dir=config.snapshot_dir,
            snapshots_kept=config.snapshots_kept,
            completed_retention=config.completed_retention,
            fsync=config.fsync,
            segment_bytes=config.segment_bytes,
            wal_preallocate=config.wal_preallocate,
            wal_recovery=config.wal_recovery,
            max_record_bytes=config.max_record_bytes,
            **hooks,
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

    def save_snapshot(self) -> str:
        """Write the state as snapshot `state.last_seq`, compacting nothing; returns its path."""
        q = self.state
        return self.snapshots.save(q.last_seq, SCHEMA_VERSION, state_body(q))

    def checkpoint(self) -> int:
        """Snapshot the state at its last seq and compact, all inline; returns the snapshot's seq."""
        seq = self.begin_checkpoint()
        self.save_snapshot()
        self.end_checkpoint()
        return seq

    def begin_checkpoint(self) -> int:
        """The first half of a checkpoint, on the controller's thread: the WAL synced through the
        state's last seq (a snapshot is never ahead of the durable log); returns that seq. Then
        `save_snapshot` writes the state as it is now (inline, or in a forked child that holds a
        copy of it: runtime/snapshots.py), and once that is durable, `end_checkpoint`."""
        self.wal.sync()
        return self.state.last_seq

    def end_checkpoint(self) -> None:
        """The last half, once the snapshot is durable: a new WAL segment, then `compact`."""
        self.wal.rotate()
        self.compact()

    def compact(self) -> None:
        """Old snapshots pruned, and only then the segments the oldest kept snapshot covers deleted
        (never the live one). The runtime's child runs this too, right after its snapshot, so that
        the loop finds the files already gone and only forgets them."""
        oldest = self.snapshots.prune()
        self.wal.delete_through(oldest)

    def close(self) -> None:
        self.wal.close()


def legacy_window(q: JobQueue, retention: int) -> None:
    """A snapshot written before the retention window was recorded in the state: take the config's,
    as the versions that wrote it did (set before replay, so replay drops what they dropped)."""
    if q.retention == RETENTION_UNKNOWN:
        q.set_retention(retention)
