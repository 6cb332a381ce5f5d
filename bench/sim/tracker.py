"""The tracker, in memory: the library's HolderRegistry with the tracker's lookup rules (at most
`max_peers` complete and as many partial holders, sampled at random, never the asker),
heartbeats and expiry. Datagrams take the delay between the host and the tracker; none is lost."""

from __future__ import annotations

import random

from p2p_shared.messages import FileEntry
from p2p_shared.registry import HolderKey, HolderRegistry

from .network import Clock


class Tracker:
    def __init__(self, clock: Clock, delay: float, rng: random.Random, *, interval: float = 30.0, missed: int = 3,
                 max_peers: int = 50, expire_every: float = 5.0) -> None:
        self.clock = clock
        self.delay = delay  # its own access delay
        self.rng = rng
        self.interval = interval  # heartbeats, as the tracker tells holders
        self.max_peers = max_peers
        self.expire_every = expire_every
        self.registry = HolderRegistry(ttl=interval * missed)
        self.lookups = 0
        clock.at(expire_every, self._expire)

    def _expire(self) -> None:
        self.registry.expire(self.clock.now)
        self.clock.at(self.clock.now + self.expire_every, self._expire)

    # -- what holders send (arriving `delay` seconds later) ------------------------------------

    def register(self, key: HolderKey, entry: FileEntry, partial: bool, delay: float) -> None:
        self.clock.at(self.clock.now + delay + self.delay, self._register, key, entry, partial)

    def _register(self, key: HolderKey, entry: FileEntry, partial: bool) -> None:
        self.registry.register(key, [entry], self.clock.now, partial=partial)

    def heartbeat(self, key: HolderKey, delay: float) -> None:
        self.clock.at(self.clock.now + delay + self.delay, lambda: self.registry.heartbeat(key, self.clock.now))

    def unregister(self, key: HolderKey, delay: float) -> None:
        self.clock.at(self.clock.now + delay + self.delay, lambda: self.registry.unregister(key))

    def lookup(self, file_id: str, asker: HolderKey, delay: float, reply) -> None:
        """`reply(entry, complete, partial)` a round trip later."""
        self.clock.at(self.clock.now + delay + self.delay, self._lookup, file_id, asker, delay, reply)

    def _lookup(self, file_id: str, asker: HolderKey, delay: float, reply) -> None:
        self.lookups += 1
        entry = self.registry.resolve(file_id=file_id)
        complete, partial = ([], []) if entry is None else self.registry.holders(file_id, self.max_peers, self.rng, exclude=asker)
        self.clock.at(self.clock.now + delay + self.delay, reply, entry, complete, partial)
