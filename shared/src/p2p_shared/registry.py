"""The tracker's registry: which live seeder holds which file. Time is passed in.

Seeders are kept in an OrderedDict ordered by last contact, so a heartbeat is O(1) (move to the
end) and expiry only looks at the stale front of the dict. The registry never stores chunk
digests, only (file id, name, size, chunk size) per file.

It also remembers, for a day, the files whose last seeder went silent (expired, as opposed to
unregistering on purpose), until a seeder registers them again: nobody can download those, and
an operator wants to hear about it (the `p2p_tracker_files_without_seeders` gauge and its alert).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from .messages import FileEntry

SeederKey = tuple[str, int]  # (host, port) that leechers connect to

LOST_FILE_MEMORY = 24 * 3600.0  # seconds a file whose seeders all expired is remembered
MAX_LOST_FILES = 10_000


class RegistryFull(Exception):
    pass


class _Holders:
    """A set with O(1) add and remove and O(k) random sampling: a list plus each key's index."""

    def __init__(self) -> None:
        self.keys: list[SeederKey] = []
        self._index: dict[SeederKey, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: SeederKey) -> None:
        if key not in self._index:
            self._index[key] = len(self.keys)
            self.keys.append(key)

    def discard(self, key: SeederKey) -> None:
        index = self._index.pop(key, None)
        if index is None:
            return
        last = self.keys.pop()
        if index < len(self.keys):
            self.keys[index] = last
            self._index[last] = index


@dataclass
class SeederRecord:
    key: SeederKey
    last_seen: float
    files: dict[str, FileEntry] = field(default_factory=dict)


class SeederRegistry:
    def __init__(self, ttl: float, max_seeders: int = 100_000, max_files_per_seeder: int = 1024) -> None:
        self.ttl = ttl
        self.max_seeders = max_seeders
        self.max_files_per_seeder = max_files_per_seeder
        self._seeders: OrderedDict[SeederKey, SeederRecord] = OrderedDict()
        self._holders: dict[str, _Holders] = {}  # file id -> seeders
        self._entries: dict[str, FileEntry] = {}  # file id -> entry (first registration wins)
        self._by_name: dict[str, set[str]] = {}  # name -> file ids
        self._lost: dict[str, float] = {}  # file id -> when its last seeder expired, oldest first

    def __len__(self) -> int:
        return len(self._seeders)

    def __contains__(self, key: SeederKey) -> bool:
        return key in self._seeders

    @property
    def file_count(self) -> int:
        return len(self._holders)

    @property
    def lost_file_count(self) -> int:
        """Files whose last seeder expired (within LOST_FILE_MEMORY) and none registered since."""
        return len(self._lost)

    def register(self, key: SeederKey, files: list[FileEntry], now: float) -> Literal["new", "refreshed"]:
        record = self._seeders.get(key)
        result: Literal["new", "refreshed"] = "refreshed"
        if record is None:
            if len(self._seeders) >= self.max_seeders:
                raise RegistryFull(f"registry holds its maximum of {self.max_seeders} seeders")
            record = self._seeders[key] = SeederRecord(key, now)
            result = "new"
        record.last_seen = now
        self._seeders.move_to_end(key)
        for entry in files:
            if entry.file_id in record.files:
                continue
            if len(record.files) >= self.max_files_per_seeder:
                raise RegistryFull(f"a seeder may register at most {self.max_files_per_seeder} files")
            record.files[entry.file_id] = entry
            self._lost.pop(entry.file_id, None)
            self._holders.setdefault(entry.file_id, _Holders()).add(key)
            if self._entries.setdefault(entry.file_id, entry) is entry:
                self._by_name.setdefault(entry.name, set()).add(entry.file_id)
        return result

    def heartbeat(self, key: SeederKey, now: float) -> bool:
        """Refresh a seeder; False if it is unknown (expired, or the tracker restarted)."""
        record = self._seeders.get(key)
        if record is None:
            return False
        record.last_seen = now
        self._seeders.move_to_end(key)
        return True

    def unregister(self, key: SeederKey) -> bool:
        return self._forget(key) is not None

    def _forget(self, key: SeederKey) -> list[str] | None:
        """Remove a seeder; the file ids left with no seeder, or None if it was unknown."""
        record = self._seeders.pop(key, None)
        if record is None:
            return None
        orphans = []
        for file_id in record.files:
            holders = self._holders[file_id]
            holders.discard(key)
            if not holders:
                del self._holders[file_id]
                entry = self._entries.pop(file_id)
                ids = self._by_name[entry.name]
                ids.discard(file_id)
                if not ids:
                    del self._by_name[entry.name]
                orphans.append(file_id)
        return orphans

    def expire(self, now: float) -> list[SeederKey]:
        """Forget every seeder not heard from for longer than the ttl."""
        expired = []
        while self._seeders:
            key, record = next(iter(self._seeders.items()))
            if now - record.last_seen <= self.ttl:
                break
            for file_id in self._forget(key) or ():
                self._lost[file_id] = now
            expired.append(key)
        while self._lost and (
            len(self._lost) > MAX_LOST_FILES or now - next(iter(self._lost.values())) > LOST_FILE_MEMORY
        ):
            del self._lost[next(iter(self._lost))]
        return expired

    def resolve(self, name: str | None = None, file_id: str | None = None) -> FileEntry | None:
        """The file a lookup means: by id, or the name's file with the most live seeders."""
        if file_id is not None:
            return self._entries.get(file_id)
        ids = self._by_name.get(name or "")
        if not ids:
            return None
        best = max(ids, key=lambda i: (len(self._holders[i]), i))
        return self._entries[best]

    def holders(self, file_id: str, limit: int, rng: random.Random) -> list[SeederKey]:
        """Up to `limit` seeders of the file, in random order so load spreads across seeders."""
        holders = self._holders.get(file_id)
        if holders is None:
            return []
        return rng.sample(holders.keys, min(limit, len(holders)))

    def files(self) -> list[tuple[FileEntry, int]]:
        """Every file with its number of live seeders, most seeded first."""
        return sorted(
            ((self._entries[i], len(h)) for i, h in self._holders.items()),
            key=lambda pair: (-pair[1], pair[0].name, pair[0].file_id),
        )
