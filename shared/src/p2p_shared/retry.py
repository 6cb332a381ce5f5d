"""Retry timing for requests over UDP, which may be lost."""

from __future__ import annotations


def backoff_delays(first: float, attempts: int, factor: float = 2.0, cap: float = 8.0) -> list[float]:
    """How long to wait for an answer after each attempt: first, first*factor, ... at most cap."""
    return [min(cap, first * factor**n) for n in range(attempts)]


def fit_budget(delays: list[float], budget: float) -> list[float]:
    """The delays cut so that together they take at most `budget` seconds."""
    fitted, total = [], 0.0
    for delay in delays:
        delay = min(delay, budget - total)
        if delay <= 0:
            break
        fitted.append(delay)
        total += delay
    return fitted
