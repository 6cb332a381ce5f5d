"""The tracker's registry: which live holder has which file, completely or in part. Time is passed in.

A holder is a seeder, or a leecher that serves while it downloads: for each file it registered it
is a complete or a partial holder, and each registration says which for the files it lists, so a
leecher that finishes registers the file again as complete. Per file, the complete and the partial
holders are two sets that sample k keys in O(k).

Holders are kept in an OrderedDict ordered by last contact, so a heartbeat is O(1) (move to the
end) and expiry only looks at the stale front of the dict. The registry never stores chunk
digests, only (file id, name, size, chunk size) per file.

It also remembers, for a day, the files whose last complete holder went silent (expired, as
opposed to unregistering or registering the file as partial on purpose), until a holder registers
them complete again: partial holders alone may not make a whole copy, and an operator wants to
hear about it (the `p2p_tracker_files_without_seeders` gauge and its alert).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from .messages import FileEntry

HolderKey = tuple[str, int]  # (host, port) that peers connect to
HolderKind = Literal["complete", "partial"]

LOST_FILE_MEMORY = 24 * 3600.0  # seconds a file whose complete holders all expired is remembered
MAX_LOST_FILES = 10_000


class RegistryFull(Exception):
    pass


class _KeySet:
    """A set with O(1) add and remove and O(k) random sampling: a list plus each key's index."""

    __slots__ = ("keys", "_index")

    def __init__(self) -> None:
        self.keys: list[HolderKey] = []
        self._index: dict[HolderKey, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: HolderKey) -> None:
        if key not in self._index:
            self._index[key] = len(self.keys)
            self.keys.append(key)

    def discard(self, key: HolderKey) -> None:
        index = self._index.pop(key, None)
        if index is None:
            return
        last = self.keys.pop()
        if index < len(self.keys):
            self.keys[index] = last
            self._index[last] = index

    def sample(self, limit: int, rng: random.Random, exclude: HolderKey | None) -> list[HolderKey]:
        """Up to `limit` keys in random order, never `exclude`."""
        if not self.keys:
            return []
        if exclude in self._index:
            picks = rng.sample(self.keys, min(limit + 1, len(self.keys)))
            if exclude in picks:
                picks.remove(exclude)
            return picks[:limit]
        return rng.sample(self.keys, min(limit, len(self.keys)))


@dataclass(slots=True)
class _FileHolders:
    entry: FileEntry  # the first registration's
    complete: _KeySet = field(default_factory=_KeySet)
    partial: _KeySet = field(default_factory=_KeySet)


@dataclass(slots=True)  # one per holder: 100,000 of them must stay small
class HolderRecord:
    key: HolderKey
    last_seen: float
    files: dict[str, bool] = field(default_factory=dict)  # file id -> held only in part
    partial_files: int = 0

    def kinds(self) -> tuple[bool, bool]:
        """(complete for some file, partial for some file); with no file at all, complete."""
        return len(self.files) > self.partial_files or not self.files, self.partial_files > 0


class HolderRegistry:
    def __init__(self, ttl: float, max_holders: int = 100_000, max_files_per_holder: int = 1024) -> None:
        self.ttl = ttl
        self.max_holders = max_holders
        self.max_files_per_holder = max_files_per_holder
        self._records: OrderedDict[HolderKey, HolderRecord] = OrderedDict()
        self._files: dict[str, _FileHolders] = {}  # file id -> its holders, while it has any
        self._by_name: dict[str, set[str]] = {}  # name -> file ids
        self._lost: dict[str, float] = {}  # file id -> when its last complete holder expired, oldest first
        self._kind_counts = {"complete": 0, "partial": 0}  # holders with a file of that kind

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: HolderKey) -> bool:
        return key in self._records

    @property
    def file_count(self) -> int:
        return len(self._files)

    @property
    def lost_file_count(self) -> int:
        """Files whose last complete holder expired (within LOST_FILE_MEMORY), not registered complete since."""
        return len(self._lost)

    def count(self, kind: HolderKind) -> int:
        """Live holders complete (or partial) for at least one file; a holder may count as both."""
        return self._kind_counts[kind]

    def _tally(self, record: HolderRecord, sign: int) -> None:
        complete, partial = record.kinds()
        self._kind_counts["complete"] += sign * complete
        self._kind_counts["partial"] += sign * partial

    def register(
        self, key: HolderKey, files: list[FileEntry], now: float, partial: bool = False
    ) -> Literal["new", "refreshed"]:
        """Add or refresh a holder, which holds `files` completely, or in part if `partial`."""
        record = self._records.get(key)
        result: Literal["new", "refreshed"] = "refreshed"
        if record is None:
            if len(self._records) >= self.max_holders:
                raise RegistryFull(f"registry holds its maximum of {self.max_holders} holders")
            record = self._records[key] = HolderRecord(key, now)
            result = "new"
        else:
            self._tally(record, -1)
        record.last_seen = now
        self._records.move_to_end(key)
        try:
            for entry in files:
                self._hold(record, entry, partial)
        finally:
            self._tally(record, +1)
        return result

    def _hold(self, record: HolderRecord, entry: FileEntry, partial: bool) -> None:
        file_id = entry.file_id
        held_in_part = record.files.get(file_id)
        if held_in_part is None:
            if len(record.files) >= self.max_files_per_holder:
                raise RegistryFull(f"a holder may register at most {self.max_files_per_holder} files")
            if file_id not in self._files:
                self._files[file_id] = _FileHolders(entry)
                self._by_name.setdefault(entry.name, set()).add(file_id)
        elif held_in_part == partial:
            return
        else:
            record.partial_files -= held_in_part
        record.files[file_id] = partial
        record.partial_files += partial
        holders = self._files[file_id]
        if partial:
            holders.complete.discard(record.key)
            holders.partial.add(record.key)
        else:
            holders.partial.discard(record.key)
            holders.complete.add(record.key)
            self._lost.pop(file_id, None)

    def heartbeat(self, key: HolderKey, now: float) -> bool:
        """Refresh a holder; False if it is unknown (expired, or the tracker restarted)."""
        record = self._records.get(key)
        if record is None:
            return False
        record.last_seen = now
        self._records.move_to_end(key)
        return True

    def unregister(self, key: HolderKey) -> bool:
        return self._forget(key) is not None

    def _forget(self, key: HolderKey) -> list[str] | None:
        """Remove a holder; the file ids it leaves with no complete holder, or None if it was unknown."""
        record = self._records.pop(key, None)
        if record is None:
            return None
        self._tally(record, -1)
        orphans = []
        for file_id, held_in_part in record.files.items():
            holders = self._files[file_id]
            if held_in_part:
                holders.partial.discard(key)
            else:
                holders.complete.discard(key)
                if not holders.complete:
                    orphans.append(file_id)
            if not holders.complete and not holders.partial:
                del self._files[file_id]
                ids = self._by_name[holders.entry.name]
                ids.discard(file_id)
                if not ids:
                    del self._by_name[holders.entry.name]
        return orphans

    def expire(self, now: float) -> list[HolderKey]:
        """Forget every holder not heard from for longer than the ttl."""
        expired = []
        while self._records:
            key, record = next(iter(self._records.items()))
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
        """The file a lookup means: by id, or the name's file with the most complete (then partial) holders."""
        if file_id is not None:
            holders = self._files.get(file_id)
            return None if holders is None else holders.entry
        ids = self._by_name.get(name or "")
        if not ids:
            return None
        best = max(ids, key=lambda i: (len(self._files[i].complete), len(self._files[i].partial), i))
        return self._files[best].entry

    def holders(
        self, file_id: str, limit: int, rng: random.Random, exclude: HolderKey | None = None
    ) -> tuple[list[HolderKey], list[HolderKey]]:
        """Up to `limit` complete and up to `limit` partial holders of the file, each in random
        order so load spreads across holders, never `exclude` (the asker)."""
        holders = self._files.get(file_id)
        if holders is None:
            return [], []
        return holders.complete.sample(limit, rng, exclude), holders.partial.sample(limit, rng, exclude)

    def files(self) -> list[tuple[FileEntry, int, int]]:
        """Every file with its numbers of complete and partial holders, most seeded first."""
        return sorted(
            ((h.entry, len(h.complete), len(h.partial)) for h in self._files.values()),
            key=lambda row: (-row[1], -row[2], row[0].name, row[0].file_id),
        )
