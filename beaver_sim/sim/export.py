"""Export a simulated data directory to real files, so `beaver wal dump`, `wal verify`, `status`
and the other operator commands read a simulated run exactly as they read a real one.

The files are what a run's SimFS holds under the simulated data directory: at the end of the run
(the controller stopped: the WAL synced, a snapshot written), or what the restarted machine found
after a crash (SimFS.after_crash under the crash's model). They are written into a new directory
next to the destination, each file and the directory fsynced, then renamed into place: an export
that fails part way leaves nothing behind. Modes as `beaver run` makes them (0700 / 0600)."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from beaver_sim.core.types import BeaverError
from beaver_sim.sim.fs import SimFS
from beaver_sim.storage.fs import RealFS


def check_destination(dest: str) -> None:
    """Refuse, before anything runs, a destination that holds anything (nothing is overwritten)."""
    path = Path(dest)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BeaverError(f"--export {dest}: exists and is not an empty directory (nothing overwritten)")


def export(fs: SimFS, data_dir: str, dest: str) -> list[str]:
    """Write every file of `fs` under `data_dir` (a simulated path) below `dest`; returns their
    paths relative to `dest`, sorted. A preallocated WAL segment keeps its zero remainder."""
    check_destination(dest)
    root = SimFS._norm(data_dir)
    inside = sorted(p for p in fs.files if p.startswith(root + "/"))
    if not inside:
        raise BeaverError(f"--export {dest}: the simulated run left no files under {data_dir}")
    real = RealFS()
    parent = os.path.dirname(os.path.abspath(dest))
    real.makedirs(parent)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dest))}.", dir=parent)
    try:
        written = [posixpath.relpath(path, root) for path in inside]
        for path, rel in zip(inside, written):
            target = os.path.join(tmp, *rel.split("/"))
            real.makedirs(os.path.dirname(target))
            inode = fs.files[path]
            f = real.create(target)
            try:
                f.write(bytes(inode.data))
                f.preallocate(inode.size)  # the zeros after a preallocated segment's records
                f.sync()
            finally:
                f.close()
        for directory in sorted({os.path.dirname(os.path.join(tmp, *r.split("/"))) for r in written}):
            real.sync_dir(directory)
        real.sync_dir(tmp)
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty (checked): the rename puts the export in its place
        real.replace(tmp, dest)
        real.sync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
