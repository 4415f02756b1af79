"""Token-bucket rate limits keyed by a string (a key's prefix, a client's address).

Each key has a bucket of `burst` tokens refilled at `rate` per second; a request takes one.
A refused request learns how many whole seconds to wait (`Retry-After`). Buckets idle long
enough to be full again are forgotten (a full bucket is the same as a new one), and beyond
`max_keys` the least recently used are dropped, so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|min|h)\s*(?::\s*(\d+))?\s*$")
_PER: Final = {"s": 1, "min": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may go ahead, and if not how long to wait (Retry-After)."""

    allowed: bool
    retry_after: int = 0  # whole seconds, rounded up; 0 when allowed


@dataclass(frozen=True, slots=True)
class Limit:
    """A sustained rate (tokens per second) and the burst allowed above it."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Limit:
        """Return the limit written `20/s`, `600/min:100` or `1000/h` (after `:` the burst)."""
        m = _LIMIT.match(text)
        if not m:
            raise ValueError(
                f"{text!r} is not a rate limit: write N/s, N/min or N/h, optionally :BURST "
                "(e.g. 600/min:100)"
            )
        count = float(m.group(1))
        rate = count / _PER[m.group(2)]
        burst = float(m.group(3)) if m.group(3) else max(1.0, count)
        if rate <= 0 or burst < 1:
            raise ValueError(f"{text!r}: the rate must be above 0 and the burst at least 1")
        return cls(rate, burst)


_ALLOWED: Final = Verdict(True)


class RateLimiter:
    """Token buckets per key with an injectable clock (monotonic seconds)."""

    def __init__(
        self,
        limit: Limit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if limit.rate <= 0 or limit.burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        #: key -> (tokens, when they were counted), least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # take() never awaits, so one event loop needs no lock; this one covers threads too
        self._lock = threading.Lock()
        #: seconds after which an untouched bucket is full again
        self._refill_time = limit.burst / limit.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, cost: float = 1.0) -> Verdict:
        """Take cost tokens from key's bucket if it has them; else say when it will."""
        now = self._clock()
        rate, burst = self.limit.rate, self.limit.burst
        with self._lock:
            tokens, then = self._buckets.pop(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - then) * rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                verdict = _ALLOWED
            else:
                self._buckets[key] = (tokens, now)
                # the float error of (cost - tokens) / rate must not round 2.0000001 up to 3
                wait = round((cost - tokens) / rate, 6)
                verdict = Verdict(False, max(1, math.ceil(wait)))
            self._evict(now)
        return verdict

    def _evict(self, now: float) -> None:
        # oldest first: drop buckets that have refilled (forgetting them changes nothing),
        # then, over the bound, the least recently used even if not yet full
        buckets = self._buckets
        while buckets:
            key, (_, then) = next(iter(buckets.items()))
            if now - then >= self._refill_time or len(buckets) > self._max_keys:
                del buckets[key]
            else:
                break
