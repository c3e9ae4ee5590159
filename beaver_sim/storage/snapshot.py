"""SnapshotStore: the whole queue state at seq N, written so that a crash leaves the old or the new.

File `snap-<N:020d>.json`: a header line `{"magic","v","last_included_seq","body_len","body_crc32c"}`
and the body line (JobQueue.to_state()). Written as tmp, fsync, os.replace, fsync of the directory
(the seed's WriteFile + Rename had neither fsync). The two newest are kept; a newest that fails its
checksum is renamed `.broken` and the older one is used."""

from __future__ import annotations

import gc
import posixpath
import re
from dataclasses import dataclass

import orjson
from crc32c import crc32c

from beaver_sim.core.queue import SCHEMA_VERSION, JobQueue
from beaver_sim.core.types import BeaverError, CorruptLog
from beaver_sim.storage.fs import FS

MAGIC = "beaver-snap"
_SNAPSHOT = re.compile(r"snap-(\d{20})\.json")


def snapshot_name(seq: int) -> str:
    return f"snap-{seq:020d}.json"


def encode(q: JobQueue) -> bytes:
    """Header line + body line for the state of `q` at `q.last_seq`."""
    body = orjson.dumps(q.to_state())
    header = orjson.dumps(
        {
            "magic": MAGIC,
            "v": SCHEMA_VERSION,
            "last_included_seq": q.last_seq,
            "body_len": len(body),
            "body_crc32c": crc32c(body),
        }
    )
    return header + b"\n" + body + b"\n"


def decode(data: bytes, path: str) -> JobQueue:
    """Check and load one snapshot file; CorruptLog if damaged, BeaverError if from a newer version."""
    nl = data.find(b"\n")
    try:
        header = orjson.loads(data[:nl]) if nl > 0 else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise CorruptLog(f"{path}: not a beaver snapshot (bad header)")
    if header.get("v") != SCHEMA_VERSION:
        raise BeaverError(
            f"{path}: snapshot schema version {header.get('v')} is not supported "
            f"(this version reads {SCHEMA_VERSION})"
        )
    end = len(data)
    while end > nl + 1 and data[end - 1] == 0x0A:  # rstrip(b"\n") without copying the body twice
        end -= 1
    body = memoryview(data)[nl + 1 : end]
    # .get: a damaged header that still parses must read as corruption, not raise KeyError
    if len(body) != header.get("body_len") or crc32c(body) != header.get("body_crc32c"):
        raise CorruptLog(f"{path}: snapshot body fails its checksum")
    # A large state is millions of objects and no cycles: with the cyclic GC on, its passes would
    # walk the growing heap again and again (half of the decode time at a million jobs), as in scan.
    enabled = gc.isenabled()
    gc.disable()
    try:
        q = JobQueue.from_state(orjson.loads(body))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise CorruptLog(f"{path}: snapshot body is not a valid state ({e})") from e
    finally:
        if enabled:
            gc.enable()
    if q.last_seq != header.get("last_included_seq"):
        raise CorruptLog(f"{path}: body seq {q.last_seq} differs from header")
    return q


@dataclass(slots=True)
class Loaded:
    state: JobQueue
    path: str | None
    seq: int
    size: int
    broken: list[str]


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
        return [int(m.group(1)) for n in names if (m := _SNAPSHOT.fullmatch(n))]

    def path(self, seq: int) -> str:
        return posixpath.join(self.directory, snapshot_name(seq))

    def save(self, q: JobQueue) -> str:
        """Write the state of `q` as snapshot `q.last_seq`: tmp, fsync, rename, fsync directory."""
        fs = self.fs
        path = self.path(q.last_seq)
        f = fs.create(path + ".tmp")
        f.write(encode(q))
        fs.mark("snapshot-tmp-written")
        f.sync()
        f.close()
        fs.mark("snapshot-tmp-synced")
        fs.replace(path + ".tmp", path)
        fs.mark("snapshot-renamed")
        fs.sync_dir(self.directory)
        fs.mark("snapshot-dir-synced")
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
            self.fs.mark("snapshots-pruned")
        return kept[0] if len(kept) >= self.keep else 0

    def load(self) -> Loaded:
        """The newest snapshot that verifies; damaged ones are renamed `.broken` and skipped."""
        broken: list[str] = []
        for seq in reversed(self.seqs()):
            path = self.path(seq)
            data = self.fs.read_bytes(path)
            try:
                q = decode(data, path)
            except CorruptLog:
                self.fs.replace(path, path + ".broken")
                self.fs.sync_dir(self.directory)
                broken.append(path)
                continue
            return Loaded(q, path, seq, len(data), broken)
        return Loaded(JobQueue(), None, 0, 0, broken)
