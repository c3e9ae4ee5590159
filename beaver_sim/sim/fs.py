"""SimFS: an in-memory file system that knows what a crash would keep.

For every file it records the bytes *written* (what a process crash keeps: the page cache survives)
and the bytes *durable* (what its last sync made safe). For every directory entry it records whether
the create or rename that made it has been made durable by syncing the directory. `after_crash`
returns the files that survive under a crash model (`CRASH_MODELS`, docs/contracts.md says which
file systems show each):
- `process`: kill -9; the page cache survives, every call took effect;
- `power-loss`: only synced bytes, under names a directory fsync made durable;
- `metadata-first`: every create, rename, unlink and truncation issued before the crash is on the
  disk, in issue order, with no directory fsync (a journal commit, triggered by another file's
  fsync or the commit timer, carried them), but a file's data is only what its own fsync made
  durable: a tmp file renamed before its fsync is empty or short (ext4 delayed allocation, xfs,
  btrfs; ALICE, OSDI '14);
- `torn-blocks`: names as `power-loss`; every unsynced write reaches the disk in `BLOCK`-sized
  pieces in any order: of the unsynced blocks of a file every second one is kept, starting with
  the second, so a later block survives while an earlier one reads as zeros or as its old bytes
  (an overwrite in place becomes a mix of old and new).
For a bounded exhaustive search (`SUBSETS`, not a model of its own), `unsynced_units` lists what a
crash may or may not have kept: each name whose entry differs from its durable one, and each
unsynced `BLOCK` of each file; `after_crash(SUBSETS, mask)` keeps exactly the units whose bit is
set (any subset, so any order of the writes between two syncs, as CrashMonkey explores).

A `hook` can stop the world before any call or in the middle of any write: that is how crash
points are placed. Besides the calls, it sees the persistence points of the storage protocol as op
"mark", reached right after the call that completes them, which SimFS recognises by the file names
(log_format.segment_seq, snapshot.snapshot_seq); the production code names no point itself:
`snapshot-tmp-written` / `-synced` (a snapshot's temp file written, synced), `snapshot-renamed`,
`snapshot-dir-synced`, `snapshots-pruned` (a directory sync after a snapshot was renamed into it,
after snapshots were removed from it), `wal-rotated` and `wal-segments-deleted` (the same for WAL
segments). Sim-side code names its own with `mark`. A `fault`
(IOFault) makes the n-th write, sync, rename or directory sync fail with an OSError, as a full or
failing disk does.

A preallocated file is its written bytes followed by zeros up to its allocated size, kept as a
number (a 64 MiB segment costs nothing to copy at a crash). Writes land at the end of the written
bytes, over the zeros, as the WAL writes; a power loss keeps the durable bytes, the torn part of the
unsynced ones, and the zeros up to the size the last sync made durable."""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beaver_sim.storage.log_format import segment_seq
from beaver_sim.storage.snapshot import snapshot_seq

PROCESS = "process"
POWER_LOSS = "power-loss"
METADATA_FIRST = "metadata-first"
TORN_BLOCKS = "torn-blocks"
CRASH_MODELS = (PROCESS, POWER_LOSS, METADATA_FIRST, TORN_BLOCKS)
POWER_LOSSES = (POWER_LOSS, METADATA_FIRST, TORN_BLOCKS)  # the machine stopped: unsynced data may go
SUBSETS = "subsets"  # after_crash(SUBSETS, mask): the unsynced units whose bit is set in mask survive
BLOCK = 512  # bytes: the unit `torn-blocks` tears at (a sector; records here are ~100 bytes)
SCHEME = "sim:"  # simulated paths are written sim:/run/wal/..., so they never pass for real ones

# hook(op, path, nbytes) -> None to go on, or the number of bytes of this write to keep before
# the crash (0 for any other call): SimFS then raises SimulatedCrash.
Hook = Callable[[str, str, int], "int | None"]


@dataclass(slots=True)
class IOFault:
    """A planned I/O error: the `nth` call of `op` ("write", "sync", "rename" or "dirsync", on any
    file, counted from when the fault is set) raises OSError(`code`). A failing write first puts
    `keep` of its bytes in the file (a short write; -1 keeps half); a failing sync makes nothing
    durable; a failing rename or directory sync changes nothing. Fires once."""

    op: str
    nth: int
    code: int = errno.ENOSPC
    keep: int = 0
    seen: int = 0

    @property
    def fired(self) -> bool:
        return self.seen >= self.nth

    def check(self, op: str, path: str) -> None:
        if op == self.op and not self.fired:
            self.seen += 1
            if self.fired:
                raise OSError(self.code, os.strerror(self.code), path)


class SimulatedCrash(BaseException):
    """The simulated machine stopped; a BaseException so no `except Exception` can swallow it."""


@dataclass(slots=True)
class _Inode:
    """`data` is what was written. What is durable is `data[:synced]`, unless the file was cut
    short since its last sync: then it is `old` (kept so that a sync copies nothing: O(1)).
    `size`: the allocated length when the file is longer than `data` (zeros after it);
    `synced_size`: the allocated length the last sync made durable; `low`: the shortest the file
    was cut to since its last sync (-1: not cut), what a committed truncation leaves of `old`."""

    data: bytearray = field(default_factory=bytearray)
    synced: int = 0
    old: bytes | None = None
    size: int = 0
    synced_size: int = 0
    low: int = -1

    def durable(self) -> bytes:
        return self.old if self.old is not None else bytes(self.data[: self.synced])

    def cut(self, size: int) -> None:
        if self.old is None and size < self.synced:
            self.old = bytes(self.data[: self.synced])
        del self.data[size:]
        self.synced = min(self.synced, size)
        self.size = min(self.size, size)
        self.low = size if self.low < 0 else min(self.low, size)

    def sync(self) -> None:
        self.synced, self.old, self.synced_size, self.low = len(self.data), None, self.size, -1

    def metadata_first(self) -> bytes:
        """The durable bytes, cut as the truncations since the last sync cut them (their metadata
        reached the disk; the data written after them did not)."""
        durable = self.durable()
        return durable[: self.low] if self.low >= 0 else durable

    def unsynced_blocks(self) -> range:
        """The `BLOCK`s of the file that hold written bytes its last sync did not make durable."""
        start = self.low if self.old is not None else self.synced  # the first byte that may differ
        if start >= len(self.data) and self.old is None:
            return range(0)
        return range(start // BLOCK, -(-len(self.data) // BLOCK))

    def with_blocks(self, keep: Callable[[int], bool]) -> bytearray:
        """The durable bytes with the unsynced blocks `keep` picks (by their index among them) laid
        over them. A lost block past the durable end reads as zeros; the file ends with its last
        kept block."""
        out = bytearray(self.durable())
        start = self.low if self.old is not None else self.synced
        data = self.data
        for k, block in enumerate(self.unsynced_blocks()):
            if keep(k):
                lo, hi = max(block * BLOCK, start), min((block + 1) * BLOCK, len(data))
                if len(out) < lo:
                    out += bytes(lo - len(out))
                out[lo:hi] = data[lo:hi]
        return out

    def torn_blocks(self) -> bytearray:
        """Every second unsynced block kept (the second, fourth, ...): a later block survives, an
        earlier one is lost."""
        return self.with_blocks(lambda k: k % 2 == 1)


class SimFile:
    """An open SimFS file; appends go to the end, as with O_APPEND. `snapshot_tmp`: a snapshot's
    temp file, whose write and sync are persistence points (`SimFS.points`)."""

    __slots__ = ("fs", "inode", "path", "snapshot_tmp")

    def __init__(self, fs: SimFS, path: str, inode: _Inode, snapshot_tmp: bool = False) -> None:
        self.fs, self.path, self.inode, self.snapshot_tmp = fs, path, inode, snapshot_tmp

    def write(self, data: bytes) -> None:
        fs = self.fs
        fs._echo = None
        if fs._at_dir_sync:
            fs._at_dir_sync.clear()
        if fs.hook is not None:
            keep = fs.hook("write", self.path, len(data))
            if keep is not None:
                self.inode.data += data[:keep]
                fs.bytes_written += keep
                raise SimulatedCrash(f"crash while writing {self.path}")
        if fs.fault is not None:
            try:
                fs.fault.check("write", self.path)
            except OSError:
                keep = len(data) // 2 if fs.fault.keep < 0 else min(fs.fault.keep, len(data))
                self.inode.data += data[:keep]
                fs.bytes_written += keep
                raise
        fs.write_calls += 1
        self.inode.data += data
        fs.bytes_written += len(data)
        if self.snapshot_tmp:
            fs._point("snapshot-tmp-written")

    def preallocate(self, size: int, zeros: bool = False) -> None:
        """Zeros up to `size` (fallocate and written zeros read the same); a crash point before,
        and a `write` fault fails it with nothing allocated. Durable at the next sync."""
        fs = self.fs
        fs._call("preallocate", self.path)
        if fs.fault is not None:
            fs.fault.check("write", self.path)
        self.inode.size = max(self.inode.size, size)

    def sync(self) -> None:
        fs = self.fs
        fs._echo = None
        if fs._at_dir_sync:
            fs._at_dir_sync.clear()
        if fs.hook is not None:
            fs._call("sync", self.path)
        if fs.fault is not None:
            fs.fault.check("sync", self.path)
        self.inode.sync()
        fs.syncs += 1
        if self.snapshot_tmp:
            fs._point("snapshot-tmp-synced")

    def close(self) -> None:
        pass


class SimFS:
    """The FS interface in memory, deterministic, with crash points and crash models."""

    def __init__(self) -> None:
        self.files: dict[str, _Inode] = {}  # the namespace as the running process sees it
        self.durable_names: dict[str, _Inode] = {}  # the namespace a power loss would leave
        self.dirs: set[str] = {"/"}
        self.hook: Hook | None = None
        self.fault: IOFault | None = None
        self.write_calls = 0
        self.bytes_written = 0
        self.syncs = 0
        self.dir_syncs = 0
        self.renames = 0
        self._at_dir_sync: dict[str, list[str]] = {}  # directory -> the points its next sync reaches
        self._echo: str | None = None  # the point just reached, with no call since

    @staticmethod
    def _norm(path: str) -> str:
        """`sim:/run/wal` and `/run/wal` name the same file: `sim:` marks a path as simulated."""
        return posixpath.normpath(posixpath.join("/", path.removeprefix(SCHEME)))

    def _call(self, op: str, path: str) -> None:
        self._echo = None
        if self._at_dir_sync and op != "remove" and op != "replace":
            self._at_dir_sync.clear()  # the directory sync that completes a point comes next, or never
        if self.hook is not None and self.hook(op, path, 0) is not None:
            raise SimulatedCrash(f"crash before {op} {path}")

    # -- persistence points ----------------------------------------------------------------------

    def _point(self, name: str) -> None:
        """Reach the named persistence point `name` (a crash point the hook sees as op "mark")."""
        self._call("mark", name)
        self._echo = name

    def _pend(self, directory: str, name: str) -> None:
        """`name` is reached if the next call that is not a rename or unlink syncs `directory`, and
        succeeds (as the storage code syncs a directory right after the names it changed there)."""
        names = self._at_dir_sync.setdefault(directory, [])
        if name not in names:
            names.append(name)

    def mark(self, point: str) -> None:
        """A persistence point named by sim-side code (a mutant's or a lab's own steps). Right after
        the same point reached by the call it follows (a wrapper naming what SimFS already saw),
        it is that point, not a second one."""
        if self._echo == point:
            self._echo = None
            return
        self._call("mark", point)

    def _parent_exists(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent not in self.dirs:
            raise FileNotFoundError(2, "No such file or directory", parent)

    def _inode(self, path: str) -> _Inode:
        inode = self.files.get(self._norm(path))
        if inode is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return inode

    # -- the FS interface ----------------------------------------------------------------------

    def open_append(self, path: str) -> SimFile:
        p = self._norm(path)
        self._call("open", p)
        self._parent_exists(p)
        inode = self.files.get(p)
        if inode is None:
            inode = self.files[p] = _Inode()
        return SimFile(self, p, inode)

    def open_at(self, path: str, offset: int) -> SimFile:
        """Write from `offset` on. Only zeros may follow it (they become part of the preallocated
        remainder): SimFS models writes at the end of the written bytes, which is all the WAL does."""
        p = self._norm(path)
        self._call("open", p)
        inode = self._inode(p)
        data = inode.data
        end = len(data)
        if offset > max(end, inode.size) or data.count(0, offset) != max(0, end - offset):
            raise ValueError(f"{path}: SimFS writes only at the end of the written bytes, not at {offset}")
        if offset < end:
            inode.cut(offset)
            inode.size = max(inode.size, end)
        elif offset > end:
            data += bytes(offset - len(data))
        return SimFile(self, p, inode)

    def create(self, path: str) -> SimFile:
        p = self._norm(path)
        self._call("create", p)
        self._parent_exists(p)
        inode = self.files.get(p)
        if inode is None:
            inode = self.files[p] = _Inode()
        else:
            inode.cut(0)
        name = posixpath.basename(p)
        return SimFile(self, p, inode, name.endswith(".tmp") and snapshot_seq(name[:-4]) is not None)

    def read_bytes(self, path: str) -> bytes:
        inode = self._inode(path)
        return bytes(inode.data) + bytes(max(0, inode.size - len(inode.data)))

    def exists(self, path: str) -> bool:
        p = self._norm(path)
        return p in self.files or p in self.dirs

    def is_dir(self, path: str) -> bool:
        return self._norm(path) in self.dirs

    def listdir(self, path: str) -> list[str]:
        p = self._norm(path)
        if p not in self.dirs:
            raise FileNotFoundError(2, "No such file or directory", path)
        names = [posixpath.basename(f) for f in self.files if posixpath.dirname(f) == p]
        names += [posixpath.basename(d) for d in self.dirs if d != p and posixpath.dirname(d) == p]
        return sorted(names)

    def makedirs(self, path: str) -> None:
        p = self._norm(path)
        new: list[str] = []
        while p not in self.dirs:  # directories are made durable at once, as RealFS does
            if p in self.files:  # a file anywhere on the path: os.mkdir fails the same way
                raise FileExistsError(17, "File exists", p)
            new.append(p)
            p = posixpath.dirname(p)
        self.dirs.update(new)

    def size(self, path: str) -> int:
        inode = self._inode(path)
        return max(len(inode.data), inode.size)

    def replace(self, src: str, dst: str) -> None:
        s, d = self._norm(src), self._norm(dst)
        self._call("replace", d)
        if self.fault is not None:
            self.fault.check("rename", d)
        self.renames += 1
        inode = self._inode(s)
        self._parent_exists(d)
        del self.files[s]
        self.files[d] = inode
        name, directory = posixpath.basename(d), posixpath.dirname(d)
        if snapshot_seq(name) is not None:
            self._point("snapshot-renamed")
            self._pend(directory, "snapshot-dir-synced")
        elif segment_seq(name) is not None:
            self._pend(directory, "wal-rotated")

    def remove(self, path: str) -> None:
        p = self._norm(path)
        self._call("remove", p)
        self._inode(p)
        del self.files[p]
        name, directory = posixpath.basename(p), posixpath.dirname(p)
        if snapshot_seq(name) is not None:
            self._pend(directory, "snapshots-pruned")
        elif segment_seq(name) is not None:
            self._pend(directory, "wal-segments-deleted")

    def truncate(self, path: str, size: int) -> None:
        p = self._norm(path)
        self._call("truncate", p)
        inode = self._inode(p)
        inode.cut(size)
        inode.sync()

    def can_fallocate(self, directory: str) -> bool:
        """No: `wal_preallocate: auto` keeps the simulator's segments appended (its outputs, and no
        64 MiB of zeros per segment in every sweep)."""
        return False

    def sync_dir(self, path: str) -> None:
        p = self._norm(path)
        points = self._at_dir_sync.pop(p, [])
        self._call("sync_dir", p)
        self._persist_dir(p)
        self.dir_syncs += 1
        for name in points:
            self._point(name)

    def _persist_dir(self, p: str) -> None:
        """What a directory fsync makes durable: the entries of `p` as they are now."""
        if self.fault is not None:
            self.fault.check("dirsync", p)
        durable = {k: v for k, v in self.durable_names.items() if posixpath.dirname(k) != p}
        durable.update((k, v) for k, v in self.files.items() if posixpath.dirname(k) == p)
        self.durable_names = dict(sorted(durable.items()))

    # -- crashes -------------------------------------------------------------------------------

    def after_crash(self, model: str, torn_bytes: int = 0) -> SimFS:
        """The files a restarted machine finds. `process`: everything written, as named now.
        `power-loss`: only durable names and durable bytes, plus the first `torn_bytes` of each
        file's unsynced appended tail (a torn write). `metadata-first`: every name as now, with
        its durable bytes. `torn-blocks`: durable names, durable bytes with every second unsynced
        block laid over them (`_Inode.torn_blocks`)."""
        if model not in CRASH_MODELS and model != SUBSETS:
            raise ValueError(f"unknown crash model {model!r}; expected one of {CRASH_MODELS}")
        out = type(self)()  # a subclass (a durability mutant) stays itself after a crash
        out.dirs = set(self.dirs)
        if model == SUBSETS:
            self._subset(out, torn_bytes)
        elif model == PROCESS:
            for path, inode in self.files.items():
                out.files[path] = _Inode(bytearray(inode.data), size=inode.size)
        elif model == METADATA_FIRST:
            for path, inode in self.files.items():
                out.files[path] = _Inode(bytearray(inode.metadata_first()), size=inode.synced_size)
        elif model == TORN_BLOCKS:
            for path, inode in self.durable_names.items():
                out.files[path] = _Inode(inode.torn_blocks(), size=inode.synced_size)
        else:
            for path, inode in self.durable_names.items():
                data = bytearray(inode.durable())
                if torn_bytes and inode.old is None:
                    data += inode.data[inode.synced : inode.synced + torn_bytes]
                out.files[path] = _Inode(data, size=inode.synced_size)
        # whatever survived a crash is what is on the disk now
        for inode in out.files.values():
            inode.sync()
        out.durable_names = dict(out.files)
        return out

    def unsynced_units(self) -> list[tuple[Any, ...]]:
        """What a crash may keep or lose, in a fixed order: ("name", path) for each entry that differs
        from its durable one (a create, rename or unlink not yet made durable), then ("block", path,
        k) for the k-th unsynced block of each file (of each inode once, under its first name)."""
        units: list[tuple[Any, ...]] = []
        for path in sorted(set(self.files) | set(self.durable_names)):
            if self.files.get(path) is not self.durable_names.get(path):
                units.append(("name", path))
        for path, inode in self._first_names().values():
            units += [("block", path, k) for k in range(len(inode.unsynced_blocks()))]
        return units

    def _first_names(self) -> dict[int, tuple[str, _Inode]]:
        """Each inode under a name now or durably, once: id -> (its first name in path order, it)."""
        out: dict[int, tuple[str, _Inode]] = {}
        for path, inode in sorted([*self.durable_names.items(), *self.files.items()], key=lambda pi: pi[0]):
            out.setdefault(id(inode), (path, inode))
        return out

    def _subset(self, out: SimFS, mask: int) -> None:
        """Fill `out` with what survives when exactly the units of `unsynced_units` whose bit is set
        in `mask` reached the disk."""
        kept = {unit for i, unit in enumerate(self.unsynced_units()) if mask >> i & 1}
        first = self._first_names()
        for path in sorted(set(self.files) | set(self.durable_names)):
            inode = self.files.get(path) if ("name", path) in kept else self.durable_names.get(path)
            if inode is not None:
                name = first[id(inode)][0]
                data = inode.with_blocks(lambda k: ("block", name, k) in kept)  # noqa: B023 (called here)
                out.files[path] = _Inode(data, size=inode.synced_size)

    def snapshot_files(self) -> dict[str, bytes]:
        """Path -> bytes written, sorted by path: for hashing and comparing runs (a preallocated
        file's zero remainder is left out: it is the same for the same run)."""
        return {p: bytes(self.files[p].data) for p in sorted(self.files)}
