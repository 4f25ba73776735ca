"""Per-client token buckets: `rate` requests a second on average, bursts up to `burst`.

A bucket is the API key's name (server/keys.py), not the key: keys given the same name (a
client's old and new key while it rotates) share one, and no secret is kept here.

Per process: with N uvicorn workers a key may get up to N times the rate, so
set it to the per-key rate divided by the number of workers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from server.errors import RateLimited


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError("rate must be a positive finite number and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, as of)

    def take(self, key: str) -> None:
        """Spend one token of the bucket named `key`, or raise RateLimited with a Retry-After."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(
                f"over the rate limit of {self.rate:g} requests/s for this key",
                headers={"Retry-After": str(max(1, wait))},
            )
        # Only checked keys get here (auth comes first, and without auth every request has
        # the same name), so the buckets are as many as the names ever configured.
        self._buckets[key] = (tokens - 1.0, now)
