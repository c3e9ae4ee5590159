"""Storage: a data directory's WAL, snapshots and state, recovered together and checkpointed together.

Recovery = the newest valid snapshot + replay of every record with seq > its last_included_seq, through
the same `apply` the controller uses. A checkpoint follows the order that keeps every crash safe:
WAL synced through N, snapshot N made durable, new WAL segment, old snapshots pruned, and only then
the segments the oldest kept snapshot covers deleted.

storage/ knows bytes, records and files; here they become a JobQueue (the snapshot body's format
lives here), and the operator's read-only inspection and planned repair read a data directory the
way recovery does."""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.queue import RETENTION_UNKNOWN, SCHEMA_VERSION, JobQueue
from beaver_sim.core.records import Record, apply
from beaver_sim.core.types import Config
from beaver_sim.errors import BeaverError, CorruptLog
from beaver_sim.speed import paused_gc
from beaver_sim.storage import snapshot as S
from beaver_sim.storage import wal as W
from beaver_sim.storage.fs import FS
from beaver_sim.storage.log_format import segment_seq
from beaver_sim.storage.snapshot import Snapshot, SnapshotStore
from beaver_sim.storage.wal import Problem, Scan, WriteAheadLog

Apply = Callable[[JobQueue, Record], None]


# -- the snapshot body: a JobQueue's state -----------------------------------------------------


def state_body(q: JobQueue) -> bytes:
    """The snapshot body (format SCHEMA_VERSION) for the state of `q`."""
    return orjson.dumps(q.to_columns())


def encode_snapshot(q: JobQueue) -> bytes:
    """The whole snapshot file for the state of `q` at `q.last_seq`."""
    return S.encode(q.last_seq, SCHEMA_VERSION, state_body(q))


def read_state(snap: Snapshot, path: str) -> JobQueue:
    """The JobQueue a verified snapshot holds; CorruptLog if its body is not a valid state,
    BeaverError if it was written by a newer version."""
    build = _READERS.get(snap.version)
    if build is None:
        raise BeaverError(
            f"{path}: snapshot schema version {snap.version} is not supported "
            f"(this version reads {', '.join(map(str, sorted(_READERS)))})"
        )
    # a large state is millions of objects and no cycles (half the decode time with the GC on)
    try:
        with paused_gc():
            q = build(orjson.loads(snap.body))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise CorruptLog(f"{path}: snapshot body is not a valid state ({e})") from e
    if q.last_seq != snap.seq:
        raise CorruptLog(f"{path}: body seq {q.last_seq} differs from header")
    return q


_READERS = {1: JobQueue.from_state, 2: JobQueue.from_columns, 3: JobQueue.from_columns}  # 1, 2: older dirs


def decode_snapshot(data: bytes, path: str) -> JobQueue:
    """Check and load one snapshot file; CorruptLog if damaged, BeaverError if from a newer version."""
    return read_state(S.decode(data, path), path)


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
        retention: int = 0,
        **wal_options: Any,
    ) -> Storage:
        """Recover `data_dir` (created if missing). Raises CorruptLog / BeaverError with one line
        naming the file when it cannot be trusted. Replay keeps the retention window the snapshot and
        the CONFIG records say, whatever `retention` is: that (the config's value) is used only for
        a snapshot written before the window was recorded; the controller logs a change. The other
        arguments let the simulator swap in its deliberately broken variants."""
        t0 = timer() if timer else 0.0
        if fs.exists(data_dir) and not fs.is_dir(data_dir):  # else a bare FileExistsError from mkdir
            raise BeaverError(f"{data_dir}: data directory is a file")
        snapshots = snapshot_cls(fs, snap_dir or posixpath.join(data_dir, "snap"), keep)
        loaded = snapshots.load(read_state)
        q = loaded.state if loaded.state is not None else JobQueue()
        _legacy_window(q, retention)

        wal, scan, dropped = wal_cls.open(
            fs,
            wal_dir or posixpath.join(data_dir, "wal"),
            after_seq=loaded.seq,
            on_record=partial(apply, q) if apply_fn is apply else lambda rec, _lsn: apply_fn(q, rec),
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
            retention=config.completed_retention,
            fsync=config.fsync,
            segment_bytes=config.segment_bytes,
            preallocate=config.wal_preallocate,
            recovery=config.wal_recovery,
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


def _legacy_window(q: JobQueue, retention: int) -> None:
    """A snapshot written before the retention window was recorded in the state: take the config's,
    as the versions that wrote it did (set before replay, so replay drops what they dropped)."""
    if q.retention == RETENTION_UNKNOWN:
        q.set_retention(retention)


# -- the operator's view: read-only inspection and a planned repair -----------------------------


@dataclass(slots=True)
class Inspection:
    """A data directory read the way recovery reads it, without changing a file: the newest
    snapshot that verifies, then the log after it. `problem` is None when recovery would start
    as is; a torn tail (`problem.torn`) is the normal trace of a crash, which recovery truncates.
    Any other problem makes recovery refuse."""

    state: JobQueue
    snapshot: str | None
    snapshot_seq: int
    snapshots: list[str]  # every snapshot file, oldest first
    broken_snapshots: list[str]  # those that fail their checksum (recovery sets them aside)
    scan: Scan
    problem: Problem | None

    @property
    def ok(self) -> bool:
        """Recovery would start (truncating a torn tail if there is one)."""
        return self.problem is None or self.problem.torn


def inspect(
    fs: FS,
    wal_dir: str,
    snap_dir: str,
    on_record: W.OnRecord | None = None,
    *,
    every_record: bool = False,
    check_snapshots: bool = False,
    retention: int = 0,
    recovery: str = "tolerate-tail",
) -> Inspection:
    """Read a data directory as `Storage.open` would, changing nothing. Records after the newest
    good snapshot are replayed into `state`, or handed to `on_record` instead (every record in the
    log with `every_record`). Records the snapshot covers may be missing from the front of the log:
    their segments were deleted by a checkpoint, which is not damage. `check_snapshots` verifies
    every snapshot file, not just the newest good one. `retention`: the config's
    `completed_retention`, used as recovery uses it (`_legacy_window`). `recovery`: the
    `wal_recovery`; under "strict" a whole last record that fails its checksum is damage, not a
    torn tail."""
    names = [n for n in fs.listdir(snap_dir) if S.snapshot_seq(n) is not None] if fs.is_dir(snap_dir) else []
    paths = [posixpath.join(snap_dir, n) for n in names]
    q, newest, broken = JobQueue(), None, []
    for path in reversed(paths):
        if newest is not None and not check_snapshots:
            break
        try:
            loaded = decode_snapshot(fs.read_bytes(path), path)
        except CorruptLog:
            broken.append(path)
            continue
        if newest is None:
            q, newest = loaded, path
    broken.reverse()
    _legacy_window(q, retention)
    covered = q.last_seq

    def replay(rec: Record, _lsn: int) -> None:
        apply(q, rec)

    if not fs.is_dir(wal_dir):
        s = Scan(first_seq=covered + 1, next_seq=covered + 1)
    else:
        callback = replay if on_record is None else on_record
        after = 0 if every_record and on_record is not None else covered
        s = W.scan(fs, wal_dir, after, callback, covered_seq=covered)
    problem = s.problem
    if problem is not None and problem.torn and problem.whole and recovery == "strict":
        why = f"{problem.reason} in a whole last record (wal_recovery: strict)"
        s.problem = problem = replace(problem, torn=False, reason=why)
    if (problem is None or problem.torn) and covered:
        if not s.segments:
            problem = Problem(wal_dir, 0, 0, 0, f"no WAL segment, but snapshot {newest} covers seq {covered}")
        elif s.next_seq - 1 < covered:
            where = s.segments[-1].path
            reason = f"the log ends at seq {s.next_seq - 1} but snapshot {newest} covers seq {covered}"
            problem = Problem(where, s.end_offset, s.end_lsn, s.next_seq - 1, reason)
    return Inspection(q, newest, covered, paths, broken, s, problem)


@dataclass(slots=True)
class RepairPlan:
    """What `beaver wal repair` would do to a log recovery refuses, and what that costs: the records
    after the newest snapshot that it drops, by type, and the jobs they take with them. A damaged
    segment whose records the snapshot covers is only set aside (`covered`): nothing is lost.
    `refused` says why no repair is safe."""

    inspection: Inspection
    cut: Problem
    moved: list[str]  # later segments renamed `.broken`
    bytes_dropped: int
    records_dropped: dict[str, int]
    jobs_lost: int  # jobs whose ENQUEUE is cut: acknowledged jobs that would be gone
    completions_lost: int  # jobs whose ACK is cut but not their ENQUEUE: they would run again
    dead_lost: int  # jobs whose DEAD is cut but not their ENQUEUE: they would be retried
    unreadable: int  # lines that do not verify (the damage itself: what they held cannot be known)
    covered: bool = False
    refused: str | None = None

    def as_dict(self) -> dict[str, Any]:
        p = self.cut
        return {
            "cut": {"path": p.path, "offset": 0 if self.covered else p.offset, "lsn": p.lsn}
            | {"after_seq": p.last_good_seq, "reason": p.reason},
            "set_aside": p.path if self.covered else None,
            "moved_aside": self.moved,
            "bytes_dropped": self.bytes_dropped,
            "records_dropped": self.records_dropped,
            "jobs_lost": self.jobs_lost,
            "completions_lost": self.completions_lost,
            "dead_lost": self.dead_lost,
            "unreadable_lines": self.unreadable,
            "refused": self.refused,
        }


def plan_repair(
    fs: FS, wal_dir: str, snap_dir: str, retention: int = 0, recovery: str = "tolerate-tail"
) -> RepairPlan | None:
    """The repair that lets recovery start, and its cost; None when recovery starts as is (a torn
    tail included: recovery itself truncates it and keeps a copy). The log is replayed as recovery
    replays it (`retention` and `recovery`: the config's, for `inspect`), so a record that checksums
    but that `apply` refuses is where the cut goes too; the counts come only from records that verify."""
    found = inspect(fs, wal_dir, snap_dir, retention=retention, recovery=recovery)
    p = found.problem
    if p is None or p.torn:
        return None
    if p is not found.scan.problem:  # the log is sound but ends before the snapshot
        return RepairPlan(found, p, [], 0, {}, 0, 0, 0, 0, refused=f"{p.reason}; no cut brings them back")
    later = W.later_segments(fs, wal_dir, p.path)
    covered = found.snapshot_seq
    if later and _first_seq(later[0]) <= covered + 1:  # only records the snapshot holds are damaged
        return RepairPlan(found, p, [], 0, {}, 0, 0, 0, 0, covered=True)
    if p.last_good_seq < covered:
        why = f"the damage is in records {found.snapshot} covers (seq <= {covered}) and in later ones"
        return RepairPlan(found, p, [], 0, {}, 0, 0, 0, 0, refused=why)
    kinds: Counter[str] = Counter()
    enqueued, acked, dead = set(), set(), set()
    good, unreadable = W.records_from(fs, p, found.scan.crc, later)  # only what verifies is counted
    for rec in good:
        kind, job, seq = rec.get("type"), rec.get("job"), rec.get("seq")
        if not isinstance(kind, str) or not isinstance(seq, int):
            unreadable += 1
            continue
        if seq <= covered:
            continue  # the snapshot holds it
        kinds[kind] += 1
        {R.ENQUEUE: enqueued, R.ACK: acked, R.DEAD: dead}.get(kind, set()).add(job)
    dropped = len(W.log_bytes(fs, p.path)) - p.offset + sum(len(W.log_bytes(fs, path)) for path in later)
    return RepairPlan(
        found,
        p,
        later,
        dropped,
        dict(sorted(kinds.items())),
        len(enqueued),
        len(acked - enqueued),
        len(dead - enqueued),
        unreadable,
    )


def _first_seq(path: str) -> int:
    seq = segment_seq(posixpath.basename(path))
    assert seq is not None, path  # later_segments lists segments only
    return seq


def apply_repair(fs: FS, wal_dir: str, plan: RepairPlan) -> list[str]:
    """Carry out `plan` (never a refused one); returns the backups it kept."""
    if plan.refused:
        raise BeaverError(f"{wal_dir}: no safe repair: {plan.refused}")
    if plan.covered:
        path = plan.cut.path
        fs.replace(path, path + ".removed")
        fs.sync_dir(wal_dir)
        return [path + ".removed"]
    _, backups = W.cut(fs, wal_dir, plan.cut)
    covered = plan.inspection.snapshot_seq
    if covered and not W.list_segments(fs, wal_dir):  # no segment left: restart the log after the snapshot
        W.create_segment(fs, wal_dir, covered + 1, plan.cut.lsn, 0)
    return backups
