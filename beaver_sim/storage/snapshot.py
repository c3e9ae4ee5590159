"""SnapshotStore: an opaque state body at seq N, written so that a crash leaves the old or the new.

File `snap-<N:020d>.json`: a header line `{"magic","v","last_included_seq","body_len","body_crc32c"}`
and the body. The store checks the header and the body's checksum; what the body means (and which
versions `v` exist) is its reader's business (core/codec.py). Written as tmp, fsync, os.replace,
fsync of the directory (the seed's WriteFile + Rename had neither fsync). The two newest are kept; a
newest that fails its checksum, or that its reader calls corrupt, is renamed `.broken` and the older
one is used."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson

from beaver_sim.errors import BeaverError, CorruptLog
from beaver_sim.storage.fs import FS
from beaver_sim.storage.log_format import crc32c

MAGIC = "beaver-snap"
_SNAPSHOT = re.compile(r"snap-(\d{20})\.json")
T = TypeVar("T")


def snapshot_name(seq: int) -> str:
    """The file name of the snapshot that covers records 1..`seq`."""
    return f"snap-{seq:020d}.json"


def snapshot_seq(name: str) -> int | None:
    """The seq a snapshot's file name carries; None if `name` (a base name) is not a snapshot's."""
    m = _SNAPSHOT.fullmatch(name)
    return int(m.group(1)) if m else None


@dataclass(slots=True)
class Snapshot:
    """One verified snapshot file: its header's seq and version, and the body (a view, not a copy)."""

    seq: int
    version: int
    body: memoryview


def encode(seq: int, version: int, body: bytes) -> bytes:
    """Header line + body + newline: the whole file for a state `body` of format `version` at `seq`."""
    header = orjson.dumps(
        {
            "magic": MAGIC,
            "v": version,
            "last_included_seq": seq,
            "body_len": len(body),
            "body_crc32c": crc32c(body),
        }
    )
    return b"".join((header, b"\n", body, b"\n"))


def decode(data: bytes, path: str) -> Snapshot:
    """Check one snapshot file's header and body checksum; CorruptLog if damaged."""
    nl = data.find(b"\n")
    try:
        header = orjson.loads(data[:nl]) if nl > 0 else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise CorruptLog(f"{path}: not a beaver snapshot (bad header)")
    seq, version, size = header.get("last_included_seq"), header.get("v"), header.get("body_len")
    if type(seq) is not int or type(version) is not int:
        raise CorruptLog(f"{path}: not a beaver snapshot (bad header)")
    # the body is exactly body_len bytes, then one newline: anything else is damage
    start = nl + 1
    end = start + size if type(size) is int and size >= 0 else -1
    body = memoryview(data)[start:end]
    if end != len(data) - 1 or data[end] != 0x0A or crc32c(body) != header.get("body_crc32c"):
        raise CorruptLog(f"{path}: snapshot body fails its checksum")
    return Snapshot(seq, version, body)


@dataclass(slots=True)
class Loaded(Generic[T]):
    state: T | None  # None when no snapshot verifies
    path: str | None
    seq: int
    size: int
    broken: list[str] = field(default_factory=list)


class SnapshotStore:
    """Durable, atomic snapshots in one directory, newest two kept."""

    def __init__(self, fs: FS, directory: str, keep: int = 2) -> None:
        if fs.exists(directory) and not fs.is_dir(directory):
            raise BeaverError(f"{directory}: snapshot directory is a file")
        fs.makedirs(directory)
        self.fs, self.directory, self.keep = fs, directory, keep
        for name in fs.listdir(directory):
            if name.endswith(".tmp"):
                fs.remove(posixpath.join(directory, name))

    def seqs(self) -> list[int]:
        """last_included_seq of every snapshot file, oldest first."""
        names = self.fs.listdir(self.directory)
        return [seq for n in names if (seq := snapshot_seq(n)) is not None]

    def path(self, seq: int) -> str:
        return posixpath.join(self.directory, snapshot_name(seq))

    def save(self, seq: int, version: int, body: bytes) -> str:
        """Write `body` as snapshot `seq`: tmp, fsync, rename, fsync directory."""
        fs = self.fs
        path = self.path(seq)
        f = fs.create(path + ".tmp")
        f.write(encode(seq, version, body))
        f.sync()
        f.close()
        fs.replace(path + ".tmp", path)
        fs.sync_dir(self.directory)
        return path

    def prune(self) -> int:
        """Delete all but the newest `keep` snapshots; returns the seq through which the WAL may
        be deleted: the oldest kept snapshot's, once `keep` exist (else 0: keep a fallback)."""
        seqs = self.seqs()
        doomed, kept = seqs[: -self.keep], seqs[-self.keep :]
        for seq in doomed:
            self.fs.remove(self.path(seq))
        if doomed:
            self.fs.sync_dir(self.directory)
        return kept[0] if len(kept) >= self.keep else 0

    def load(self, read: Callable[[Snapshot, str], T]) -> Loaded[T]:
        """The newest snapshot that verifies, as `read(snapshot, path)` makes it. A file that fails
        its checksum, or that `read` finds corrupt (CorruptLog), is renamed `.broken` and skipped;
        any other error of `read` (a version it does not know) stops the load."""
        broken: list[str] = []
        for seq in reversed(self.seqs()):
            path = self.path(seq)
            data = self.fs.read_bytes(path)
            try:
                state = read(decode(data, path), path)
            except CorruptLog:
                self.fs.replace(path, path + ".broken")
                self.fs.sync_dir(self.directory)
                broken.append(path)
                continue
            return Loaded(state, path, seq, len(data), broken)
        return Loaded(None, None, 0, 0, broken)
