"""RealClock: the controller's Clock interface on an asyncio event loop (SimPy's rt split).

The controller code is the same on this clock and on the simulator's VirtualClock; only time differs.
Timers sit in the clock's own heap of (deadline, insertion seq) behind one asyncio timer, so equal
deadlines fire in the order they were set, as on VirtualClock (asyncio's own `call_at` compares the
time only: the first 8 attempts share a deadline, and 8 equal deadlines fired as 1,3,7,6,8,2,4,5).
`call_later(0, ...)` becomes `call_soon`: the group-commit flush runs on the next loop turn either
way, without a trip through the timer heap.

How late each timer fires (loop time when its callback starts, minus its deadline) is kept in
`TimerLateness`, with how late each simulated-work result reaches the loop (PoolWorkers.watch): the
simulator has both exactly on time, so an attempt that ends within that lateness of its deadline
may end the other way for real than simulated (a borderline attempt). `status --json` shows the
p99 and the max, `/metrics` the histogram and the p99."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Entry = list[Any]  # [when, seq, fn or None, args], as in sim/clock.py
_MIN_COMPACT = 64  # a heap with fewer cancelled entries is not worth rebuilding
LATENESS_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
LATENESS_WINDOW = 4096  # the p99 is over the last this many timers


class TimerLateness:
    """How late timers fired (and simulated-work results arrived), in seconds: histogram counts and
    the recent ones for a p99. Written and read on the loop's thread only (the metrics read it
    through Service.sample)."""

    __slots__ = ("buckets", "count", "recent", "sum")
    bounds = LATENESS_BUCKETS

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENESS_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=LATENESS_WINDOW)

    def observe(self, seconds: float) -> None:
        i = 0
        while i < len(LATENESS_BUCKETS) and seconds > LATENESS_BUCKETS[i]:
            i += 1
        self.buckets[i] += 1
        self.count += 1
        self.sum += seconds
        self.recent.append(seconds)

    def max(self) -> float:
        """The latest of the recent ones (0 before any)."""
        return max(self.recent, default=0.0)

    def p99(self) -> float:
        """The 99th percentile of the recent lateness (nearest rank; 0 before any timer fired)."""
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class RealClock:
    """Monotonic loop time; callbacks run on the loop's thread, equal deadlines in the order set."""

    __slots__ = ("_armed", "_cancelled", "_heap", "_seq", "_timer", "lateness", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, lateness: TimerLateness | None = None) -> None:
        self.loop = loop
        self.lateness = TimerLateness() if lateness is None else lateness
        self._heap: list[Entry] = []
        self._seq = 0
        self._cancelled = 0  # cancelled entries still in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the asyncio timer fires

    def now(self) -> float:
        return self.loop.time()

    def epoch(self) -> float:
        """Wall time, for what must hold across restarts (a delayed job's not_before): the loop's
        monotonic time starts anew in each process."""
        return time.time()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Entry:
        entry = [when, self._seq, fn, args]
        self._seq += 1
        heapq.heappush(self._heap, entry)
        if when < self._armed:
            self._arm(when)
        return entry

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Entry | asyncio.Handle:
        if delay <= 0:
            return self.loop.call_soon(fn, *args)
        return self.call_at(self.loop.time() + delay, fn, *args)

    def cancel(self, handle: Entry | asyncio.Handle) -> None:
        if isinstance(handle, asyncio.Handle):
            handle.cancel()
            return
        if handle[2] is None:
            return  # already cancelled, or already run
        handle[2], handle[3] = None, ()
        self._cancelled = n = self._cancelled + 1
        if n > _MIN_COMPACT and n * 2 > len(self._heap):
            self._heap[:] = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._fire)
        self._armed = when

    def _fire(self) -> None:
        """Run every entry that is due, by (deadline, seq); an exception goes to the loop's handler
        as it would from an asyncio callback, and the entries after it still run."""
        self._timer, self._armed = None, math.inf
        heap, loop, observe = self._heap, self.loop, self.lateness.observe
        try:
            while heap and heap[0][0] <= loop.time():
                entry = heapq.heappop(heap)
                fn, args = entry[2], entry[3]
                if fn is None:
                    self._cancelled -= 1
                    continue
                entry[2], entry[3] = None, ()
                observe(loop.time() - entry[0])
                try:
                    fn(*args)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    context = {"message": f"Exception in callback {fn!r}", "exception": exc}
                    loop.call_exception_handler(context)
        finally:
            if heap and heap[0][0] < self._armed:
                self._arm(heap[0][0])
