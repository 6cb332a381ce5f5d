"""A token bucket for bandwidth limits, with time passed in.

`reserve(n, now)` takes n tokens at once and says how long to wait before sending: a chunk
larger than the bucket is allowed and paid for by waiting, so the long-run rate holds
whatever the chunk size.
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 10, 64 * 1024)
        self._tokens = self.burst
        self._stamp = now

    def reserve(self, amount: int, now: float) -> float:
        """Seconds to wait before sending `amount` bytes (0 when within the budget)."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
