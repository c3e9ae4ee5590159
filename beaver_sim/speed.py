"""Speed tricks that more than one layer uses, named once. A leaf like errors.py: it imports nothing
from beaver_sim, so storage/ may use it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the block, as it was after. Replay, snapshot decoding
    and the simulator's long runs allocate millions of long-lived objects and no cycles: each
    collection pass walks the growing heap again for nothing (a quarter of replay time, half of a
    large snapshot's decode). At the end, what the block allocated goes to the oldest generation
    (freeze, then unfreeze: two list splices) rather than staying young, where the first collection
    after it would walk all of it (50 ms after a 100,000-job simulation); cycles among it are found
    by the next full collection. Objects frozen before are handed back to the collector too (no
    O(1) test tells whether any are): the runtime freezes its recovered state after its last
    paused block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()
