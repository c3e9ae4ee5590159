"""RealClock: the controller's Clock interface on an asyncio event loop (SimPy's rt split).

The controller code is the same on this clock and on the simulator's VirtualClock; only time differs.
`call_later(0, ...)` becomes `call_soon`: the group-commit flush runs on the next loop turn either way,
without a trip through the timer heap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class RealClock:
    """Monotonic loop time; callbacks run on the loop's thread."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        return self.loop.call_at(when, fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.Handle:
        if delay <= 0:
            return self.loop.call_soon(fn, *args)
        return self.loop.call_later(delay, fn, *args)

    def cancel(self, handle: asyncio.Handle) -> None:
        handle.cancel()
