"""WriteAheadLog: the source of truth, one checksummed record per line, in numbered segments.

Line format (its bytes are storage/log_format.py's), readable with `cat`: `<crc32c:8 hex> <body
length> <body JSON>\\n`. The CRC covers the exact body bytes and is chained (crc_i = crc32c(body_i,
crc_{i-1})), as etcd's WAL does, so a stale or reordered record cannot pass. Each segment
`wal-<first seq>.log` starts with a header line that carries the chain and the segment's base LSN.
seq starts at 1 and never resets; an LSN is a byte offset counted across all segments since the data
directory was created.

Recovery (see `scan`): a bad record at the end of the last segment is a torn write, truncated with a
`.broken` copy kept; a bad record followed by good ones, a seq gap or a missing segment is corruption
and the log refuses to open, naming file, offset and seq (`beaver wal verify` / `wal repair`).

Preallocated segments (`preallocate`: fallocate or zeros, as etcd and PostgreSQL do): a new segment
is extended with zeros to `segment_bytes` and synced before it is renamed into place, and records
overwrite the zeros, so an fdatasync has no file size to commit. No record byte is ever 0 (the CRC is
hex, the length digits, the body JSON with control characters escaped), so zeros where a record
would start, running to the end of the file, are the clean end of the log. Zeros followed by other
bytes are a bad record like any other: a torn tail at the end of the last segment, corruption if a
good record follows or a later segment exists. One exception: a power loss may keep a later block
of an unsynced write and lose an earlier one (docs/contracts.md, crash model `torn-blocks`), which
leaves zeros that end on a `SECTOR` boundary with records after them. Such a hole in the last
segment is a torn tail too, whatever follows it: a record after it was never synced. LSNs count
record bytes only, never the zeros."""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, count, pairwise, repeat
from operator import add, itemgetter
from typing import Any

import orjson

from beaver_sim.errors import BeaverError, CorruptLog, brief
from beaver_sim.speed import paused_gc
from beaver_sim.storage.fs import FS, FileHandle
from beaver_sim.storage.log_format import (
    FSYNC_POLICIES,
    LINE,
    PREALLOCATE,
    RECOVERY,
    SECTOR,
    VERSION,
    Record,
    claimed,
    crc32c,
    frame,
    header_line,
    parse_header,
    parse_line,
    segment_name,
    segment_seq,
)

_dumps = orjson.dumps
MAX_RECORD = 1 << 20
SEGMENT_BYTES = 64 << 20

OnRecord = Callable[[Record, int], None]  # (record, its LSN)


class RecordTooLarge(BeaverError):
    """A record over the log's size limit; nothing was written."""


class WALFailed(BeaverError):
    """A write or sync failed; the log accepts nothing more until the process restarts."""


@dataclass(slots=True)
class Segment:
    first_seq: int
    base_lsn: int
    path: str


@dataclass(slots=True)
class Problem:
    """The first bad spot in the log: where it is, the last good seq before it, and why."""

    path: str
    offset: int
    lsn: int
    last_good_seq: int
    reason: str
    torn: bool = False  # at the end of the last segment with nothing valid after it
    whole: bool = False  # the bad record ends with its newline and its framing holds: only its CRC fails

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.reason} at offset {self.offset} (LSN {self.lsn}), "
            f"after seq {self.last_good_seq}"
        )


@dataclass(slots=True)
class Scan:
    """What a pass over the log found; `end_*` describe the log up to the first problem."""

    segments: list[Segment] = field(default_factory=list)
    records: int = 0
    replayed: int = 0
    first_seq: int = 0
    next_seq: int = 1
    end_lsn: int = 0
    end_offset: int = 0  # in the last segment scanned
    crc: int = 0
    bytes_total: int = 0
    problem: Problem | None = None


@dataclass(frozen=True, slots=True)
class Verified:
    """What a scan found good in one segment: its bytes from the start through the last good
    record's newline, and where each of those records ends (record `first_seq + k` ends at file
    offset `ends[k]`, its chained CRC `crcs[k]`). Only `scan` makes one, into the `known` map it was
    given; a later scan handed the same map skips re-checking the records it would not replay (those
    a snapshot covers), and only while the segment still begins with exactly these bytes. Why: a
    crash sweep recovers thousands of copies of one growing log, each a prefix of the next."""

    data: bytes
    ends: list[int]
    crcs: list[int]


Known = dict[str, Verified]  # segment path -> what a scan verified there (`scan(known=...)`)


def _valid_follows(lines: list[bytes], crc_before: int) -> bool:
    """Is any line after the bad one (`lines[0]`) a good record, chained to the line before it?
    Then the bad record is corruption in the middle, not a torn tail (etcd/LevelDB: only the
    tail may tear). The line right after the bad one is also tried against the CRC its body
    should have had, so a flipped bit in a CRC field is not mistaken for a torn tail."""
    for index, (prev, line) in enumerate(pairwise(lines)):
        stored, body = claimed(prev)
        candidates = []
        if index == 0 and body is not None:
            candidates.append(crc32c(body, crc_before))
        if stored is not None:
            candidates.append(stored)
        if any(not isinstance(parse_line(line, c), str) for c in candidates):
            return True
    return False


def _lost_block(line: bytes, offset: int) -> bool:
    """Does `line`, at `offset` in its segment, hold zeros that end on a sector boundary: a block of
    an unsynced write that a power loss lost while keeping a later one? (No record byte is 0, and
    damage that zeroes a record rarely ends on a multiple of 512.)"""
    zero = line.find(b"\0")
    while zero >= 0:
        end = zero
        while end < len(line) and line[end] == 0:
            end += 1
        if (offset + end) % SECTOR == 0:
            return True
        zero = line.find(b"\0", end)
    return False


def list_segments(fs: FS, directory: str) -> list[str]:
    """The segment file names in `directory`, in seq order (a file name sorts as its seq)."""
    return [n for n in fs.listdir(directory) if segment_seq(n) is not None]


def log_bytes(fs: FS, path: str) -> bytes:
    """A segment's bytes without its zero-filled (preallocated) remainder: `read_bytes(path)` with
    its trailing zeros stripped. No record byte is 0, so the first zero starts the remainder; only
    when other bytes follow the zeros (damage) does it take the slow `rstrip` (~25 ms a MiB). A
    file system that knows where its files' unwritten holes are (`RealFS.read_written`) leaves the
    hole at the end unread: zeros either way, so nothing is missed (data after a run of zeros, as
    a power loss may leave, is never in a hole), and the verdict is the same."""
    read: Callable[[str], bytes] = getattr(fs, "read_written", fs.read_bytes)
    data = read(path)
    zero = data.find(b"\0")
    if zero < 0:
        return data
    if data.endswith(bytes(len(data) - zero)):  # one memcmp: ~30 ms for 64 MiB
        return data[:zero]
    return data.rstrip(b"\0")


def scan(
    fs: FS,
    directory: str,
    after_seq: int = 0,
    on_record: OnRecord | None = None,
    *,
    covered_seq: int | None = None,
    known: Known | None = None,
) -> Scan:
    """Read and check every segment, calling `on_record` for records with seq > `after_seq`.
    Records 1..`covered_seq` (default `after_seq`) may be missing from the front of the log: a
    snapshot covers them and their segments were deleted. Stops at the first problem and
    describes it; never changes a file.

    `known`: what earlier scans of these files verified (see `Verified`), refilled with what this
    one verifies. A segment that begins with the bytes recorded for its path is checked from the
    first record it replays (or the end of those bytes, if sooner; with no `on_record`, from their
    end): a record's checks (framing,
    chained CRC, decoding, seq) depend only on the bytes before it and the segment's header, so the
    verdict is the one a scan from its start gives. Any other segment is scanned whole.

    Lines are checked `_CHUNK` at a time in bulk (`_checked`: replay's cost is then mostly the
    decoding and `on_record`); a chunk with a bad line goes through the line loop, which names it."""
    with paused_gc():  # replay allocates long-lived objects per record (jobs, payloads, leases)
        covered = after_seq if covered_seq is None else covered_seq
        return _scan(fs, directory, after_seq, covered, on_record, known)


def _scan(
    fs: FS, directory: str, after_seq: int, covered: int, on_record: OnRecord | None, known: Known | None
) -> Scan:
    s = Scan()
    names = list_segments(fs, directory)
    loads = orjson.loads
    for index, name in enumerate(names):
        path = posixpath.join(directory, name)
        data = log_bytes(fs, path)  # the preallocated zeros after the last record are not the log
        s.bytes_total += len(data)
        last = index == len(names) - 1
        nl = data.find(b"\n")
        h = parse_header(data[:nl]) if nl >= 0 else None
        good = s.next_seq - 1 if s.segments else covered  # the last seq known good before this segment
        if h is None:
            s.problem = Problem(path, 0, s.end_lsn, good, "bad segment header")
            return s
        first, base = h["first_seq"], h["base_lsn"]
        if h.get("v") != VERSION:
            s.problem = Problem(path, 0, base, good, f"unsupported WAL version {h.get('v')}")
            return s
        if segment_seq(name) != first:
            s.problem = Problem(path, 0, base, good, f"header says first seq {first}")
            return s
        if not s.segments:
            if first > covered + 1:
                reason = f"records {covered + 1}..{first - 1} are missing (log starts at seq {first})"
                s.problem = Problem(path, 0, base, covered, reason)
                return s
            s.first_seq, s.next_seq, s.crc, s.end_lsn = first, first, h["prev_crc"], base
        elif s.next_seq < first <= covered + 1:
            # a gap the snapshot covers (a segment of covered records removed): the log needed
            # after the snapshot starts here, as it would if compaction had deleted everything before
            s.next_seq, s.crc, s.end_lsn = first, h["prev_crc"], base
        elif first != s.next_seq or base != s.end_lsn:
            reason = (
                f"segment does not continue the log (first seq {first}, expected "
                f"{s.next_seq}; base LSN {base}, expected {s.end_lsn}): a segment is missing"
            )
            s.problem = Problem(path, 0, base, s.next_seq - 1, reason)
            return s
        elif h["prev_crc"] != s.crc:
            prev = h["prev_crc"]
            reason = (
                f"segment breaks the checksum chain (its header's prev_crc "
                f"{f'{prev:08x}' if type(prev) is int else repr(prev)}, the "
                f"log's chain {s.crc:08x} after seq {s.next_seq - 1}): it was not written after "
                "the segment before it (a segment of another log, or an older copy)"
            )
            s.problem = Problem(path, 0, base, s.next_seq - 1, reason)
            return s
        s.segments.append(Segment(first, base, path))
        offset, crc, seq = nl + 1, s.crc, s.next_seq  # (s.crc is the header's prev_crc, seq its first)
        ends: list[int] | None = None
        crcs: list[int] = []
        if known is not None:
            v = known.get(path)
            ends = []
            if v is not None and data.startswith(v.data):
                # the verified records it would not replay: those the snapshot covers (all, if none is)
                skip = len(v.ends) if on_record is None else min(len(v.ends), after_seq - seq + 1)
                if skip > 0:
                    ends, crcs = v.ends[:skip], v.crcs[:skip]
                    offset, crc, seq = ends[-1], crcs[-1], seq + skip
        if offset == nl + 1:  # from the first record: split in place (a 64 MiB slice is a copy)
            lines = data.split(b"\n")
            del lines[0]
        else:
            lines = data[offset:].split(b"\n")
        tail = lines.pop()  # bytes after the last newline: a record cut short, or b""
        reason = ""
        bad_index = -1
        replayed = 0
        for at in range(0, len(lines), _CHUNK):
            chunk = lines[at : at + _CHUNK]
            # a shorter chunk (a segment's last lines) goes through the line loop at once: where a
            # crash leaves a damaged end, which the bulk checks would only find again line by line
            checked = _checked(chunk, crc, seq) if len(chunk) == _CHUNK else None
            if checked is not None:  # every line good: apply them, no per-line checks in Python
                stored, recs = checked
                # each line's offset: the lengths summed, plus one newline per line before it
                starts = list(map(add, accumulate(map(len, chunk), initial=offset), count()))
                first = max(after_seq - seq + 1, 0)  # the records a snapshot covers are not replayed
                if on_record is not None and first < len(recs):
                    try:
                        for k in range(first, len(recs)):
                            on_record(recs[k], base + starts[k])
                    except BeaverError as e:
                        if ends is not None:
                            ends += starts[1 : k + 1]
                            crcs += stored[:k]
                        crc = stored[k - 1] if k else crc
                        s.replayed += replayed + k - first
                        return _stopped(s, path, data, base, starts[k], crc, seq + k, e, known, ends, crcs)
                    replayed += len(recs) - first
                crc, seq, offset = stored[-1], seq + len(recs), starts[-1]
                if ends is not None:
                    ends += starts[1:]
                    crcs += stored
                continue
            for i, line in enumerate(chunk, at):  # a short chunk, or a line fails: find it, say why
                # log_format owns the framing: these are log_format.parse_line's checks, inlined (as
                # `_checked` makes them in bulk); on a bad line, parse_line itself says what is wrong
                try:
                    head, length, body = line.split(b" ", 2)
                    good = len(head) == 8 and length.isdigit() and int(length) == len(body)
                    stored_crc = int(head, 16) if good else -1
                except ValueError:
                    stored_crc = -1
                if stored_crc < 0 or crc32c(body, crc) != stored_crc:
                    why = parse_line(line, crc)
                    reason, bad_index = (why if isinstance(why, str) else "checksum mismatch"), i
                    break
                try:
                    rec = loads(body)
                    rec_seq = rec["seq"]
                except (ValueError, TypeError, KeyError):
                    reason, bad_index = "undecodable record", i
                    break
                if rec_seq != seq:
                    reason, bad_index = f"seq {rec_seq} where {seq} was expected", i
                    break
                if on_record is not None and seq > after_seq:
                    try:
                        on_record(rec, base + offset)
                    except BeaverError as e:
                        s.replayed += replayed
                        return _stopped(s, path, data, base, offset, crc, seq, e, known, ends, crcs)
                    replayed += 1
                crc = stored_crc
                seq += 1
                offset += len(line) + 1
                if ends is not None:
                    ends.append(offset)
                    crcs.append(crc)
            if bad_index >= 0:
                break
        if known is not None and ends is not None:
            known[path] = Verified(data[:offset], ends, crcs)
        s.records += seq - s.next_seq
        s.replayed += replayed
        s.crc, s.next_seq, s.end_offset, s.end_lsn = crc, seq, offset, base + offset
        if bad_index >= 0:
            lost = _lost_block(lines[bad_index], offset)
            torn = last and (lost or not _valid_follows(lines[bad_index:] + ([tail] if tail else []), crc))
            whole = reason == "checksum mismatch" and not lost
            s.problem = Problem(path, offset, base + offset, seq - 1, reason, torn, whole)
            return s
        if tail:
            s.problem = Problem(path, offset, base + offset, seq - 1, "incomplete record", last)
            return s
    return s


_CHUNK = 256  # lines checked in bulk at a time: the records decoded ahead of replay stay few
_SEQ = itemgetter("seq")


def _checked(chunk: list[bytes], crc: int, seq: int) -> tuple[list[int], list[Record]] | None:
    """The stored CRCs and the records of `chunk`, lines that follow chained CRC `crc` and record
    `seq - 1`, if every line passes every check of `_scan`'s line loop (the same checks, made with
    the same functions, each over the whole chunk at C speed: replay's hot path); else None, and
    that loop finds the first bad line and says why."""
    try:
        parts = list(map(bytes.split, chunk, repeat(b" "), repeat(2)))
        if min(map(len, parts)) != 3:
            return None
        heads, lengths, bodies = zip(*parts)
        if min(map(len, heads)) != 8 or max(map(len, heads)) != 8 or not all(map(bytes.isdigit, lengths)):
            return None
        if list(map(int, lengths)) != list(map(len, bodies)):
            return None
        stored = list(map(int, heads, repeat(16)))
        if list(map(crc32c, bodies, [crc, *stored[:-1]])) != stored:
            return None
        recs = list(map(orjson.loads, bodies))
        if list(map(_SEQ, recs)) != list(range(seq, seq + len(recs))):
            return None
    except (ValueError, TypeError, KeyError):
        return None
    return stored, recs


def _stopped(
    s: Scan,
    path: str,
    data: bytes,
    base: int,
    offset: int,
    crc: int,
    seq: int,
    e: BeaverError,
    known: Known | None,
    ends: list[int] | None,
    crcs: list[int],
) -> Scan:
    """`s` ended at record `seq`, at `offset` in the segment at `path`, which `on_record` refused."""
    s.problem = Problem(path, offset, base + offset, seq - 1, str(e))
    s.end_offset, s.end_lsn, s.crc, s.next_seq = offset, base + offset, crc, seq
    if known is not None and ends is not None:
        known[path] = Verified(data[:offset], ends, crcs)
    return s


class WriteAheadLog:
    """Appends records, makes them durable per the fsync policy, rotates segments.

    `append` encodes into a buffer and assigns seq; `flush` writes everything buffered with one
    write and, under `always`, one fdatasync: appends made in one event-loop turn share that sync
    (group commit). Any write or sync error is fatal (see fsync(2) and PostgreSQL's fsyncgate).

    With `preallocate` (fallocate or zeros) every segment is `segment_bytes` of zeros before its
    first record, and the log writes over them from the end the scan found; `none` appends.

    The hooks (`encode`, `frame`) are bound once per class: `append` calls one only when a subclass
    overrides it, and otherwise does its work inline (two calls fewer per record)."""

    _own_encode = False  # set per subclass by __init_subclass__: does it override `encode`?
    _own_frame = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_encode = cls.encode is not WriteAheadLog.encode
        cls._own_frame = cls.frame is not WriteAheadLog.frame

    def __init__(
        self,
        fs: FS,
        directory: str,
        scan_: Scan,
        *,
        fsync: str = "always",
        segment_bytes: int = SEGMENT_BYTES,
        max_record: int = MAX_RECORD,
        preallocate: str = "none",
        timer: Callable[[], float] | None = None,
        on_sync: Callable[[float], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise BeaverError(f"fsync policy {fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
        if preallocate not in PREALLOCATE:
            raise BeaverError(f"preallocate {preallocate!r} is not one of {', '.join(PREALLOCATE)}")
        self.fs, self.directory, self.fsync, self.preallocate = fs, directory, fsync, preallocate
        self.segment_bytes, self.max_record = segment_bytes, max_record
        self.timer, self.on_sync = timer, on_sync  # real mode: fsync latency for the metrics
        self.segments = scan_.segments
        self.next_seq = scan_.next_seq
        self.lsn = scan_.end_lsn  # LSN of the next byte to be appended
        # the last segment's records may sit only in the page cache of a process killed with -9:
        # the first sync covers them, so "already present" is never acknowledged before durable
        self.durable_lsn = self.segments[-1].base_lsn
        self.written_lsn = self.lsn
        self.crc = scan_.crc
        self._buf: list[bytes] = []
        self._undo = self.crc  # the chain before the last record appended
        self._failed: BaseException | None = None
        self.syncs = 0
        self._file: FileHandle = self._open_live(scan_.end_offset)

    def _open_live(self, end: int) -> FileHandle:
        """Open the last segment to write at `end`, where its log ends: preallocated up to
        `segment_bytes` first (again, after a torn tail was cut), or its zeros cut off with
        `none`. Either step is synced and safe to crash in: the next open redoes it."""
        path = self.segments[-1].path
        size = self.fs.size(path)
        if self.preallocate == "none":
            if size > end:  # preallocated by an earlier run: appending would land after the zeros
                self.fs.truncate(path, end)
            return self.fs.open_append(path)
        f = self.fs.open_at(path, end)
        if size < self.segment_bytes:
            try:
                f.preallocate(self.segment_bytes, self.preallocate == "zeros")
                f.sync()
            except BaseException:
                f.close()
                raise
        return f

    @classmethod
    def open(
        cls,
        fs: FS,
        directory: str,
        *,
        after_seq: int = 0,
        on_record: OnRecord | None = None,
        recovery: str = "tolerate-tail",
        known: Known | None = None,
        **options: Any,
    ) -> tuple[WriteAheadLog, Scan, int]:
        """Recover the log in `directory` (created if missing): replay records after `after_seq`
        into `on_record`, truncate a torn tail (keeping `<segment>.broken`), refuse corruption.
        `recovery` "strict" also refuses a whole last record that fails its checksum (a flipped
        bit in a record that may have been acknowledged), which "tolerate-tail" cuts as torn, as
        etcd, LevelDB and PostgreSQL do. `known`: `scan`'s (what earlier scans of these files
        verified). Returns the log, the scan, and the torn bytes dropped."""
        if recovery not in RECOVERY:
            raise BeaverError(f"wal recovery {recovery!r} is not one of {', '.join(RECOVERY)}")
        if fs.exists(directory) and not fs.is_dir(directory):
            raise BeaverError(f"{directory}: WAL directory is a file")
        fs.makedirs(directory)
        for name in fs.listdir(directory):
            if name.endswith(".tmp"):
                fs.remove(posixpath.join(directory, name))
        if options.get("preallocate") == "auto":  # the default: fallocate where the file system can
            options["preallocate"] = "fallocate" if fs.can_fallocate(directory) else "none"
        s = scan(fs, directory, after_seq, on_record, known=known)
        dropped = 0
        if s.problem is not None:
            p = s.problem
            if p.torn and p.whole and recovery == "strict":
                raise CorruptLog(
                    f"{p}: the last record is whole (it ends with its newline) but fails its checksum, "
                    "damage rather than a torn write; wal_recovery: strict refuses it (tolerate-tail "
                    "would cut it, losing that record); run `beaver wal verify`, then `beaver wal repair`"
                )
            if not p.torn:
                raise CorruptLog(
                    f"{p}; run `beaver wal verify`, then `beaver wal repair` to see what a cut "
                    "there would lose (it changes nothing without --yes)"
                )
            data = log_bytes(fs, p.path)
            dropped = len(data) - p.offset
            backup = fs.create(p.path + ".broken")
            backup.write(data)
            backup.sync()
            backup.close()
            fs.truncate(p.path, p.offset)
            s.problem = None
        if not s.segments:
            if after_seq:
                raise CorruptLog(
                    f"{directory}: no WAL segment, but a snapshot covers seq {after_seq}: the log was deleted"
                )
            mode = options.get("preallocate", "none")
            size = options.get("segment_bytes", SEGMENT_BYTES) if mode != "none" else 0
            create_segment(fs, directory, 1, 0, 0, size, mode == "zeros")
            s.segments.append(Segment(1, 0, posixpath.join(directory, segment_name(1))))
            s.first_seq, s.next_seq = 1, 1
            s.end_lsn = s.end_offset = len(header_line(1, 0, 0))
        if s.next_seq <= after_seq:
            raise CorruptLog(
                f"{directory}: the log ends at seq {s.next_seq - 1} but the snapshot "
                f"covers seq {after_seq}: synced records were lost"
            )
        return cls(fs, directory, s, **options), s, dropped

    # -- appending -----------------------------------------------------------------------------

    def append(self, rec: Record) -> int:
        """Assign the next seq to `rec`, encode and buffer it; returns the seq. Not yet durable."""
        if self._failed is not None:
            self.ensure_open()
        seq = self.next_seq
        rec["seq"] = seq
        body = self.encode(rec) if self._own_encode else _dumps(rec)
        size = len(body)
        if size > self.max_record:
            rec["seq"] = 0
            raise RecordTooLarge(
                f"record for job {brief(rec.get('job'))} is {size} bytes; the limit is {self.max_record}"
            )
        self._undo = prev = self.crc  # for discard_last (the LSN goes back by the line's length)
        self.crc = crc = crc32c(body, prev)
        line = self.frame(body, crc) if self._own_frame else LINE % (crc, size, body)
        self._buf.append(line)
        self.lsn += len(line)
        self.next_seq = seq + 1
        return seq

    # Extension points: a subclass (the simulator's broken variants, a lab's learner code) may
    # override these, within what each docstring says it must keep; the rest of the class is fixed.

    def encode(self, rec: Record) -> bytes:
        """The body logged for `rec` (its seq already set): its JSON. A subclass may log other bytes
        for it (a mutant renumbers seqs); it must return one JSON object without a newline, which the
        CRC then covers and the size limit checks. Replay decodes what this returns."""
        return _dumps(rec)

    def frame(self, body: bytes, crc: int) -> bytes:
        """The line that carries `body`, whose chained CRC is `crc`: log_format.frame. A subclass may
        frame it otherwise (a mutant writes no checksum); the line must end with its newline, and
        its length is what the LSN advances by. The chain (`crc`) goes on from `crc` whatever the
        line says."""
        return frame(body, crc)

    def take_pending(self) -> list[bytes]:
        """The framed lines appended and not yet written, in log order, handed over: the caller
        must write them to `segment_file` in that order (and sync them before it acknowledges any),
        then call `mark_durable`. For a subclass or a controller that commits a turn its own way
        (the labs); `flush` is the log's own way."""
        lines, self._buf = self._buf, []
        return lines

    @property
    def segment_file(self) -> FileHandle:
        """The live segment's open file, positioned at the end of the log: where lines taken with
        `take_pending` go. Closed and replaced by `rotate`."""
        return self._file

    def mark_durable(self) -> None:
        """Everything appended was written and synced by the caller (see `take_pending`): the log
        counts it durable, as `sync` would have made it."""
        self.written_lsn = self.durable_lsn = self.lsn

    def rotate_if_full(self) -> None:
        """Start a new segment once the written part of the live one reaches `segment_bytes` (the
        end of every flush, the log's own or a subclass's)."""
        if self.written_lsn - self.segments[-1].base_lsn >= self.segment_bytes:
            self.rotate()

    def ensure_open(self) -> None:
        """WALFailed if a write or sync failed earlier: a failed log stays failed, so no later
        append or flush is ever reported done (fsync(2), PostgreSQL's fsyncgate)."""
        if self._failed is not None:
            raise WALFailed(f"{self.directory}: the log failed earlier ({self._failed}); restart")

    def discard_last(self) -> None:
        """Take back the record just appended (still buffered): its apply was refused."""
        self.lsn -= len(self._buf.pop())
        self.crc = self._undo
        self.next_seq -= 1

    @property
    def pending(self) -> tuple[bytes, ...]:
        """The framed lines appended and not yet written, in log order: a copy to read (the
        simulator's merge keys a state by them). `take_pending` is the one that hands them over."""
        return tuple(self._buf)

    @property
    def pending_bytes(self) -> int:
        """Bytes appended but not yet written."""
        return self.lsn - self.written_lsn

    def flush(self) -> None:
        """Write what is buffered (one write); under `always`, make it durable (one fdatasync)."""
        if self._failed is not None:
            self.ensure_open()
        buf = self._buf
        if buf:
            data = b"".join(buf)
            buf.clear()
            try:  # _io, inline: this runs once per turn
                self._file.write(data)
            except OSError as e:
                self._fail(e)
            self.written_lsn = self.lsn
        if self.fsync == "always":
            self.sync()
        if self.written_lsn - self.segments[-1].base_lsn >= self.segment_bytes:  # rotate_if_full
            self.rotate()

    def sync(self) -> None:
        """Make everything written durable (fdatasync), whatever the policy."""
        if self._failed is not None:
            self.ensure_open()
        if self._buf:
            self._io(self._file.write, b"".join(self._buf))
            self._buf.clear()
            self.written_lsn = self.lsn
        if self.durable_lsn == self.written_lsn:
            return
        timer, on_sync = self.timer, self.on_sync
        t0 = timer() if timer is not None and on_sync is not None else 0.0
        try:  # _io, inline: this runs once per turn under `always`
            self._file.sync()
        except OSError as e:
            self._fail(e)
        if timer is not None and on_sync is not None:
            on_sync(timer() - t0)
        self.syncs += 1
        self.durable_lsn = self.written_lsn

    def _io(self, fn: Callable[..., None], *args: Any) -> None:
        """`fn(*args)`, a write or sync of the live segment: an OSError fails the log for good."""
        try:
            fn(*args)
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError, path: str | None = None) -> None:
        """A write, sync or rotation failed: the log is closed for good (WALFailed)."""
        self._failed = e
        raise WALFailed(
            f"{path or self.segments[-1].path}: {e}; the log is closed, restart to recover from it"
        ) from e

    def rotate(self) -> None:
        """Start a new segment at the next seq (synced first, so no seq gap can follow a crash)."""
        self.sync()
        if self.segments[-1].first_seq == self.next_seq:
            return  # the current segment holds no record yet
        size = self.segment_bytes if self.preallocate != "none" else 0
        try:  # no space to preallocate, a failing rename: fatal like a failed write, and named
            path = create_segment(
                self.fs, self.directory, self.next_seq, self.lsn, self.crc, size, self.preallocate == "zeros"
            )
        except OSError as e:
            self._fail(e, posixpath.join(self.directory, segment_name(self.next_seq)))
        self._file.close()
        header = len(header_line(self.next_seq, self.lsn, self.crc))
        self._file = self.fs.open_at(path, header) if size else self.fs.open_append(path)
        self.segments.append(Segment(self.next_seq, self.lsn, path))
        self.lsn += header
        self.written_lsn = self.durable_lsn = self.lsn

    def delete_through(self, seq: int) -> int:
        """Delete the segments whose every record has seq <= `seq` (never the current one). One
        already gone was deleted by the child that wrote the snapshot (runtime/snapshots.py): it is
        only forgotten."""
        doomed = [a for a, b in zip(self.segments, self.segments[1:]) if b.first_seq - 1 <= seq]
        removed = 0
        for seg in doomed:
            with contextlib.suppress(FileNotFoundError):
                self.fs.remove(seg.path)
                removed += 1
        if removed:
            self.fs.sync_dir(self.directory)
        del self.segments[: len(doomed)]
        return len(doomed)

    def close(self) -> None:
        """Write and sync what is buffered, then close the segment."""
        if self._failed is None:
            self.sync()
        self._file.close()


def create_segment(
    fs: FS, directory: str, first_seq: int, base_lsn: int, prev_crc: int, size: int = 0, zeros: bool = False
) -> str:
    """tmp file, header, zeros up to `size` (if more), fsync, rename, fsync the directory: a segment
    exists whole, preallocation included, or not at all."""
    path = posixpath.join(directory, segment_name(first_seq))
    f = fs.create(path + ".tmp")
    f.write(header_line(first_seq, base_lsn, prev_crc))
    if size:
        f.preallocate(size, zeros)
    f.sync()
    f.close()
    fs.replace(path + ".tmp", path)
    fs.sync_dir(directory)
    return path


def verify(fs: FS, directory: str) -> Scan:
    """Check the whole log without changing anything; `problem` is None when it is sound."""
    return scan(fs, directory)


def repair(fs: FS, directory: str) -> tuple[Scan, int, list[str]]:
    """Point-in-time repair of the log alone: cut it at its first bad record (see `cut`). The
    operator's `beaver wal repair` plans first, with the snapshots in view (core.repair)."""
    s = scan(fs, directory)
    if s.problem is None:
        return s, 0, []
    dropped, backups = cut(fs, directory, s.problem)
    return s, dropped, backups


def cut(fs: FS, directory: str, p: Problem) -> tuple[int, list[str]]:
    """Cut the log at `p`: the damaged segment is copied to `.broken` and truncated there (renamed
    `.removed` when its header is bad), later segments are renamed `.broken`. Returns the bytes
    dropped and the backups (a preallocated zero remainder is neither)."""
    data = log_bytes(fs, p.path)
    backups = [p.path + ".broken"]
    f = fs.create(backups[0])
    f.write(data)
    f.sync()
    f.close()
    dropped = len(data) - p.offset
    for path in later_segments(fs, directory, p.path):
        dropped += len(log_bytes(fs, path))
        fs.replace(path, path + ".broken")
        backups.append(path + ".broken")
    if p.offset == 0:  # a bad header: the whole segment goes
        fs.replace(p.path, p.path + ".removed")
        backups.append(p.path + ".removed")
    else:
        fs.truncate(p.path, p.offset)
    fs.sync_dir(directory)
    return dropped, backups


def records_from(fs: FS, p: Problem, crc: int, later: list[str]) -> tuple[list[Record], int]:
    """What a cut at `p` drops: the records from `p` on (and in the `later` segments) that verify,
    and how many lines do not. A record verifies when its CRC, chained from the one before it, holds
    (`crc`: the chain value before `p`; after a segment header, the header's). After a line that does
    not verify, the chain goes on from the CRC that line claims or the one its body should have had,
    as `_valid_follows` tries. A damaged record is never read as if it were good: what it was cannot
    be known, only that it is gone."""
    lines = log_bytes(fs, p.path)[p.offset :].split(b"\n")
    for path in later:
        lines += log_bytes(fs, path).split(b"\n")
    chains = [crc] if p.offset else []  # what the next record's CRC may be chained from
    good: list[Record] = []
    bad = 0
    for line in lines:
        if not line:
            continue
        h = parse_header(line)
        if h is not None:  # a segment starts: the chain goes on from what its header says
            chains = [h["prev_crc"]]
            continue
        rec = None
        for chain in chains:
            got = parse_line(line, chain)
            if not isinstance(got, str):
                try:
                    rec = orjson.loads(got[1])
                except ValueError:
                    pass
                chains = [got[0]]
                break
        if isinstance(rec, dict):
            good.append(rec)
            continue
        bad += 1
        stored, body = claimed(line)
        chains = ([] if stored is None else [stored]) + (
            [] if body is None else [crc32c(body, c) for c in chains]
        )
    return good, bad


def later_segments(fs: FS, directory: str, path: str) -> list[str]:
    """The segments after `path`, in order."""
    paths = [posixpath.join(directory, n) for n in list_segments(fs, directory)]
    return [p for p in paths if p > path]
