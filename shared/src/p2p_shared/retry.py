"""Retry timing for requests over UDP, which may be lost."""

from __future__ import annotations


def backoff_delays(first: float, attempts: int, factor: float = 2.0, cap: float = 8.0) -> list[float]:
    """How long to wait for an answer after each attempt: first, first*factor, ... at most cap."""
    return [min(cap, first * factor**n) for n in range(attempts)]
