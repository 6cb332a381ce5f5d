"""The network as flows sharing link capacities, on virtual time.

Each host has an uplink and a downlink (bytes per second of payload) and an access delay; a
frame from A to B takes A's delay plus B's. A chunk in transit is a flow from its sender's
uplink to its receiver's downlink; concurrent flows share both links about as TCP shares them
(a flow-level model, as SimGrid's). Approximations, stated where the README lists them:

- Shares are recomputed only at the two hosts whose flows changed: the sender's uplink is
  water-filled among its flows, each capped by its receiver's downlink split evenly, and the
  receiver's downlink likewise with the senders' uplinks split evenly; a flow runs at the lower
  of the two. Hosts further away keep their shares until their own flows change (within a chunk
  time or so). No link is ever given more than its capacity; some capacity goes unused for a
  moment after a change.
- No slow start, no loss, no queueing delay: a flow runs at its share from its first byte.
- Capacities are of payload: a link's rate times `GOODPUT`, the share of a full Ethernet frame
  that is TCP payload (1448 of 1514 bytes with TCP timestamps); control frames are small and
  take only the delay.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import count

GOODPUT = 1448 / 1514


class Clock:
    """The event queue: callbacks at virtual times, in time order, ties in scheduling order."""

    __slots__ = ("now", "_queue", "_seq", "events")

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable, tuple]] = []
        self._seq = count()
        self.events = 0

    def at(self, when: float, callback: Callable, *args: object) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), callback, args))

    def drop(self, stale: Callable[[tuple], bool]) -> None:
        """Forget the events `stale` says no longer matter (the queue is rebuilt)."""
        self._queue[:] = [entry for entry in self._queue if not stale(entry)]  # in place: run() holds it
        heapq.heapify(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def run(self, until: float = float("inf"), stop: Callable[[], bool] | None = None) -> None:
        queue, pop = self._queue, heapq.heappop
        while queue:
            when, _, callback, args = queue[0]
            if when > until:
                break
            pop(queue)
            self.now = when
            self.events += 1
            callback(*args)
            if stop is not None and stop():
                break


class Endpoint:
    """A host's links: capacities, delay, and the flows on them."""

    __slots__ = ("up", "down", "delay", "out", "inn", "sent", "received")

    def __init__(self, up: float, down: float, delay: float) -> None:
        self.up = up * GOODPUT
        self.down = down * GOODPUT
        self.delay = delay
        self.out: list[Flow] = []
        self.inn: list[Flow] = []
        self.sent = 0  # payload bytes whose flows finished
        self.received = 0


class Flow:
    __slots__ = ("src", "dst", "size", "remaining", "rate", "since", "version", "up_share", "down_share", "done", "live")

    def __init__(self, src: Endpoint, dst: Endpoint, size: int, done: Callable[[], None], now: float) -> None:
        self.src, self.dst = src, dst
        self.size = size
        self.remaining = float(size)
        self.rate = 0.0
        self.since = now
        self.version = 0
        self.up_share = self.down_share = 0.0
        self.done = done
        self.live = True


def _fill(capacity: float, caps: list[float]) -> list[float]:
    """Max-min shares of `capacity` among flows each capped at `caps[i]`."""
    n = len(caps)
    even = capacity / n
    if min(caps) >= even:
        return [even] * n
    shares = [0.0] * n
    left, k = capacity, n
    order = sorted(range(n), key=caps.__getitem__)
    for place, i in enumerate(order):
        share = left / k
        if caps[i] >= share:  # this flow and every later one (larger caps) get an even share
            for j in order[place:]:
                shares[j] = share
            break
        shares[i] = caps[i]
        left -= caps[i]
        k -= 1
    return shares


class Network:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.flows = 0  # started, in all
        self._stale = 0  # finish events in the clock's queue for a rate that changed since

    @staticmethod
    def delay(a: Endpoint, b: Endpoint) -> float:
        return a.delay + b.delay

    def start(self, src: Endpoint, dst: Endpoint, size: int, done: Callable[[], None]) -> Flow:
        """A transfer of `size` bytes; `done()` is called when its last byte has left `src`."""
        flow = Flow(src, dst, size, done, self.clock.now)
        src.out.append(flow)
        dst.inn.append(flow)
        self.flows += 1
        self._reshare(src, dst)
        return flow

    def cancel(self, flow: Flow) -> None:
        """The connection closed: the flow stops where it is."""
        if flow.live:
            self._stale += 1
            self._remove(flow)

    def _remove(self, flow: Flow) -> None:
        flow.live = False
        src, dst = flow.src, flow.dst
        src.out.remove(flow)
        dst.inn.remove(flow)
        self._reshare(src, dst)

    def _finish(self, flow: Flow, version: int) -> None:
        if not flow.live or version != flow.version:
            return  # rescheduled since, or cancelled
        flow.src.sent += flow.size
        flow.dst.received += flow.size
        self._remove(flow)
        flow.done()

    def _reshare(self, src: Endpoint, dst: Endpoint) -> None:
        if src.out:  # the uplink: each flow capped by its receiver's downlink split evenly
            for flow, share in zip(src.out, _fill(src.up, [f.dst.down / len(f.dst.inn) for f in src.out])):
                flow.up_share = share
        if dst.inn:  # the downlink: each flow capped by its sender's uplink split evenly
            for flow, share in zip(dst.inn, _fill(dst.down, [f.src.up / len(f.src.out) for f in dst.inn])):
                flow.down_share = share
        touched = src.out + dst.inn
        now = self.clock.now
        at = self.clock.at
        for flow in touched:
            rate = flow.up_share if flow.up_share < flow.down_share else flow.down_share
            if rate == flow.rate:
                continue
            if flow.rate:
                flow.remaining -= flow.rate * (now - flow.since)
            flow.since = now
            flow.rate = rate
            flow.version += 1
            self._stale += flow.version > 1
            at(now + max(flow.remaining, 0.0) / rate, self._finish, flow, flow.version)
        if self._stale > 50_000 and 2 * self._stale > len(self.clock):
            # Slow flows rescheduled again and again leave finish events far ahead: memory.
            self.clock.drop(self._outdated)
            self._stale = 0

    def _outdated(self, entry: tuple) -> bool:
        if entry[2] != self._finish:
            return False
        flow, version = entry[3]
        return not flow.live or version != flow.version
