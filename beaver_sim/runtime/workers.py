"""PoolWorkers: the real worker pool. Threads by default, processes (`executor: process`) for
CPU-bound handlers; each attempt's outcome goes back to the controller on the loop's thread.

A handler is chosen by the payload's `type`: `noop` returns at once; types listed in
`config.handlers` call `module:function(payload)`; `compute` and every other type run the seed's
simulated work, whose duration (uniform in [work_min, work_max], really slept) and outcome (failure
with probability failure_rate) are drawn on the loop thread from random.Random(seed) in dispatch
order, the same draws in the same order as the simulator's SimWorkers. A handler that raises is a
failed attempt, with the exception as its error.

Pool size: 2 x worker_count. The controller abandons an attempt that times out and frees its slot
at once, but a thread cannot be interrupted, so the abandoned attempt keeps its thread until it
returns. The spare half lets up to worker_count abandoned attempts finish while worker_count live
ones run; beyond that, new attempts wait for a thread and the wait counts toward their timeout
(bounded threads rather than one more thread per hung handler). Threads are only created when
no idle one exists, so a healthy pool uses worker_count threads."""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from beaver_sim.core.types import BeaverError, Config, OnResult

Handler = Callable[[dict[str, Any]], Any]


class SimulatedFailure(Exception):
    """The seed's simulated work failing, as drawn from the seeded RNG."""


def noop(payload: dict[str, Any]) -> None:
    """Return at once: for benchmarks and smoke tests."""


def simulated_work(duration: float, fail: bool) -> None:
    """The seed's work: sleep `duration` seconds, then fail if the draw said so."""
    time.sleep(duration)
    if fail:
        raise SimulatedFailure("simulated failure")


def resolve(spec: str) -> Handler:
    """The function `module:function` names; BeaverError if it cannot be imported."""
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise BeaverError(f"handler {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise BeaverError(f"handler {spec!r} is not callable")
    return fn


def call_spec(spec: str, payload: dict[str, Any]) -> Any:
    """Run `module:function` on `payload` in a pool process (functions travel by name)."""
    return resolve(spec)(payload)


def describe(exc: BaseException) -> str:
    """The error text logged for a failed attempt."""
    return f"{type(exc).__name__}: {exc}"


class PoolWorkers:
    """The Workers interface on a thread or process pool, reporting through `loop`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: Config, handlers: dict[str, Handler] | None = None
    ) -> None:
        self.loop, self.config = loop, config
        self.rng = random.Random(config.seed)
        self.specs = dict(config.handlers)
        # resolved here even for processes: a typo fails at start, not on the first job
        self.handlers: dict[str, Handler] = {"noop": noop}
        self.handlers.update({kind: resolve(spec) for kind, spec in self.specs.items()})
        self.handlers.update(handlers or {})
        self.process = config.executor == "process"
        self.outstanding: set[Future[Any]] = set()
        self.executor = self._new_executor()
        # outcomes waiting for the loop; one wake-up of the loop delivers all that arrived meanwhile
        self._results: deque[tuple[OnResult, str, int, bool, str | None]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    def _new_executor(self) -> Executor:
        size = 2 * self.config.worker_count
        if not self.process:
            return ThreadPoolExecutor(size, thread_name_prefix="beaver-worker")
        # forking a process that runs threads (metrics, pool) can copy a held lock: use a forkserver
        method = "forkserver" if sys.platform.startswith("linux") else None
        return ProcessPoolExecutor(size, mp_context=multiprocessing.get_context(method))

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        kind = payload.get("type")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            rng = self.rng  # drawn here, on the loop thread, so the seed fixes the sequence
            duration = rng.uniform(self.config.work_min, self.config.work_max)
            ok = rng.random() >= self.config.failure_rate
            fn, args = simulated_work, (duration, not ok)
        elif self.process and kind in self.specs:
            fn, args = call_spec, (self.specs[kind], payload)
        else:
            fn, args = handler, (payload,)
        try:
            fut = self.executor.submit(fn, *args)
        except BrokenProcessPool:  # a pool process died (killed, out of memory): start a new pool
            self.executor = self._new_executor()
            fut = self.executor.submit(fn, *args)
        self.outstanding.add(fut)
        fut.add_done_callback(partial(self._report, job_id, attempt, done))

    def _report(self, job_id: str, attempt: int, done: OnResult, fut: Future[Any]) -> None:
        """On the worker's (or the pool manager's) thread: post the outcome to the loop."""
        self.outstanding.discard(fut)
        if fut.cancelled():
            return  # only at shutdown; the attempt stays in flight in the log and is requeued
        exc = fut.exception()
        self._results.append((done, job_id, attempt, exc is None, None if exc is None else describe(exc)))
        with self._wake_lock:
            if self._wake_pending:
                return  # the loop is already due to deliver, this one included
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            pass  # the loop is closed: the controller stopped, the next start requeues this attempt

    def _deliver(self) -> None:
        """On the loop thread: hand every outcome that arrived to its `done` callback."""
        with self._wake_lock:
            self._wake_pending = False  # before draining, so an outcome appended later wakes us again
        results = self._results
        while results:
            done, job_id, attempt, ok, error = results.popleft()
            done(job_id, attempt, ok, error)

    def close(self, timeout: float) -> int:
        """Start nothing more and wait up to `timeout` seconds for running attempts; returns how
        many are still running (their results would be stale anyway)."""
        running = list(self.outstanding)
        self.executor.shutdown(wait=False, cancel_futures=True)
        _, not_done = wait(running, timeout=timeout)
        return len(not_done)
