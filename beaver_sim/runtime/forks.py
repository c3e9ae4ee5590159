"""Descriptors a forked child must not keep.

A handler may fork (a thread handler forks `beaver run` itself). The child gets a copy of every
descriptor, and an flock belongs to the open file description: a child still holding the LOCK
descriptor keeps the data directory locked after `beaver run` dies, so the next start is refused
until the child exits. Likewise a listening socket kept by the child holds the metrics port, and a
client's connection kept by it never reaches EOF. So each such descriptor is registered here, and in
every child forked from Python (os.fork, multiprocessing's fork) it is pointed at /dev/null at once:
the number stays valid (whatever later closes it closes /dev/null), the child's reference to the
lock, port or connection is gone. exec'd children do not need this: every descriptor here is
close-on-exec."""

from __future__ import annotations

import os

_guarded: set[int] = set()


def keep_from_children(fd: int) -> None:
    """From now on, a forked child does not keep descriptor `fd`."""
    _guarded.add(fd)


def release(fd: int) -> None:
    """Stop guarding `fd`: call this before closing it (its number may be reused)."""
    _guarded.discard(fd)


def _in_child() -> None:
    if not _guarded:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in _guarded:
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError:
            pass  # already closed by the parent's own bookkeeping race: nothing to keep
    os.close(null)
    _guarded.clear()


os.register_at_fork(after_in_child=_in_child)
