"""Where a sweep's tasks run: `executor` gives a `concurrent.futures.Executor` (a process pool of
this machine, or a Dask `distributed` client for more than one) or None (serial: here), shut down
after the sweep unless passed in; `progress` draws a bar. A sweep sorts the rows that come back by
point, so its frame is the same whatever ran it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from beaver_sim.core.types import BeaverError


@contextmanager
def executor(spec: Executor | str | None, workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """The executor `spec` names (an Executor, or "process", "dask", "serial": None), created and
    shut down here unless one was passed in; `workers`: processes, `scheduler`: a Dask address."""
    if isinstance(spec, Executor):
        yield spec
    elif spec in (None, "process"):
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), initializer=_ignore_sigint) as pool:
            try:
                yield pool
            except KeyboardInterrupt:
                _terminate(pool)
                raise
    elif spec == "dask":
        from dask.distributed import Client, LocalCluster

        if scheduler:
            client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=workers or os.cpu_count(), threads_per_worker=1)
            client = Client(cluster)
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if not scheduler:
                cluster.close()
    elif spec == "serial":
        yield None
    else:
        raise BeaverError(f"executor must be process, dask or serial, got {spec!r}")


def _ignore_sigint() -> None:
    """In a pool's worker: Ctrl-C reaches the whole process group, and the parent alone handles it
    (a worker's KeyboardInterrupt would only print a traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C: drop the queued chunks and stop the workers now, not once their chunks end."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((pool._processes or {}).values()):  # no public way before Python 3.14
        proc.terminate()


class _NoBar:
    """No progress bar: what `progress` gives when none is wanted."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, wanted: bool | None) -> Any:
    """A tqdm bar (the notebook widget in Jupyter), or nothing when not wanted (None: wanted on a
    terminal)."""
    if wanted is False or (wanted is None and not sys.stderr.isatty()):
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pt", desc="crash sweep")
