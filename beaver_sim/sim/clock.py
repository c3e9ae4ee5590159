"""VirtualClock: simulated time as a heap of (time, sequence, callback), SimPy's core in miniature.

`call_at` pushes; `run` pops in order and jumps time to each event. Ties break by insertion
sequence, so the same calls always run in the same order: determinism for free. A cancelled entry
stays in the heap with its callback cleared (lazy deletion keeps `cancel` O(1)); once they are most
of the heap, it is rebuilt without them, as asyncio does. The controller cancels almost every
timeout it arms (the attempt ended first), so without that the heap is mostly dead entries, each
pushed and popped for nothing.

A callback due now (`call_later(0)`, `call_at` a time already reached: the controller's end-of-turn
flush, a client's arrival) goes to a FIFO of its own, as asyncio's ready queue, not through the
heap. Same order: such an entry was made at the current time, after every heap entry due now (those
were made earlier, for a time then still to come), so the heap's entries due now run first, then the
ready ones in the order they were made, which is their sequence order."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

Entry = list[Any]  # [when, seq, fn or None, args]
_MIN_COMPACT = 64  # a heap with fewer cancelled entries is not worth rebuilding


class VirtualClock:
    """The Clock interface on simulated time; `run` drives it."""

    __slots__ = ("_cancelled", "_heap", "_now", "_ready", "_seq", "events")

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[Entry] = []  # entries due after `_now`, when they were made
        self._ready: deque[Entry] = deque()  # entries due at `_now`, in the order made
        self._seq = 0
        self._cancelled = 0  # cancelled entries still in the heap or the ready queue
        self.events = 0  # callbacks run so far

    def now(self) -> float:
        return self._now

    def epoch(self) -> float:
        """Simulated time is one timeline across crashes and restarts: its own epoch."""
        return self._now

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Entry:
        now = self._now
        if when > now:
            entry = [when, self._seq, fn, args]
            heapq.heappush(self._heap, entry)
        else:
            entry = [now, self._seq, fn, args]
            self._ready.append(entry)
        self._seq += 1
        return entry

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Entry:
        now = self._now
        when = now + delay if delay > 0 else now  # call_at, inlined: hot
        if when > now:
            entry = [when, self._seq, fn, args]
            heapq.heappush(self._heap, entry)
        else:
            entry = [now, self._seq, fn, args]
            self._ready.append(entry)
        self._seq += 1
        return entry

    def cancel(self, handle: Entry) -> None:
        if handle[2] is None:
            return  # already cancelled, or already run (run clears what it ran)
        handle[2] = None
        handle[3] = ()
        self._cancelled = n = self._cancelled + 1
        if n > _MIN_COMPACT and n * 2 > len(self._heap) + len(self._ready):
            heap, ready = self._heap, self._ready  # in place: `run` holds references to both
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            live = [e for e in ready if e[2] is not None]
            ready.clear()
            ready.extend(live)
            self._cancelled = 0

    def pending(self) -> list[Entry]:
        """The entries still to run (cancelled ones included), in no particular order: the
        heap's and the ready queue's."""
        return [*self._heap, *self._ready]

    def peek(self) -> float:
        """Time of the next live event, or infinity when nothing is scheduled."""
        ready, heap = self._ready, self._heap
        while ready and ready[0][2] is None:
            ready.popleft()
            self._cancelled -= 1
        if ready:
            return self._now
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else float("inf")

    def run(self, until: float | None = None) -> int:
        """Run events in order until none is left or the next is after `until`; returns the
        number run. Time ends at `until` when given, else at the last event."""
        heap, ready, pop, popleft = self._heap, self._ready, heapq.heappop, self._ready.popleft
        first = self.events
        limit = float("inf") if until is None else until
        while True:
            if ready and not (heap and heap[0][0] <= ready[0][0]):  # the heap's due now go first
                entry = ready[0]
                if entry[0] > limit:
                    break
                popleft()
            elif heap:
                entry = heap[0]
                if entry[0] > limit:
                    break
                pop(heap)
            else:
                break
            fn = entry[2]
            if fn is None:
                self._cancelled -= 1
                continue
            entry[2] = None  # ran: a later cancel of this handle is a no-op
            self._now = entry[0]
            self.events += 1  # counted as it runs: right even if a callback raises (a simulated crash)
            fn(*entry[3])
        if until is not None and until > self._now:
            self._now = until
        return self.events - first

    def clear(self) -> None:
        """Drop every scheduled event (the simulated process died)."""
        for entry in (*self._heap, *self._ready):
            entry[2] = None  # a handle cancelled later is not counted again
        self._heap.clear()
        self._ready.clear()
        self._cancelled = 0
