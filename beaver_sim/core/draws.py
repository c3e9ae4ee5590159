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

_UNIT = 2.0**-53  # 53 random bits -> a float in [0, 1), as random.random() makes them


class Draws:
    """Uniform numbers for attempts, keyed by `seed`."""

    __slots__ = ("backoff_key", "key")

    def __init__(self, seed: int) -> None:
        self.key = blake2b(str(seed).encode(), digest_size=32, person=b"beaver-draws").digest()
        self.backoff_key = blake2b(str(seed).encode(), digest_size=32, person=b"beaver-backoff").digest()

    def jitter(self, job_id: str, attempt: int) -> float:
        """A float in [0, 1) for the backoff after `attempt` (another key: independent of its work)."""
        message = attempt.to_bytes(8, "little") + job_id.encode("utf-8", "surrogatepass")
        digest = blake2b(message, key=self.backoff_key, digest_size=8).digest()
        return (int.from_bytes(digest, "little") >> 11) * _UNIT

    def uniforms(self, job_id: str, attempt: int) -> tuple[float, float]:
        """Two independent floats in [0, 1): the duration's and the failure's."""
        message = attempt.to_bytes(8, "little") + job_id.encode("utf-8", "surrogatepass")
        digest = blake2b(message, key=self.key, digest_size=16).digest()
        return (
            (int.from_bytes(digest[:8], "little") >> 11) * _UNIT,
            (int.from_bytes(digest[8:], "little") >> 11) * _UNIT,
        )

    def work(
        self, job_id: str, attempt: int, work_min: float, work_max: float, failure_rate: float
    ) -> tuple[float, bool]:
        """The seed's simulated work: (duration uniform in [work_min, work_max], succeeds)."""
        u, v = self.uniforms(job_id, attempt)
        return work_min + (work_max - work_min) * u, v >= failure_rate

    def exponential_work(
        self, job_id: str, attempt: int, work_min: float, work_max: float, failure_rate: float
    ) -> tuple[float, bool]:
        """Long-tailed work: work_min plus an exponential of mean (work_max - work_min) / 2."""
        u, v = self.uniforms(job_id, attempt)
        spread = (work_max - work_min) / 2
        return work_min - spread * math.log1p(-u), v >= failure_rate
