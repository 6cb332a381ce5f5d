"""A token bucket for bandwidth limits, with time passed in.

`reserve(n, now)` takes n tokens at once and says how long to wait before sending: a chunk
larger than the bucket is allowed and paid for by waiting, so the long-run rate holds
whatever the chunk size.
"""

from __future__ import annotations

from collections import OrderedDict


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

    def refund(self, amount: int) -> None:
        """Give back tokens reserved for something that was not sent after all."""
        self._tokens += amount


class AddressLimiter:
    """A token bucket per source address, for a server that must not let one address flood it.
    At most `max_addresses` buckets are kept; the least recently seen is forgotten first."""

    def __init__(self, rate: float, burst: float, max_addresses: int = 65536) -> None:
        self.rate, self.burst, self.max_addresses = rate, burst, max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, now: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._buckets.popitem(last=False)
            bucket = self._buckets[address] = TokenBucket(self.rate, now, self.burst)
        else:
            self._buckets.move_to_end(address)
        if bucket.reserve(1, now) > 0:
            bucket.refund(1)
            return False
        return True
