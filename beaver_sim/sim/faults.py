"""Crash plans: where the simulated machine stops, and what its disk keeps afterwards.

A plan names one spot in a run: a WAL byte (`lsn`: the write that would put byte X on disk keeps
exactly the bytes before X, so the record holding X is torn), the end of a record (`record`: the log
holds records 1..K and nothing after), the n-th time a named persistence point is reached (`point`,
the SimFS marks), a virtual time (`time`), the n-th file-system call of the life (`op`: open,
create, write, sync, rename, remove, truncate, directory sync or mark; recovery's own calls too, so a
crash can hit the truncation of a torn tail), or an I/O error: the K-th write of the life fails with
ENOSPC (`enospc`) or its K-th fsync with EIO (`eio`), over every file; the process then stops on the
error, as `beaver run` does, and restarts on what the crash model keeps. `CrashHook` is the SimFS
hook that finds the spot: it follows the WAL's LSNs through the writes it sees (a segment's base
LSN is in its header), so crash points stay exact across segment rotations and restarts. The crash
model (`fs.CRASH_MODELS`: `process`, `power-loss`, `metadata-first`, `torn-blocks`) then decides
what survives: SimFS.after_crash.

Recovery time has two faces here: the measured wall time of the real recovery code (never part of a
deterministic output) and `recovery_model_seconds`, a cost model of the work recovery did."""

from __future__ import annotations

import errno
import posixpath
from dataclasses import dataclass
from typing import Any

from beaver_sim.core.types import BeaverError
from beaver_sim.sim.clock import VirtualClock
from beaver_sim.sim.fs import CRASH_MODELS, SUBSETS, IOFault, SimFS
from beaver_sim.storage.log_format import parse_header, segment_seq

IO_KINDS = {  # kind -> (op, errno, bytes of the failing write kept)
    "enospc": ("write", errno.ENOSPC, 0),
    "short": ("write", errno.ENOSPC, -1),  # half the write lands, then the disk is full
    "eio": ("sync", errno.EIO, 0),
    "erename": ("rename", errno.EIO, 0),
    "edirsync": ("dirsync", errno.EIO, 0),
}
KINDS = ("lsn", "record", "point", "time", "op", *IO_KINDS)
POINTS = (  # the SimFS marks, in the order a checkpoint reaches them
    "snapshot-tmp-written",
    "snapshot-tmp-synced",
    "snapshot-renamed",
    "snapshot-dir-synced",
    "wal-rotated",
    "snapshots-pruned",
    "wal-segments-deleted",
)
LAB_POINTS = ("group-commit-released",)  # reached only with a lab plugged in (beaver_sim.labs, lab 6)

# The recovery cost model, seconds per unit of work: a fixed cost for opening the directories; every
# WAL byte read (recovery reads, CRC-checks and decodes every line of every kept segment, replayed or
# not); every record replayed (apply); every snapshot byte (read, checksum, decode, rebuild). Fitted
# to the real recovery code on the 2-core benchmark machine (`bench/bench_sim.py --calibrate` prints
# a fresh fit; measured times there sit within about 30 % of the model). Deterministic, so notebooks
# can plot it.
RECOVERY_COST = {
    "base": 3.0e-4,
    "per_record": 1.0e-6,
    "per_wal_byte": 2.5e-8,
    "per_snapshot_byte": 1.0e-8,
}


def recovery_model_seconds(records_replayed: int, wal_bytes: int, snapshot_bytes: int) -> float:
    """The deterministic recovery time: RECOVERY_COST applied to what recovery read and replayed."""
    c = RECOVERY_COST
    return (
        c["base"]
        + c["per_record"] * records_replayed
        + c["per_wal_byte"] * wal_bytes
        + c["per_snapshot_byte"] * snapshot_bytes
    )


@dataclass(frozen=True, slots=True)
class CrashPlan:
    """One crash: `kind` (lsn, record, point, time, op, an I/O error) and where (`at`); `occurrence`
    picks the n-th time a point is reached in its life; `torn` is how many bytes of each file's
    unsynced tail survive a power loss (0: none), or under `model` SUBSETS the mask of the unsynced
    units that survive (SimFS.unsynced_units); `model` is this crash's model (None: the run's), so
    one run can mix process crashes and power losses."""

    kind: str
    at: Any
    occurrence: int = 1
    torn: int = 0
    model: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BeaverError(f"crash kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "point" and self.at not in POINTS + LAB_POINTS:
            raise BeaverError(f"unknown persistence point {self.at!r}; known: {', '.join(POINTS)}")
        if self.kind in ("lsn", "record") and (not isinstance(self.at, int) or self.at < 0):
            raise BeaverError(f"crash at {self.kind} needs an integer >= 0, got {self.at!r}")
        if self.kind in (*IO_KINDS, "op") and (not isinstance(self.at, int) or self.at < 1):
            raise BeaverError(
                f"an {self.kind} fault needs the number of the call to fail (>= 1), got {self.at!r}"
            )
        if self.kind == "time" and (not isinstance(self.at, int | float) or self.at < 0):
            raise BeaverError(f"crash at time needs a number of seconds >= 0, got {self.at!r}")
        if self.occurrence < 1 or self.torn < 0:
            raise BeaverError("crash occurrence must be >= 1 and torn bytes >= 0")
        if self.model is not None and self.model not in (*CRASH_MODELS, SUBSETS):
            raise BeaverError(f"crash model must be one of {', '.join(CRASH_MODELS)}, got {self.model!r}")

    def describe(self) -> str:
        """A short label: `lsn 1234`, `record 17`, `point snapshot-renamed#2`, `time 3.5s`."""
        if self.kind == "point":
            return f"point {self.at}#{self.occurrence}"
        if self.kind == "time":
            return f"time {self.at:g}s"
        return f"{self.kind} {self.at}"

    def fault(self) -> IOFault:
        """The SimFS fault of an `enospc` or `eio` plan."""
        op, code, keep = IO_KINDS[self.kind]
        return IOFault(op, self.at, code, keep)

    def as_list(self) -> list[Any]:
        """Compact form for replay tokens (a model only when the plan has its own)."""
        out = [self.kind, self.at, self.occurrence, self.torn]
        return out if self.model is None else [*out, self.model]

    @classmethod
    def from_list(cls, data: list[Any]) -> CrashPlan:
        return cls(*data)

    @classmethod
    def parse(cls, text: str) -> CrashPlan:
        """`lsn:1234`, `record:17`, `point:snapshot-renamed#2`, `time:3.5` (the CLI's point lists)."""
        kind, sep, rest = text.partition(":")
        if not sep:
            raise BeaverError(f"crash point {text!r}: expected KIND:WHERE, e.g. lsn:1234 or record:17")
        try:
            if kind == "point":
                name, _, occ = rest.partition("#")
                return cls("point", name, int(occ or 1))
            if kind == "time":
                return cls("time", float(rest))
            return cls(kind, int(rest))
        except ValueError:
            raise BeaverError(f"crash point {text!r}: {rest!r} is not a number") from None


class CrashHook:
    """The SimFS hook of one life of a run: tracks the WAL's LSN through every write, counts named
    points, and stops the machine where `plan` says. With `observe`, it also records every WAL
    write and every point reached, which is how a sweep enumerates its crash points."""

    def __init__(
        self,
        fs: SimFS,
        wal_dir: str,
        plan: CrashPlan | None,
        clock: VirtualClock,
        observe: bool = False,
    ) -> None:
        self.fs, self.plan, self.clock, self.observe = fs, plan, clock, observe
        self.wal_dir = SimFS._norm(wal_dir)
        self.ends: list[int] = []  # a record plan: end LSN of each record this life appends
        self.first_seq = 1  # seq of the first of them
        self._base: dict[str, int] = {}  # segment path -> base LSN, from its header
        self._end: int | None = None  # LSN after the last WAL byte written, None: recompute
        self._marks: dict[str, int] = {}
        self._target = plan.at if plan is not None and plan.kind == "lsn" else None
        self._op = plan.at if plan is not None and plan.kind == "op" else 0
        self.ops = 0
        self.calls: list[tuple[str, str]] = []  # observe: (op, path) of every hooked FS call
        self.crash_lsn: int | None = None
        self.crash_time: float | None = None
        self.writes: list[tuple[int, int, int]] = []  # observe: (op index, start LSN, bytes)
        self.write_times: list[float] = []  # observe: the virtual time of each of those writes
        self.points: list[tuple[str, int, int, float]] = []  # observe: (name, occurrence, LSN, time)

    def __call__(self, op: str, path: str, nbytes: int) -> int | None:
        self.ops += 1
        if self.observe:
            self.calls.append((op, path))
        if self.ops == self._op:  # an `op` plan: stop before this call (a write keeps nothing)
            return self._crash(self.end_lsn())
        if op == "write":
            if posixpath.dirname(path) != self.wal_dir:
                return None
            return self._write(path, nbytes)
        if op == "mark":
            n = self._marks[path] = self._marks.get(path, 0) + 1
            if self.observe:
                self.points.append((path, n, self.end_lsn(), self.clock.now()))
            return self.reached_mark(path, n)
        if posixpath.dirname(path) == self.wal_dir:  # a rename, truncate or delete moves the end
            self._base.pop(path, None)
            self._end = None
        return None

    def _write(self, path: str, nbytes: int) -> int | None:
        name = posixpath.basename(path)
        if segment_seq(name) is not None:
            base = self._base.get(path)
            if base is None:
                base = self._base[path] = self._header_base(path)
            start = base + len(self.fs.files[path].data)
        elif name.endswith(".tmp") and segment_seq(name[:-4]) is not None:
            # a new segment's header: it starts where the log ends
            start = self.end_lsn()
        else:
            return None  # a `.broken` backup: not part of the log
        if self.observe:
            self.writes.append((self.ops, start, nbytes))
            self.write_times.append(self.clock.now())
        keep = self.reached_write(path, start, nbytes)
        self._end = start + (nbytes if keep is None else keep)
        return keep

    def reached_write(self, path: str, start: int, nbytes: int) -> int | None:
        """A write of `nbytes` at LSN `start` is about to happen: crash (return the bytes of it to
        keep) if it crosses the plan's LSN, else None."""
        target = self._target
        if target is None and self.plan is not None and self.plan.kind == "record":
            target = self._target = self._record_end(self.plan.at, start)
        if target is not None and target < start + nbytes:
            keep = max(0, target - start)
            return self._crash(start + keep, keep)
        return None

    def reached_mark(self, name: str, n: int) -> int | None:
        """Persistence point `name` is reached for the n-th time: crash here if the plan says so."""
        plan = self.plan
        if plan is not None and plan.kind == "point" and plan.at == name and plan.occurrence == n:
            return self._crash(self.end_lsn())
        return None

    def _record_end(self, k: int, now: int) -> int | None:
        """End LSN of record `k` once it has been appended in this life; `now` (crash at once)
        if record k came before this life."""
        if k < self.first_seq:
            return now
        i = k - self.first_seq
        return self.ends[i] if i < len(self.ends) else None

    def _crash(self, lsn: int, keep: int = 0) -> int:
        self.crash_lsn = lsn
        self.crash_time = self.clock.now()
        return keep

    def _header_base(self, path: str) -> int:
        """The base LSN in the header of segment `path` (ValueError: none readable)."""
        data = self.fs.files[path].data
        header = parse_header(bytes(data[: data.find(b"\n")]))
        if header is None or type(header.get("base_lsn")) is not int:
            raise ValueError(f"{path}: no readable segment header")
        return int(header["base_lsn"])

    def end_lsn(self) -> int:
        """The LSN just after the last WAL byte on the (simulated) disk."""
        if self._end is None:
            names = sorted(
                n
                for n in (self.fs.listdir(self.wal_dir) if self.fs.is_dir(self.wal_dir) else [])
                if segment_seq(n) is not None
            )
            if not names:
                self._end = 0
            else:
                path = posixpath.join(self.wal_dir, names[-1])
                try:
                    self._end = self._header_base(path) + len(self.fs.files[path].data)
                except (ValueError, KeyError):
                    self._end = 0  # an unreadable header: recovery will say what is wrong
        return self._end


def survivors(fs: SimFS, model: str, torn: int = 0) -> SimFS:
    """The files a restarted machine finds after a crash under `model` (or SUBSETS, `torn` a mask)."""
    if model not in (*CRASH_MODELS, SUBSETS):
        raise BeaverError(f"crash model must be one of {', '.join(CRASH_MODELS)}, got {model!r}")
    return fs.after_crash(model, torn)
