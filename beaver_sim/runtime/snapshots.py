"""Snapshots written by a forked child, so that `beaver run`'s event loop never stops for one.

At a million jobs a snapshot is ~80 MB of JSON: encoding and writing it on the loop stalled every
enqueue, dispatch and timeout for over a second. Here the controller's thread syncs the WAL through
seq N (Storage.begin_checkpoint) and forks; the child holds a copy-on-write image of the state at
exactly seq N, writes snapshot N through the same `Storage.save_snapshot` (tmp, fsync, rename,
directory fsync) and exits; the loop watches the child's pidfd and, once it exited cleanly, runs
the rest of the checkpoint (Storage.end_checkpoint) on the loop. Why a fork and
not a thread: docs/architecture.md (Snapshots off the loop).

The child also prunes the old snapshots and deletes the WAL segments the oldest kept one covers
(Storage.compact: unlinks and directory fsyncs, tens of ms on a busy disk); the loop then starts
the new segment and forgets the deleted ones. Both orders are safe: a segment is deleted only once
a durable snapshot covers it, and the live segment never is.

The child is a fork of a threaded process (handler threads, the metrics server), so it does only
what needs no lock another thread may hold: pure computation over the state, orjson, crc32c and
os calls; no print, no logging, no import. It closes every inherited descriptor but its error
pipe, blocks SIGINT and SIGTERM (a Ctrl-C reaches the whole process group) and dies with its
parent (PR_SET_PDEATHSIG): a `beaver run` killed with SIGKILL leaves no writer behind, only a
`.tmp` file the next start removes. It reports a failure as one line on the pipe; the parent logs
it, and the queue runs on (the WAL holds every record)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from beaver_sim.core.controller import write_inline
from beaver_sim.core.durable import Storage

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved here, never in a child (dlopen after fork can hang)
_prctl = _libc.prctl
FORKS = hasattr(os, "pidfd_open") and hasattr(os, "fork")


@dataclass(slots=True)
class _Child:
    pid: int
    pidfd: int
    errors: int  # the read end of the child's error pipe
    seq: int
    done: Callable[[bool], None]
    started: float


class ForkedSnapshots:
    """A `SnapshotWriter` for the controller: one forked child per snapshot, at most one at a time
    (Controller.checkpoint guarantees it). Where fork or pidfd_open is missing it writes inline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: Callable[[str], None]) -> None:
        self.loop, self.log = loop, log
        self.child: _Child | None = None
        self.last_seconds = 0.0  # how long the last snapshot took, fork to exit

    def __call__(self, storage: Storage, done: Callable[[bool], None]) -> None:
        if not FORKS:
            write_inline(storage, done)
            return
        seq = storage.state.last_seq
        parent = os.getpid()
        r, w = os.pipe2(os.O_CLOEXEC)
        with warnings.catch_warnings():  # 3.12+ warns of fork with threads: the child keeps off locks
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            _in_child(storage, parent, w)  # never returns
        os.close(w)
        pidfd = os.pidfd_open(pid)
        self.child = _Child(pid, pidfd, r, seq, done, time.perf_counter())
        self.loop.add_reader(pidfd, self._exited)

    @property
    def writing(self) -> int | None:
        """The seq of the snapshot a child is writing, if any."""
        return None if self.child is None else self.child.seq

    def _reap(self) -> tuple[_Child, int, str]:
        child, self.child = self.child, None
        assert child is not None
        self.loop.remove_reader(child.pidfd)
        os.close(child.pidfd)
        _, status = os.waitpid(child.pid, 0)
        with contextlib.suppress(OSError):
            message = os.read(child.errors, 4096).decode(errors="replace").strip()
        os.close(child.errors)
        self.last_seconds = time.perf_counter() - child.started
        return child, os.waitstatus_to_exitcode(status), message

    def _exited(self) -> None:
        child, code, message = self._reap()
        if code == 0:
            child.done(True)
            return
        why = message or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        self.log(
            f"warning: snapshot {child.seq} failed ({why}); the WAL still holds every record, "
            "the next snapshot is tried after snapshot_interval"
        )
        child.done(False)

    def abandon(self) -> int | None:
        """Kill the child writing a snapshot, if any, and wait for it; returns its seq. Safe at any
        point: the old snapshots and the whole WAL are untouched until the rest of the checkpoint,
        which now does not run; a `.tmp` left behind is overwritten or removed at the next start."""
        if self.child is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGKILL)
        child, _, _ = self._reap()
        child.done(False)
        return child.seq


def _in_child(storage: Storage, parent: int, errors: int) -> None:
    """Write the snapshot of the state this child was forked with, report, and exit at once (no
    atexit, no finalizers: the parent's threads, sockets and loop are not ours to clean up)."""
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        # every inherited descriptor but the error pipe: a client's connection accepted an instant
        # before the fork (not yet guarded by runtime.forks) would not reach EOF until we exit
        os.closerange(3, errors)
        os.closerange(errors + 1, os.sysconf("SC_OPEN_MAX"))
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        gc.disable()  # no collection walking (and copying) the inherited heap
        storage.save_snapshot()
        storage.compact()  # the unlinks and directory fsyncs here, not on the loop
    except BaseException as e:  # whatever it is, the parent logs it in one line
        code = 1
        with contextlib.suppress(BaseException):
            os.write(errors, f"{type(e).__name__}: {e}".encode(errors="replace")[:4000])
    os._exit(code)
