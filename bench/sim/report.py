"""A run's figures: completion times, time to all against the bound, the origin's egress."""

from __future__ import annotations

import re

from .scenarios import bound
from .simulation import Result


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile (q in [0, 1]) of sorted `values`."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))]


def summarize(result: Result) -> dict:
    scenario = result.scenario
    times = sorted(result.completion.values())
    t_all = max(result.done_at.values()) if result.done_at and not result.failed else None
    b = scenario.bound()
    summary = {
        "scenario": scenario.name,
        "title": scenario.title,
        "seeders": len(scenario.seeders),
        "peers": len(scenario.leechers),
        "size_mib": scenario.size / (1 << 20),
        "chunk_kib": scenario.chunk_size // 1024,
        "complete": len(times),
        "failed": len(result.failed),
        "left": result.left,
        "failed_why": _reasons(result.failed),
        "t_all_s": _r(t_all),
        "p50_s": _r(quantile(times, 0.5)),
        "p90_s": _r(quantile(times, 0.9)),
        "p99_s": _r(quantile(times, 0.99)),
        "max_s": _r(times[-1] if times else None),
        "bound_s": _r(b),
        "ratio_to_bound": _r(t_all / b if t_all else None, 3),
        "no_sharing_s": _r(scenario.bound_without_sharing()),
        "origin_amplification": _r(result.origin_bytes / result.size, 3),
        "events": result.events,
        "wall_s": _r(result.wall_s, 2),
        "us_per_event": _r(1e6 * result.wall_s / max(1, result.events), 1),
    }
    slow = [i for i, h in enumerate(scenario.leechers) if h.slow]
    if slow:
        # The fast hosts' own bound: the same fluid limit for them alone, every uplink helping.
        offset = len(scenario.seeders)
        fast = [i for i in range(len(scenario.leechers)) if i not in set(slow)]
        fast_specs = [scenario.leechers[i] for i in fast]
        fast_done = [result.done_at[offset + i] for i in fast if offset + i in result.done_at]
        fast_bound = bound(scenario.size, scenario.seeders, fast_specs, everyone=scenario.leechers)
        t_fast = max(fast_done) if len(fast_done) == len(fast) else None
        summary["fast_t_all_s"] = _r(t_fast)
        summary["fast_bound_s"] = _r(fast_bound)
        summary["fast_ratio_to_bound"] = _r(t_fast / fast_bound if t_fast else None, 3)
        slow_done = [result.done_at[offset + i] for i in slow if offset + i in result.done_at]
        summary["slow_t_all_s"] = _r(max(slow_done) if len(slow_done) == len(slow) else None)
    return summary


def _reasons(failed: dict[int, str]) -> dict[str, int]:
    """How many hosts failed for each reason (the supervisor's words, numbers taken out)."""
    counts: dict[str, int] = {}
    for why in failed.values():
        key = re.sub(r"[0-9]+(\.[0-9]+)?", "N", why)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
