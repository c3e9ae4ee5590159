"""One data directory served for real, and reached with or without its server.

`Service` wires the config, RealFS, Storage, the Controller on a RealClock, the worker pool, the
data-directory lock, the /metrics server and the control socket; `beaver run` is `Service.start`,
`run`, `close` on an asyncio loop, and tests use it the same way in-process. The commands that talk
to a directory go through the same module because they must agree with the server on the lock and
the socket: `enqueue` (and the operator's `operate_on`) hand their records to a running controller
over its socket, or take the lock, recover and log them themselves; `status_of` asks it, or reads
the files with `read_state`, which rebuilds the state read-only (newest valid snapshot + WAL scan,
no truncation, no rename, no lock) while another process may be writing them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from beaver_sim.core.controller import Controller, Enqueued
from beaver_sim.core.durable import Storage
from beaver_sim.core.repair import Inspection, inspect
from beaver_sim.core.types import Abandoned, BeaverError, Config, CorruptLog, OnResult
from beaver_sim.metrics import MetricsServer, QueueMetrics, Sample, sample
from beaver_sim.runtime import forks
from beaver_sim.runtime.clock import RealClock, TimerLateness
from beaver_sim.runtime.jobs import answer as answer_jobs
from beaver_sim.runtime.lock import DataDirLock, DataDirLocked
from beaver_sim.runtime.server import (
    ControlLost,
    ControlServer,
    ControlUnavailable,
    ask,
    request,
    socket_path,
)
from beaver_sim.runtime.snapshots import ForkedSnapshots
from beaver_sim.runtime.workers import Handler, PoolWorkers
from beaver_sim.storage import wal
from beaver_sim.storage.fs import RealFS

Job = tuple[Any, ...]  # (id, payload) or (id, payload, when): Controller.enqueue
IDLE_POLL = 0.02  # seconds between idle checks for --exit-when-idle and the shutdown drain
# `beaver run` waits this long for a lock held by anything but another `beaver run` (an offline
# `beaver enqueue` holds it for one recovery and one fsync), polling every LOCK_POLL seconds
LOCK_WAIT = 60.0
LOCK_POLL = 0.01
WARN_EVERY = 10.0  # seconds: a warning of one kind is printed at most this often (with a count)
SAY_WAITING = 0.5  # seconds a stop waits for its final snapshot before saying so
# Dead jobs `requeue --dead` revives at once on a running controller, and the pause between two
# slices: a REVIVE logged and applied takes ~5 us, so a slice holds the loop ~5 ms (30,000 dead jobs
# at once held it 120-160 ms). The pause lets the loop run everything else that is ready, through
# as many turns as it takes: a request goes through ~10 turns (read, answer, flush, write), and with
# a slice in every turn (no pause) it waited for as many slices, and their fdatasyncs, as before
# for the whole (bench/BENCHMARKS.md, "One client per share").
REVIVE_SLICE = 1000
REVIVE_PAUSE = 0.001


class Interrupted(BeaverError):
    """An operation stopped midway by the controller's stop: what it did stays, the rest is not
    done (`requeue --dead` sent again does it)."""


class Service:
    """A running controller on one data directory, with everything around it."""

    def __init__(
        self,
        config: Config,
        *,
        serve_metrics: bool = True,
        control_socket: bool = True,
        handlers: dict[str, Handler] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.serve_metrics, self.control_socket = serve_metrics, control_socket
        self.handlers = handlers
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._warned: dict[str, tuple[float, int]] = {}  # kind -> (when last printed, suppressed since)
        self.lock = DataDirLock(config.data_dir, role="run")
        self.metrics = QueueMetrics()
        self.lateness = TimerLateness()  # how late timers and results come (borderline attempts)
        self.metrics_server: MetricsServer | None = None
        self.control: ControlServer | None = None
        self.recovery_seconds = 0.0
        self.fatal: str | None = None  # why the service stopped on its own
        self._hurry = False
        self._stop: asyncio.Event | None = None
        self._acks: set[asyncio.Future[None]] = set()
        self.abandoned = 0  # attempts still running in the pool after close (results discarded)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the metrics port, lock, recover, open the control socket, start the controller. A
        port in use fails before the data directory is created; the controller starts last, so a
        server that cannot start leaves the log as it was."""
        self.loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        loop.set_exception_handler(self._on_loop_error)
        # a bad handler fails before the lock
        self.workers = PoolWorkers(loop, self.config, self.handlers, on_spare_full=self._spare_full)
        sock = socket_path(self.config.data_dir) if self.control_socket else ""
        try:  # what can fail without touching the data directory fails first: the port, the lock
            if self.serve_metrics:
                self.metrics_server = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
                forks.keep_from_children(self.metrics_server.httpd.socket.fileno())
            await self._acquire_lock()
        except BaseException:
            self._close_metrics()
            self.workers.close(timeout=0)
            raise
        storage = None
        try:
            storage = Storage.from_config(
                RealFS(), self.config, timer=time.perf_counter, on_sync=self.metrics.wal_fsync.observe
            )
            if self.config.wal_preallocate == "auto" and storage.wal.preallocate == "none":
                self.log(
                    f"wal_preallocate: auto: the file system of {self.config.wal_dir} does not support "
                    "fallocate; WAL segments are not preallocated (none)"
                )
            # the recovered state is long-lived and free of cycles: out of the collector's sight, no
            # full collection walks its million objects again (0.2 s each at a million jobs)
            gc.freeze()
            clock = RealClock(loop, self.lateness)
            self.snapshots = ForkedSnapshots(loop, self.log)  # written off the loop
            self.controller = Controller(self.config, clock, storage, self.workers, self.snapshots)
            self.workers.watch(self.lateness, self._dispatched_at)
            self.metrics.attach(self.sample)
            if sock:
                self.control = ControlServer(sock, self._answer, self.warn)
                await self.control.start()
            await self.workers.ready()  # worker processes started: no first attempt pays for that
            t0 = time.perf_counter()
            self.controller.start()  # requeues what the previous process left in flight
            self.recovery_seconds = storage.report.seconds + time.perf_counter() - t0
        except BaseException:
            if storage is not None:
                with contextlib.suppress(BeaverError, OSError):  # report the first error, not this one
                    storage.close()
            await self._teardown()
            raise

    async def _acquire_lock(self) -> None:
        """Take the data directory's lock, waiting up to LOCK_WAIT seconds (and saying so once) while
        a process other than a `beaver run` holds it; another run's lock is refused at once."""
        deadline = self.loop.time() + LOCK_WAIT
        waiting = False
        while True:
            try:
                self.lock.acquire()
                return
            except DataDirLocked as locked:
                if locked.role == "run" or self.loop.time() > deadline:
                    raise
                if not waiting:
                    waiting = True
                    who = f"PID {locked.pid}" if locked.pid is not None else "a process starting up"
                    what = f"beaver {locked.role}" if locked.role else "a beaver command"
                    self.log(
                        f"waiting up to {LOCK_WAIT:g} s for the lock of {self.config.data_dir}, "
                        f"held by {who} ({what})"
                    )
            await asyncio.sleep(LOCK_POLL)

    def _spare_full(self) -> None:
        self.warn(
            "spare",
            f"warning: all {self.workers.spare_threads} spare threads hold timed-out attempts whose "
            "handlers have not returned (blocked in C?); a timed-out attempt now keeps its worker slot "
            "until its handler returns (status --json: abandoned_attempts; executor: process kills them)",
        )

    def warn(self, kind: str, line: str) -> None:
        """Log `line`, at most once every WARN_EVERY seconds per `kind`, counting the ones held back:
        a flood of bad clients must not become a flood of log lines."""
        now = time.monotonic()
        last, held = self._warned.get(kind, (-WARN_EVERY, 0))
        if now - last < WARN_EVERY:
            self._warned[kind] = (last, held + 1)
            return
        self._warned[kind] = (now, 0)
        self.log(line + (f" ({held} more like it since the last)" if held else ""))

    def _dispatched_at(self, job_id: str) -> float | None:
        """When the job's current attempt was dispatched (its lease's deadline less the timeout)."""
        lease = self.controller.state.leases.get(job_id)
        return None if lease is None else lease.deadline - self.config.task_timeout

    async def run(self, exit_when_idle: bool = False) -> None:
        """Serve until `request_stop` (a signal) or a fatal error; with `exit_when_idle`, also
        stop once nothing is pending, in flight or waiting to be written."""
        assert self._stop is not None
        if exit_when_idle:
            self._check_idle()
        await self._stop.wait()

    def request_stop(self) -> None:
        """Ask `run` to return; a second call skips the wait for running attempts."""
        assert self._stop is not None
        if self._stop.is_set():
            self._hurry = True
        self._stop.set()

    async def close(self) -> None:
        """Stop cleanly: stop accepting requests, let running attempts end (by result or timeout,
        at most task_timeout), stop the controller (WAL synced, snapshot), release the lock."""
        if self.control is not None:
            self.control.stop_accepting()
        if self.fatal is None:
            self.controller.drain()
            deadline = self.loop.time() + self.config.task_timeout + 1.0
            while self.controller.state.leases and not self._hurry and self.loop.time() < deadline:
                await asyncio.sleep(IDLE_POLL)
        try:
            await self._stop_controller()
        except (BeaverError, OSError) as e:
            self.fatal = self.fatal or str(e)
        await self._teardown()

    async def _stop_controller(self) -> None:
        """Stop the controller; its final snapshot is written by a child as usual, and waited for
        (saying so when it takes long). A second SIGINT abandons it: the WAL holds every record, so
        the next start only replays more. A periodic snapshot still being written is abandoned
        first: the final one covers more."""
        ctl, snapshots = self.controller, self.snapshots
        snapshots.abandon()
        ctl.halt()
        if self.fatal is None and ctl.snapshot_due:
            ctl.checkpoint()
            said, t0 = False, self.loop.time()
            while snapshots.writing is not None and not self._hurry:
                if not said and self.loop.time() - t0 > SAY_WAITING:
                    said = True
                    self.log(
                        f"stopping: waiting for snapshot {snapshots.writing} of {len(ctl.state)} jobs "
                        "to be written (Ctrl-C again skips it: the WAL holds every record)"
                    )
                await asyncio.sleep(IDLE_POLL)
            if snapshots.abandon() is not None:
                self.log("stopped without the final snapshot: the next start replays the log since the last")
        ctl.stop(snapshot=False)

    def _fail_acks(self) -> None:
        for fut in self._acks:
            if not fut.done():
                fut.set_exception(
                    BeaverError(f"the controller stopped before the jobs were durable: {self.fatal}")
                )

    async def _teardown(self) -> None:
        self._fail_acks()
        if self.control is not None:
            await self.control.close()
        self._close_metrics()
        self.abandoned = self.workers.close(timeout=0)
        self.lock.release()

    def _close_metrics(self) -> None:
        if self.metrics_server is not None:
            forks.release(self.metrics_server.httpd.socket.fileno())
            self.metrics_server.close()

    def _check_idle(self) -> None:
        if self.controller.idle:
            self.request_stop()
        else:
            self.loop.call_later(IDLE_POLL, self._check_idle)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception escaped a controller callback (a WAL write or fsync failed, a snapshot
        could not be written): stop acknowledging and shut down; the next start recovers. Not so
        when the control socket cannot accept (EMFILE, ENFILE, ENOBUFS: asyncio stops accepting
        for a second and tries again): a warning, and the queue runs on."""
        exc = context.get("exception")
        if "socket" in context and isinstance(exc, OSError):
            self.warn(
                "accept", f"warning: the control socket cannot accept a connection ({exc}); retrying in 1 s"
            )
            return
        if (
            isinstance(exc, ValueError)
            and self.control is not None
            and not self.control.listening
            and "_start_serving" in context.get("message", "")
        ):  # asyncio's accept retry, armed by the EMFILE above, ran after stop closed the socket
            return
        if not isinstance(exc, BeaverError | OSError):
            loop.default_exception_handler(context)  # a bug or a warning, not a disk: keep the details
        if exc is None:
            return
        self.fatal = f"{type(exc).__name__}: {exc}"
        self._hurry = True
        self._fail_acks()  # at once: a client waiting for durability must not wait for the shutdown
        if self._stop is not None:
            self._stop.set()

    # -- readers on other threads and the control socket ---------------------------------------

    def sample(self) -> Sample:
        """The metrics' copy of the controller's numbers, taken on the loop thread."""
        if threading.get_ident() == self._loop_thread:
            return self._sample()
        fut: concurrent.futures.Future[Sample] = concurrent.futures.Future()

        def take() -> None:
            fut.set_result(self._sample())

        try:
            self.loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop is closed: nothing changes any more
            return self._sample()
        return fut.result(timeout=10)

    def _sample(self) -> Sample:
        s = sample(self.controller, self.recovery_seconds, self.lateness)
        return replace(
            s,
            running_without_slot=self.workers.running_without_slot(),
            spare_threads=self.workers.spare_threads,
        )

    def status(self) -> dict[str, Any]:
        """status --json while running: the controller's counts plus who serves them."""
        return {
            **self.controller.status(),
            "running": True,
            "pid": os.getpid(),
            "data_dir": self.config.data_dir,
            "recovery_seconds": self.recovery_seconds,
            "stuck_workers": self.controller.stuck_workers(),  # timed out, being killed or interrupted
            "running_without_slot": self.workers.running_without_slot(),  # timed-out threads running on
            "spare_threads": self.workers.spare_threads,  # how many may (thread executor)
            "abandoned_attempts": [  # which: each a thread the runtime cannot stop (blocked in C)
                {"job": job, "attempt": attempt} for job, attempt in self.workers.detached_attempts()
            ],
            # seconds; an attempt drawn this close to its deadline is borderline (beaver_sim.fidelity)
            "timer_lateness_p99": self.lateness.p99(),
            "timer_lateness_max": self.lateness.max(),
        }

    async def _answer(self, req: dict[str, Any]) -> dict[str, Any] | Iterator[bytes]:
        op = req.get("op")
        if op == "status":
            return {"ok": True, "status": self.status()}
        if op in ("job", "jobs"):
            return answer_jobs(self.controller.state, req)
        if op not in ("enqueue", *OPERATIONS):
            return {"ok": False, "error": f"unknown request {op!r}"}
        if self.controller.stopped or self.fatal is not None:
            return {"ok": False, "retry": True, "error": "the controller is stopping"}
        if op in OPERATIONS:
            return await self._operate(req)
        jobs = req.get("jobs")
        if not isinstance(jobs, list) or not all(isinstance(j, list) and len(j) in (2, 3) for j in jobs):
            return {
                "ok": False,
                "error": "bad request: jobs must be a list of [id, payload] or [id, payload, when]",
            }
        durable = self.loop.create_future()
        self._acks.add(durable)

        def acknowledge() -> None:
            if not durable.done():
                durable.set_result(None)

        try:
            done = self.controller.enqueue(map(tuple, jobs), on_durable=acknowledge)
            await durable
        except BeaverError as e:
            return {"ok": False, "error": str(e)}
        finally:
            self._acks.discard(durable)
        return {"ok": True, "enqueued": done.new, "already_present": done.already_present}

    async def _operate(self, req: dict[str, Any]) -> dict[str, Any]:
        """`requeue` or `cancel`: answered once the records are durable."""
        op, ids, dead = req["op"], req.get("ids"), req.get("dead") is True
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, str) for i in ids)
            or (dead and op != "requeue")
        ):
            return {
                "ok": False,
                "error": "bad request: ids must be a list of job ids (or dead: true to requeue)",
            }
        durable = self.loop.create_future()

        def on_durable() -> None:
            if not durable.done():
                durable.set_result(None)

        self._acks.add(durable)
        try:
            if dead:
                n = await self._requeue_dead(ids, on_durable)
            else:
                n = operate(self.controller, op, ids, dead, on_durable)
            await durable
        except Interrupted as e:
            if durable.done():
                durable.exception()  # the stop failed it too: seen
            # sent again, named ids (requeued with the first slice) would be refused: not dead
            return {"ok": False, "error": str(e)} | ({} if ids else {"retry": True})
        except BeaverError as e:
            return {"ok": False, "error": str(e)}
        finally:
            self._acks.discard(durable)
        return {"ok": True, OPERATIONS[op]: n}

    async def _requeue_dead(self, ids: list[str], on_durable: Callable[[], None]) -> int:
        """`requeue --dead` on the running controller, REVIVE_SLICE jobs at a time, REVIVE_PAUSE
        apart, so that the other clients, dispatches and results wait a slice, never the whole: the
        jobs dead when the request came, oldest death first; the named `ids` go with the first
        slice, all or nothing as `requeue` (BeaverError naming the first not dead, nothing
        written). A job no longer dead when its slice comes (requeued by another client meanwhile,
        dropped by completed_retention) is skipped, not counted. `on_durable` goes with the last
        slice (records are durable in order). A stop or a fatal error between two slices is
        Interrupted: the jobs not reached are still dead, and `requeue --dead` sent again revives
        them."""
        ctl = self.controller
        dead = list(ctl.state.dead)  # a copy of the dead index's keys: C speed, O(dead)
        n = 0
        for start in range(0, max(len(dead), 1), REVIVE_SLICE):
            part = dead[start : start + REVIVE_SLICE]
            if start:
                await asyncio.sleep(REVIVE_PAUSE)  # everything else that is ready is served
                if ctl.stopped or self.fatal is not None:
                    raise Interrupted(
                        f"the controller is stopping: {n} jobs requeued, the others of the {len(dead)} "
                        "dead are still dead (requeue --dead again requeues them)"
                    )
                index = ctl.state.dead
                part = [job_id for job_id in part if job_id in index]
            else:
                part = [*ids, *part]
            n += ctl.requeue(part, on_durable if start + REVIVE_SLICE >= len(dead) else None)
        return n


# -- without a running controller --------------------------------------------------------------


class _NeverStarted:
    """The workers of a controller that is never started: it dispatches nothing."""

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        raise AssertionError("an offline controller never dispatches")

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        raise AssertionError("an offline controller never dispatches")


T = TypeVar("T")
OPERATIONS = {"requeue": "requeued", "cancel": "cancelled"}  # request op -> the answer's count


def operate(
    controller: Controller, op: str, ids: list[str], dead: bool, on_durable: Callable[[], None] | None = None
) -> int:
    """`requeue` the jobs `ids` (with `dead`, every dead job as well, oldest death first: the
    queue's dead index, O(dead) whatever the jobs) or `cancel` them."""
    if op == "cancel":
        return controller.cancel(ids, on_durable)
    if dead:
        ids = [*ids, *controller.state.dead]
    return controller.requeue(ids, on_durable)


def _offline(config: Config, act: Callable[[Controller], T]) -> T:
    """`act` on a controller of this process, the writer (the caller holds the lock): recover, let
    it log through the controller (same checks as a running one), sync. Never dispatches."""
    storage = Storage.from_config(RealFS(), config)
    loop = asyncio.new_event_loop()
    try:
        controller = Controller(config, RealClock(loop), storage, _NeverStarted())
        try:
            return act(controller)
        finally:
            controller.stop(snapshot=False)  # flush + fdatasync whatever the fsync policy, close
    finally:
        loop.close()


def enqueue(config: Config, jobs: list[Job], wait: float = 30.0) -> tuple[Enqueued, str]:
    """Make `jobs` durable in `config.data_dir`, through the running controller if one holds the
    lock, else directly. Returns (new and already present, how). Retry-safe: after any error or
    timeout, sending the same jobs again is right (Controller.enqueue). Waits up to `wait` seconds
    for a controller that holds the lock but is not serving yet (recovering), then gives up
    naming its PID."""
    payload = {"op": "enqueue", "jobs": [list(j) for j in jobs]}

    def answered(answer: dict[str, Any]) -> Enqueued:
        return Enqueued(answer["enqueued"], answer.get("already_present", 0))

    return _write(config, payload, answered, lambda c: c.enqueue(jobs), wait)


def operate_on(
    config: Config, op: str, ids: list[str], dead: bool = False, wait: float = 30.0
) -> tuple[int, str]:
    """`beaver requeue` / `beaver cancel`: through the running controller, else directly under the
    lock, exactly as `enqueue`. Returns (how many jobs, how)."""
    payload = {"op": op, "ids": ids} | ({"dead": True} if dead else {})
    return _write(config, payload, lambda a: a[OPERATIONS[op]], lambda c: operate(c, op, ids, dead), wait)


def _write(
    config: Config,
    payload: dict[str, Any],
    answered: Callable[[dict[str, Any]], T],
    offline: Callable[[Controller], T],
    wait: float,
) -> tuple[T, str]:
    """Send `payload` to the controller that holds the lock (`answered` reads its answer), or, when
    none does, take the lock and run `offline` on a controller of our own."""
    deadline = time.monotonic() + wait
    op = payload["op"]
    while True:
        lock = DataDirLock(config.data_dir, role=op)
        try:
            lock.acquire()
        except DataDirLocked as locked:
            try:
                answer = request(config.data_dir, payload)
            except ControlUnavailable:
                if time.monotonic() > deadline:
                    raise locked from None
            except ControlLost:  # killed mid-request: resending the same jobs is safe
                if time.monotonic() > deadline:
                    raise
            else:
                if answer.get("ok"):
                    return answered(answer), "via the running controller"
                if not answer.get("retry") or time.monotonic() > deadline:
                    raise BeaverError(answer.get("error", f"the controller refused the {op}")) from None
            time.sleep(0.05)  # the holder is starting up or shutting down: ask again
            continue
        try:
            return _offline(config, offline), "written directly: no controller running"
        finally:
            lock.release()


def read_state(config: Config, attempts: int = 3) -> Inspection:
    """Rebuild the state as recovery would (core.repair.inspect) without changing any file or
    taking the lock. A torn tail (a writer mid-append) ends the replay; other damage is CorruptLog.
    A running writer may delete segments or snapshots under us during a checkpoint: try again then."""
    fs = RealFS()
    if not fs.is_dir(config.data_dir):
        raise BeaverError(f"{config.data_dir}: no such data directory")
    problem: wal.Problem | None = None
    for _ in range(attempts):
        try:
            found = inspect(
                fs,
                config.wal_dir,
                config.snapshot_dir,
                retention=config.completed_retention,
                recovery=config.wal_recovery,
            )
        except FileNotFoundError:
            continue  # pruned or deleted while we read it
        if found.ok:
            return found
        problem = found.problem
    raise CorruptLog(f"{problem}; run `beaver wal verify`")


def status_of(config: Config) -> dict[str, Any]:
    """status --json: from the running controller when one answers (asked again while it is busy,
    as `beaver jobs` does), else from the files."""
    answer = ask(config.data_dir, {"op": "status"})
    if answer is None:
        found = read_state(config)
        return {**found.state.stats(), "running": False, "data_dir": config.data_dir}
    status: dict[str, Any] = answer["status"]
    return status
