"""A host's file cache, without I/O: which files it keeps, their bytes, and which go when room
is needed. Time is passed in (`now`).

The cache is bounded in bytes. A file being downloaded counts its full size from the start (its
part file reserves it). When a new file would take the cache past its capacity, the files no
client is reading and no download is writing go, least recently used first, down to a low
watermark (90% of the capacity by default, so eviction does not run on every request); if even
that cannot make room, the new file is refused (`CacheFull`), and nothing is evicted for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CacheFull


@dataclass(slots=True)
class CacheEntry:
    file_id: bytes
    name: str
    size: int
    last_used: float
    complete: bool = False
    readers: int = 0  # clients reading it now
    fetching: bool = False  # a download writes it now
    owner: object = None  # which download placed it (so an older one's end does not touch it)

    @property
    def in_use(self) -> bool:
        return self.readers > 0 or self.fetching


class CacheIndex:
    def __init__(self, capacity: int, low_watermark: float = 0.9) -> None:
        if capacity <= 0:
            raise ValueError("a cache needs a positive capacity")
        self.capacity = capacity
        self.low_watermark = low_watermark
        self.entries: dict[bytes, CacheEntry] = {}

    @property
    def used(self) -> int:
        return sum(e.size for e in self.entries.values())

    def __contains__(self, file_id: bytes) -> bool:
        return file_id in self.entries

    def get(self, file_id: bytes) -> CacheEntry | None:
        return self.entries.get(file_id)

    def add(self, entry: CacheEntry) -> None:
        self.entries[entry.file_id] = entry

    def remove(self, file_id: bytes) -> CacheEntry | None:
        return self.entries.pop(file_id, None)

    def touch(self, file_id: bytes, now: float) -> None:
        entry = self.entries.get(file_id)
        if entry is not None:
            entry.last_used = now

    def victims(self, size: int, name: str = "") -> list[bytes]:
        """The files to evict so that a new file of `size` bytes fits; CacheFull if it cannot."""
        used = self.used
        if used + size <= self.capacity:
            return []
        target = min(self.capacity - size, int(self.capacity * self.low_watermark) - size)
        free = sorted((e for e in self.entries.values() if not e.in_use), key=lambda e: e.last_used)
        chosen, freed = [], 0
        for entry in free:
            if used - freed <= target:
                break
            chosen.append(entry.file_id)
            freed += entry.size
        if used - freed + size > self.capacity:
            busy = sum(e.size for e in self.entries.values() if e.in_use)
            raise CacheFull(
                f"no room in the cache for {name or 'the file'} ({size} bytes): it holds {self.capacity} bytes,"
                f" {busy} of them in files being read or fetched"
            )
        return chosen
