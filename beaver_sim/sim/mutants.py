"""Durability mutants: deliberately broken variants of the design, one per lesson, selectable by name.

Each one is a small subclass or function handed to the hooks the real code already has (a SimFS
subclass, `Storage.open`'s wal_cls / snapshot_cls / apply_fn, a Controller subclass); no core module
knows they exist. A crash sweep over a mutant must find the violation the correct design prevents:
that answers the seed's learning checkpoints (1 concurrency control, 2 WAL checksums and fsync,
3 snapshot atomicity, 4 timeouts and infinite retries, 5 idempotent replay, 6 recovery guarantees)
and proves the checker sees what it claims to. `Mutant.catch` is a sweep setting that shows each one.

The controller runs every event on one thread (docs/architecture.md), so checkpoint 1's mutant
plays the interleaving that a lock forgotten around the WAL append would allow."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from beaver_sim.core import records as R
from beaver_sim.core.controller import Controller
from beaver_sim.core.queue import JobQueue
from beaver_sim.core.types import Abandoned, BeaverError, IllegalTransition, JobStatus
from beaver_sim.sim.fs import SimFile, SimFS
from beaver_sim.storage import snapshot as snap
from beaver_sim.storage.log_format import crc32c, frame, header_line, parse_header, segment_seq, unframe
from beaver_sim.storage.snapshot import SnapshotStore
from beaver_sim.storage.wal import WriteAheadLog, list_segments

Apply = Callable[[JobQueue, R.Record], None]


# -- checkpoint 1: concurrency control ----------------------------------------------------------


class AppendOutsideLockController(Controller):
    """Checkpoint 1 (which operations must take the lock?): each state change is made at once, as
    under the seed's mutex, but its WAL append is left outside the critical section, as the seed's
    dispatchLoop appended DISPATCH. Two callers of one turn then race to the log, and the second
    wins: of each pair of records logged between two flushes, the later one is appended first.
    The live state stays valid; replay applies the log in an order the process never lived, so it
    rebuilds another FIFO order (silently) and refuses once a dispatch no longer finds its job
    at the head of the queue."""

    _held: R.Record | None = None  # applied; its caller has not reached the log yet

    def append(self, rec: R.Record) -> None:
        R.APPLY[rec["type"]](self.state, rec)  # under the lock: seq is only known once appended
        held, self._held = self._held, None
        if held is None:
            self._held = rec
        else:
            self._to_log(rec)
            self._to_log(held)

    def _to_log(self, rec: R.Record) -> None:
        self.state.last_seq = max(self.state.last_seq, self.storage.wal.append(rec))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:  # a caller alone in its turn reaches the log before the flush
            self._to_log(held)
        super().flush()


# -- checkpoint 2: fsync and checksums -----------------------------------------------------------


class _NoSyncFile(SimFile):
    __slots__ = ()

    def sync(self) -> None:
        self.fs._call("sync", self.path)  # still a crash point, but nothing becomes durable
        self.fs.syncs += 1


class NoFsyncFS(SimFS):
    """Checkpoint 2 (what are the risks of not doing fsync?): the log's appends are never made
    durable, as in the seed's WAL, which never called Sync (a disk that lies about its cache does
    the same): fsync of a file opened for appending returns at once. New files (segment headers,
    snapshots) are still synced, so recovery starts, on a log missing what was appended since its
    segment was created. A process crash loses nothing; a power loss loses acknowledged enqueues."""

    def open_append(self, path: str) -> SimFile:
        f = super().open_append(path)
        return _NoSyncFile(self, f.path, f.inode)

    def open_at(self, path: str, offset: int) -> SimFile:  # the log's file when segments are preallocated
        f = super().open_at(path, offset)
        return _NoSyncFile(self, f.path, f.inode)


class NoDirFsyncFS(SimFS):
    """Checkpoint 3 (temp file + rename): renames and new files are made durable only by an fsync
    of their directory, which this variant leaves out. Files are synced, but after a power loss the
    new WAL segment or snapshot may not be there at all: a rename is atomic, not durable."""

    def _persist_dir(self, p: str) -> None:
        pass


class BitRotFS(SimFS):
    """A disk that rots: after every crash, one bit of a synced record has flipped, the last digit
    of the payload `value` of the first ENQUEUE in the newest WAL segment that has a record after
    it. The line keeps its length and still parses as JSON; only a checksum can tell."""

    def after_crash(self, model: str, torn_bytes: int = 0) -> SimFS:
        out = super().after_crash(model, torn_bytes)
        names = sorted(p for p in out.files if segment_seq(posixpath.basename(p)) is not None)
        for path in reversed(names):
            data = out.files[path].data
            at = data.find(b'"type":"enqueue"')
            value = data.find(b'"value":', at)
            end = data.find(b"}", value)
            if at >= 0 and value >= 0 and data.find(b"\n", end) + 1 < len(data):
                data[end - 1] ^= 0x01  # a digit stays a digit: 37 -> 36
                return out
        return out


class NoChecksumWAL(WriteAheadLog):
    """Checkpoint 2 (why are checksums needed?): a log format without checksums. Records are
    written with `00000000` for a CRC, and the reader trusts every line whose framing holds (its
    length field matches its body), modelled by signing each such line before the real reader
    reads it. A torn write still fails its length, so crashes alone lose nothing; but on a disk
    that flips a bit (`BitRotFS`) the damaged record parses, and recovery replays an altered job
    where the CRC would have refused the log."""

    def frame(self, body: bytes, crc: int) -> bytes:
        return b"00000000" + super().frame(body, crc)[8:]

    @classmethod
    def open(
        cls, fs: Any, directory: str, *, after_seq: int = 0, on_record: Any = None, **options: Any
    ) -> tuple[WriteAheadLog, Any, int]:
        if fs.is_dir(directory):
            crc = None
            for name in list_segments(fs, directory):
                crc = _sign(fs, posixpath.join(directory, name), crc)
        return super().open(fs, directory, after_seq=after_seq, on_record=on_record, **options)


def _sign(fs: Any, path: str, crc: int | None) -> int | None:
    """Rewrite the CRCs of a segment's framed lines (and its header's chain) as if they had been
    right; stop at the first line that does not frame. Returns the chain at its end."""
    lines = fs.read_bytes(path).split(b"\n")
    h = parse_header(lines[0])
    if h is None:
        return crc
    crc = h["prev_crc"] if crc is None else crc
    out = [header_line(h["first_seq"], h["base_lsn"], crc)[:-1]]
    for i, line in enumerate(lines[1:], 1):
        body = unframe(line)  # a CRC that fails is all this reader forgives
        if i == len(lines) - 1 or body is None:
            out += lines[i:]
            break
        crc = crc32c(body, crc)
        out.append(frame(body, crc)[:-1])
    f = fs.create(path)
    f.write(b"\n".join(out))
    f.sync()
    f.close()
    return crc


# -- checkpoint 3: snapshot atomicity ------------------------------------------------------------


class InPlaceSnapshots(SnapshotStore):
    """Checkpoint 3 (why temp file + rename?): the seed's one snapshot file is overwritten in place.
    Truncating it is metadata the file system journals at once; the new body is not durable until
    its fsync. A power loss in between leaves an empty snapshot, and the WAL it covered was already
    cut ("Rotate clears the WAL"): recovery refuses, or starts from nothing."""

    NAME = "snapshot.json"

    def path(self, seq: int) -> str:
        return f"{self.directory}/{self.NAME}"

    def seqs(self) -> list[int]:
        if not self.fs.exists(self.path(0)):
            return []
        data = self.fs.read_bytes(self.path(0))
        try:
            return [int(orjson.loads(data[: data.find(b"\n")])["last_included_seq"])]
        except (ValueError, KeyError, TypeError):
            return [0]  # unreadable: load() marks it broken

    def save(self, seq: int, version: int, body: bytes) -> str:
        fs, path = self.fs, self.path(0)
        assert isinstance(fs, SimFS)  # a mutant runs in the simulator: its persistence points
        existed = fs.exists(path)
        if existed:
            fs.truncate(path, 0)
        f = fs.open_append(path)
        f.write(snap.encode(seq, version, body))
        fs.mark("snapshot-tmp-written")
        f.sync()
        f.close()
        fs.mark("snapshot-tmp-synced")
        if not existed:
            fs.sync_dir(self.directory)
            fs.mark("snapshot-dir-synced")
        return path

    def prune(self) -> int:
        seqs = self.seqs()
        return seqs[-1] if seqs else 0  # one snapshot, no fallback: the WAL it covers may go


class RenameBeforeFsyncSnapshots(InPlaceSnapshots):
    """Checkpoint 3 (why fsync before the rename?): the seed's one snapshot file, now replaced by
    a temp file, renamed over it before the temp file is fsynced (then the file and the directory
    are synced). Under the strict power-loss model a rename is durable only at the directory fsync,
    after the data, so this passes; on ext4 (delayed allocation), xfs or btrfs a journal commit in
    between persists the rename first (crash model `metadata-first`): the one snapshot is empty,
    the WAL it covered already cut, and recovery refuses."""

    def save(self, seq: int, version: int, body: bytes) -> str:
        fs = self.fs
        assert isinstance(fs, SimFS)  # a mutant runs in the simulator: its persistence points
        path = self.path(seq)
        f = fs.create(path + ".tmp")
        f.write(snap.encode(seq, version, body))
        fs.mark("snapshot-tmp-written")
        fs.replace(path + ".tmp", path)
        fs.mark("snapshot-renamed")
        f.sync()
        f.close()
        fs.mark("snapshot-tmp-synced")
        fs.sync_dir(self.directory)
        fs.mark("snapshot-dir-synced")
        return path


# -- checkpoint 4: timeouts ----------------------------------------------------------------------


class NoTimeoutLimitController(Controller):
    """Checkpoint 4 (how do you avoid infinite retries?): a timed-out attempt is requeued whatever
    its number, as the seed's timeout loop did (`job.Attempt++; Requeue`): only failures count
    toward max_retry, so a job that keeps timing out runs forever."""

    def retry_or_bury(self, job_id: str, attempt: int, retry: R.Record, why: str) -> None:
        if retry["type"] == R.TIMEOUT:
            self.log(retry)
            self.counters.retried += 1
        else:
            super().retry_or_bury(job_id, attempt, retry, why)


class NoIntervalSyncController(Controller):
    """Checkpoint 2 (what are the risks of not doing fsync?), under `fsync: interval`: the timer
    that syncs the log every `fsync_interval` is left out, so only rotations and snapshots sync it.
    A power loss then loses jobs acknowledged long before it, outside the documented window of
    `fsync_interval` seconds that `interval` may lose."""

    def interval_sync(self) -> None:
        pass


class FreeSlotAtTimeoutController(Controller):
    """Not a durability mutant (no crash sweep sees it; `sim.poison` does): the slot rule before
    the fix. A timed-out attempt frees its worker slot at once and nothing stops it, so a handler
    that hangs keeps its thread forever. Once hung attempts hold every thread of the pool, each new
    attempt waits for a thread, the wait counts toward its timeout, and healthy jobs die unrun."""

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        return Abandoned(held=False)


# -- checkpoint 5: idempotent replay -------------------------------------------------------------


class ReplayWholeLogWAL(WriteAheadLog):
    """Checkpoint 5 (how does replay avoid re-running completed jobs?): first, by replaying only
    what the snapshot does not cover. The seed's Replay read its whole file, so here every segment
    still on disk is replayed over the snapshot, covered records included. Our `apply` refuses a
    record whose seq the state has passed, so recovery refuses to start once a snapshot has been
    taken: safe, but down."""

    @classmethod
    def open(
        cls, fs: Any, directory: str, *, after_seq: int = 0, on_record: Any = None, **options: Any
    ) -> tuple[WriteAheadLog, Any, int]:
        names = list_segments(fs, directory) if fs.is_dir(directory) else []
        first = segment_seq(names[0]) or 1 if names else 1
        after_seq = min(after_seq, first - 1)
        return super().open(fs, directory, after_seq=after_seq, on_record=on_record, **options)


def seed_transition(q: JobQueue, r: R.Record) -> None:
    """The seed's queue methods as a transition: move the job the record names as the record says,
    whether or not the record is news. A FAIL, TIMEOUT or REQUEUE puts the job back in the pending
    list whatever its state (completed included); any other record goes through the queue's own
    transition, which raises for a record no job can take (an unknown job, a dispatch of a job that
    is not pending). It checks no seq and leaves `q.last_seq` alone."""
    job = q.jobs.get(r["job"])
    if r["type"] in (R.FAIL, R.TIMEOUT, R.REQUEUE) and job is not None:
        if job.status is not JobStatus.PENDING:
            q.leases.pop(job.id, None)
            q.move(job, JobStatus.PENDING)
            q.pending.append(job.id)
        return
    R.APPLY[r["type"]](q, r)


def replay_without_completed_check(q: JobQueue, r: R.Record) -> None:
    """Checkpoint 5 (how does replay avoid re-running completed jobs?): the whole-log replay of
    `replay-whole-log`, with one change: the seed's replay handler instead of our `apply`. A
    replayed FAIL / TIMEOUT / REQUEUE puts the job back in the pending list without checking
    whether it has completed since, and records that do not fit the job's state are skipped, as the
    seed's queue methods did. Recovery now starts, and a job that failed once and then completed
    runs again after every recovery."""
    try:
        seed_transition(q, r)
    except (IllegalTransition, KeyError):
        pass
    q.last_seq = max(q.last_seq, r["seq"])


# -- checkpoint 6: recovery guarantees -----------------------------------------------------------


class SeqResetWAL(WriteAheadLog):
    """Checkpoint 6 (why can WAL + snapshot guarantee consistency?): only if every record has a
    number that never repeats, so replay can skip what a snapshot covers. The seed's Rotate set
    `seq = 0`; here the records of every new segment are numbered from 1 again. Our recovery sees
    the numbers go back and refuses to start (or cuts the lone record as torn); a reader that skips
    by seq would silently drop them."""

    seq_base = 0

    def rotate(self) -> None:
        before = len(self.segments)
        super().rotate()
        if len(self.segments) > before:
            self.seq_base = self.next_seq - 1

    def encode(self, rec: R.Record) -> bytes:
        if self.seq_base:
            return orjson.dumps({**rec, "seq": rec["seq"] - self.seq_base})
        return super().encode(rec)


class PayloadlessEnqueueWAL(WriteAheadLog):
    """Checkpoint 6, the seed's own design: ENQUEUE records carry the job id only
    (`wal.Append("ENQUEUE", job.ID)`) and payloads live in the snapshot. Any job enqueued after the
    last snapshot comes back from a crash without its payload."""

    def append(self, rec: R.Record) -> int:
        if rec["type"] != R.ENQUEUE:
            return super().append(rec)
        payload = rec.pop("payload")
        try:
            return super().append(rec)
        finally:
            rec["payload"] = payload  # the running process still has it; the log does not


def apply_payloadless(q: JobQueue, r: R.Record) -> None:
    """Replay of a payload-less ENQUEUE: the job comes back with an empty payload."""
    if r["type"] == R.ENQUEUE and "payload" not in r:
        r = {**r, "payload": {}}
    R.apply(q, r)


# -- the operator's transitions -------------------------------------------------------------------


class RequeueKeepsAttemptsController(Controller):
    """Checkpoint 4 (how do you avoid infinite retries?), for a requeued job: `beaver requeue` moves
    a dead job back to pending but keeps counting its attempts against max_retry from its first,
    as a requeue that only flips the state does: its "fresh" budget is already spent, so its next
    failure (or timeout) buries it after one attempt instead of max_retry."""

    def requeue(self, ids: Any, on_durable: Any = None) -> int:
        n = super().requeue(ids, on_durable)
        self.state.base.clear()
        return n


def apply_requeue_keeps_attempts(q: JobQueue, r: R.Record) -> None:
    """Replay of the same mistake: a REVIVE records no budget."""
    R.apply(q, r)
    if r["type"] == R.REVIVE:
        q.base.pop(r["job"], None)


class DelayLostOnRestartController(Controller):
    """Checkpoint 5 (how does replay restore what the process knew?), for a delayed job: the delay
    lives in the timer of the process that accepted the job, so a restarted controller measures it
    from nothing and releases every delayed job it recovers at once: after a crash, a delayed job
    runs before its time."""

    def start(self) -> None:
        for job_id in list(self.state.not_before):
            self.log(R.release(job_id))
        super().start()


# -- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """A named broken variant: the pieces it swaps in, the checkpoint it answers, and a sweep
    (crash model, points, config changes) that catches it."""

    name: str
    checkpoint: int
    fs_cls: type[SimFS] = SimFS
    wal_cls: type[WriteAheadLog] = WriteAheadLog
    snapshot_cls: type[SnapshotStore] = SnapshotStore
    apply_fn: Apply = R.apply
    controller_cls: type[Controller] = Controller
    catch: dict[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """The docstring of the piece that breaks the design (the one that names its checkpoint; of a
        mutant built on another, the last piece, its own change)."""
        parts = (self.fs_cls, self.wal_cls, self.snapshot_cls, self.controller_cls, self.apply_fn)
        docs = [" ".join((p.__doc__ or "").split()) for p in parts]
        return next((d for d in reversed(docs) if d.startswith("Checkpoint")), "")


_QUICK_SNAPSHOTS = {"snapshot_interval": 0.3, "snapshot_log_ratio": 0.5}
MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "append-outside-lock",
            1,
            controller_cls=AppendOutsideLockController,
            catch={"model": "process", "points": "records"},
        ),
        Mutant("no-fsync", 2, fs_cls=NoFsyncFS, catch={"model": "power-loss", "points": "records"}),
        Mutant(
            "interval-without-sync",
            2,
            controller_cls=NoIntervalSyncController,
            catch={"model": "power-loss", "points": "records", "config": {"fsync": "interval"}},
        ),
        Mutant("no-dir-fsync", 3, fs_cls=NoDirFsyncFS, catch={"model": "power-loss", "points": "records"}),
        Mutant(
            "snapshot-in-place",
            3,
            snapshot_cls=InPlaceSnapshots,
            catch={"model": "power-loss", "points": "marks", "config": _QUICK_SNAPSHOTS},
        ),
        Mutant(
            "rename-before-fsync",
            3,
            snapshot_cls=RenameBeforeFsyncSnapshots,
            catch={"model": "metadata-first", "points": "marks", "config": _QUICK_SNAPSHOTS},
        ),
        Mutant(
            "no-checksum",
            2,
            fs_cls=BitRotFS,
            wal_cls=NoChecksumWAL,
            catch={"model": "process", "points": "records"},
        ),
        Mutant(
            "replay-whole-log",
            5,
            wal_cls=ReplayWholeLogWAL,
            catch={"model": "process", "points": "records", "config": _QUICK_SNAPSHOTS},
        ),
        Mutant(
            "replay-without-completed-check",
            5,
            wal_cls=ReplayWholeLogWAL,
            apply_fn=replay_without_completed_check,
            catch={
                "model": "process",
                "points": "records",
                "config": {**_QUICK_SNAPSHOTS, "failure_rate": 0.3},
            },
        ),
        Mutant(
            "timeouts-without-retry-limit",
            4,
            controller_cls=NoTimeoutLimitController,
            catch={"model": "process", "points": "records", "config": {"task_timeout": 0.3}},
        ),
        Mutant(
            "seq-reset-on-rotation",
            6,
            wal_cls=SeqResetWAL,
            catch={"model": "process", "points": "records", "config": _QUICK_SNAPSHOTS},
        ),
        Mutant(
            "payload-less-enqueue",
            6,
            wal_cls=PayloadlessEnqueueWAL,
            apply_fn=apply_payloadless,
            catch={"model": "process", "points": "records"},
        ),
    )
}


# the operator's transitions' classic bugs: their sweeps need a workload that delays and requeues
# jobs (`catch["workload"]`), so they are kept apart from the course's checkpoint mutants
OPERATOR_MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "requeue-keeps-attempts",
            4,
            controller_cls=RequeueKeepsAttemptsController,
            apply_fn=apply_requeue_keeps_attempts,
            catch={
                "model": "process",
                "points": "records",
                "config": {"failure_rate": 0.5},
                "workload": {"requeue_at": 2.0},
            },
        ),
        Mutant(
            "delay-lost-on-restart",
            5,
            controller_cls=DelayLostOnRestartController,
            catch={"model": "process", "points": "records", "workload": {"delayed": 2}},
        ),
    )
}


# controller variants that break liveness, not durability: `sim.poison.run_poison` shows them
LIVENESS: dict[str, type[Controller]] = {"free-slot-at-timeout": FreeSlotAtTimeoutController}


def get(name: str | None) -> Mutant | None:
    """The mutant called `name` (None: the correct design); BeaverError naming the known ones."""
    if name is None or name == "none":
        return None
    try:
        return MUTANTS[name] if name in MUTANTS else OPERATOR_MUTANTS[name]
    except KeyError:
        known = ", ".join([*MUTANTS, *OPERATOR_MUTANTS])
        raise BeaverError(f"unknown mutant {name!r}; known: {known}") from None
