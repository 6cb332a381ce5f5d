"""Where the tracker keeps its registry: one async interface, two stores.

`MemoryStore` wraps the sans-IO HolderRegistry (p2p_shared.registry) of one tracker process.
`RedisStore` (redis_store.py) keeps the same registry in Redis, so several tracker replicas answer
as one tracker. Both take the time as `now` and pass the same tests (tests/unit/test_registry.py).

The interface is shaped by what one request needs, so that a request is one round trip to a
remote store: a lookup resolves the file and samples its holders at once, a page of the file list
comes with the total.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from p2p_shared.errors import StoreUnavailable  # noqa: F401 (raised by the stores, imported from here)
from p2p_shared.messages import FileEntry
from p2p_shared.registry import HolderKey, HolderRegistry, Leases, Refused, Sender

FileRow = tuple[FileEntry, int, int]  # a file's entry, its complete and its partial holders


@dataclass(frozen=True, slots=True)
class Limits:
    """How long a holder lives without a heartbeat, and the registry's caps (None: no cap)."""

    ttl: float
    max_holders: int = 100_000
    max_files_per_holder: int = 1024
    max_files: int = 200_000
    max_holders_per_address: int | None = 1024
    max_files_per_address: int | None = 4096
    lease_ttl: float = 10.0  # seconds a claimed lease lasts unless renewed (registry.Leases)


@dataclass(frozen=True, slots=True)
class Stats:
    """The registry's size, for the gauges."""

    holders: int = 0
    holdings: int = 0  # file registrations (a file three holders have counts three)
    complete: int = 0  # holders complete for some file (or holding none)
    partial: int = 0  # holders partial for some file
    files: int = 0
    lost_files: int = 0  # files whose last complete holder expired (registry.LOST_FILE_MEMORY)


@dataclass(frozen=True, slots=True)
class Found:
    """The answer to a lookup: the file's entry (None: unknown) and holders of each kind."""

    entry: FileEntry | None
    complete: list[HolderKey]
    partial: list[HolderKey]


class RegistryStore(Protocol):
    limits: Limits
    # Shared by several replicas: the swarm secret's replay memory is kept there too.
    shared: bool
    # Every call completes without waiting (the shell then answers within the datagram's callback).
    immediate: bool

    async def register(
        self, key: HolderKey, files: list[FileEntry], now: float, partial: bool = False,
        sender: Sender | None = None, member: bool = False,
    ) -> Literal["new", "refreshed"]:
        """Add or refresh a holder (HolderRegistry.register); Refused (RegistryFull, NotRegistrant)."""

    async def heartbeat(self, key: HolderKey, now: float, sender: Sender | None = None, member: bool = False) -> bool:
        """Refresh a holder; False if unknown; NotRegistrant if another address registered it."""

    async def unregister(self, key: HolderKey, sender: Sender | None = None, member: bool = False) -> bool:
        """Remove a holder; False if unknown; NotRegistrant if another address registered it."""

    async def drop(
        self, key: HolderKey, file_ids: list[str], now: float, sender: Sender | None = None, member: bool = False
    ) -> bool:
        """The holder no longer holds these files (HolderRegistry.drop), and is refreshed; False if
        unknown; NotRegistrant if another address registered it."""

    async def claim(
        self, key: str, holder: HolderKey, now: float, release: bool = False
    ) -> tuple[HolderKey | None, float]:
        """Take, renew or release the lease `key` (registry.Leases.claim): its holder afterwards
        and the seconds it has left; RegistryFull when no lease is left to take."""

    async def lookup(
        self, name: str | None = None, file_id: str | None = None, limit: int = 50, exclude: HolderKey | None = None
    ) -> Found:
        """The file by id, or the name's file with the most complete (then partial) holders, then
        the smallest id; up to `limit` holders of each kind in random order, never `exclude`."""

    async def list_files(self, after: str | None = None, limit: int | None = None) -> tuple[list[FileRow], int]:
        """A page of files in file id order (after `after`, at most `limit`), and the number of files."""

    async def expire(self, now: float) -> list[HolderKey]:
        """Forget every holder not heard from for longer than the ttl; the holders forgotten."""

    async def refresh_stats(self) -> Stats:
        """Read the registry's size again into `stats`."""

    @property
    def stats(self) -> Stats:
        """The registry's size when last read (the memory store's is always current)."""

    async def shared_key(self, name: str, candidate: bytes) -> bytes:
        """A key every replica agrees on: the first replica's `candidate` wins and is kept."""

    async def run(self, calls: list[Callable[[RegistryStore], Awaitable[Any]]]) -> list[Any]:
        """Several of the calls above at once (one round trip to a remote store), each made by
        `call(store)`; their outcomes in order, a registry.Refused raised by one in its place."""

    async def remember_nonces(self, nonces: list[bytes], seconds: float) -> list[bool]:
        """Record sealed datagrams' nonces for `seconds`; False for each recorded already (a
        replay). Only for a `shared` store."""

    async def close(self) -> None: ...


class MemoryStore:
    """The registry in this process's memory: every call completes without waiting."""

    shared = False
    immediate = True

    def __init__(self, limits: Limits, rng: random.Random | None = None) -> None:
        self.limits = limits
        self.registry = HolderRegistry(**{k: v for k, v in asdict(limits).items() if k != "lease_ttl"})
        self.leases = Leases(limits.lease_ttl)
        self.rng = rng or random.Random()

    async def register(self, key, files, now, partial=False, sender=None, member=False):
        return self.registry.register(key, files, now, partial=partial, sender=sender, member=member)

    async def heartbeat(self, key, now, sender=None, member=False):
        return self.registry.heartbeat(key, now, sender=sender, member=member)

    async def unregister(self, key, sender=None, member=False):
        return self.registry.unregister(key, sender=sender, member=member)

    async def drop(self, key, file_ids, now, sender=None, member=False):
        return self.registry.drop(key, file_ids, now, sender=sender, member=member)

    async def claim(self, key, holder, now, release=False):
        return self.leases.claim(key, holder, now, release=release)

    async def lookup(self, name=None, file_id=None, limit=50, exclude=None):
        entry = self.registry.resolve(name=name, file_id=file_id)
        if entry is None:
            return Found(None, [], [])
        return Found(entry, *self.registry.holders(entry.file_id, limit, self.rng, exclude=exclude))

    async def list_files(self, after=None, limit=None):
        return self.registry.files(after=after, limit=limit), self.registry.file_count

    async def expire(self, now):
        self.leases.expire(now)
        return self.registry.expire(now)

    async def refresh_stats(self):
        return self.stats

    @property
    def stats(self) -> Stats:
        reg = self.registry
        return Stats(len(reg), reg.holding_count, reg.count("complete"), reg.count("partial"), reg.file_count, reg.lost_file_count)

    async def shared_key(self, name, candidate):
        return candidate

    async def run(self, calls):
        outcomes = []
        for call in calls:
            try:
                outcomes.append(await call(self))
            except Refused as exc:
                outcomes.append(exc)
        return outcomes

    async def remember_nonces(self, nonces, seconds):
        raise AssertionError("the memory store is not shared: the Sealer keeps the replay memory")

    async def close(self):
        pass
