"""PoolWorkers: the real worker pool. Threads by default, processes (`executor: process`) for
CPU-bound handlers and handlers that may hang; each attempt's outcome goes back to the controller on
the loop's thread.

A handler is chosen by the payload's `type`: `noop` returns at once; types listed in
`config.handlers` call `module:function(payload)`; `compute` and every other type run the seed's
simulated work, whose duration (uniform in [work_min, work_max], really slept) and outcome (failure
with probability failure_rate) are a pure function of (seed, job id, attempt) (core.draws.Draws):
the simulator's SimWorkers draw the same numbers for the same attempt, whatever the dispatch order
and across restarts. What the real run adds is time: an attempt starts after its DISPATCH record
is synced, its sleep and result arrive late by however busy the machine is, and so does the timeout
timer, so an attempt that ends that close to its deadline may end the other way than simulated
(borderline). A handler that raises is a failed attempt, with the exception as its error; what it
returns is the job's result (the controller keeps it if it is JSON and fits max_result_bytes: a
process worker sends it as JSON, so a result that is not fails there). A handler whose signature
takes a second positional argument (required, or named `ctx`) is called `(payload, ctx)`, with
`ctx.job_id` and `ctx.attempt`: the attempt's identity, an idempotency key for its side effects.

A timed-out attempt must not take a worker with it (the controller's slot rule, core.types.Workers):
- processes: one process per running attempt, kept for the next one. At a timeout it is sent
  SIGTERM, SIGKILL after REAP_GRACE, and replaced; its slot is held until it is gone. Worker
  processes die with `beaver run`, kill -9 included (`_die_with_owner`).
- threads: a thread cannot be killed. At a timeout AttemptTimedOut is raised inside it (as Dramatiq
  does), which Python delivers at the handler's next bytecode: a loop or a sleep in small steps
  ends, a call blocked in C (a socket read without a timeout, a lock) does not. Up to SPARE_THREADS
  such attempts run on without a slot, in spare threads (status and metrics count them); beyond
  that a timed-out attempt keeps its slot until its thread returns and the controller waits, with
  no attempt spent. Threads are only created when no idle one exists.

A handler's failure is whatever it raises, SystemExit and KeyboardInterrupt included, described by
`describe_exception`, which never raises and bounds the text. Only a process can contain a handler
that ends its own process (os._exit, a crash in C): under threads that process is `beaver run`."""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import inspect
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from beaver_sim.core.draws import Draws
from beaver_sim.core.limits import PayloadRefused, result_json
from beaver_sim.core.types import Abandoned, BeaverError, Config, OnResult
from beaver_sim.runtime.clock import TimerLateness

Handler = Callable[..., Any]  # (payload) or (payload, ctx)


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler taking `(payload, ctx)` learns about its attempt."""

    job_id: str
    attempt: int


def takes_ctx(fn: Callable[..., Any]) -> bool:
    """Whether `fn` is called (payload, ctx): its second positional parameter is required or named
    `ctx` (so `def h(payload, retries=3)` keeps its default). Decided once per handler."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2:
        return positional[1].default is inspect.Parameter.empty or positional[1].name == "ctx"
    return False


class SimulatedFailure(Exception):
    """The seed's simulated work failing, as drawn for its attempt."""


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
        fn: object = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise BeaverError(f"handler {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise BeaverError(f"handler {spec!r} is not callable")
    return fn


@cache
def _resolved(spec: str) -> tuple[Handler, bool]:
    fn = resolve(spec)
    return fn, takes_ctx(fn)


def call_spec(spec: str, payload: dict[str, Any], ctx: Context) -> Any:
    """Run `module:function` on `payload` in a pool process (functions travel by name)."""
    fn, with_ctx = _resolved(spec)
    return fn(payload, ctx) if with_ctx else fn(payload)


MAX_ERROR_CHARS = 1000  # a failed attempt's description; the rest is cut, with a marker


def _text(get: Callable[[], object]) -> str | None:
    """`get()` if it returns an exact str: a handler's exception may raise anything, even SystemExit,
    from its __str__, or return a non-str (or a str subclass that overrides slicing)."""
    try:
        text = get()
        return str.__getitem__(text, slice(None)) if isinstance(text, str) else None
    except BaseException:
        return None


def describe_exception(exc: BaseException) -> str:
    """`Type: message` for a failed attempt, whatever the exception is. Never raises, so no worker
    dies describing one; at most MAX_ERROR_CHARS characters plus a marker (a 2 MB message must not
    become a 2 MB record), and valid UTF-8 (a lone surrogate would fail the WAL's JSON encoder)."""
    name = type(exc).__name__  # always a str: Python refuses any other
    message = _text(lambda: str(exc))
    if message is None:
        message = _text(lambda: repr(exc))
        message = f"<unprintable: {message}>" if message is not None else "<unprintable>"
    text = f"{name}: {message}" if message else name
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}... [{len(text) - MAX_ERROR_CHARS} more characters]"
    return text


SPARE_THREADS = 64  # timed-out thread attempts that may run on without a slot (docs/architecture.md)
REAP_GRACE = 0.5  # seconds from SIGTERM to SIGKILL for a timed-out handler process
PR_SET_PDEATHSIG = 1  # linux/prctl.h
Key = tuple[str, int]  # (job, attempt)
Report = Callable[[bool, object], None]  # an attempt's outcome (ok, error or result), from any thread
_RELEASED = Abandoned(False)


class AttemptTimedOut(BaseException):
    """Raised inside a handler's thread when its attempt timed out. A BaseException, like
    KeyboardInterrupt, so a handler's `except Exception` does not swallow it."""


def _interrupt(ident: int, exc: type[BaseException] | None) -> None:
    """Raise `exc` in thread `ident` at its next bytecode (None: drop one that is pending)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc) if exc else None)


class _Thread:
    """A daemon thread running the attempts handed to it, one at a time."""

    def __init__(self, pool: _ThreadPool) -> None:
        self.pool = pool
        self.inbox: queue.SimpleQueue[tuple[Key, Callable[..., Any], tuple[Any, ...], Report] | None]
        self.inbox = queue.SimpleQueue()
        self.key: Key | None = None  # the attempt its handler is running, while it runs
        self.cancelled: Key | None = None  # abandoned before it started
        self.detached = False
        self.thread = threading.Thread(target=self._run, name="beaver-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pool, ident = self.pool, threading.get_ident()
        while (task := self.inbox.get()) is not None:
            key, fn, args, report = task
            error: str | None = None
            result: object = None
            try:
                try:
                    with pool.lock:
                        self.key = key
                        if self.cancelled == key:
                            raise AttemptTimedOut("abandoned before it started")
                    result = fn(*args)
                except BaseException as e:  # SystemExit and KeyboardInterrupt too: an attempt's failure
                    error = describe_exception(e)
                finally:
                    with pool.lock:
                        self.key = None
                        _interrupt(ident, None)  # an interrupt that came after the handler returned
            except BaseException as e:  # an interrupt that landed while the failure was described
                error = describe_exception(e)
            keep = pool.ended(self, key)
            report(error is None, result if error is None else error)
            if not keep:
                return


class _ThreadPool:
    """Threads for attempts; see the module docstring for what a timeout does to one."""

    def __init__(self, spare: int, on_spare_full: Callable[[], None]) -> None:
        self.spare, self.on_spare_full = spare, on_spare_full
        self.lock = threading.Lock()
        self.idle: list[_Thread] = []
        self.running: dict[Key, _Thread] = {}
        self.detached = 0  # timed-out attempts still running without a slot
        self.closed = False

    def start(self, key: Key, fn: Callable[..., Any], args: tuple[Any, ...], report: Report) -> None:
        with self.lock:
            t = self.idle.pop() if self.idle else None
        if t is None:
            t = _Thread(self)
        with self.lock:
            self.running[key] = t
        t.inbox.put((key, fn, args, report))

    def abandon(self, key: Key) -> Abandoned:
        with self.lock:
            t = self.running.get(key)
            if t is None:
                return _RELEASED  # it has returned; its result is on the way, and stale
            if t.key == key:
                _interrupt(t.thread.ident or 0, AttemptTimedOut)
            else:
                t.cancelled = key
            if self.detached < self.spare:
                t.detached = True
                self.detached += 1
                return Abandoned(False, "handler interrupted")
        self.on_spare_full()
        return Abandoned(True, "handler interrupted")

    def ended(self, t: _Thread, key: Key) -> bool:
        """The thread's attempt is over; False if the thread should exit (the pool is closed)."""
        with self.lock:
            t.key = None
            del self.running[key]
            if t.detached:
                t.detached = False
                self.detached -= 1
            if not self.closed:
                self.idle.append(t)
            return not self.closed

    def detached_attempts(self) -> list[Key]:
        """The timed-out attempts running on in spare threads, in order."""
        with self.lock:
            return sorted(key for key, t in self.running.items() if t.detached)

    def close(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
            running = len(self.running)
        for t in idle:
            t.inbox.put(None)
        return running


def _die_with_owner() -> None:
    """In a worker process: never outlive `beaver run`, kill -9 included. Under a forkserver our
    parent is the forkserver, which exits once no process holds its "alive" pipe: we close the copy
    every forkserver child inherits, so `beaver run`'s death reaches it, and have the kernel send us
    SIGKILL when it exits (PR_SET_PDEATHSIG). If the owner died before that, exit now."""
    if sys.platform.startswith("linux"):
        from multiprocessing import forkserver

        server: Any = forkserver._forkserver  # (its stubs omit the private _forkserver_alive_fd)
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    owner = multiprocessing.parent_process()
    if owner is not None and not owner.is_alive():
        os._exit(1)


def _serve(conn: Connection) -> None:
    """A worker process: run the attempts sent over `conn`, one at a time, until it closes."""
    _die_with_owner()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: `run` decides
    conn.send(None)  # ready: started and imported, so no attempt's timeout pays for that
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            result = fn(*args)
        except BaseException as e:  # SystemExit too; os._exit ends the process: _exited reports it
            conn.send((False, describe_exception(e)))
            continue
        if result is None:
            conn.send((True, None))
            continue
        try:  # sent as JSON: any object may not pickle, and the controller keeps only JSON
            conn.send((True, result_json(result)))
        except PayloadRefused as e:
            conn.send((False, f"result refused: {e}"))


@dataclass(eq=False)
class _Proc:
    """A worker process, its end of the pipe, and the attempt it runs."""

    proc: BaseProcess
    conn: Connection
    key: Key | None = None
    report: Report | None = None
    stopping: bool = False
    ready: bool = False
    replaces: Callable[[], None] | None = None  # reports the gone process's attempt once this one is ready
    kill: Any = field(default=None, repr=False)  # the SIGKILL timer after a SIGTERM


class _ProcessPool:
    """`size` processes for attempts, driven from the loop thread (pipes and exit sentinels are
    loop readers); see the module docstring for what a timeout does to one. They are started up
    front, and a gone one's slot is released only once its replacement is ready: no attempt's
    timeout pays for a process start (which under load, or with `python -m`, takes a while)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop, self.size = loop, size
        # forking a process that runs threads (metrics, loop) can copy a held lock: use a forkserver
        linux = sys.platform.startswith("linux")
        self.ctx = (
            multiprocessing.get_context("forkserver") if linux else multiprocessing.get_context("spawn")
        )
        if linux:  # workers fork with these already imported
            self.ctx.set_forkserver_preload(["__main__", __name__])
        self.idle: list[_Proc] = []
        self.running: dict[Key, _Proc] = {}
        self.procs: list[_Proc] = []
        self.closed = False
        self.all_ready = asyncio.Event()
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> _Proc:
        ours, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(theirs,), name="beaver-worker", daemon=True)
        proc.start()
        theirs.close()
        p = _Proc(proc, ours)
        self.procs.append(p)
        self.loop.add_reader(ours.fileno(), self._readable, p)
        self.loop.add_reader(proc.sentinel, self._exited, p)
        return p

    def start(self, key: Key, fn: Callable[..., Any], args: tuple[Any, ...], report: Report) -> None:
        p = self.idle.pop() if self.idle else self._spawn()  # not ready yet only if used before ready()
        p.key, p.report = key, report
        self.running[key] = p
        with suppress(OSError):  # it died meanwhile: _exited reports the attempt
            p.conn.send((fn, args))

    def abandon(self, key: Key) -> Abandoned:
        p = self.running.get(key)
        if p is None or p.stopping:
            return _RELEASED
        p.stopping = True
        p.proc.terminate()
        p.kill = self.loop.call_later(REAP_GRACE, self._kill, p)
        return Abandoned(True, "handler killed")

    def _kill(self, p: _Proc) -> None:
        p.kill = None
        p.proc.kill()

    def _readable(self, p: _Proc) -> None:
        try:
            message = p.conn.recv()
        except (EOFError, OSError):
            self.loop.remove_reader(p.conn.fileno())  # it died: _exited reports
            return
        if message is None:  # started
            p.ready = True
            if p.key is None and p not in self.idle:
                self.idle.append(p)
            if p.replaces is not None:
                replaces, p.replaces = p.replaces, None
                replaces()
            if all(q.ready for q in self.procs):
                self.all_ready.set()
            return
        ok, detail = message
        if p.stopping or p.key is None or p.report is None:
            return  # lost the race with the kill: reported once the process is gone
        key, report = p.key, p.report
        p.key = p.report = None
        del self.running[key]
        self.idle.append(p)
        report(ok, orjson.loads(detail) if ok and detail is not None else detail)

    def _forget(self, p: _Proc) -> None:
        self.loop.remove_reader(p.proc.sentinel)
        self.loop.remove_reader(p.conn.fileno())
        if p.kill is not None:
            p.kill.cancel()
            p.kill = None
        self.procs.remove(p)
        if p in self.idle:
            self.idle.remove(p)

    def _exited(self, p: _Proc) -> None:
        """The process is gone (killed by us, or it crashed): only now is its slot free."""
        self._forget(p)
        code = p.proc.exitcode
        p.conn.close()
        report: Callable[[], None] | None = None
        if p.key is not None and p.report is not None:
            del self.running[p.key]
            why = "timeout: handler killed" if p.stopping else f"handler process died (exit code {code})"
            report = partial(p.report, False, why)
        if self.closed or len(self.procs) >= self.size:
            if report is not None:
                report()
            return
        self._spawn().replaces = report  # the slot is free once the replacement is ready

    def close(self, timeout: float) -> int:
        """Stop every process (running attempts stay in flight in the log, requeued by the next
        start); returns 0: nothing is left running."""
        self.closed = True
        procs = list(self.procs)
        for p in procs:
            self._forget(p)
            p.proc.terminate()
        for p in procs:
            p.proc.join(REAP_GRACE)
            if p.proc.exitcode is None:
                p.proc.kill()
                p.proc.join()
            p.conn.close()
        self.running.clear()
        return 0


class PoolWorkers:
    """The Workers interface on a thread or process pool, reporting through `loop`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        handlers: dict[str, Handler] | None = None,
        on_spare_full: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_spare_full` is called (on the loop thread) when a timed-out thread attempt keeps its
        slot because every spare thread is taken."""
        self.loop, self.config = loop, config
        self.draws = Draws(config.seed)
        self.specs = dict(config.handlers)
        # resolved here even for processes: a typo fails at start, not on the first job
        self.handlers: dict[str, Handler] = {"noop": noop}
        self.handlers.update({kind: resolve(spec) for kind, spec in self.specs.items()})
        self.handlers.update(handlers or {})
        self.with_ctx = {kind: takes_ctx(fn) for kind, fn in self.handlers.items()}
        self.process = config.executor == "process"
        self.pool = (
            _ProcessPool(loop, config.worker_count)
            if self.process
            else _ThreadPool(max(SPARE_THREADS, config.worker_count), on_spare_full)
        )
        self.lateness: TimerLateness | None = None  # see watch()
        self._dispatched_at: Callable[[str], float | None] | None = None
        self._due: dict[Key, float] = {}  # simulated work: when the simulator has its result
        # outcomes waiting for the loop; one wake-up of the loop delivers all that arrived meanwhile
        self._results: deque[tuple[OnResult, str, int, bool, object]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_pending = False

    def submit(self, job_id: str, attempt: int, worker: int, payload: dict[str, Any], done: OnResult) -> None:
        kind = payload.get("type")
        fn: Handler
        args: tuple[Any, ...]
        if not isinstance(kind, str) or (handler := self.handlers.get(kind)) is None:
            c = self.config
            duration, ok = self.draws.work(job_id, attempt, c.work_min, c.work_max, c.failure_rate)
            if self._dispatched_at is not None and (start := self._dispatched_at(job_id)) is not None:
                self._due[(job_id, attempt)] = start + duration
            fn, args = simulated_work, (duration, not ok)
        elif self.process and kind in self.specs:
            fn, args = call_spec, (self.specs[kind], payload, Context(job_id, attempt))
        elif self.with_ctx[kind]:
            fn, args = handler, (payload, Context(job_id, attempt))
        else:
            fn, args = handler, (payload,)
        self.pool.start((job_id, attempt), fn, args, partial(self._report, done, job_id, attempt))

    def watch(self, lateness: TimerLateness, dispatched_at: Callable[[str], float | None]) -> None:
        """Measure into `lateness` how late each simulated-work result reaches the loop after the
        time the simulator gives it (dispatch, from `dispatched_at`, plus the drawn duration): the
        sync of its DISPATCH record, the thread's wake-up, the sleep's overshoot and the loop's."""
        self.lateness, self._dispatched_at = lateness, dispatched_at

    async def ready(self) -> None:
        """Wait until every worker process has started (threads: at once)."""
        if isinstance(self.pool, _ProcessPool):
            await self.pool.all_ready.wait()

    def abandon(self, job_id: str, attempt: int, worker: int) -> Abandoned:
        """Stop a timed-out attempt: kill its process, or interrupt its thread."""
        due = self._due.pop((job_id, attempt), None)
        if due is not None and self.lateness is not None and (late := self.loop.time() - due) > 0:
            # the simulator had its result before this deadline: it is at least this late (the
            # latest results are exactly the ones a timeout cuts short; they must count)
            self.lateness.observe(late)
        return self.pool.abandon((job_id, attempt))

    def running_without_slot(self) -> int:
        """Timed-out attempts whose thread runs on without a worker slot (threads only)."""
        return self.pool.detached if isinstance(self.pool, _ThreadPool) else 0

    @property
    def spare_threads(self) -> int:
        """How many timed-out attempts may run on without a slot (0 for processes: they are killed)."""
        return self.pool.spare if isinstance(self.pool, _ThreadPool) else 0

    def detached_attempts(self) -> list[Key]:
        """(job, attempt) of each timed-out attempt running on without a slot (threads only)."""
        return self.pool.detached_attempts() if isinstance(self.pool, _ThreadPool) else []

    def _report(self, done: OnResult, job_id: str, attempt: int, ok: bool, error: object) -> None:
        """On the worker's thread (or the loop's, for processes): post the outcome to the loop."""
        self._results.append((done, job_id, attempt, ok, error))
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
        results, due, now = self._results, self._due, self.loop.time
        while results:
            done, job_id, attempt, ok, error = results.popleft()
            if due and (at := due.pop((job_id, attempt), None)) is not None and self.lateness is not None:
                self.lateness.observe(now() - at)
            done(job_id, attempt, ok, error)

    def close(self, timeout: float) -> int:
        """Start nothing more and wait up to `timeout` seconds for running attempts (threads; worker
        processes are stopped); returns how many are still running (their results would be stale)."""
        return self.pool.close(timeout)
