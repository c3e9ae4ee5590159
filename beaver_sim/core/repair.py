"""The operator's view of a data directory: read-only inspection (`beaver wal verify`, offline
`status`) and a planned repair (`beaver wal repair`), reading the files the way recovery
(core/durable.py) reads them, and changing nothing until a plan is carried out."""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from beaver_sim.core import records as R
from beaver_sim.core.codec import decode_snapshot
from beaver_sim.core.durable import legacy_window
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.records import Record, apply
from beaver_sim.errors import BeaverError, CorruptLog
from beaver_sim.storage import wal as W
from beaver_sim.storage.fs import FS
from beaver_sim.storage.log_format import segment_seq
from beaver_sim.storage.snapshot import snapshot_seq
from beaver_sim.storage.wal import Problem, Scan


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
    `completed_retention`, used as recovery uses it (`legacy_window`). `recovery`: the
    `wal_recovery`; under "strict" a whole last record that fails its checksum is damage, not a
    torn tail."""
    names = [n for n in fs.listdir(snap_dir) if snapshot_seq(n) is not None] if fs.is_dir(snap_dir) else []
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
    legacy_window(q, retention)
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
    enqueued: set[Any] = set()  # job ids as the records hold them (verified, yet any JSON value)
    acked: set[Any] = set()
    dead: set[Any] = set()
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
