"""DataDirLock: one writer per data directory, with fcntl.flock on <data_dir>/LOCK.

flock, not lockf/fcntl: a POSIX record lock is dropped when the process closes *any* descriptor of
the file and is not exclusive between threads of one process; an flock belongs to the open file
description and is released only when that is closed, or when the process dies (kill -9 included).
The holder writes its PID and role (`run`, `enqueue`) into the file so a refused second writer can
say who holds it, and `beaver run` can wait for a short-lived holder instead of failing. The
descriptor is kept from forked children (runtime.forks): a handler's child must not hold the lock."""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from beaver_sim.core.types import BeaverError
from beaver_sim.runtime import forks
from beaver_sim.storage.fs import FILE_MODE, RealFS

LOCK_NAME = "LOCK"


class DataDirLocked(BeaverError):
    """Another process holds the data directory's lock."""

    def __init__(self, data_dir: str, pid: int | None, role: str | None = None) -> None:
        who = f"PID {pid}" if pid is not None else "a process that has not written its PID yet"
        if role is not None and role != "run":
            who += f", beaver {role}"
        super().__init__(
            f"{data_dir} is locked by another beaver process ({who}); stop it or use another --data-dir"
        )
        self.pid, self.role = pid, role


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory; a context manager. `role` is what the
    holder is doing (written next to its PID), None for a short operator command."""

    def __init__(self, data_dir: str, role: str | None = None) -> None:
        self.data_dir, self.role = data_dir, role
        self.path = os.path.join(data_dir, LOCK_NAME)
        self.fd = -1

    def acquire(self) -> None:
        """Take the lock or raise DataDirLocked naming the holder's PID. Creates the directory."""
        # RealFS fsyncs each new directory's parent: else a power loss may lose the whole directory
        try:
            RealFS().makedirs(self.data_dir)
        except FileExistsError:  # a concurrent process made part of the path first: go on after it
            RealFS().makedirs(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = read_holder(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, pid, role) from None
        except BaseException:
            os.close(fd)
            raise
        forks.keep_from_children(fd)
        os.ftruncate(fd, 0)
        holder = f"{os.getpid()} {self.role}" if self.role else str(os.getpid())
        os.pwrite(fd, f"{holder}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Clear the PID (while still holding the lock, so no new holder's PID is erased) and unlock."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.ftruncate(fd, 0)
        finally:
            forks.release(fd)
            os.close(fd)  # closing the only descriptor releases the flock

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def read_holder(fd: int) -> tuple[int | None, str | None]:
    """The PID and role a holder wrote into the lock file (None for what it has not written)."""
    try:
        pid, _, role = os.pread(fd, 64, 0).decode().strip().partition(" ")
        return int(pid), role or None
    except (OSError, ValueError):
        return None, None
