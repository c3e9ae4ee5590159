"""Each attempt's random draws, a pure function of (seed, job id, attempt).

The real pool (runtime/workers.py) and the simulator's (sim/workers.py) both take an attempt's work
duration and failure from `Draws`, so the same attempt draws the same numbers in both worlds,
whatever order attempts are dispatched in, however equal deadlines tie, and across restarts (a
restarted process reseeding one shared stream would repeat its first life's draws; a stream handed
out in dispatch order reassigns every later draw after one reordering).

The generator is counter-based: BLAKE2b keyed by the seed over (attempt, job id), two 64-bit words
of the digest -> two floats in [0, 1) with 53 random bits each. Why BLAKE2b: it is a keyed PRF in
the standard library (no numpy in the runtime; Philox or Threefry would need it and a mapping of
string ids to counters anyway), its outputs for distinct inputs are independent for any practical
purpose, and one call costs about a microsecond, where seeding a `random.Random` per attempt costs
ten times that. The key is BLAKE2b of the seed's decimal text, so any integer seed fits the 64-byte
key limit."""

from __future__ import annotations

import math
from hashlib import blake2b
from struct import Struct
from typing import Any

_UNIT = 2.0**-53  # 53 bits of the digest -> a float in [0, 1), as CPython makes its floats
_TWO_WORDS = Struct("<QQ").unpack  # the digest's two little-endian 64-bit words


class Draws:
    """Uniform numbers for attempts, keyed by `seed`. Each draw copies a hasher that has already
    absorbed its key (the same digest as keying a fresh one, in 60 % of the time: the simulator
    draws once per attempt)."""

    __slots__ = ("_backoff", "_work", "backoff_key", "key", "seed")

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.key = blake2b(str(seed).encode(), digest_size=32, person=b"beaver-draws").digest()
        self.backoff_key = blake2b(str(seed).encode(), digest_size=32, person=b"beaver-backoff").digest()
        self._work = blake2b(key=self.key, digest_size=16)
        self._backoff = blake2b(key=self.backoff_key, digest_size=8)

    def __reduce__(self) -> tuple[Any, ...]:
        return Draws, (self.seed,)  # a hasher does not pickle: rebuilt from the seed

    def jitter(self, job_id: str, attempt: int) -> float:
        """A float in [0, 1) for the backoff after `attempt` (another key: independent of its work)."""
        h = self._backoff.copy()
        h.update(attempt.to_bytes(8, "little") + job_id.encode("utf-8", "surrogatepass"))
        return (int.from_bytes(h.digest(), "little") >> 11) * _UNIT

    def uniforms(self, job_id: str, attempt: int) -> tuple[float, float]:
        """Two independent floats in [0, 1): the duration's and the failure's."""
        h = self._work.copy()
        h.update(attempt.to_bytes(8, "little") + job_id.encode("utf-8", "surrogatepass"))
        u, v = _TWO_WORDS(h.digest())
        return (u >> 11) * _UNIT, (v >> 11) * _UNIT

    def work(
        self, job_id: str, attempt: int, work_min: float, work_max: float, failure_rate: float
    ) -> tuple[float, bool]:
        """The seed's simulated work: (duration uniform in [work_min, work_max], succeeds)."""
        h = self._work.copy()  # `uniforms`, inline: one call fewer per simulated attempt
        h.update(attempt.to_bytes(8, "little") + job_id.encode("utf-8", "surrogatepass"))
        u, v = _TWO_WORDS(h.digest())
        return work_min + (work_max - work_min) * ((u >> 11) * _UNIT), (v >> 11) * _UNIT >= failure_rate

    def exponential_work(
        self, job_id: str, attempt: int, work_min: float, work_max: float, failure_rate: float
    ) -> tuple[float, bool]:
        """Long-tailed work: work_min plus an exponential of mean (work_max - work_min) / 2."""
        u, v = self.uniforms(job_id, attempt)
        spread = (work_max - work_min) / 2
        return work_min - spread * math.log1p(-u), v >= failure_rate
