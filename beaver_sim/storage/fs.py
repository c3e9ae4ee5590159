"""The file-system interface the WAL and snapshots use, and RealFS, its implementation on os calls.

Durability needs three things the page cache does not give: the file's bytes synced (fdatasync),
a rename made durable by syncing its directory, and writes that never stop short. RealFS does all
three; `beaver_sim.sim.fs.SimFS` models them in memory so a crash can be cut at any byte or call.

A preallocated file (`FileHandle.preallocate`) is extended with zeros ahead of need, so that later
writes overwrite blocks that exist already and their fdatasync has no file size to commit."""

from __future__ import annotations

import errno
import os
from typing import Protocol

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
# Jobs' payloads may be private: data files are owner-only, as PostgreSQL's data directory is. The
# umask can only narrow these; to share a data directory, grant access to its parent with ACLs or groups.
FILE_MODE = 0o600
DIR_MODE = 0o700


class FileHandle(Protocol):
    """An open file: every write is whole, `sync` makes the written bytes durable."""

    def write(self, data: bytes) -> None: ...
    def preallocate(self, size: int, zeros: bool = False) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...


class FS(Protocol):
    """What storage needs from a file system. Paths are strings; listings are sorted. One may also
    offer `read_written(path)`, `read_bytes` less zeros it need not read (RealFS's); the WAL's
    reader uses it where it exists (storage/wal.py `log_bytes`)."""

    def open_append(self, path: str) -> FileHandle: ...
    def open_at(self, path: str, offset: int) -> FileHandle: ...
    def create(self, path: str) -> FileHandle: ...
    def read_bytes(self, path: str) -> bytes: ...
    def exists(self, path: str) -> bool: ...
    def is_dir(self, path: str) -> bool: ...
    def listdir(self, path: str) -> list[str]: ...
    def makedirs(self, path: str) -> None: ...
    def size(self, path: str) -> int: ...
    def replace(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def truncate(self, path: str, size: int) -> None: ...
    def sync_dir(self, path: str) -> None: ...
    def can_fallocate(self, directory: str) -> bool: ...


_ZEROS = bytes(1 << 20)


def _data_end(fd: int) -> int:
    """Where the hole that runs to the end of `fd`'s file begins (its size if none is reported).
    SEEK_HOLE finds the next hole (the end of the file counts as one), SEEK_DATA whether data
    follows it (ENXIO: none)."""
    pos = 0
    try:
        while True:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            try:
                pos = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return hole
                raise
    except (AttributeError, OSError):  # no SEEK_HOLE here, a file system that refuses it, a race
        return os.fstat(fd).st_size


class RealFile:
    """A file descriptor with a write loop (write(2) may be short) and fdatasync."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self.fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def preallocate(self, size: int, zeros: bool = False) -> None:
        """Extend the file to `size` bytes of zeros (never shrink it; the write offset stays).
        posix_fallocate only maps blocks (ext4/xfs: unwritten extents, fast); `zeros` writes
        them instead, as PostgreSQL does, and is the fallback where fallocate is unsupported.
        Not durable until `sync`."""
        start = os.fstat(self.fd).st_size
        if size <= start:
            return
        if not zeros:
            try:
                os.posix_fallocate(self.fd, start, size - start)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        while start < size:
            start += os.pwrite(self.fd, memoryview(_ZEROS)[: size - start], start)

    def sync(self) -> None:
        _fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RealFS:
    """The FS interface on the operating system's files."""

    def open_append(self, path: str) -> RealFile:
        return RealFile(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def open_at(self, path: str, offset: int) -> RealFile:
        """Write from `offset` on (a preallocated file: over its zeros); the file must exist."""
        f = RealFile(path, os.O_WRONLY)
        try:
            os.lseek(f.fd, offset, os.SEEK_SET)
        except OSError:
            f.close()
            raise
        return f

    def create(self, path: str) -> RealFile:
        return RealFile(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_written(self, path: str) -> bytes:
        """`read_bytes(path)` less the hole that ends the file, if the file system reports one
        (lseek SEEK_HOLE / SEEK_DATA): blocks preallocated with fallocate and never written. A hole
        reads as zeros, so only zeros are left out. Why: a WAL segment is preallocated to 64 MiB,
        and reading its zeros cost a reader 30-100 ms (the scan strips them: storage/wal.py
        `log_bytes`). A block counts as data once written or read into the page cache (a file
        `cat` whole reads whole until the cache drops it); where holes are not reported, all is."""
        with open(path, "rb") as f:
            end = _data_end(f.fileno())
            f.seek(0)  # _data_end moved the descriptor's offset
            return f.read(end)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str) -> None:
        if os.path.isdir(path):
            return
        parent = os.path.dirname(os.path.abspath(path))
        if parent != os.path.abspath(path):
            self.makedirs(parent)
        os.mkdir(path, DIR_MODE)
        self.sync_dir(parent)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def can_fallocate(self, directory: str) -> bool:
        """Whether posix_fallocate works on `directory`'s file system (`wal_preallocate: auto`):
        tried on a probe file, removed (named .tmp, so a crash leaves nothing the next open keeps)."""
        path = os.path.join(directory, ".fallocate-probe.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.posix_fallocate(fd, 0, 4096)
            return True
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            return False
        finally:
            os.close(fd)
            os.remove(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
